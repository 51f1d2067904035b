"""Checks on the run folder before Hydra writes anything into it.

Hydra saves the composed config into ``<run dir>/.hydra/`` before it calls the task, so a check
made inside the task comes too late to leave a refused folder untouched. ``RunFolderGuard`` is a
Hydra callback (``hydra.callbacks`` in ``conf/config.yaml``) that runs first and refuses:

- a run folder that cannot be created or written;
- a fresh run (``resume=false``) into a folder that already holds checkpoints;
- ``resume=true`` where there is nothing to resume (no folder, or no checkpoints in it);
- ``resume=true`` with settings that differ from the ones the folder was made with, where the
  difference changes results. Settings that only extend the run (a larger ``search.budget``,
  retraining turned on after a search-only run) or never change results (threads, evaluation
  batch size, data location) are allowed, and the extensions are announced. The device is not
  among them: another device computes in another order and draws other random streams.

Hydra's callbacks turn exceptions into warnings, so a refusal prints one line and exits with
status 2 through ``SystemExit``. Single runs only: a sweep's jobs get fresh numbered folders, and
the sweeper resumes its own trials.

The guard also notes what the folder held (``FolderState``), so that a run the task refuses for
bad input before any work leaves no trace: ``undo_refused_run`` removes the folder Hydra made for
it, or restores the ``.hydra/`` of an earlier run in it.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

#: Settings that never change what a run computes, only where or how fast.
NEUTRAL_KEYS = frozenset(
    {
        "resume",
        "trainer.threads",
        "trainer.eval_batch_size",
        "trainer.tensorboard",
        "evaluator.workers",
        "data.root",
        "data.download",
    }
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole values."""
    if not isinstance(node, dict):
        return {prefix: node}
    if not node and prefix:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _container(cfg: DictConfig) -> dict[str, Any]:
    """The task config as plain values, resolved where it can be (``${hydra:...}`` cannot yet)."""
    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - an interpolation that needs the running job: compare as written
        data = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    return {str(k): v for k, v in data.items()}


def _is_extension(key: str, old: Any, new: Any) -> bool:
    """Whether changing ``key`` from ``old`` to ``new`` continues the same run further."""
    if key == "search.budget":
        return isinstance(old, int) and isinstance(new, int) and new >= old
    if key == "retrain.enabled":
        return old is False and new is True  # retrain the searched cell after a search-only run
    return False


def compare_configs(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The differences between a run folder's config and the current one.

    Args:
        saved: the config the folder was made with (plain, resolved values).
        current: the config of the run that asks to resume it.

    Returns:
        ``(refused, extended)``: one ``"key: old -> new"`` string per difference that changes
        results, and one per difference that only extends the run. Neutral keys are left out.
    """
    old, new = _flatten(saved), _flatten(current)
    refused: list[str] = []
    extended: list[str] = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b or key in NEUTRAL_KEYS:
            continue
        (extended if _is_extension(key, a, b) else refused).append(f"{key}: {a} -> {b}")
    return refused, extended


def holds_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir/checkpoints`` has anything in it."""
    ckpts = run_dir / "checkpoints"
    return ckpts.is_dir() and any(ckpts.iterdir())


def refuse_overwrite(run_dir: Path, resume: bool) -> None:
    """Refuse a fresh run (``resume=false``) in a folder that holds checkpoints.

    Raises:
        UserError: the folder holds checkpoints and ``resume`` is false.
    """
    from nasrun import UserError

    if not resume and holds_checkpoints(run_dir):
        raise UserError(
            f"{run_dir} already holds checkpoints: add resume=true to continue that run, or choose another hydra.run.dir"
        )


def check_run_folder(run_dir: Path, resume: bool, current: dict[str, Any]) -> list[str]:
    """Decide whether a run may use ``run_dir``; nothing is written to an existing folder.

    Args:
        run_dir: the run folder (``hydra.run.dir``).
        resume: the run's ``resume`` setting.
        current: the run's task config (plain values), compared with the folder's on resume.

    Returns:
        The extensions a resume makes (``"key: old -> new"``), to announce.

    Raises:
        UserError: the folder is unusable for this run; the message says why and what to do.
    """
    from nasrun import UserError

    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"hydra.run.dir={run_dir}: exists and is not a folder")
    has_checkpoints = holds_checkpoints(run_dir)
    if not resume:
        refuse_overwrite(run_dir, resume)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"hydra.run.dir={run_dir}: cannot create the run folder ({e.strerror})") from None
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise UserError(f"hydra.run.dir={run_dir}: the run folder is not writable")
        return []
    if not has_checkpoints:
        where = "does not exist" if not run_dir.exists() else "holds no checkpoints"
        raise UserError(
            f"resume=true: nothing to resume, {run_dir} {where}; check hydra.run.dir, or drop resume=true to start a new run"
        )
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"hydra.run.dir={run_dir}: the run folder is not writable")
    saved_path = run_dir / ".hydra" / "config.yaml"
    try:
        saved = OmegaConf.load(saved_path)
    except FileNotFoundError:
        raise UserError(
            f"resume=true: {saved_path} is missing, so what the folder holds cannot be checked; start a new run in another folder"
        ) from None
    except Exception as e:  # noqa: BLE001 - YAML errors come in several types
        raise UserError(
            f"resume=true: cannot read {saved_path} ({e.__class__.__name__}); the file is damaged"
        ) from None
    assert isinstance(saved, DictConfig)
    refused, extended = compare_configs(_container(saved), current)
    if refused:
        raise UserError(
            f"resume=true: {run_dir} was made with other settings ({'; '.join(refused)}); these change results: "
            "resume with the folder's values, or start a new run in another folder"
        )
    return extended


