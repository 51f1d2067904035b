"""Data-parallel retraining with torch.distributed: two gloo processes on the CPU against one.

The processes are started by ``torchrun --standalone --nproc-per-node 2``, as users start them.
"""

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

from nasrun import UserError
from nasrun.train.distributed import SINGLE, World, detect
from tests.conftest import _cli_env

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = _cli_env({"PYTHONPATH": str(ROOT)})
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("n", [1, 7, 64, 65])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_the_ranks_shards_cover_a_batch_once_in_order(n: int, size: int) -> None:
    parts = [World(rank, size).shard(n) for rank in range(size)]
    covered = [i for p in parts for i in range(n)[p]]
    assert covered == list(range(n))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1


def test_the_world_comes_from_torchruns_variables() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert detect("auto", env) == World(1, 4, 1)
    assert detect("off", env) is SINGLE
    assert detect("auto", {}) is SINGLE
    with pytest.raises(UserError, match="trainer.distributed='yes': must be auto or off"):
        detect("yes", {})
    with pytest.raises(UserError, match="rank 4 is outside a world of 4"):
        detect("auto", {"RANK": "4", "WORLD_SIZE": "4"})


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """Without BatchNorm (whose batch statistics are per process on the CPU), two processes taking
    halves of each global batch end with one process's weights and metrics, up to the float
    reordering of the gradients' all-reduce (observed differences ~1e-7; asserted below 1e-5)."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = str(ROOT / "tests" / "train" / "ddp_fit.py")
    alone = _run([sys.executable, script, str(one)], tmp_path)
    assert alone.returncode == 0, alone.stderr
    pair = _run([*TORCHRUN, script, str(two)], tmp_path)
    assert pair.returncode == 0, pair.stderr
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert (a["world"], b["world"]) == (1, 2)
    for wa, wb in zip(a["weights"], b["weights"], strict=True):
        assert torch.allclose(torch.tensor(wa), torch.tensor(wb), atol=1e-5, rtol=1e-5)
    for key in ("train_loss", "val_loss", "test_loss"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5), key
    for key in ("train_acc", "val_acc", "test_acc"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=0.5), key  # one image at most


@pytest.mark.slow  # the search-and-retrain test beside the search's covers the same writer in the default run
def test_a_torchrun_retraining_writes_one_run_folder_from_the_first_process(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["task=retrain", "genotype=darts_v2", "experiment=smoke", "data=digits", "trainer.epochs=2"]
    done = _run([*TORCHRUN, "-m", "nasrun", *args, f"hydra.run.dir={run}"], tmp_path)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in (run / "retrain_history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # one writer: no line twice
    result = json.loads((run / "result.json").read_text())
    assert result["epochs"] == 2 and result["test_acc"] == lines[-1]["test_acc"]
    assert result["processes"] == 2
    assert done.stdout.count("retrain epoch 2/2") == 1  # one process prints


def test_a_torchrun_start_needs_a_shared_folder(tmp_path: Path) -> None:
    no_dir = _run(
        [*TORCHRUN, "-m", "nasrun", "task=retrain", "genotype=darts_v2", "experiment=smoke"], tmp_path
    )
    assert no_dir.returncode != 0
    assert "started as one of 2 processes (torchrun): give hydra.run.dir=PATH" in no_dir.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow  # two torchrun jobs and a resume: about 25 s
def test_a_torchrun_job_killed_whole_resumes_where_an_uninterrupted_one_ends(tmp_path: Path) -> None:
    args = ["task=retrain", "genotype=darts_v2", "experiment=smoke", "data=digits", "trainer.epochs=4"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _run([*TORCHRUN, "-m", "nasrun", *args, f"hydra.run.dir={whole}"], tmp_path)
    assert done.returncode == 0, done.stderr
    env = _cli_env({"PYTHONPATH": str(ROOT)})
    cmd = [*TORCHRUN, "-m", "nasrun", *args, f"hydra.run.dir={killed}"]
    job = subprocess.Popen(
        cmd,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    history, deadline = killed / "retrain_history.jsonl", time.monotonic() + 240
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both processes at once
    job.wait()
    resumed = _run([*cmd, "resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr

    def lines(folder: Path) -> list[dict]:
        rows = [json.loads(line) for line in (folder / "retrain_history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]

    assert lines(killed) == lines(whole)


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The process of ``rank`` among the launcher's children (read from their environment)."""
    for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
        try:
            env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(child)
    return None


@pytest.mark.slow  # a torchrun job killed mid-run, then resumed: about 20 s
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the ranks' processes in /proc")
def test_one_rank_killed_ends_the_job_with_one_line_and_a_resumable_folder(tmp_path: Path) -> None:
    args = ["task=retrain", "genotype=darts_v2", "experiment=smoke", "data=digits", "trainer.epochs=8"]
    run = tmp_path / "run"
    cmd = [*TORCHRUN, "-m", "nasrun", *args, f"hydra.run.dir={run}"]
    env = _cli_env({"PYTHONPATH": str(ROOT)})
    job = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    history, deadline = run / "retrain_history.jsonl", time.monotonic() + 240
    while not (history.is_file() and len(history.read_text().splitlines()) >= 2):
        assert job.poll() is None and time.monotonic() < deadline, (
            "the job ended before a rank could be killed"
        )
        time.sleep(0.05)
    second = _rank_pid(job.pid, 1)
    assert second is not None
    os.kill(second, signal.SIGKILL)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("nasrun: error:")]
    assert len(ours) == 1, err
    assert "another process of this data-parallel job failed" in ours[0] and "resume=true" in ours[0]
    kept = len(history.read_text().splitlines())
    resumed = _run([*cmd, "resume=true"], tmp_path)  # the folder is intact: it resumes
    assert resumed.returncode == 0, resumed.stderr
    assert len(history.read_text().splitlines()) == 8 >= kept


def test_a_submitit_job_of_two_tasks_retrains_data_parallel(tmp_path: Path) -> None:
    """hydra/launcher=submitit_local with two tasks per node: the launcher the SLURM preset uses, on
    this machine; submitit's job environment gives the ranks, the first process writes."""
    sweep = tmp_path / "sweep"
    args = ["task=retrain", "genotype=darts_v2", "experiment=smoke", "data=digits", "trainer.epochs=2"]
    launcher = ["hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2"]
    done = _run(
        [sys.executable, "-m", "nasrun", "-m", *launcher, *args, f"hydra.sweep.dir={sweep}"], tmp_path
    )
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
    done = _run([sys.executable, script, "--nproc", "2", *tiny, "--steps", "1", "--repeats", "1"], tmp_path)
    assert done.returncode == 0, done.stderr
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert (row["one_processes"], row["many_processes"]) == (1, 2)
    assert row["one_sec_per_step"] > 0 and row["many_sec_per_step"] > 0 and row["speedup"] > 0


def test_when_the_first_process_is_pruned_the_others_end_with_it(tmp_path: Path) -> None:
    """Only the first process reports to a sweep's pruner; when it stops the trial after an epoch,
    the other process leaves at the same epoch's end instead of waiting for it at the next step."""
    out = tmp_path / "out.json"
    t0 = time.monotonic()
    done = _run([*TORCHRUN, str(ROOT / "tests" / "train" / "ddp_fit.py"), str(out), "prune"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - t0 < 120  # no wait for the collective's timeout
    assert Path(f"{out}.rank0").read_text() == "pruned"
    assert Path(f"{out}.rank1").read_text() == "stopped with the first process"
    assert len((tmp_path / "run" / "retrain_history.jsonl").read_text().splitlines()) == 1
