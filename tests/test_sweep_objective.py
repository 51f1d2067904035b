"""What a nasrun sweep optimises: the named objective of the real pipeline, on a validation split.

The sweeps run in this process (Hydra's basic launcher), so that CIFAR-format files written here
pass torchvision's checksum check (``trust_local_files``); everything else is the real ``nasrun``.
"""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nasrun import UserError
from nasrun.bo import TrialStore, prepare_sweeper_args
from nasrun.cli import task
from nasrun.config import config_dir
from nasrun.config.sweeps import sweep_without_effect
from tests.conftest import enter_sweep
from tests.data.cifar_files import trust_local_files, write_cifar10

TASK = task.__wrapped__  # the plain function under @hydra.main


def trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """The sweep's trials as plain dicts (state as its name)."""
    store = TrialStore(sweep_dir / "trials.sqlite")
    return [{**vars(t), "state": t.state.name} for t in store.trials()]


def curves(sweep_dir: Path) -> dict[int, list[tuple[int, float | None]]]:
    """Each trial's per-epoch reports, as the pruner saw them."""
    return TrialStore(sweep_dir / "trials.sqlite").curves()


@pytest.fixture
def nasrun_sweep(
    hydra_sweep_runner: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Callable[..., Path]:
    """``nasrun_sweep(*overrides)``: the real nasrun task swept in-process; returns the sweep folder.
    A sweep that ends on a user mistake raises ``UserError`` with the line nasrun printed."""

    def _sweep(*overrides: str) -> Path:
        sweep_dir = tmp_path / "sweep"
        runner = hydra_sweep_runner(
            calling_file=str(config_dir() / "config.yaml"),
            calling_module=None,
            task_function=TASK,
            config_path=str(config_dir()),
            config_name="config",
            overrides=prepare_sweeper_args(list(overrides)),
            temp_dir=sweep_dir,
        )
        with caplog.at_level(logging.INFO):
            enter_sweep(runner)
        return sweep_dir

    return _sweep


@pytest.fixture
def cifar_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A CIFAR-10 folder shaped like the real one (500 training, 100 test images)."""
    root = tmp_path / "cifar"
    write_cifar10(root, per_batch=100, learnable=True)
    trust_local_files(monkeypatch)
    return root


def cifar(root: Path, *more: str) -> list[str]:
    return ["data=cifar10", f"data.root={root}", "data.download=false", "data.limit=null", *more]


def test_median_pruning_stops_a_trial_on_cifar_shaped_data(
    nasrun_sweep: Callable[..., Path], cifar_root: Path
) -> None:
    """The retraining's per-epoch val_acc reaches the pruner, which stops at least one trial."""
    sweep_dir = nasrun_sweep(
        "sweep=smoke_bo", "experiment=smoke", *cifar(cifar_root), "hydra.sweeper.pruner=median"
    )
    rows = trials(sweep_dir)
    states = [r["state"] for r in rows]
    assert len(rows) == 6 and "PRUNED" in states, states
    reported = curves(sweep_dir)
    for row in rows:
        result_file = sweep_dir / str(row["job"]) / "result.json"
        if row["state"] == "COMPLETED":
            # The objective is the retrained network's validation accuracy, reported each epoch.
            val_acc = json.loads(result_file.read_text())["val_acc"]
            assert row["value"] == pytest.approx(val_acc)
            assert [e for e, _ in reported[row["id"]]] == [1, 2, 3]
            assert reported[row["id"]][-1][1] == pytest.approx(val_acc)
        else:
            assert not result_file.exists() and row["epoch"] == len(reported[row["id"]])
    # The smoke preset retrains a fixed cell: no trial searched.
    assert not any((sweep_dir / str(r["job"]) / "history.jsonl").exists() for r in rows)


def test_a_result_without_the_objective_stops_the_sweep_after_its_first_trial(
    nasrun_sweep: Callable[..., Path], cifar_root: Path, tmp_path: Path
) -> None:
    """CIFAR's default has no validation split, so retraining reports no val_acc: the sweep says
    so instead of optimising another metric."""
    with pytest.raises(UserError) as info:
        nasrun_sweep("sweep=smoke_bo", "experiment=smoke", *cifar(cifar_root, "data.val_portion=0.0"))
    line = str(info.value)
    assert line.startswith("hydra.sweeper.objective=val_acc: the result of trial 0 (job 0) has no 'val_acc'")
    assert "search_val_acc" not in line and "test_acc" in line and "\n" not in line
    (row,) = trials(tmp_path / "sweep")
    assert row["state"] == "FAILED" and row["error"] == line


def test_another_objective_key_is_read_from_the_result(
    nasrun_sweep: Callable[..., Path], cifar_root: Path
) -> None:
    sweep_dir = nasrun_sweep(
        "sweep=smoke_bo",
        "experiment=smoke",
        *cifar(cifar_root),
        "hydra.sweeper.objective=train_acc",
        "hydra.sweeper.n_trials=2",
    )
    for row in trials(sweep_dir):
        result = json.loads((sweep_dir / str(row["job"]) / "result.json").read_text())
        assert row["value"] == pytest.approx(result["train_acc"]) != pytest.approx(result["val_acc"])


def test_sweeping_retraining_settings_without_retraining_says_so_at_the_start(
    nasrun_sweep: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    nasrun_sweep(
        "hydra/sweeper=botorch",
        "search=random_search",
        "space=nb201",
        "evaluator=tabular",
        "evaluator.table=nb201_cifar10_12ep",
        "search.budget=3",
        "hydra.sweeper.params.retrain.drop_path=interval(0.0, 0.4)",
        "hydra.sweeper.params.trainer.lr=tag(log, interval(1e-3, 0.1))",
        "hydra.sweeper.n_trials=1",
    )
    warned = [r.getMessage() for r in caplog.records if "cannot change the objective" in r.getMessage()]
    assert warned == [
        "retrain.enabled=false: the swept retrain.drop_path, trainer.lr cannot change the objective "
        "(the search's validation accuracy); turn retraining on, or sweep the search's settings"
    ]


@pytest.mark.parametrize(
    ("overrides", "keys", "warns"),
    [
        (["retrain.enabled=false"], ["trainer.lr", "retrain.drop_path"], True),
        (["retrain.enabled=false"], ["trainer.lr", "search.arch_lr"], False),  # the search's own
        (["retrain.enabled=false"], ["retrain.enabled", "trainer.lr"], False),
        ([], ["trainer.lr", "retrain.drop_path"], False),  # retraining on: they are the objective
        # A black-box search training each child with the trainer: trainer.* matters, retrain.* not.
        (["retrain.enabled=false", "search=random_search"], ["trainer.lr"], False),
        (["retrain.enabled=false", "search=random_search"], ["retrain.drop_path"], True),
        (["search=random_search", "evaluator=tabular", "space=nb201"], ["trainer.lr"], True),
    ],
)
def test_which_sweeps_cannot_change_the_objective(
    compose_cfg: Callable[..., Any], overrides: list[str], keys: list[str], warns: bool
) -> None:
    assert (sweep_without_effect(compose_cfg(*overrides), keys) is not None) is warns


def test_the_presets_score_on_a_validation_split_of_a_fixed_or_searched_cell() -> None:
    from hydra import compose, initialize_config_dir

    def with_hydra(*overrides: str) -> Any:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return compose("config", overrides=list(overrides), return_hydra_config=True)

    trainer = with_hydra("sweep=trainer_bo")
    assert trainer.task == "retrain" and trainer.genotype.name == "DARTS_V2"
    assert trainer.data.val_portion == 0.1 and trainer.hydra.sweeper.objective == "val_acc"
    assert set(trainer.hydra.sweeper.params) == {
        "trainer.lr",
        "trainer.weight_decay",
        "retrain.drop_path",
        "trainer.batch_size",
    }
    search = with_hydra("sweep=search_bo")
    assert search.task == "nas" and search.retrain.enabled and search.data.val_portion == 0.1
    assert set(search.hydra.sweeper.params) == {"search.arch_lr", "search.arch_weight_decay"}


@pytest.mark.slow  # about 40 s on a busy 2-core machine: six tiny retrainings, as a user runs it
def test_smoke_sweep_with_median_pruning_as_the_readme_runs_it(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    out: subprocess.CompletedProcess[str] = run_cli(
        "sweep=smoke_bo",
        "experiment=smoke",
        "hydra.sweeper.pruner=median",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    states = [r["state"] for r in trials(tmp_path / "sweep")]
    assert len(states) == 6 and "PRUNED" in states