@dataclass
class FolderState:
    """What a run folder held before a run, to undo what the run's start wrote if it is refused.

    Attributes:
        created: the outermost folder on the way to the run folder (itself included) that did
            not exist yet, which the run creates; ``None`` if the run folder existed.
        files: every file outside ``.hydra/`` (and the job's log), with its modification time and
            size: whether the run wrote anything.
        hydra: the bytes of each file in ``.hydra/``, which Hydra overwrites as the run starts.
    """

    created: Path | None
    files: dict[str, tuple[int, int]]
    hydra: dict[str, bytes]

    @classmethod
    def of(cls, run_dir: Path) -> FolderState:
        """The state of ``run_dir`` now (before Hydra writes into it)."""
        path, created = run_dir.resolve(), None
        while not path.exists():
            created, path = path, path.parent
        if created is not None or not run_dir.is_dir():
            return cls(created, {}, {})
        hydra = run_dir / ".hydra"
        saved = {str(p.relative_to(hydra)): p.read_bytes() for p in hydra.rglob("*") if p.is_file()}
        return cls(None, _files(run_dir), saved)


def _files(run_dir: Path) -> dict[str, tuple[int, int]]:
    """The files of ``run_dir`` a run writes (not Hydra's), with their modification time and size."""
    out: dict[str, tuple[int, int]] = {}
    for p in run_dir.rglob("*"):
        rel = p.relative_to(run_dir)
        if rel.parts[0] == ".hydra" or (len(rel.parts) == 1 and p.suffix == ".log") or not p.is_file():
            continue
        st = p.stat()
        out[str(rel)] = (st.st_mtime_ns, st.st_size)
    return out


#: The state of each single run's folder (resolved path) before the run, taken by the guard.
_BEFORE: dict[Path, FolderState] = {}


def undo_refused_run(run_dir: Path) -> bool:
    """Put the folder of a run refused before any work back as it was before the run.

    Hydra writes the run's config (``.hydra/``) before the run starts, so a run refused for bad
    input would leave a folder of a run that never ran, or an earlier run's ``.hydra/`` holding
    the refused settings. If the run wrote nothing else, a folder the run created goes, with the
    parent folders created with it (``outputs/runs/DATE/``) where they are empty; a folder that
    existed gets its ``.hydra/`` back as it was. A folder the run wrote into is left as it is.

    Returns:
        Whether anything was undone.
    """
    key = run_dir.resolve()
    before = _BEFORE.pop(key, None)
    if before is None or not key.is_dir() or _files(key) != before.files:
        return False
    if before.created is None:
        hydra = key / ".hydra"
        shutil.rmtree(hydra, ignore_errors=True)
        for rel, data in before.hydra.items():
            (hydra / rel).parent.mkdir(parents=True, exist_ok=True)
            (hydra / rel).write_bytes(data)
        return True
    shutil.rmtree(key)
    while key != before.created:
        key = key.parent
        try:
            key.rmdir()
        except OSError:  # not empty: another run's folder is in it
            break
    return True


class RunFolderGuard(Callback):
    """Hydra callback: ``check_run_folder`` before a single run writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from nasrun import UserError

        if int(os.environ.get("RANK", "0") or 0) > 0:
            # Another process of a data-parallel (torchrun) run: the first one checks the folder it
            # writes; this one would read the files that one is rewriting.
            return
        run_dir = Path(str(config.hydra.run.dir)).expanduser()
        before = FolderState.of(run_dir)  # before anything is written, for undo_refused_run
        try:
            extended = check_run_folder(run_dir, bool(config.get("resume")), _container(config))
        except UserError as e:
            print(f"nasrun: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None  # Hydra turns a callback's exceptions into warnings
        _BEFORE[run_dir.resolve()] = before
        for change in extended:
            print(f"resume: {change} (extends the run)")
