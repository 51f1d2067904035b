"""Read what runs left behind: a run folder, a Hydra multirun folder or a BoTorch sweep folder,
or several of these together (a folder of them, such as ``outputs/runs``, or several paths).

A run folder holds ``.hydra/`` (the composed config and the overrides), ``result.json`` once the
run has ended, ``history.jsonl`` and perhaps ``genotype.json`` and ``retrain_history.jsonl``. A
multirun folder holds one run folder per job (``0/``, ``1/``, ...) and Hydra's ``multirun.yaml``; a
BoTorch sweep folder holds the same job folders plus the sweeper's trial store (``trials.sqlite``,
or ``hydra.sweeper.storage``) and ``optimization_results.yaml``. Nothing here writes: reading a
folder while its runs go on is safe, and a history line still being written is skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from nasrun import UserError
from nasrun.bo.store import Trial, TrialStore
from nasrun.run_folder import read_history

#: Run status without a trial store: the run wrote ``result.json`` (done) or has not (incomplete:
#: still running, or stopped before its end). With a store, a trial's state names the status.
DONE, INCOMPLETE = "done", "incomplete"


#: Files only a BoTorch sweep leaves in its folder (the store unless ``hydra.sweeper.storage``).
_SWEEP_FILES = ("optimization_results.yaml", "trials.sqlite")


class NotAResultFolder(UserError):
    """The path is no folder this module can read."""


@dataclass
class Run:
    """One run folder.

    Attributes:
        path: the folder.
        name: its name in a table: the job number in a multirun, else the folder's name.
        job: the Hydra job number (``None`` for a single run).
        overrides: the command-line overrides of the run, key -> value as written.
        result: ``result.json``, or ``None`` while the run has not ended.
        history: the records of ``history.jsonl``.
        status: ``done``, ``incomplete``, or the trial's state in a sweep (``failed``, ``running``, ...).
        trial: the sweep's trial that ran in this folder, if any.
    """

    path: Path
    name: str
    job: int | None
    overrides: dict[str, str]
    result: dict[str, Any] | None
    history: list[dict[str, Any]]
    status: str
    trial: Trial | None = None

    @property
    def objective(self) -> float | None:
        """The run's objective: its trial's value in a sweep, else its validation accuracy.

        In a sweep the trial decides: a failed trial has none, even if its run wrote a result. Out
        of one, it is the run's ``val_acc`` (a sweep's default objective), or none if the run had
        no validation split: no other metric stands in for it.
        """
        if self.trial is not None:
            return None if self.trial.value is None else float(self.trial.value)
        value = (self.result or {}).get("val_acc")
        return None if value is None else float(value)

    @property
    def wall_s(self) -> float | None:
        """Seconds the run's phases took (search and retraining), else the trial's wall time."""
        phases = (self.result or {}).get("wall_s")
        if isinstance(phases, dict) and phases:
            return float(sum(phases.values()))
        return None if self.trial is None else self.trial.wall_time


@dataclass
class Folder:
    """What a path holds: one run, the runs of a multirun, or the runs and trials of a sweep.

    Attributes:
        kind: ``run``, ``multirun``, ``sweep``, or ``runs``: the runs of several folders together
            (several paths given, or a folder of run folders such as ``outputs/runs``).
        path: the folder given (for ``runs``, the folder the runs' names are relative to).
        runs: its runs, in job order (``runs``: in the order of the folders, then of their jobs).
        trials: the sweep's trials in proposal order (empty unless ``kind == "sweep"``).
        direction: the sweep's direction, ``maximize`` or ``minimize``.
        parts: for ``runs``, the multirun and sweep folders its runs come from.
    """

    kind: str
    path: Path
    runs: list[Run]
    trials: list[Trial] = field(default_factory=list)
    direction: str = "maximize"
    parts: list[Folder] = field(default_factory=list)


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a Hydra run folder (it has ``.hydra/config.yaml``)."""
    return (path / ".hydra" / "config.yaml").is_file()


def read_folder(path: str | Path) -> Folder:
    """Read a run folder, a multirun folder, a BoTorch sweep folder, or a folder of such folders.

    Args:
        path: the folder. A folder that is none of the first three, such as ``outputs/runs`` with
            its ``DATE/TIME/`` run folders, is searched for them (see ``combine``).

    Returns:
        Its runs (and for a sweep its trials).

    Raises:
        NotAResultFolder: ``path`` is none of these, in one line naming what was looked for.
        UserError: a sweep's trial store cannot be read.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotAResultFolder(f"{path}: no such folder")
    folder = _read_one(path)
    if folder is not None:
        return folder
    found = _find_folders(path)
    if not found:
        raise NotAResultFolder(
            f"{path}: not a run folder (.hydra/config.yaml), a multirun folder (multirun.yaml, "
            "job folders 0/ 1/ ...) or a BoTorch sweep folder (optimization_results.yaml, "
            "trials.sqlite), and holds none"
        )
    return combine(found, path)


def read_folders(paths: Sequence[str | Path]) -> Folder:
    """``read_folder`` of one path; the runs of several in one ``runs`` folder (``combine``)."""
    if len(paths) == 1:
        return read_folder(paths[0])
    return combine([read_folder(p) for p in paths])


def combine(folders: Sequence[Folder], path: Path | None = None) -> Folder:
    """The runs of several folders as one ``runs`` folder, to compare them in one table.

    Each run is named by its path relative to ``path`` (default: the folders' deepest common
    folder), e.g. ``2024-05-01/10-00-00`` or ``seeds/3``; a run given twice counts once. The
    multirun and sweep folders among ``folders`` stay in ``parts`` (a sweep's trials, figures).
    """
    runs: dict[Path, Run] = {}
    for folder in folders:
        for run in folder.runs:
            runs.setdefault(run.path.resolve(), run)
    if path is None:
        # The parent of a lone run, so that it is named by its own folder.
        paths = list(runs) if len(runs) > 1 else [p.parent for p in runs]
        path = Path(os.path.commonpath(paths)) if paths else Path(".")
    base = path.resolve()
    for resolved, run in runs.items():
        run.name = resolved.relative_to(base).as_posix() if resolved.is_relative_to(base) else str(run.path)
    parts = [f for f in folders if f.kind != "run"]
    return Folder("runs", path, list(runs.values()), parts=parts)


def _read_one(path: Path) -> Folder | None:
    """``path`` as a run, multirun or sweep folder; ``None`` if it is none of them."""
    if is_run_folder(path):
        return Folder("run", path, [read_run(path)])
    jobs = sorted(
        (p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and is_run_folder(p)),
        key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name),
    )
    swept = any((path / name).is_file() for name in _SWEEP_FILES) or bool(jobs and _botorch_job(jobs[0]))
    if not swept and not (path / "multirun.yaml").is_file():
        # Without Hydra's or the sweeper's files, only numbered job folders make a multirun: a
        # folder that merely holds some run folders (outputs/runs/DATE/) is not one.
        jobs = [p for p in jobs if p.name.isdigit()]
        if not jobs:
            return None
    runs = [read_run(p, name=p.name) for p in jobs]
    return _sweep(path, runs) if swept else Folder("multirun", path, runs)


def _find_folders(path: Path, depth: int = 4) -> list[Folder]:
    """The run, multirun and sweep folders under ``path``, down to ``depth`` levels, in name order.

    Symbolic links to folders are not followed (no cycles); hidden folders (``.hydra``) are skipped.
    """
    found: list[Folder] = []
    if depth == 0:
        return found
    subs = sorted(
        p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    )
    for sub in subs:
        folder = _read_one(sub)
        found += [folder] if folder is not None else _find_folders(sub, depth - 1)
    return found


def read_run(path: Path, name: str | None = None) -> Run:
    """Read one run folder; ``name`` defaults to the folder's name."""
    result = _read_json(path / "result.json")
    return Run(
        path=path,
        name=name if name is not None else path.name,
        job=_job_number(path) if name is not None else None,
        overrides=read_overrides(path),
        result=result if isinstance(result, dict) else None,
        history=read_history(path / "history.jsonl"),
        status=DONE if isinstance(result, dict) else INCOMPLETE,
    )


def read_overrides(path: Path) -> dict[str, str]:
    """A run's command-line overrides (``.hydra/overrides.yaml``) as key -> value.

    The ``+``/``++``/``~`` prefixes are dropped from the keys: they say how a key was set, not
    which key it is.
    """
    file = path / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return {}
    lines = OmegaConf.to_container(OmegaConf.load(file))
    out: dict[str, str] = {}
    for line in lines if isinstance(lines, list) else []:
        key, _, value = str(line).partition("=")
        out[key.lstrip("+~")] = value
    return out


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _hydra_yaml(path: Path) -> DictConfig | ListConfig | None:
    """A job's ``.hydra/hydra.yaml`` (unresolved), or ``None``."""
    file = path / ".hydra" / "hydra.yaml"
    return OmegaConf.load(file) if file.is_file() else None


def _select(cfg: DictConfig | ListConfig | None, key: str) -> Any:
    """``cfg``'s value at the dotted ``key``, or ``None`` (also for no config)."""
    return None if cfg is None else OmegaConf.select(cfg, key, default=None)


def _botorch_job(path: Path) -> bool:
    """Whether the job in ``path`` was launched by the BoTorch sweeper."""
    target = _select(_hydra_yaml(path), "hydra.sweeper._target_")
    return isinstance(target, str) and "nasrun_botorch_sweeper" in target


def _job_number(path: Path) -> int | None:
    """The Hydra job number of a job folder: ``hydra.job.num``, else the folder's name if a number."""
    num = _select(_hydra_yaml(path), "hydra.job.num")
    if isinstance(num, int):
        return num
    return int(path.name) if path.name.isdigit() else None


def _sweep(path: Path, runs: list[Run]) -> Folder:
    """The sweep's trials, each matched to the run of its job."""
    hydra = _hydra_yaml(runs[0].path) if runs else None
    store_path = path / "trials.sqlite"
    storage = _select(hydra, "hydra.sweeper.storage")
    if storage:
        store_path = Path(str(storage).removeprefix("sqlite:///")).expanduser()
        if not store_path.is_absolute():
            # A relative storage path is relative to where the sweep was started.
            cwd = _select(hydra, "hydra.runtime.cwd")
            store_path = Path(str(cwd or path)) / store_path
    trials: list[Trial] = []
    if store_path.is_file():
        store = TrialStore(store_path)
        try:
            trials = store.trials()
        finally:
            store.close()
    by_job = {t.job: t for t in trials if t.job is not None}
    for run in runs:
        trial = None if run.job is None else by_job.get(run.job)
        if trial is not None:
            run.trial = trial
            run.status = DONE if trial.state.value == "COMPLETED" else trial.state.value.lower()
    results = path / "optimization_results.yaml"
    direction = _select(OmegaConf.load(results), "direction") if results.is_file() else None
    direction = direction or _select(hydra, "hydra.sweeper.direction")
    return Folder("sweep", path, runs, trials, str(direction or "maximize"))
