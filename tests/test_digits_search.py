"""Real data: a tiny DARTS search + retrain on scikit-learn's digits learns far above chance (10%)."""

from __future__ import annotations

import json
from pathlib import Path

from nasrun.pipeline import run


def test_tiny_search_and_retrain_on_digits_beats_chance(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "experiment=smoke",
        "search.epochs=2",
        "trainer.epochs=8",
        "trainer.lr=0.05",
        "retrain.network.channels=8",
        "retrain.drop_path=0.0",
    )
    returned = run(cfg, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert returned["val_acc"] == result["val_acc"]
    assert result["test_acc"] > 50.0, result
    assert result["val_acc"] > 50.0, result
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    alphas = history[-1]["alphas"]["normal"]
    assert all(abs(sum(row) - 1.0) < 1e-5 for row in alphas)  # softmaxed weights per edge
