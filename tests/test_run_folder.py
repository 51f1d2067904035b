"""Run-folder files: atomic writes that survive SIGKILL, normal permissions, history logs, checkpoints."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from nasrun import UserError
from nasrun.run_folder import (
    PAUSE_AFTER_CHECKPOINT,
    PHASE_TIMES,
    HistoryLog,
    PhaseClock,
    atomic_write,
    load_checkpoint,
    python_rng_state,
    read_history,
    read_phase_times,
    rng_state,
    save_checkpoint,
    set_python_rng_state,
    set_rng_state,
    write_json_atomic,
    write_text_atomic,
)

REPO = Path(__file__).resolve().parent.parent

# Every writer of a run folder, each writing a fresh file at `path`.
WRITERS: dict[str, Callable[[Path], object]] = {
    "atomic_write": lambda path: atomic_write(path, lambda f: f.write(b"\x89PNG")),
    "write_text_atomic": lambda path: write_text_atomic(path, "text\n"),
    "write_json_atomic": lambda path: write_json_atomic(path, {"a": 1}),
    "save_checkpoint": lambda path: save_checkpoint(path, {"epoch": 1}),
    "HistoryLog": lambda path: HistoryLog(path, [{"step": 0}]),
}


def _truncated(path: Path) -> None:
    save_checkpoint(path, {"model": {"w": torch.randn(64, 64)}, "epoch": 3})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint\x00\xff" * 10)


@pytest.mark.parametrize("damage", [_truncated, _garbage])
def test_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path: Path, damage) -> None:
    path = tmp_path / "checkpoints" / "search.pt"
    path.parent.mkdir()
    damage(path)
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "damaged or not a nasrun checkpoint" in message
    assert "delete it" in message and "hydra.run.dir" in message
    # torch's own text suggests weights_only=False, which would run code from the file.
    assert "weights_only" not in message and "\n" not in message


def test_a_valid_file_that_is_not_a_dict_is_refused_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "retrain.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(UserError, match="damaged or not a nasrun checkpoint"):
        load_checkpoint(path)


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    save_checkpoint(path, {"epoch": 2, "w": torch.ones(2)})
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.ones(2))


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    rng = random.Random(5)
    rng.random()
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state(), "own": python_rng_state(rng)})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)), rng.random())
    state = load_checkpoint(tmp_path / "rng.pt")  # weights_only: the states must be plain tensors
    set_rng_state(state["rng"])
    set_python_rng_state(rng, state["own"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1)), rng.random()) == expected


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_get_the_mode_a_plain_file_would_get(
    tmp_path: Path, writer: Callable[[Path], object], umask: int, mode: int
) -> None:
    path = tmp_path / "sub" / "file"
    old = os.umask(umask)
    try:
        writer(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(path.parent) == ["file"]  # the missing folder was created, no temporary file left


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    write_json_atomic(path, {"run": 1})

    def fails_half_way(f) -> None:
        f.write(b'{"run": ')
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fails_half_way)
    assert json.loads(path.read_text()) == {"run": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_sigkill_during_a_write_leaves_the_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "search.pt"
    save_checkpoint(path, {"epoch": 1})
    # The child dies by SIGKILL with half of the next checkpoint written: no cleanup code runs.
    child = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from nasrun.run_folder import atomic_write

        def write(f):
            f.write(b"half a checkpoint")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        atomic_write(Path({str(path)!r}), write)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    assert load_checkpoint(path) == {"epoch": 1}
    # The dead writer's temporary file stays behind, hidden, never in the target's place.
    (leftover,) = [p for p in path.parent.iterdir() if p != path]
    assert leftover.name.startswith(".search.pt.") and leftover.name.endswith(".tmp")


def test_history_log_rewrites_what_the_checkpoint_knows_then_appends(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    log = HistoryLog(path)
    for step in range(3):
        log.append({"step": step})
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 2]
    with path.open("a") as f:
        f.write('{"step": 3, "val_')  # a line cut short by a kill
    # A resume from a checkpoint taken after step 1: step 2's line and the cut one go.
    resumed = HistoryLog(path, log.records[:2])
    resumed.append({"step": 2, "again": True})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == [{"step": 0}, {"step": 1}, {"step": 2, "again": True}] == resumed.records


def test_commit_writes_the_checkpoint_before_the_lines_and_the_sinks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, ckpt = tmp_path / "history.jsonl", tmp_path / "checkpoints" / "search.pt"
    seen: list[tuple[int, int]] = []  # (steps in the checkpoint, lines in the file) at each sink call

    class Stop(Exception):
        pass

    class Sink:
        def append(self, record: dict) -> None:
            seen.append((len(load_checkpoint(ckpt)["history"]), len(path.read_text().splitlines())))
            if record["step"] == 3:
                raise Stop  # a pruner stopping the run from its sink

    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd)))
    log = HistoryLog(path, [], [Sink()])
    log.commit([{"step": 0}], ckpt, {"epoch": 1})
    assert len(fsyncs) == 1  # a checkpoint of a step that cost compute is flushed to the disk
    log.commit([{"step": 1}, {"step": 2}], ckpt, {"epoch": 3}, durable=False)  # a batch; free steps
    assert len(fsyncs) == 1
    with pytest.raises(Stop):
        log.commit([{"step": 3}], ckpt, {"epoch": 4})
    # Each sink saw its step in the checkpoint and in the file; the stopped step is in both.
    assert seen == [(1, 1), (3, 3), (3, 3), (4, 4)]
    state = load_checkpoint(ckpt)
    assert state["epoch"] == 4 and state["history"] == log.records == read_history(path)
    assert [r["step"] for r in log.records] == [0, 1, 2, 3]


def test_the_test_hook_pauses_between_the_checkpoint_and_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, ckpt = tmp_path / "history.jsonl", tmp_path / "search.pt"
    at_pause: list[tuple[int, int]] = []
    monkeypatch.setenv(PAUSE_AFTER_CHECKPOINT, "2")
    monkeypatch.setattr(
        "nasrun.run_folder.time.sleep",
        lambda s: at_pause.append((len(load_checkpoint(ckpt)["history"]), len(read_history(path)))),
    )
    log = HistoryLog(path)
    for step in range(4):
        log.commit([{"step": step}], ckpt, {}, durable=False)
    assert at_pause == [(2, 1)] and (tmp_path / "history.jsonl.paused").is_file()


def test_json_is_indented_and_ends_with_a_newline(tmp_path: Path) -> None:
    path = write_json_atomic(tmp_path / "genotype.json", {"normal": [["skip_connect", 0]]})
    assert path.read_text() == json.dumps({"normal": [["skip_connect", 0]]}, indent=2) + "\n"


def test_importing_the_module_does_not_import_torch() -> None:
    """The BoTorch sweeper's launcher workers import it to save each job's return value."""
    code = "import sys, nasrun.run_folder; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


def test_a_phase_clock_counts_the_time_up_to_the_last_checkpoint_across_a_kill(tmp_path: Path) -> None:
    times = tmp_path / "checkpoints" / PHASE_TIMES
    search = PhaseClock(tmp_path, "search", resume=False)
    time.sleep(0.05)
    assert search.stop() >= 0.05
    assert not times.exists()  # a phase that saved no checkpoint leaves no file: nothing to resume

    clock = PhaseClock(tmp_path, "retrain", resume=False)
    time.sleep(0.05)
    save_checkpoint(tmp_path / "checkpoints" / "retrain.pt", {"epoch": 1})
    recorded = read_phase_times(times)["retrain"]
    assert recorded >= 0.05
    time.sleep(0.05)  # work after the last checkpoint, lost to a kill: the clock is never stopped
    assert clock.elapsed() >= recorded + 0.05
    resumed = PhaseClock(tmp_path, "retrain", resume=True)
    assert recorded <= resumed.elapsed() < recorded + 0.05
    assert PhaseClock(tmp_path, "retrain", resume=False).elapsed() < 0.05  # a fresh run starts at zero
