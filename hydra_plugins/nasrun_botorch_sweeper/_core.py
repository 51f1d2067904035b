"""The BoTorch sweeper's work: parse the space, run trials through the launcher, store, resume.

Loaded only when a sweep actually starts (see ``botorch_sweeper.py``). The optimisation itself is
``nasrun.bo.BayesOpt``; this module is the Hydra side of it. A sweeper process is one *worker*;
several workers (``hydra.sweeper.workers=N``, or N copies of the command, on one machine or as N
SLURM jobs) share one trial store and work together with no batch barrier between them:

* each worker claims its next trials from the store in one transaction (``TrialStore.claim``), so
  the budget ``n_trials`` holds and job numbers are never used twice; each new point is chosen
  with every trial RUNNING in any worker as a pending point;
* every trial is written to the store when claimed, launched, reported on (per epoch, by the job
  itself: ``nasrun.bo.reporting``) and ended; workers beat a heartbeat into the store, and the
  trials of a worker that stops beating (or that has exited, on this machine) are re-queued;
* each job also drops its return value into the sweep folder the moment it returns
  (``_recording.RecordingTask``), so a worker killed in the middle of a batch loses no finished
  work: a re-queued trial whose job had returned is read back from that file, not run again.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from nasrun import UserError
from nasrun.bo import BOSettings, ParamSpace, Trial, TrialState, TrialStore, parse_overrides
from nasrun.bo.engine import BayesOpt
from nasrun.bo.pruners import PrunerKind
from nasrun.bo.reporting import Pruned, store_location
from nasrun.bo.store import ENDED, OPEN, worker_id
from nasrun.config.sweeps import sweep_without_effect, task_epochs

from . import _report
from ._recording import RecordingTask, saved_return
from .config import BoTorchSweeperConf

log = logging.getLogger(__name__)

_MISSING = object()

#: Set in the environment of the workers that ``hydra.sweeper.workers`` starts (their number).
WORKER_ENV = "NASRUN_SWEEP_WORKER"


class BoTorchSweeperImpl:
    """Runs a sweep; built by ``BoTorchSweeper`` from a type-checked ``BoTorchSweeperConf``."""

    def __init__(self, conf: BoTorchSweeperConf) -> None:
        self.conf = conf
        self.settings = BOSettings(**{f.name: getattr(conf, f.name) for f in fields(BOSettings)})

    def _check_settings(self) -> None:
        """One line naming the first setting out of range (here, not in ``__init__``, because
        Hydra wraps exceptions raised while it instantiates the sweeper)."""
        conf = self.conf
        checks = [
            ("n_trials", conf.n_trials >= 1, "at least 1"),
            ("batch_size", conf.batch_size >= 1, "at least 1"),
            ("n_initial", conf.n_initial is None or conf.n_initial >= 1, "at least 1, or null"),
            ("max_failure_rate", 0.0 <= conf.max_failure_rate <= 1.0, "between 0 and 1"),
            ("explore_fraction", 0.0 <= conf.explore_fraction <= 1.0, "between 0 and 1"),
            ("xi", conf.xi >= 0.0, "non-negative"),
            ("ucb_beta", conf.ucb_beta is None or conf.ucb_beta >= 0.0, "non-negative, or null"),
            ("num_restarts", conf.num_restarts >= 1, "at least 1"),
            ("raw_samples", conf.raw_samples >= conf.num_restarts, "at least num_restarts"),
            ("nuts_warmup", conf.nuts_warmup >= 1, "at least 1"),
            ("nuts_samples", conf.nuts_samples >= 16, "at least 16 (one sample is kept in 16)"),
            ("min_epochs", conf.min_epochs >= 1, "at least 1"),
            ("reduction_factor", conf.reduction_factor >= 2, "at least 2"),
            ("min_trials", conf.min_trials >= 1, "at least 1"),
            ("max_epochs", conf.max_epochs is None or conf.max_epochs >= 1, "at least 1, or null"),
            ("workers", conf.workers >= 1, "at least 1"),
            ("heartbeat_timeout", conf.heartbeat_timeout > 0, "positive"),
        ]
        for name, ok, need in checks:
            if not ok:
                raise UserError(f"hydra.sweeper.{name}={getattr(conf, name)} is invalid: it must be {need}")

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keeps the composed config and builds the launcher around the recording task.

        Args:
            hydra_context: Hydra's context, passed on to the launcher.
            task_function: The ``@hydra.main`` function; each trial is one call.
            config: The composed config, ``hydra`` node included.

        Raises:
            UserError: A setting out of range, naming it.
        """
        self._check_settings()
        self.config = config
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        self._check_pruning()
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=RecordingTask(task_function), config=config
        )

    # -- input ------------------------------------------------------------------------------------

    def _space(self, arguments: Sequence[str]) -> tuple[ParamSpace, list[str]]:
        """The search space and fixed overrides from ``hydra.sweeper.params`` and the command line."""
        lines = [f"{k}={v}" for k, v in _flatten(self.conf.params or {}).items()] + list(arguments)
        space, fixed = parse_overrides(lines)
        self._check_paths(lines)
        return space, fixed

    def _check_paths(self, lines: Sequence[str]) -> None:
        """Fails before any trial when a swept key is neither a config key nor a config group."""
        choices = OmegaConf.select(self.config, "hydra.runtime.choices", default={}) or {}
        for override in OverridesParser.create().parse_overrides(list(lines)):
            if not override.is_sweep_override() or override.type is not OverrideType.CHANGE:
                continue  # '+key' adds a new key and '++key' forces it: nothing to find
            key = override.key_or_group
            if key in choices or override.package is not None:
                continue
            if (
                OmegaConf.select(self.config, key, default=_MISSING, throw_on_resolution_failure=False)
                is _MISSING
            ):
                raise UserError(
                    f"hydra.sweeper.params: unknown parameter path '{key}' (no such key in the config; "
                    f"use '+{key}=...' to add a new one)"
                )

    def _check_pruning(self) -> None:
        """Sets ``max_epochs`` (the setting, or the task's) and checks ``min_epochs`` against it."""
        conf = self.conf
        task = task_epochs(self.config)
        if conf.max_epochs is not None:
            self.max_epochs: int | None = conf.max_epochs
            source = f"hydra.sweeper.max_epochs={conf.max_epochs}"
        elif task is not None:
            self.max_epochs = task[1]
            source = f"{task[0]}={task[1]}"
        else:
            self.max_epochs = None
        if conf.pruner is not PrunerKind.none and self.max_epochs is not None:
            if conf.min_epochs >= self.max_epochs:
                raise UserError(
                    f"hydra.sweeper.min_epochs={conf.min_epochs} is invalid: a trial runs {self.max_epochs} "
                    f"epochs ({source}), and the pruner needs min_epochs below that"
                )

    def _open_store(self) -> TrialStore:
        try:
            return TrialStore(store_location(self.conf.storage, self.sweep_dir))
        except UserError as e:
            raise UserError(f"hydra.sweeper.{e}") from None

    # -- the loop ---------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[Trial]:
        """Runs the sweep until ``n_trials`` trials have ended, resuming from the store if any.

        Args:
            arguments: Overrides from the command line; sweeps there join the search space.

        Returns:
            Every trial, in proposal order.

        Raises:
            UserError: Bad search space or settings, a store that cannot be opened, a
                non-numeric objective, or too many failed trials.
        """
        space, fixed = self._space(arguments)
        useless = sweep_without_effect(self.config, space.names)
        if useless is not None:
            log.warning(useless)
        store = self._open_store()
        bo = BayesOpt(space, self.settings, store, budget=self.conf.n_trials)
        n_trials, q = self.conf.n_trials, self.conf.batch_size
        spawned = os.environ.get(WORKER_ENV) is not None
        others = self._start_workers() if self.conf.workers > 1 and not spawned else []
        owner = worker_id()
        used = sum(t.job is not None for t in store.trials())
        log.info(
            f"BoTorch sweep of {space.dim} parameters, {n_trials} trials in batches of {q}; "
            f"store {store.path}" + (f"; {used} trials launched before" if used else "")
        )
        try:
            with (
                _Heartbeat(store, owner, self.conf.heartbeat_timeout / 4),
                _report.progress(n_trials, done=_n_ended(store.trials())) as advance,
            ):
                while True:
                    batch = self._claim(bo, store, owner, q)
                    if not batch:
                        trials = store.trials()
                        if not any(t.state in OPEN for t in trials):
                            break
                        # Other workers' trials are still open: wait, and take over any of them
                        # whose worker dies (``claim`` re-queues those).
                        advance(_n_ended(trials), bo.best())
                        time.sleep(min(1.0, self.conf.heartbeat_timeout / 4))
                        continue
                    fresh = [t for t in batch if not t.proposed]
                    if fresh:
                        bo.ask(into=fresh)
                    store.start(batch)
                    assert batch[0].job is not None
                    returns = self.launcher.launch(
                        [fixed + space.overrides(t.params) for t in batch], initial_job_idx=batch[0].job
                    )
                    for trial, ret in zip(batch, returns, strict=True):
                        self._tell(bo, trial, ret)
                    advance(_n_ended(store.trials()), bo.best())
                    self._check_failures(bo, space)
        finally:
            store.release(owner)  # trials this worker claimed but did not finish: to the others
        self._join(others)
        trials = store.trials()
        if not spawned:  # a started worker leaves the results to the sweep that started it
            _report.write_results(
                self.sweep_dir, space, trials, bo.best(), self.settings.direction, self.max_epochs
            )
        return trials

    def _claim(self, bo: BayesOpt, store: TrialStore, owner: str, q: int) -> list[Trial]:
        """Up to ``q`` trials to launch now; re-queued trials whose job had returned are recorded."""
        batch: list[Trial] = []
        while len(batch) < q:
            got = store.claim(owner, self.conf.n_trials, q - len(batch), self.conf.heartbeat_timeout)
            if not got:
                break
            for trial in got:
                saved = saved_return(self.sweep_dir, trial.job)
                if saved is not None:
                    # The job finished before its worker died: use its value, do not run it again.
                    log.info(f"trial {trial.id}: job {trial.job} had returned; recording its result")
                    self._record(bo, trial, saved[0])
                    continue
                if trial.job is not None:
                    log.info(f"trial {trial.id}: re-running it (job {trial.job} was interrupted)")
                batch.append(trial)
        return batch

    def _start_workers(self) -> list[tuple[subprocess.Popen[bytes], Path]]:
        """Starts ``workers - 1`` copies of this command on the same sweep folder and store.

        Each writes its output to ``<sweep dir>/worker<i>.log``.

        Raises:
            UserError: This process was not started from a command line that can be repeated
                (e.g. a sweep started from Python).
        """
        args, overrides = sys.argv[1:], list(self.config.hydra.overrides.task)
        orig = list(getattr(sys, "orig_argv", []))
        if len(orig) <= len(args) or not Path(sys.argv[0]).exists() or any(o not in args for o in overrides):
            raise UserError(
                f"hydra.sweeper.workers={self.conf.workers}: cannot find the command that started this sweep; "
                "start the workers yourself: the same command, with the same hydra.sweep.dir, once per worker"
            )
        quoted = str(self.sweep_dir.absolute()).replace("\\", "\\\\").replace("'", "\\'")
        command = [*orig[: len(orig) - len(args)], *args, f"hydra.sweep.dir='{quoted}'"]
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for i in range(1, self.conf.workers):
            path = self.sweep_dir / f"worker{i}.log"
            with path.open("wb") as out:
                proc = subprocess.Popen(
                    command,
                    env={**os.environ, WORKER_ENV: str(i)},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append((proc, path))
        log.info(f"started {len(started)} more workers; their output: {self.sweep_dir}/worker<i>.log")
        return started

    @staticmethod
    def _join(workers: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
        for proc, path in workers:
            code = proc.wait()
            if code != 0:
                log.warning(f"a worker exited with status {code} (its trials went to the others); see {path}")

    def _tell(self, bo: BayesOpt, trial: Trial, ret: JobReturn) -> None:
        try:
            value = ret.return_value  # re-raises the job's exception
        except Exception as e:  # any error of a trial is that trial's failure, not the sweep's
            msg = (str(e).strip().splitlines() or [""])[0]
            log.warning(f"trial {trial.id} (job {trial.job}) failed: {type(e).__name__}: {msg}")
            bo.tell(trial.id, None, error=f"{type(e).__name__}: {msg}")
            return
        self._record(bo, trial, value)

    def _record(self, bo: BayesOpt, trial: Trial, value: Any) -> None:
        """Tells ``bo`` the objective in ``value`` (a number, a dict, or ``Pruned``); raises on a non-number."""
        where = f"trial {trial.id} (job {trial.job})"
        if isinstance(value, Pruned):
            bo.tell(trial.id, value.value, pruned_at=value.epoch)
            return
        key = self.conf.objective
        if isinstance(value, Mapping):
            if value.get(key) is None:
                # No fallback to another key: the sweep would optimise something else than asked.
                message = (
                    f"hydra.sweeper.objective={key}: the result of {where} has no {key!r}; it has: "
                    f"{', '.join(sorted(str(k) for k, v in value.items() if v is not None)) or 'none'}"
                )
                bo.tell(trial.id, None, error=message)
                raise UserError(message)
            value = value[key]
        number = _as_float(value)
        if number is None:
            bo.tell(trial.id, None, error=f"returned {value!r}")
            raise UserError(
                f"hydra.sweeper.objective={key}: {where} returned {value!r} ({type(value).__name__}); "
                "the task must return a number or a dict of numbers"
            )
        if not math.isfinite(number):
            log.warning(f"{where} returned {number}: recorded as FAILED")
        bo.tell(trial.id, number)

    def _check_failures(self, bo: BayesOpt, space: ParamSpace) -> None:
        """Stops the sweep (results written) once failures exceed ``max_failure_rate * n_trials``."""
        trials = bo.trials()
        failed = [t for t in trials if t.state is TrialState.FAILED]
        if len(failed) > self.conf.max_failure_rate * self.conf.n_trials:
            _report.write_results(
                self.sweep_dir, space, trials, bo.best(), self.settings.direction, self.max_epochs
            )
            raise UserError(
                f"{len(failed)} of {self.conf.n_trials} trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.conf.max_failure_rate}; last error: {failed[-1].error}"
            )


class _Heartbeat:
    """A thread writing ``TrialStore.heartbeat`` every ``interval`` seconds while in its ``with``."""

    def __init__(self, store: TrialStore, owner: str, interval: float) -> None:
        self.store, self.owner, self.interval = store, owner, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nasrun-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.heartbeat(self.owner)
            except Exception as e:  # noqa: BLE001 - a missed beat must not end the sweep
                log.warning(f"heartbeat not written: {type(e).__name__}: {e}")

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"trainer": {"lr": S}}`` -> ``{"trainer.lr": S}``.

    YAML keeps ``trainer.lr: S`` as one key, but a command-line ``hydra.sweeper.params.trainer.lr=S``
    builds nested dicts; both spell the same parameter, and the command line (nested) wins.
    """
    flat: dict[str, Any] = {}
    nested: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            nested.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return {**flat, **nested}


def _as_float(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, NumPy or a one-element tensor), else None."""
    if isinstance(value, bool):
        return None  # bool is an int subclass, but True is no objective
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # NumPy arrays and torch tensors holding one number
    if callable(item):
        try:
            inner = item()
        except (ValueError, RuntimeError, TypeError):
            return None  # more than one element
        return None if callable(getattr(inner, "item", None)) else _as_float(inner)
    return None


def _n_ended(trials: list[Trial]) -> int:
    return sum(t.state in ENDED for t in trials)
