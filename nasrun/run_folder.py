"""Every file a run writes into its folder, written so that a crash never leaves one half-written.

A run folder (``outputs/runs/DATE/TIME/`` or ``hydra.run.dir``; for a BoTorch sweep,
``hydra.sweep.dir``) holds the run's results and the state to resume it from:

- JSON results: ``genotype.json``, ``result.json`` (``write_json_atomic``);
- per-step history logs: ``history.jsonl``, ``retrain_history.jsonl`` (``HistoryLog``);
- checkpoints with every RNG state: ``checkpoints/search.pt``, ``checkpoints/retrain.pt``
  (``save_checkpoint``, ``load_checkpoint``, ``rng_state``, ``set_rng_state``), and the phases'
  wall time up to them, ``checkpoints/wall_s.json`` (``PhaseClock``);
- figures (``cells.png`` with its Graphviz text ``cells.dot``, ``convergence.png``) and the
  sweeper's files (``trials.txt``, ``optimization_results.yaml``, per-job return values)
  (``atomic_write``, ``write_text_atomic``).

Guarantees:

- A SIGKILL at any instant leaves the previous file intact: every file is written to a temporary
  file in the same folder and renamed over the target (``os.replace``, atomic within one file
  system). A killed writer may leave its temporary file (``.NAME.PID.RANDOM.tmp``) behind, never a
  partial target.
- Checkpoints of steps that cost real compute are flushed to the disk (``fsync``) before the
  rename, so a power cut leaves the previous checkpoint or the new one, never a renamed file
  whose data was lost (which would refuse the resume as damaged). Other files, and checkpoints
  of steps that cost nothing (a tabular benchmark's look-ups), are not: a flush costs a few
  milliseconds, and what a power cut loses there is redone in as little.
- Concurrent writers never share a temporary file: its name holds the process id and random bits.
- Files get normal permissions: ``0o666`` minus the umask, as ``open()`` would give them.
  (``tempfile.mkstemp`` would create ``0o600``, and the rename would carry that over.)
- A step's checkpoint is written before its history line (``HistoryLog.commit``), so the history
  file never holds a step that the checkpoint lacks: a run killed between the two resumes from
  that step's checkpoint, and a history line always means ``resume=true`` has a checkpoint to
  start from. The appended lines are not atomic, and the file may lack the steps of the last
  checkpoint; a resume rewrites it from the checkpoint's records, which also drops a
  half-written last line and any line past the checkpoint (files from an older nasrun).

Test-only hook: ``NASRUN_TEST_PAUSE_AFTER_CHECKPOINT=N`` (environment) makes ``HistoryLog.commit``
stop for 60 s right after writing the checkpoint that first holds ``N`` records of a log, before
that step's history lines, touching ``<log file>.paused`` first, so that a test can SIGKILL a run
in that gap on purpose. Runs never set it.

torch and NumPy are imported inside the functions that need them: the BoTorch sweeper's launcher
workers import this module to save each job's return value, and must stay light for applications
that do not use torch.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from nasrun import UserError


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = False) -> Path:
    """Write ``path`` with ``write(f)`` on a binary file, through a temporary file and a rename.

    Args:
        path: the file to write; missing parent folders are created.
        write: writes the whole content to the open binary file it is given (e.g.
            ``lambda f: fig.savefig(f, format="png")``).
        fsync: flush the data to the disk before the rename, so that a power cut cannot leave
            the new name on a file whose data never reached the disk.

    Returns:
        ``path``, as a ``Path``.

    Raises:
        Whatever ``write`` raises; the previous file is then intact and the temporary file removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file must live in the target folder: os.replace is only atomic within one
    # file system. It is created with mode 0666 minus the umask, as open() would create the file
    # itself (tempfile.mkstemp makes it 0600, which the rename would carry over to the result).
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see ``atomic_write``."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically, so readers never see a partial file."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")


class RecordSink(Protocol):
    """Something that takes history records one at a time."""

    def append(self, record: dict[str, Any]) -> None: ...


