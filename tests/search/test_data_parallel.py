"""Data-parallel one-shot search: two gloo processes (torchrun) stay identical and match one process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TORCHRUN, kill_when, run_cli, run_command, start_cli, timeless_history

SCRIPT = str(Path(__file__).resolve().parent / "ddp_steps.py")


def _steps(tmp_path: Path, name: str, *cmd: str) -> list[dict]:
    out = tmp_path / name
    done = run_command([*cmd, SCRIPT, str(out), *name.split("-")], tmp_path)
    assert done.returncode == 0, done.stderr
    return [json.loads(p.read_text()) for p in sorted(tmp_path.glob(f"{name}.rank*.json"))]


@pytest.mark.parametrize("search", [pytest.param("pc_darts", marks=pytest.mark.slow), "gdas", "darts_2nd"])
def test_every_process_holds_bit_identical_alphas_and_weights(tmp_path: Path, search: str) -> None:
    """After six steps (the weights' and the architecture's gradients averaged, the samplers' draws
    seeded per step), both processes hold the same numbers to the last bit: BatchNorm statistics
    per process, Gumbel draws (GDAS), the second-order step's unrolled weights included."""
    first, second = _steps(tmp_path, search, *TORCHRUN)
    assert first["world"] == 2
    assert first["alphas"] == second["alphas"]
    assert first["weights"] == second["weights"]


@pytest.mark.parametrize("search", [pytest.param("darts", marks=pytest.mark.slow), "darts_2nd"])
def test_two_processes_step_as_one_on_the_same_global_batch(tmp_path: Path, search: str) -> None:
    """Without BatchNorm (whose statistics would be each process's own half batch), two processes
    take one process's steps, up to the float reordering of the averaged gradients (measured after
    six steps: alphas within 1e-9, weights within 2e-8, first and second order; asserted: 1e-6)."""
    tol = 1e-6
    (alone,) = _steps(tmp_path, f"{search}-nobn", sys.executable)
    pair = _steps(tmp_path, f"{search}-nobn", *TORCHRUN)
    assert alone["world"] == 1 and len(pair) == 2
    for got in pair:
        for a, b in zip(alone["alphas"], got["alphas"], strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=tol, rtol=tol)
        for a, b in zip(alone["weights"], got["weights"], strict=True):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=tol, rtol=tol)


def test_a_torchrun_search_and_retraining_write_one_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["experiment=smoke", "search=pc_darts", "data=digits", "search.epochs=2", f"hydra.run.dir={run}"]
    done = run_cli(*args, cwd=tmp_path, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]  # one writer
    result = json.loads((run / "result.json").read_text())
    assert result["genotype"] and result["epochs"] == 1  # searched, then retrained (smoke: 1 epoch)
    assert json.loads((run / "genotype.json").read_text())["normal"] == history[-1]["genotype"]["normal"]
    assert done.stdout.count("search epoch 2/2") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search=enas"], "search.update=ReinforceController runs in one process"),
        (["search=sdarts_adv"], "search.plugins.sdarts=AdversarialPGD runs in one process"),
        (["search=random_search"], "a black-box search runs in one process"),
    ],
)
def test_searches_that_run_in_one_process_refuse_torchrun_in_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    run = f"hydra.run.dir={tmp_path / 'run'}"
    done = run_cli("experiment=smoke", "data=digits", *args, run, cwd=tmp_path, launcher=TORCHRUN)
    assert done.returncode != 0
    assert f"nasrun: error: trainer.distributed=auto: {message}" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # two torchrun searches and a resume: about 30 s
def test_a_torchrun_search_killed_whole_resumes_where_an_uninterrupted_one_ends(tmp_path: Path) -> None:
    args = ["experiment=smoke", "search=darts", "data=digits", "search.epochs=3", "retrain.enabled=false"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(*args, f"hydra.run.dir={whole}", cwd=tmp_path, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    job = start_cli(*args, f"hydra.run.dir={killed}", cwd=tmp_path, launcher=TORCHRUN, start_new_session=True)
    kill_when(job, killed / "history.jsonl", 1, group=True)  # the launcher and both processes
    resumed = run_cli(*args, f"hydra.run.dir={killed}", "resume=true", cwd=tmp_path, launcher=TORCHRUN)
    assert resumed.returncode == 0, resumed.stderr
    assert timeless_history(killed / "history.jsonl") == timeless_history(whole / "history.jsonl")
