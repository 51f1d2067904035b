"""Resume after a real SIGKILL, mid-search and mid-retrain, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from nasrun.run_folder import PAUSE_AFTER_CHECKPOINT, load_checkpoint, read_history
from tests.conftest import NB201_TABLE, kill_when, run_cli, start_cli, timeless_history, wait_until

ARGS = [
    "experiment=smoke",
    "search.epochs=3",
    "trainer.epochs=3",
    "seed=7",
]


def _start(run_dir: Path, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    return start_cli(*ARGS, f"hydra.run.dir={run_dir}", *extra, cwd=cwd)


def test_sigkill_mid_search_and_mid_retrain_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref = run_cli(*ARGS, f"hydra.run.dir={tmp_path / 'ref'}", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr

    run = tmp_path / "killed"
    proc = _start(run, tmp_path)
    kill_when(proc, run / "history.jsonl", lines=1)  # mid-search
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "result.json").exists()

    proc = _start(run, tmp_path, "resume=true")
    kill_when(proc, run / "retrain_history.jsonl", lines=1)  # mid-retrain
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
    proc = start_cli(*ENAS, f"hydra.run.dir={run}", cwd=tmp_path)
    kill_when(proc, run / "history.jsonl", lines=1)
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


# -- a SIGKILL in the gap between a step's checkpoint and its history line ------------------------
#
# NASRUN_TEST_PAUSE_AFTER_CHECKPOINT=N (nasrun.run_folder) stops a run for a minute right after the
# checkpoint that first holds N steps, before their history lines, and touches <log>.paused: the
# test kills it there, on purpose, then resumes.


def _kill_in_the_gap(args: list[str], run_dir: Path, cwd: Path, log: str, ckpt: str, step: int) -> None:
    """Run ``nasrun ARGS`` into ``run_dir`` and SIGKILL it between step ``step``'s checkpoint and line."""
    proc = start_cli(*args, f"hydra.run.dir={run_dir}", cwd=cwd, env={PAUSE_AFTER_CHECKPOINT: str(step)})
    marker = run_dir / f"{log}.paused"
    wait_until(proc, marker.is_file, f"{marker} appeared")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # Killed in the gap: the checkpoint holds step `step`, the history file does not (yet).
    assert len(load_checkpoint(run_dir / "checkpoints" / ckpt)["history"]) == step
    assert len(read_history(run_dir / log)) == step - 1
    assert not (run_dir / "result.json").exists()


def _kill_in_the_gap_then_resume(tmp_path: Path, args: list[str], log: str, ckpt: str, step: int) -> None:
    """Kill a run in the gap after step ``step``'s checkpoint, resume it, compare with a whole run."""
    want, got = tmp_path / "whole", tmp_path / "killed"
    whole = run_cli(*args, f"hydra.run.dir={want}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    _kill_in_the_gap(args, got, tmp_path, log, ckpt, step)
    done = run_cli(*args, f"hydra.run.dir={got}", "resume=true", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the checkpoint is there, so resume=true is accepted

    def lines(folder: Path) -> list[dict]:
        return timeless_history(folder / log)

    def result(folder: Path) -> dict:
        return {k: v for k, v in json.loads((folder / "result.json").read_text()).items() if "wall" not in k}

    assert result(got) == result(want)
    assert json.loads((got / "genotype.json").read_text()) == json.loads((want / "genotype.json").read_text())
    assert lines(got) == lines(want)
    # Every line of the file is a whole record: no half-written line survived the resume.
    assert len((got / log).read_text().splitlines()) == len(lines(want))


def test_oneshot_search_killed_between_checkpoint_and_history_line_resumes_identically(
    tmp_path: Path,
) -> None:
    # Killed after the first epoch's checkpoint: the resumed run must still train the second.
    # data.test_portion=0.6: fewer training images, a shorter test.
    args = ["experiment=smoke", "search.epochs=2", "data.test_portion=0.6", "retrain.enabled=false", "seed=7"]
    _kill_in_the_gap_then_resume(tmp_path, args, "history.jsonl", "search.pt", step=1)


def test_blackbox_search_killed_between_checkpoint_and_history_line_resumes_identically(
    tmp_path: Path,
) -> None:
    args = [
        "experiment=smoke",
        "search=evolution",
        "space=nb201",
        "evaluator=tabular",
        f"evaluator.table={NB201_TABLE}",
        "search.budget=30",
        "search.population=10",
        "search.sample=3",
        "retrain.enabled=false",
        "seed=4",
    ]
    # Step 17: in the evolution phase (mutations of tournament winners), past the random start.
    _kill_in_the_gap_then_resume(tmp_path, args, "history.jsonl", "search.pt", step=17)


def test_retrain_killed_between_checkpoint_and_history_line_resumes_identically(tmp_path: Path) -> None:
    # Step 1's checkpoint is the folder's first: had its line come first, a kill between the two
    # would leave a line and no checkpoint, and resume=true would refuse the folder.
    args = [
        "task=retrain",
        "genotype=darts_v2",
        "experiment=smoke",
        "trainer.epochs=2",
        "data.test_portion=0.6",
        "seed=2",
    ]
    _kill_in_the_gap_then_resume(tmp_path, args, "retrain_history.jsonl", "retrain.pt", step=1)


@pytest.mark.slow  # two searches and a resume: about 20 s
def test_drnas_progressive_search_resumes_identically_after_the_widening(tmp_path: Path) -> None:
    # Stages of 1 and 2 epochs: killed after epoch 2's checkpoint, the resumed run must rebuild
    # the widened, pruned supernet before loading the checkpoint, then train epoch 3 as the whole run.
    args = [
        "experiment=smoke",
        "search=drnas_progressive",
        "search.epochs=3",
        "search.plugins.progressive.stage_epochs=[1,2]",
        "data.test_portion=0.6",
        "retrain.enabled=false",
        "seed=3",
    ]
    _kill_in_the_gap_then_resume(tmp_path, args, "history.jsonl", "search.pt", step=2)