class HistoryLog:
    """A JSON-lines history (``history.jsonl``): one line per step, rewritten on resume.

    A loop that checkpoints adds each step with ``commit`` (checkpoint first, then the line);
    ``append`` is for logs without a checkpoint.

    Args:
        path: the log file.
        records: the steps the checkpoint knows (empty for a fresh run); the file is rewritten
            to hold exactly these, dropping a half-written last line and the lines of any step
            that never checkpointed.
        sinks: also receive every added record, in order, after it is in the file (TensorBoard
            scalars; a sweep's trial store, whose pruner may stop the run by raising from
            ``append``); ``None`` entries are skipped, so optional sinks can be listed as they are.
        write: false: keep the records in memory only, with no file, checkpoint or sink (the other
            processes of a data-parallel run, whose first process writes).
    """

    def __init__(
        self,
        path: Path,
        records: list[dict[str, Any]] | None = None,
        sinks: Iterable[RecordSink | None] = (),
        write: bool = True,
    ) -> None:
        self.path = path
        self.write = write
        self.sinks = [s for s in sinks if s is not None] if write else []
        self.records: list[dict[str, Any]] = list(records or [])
        if write:
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict[str, Any]) -> None:
        """Add one step's record, in memory and as a line of the file, then give it to the sinks."""
        self._add([record])

    def commit(
        self,
        records: Sequence[dict[str, Any]],
        checkpoint: Path,
        state: dict[str, Any],
        durable: bool = True,
    ) -> None:
        """Add finished steps: their checkpoint first, then their lines, then the sinks.

        A process killed at any point leaves a history file whose steps the checkpoint holds,
        and a resume from that checkpoint rewrites the file to match it.

        Args:
            records: the steps' records, in order (several for a batch of evaluations).
            checkpoint: the checkpoint file (``save_checkpoint``).
            state: what to resume these steps from; the checkpoint holds it with ``"history"``
                set to every record so far, these included.
            durable: flush the checkpoint to the disk (``save_checkpoint``); off for steps that
                cost nothing to redo.
        """
        history = [*self.records, *records]
        if self.write:
            save_checkpoint(checkpoint, {**state, "history": history}, durable=durable)
            _pause_after_checkpoint(self.path, len(self.records), len(history))
        self._add(records)

    def _add(self, records: Sequence[dict[str, Any]]) -> None:
        self.records.extend(records)
        if not self.write:
            return
        with self.path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
        for record in records:
            for sink in self.sinks:
                sink.append(record)


#: The test-only hook's environment variable (module docstring).
PAUSE_AFTER_CHECKPOINT = "NASRUN_TEST_PAUSE_AFTER_CHECKPOINT"


