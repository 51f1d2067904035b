"""Every conf/search/*.yaml composes with the real config and runs one tiny step end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasrun.cli import config_dir
from nasrun.pipeline import run

SEARCHES = sorted(p.stem for p in (config_dir() / "search").glob("*.yaml"))


#: experiment=smoke's tiny set-up without its DARTS search keys, which the black-box strategies'
#: schemas reject (they mean nothing to them).
SMOKE_BLACK_BOX = [
    "data=digits",
    "data.image_size=8",
    "space.layers=3",
    "space.channels=4",
    "space.nodes=2",
    "trainer.epochs=1",
    "trainer.batch_size=64",
]


@pytest.mark.parametrize("search", SEARCHES)
def test_search_config_runs_one_tiny_step(compose_cfg, tmp_path: Path, search: str) -> None:
    cfg = compose_cfg(f"search={search}")
    if "budget" in cfg.search:  # black-box strategies: two proxy-trained architectures
        overrides = [*SMOKE_BLACK_BOX, f"search={search}", "retrain.enabled=false"]
        overrides += ["search.budget=2", "evaluator=train", "evaluator.epochs=1"]
    else:  # one-shot strategies: one epoch on a sliver of the data
        overrides = ["experiment=smoke", f"search={search}", "retrain.enabled=false", "search.epochs=1"]
    objective = run(compose_cfg(*overrides), tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert 0.0 <= objective <= 100.0
    assert (tmp_path / "genotype.json").is_file() and result["genotype"]
