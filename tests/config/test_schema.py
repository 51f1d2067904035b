"""The black-box configs' schemas: wrong types stop at compose time, defaults match the YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nasrun.config import config_dir, schema
from tests.conftest import NB201_TABLE

TABLE = NB201_TABLE

#: (group=option, the YAML file's node, its schema, a wrong-typed override of each field)
CASES: list[tuple[str, str, type, list[str]]] = [
    ("search=random_search", "", schema.RandomSearchConfig, ["search.budget=abc"]),
    (
        "search=evolution",
        "",
        schema.EvolutionSearchConfig,
        ["search.budget=abc", "search.population=1.5", "search.sample=x"],
    ),
    (
        "search=reinforce",
        "",
        schema.ReinforceSearchConfig,
        [
            "search.budget=1.5",
            "search.batch=x",
            "search.hidden=x",
            "search.lr=fast",
            "search.baseline_decay=x",
            "search.entropy_weight=[1]",
        ],
    ),
    (
        "search=pnas",
        "",
        schema.PNASSearchConfig,
        ["search.budget=x", "search.beam=x", "search.k=2.5", "search.completions=x", "search.members=x"],
    ),
    (
        "search=bo",
        "",
        schema.BOSearchConfig,
        [
            "search.budget=x",
            "search.n_init=x",
            "search.n_parents=x",
            "search.n_random=x",
            "search.refit_every=0.5",
        ],
    ),
    (
        "evaluator=train",
        "",
        schema.TrainEvaluatorConfig,
        ["evaluator.epochs=x", "evaluator.network=3", "evaluator.workers=1.5"],
    ),
    ("evaluator=tabular", "evaluator", schema.TabularEvaluatorConfig, ["evaluator.table=[1,2]"]),
    ("space=nb201", "", schema.NB201SpaceConfig, ["space.channels=x", "space.cells=2.5"]),
]


@pytest.mark.parametrize("option, node, cls, bad", CASES, ids=[c[0] for c in CASES])
def test_schema_defaults_are_the_yaml_values(option: str, node: str, cls: type, bad: list[str]) -> None:
    group, name = option.split("=")
    yaml = OmegaConf.load(config_dir() / group / f"{name}.yaml")
    assert yaml.pop("defaults")[0] in (f"{name}_schema", f"{name}_schema@{group}")
    values: Any = OmegaConf.to_container(OmegaConf.select(yaml, node) if node else yaml)
    assert values == OmegaConf.to_container(OmegaConf.structured(cls))
    assert "_target_" in values


@pytest.mark.parametrize("option, node, cls, bad", CASES, ids=[c[0] for c in CASES])
def test_wrong_types_fail_at_compose_naming_the_key(
    compose_cfg, option: str, node: str, cls: type, bad: list[str]
) -> None:
    for override in bad:
        with pytest.raises(ConfigCompositionException) as info:
            compose_cfg(option, override)
        key = override.split("=")[0]
        message = f"{info.value} {info.value.__cause__}"
        assert key in message and cls.__name__ in message, message


@pytest.mark.parametrize("option, node, cls, bad", CASES, ids=[c[0] for c in CASES])
def test_default_configs_still_instantiate(
    compose_cfg, tmp_path: Path, option: str, node: str, cls: type, bad: list[str]
) -> None:
    group, name = option.split("=")
    choices = {"search": "random_search", "space": "nb201", "evaluator": "train", group: name}
    overrides = [f"{g}={n}" for g, n in choices.items()]
    cfg = compose_cfg(*overrides, *([f"evaluator.table={TABLE}"] if name == "tabular" else []))
    space = instantiate(cfg.space)
    assert type(space).__name__ == "NB201Space"
    strategy = instantiate(cfg.search)(space=space, seed=0)
    assert type(strategy).__module__ == cfg.search._target_.rsplit(".", 1)[0]
    evaluator = instantiate(cfg.evaluator)
    assert f"{type(evaluator).__module__}.{type(evaluator).__name__}" == cfg.evaluator._target_


def test_tabular_evaluator_keeps_its_global_settings(compose_cfg) -> None:
    cfg = compose_cfg("evaluator=tabular")
    assert cfg.retrain.enabled is False  # a table is the result; no images are loaded unless retraining
    again = compose_cfg("evaluator=tabular", "retrain.enabled=true", "data=digits")
    assert again.retrain.enabled is True and again.data.image_size == 16
    assert OmegaConf.is_missing(cfg.evaluator, "table")
    assert OmegaConf.get_type(cfg.evaluator) is schema.TabularEvaluatorConfig