def _pause_after_checkpoint(log: Path, before: int, after: int) -> None:
    """The test-only hook: stop in the gap between a checkpoint and its history lines."""
    at = os.environ.get(PAUSE_AFTER_CHECKPOINT)
    if at and before < int(at) <= after:
        log.with_name(log.name + ".paused").touch()
        time.sleep(60)


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a history file written by ``HistoryLog`` (any JSON-lines file), in order.

    ``[]`` if the file is missing; a line that is not a JSON object (the end of a line still being
    appended by a running job) is skipped.
    """
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def save_checkpoint(path: Path, state: dict[str, Any], durable: bool = True) -> None:
    """Save ``state`` with ``torch.save`` through ``atomic_write``.

    A SIGKILL during the write leaves the previous checkpoint intact; with ``durable``, so does a
    power cut (the data is flushed to the disk before the rename).
    """
    import torch

    atomic_write(path, lambda f: torch.save(state, f), fsync=durable)
    clock = _CLOCKS.get(path.parent.resolve())
    if clock is not None:
        clock.record()  # after the checkpoint: the time recorded is never ahead of it


#: The phases' wall time so far, seconds by phase (``{"search": 41.2}``), in the checkpoints' folder.
PHASE_TIMES = "wall_s.json"

#: The running ``PhaseClock`` of each checkpoints folder (resolved path).
_CLOCKS: dict[Path, PhaseClock] = {}


class PhaseClock:
    """The wall time of one phase of a run (``search``, ``retrain``), counted across resumes.

    While the clock runs, every checkpoint saved into ``run_dir/checkpoints/`` also records the
    time the phase has taken so far in ``checkpoints/wall_s.json``, right after the checkpoint; a
    resumed phase's clock starts from the time recorded there. So a resumed run reports the time
    of the work its results come from: the work up to the last checkpoint, then the resumed
    work. Work lost to the interruption (after the last checkpoint) is done again and counted
    once. A kill between a checkpoint and its time record costs the record one checkpoint's worth.

    Args:
        run_dir: the run folder.
        phase: the phase's name, the key in ``wall_s.json``.
        resume: start from the recorded time (else from zero).
        write: false: only count (the other processes of a data-parallel run, whose first one writes).
    """

    def __init__(self, run_dir: Path, phase: str, resume: bool, write: bool = True) -> None:
        self.path = run_dir / "checkpoints" / PHASE_TIMES
        self.phase = phase
        self.write = write
        earlier = read_phase_times(self.path).get(phase, 0.0) if resume else 0.0
        self._start = time.perf_counter() - earlier
        self._recorded = False
        if write:  # checkpoints record its time as they are saved
            _CLOCKS[self.path.parent.resolve()] = self

    def elapsed(self) -> float:
        """Seconds the phase has taken, earlier runs of it included."""
        return time.perf_counter() - self._start

    def record(self, seconds: float | None = None) -> None:
        """Write the phase's time (default: so far) into ``wall_s.json``, keeping the other phases'."""
        seconds = self.elapsed() if seconds is None else seconds
        write_json_atomic(self.path, {**read_phase_times(self.path), self.phase: seconds})
        self._recorded = True

    def stop(self) -> float:
        """Stop the clock; record its time where the phase checkpoints; returns the phase's seconds.

        The final time is recorded so that a resume of a later phase keeps it; a phase that
        saved no checkpoint (now or before a resume) records nothing, so that the folder does
        not look resumable for it.
        """
        key = self.path.parent.resolve()
        if _CLOCKS.get(key) is self:
            del _CLOCKS[key]
        seconds = self.elapsed()
        if self.write and (self._recorded or self.phase in read_phase_times(self.path)):
            self.record(seconds)
        return seconds


def read_phase_times(path: Path) -> dict[str, float]:
    """The phase times a ``PhaseClock`` recorded in ``path``; ``{}`` if none can be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` (tensors and plain containers only).

    Raises:
        UserError: the file is unreadable or not a nasrun checkpoint; the message names it.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for corrupt files
        # torch's own text for these errors advises weights_only=False, which would run
        # arbitrary code from the file: never pass that advice on.
        raise UserError(_damaged(path)) from None
    if not isinstance(state, dict):
        raise UserError(_damaged(path))
    return state


def _damaged(path: Path) -> str:
    """The one-line report of a checkpoint that cannot be used, and what to do about it."""
    return (
        f"checkpoint {path} is damaged or not a nasrun checkpoint: delete it to start that phase "
        "again, or choose another hydra.run.dir"
    )


def rng_state() -> dict[str, Any]:
    """The state of every global random number generator a run touches (Python, NumPy, torch, CUDA)."""
    import numpy as np
    import torch

    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": _py_state_to_tensor(random.getstate()),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    import numpy as np
    import torch

    random.setstate(_py_state_from_tensor(state["python"]))
    np.random.set_state(
        ("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0)
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def python_rng_state(rng: random.Random) -> dict[str, Any]:
    """A ``random.Random``'s state in a form ``torch.load(weights_only=True)`` accepts."""
    return _py_state_to_tensor(rng.getstate())


def set_python_rng_state(rng: random.Random, state: dict[str, Any]) -> None:
    """Restore what ``python_rng_state`` captured into ``rng``."""
    rng.setstate(_py_state_from_tensor(state))


def _py_state_to_tensor(st: tuple[Any, ...]) -> dict[str, Any]:
    """Python's RNG state with its integers held in one int64 tensor."""
    import torch

    version, internal, gauss = st
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_state_from_tensor(d: dict[str, Any]) -> tuple[Any, ...]:
    """The inverse of ``_py_state_to_tensor``."""
    return (d["version"], tuple(int(v) for v in d["internal"].tolist()), d["gauss"])
