"""``nasrun search=... space=nb201 evaluator=...`` end to end through the real config and pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.pipeline import run
from nasrun.space.nb201 import from_string
from tests.conftest import NB201_TABLE

TABLE = NB201_TABLE


def test_tabular_search_writes_the_run_folder(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "search=evolution",
        "space=nb201",
        "evaluator=tabular",
        f"evaluator.table={TABLE}",
        "search.budget=30",
        "seed=3",
    )
    returned = run(cfg, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    from_string(result["genotype"])  # the NAS-Bench-201 string of the chosen cell
    assert result["n_evaluations"] == 30
    assert returned["val_acc"] == result["val_acc"] and 0 < result["val_acc"] <= 84.892  # the table's best
    # The chosen cell's test accuracy is the table's entry for it (looked up here).
    assert result["test_acc"] == TabularEvaluator(TABLE).table[result["genotype"]].test_acc
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 30 and history[-1]["best_val_acc"] == result["val_acc"]
    assert {"arch", "val_acc", "best_val_acc", "wall_s"} <= history[0].keys()
    assert (tmp_path / "genotype.json").is_file() and (tmp_path / "convergence.png").is_file()


def test_bad_table_is_one_line_without_traceback(cli, tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("arch,val\n|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,1\n")
    proc = cli(
        "search=random_search",
        "space=nb201",
        "evaluator=tabular",
        f"evaluator.table={table}",
        "hydra.run.dir=run",
    )
    assert proc.returncode == 2
    err = [line for line in proc.stderr.splitlines() if line.startswith("nasrun: error:")]
    assert len(err) == 1 and "t.csv" in err[0] and "missing column 'val_acc'" in err[0]
    assert "Traceback" not in proc.stderr


# A tiny NB201 network proxy-trained for one epoch on the 8x8 digits: seconds per child.
TINY_TRAIN = [
    "space=nb201",
    "space.channels=4",
    "space.cells=1",
    "data=digits",
    "data.image_size=8",
    "evaluator=train",
    "evaluator.epochs=1",
    "trainer.batch_size=64",
    "retrain.enabled=false",
]


def test_train_evaluator_runs_a_tiny_search_on_digits(compose_cfg, tmp_path: Path) -> None:
    cfg = compose_cfg(
        "search=evolution", "search.budget=3", "search.population=2", "search.sample=2", *TINY_TRAIN
    )
    run(cfg, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and len({h["arch"] for h in history}) == 3
    best = max(history, key=lambda h: h["val_acc"])
    assert result["val_acc"] == best["val_acc"] and result["genotype"] == best["arch"]
    assert result["test_acc"] == best["test_acc"]  # the chosen cell's, carried along unseen
    from_string(result["genotype"])


def test_train_evaluator_workers_give_the_same_search(compose_cfg, tmp_path: Path) -> None:
    """evaluator.workers=2 trains random search's children two at a time, with the same results."""
    tiny = ["search=random_search", "search.budget=4", *TINY_TRAIN]
    results, histories = [], []
    for workers in (1, 2):
        run_dir = tmp_path / f"workers{workers}"
        run(compose_cfg(*tiny, f"evaluator.workers={workers}"), run_dir)
        results.append(json.loads((run_dir / "result.json").read_text()))
        lines = (run_dir / "history.jsonl").read_text().splitlines()
        histories.append(
            [{k: v for k, v in json.loads(line).items() if k not in ("cost_s", "wall_s")} for line in lines]
        )
    assert len(histories[0]) == 4 and histories[1] == histories[0]
    assert {k: v for k, v in results[1].items() if k != "wall_s"} == {
        k: v for k, v in results[0].items() if k != "wall_s"
    }


def test_tabular_search_then_real_retraining_of_the_chosen_cell(
    compose_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented path from a table look-up search to training the chosen cell on images."""
    from tests.data.cifar_files import trust_local_files, write_cifar10
    from tests.evaluator.nb201_tables import write_nb201_table

    table = write_nb201_table(tmp_path / "table.csv")
    write_cifar10(tmp_path / "data", per_batch=20)
    trust_local_files(monkeypatch)
    overrides = [
        "search=evolution",
        "space=nb201",
        "evaluator=tabular",
        f"evaluator.table={table}",
        "retrain.enabled=true",
        "data=cifar10",
    ]
    full = compose_cfg(*overrides)
    # The space picks its own retraining recipe: the benchmark's network and training set-up.
    assert full.retrain.network == {"channels": 16, "cells": 5}
    assert (full.trainer.epochs, full.trainer.batch_size, full.trainer.lr, full.trainer.nesterov) == (
        200,
        256,
        0.1,
        True,
    )
    cfg = compose_cfg(*overrides, "experiment=smoke", f"data.root={tmp_path / 'data'}", "data.download=false")
    run(cfg, tmp_path / "run")
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["space"] == "nb201" and result["epochs"] == 1 and result["params"] > 0
    assert (tmp_path / "run" / "checkpoints" / "retrain.pt").is_file()
