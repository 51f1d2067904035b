"""The config schemas: generated from the constructors, wrong types stop at compose time, YAML only chooses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hydra.core.config_store import ConfigStore
from hydra.core.object_type import ObjectType
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
    # A one-shot method's pieces are typed too (search.sampler, search.update).
    ("search=gdas", "", schema.GumbelMaxSTConfig, ["search.sampler.tau_start=hot"]),
    ("search=snas", "", schema.SingleLevelConfig, ["search.update.cost_weight=x"]),
    ("search=rsps", "", schema.UniformSamplingConfig, ["search.update.candidates=1.5"]),
    (
        "search=enas",
        "",
        schema.ReinforceControllerConfig,
        ["search.update.lstm_size=x", "search.update.lr=[1]"],
    ),
]


#: What ``conf/config.yaml`` picks for each group when nothing else does.
DEFAULT_OPTIONS = {"search": "darts", "space": "cifar_cell", "data": "cifar10", "trainer": "default"}
DEFAULT_OPTIONS |= {"retrain": "cifar_cell", "evaluator": "train"}


def _body(path: Path) -> tuple[list[Any], dict[str, Any]]:
    """A config file's defaults list and its own values (interpolations left as written)."""
    raw: Any = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return list(raw.pop("defaults", [])), raw


def _plain(node: Any) -> Any:
    """A typed node as plain values, so that nodes of different schemas merge."""
    return OmegaConf.to_container(node, resolve=False)


def _place(values: Any, package: str) -> Any:
    for key in reversed([k for k in package.split(".") if k]):
        values = {key: values}
    return values


def _inherited(group: str, entries: list[Any]) -> Any:
    """The values that a file in ``group`` inherits from the entries of its defaults list before ``_self_``."""
    base = OmegaConf.create({})
    for entry in entries:
        if entry == "_self_":
            break
        if isinstance(entry, dict):  # a sub-group choice (early_stop: skip_connects) or an override
            ((key, option),) = entry.items()
            key = key.removeprefix("override ").lstrip("/")
            if key.split("/")[0] == "hydra":  # Hydra's own groups (a sweep's sweeper, launcher)
                continue
            if option is not None and (config_dir() / group / key).is_dir():
                base = OmegaConf.merge(base, {key: _option_values(f"{group}/{key}", option)})
            elif option is not None:  # a global file choosing another group's option
                base = OmegaConf.merge(base, {key: _option_values(key, option)})
            continue
        name, _, package = entry.partition("@")
        if name.endswith("_schema"):
            store = ConfigStore.instance()
            found = store.get_type(f"{group}/{name}.yaml") == ObjectType.CONFIG
            owner = group if found else group.split("/")[0]  # a sub-group's own schema, else the group's
            node = store.load(f"{owner}/{name}.yaml").node
            base = OmegaConf.merge(base, _place(_plain(node), package))
        else:  # a parent option of the same group (pc_darts starts from darts)
            base = OmegaConf.merge(base, _option_values(group, name))
    return base


def _option_values(group: str, option: str) -> Any:
    """Every value an option's file ends with: inherited, then its own."""
    entries, own = _body(config_dir() / group / f"{option}.yaml")
    return OmegaConf.merge(_inherited(group, entries), own)


def _restated(own: Any, base: Any, prefix: str = "") -> list[str]:
    found = []
    for key, value in own.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            found += _restated(value, base[key], path + ".")
        elif key in base and value == base[key]:
            found.append(f"{path}: {value!r}")
    return found


def _files() -> list[Path]:
    root = config_dir()
    return sorted(p for p in root.rglob("*.yaml") if p.relative_to(root).parts[0] not in ("hydra",))


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(config_dir())))
def test_no_config_file_restates_a_default(path: Path) -> None:
    """A default is written once, in the constructor (or dataclass) that owns it; YAML only chooses.

    Each file's own values are compared with what it would have without them: its schema's
    defaults and what its defaults list brings (a parent option, a sub-group), or for a global file
    the default options of the groups it sets.
    """
    schema.register_configs()
    root = config_dir()
    rel = path.relative_to(root)
    entries, own = _body(path)
    if rel.parts[0] == "config.yaml":
        base = OmegaConf.structured(schema.NasrunConfig)
    elif path.read_text().startswith("# @package _global_"):
        base = OmegaConf.create(
            {g: _option_values(g, o) for g, o in DEFAULT_OPTIONS.items()}
            | {"genotype": _plain(OmegaConf.structured(schema.GenotypeConfig))}
        )
        base = OmegaConf.merge(
            _plain(OmegaConf.structured(schema.NasrunConfig)), base, _inherited(rel.parts[0], entries)
        )
    elif rel.parts[0] == "search_recipe":  # <search>_<space>.yaml: over that search option's values
        space = next(sp.stem for sp in (root / "space").glob("*.yaml") if path.stem.endswith(f"_{sp.stem}"))
        base = _option_values("search", path.stem.removesuffix(f"_{space}"))
    elif rel.parts[0] == "experiment_overrides":
        group, option = rel.parts[1], path.stem.split("_", 1)[1]
        base = _option_values(group, option)
    else:
        base = _inherited(str(rel.parent), entries)
    restated = _restated(own, OmegaConf.to_container(base, resolve=False))
    assert not restated, f"{rel} restates defaults (delete them; the constructor owns them): {restated}"


