"""Data-parallel one-shot search: two gloo processes (torchrun) stay identical and match one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import _cli_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "tests" / "search" / "ddp_steps.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _steps(tmp_path: Path, name: str, *cmd: str) -> list[dict]:
    out = tmp_path / name
    done = subprocess.run(
        [*cmd, SCRIPT, str(out), *name.split("-")],
        cwd=tmp_path,
        env=_cli_env({"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=300,
    )
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


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TORCHRUN, "-m", "nasrun", *args],
        cwd=tmp_path,
        env=_cli_env({"PYTHONPATH": str(ROOT)}),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_torchrun_search_and_retraining_write_one_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = _cli(
        tmp_path,
        "experiment=smoke",
        "search=pc_darts",
        "data=digits",
        "search.epochs=2",
        f"hydra.run.dir={run}",
    )
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
    done = _cli(tmp_path, "experiment=smoke", "data=digits", *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0
    assert f"nasrun: error: trainer.distributed=auto: {message}" in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow  # two torchrun searches and a resume: about 30 s
def test_a_torchrun_search_killed_whole_resumes_where_an_uninterrupted_one_ends(tmp_path: Path) -> None:
    args = ["experiment=smoke", "search=darts", "data=digits", "search.epochs=3", "retrain.enabled=false"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _cli(tmp_path, *args, f"hydra.run.dir={whole}")
    assert done.returncode == 0, done.stderr
    cmd = [*TORCHRUN, "-m", "nasrun", *args, f"hydra.run.dir={killed}"]
    env = _cli_env({"PYTHONPATH": str(ROOT)})
    job = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    history, deadline = killed / "history.jsonl", time.monotonic() + 240
    while not (history.is_file() and history.read_text().splitlines()):
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both processes at once
    job.wait()
    resumed = _cli(tmp_path, *args, f"hydra.run.dir={killed}", "resume=true")
    assert resumed.returncode == 0, resumed.stderr

    def lines(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert lines(killed) == lines(whole)
