"""``scripts/compare_oneshot.py``: its methods are real one-shot configs, and bad input is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import load_script

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_each_method_composes_with_the_demo(compose_cfg) -> None:
    compare = load_script(SCRIPTS / "compare_oneshot.py")
    for method, overrides in compare.METHODS.items():
        cfg = compose_cfg("experiment=demo", *overrides)
        assert cfg.search._target_ == "nasrun.search.oneshot.engine.OneShotSearch", method
        stages = cfg.search.stages
        if stages is not None:  # the stages fit the demo's epochs
            assert sum(stages.epochs) == cfg.search.epochs
        assert cfg.search.warmup_epochs < cfg.search.epochs


def test_unknown_method_is_refused(tmp_path: Path) -> None:
    compare = load_script(SCRIPTS / "compare_oneshot.py")
    with pytest.raises(SystemExit) as info:
        compare.main(["--methods", "darts,bogus", "--out", str(tmp_path)])
    assert info.value.code == 2
