"""``experiment=smoke`` composes and finishes with every search, space and offline data set.

The fast suite runs a covering set (every search, every space and every data set at least once,
and each retraining path); ``-m slow`` runs the whole cross product.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from nasrun import UserError
from nasrun.config import config_dir
from nasrun.pipeline import named_genotype, run
from nasrun.space.cifar_cell import node_counts
from nasrun.space.genotype import Genotype
from tests.data.cifar_files import trust_local_files, write_cifar10, write_cifar100


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


SEARCHES = _options("search")
SPACES = _options("space")
DATA = _options("data")  # cifar10/100 run on tiny folders in torchvision's format, written here
#: What is refused in one line instead: P-DARTS deepens the supernet, and NB201's depth is fixed.
REFUSED = {("p_darts", "nb201")}

#: Every search, space and data set at least once; the sampling one-shot methods on both spaces.
COVERING = [
    ("darts", "cifar_cell", "digits"),
    ("darts", "nb201", "digits"),
    ("darts_2nd", "cifar_cell", "synthetic"),
    ("random_search", "nb201", "cifar10"),
    ("evolution", "cifar_cell", "cifar100"),
    ("reinforce", "nb201", "digits"),
    ("pnas", "cifar_cell", "digits"),
    ("bo", "nb201", "synthetic"),
    ("pc_darts", "cifar_cell", "digits"),
    ("darts_plus", "cifar_cell", "digits"),
    ("p_darts", "cifar_cell", "synthetic"),
    ("gdas", "cifar_cell", "digits"),
    ("gdas", "nb201", "digits"),
    ("snas", "cifar_cell", "synthetic"),
    ("snas", "nb201", "digits"),
    ("rsps", "cifar_cell", "digits"),
    ("rsps", "nb201", "digits"),
    ("enas", "cifar_cell", "digits"),
    ("enas", "nb201", "synthetic"),
    ("drnas", "cifar_cell", "digits"),
    ("drnas", "nb201", "digits"),
    ("drnas_kl", "cifar_cell", "digits"),
    ("drnas_progressive", "cifar_cell", "digits"),
    ("drnas_progressive", "nb201", "digits"),
    ("sdarts_rs", "cifar_cell", "digits"),
    ("sdarts_rs", "nb201", "digits"),
    ("sdarts_adv", "cifar_cell", "digits"),
    ("sdarts_adv", "nb201", "digits"),
    ("robust_darts", "cifar_cell", "digits"),
    ("robust_darts_l2", "nb201", "digits"),
    ("robust_darts_dp", "cifar_cell", "synthetic"),
]


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    write_cifar10(root, per_batch=40)
    write_cifar100(root, n_train=200, n_test=40)
    trust_local_files(monkeypatch)
    return root


def _smoke(compose_cfg, run_dir: Path, data_root: Path, *overrides: str) -> dict:
    cfg = compose_cfg("experiment=smoke", *overrides)
    if "root" in (cfg.get("data") or {}):
        cfg.data.root = str(data_root)
        cfg.data.download = False
    returned = run(cfg, run_dir)
    result = json.loads((run_dir / "result.json").read_text())
    # The task returns result.json's numbers: a sweep picks its objective among them by name.
    assert returned == {
        k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    # Every smoke run retrains last: its validation accuracy is the last retraining epoch's.
    last = json.loads((run_dir / "retrain_history.jsonl").read_text().splitlines()[-1])
    assert returned["val_acc"] == last["val_acc"] and returned["test_acc"] == last["test_acc"]
    assert (run_dir / "genotype.json").is_file() and result["genotype"]
    return result


@pytest.mark.parametrize(
    ("group", "sized_by"),
    [
        ("search", "search"),
        ("space", "space"),
        ("data", "data"),
        ("retrain", "space"),
        ("evaluator", "evaluator"),
    ],
)
def test_every_option_has_its_smoke_sizes(group: str, sized_by: str) -> None:
    """A new option without its ``smoke_<option>.yaml`` would run at full size under
    ``experiment=smoke`` (hours, for a search) instead of failing here."""
    sized = {
        p.stem.removeprefix("smoke_") for p in (config_dir() / "experiment_overrides" / group).glob("*.yaml")
    }
    # Options that are small already need no file: the synthetic data set's and the tabular evaluator's.
    small = {"evaluator": {"tabular"}}.get(group, set())
    assert set(_options(sized_by)) - small - sized == set()


def test_covering_set_covers_every_option() -> None:
    assert {s for s, _, _ in COVERING} == set(SEARCHES)
    assert {s for _, s, _ in COVERING} == set(SPACES)
    assert {d for _, _, d in COVERING} == set(DATA)


@pytest.mark.parametrize(("search", "space", "data"), COVERING)
def test_smoke_search_and_retrain(compose_cfg, tmp_path: Path, data_root: Path, search, space, data) -> None:
    result = _smoke(
        compose_cfg, tmp_path / "run", data_root, f"search={search}", f"space={space}", f"data={data}"
    )
    assert result["space"] == space and result["epochs"] == 1  # retrained, one epoch


@pytest.mark.slow
@pytest.mark.parametrize(
    ("search", "space", "data"),
    [c for c in itertools.product(SEARCHES, SPACES, DATA) if c[:2] not in REFUSED],
)
def test_smoke_cross_product(compose_cfg, tmp_path: Path, data_root: Path, search, space, data) -> None:
    _smoke(compose_cfg, tmp_path / "run", data_root, f"search={search}", f"space={space}", f"data={data}")


@pytest.mark.parametrize(("search", "space"), sorted(REFUSED))
def test_a_refused_combination_is_one_line(compose_cfg, tmp_path: Path, search: str, space: str) -> None:
    with pytest.raises(UserError, match=rf"space={space} has a fixed depth") as info:
        run(compose_cfg("experiment=smoke", f"search={search}", f"space={space}"), tmp_path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("genotype", _options("genotype"))
def test_smoke_retrains_every_named_genotype(
    compose_cfg, tmp_path: Path, data_root: Path, genotype: str
) -> None:
    result = _smoke(compose_cfg, tmp_path / "run", data_root, "task=retrain", f"genotype={genotype}")
    # The named cells have 4 nodes; the smoke space's 2 are a search size, not a retraining one.
    named = named_genotype(genotype)
    assert len(node_counts(named, "normal")) == len(node_counts(named, "reduce")) == 4
    assert result["genotype"].count("~") == len(named.normal) + len(named.reduce)


def test_smoke_retrains_an_nb201_genotype_file(compose_cfg, tmp_path: Path, data_root: Path) -> None:
    from nasrun.space.nb201 import from_string

    path = tmp_path / "genotype.json"
    from_string(
        "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|nor_conv_3x3~2|"
    ).save(path)
    result = _smoke(
        compose_cfg, tmp_path / "run", data_root, "task=retrain", "space=nb201", f"genotype_path={path}"
    )
    assert Genotype.load(tmp_path / "run" / "genotype.json").space == "nb201"
    assert result["params"] > 0
