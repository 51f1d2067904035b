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
    seeded per step), both processes hold the same numbers to the last bit: synchronised BatchNorm,
    Gumbel draws (GDAS), the second-order step's unrolled weights included."""
    first, second = _steps(tmp_path, search, *TORCHRUN)
    assert first["world"] == 2
    assert first["alphas"] == second["alphas"]
    assert first["weights"] == second["weights"]


@pytest.mark.parametrize("search", [pytest.param("darts", marks=pytest.mark.slow), "darts_2nd"])
def test_two_processes_step_as_one_on_the_same_global_batch(tmp_path: Path, search: str) -> None:
    """With BatchNorm synchronised, two processes take one process's steps on the same global
    batches. In float64 (measured after six steps, first and second order: alphas within 2e-17,
    weights within 3e-16; asserted: 1e-10). In float32 the smoke supernet's 4-channel BatchNorms amplify
    the reordering (first order: alphas within 5e-5 after six steps), so exactness is checked in
    float64."""
    tol = 1e-10
    (alone,) = _steps(tmp_path, f"{search}-double", sys.executable)
    pair = _steps(tmp_path, f"{search}-double", *TORCHRUN)
    assert alone["world"] == 1 and len(pair) == 2
    for got in pair:
        for key in ("alphas", "weights"):
            for a, b in zip(alone[key], got[key], strict=True):
                a64, b64 = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
                assert torch.allclose(a64, b64, atol=tol, rtol=tol), key


def test_without_synchronised_batchnorm_two_processes_depart_from_one(tmp_path: Path) -> None:
    """``trainer.sync_batchnorm=false``: each process normalises its half batch by itself, so the
    steps are not one process's (measured in float64: alphas 1.4e-3 away; asserted: 1e-7)."""
    (alone,) = _steps(tmp_path, "darts_2nd-double", sys.executable)
    first, _ = _steps(tmp_path, "darts_2nd-local-double", *TORCHRUN)
    diff = max(
        (torch.tensor(a) - torch.tensor(b)).abs().max().item()
        for a, b in zip(alone["alphas"], first["alphas"])
    )
    assert diff > 1e-7


def test_a_torchrun_search_and_retraining_write_one_run_folder(tmp_path: Path) -> None:
    """Two processes write one folder, and their PC-DARTS search on digits derives one process's
    genotype. At this size (2 epochs, 4 channels) the genotype is the same with each process's own
    BatchNorm statistics too; the steps' float64 comparison above is what tells them apart."""
    run = tmp_path / "run"
    args = ["experiment=smoke", "search=pc_darts", "data=digits", "search.epochs=2"]
    done = run_cli(*args, f"hydra.run.dir={run}", cwd=tmp_path, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    alone = run_cli(*args, "retrain.enabled=false", f"hydra.run.dir={tmp_path / 'alone'}", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert json.loads((run / "genotype.json").read_text()) == json.loads(
        (tmp_path / "alone" / "genotype.json").read_text()
    )
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
