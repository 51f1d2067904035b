"""Data-parallel retraining with torch.distributed: two gloo processes on the CPU against one.

The processes are started by ``torchrun --standalone --nproc-per-node 2``, as users start them.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.train.distributed import SINGLE, World, detect
from tests.conftest import (
    TORCHRUN,
    children,
    kill_when,
    run_cli,
    run_command,
    running,
    start_cli,
    timeless_history,
    wait_for_lines,
)

ROOT = Path(__file__).resolve().parents[2]
RETRAIN = ["task=retrain", "genotype=darts_v2", "experiment=smoke", "data=digits"]


@pytest.mark.parametrize("n", [1, 7, 64, 65])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_ranks_shards_cover_a_batch_once_in_order(n: int, size: int) -> None:
    parts = [World(rank, size).shard(n) for rank in range(size)]
    covered = [i for p in parts for i in range(n)[p]]
    assert covered == list(range(n))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1
    rows = [World(rank, size).rows(n) for rank in range(size)]  # what drop-path is told
    assert rows == ([None] if size == 1 else [(n, p.start, p.stop) for p in parts])


def test_the_world_comes_from_torchruns_variables() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert detect("auto", env) == World(1, 4, 1)
    assert detect("off", env) is SINGLE
    assert detect("auto", {}) is SINGLE
    with pytest.raises(UserError, match="trainer.distributed='yes': must be auto or off"):
        detect("yes", {})
    with pytest.raises(UserError, match="rank 4 is outside a world of 4"):
        detect("auto", {"RANK": "4", "WORLD_SIZE": "4"})


def _fit_alone_and_in_two(tmp_path: Path, mode: str) -> tuple[dict, dict]:
    """``tests/train/ddp_fit.py`` in ``mode``, in one process and under torchrun in two: their outputs."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = str(ROOT / "tests" / "train" / "ddp_fit.py")
    alone = run_command([sys.executable, script, str(one), mode], tmp_path)
    assert alone.returncode == 0, alone.stderr
    pair = run_command([*TORCHRUN, script, str(two), mode], tmp_path)
    assert pair.returncode == 0, pair.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    return a, b


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """With BatchNorm (synchronised: the global batch's statistics), two processes taking halves of
    each global batch end with one process's weights and metrics, up to the float reordering of the
    all-reduces (measured: weights within 1.2e-7, losses within a relative 1e-7, accuracies equal;
    asserted: 1e-5)."""
    a, b = _fit_alone_and_in_two(tmp_path, "batch_norm")
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        assert torch.allclose(torch.tensor(wa), torch.tensor(wb), atol=1e-5, rtol=1e-5)
    for key in ("train_loss", "val_loss", "test_loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5), key
    for key in ("train_acc", "val_acc", "test_acc"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=0.5), key  # one image at most


def test_two_processes_retrain_a_cell_network_with_drop_path_as_one(tmp_path: Path) -> None:
    """DARTS's retraining (auxiliary head, cutout, drop-path) of the DARTS_V2 cell network in float64:
    every process draws the drop-path masks of the whole global batch and keeps its rows, so two
    processes end with one process's weights. Measured: identical to the last bit; with each
    process drawing its own share's masks, as before, the weights were 2.4e-2 away."""
    a, b = _fit_alone_and_in_two(tmp_path, "cell")
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        assert torch.allclose(torch.tensor(wa), torch.tensor(wb), atol=1e-12, rtol=0)
    for key in ("train_loss", "val_loss", "test_loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-12), key
    for key in ("train_acc", "val_acc", "test_acc"):
        assert b["metrics"][key] == a["metrics"][key], key


@pytest.mark.slow  # the search-and-retrain test beside the search's covers the same writer in the default run
def test_a_torchrun_retraining_writes_one_run_folder_from_the_first_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = run_cli(*RETRAIN, "trainer.epochs=2", f"hydra.run.dir={run}", cwd=tmp_path, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (run / "retrain_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # one writer: no line twice
    result = json.loads((run / "result.json").read_text())
    assert result["epochs"] == 2 and result["test_acc"] == lines[-1]["test_acc"]
    assert result["processes"] == 2
    assert done.stdout.count("retrain epoch 2/2") == 1  # one process prints


def test_a_torchrun_start_needs_a_shared_folder(tmp_path: Path) -> None:
    no_dir = run_cli(*RETRAIN, cwd=tmp_path, launcher=TORCHRUN)
    assert no_dir.returncode != 0
    assert "started as one of 2 processes (torchrun): give hydra.run.dir=PATH" in no_dir.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # two torchrun jobs and a resume: about 25 s
def test_a_torchrun_job_killed_whole_resumes_where_an_uninterrupted_one_ends(tmp_path: Path) -> None:
    args = [*RETRAIN, "trainer.epochs=4"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(*args, f"hydra.run.dir={whole}", cwd=tmp_path, launcher=TORCHRUN)
    assert done.returncode == 0, done.stderr
    job = start_cli(*args, f"hydra.run.dir={killed}", cwd=tmp_path, launcher=TORCHRUN, start_new_session=True)
    kill_when(job, killed / "retrain_history.jsonl", 2, group=True)  # the launcher and both processes
    resumed = run_cli(*args, f"hydra.run.dir={killed}", "resume=true", cwd=tmp_path, launcher=TORCHRUN)
    assert resumed.returncode == 0, resumed.stderr
    assert timeless_history(killed / "retrain_history.jsonl") == timeless_history(
        whole / "retrain_history.jsonl"
    )


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The process of ``rank`` among the launcher's children (read from their environment)."""
    for child in children(launcher):
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return child
    return None


@pytest.mark.slow  # a torchrun job killed mid-run, then resumed: about 20 s
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' processes in /proc")
def test_one_rank_killed_ends_the_job_with_one_line_and_a_resumable_folder(tmp_path: Path) -> None:
    args = [*RETRAIN, "trainer.epochs=8", f"hydra.run.dir={tmp_path / 'run'}"]
    history = tmp_path / "run" / "retrain_history.jsonl"
    job = start_cli(*args, cwd=tmp_path, launcher=TORCHRUN)
    wait_for_lines(job, history, 2)
    second = _rank_pid(job.pid, 1)
    assert second is not None
    os.kill(second, signal.SIGKILL)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("nasrun: error:")]
    assert len(ours) == 1, err
    assert "another process of this data-parallel job failed" in ours[0] and "resume=true" in ours[0]
    kept = len(history.read_text().splitlines())
    resumed = run_cli(*args, "resume=true", cwd=tmp_path, launcher=TORCHRUN)  # the folder is intact
    assert resumed.returncode == 0, resumed.stderr
    assert len(history.read_text().splitlines()) == 8 >= kept


@pytest.mark.slow  # a torchrun job whose launcher is killed, then resumed: about 20 s
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' processes in /proc")
def test_the_processes_of_a_killed_launcher_stop_and_leave_a_resumable_folder(tmp_path: Path) -> None:
    """torchrun's workers run in sessions of their own: a SIGKILL of the launcher alone must not leave
    them writing the run folder while a resume rewrites it."""
    args = [*RETRAIN, "trainer.epochs=8", f"hydra.run.dir={tmp_path / 'run'}"]
    history = tmp_path / "run" / "retrain_history.jsonl"
    job = start_cli(*args, cwd=tmp_path, launcher=TORCHRUN)
    wait_for_lines(job, history, 2)
    workers = children(job.pid)
    assert len(workers) == 2
    job.kill()  # the launcher only
    _, err = job.communicate(timeout=60)  # the workers hold the pipes: they have stopped too
    assert not any(map(running, workers))
    # Each process stops on its own check, or on the collective call that lost the first to stop
    # (then the first process says that another one failed): which comes first is a race.
    ours = [line for line in err.splitlines() if line.startswith("nasrun: error:")]
    assert any("torchrun's launcher" in line for line in ours), err
    assert all("torchrun's launcher" in line or "another process of this" in line for line in ours), err
    kept = len(history.read_text().splitlines())
    assert kept < 8
    resumed = run_cli(*args, "resume=true", cwd=tmp_path, launcher=TORCHRUN)
    assert resumed.returncode == 0, resumed.stderr
    assert len(history.read_text().splitlines()) == 8


def test_a_submitit_job_of_two_tasks_retrains_data_parallel(tmp_path: Path) -> None:
    """hydra/launcher=submitit_local with two tasks per node: the launcher the SLURM preset uses, on
    this machine; submitit's job environment gives the ranks, the first process writes."""
    sweep = tmp_path / "sweep"
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]
    done = run_cli("-m", *launcher, *RETRAIN, "trainer.epochs=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((sweep / "0" / "result.json").read_text())
    assert result["processes"] == 2
    assert len((sweep / "0" / "retrain_history.jsonl").read_text().splitlines()) == 2
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert [log.read_text().count("retrain epoch 2/2") for log in logs] == [1, 0]  # task 0 prints


@pytest.mark.slow  # the benchmark script, alone and under torchrun: about 10 s
def test_the_data_parallel_benchmark_times_one_process_and_two(tmp_path: Path) -> None:
    script = str(ROOT / "scripts" / "bench_ddp.py")
    tiny = ["--channels", "4", "--layers", "3", "--batch-size", "8", "--image-size", "8"]
    done = run_command(
        [sys.executable, script, "--nproc", "2", *tiny, "--steps", "1", "--repeats", "1"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert (row["one_processes"], row["many_processes"]) == (1, 2)
    assert row["one_sec_per_step"] > 0 and row["many_sec_per_step"] > 0 and row["speedup"] > 0


def test_when_the_first_process_is_pruned_the_others_end_with_it(tmp_path: Path) -> None:
    """Only the first process reports to a sweep's pruner; when it stops the trial after an epoch,
    the other process leaves at the same epoch's end instead of waiting for it at the next step."""
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    done = run_command([*TORCHRUN, str(ROOT / "tests" / "train" / "ddp_fit.py"), str(out), "prune"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 120  # no wait for the collective's timeout
    assert Path(f"{out}.rank0").read_text() == "pruned"
    assert Path(f"{out}.rank1").read_text() == "stopped with the first process"
    assert len((tmp_path / "run" / "retrain_history.jsonl").read_text().splitlines()) == 1
