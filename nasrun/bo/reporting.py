"""Per-epoch reports from inside a sweep's jobs to its trial store, and pruning on them.

A job of a BoTorch sweep finds its trial by itself: the Hydra config of every job holds the
sweeper's settings (``hydra.sweeper``: storage, pruner) and the job's number (``hydra.job.num``),
and the store maps job numbers to trials. So no identifiers are passed to the task, and a job run
by any launcher (in-process, joblib, SLURM) reports through the same database the sweeper uses::

    from nasrun.bo.reporting import current_reporter

    reporter = current_reporter()  # None outside a BoTorch sweep
    for epoch in range(1, epochs + 1):
        value = train_one_epoch()
        if reporter is not None:
            reporter.report(epoch, value)  # raises TrialPruned when the pruner stops the trial

``TrialPruned`` is caught by the sweeper's task wrapper, which hands the sweeper a ``Pruned``
instead of a return value; the trial is then PRUNED in the store with its last value and epoch.
nasrun's own runs report through ``TrialReporter.sink``, a history-log sink (``nasrun.run_folder``).

Light on purpose (no torch): it runs in every job.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasrun.bo.pruners import Pruner, PrunerKind
from nasrun.bo.settings import Direction
from nasrun.bo.store import Trial, TrialState, TrialStore

log = logging.getLogger(__name__)

#: ``hydra.sweeper._target_`` of the BoTorch sweeper.
SWEEPER_TARGET = "hydra_plugins.nasrun_botorch_sweeper.botorch_sweeper.BoTorchSweeper"


class TrialPruned(Exception):
    """The pruner stopped this trial after ``epoch``; ``value`` was its last report.

    Raised by ``TrialReporter.report`` (from deep inside a training loop) and caught by the
    sweeper's task wrapper, which turns it into a ``Pruned`` result.
    """

    def __init__(self, epoch: int, value: float, reason: str) -> None:
        super().__init__(f"pruned after epoch {epoch}: {reason}")
        self.epoch, self.value, self.reason = epoch, value, reason


@dataclass(frozen=True)
class Pruned:
    """What a pruned job hands the sweeper instead of its objective."""

    epoch: int
    value: float | None
    reason: str = ""


def store_location(storage: str | None, sweep_dir: str | Path) -> str:
    """The trial store of a sweep: ``hydra.sweeper.storage``, or ``<hydra.sweep.dir>/trials.sqlite``."""
    return str(Path(sweep_dir) / "trials.sqlite") if storage is None else storage


class TrialReporter:
    """Reports one running trial's per-epoch values and applies the pruner after each.

    Args:
        store: The sweep's trial store.
        trial: The RUNNING trial.
        pruner: The pruning rule (``PrunerKind.none``: report only).
        objective: The key of the value that the sweep optimises (``hydra.sweeper.objective``).
    """

    def __init__(self, store: TrialStore, trial: Trial, pruner: Pruner, objective: str = "val_acc") -> None:
        assert trial.job is not None
        self.store, self.trial, self.pruner = store, trial, pruner
        self.objective = objective
        self.job = trial.job
        self.active = True  # false once the trial is no longer this job's (re-queued, ended)

    def report(self, epoch: int, value: float) -> None:
        """Stores ``value`` after ``epoch`` (from 1), then asks the pruner.

        Raises:
            TrialPruned: The pruner stops the trial; the store already says PRUNED.
        """
        if not self.active:
            return
        value = float(value)
        finite = math.isfinite(value)
        if not self.store.report(self.trial.id, self.job, int(epoch), value if finite else None):
            log.warning(f"trial {self.trial.id} is no longer run by job {self.job}: reports stop")
            self.active = False
            return
        if not finite or not self.pruner.checks_at(epoch):
            return
        reason = self.pruner.decide(self.trial.id, epoch, value, self.store.reports_at(epoch))
        if reason is None:
            return

        def prune(trial: Trial) -> None:
            trial.state, trial.value, trial.epoch = TrialState.PRUNED, value, int(epoch)
            trial.finished, trial.owner, trial.error = time.time(), None, None

        if self.store.end_running(self.trial.id, self.job, prune):
            raise TrialPruned(int(epoch), value, reason)

    def sink(self, value_key: str | None = None, step_key: str = "epoch") -> HistorySink:
        """A ``HistoryLog`` sink reporting ``record[value_key]`` (default: the sweep's objective)
        after ``record[step_key]``."""
        return HistorySink(self, value_key or self.objective, step_key)


class HistorySink:
    """Takes history records (``nasrun.run_folder.HistoryLog``) and reports the objective in each.

    Records without the step or the value (a black-box search's evaluations, a run without a
    validation split) are passed over.
    """

    def __init__(self, reporter: TrialReporter, value_key: str, step_key: str) -> None:
        self.reporter, self.value_key, self.step_key = reporter, value_key, step_key

    def append(self, record: dict[str, Any]) -> None:
        step, value = record.get(self.step_key), record.get(self.value_key)
        if isinstance(step, int) and isinstance(value, int | float) and not isinstance(value, bool):
            self.reporter.report(step, float(value))


def current_reporter(max_epochs: int | None = None) -> TrialReporter | None:
    """The reporter of the trial this process runs as a job of a BoTorch sweep, or ``None``.

    ``None`` outside a multirun, under another sweeper, and for a job whose trial is no longer
    RUNNING under its number (a job left over from a worker that was presumed dead).

    Args:
        max_epochs: Epochs of this trial if it runs to the end, when ``hydra.sweeper.max_epochs``
            does not say (no rung of ``asha`` is placed there).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc: Any = HydraConfig.get()  # a DictConfig typed as Hydra's dataclass
    sweeper = hc.sweeper
    # A single run (RunMode.RUN) has no trial, even with this sweeper in its defaults. (Hydra's
    # test runners leave the mode unset in multiruns, so only RUN is ruled out.)
    if hc.mode == RunMode.RUN or sweeper.get("_target_") != SWEEPER_TARGET or hc.job.get("num") is None:
        return None
    store = TrialStore(store_location(sweeper.storage, hc.sweep.dir))
    trial = store.running_trial(int(hc.job.num))
    if trial is None:
        store.close()
        return None
    pruner = Pruner(
        kind=PrunerKind(sweeper.pruner),
        direction=Direction(sweeper.direction),
        min_epochs=int(sweeper.min_epochs),
        reduction_factor=int(sweeper.reduction_factor),
        min_trials=int(sweeper.min_trials),
        max_epochs=max_epochs if sweeper.max_epochs is None else int(sweeper.max_epochs),
    )
    return TrialReporter(store, trial, pruner, objective=str(sweeper.get("objective") or "val_acc"))
