"""Resume after a real SIGKILL, mid-search and mid-retrain, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import run_cli

ARGS = [
    "experiment=smoke",
    "search.epochs=3",
    "trainer.epochs=3",
    "seed=7",
]


def _start(run_dir: Path, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "nasrun", *ARGS, f"hydra.run.dir={run_dir}", *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill_when(proc: subprocess.Popen[str], path: Path, epochs: int, timeout: float = 240) -> None:
    """SIGKILL ``proc`` as soon as ``path`` (a history file) holds ``epochs`` lines."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= epochs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"run ended before it could be killed: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{path} never reached {epochs} lines")


def test_sigkill_mid_search_and_mid_retrain_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref = run_cli(*ARGS, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = _start(run, tmp_path)
    _kill_when(proc, run / "history.jsonl", epochs=1)  # mid-search
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists()

    proc = _start(run, tmp_path, "resume=true")
    _kill_when(proc, run / "retrain_history.jsonl", epochs=1)  # mid-retrain
    assert proc.returncode == -signal.SIGKILL
    # The phases' time up to the kill: the whole search (two runs of it), the retraining's start.
    before = json.loads((run / "checkpoints" / "wall_s.json").read_text())

    done = run_cli(*ARGS, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = json.loads((run / "result.json").read_text())
    assert got["genotype"] == expected["genotype"]
    # The result's wall time is the whole run's, not only the last resume's.
    assert got["wall_s"]["search_s"] >= before["search"] > 0
    assert got["wall_s"]["retrain_s"] >= before.get("retrain", 0.0)
    for key in ("search_val_acc", "val_acc", "test_acc", "train_acc"):
        assert got[key] == expected[key], key
    ref_hist = [json.loads(line) for line in (tmp_path / "ref" / "history.jsonl").read_text().splitlines()]
    got_hist = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["alphas"] for h in got_hist] == [h["alphas"] for h in ref_hist]
    assert len((run / "retrain_history.jsonl").read_text().splitlines()) == 3


ENAS = [
    "experiment=smoke",
    "search=enas",
    "space=nb201",
    "search.epochs=3",
    "search.update.controller_steps=6",
    "retrain.enabled=false",
    "seed=5",
]


def test_enas_sigkill_mid_search_then_resume_continues_the_controller_exactly(tmp_path: Path) -> None:
    """The controller (weights, optimiser, baseline, sampling generator) is in the checkpoint."""
    ref = run_cli(*ENAS, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasrun", *ENAS, f"hydra.run.dir={run}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    _kill_when(proc, run / "history.jsonl", epochs=1)
    assert proc.returncode == -signal.SIGKILL
    done = run_cli(*ENAS, f"hydra.run.dir={run}", "resume=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    def history(folder: Path) -> list[dict]:
        lines = (folder / "history.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "wall_s"} for line in lines]

    ref_hist, got_hist = history(tmp_path / "ref"), history(run)
    assert len(got_hist) == 3 and got_hist == ref_hist
    assert all("controller_reward" in h for h in got_hist)
    expected = json.loads((tmp_path / "ref" / "result.json").read_text())
    got = json.loads((run / "result.json").read_text())
    assert got["genotype"] == expected["genotype"] and got["search_val_acc"] == expected["search_val_acc"]
