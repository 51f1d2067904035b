"""The BoTorch sweeper's work: parse the space, run batches through the launcher, store, resume.

Loaded only when a sweep actually starts (see ``botorch_sweeper.py``). The optimisation itself is
``nasrun.bo.BayesOpt``; this module is the Hydra side of it:

* every trial is written to the trial store when proposed, when launched and when it ends;
* each job also drops its return value into the sweep folder the moment it returns
  (``_recording.RecordingTask``), so a sweeper killed in the middle of a batch loses no finished work;
* on start, trials left PENDING or RUNNING by a dead sweeper are either read back from those files
  or launched again, with fresh job numbers that continue after the highest one used.
"""

from __future__ import annotations

import logging
import math
import numbers
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
from nasrun.bo import BOSettings, SearchSpace, Trial, TrialState, TrialStore, parse_overrides
from nasrun.bo.engine import BayesOpt

from . import _report
from ._recording import RecordingTask, saved_return
from .config import BoTorchSweeperConf

log = logging.getLogger(__name__)

_MISSING = object()


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
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=RecordingTask(task_function), config=config
        )

    # -- input ------------------------------------------------------------------------------------

    def _space(self, arguments: Sequence[str]) -> tuple[SearchSpace, list[str]]:
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

    def _store_path(self) -> Path:
        storage = self.conf.storage
        if storage is None:
            return self.sweep_dir / "trials.sqlite"
        if "://" in storage and not storage.startswith("sqlite:///"):
            raise UserError(
                f"hydra.sweeper.storage={storage}: only SQLite files are supported (a path or sqlite:///path)"
            )
        return Path(storage.removeprefix("sqlite:///"))

    # -- the loop ---------------------------------------------------------------------------------

    def sweep(self, arguments: list[str]) -> list[Trial]:
        """Runs the sweep until ``n_trials`` trials have ended, resuming from the store if any.

        Args:
            arguments: Overrides from the command line; sweeps there join the search space.

        Returns:
            Every trial, in proposal order.

        Raises:
            UserError: Bad search space, a non-numeric objective, or too many failed trials.
        """
        space, fixed = self._space(arguments)
        store = TrialStore(self._store_path())
        bo = BayesOpt(space, self.settings, store, budget=self.conf.n_trials)
        n_trials, q = self.conf.n_trials, self.conf.batch_size
        stale = self._recover(bo)
        job = 1 + max((t.job for t in store.trials() if t.job is not None), default=-1)
        log.info(
            f"BoTorch sweep of {space.dim} parameters, {n_trials} trials in batches of {q}; "
            f"store {store.path}" + (f"; resuming after {job} jobs" if job else "")
        )
        with _report.progress(n_trials, done=self._n_ended(store)) as advance:
            while True:
                remaining = n_trials - len(store.trials())
                batch, stale = stale[:q], stale[q:]
                if len(batch) < q and remaining > 0:
                    batch += bo.ask(min(q - len(batch), remaining))
                if not batch:
                    break
                for i, trial in enumerate(batch):
                    trial.state, trial.job, trial.started = TrialState.RUNNING, job + i, time.time()
                    store.update(trial)
                returns = self.launcher.launch(
                    [fixed + space.overrides(t.params) for t in batch], initial_job_idx=job
                )
                job += len(batch)
                for trial, ret in zip(batch, returns, strict=True):
                    self._tell(bo, trial, ret)
                advance(len(batch), bo.best())
                self._check_failures(bo, space)
        trials = store.trials()
        _report.write_results(self.sweep_dir, space, trials, bo.best(), self.settings.direction)
        return trials

    @staticmethod
    def _n_ended(store: TrialStore) -> int:
        return sum(t.state in (TrialState.COMPLETED, TrialState.FAILED) for t in store.trials())

    def _recover(self, bo: BayesOpt) -> list[Trial]:
        """Settles trials a dead sweeper left open; returns those that must run again."""
        rerun = []
        for trial in bo.trials():
            if trial.state not in (TrialState.PENDING, TrialState.RUNNING):
                continue
            saved = saved_return(self.sweep_dir, trial.job)
            if saved is not None:
                # The job finished before the sweeper died: use its value, do not run it again.
                self._record(bo, trial, saved[0])
            else:
                rerun.append(trial)
        if rerun:
            log.info(
                f"re-running {len(rerun)} trial(s) interrupted by the previous sweeper: {[t.id for t in rerun]}"
            )
        return rerun

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
        """Tells ``bo`` the objective in ``value`` (a number or a dict); raises on a non-number."""
        where = f"trial {trial.id} (job {trial.job})"
        if isinstance(value, Mapping):
            key = self.conf.objective
            if key is None or key not in value:
                bo.tell(trial.id, None, error="objective missing from the returned dict")
                raise UserError(
                    f"hydra.sweeper.objective={key}: {where} returned a dict with keys {sorted(map(str, value))}; "
                    "set hydra.sweeper.objective to the key to optimise"
                )
            value = value[key]
        number = _as_float(value)
        if number is None:
            bo.tell(trial.id, None, error=f"returned {value!r}")
            name = (
                "the objective"
                if self.conf.objective is None
                else f"hydra.sweeper.objective={self.conf.objective}"
            )
            raise UserError(
                f"{name}: {where} returned {value!r} ({type(value).__name__}); the task must return a number"
            )
        if not math.isfinite(number):
            log.warning(f"{where} returned {number}: recorded as FAILED")
        bo.tell(trial.id, number)

    def _check_failures(self, bo: BayesOpt, space: SearchSpace) -> None:
        """Stops the sweep (results written) once failures exceed ``max_failure_rate * n_trials``."""
        trials = bo.trials()
        failed = [t for t in trials if t.state is TrialState.FAILED]
        if len(failed) > self.conf.max_failure_rate * self.conf.n_trials:
            _report.write_results(self.sweep_dir, space, trials, bo.best(), self.settings.direction)
            raise UserError(
                f"{len(failed)} of {self.conf.n_trials} trials failed, more than "
                f"hydra.sweeper.max_failure_rate={self.conf.max_failure_rate}; last error: {failed[-1].error}"
            )


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