TARGETED = [n for g in schema.SCHEMAS.values() for n in g.values() if hasattr(n, "_target_")]


@pytest.mark.parametrize("cls", TARGETED, ids=[c.__name__ for c in TARGETED])
def test_schemas_are_the_constructors_signatures(cls: type) -> None:
    """The schema has a field per parameter of its target, with the parameter's default."""
    import inspect

    from hydra.utils import get_method

    node = OmegaConf.structured(cls)
    target = get_method(node._target_)
    params = {
        n: p.default
        for n, p in inspect.signature(target).parameters.items()
        if n not in schema.SEARCH_RUNTIME_ARGS or not node.get("_partial_")
    }
    assert set(params) == set(node) - {"_target_", "_partial_"}
    for name, default in params.items():
        value = OmegaConf.to_container(node, resolve=False)[name]  # type: ignore[index]
        if default is inspect.Parameter.empty:  # required: the config must set it
            assert value == "???", name
        else:
            assert value == (list(default) if isinstance(default, tuple) else default), name


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


def test_discovered_oneshot_pieces_keep_their_names() -> None:
    """The sampler and update classes of nasrun/search/oneshot/ are found by reading the folder."""
    found = set(schema.ONESHOT_SCHEMAS)
    assert {
        "gumbel_max_st_schema",
        "gumbel_softmax_schema",
        "single_level_schema",
        "uniform_sampling_schema",
        "reinforce_controller_schema",
    } <= found
    assert "one_shot_plugin_schema" not in found and "arch_sampler_schema" not in found  # bases


def test_a_new_plugin_file_needs_no_schema_edit(tmp_path, monkeypatch) -> None:
    """A class deriving (through another class of the folder) from OneShotPlugin is discovered."""
    import shutil

    folder = schema.module_source("nasrun.search.oneshot.plugin").parent
    copy = tmp_path / "nasrun" / "search" / "oneshot"
    shutil.copytree(folder, copy)
    for pkg in (tmp_path / "nasrun", tmp_path / "nasrun" / "search"):
        (pkg / "__init__.py").write_text("")
    (copy / "zz_method.py").write_text(
        "from __future__ import annotations\n"
        "from nasrun.search.oneshot.plugin import OneShotPlugin\n"
        "class _Base(OneShotPlugin):\n    pass\n"
        "class NoisyEdges(_Base):\n"
        "    def __init__(self, scale: float = 0.3, epochs: int | None = None) -> None:\n"
        "        self.scale = scale\n"
    )
    monkeypatch.setattr(schema, "module_source", lambda m: copy / f"{m.rsplit('.', 1)[1]}.py")
    schema._module_ast.cache_clear()
    try:
        found = schema.oneshot_pieces()
        assert found["NoisyEdges"] == "nasrun.search.oneshot.zz_method.NoisyEdges"
        assert "_Base" not in found
        node = OmegaConf.structured(schema.schema_of(found["NoisyEdges"], "NoisyEdgesConfig"))
        assert OmegaConf.to_container(node) == {
            "_target_": "nasrun.search.oneshot.zz_method.NoisyEdges",
            "scale": 0.3,
            "epochs": None,
        }
        with pytest.raises(Exception, match="scale"):
            node.scale = "big"
    finally:
        schema._module_ast.cache_clear()


@pytest.mark.parametrize("cls", TARGETED, ids=[c.__name__ for c in TARGETED])
def test_schema_types_are_the_annotations(cls: type) -> None:
    """Each field's type is what Hydra would check for the imported signature's annotation."""
    import dataclasses
    import inspect
    import typing

    from hydra.utils import get_method

    target = get_method(OmegaConf.structured(cls)._target_)
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    scalars = (int, float, bool, str)
    for f in dataclasses.fields(cls):
        if f.name not in hints:
            continue
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if hint in scalars:
            assert f.type is hint, f.name
        elif (
            typing.get_origin(hint) in (typing.Union, __import__("types").UnionType)
            and len(args) == 1
            and args[0] in scalars
        ):
            assert f.type == typing.Optional[args[0]], f.name  # noqa: UP045
        elif f.type is not typing.Any:
            assert typing.get_origin(f.type) in (list, dict, typing.Union), (f.name, f.type, hint)
