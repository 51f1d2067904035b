"""Pruners: whether a trial that has just reported its value after an epoch should stop there.

Both compare the trial with the other trials' reports at the same epoch (``TrialStore.reports_at``)
and are plain functions of those numbers, so they are tested without a sweep:

* ``median``: stop when the value is worse than the median of the COMPLETED trials' values at the
  same epoch, from epoch ``min_epochs`` on, once ``min_trials`` completed trials have reported
  there. Completed trials only: their curves are the ones a stopped trial is measured against.
* ``asha``: asynchronous successive halving (Li et al. 2020, "A System for Massively Parallel
  Hyperparameter Tuning"). Rungs sit at ``min_epochs * reduction_factor**k`` epochs (below
  ``max_epochs``, when known); a trial reaching a rung goes on only if its value there is among
  the top ``1/reduction_factor`` of all trials that reached that rung, itself included. ASHA
  proper would keep a trial waiting at a rung until enough others arrive to promote it; a job
  cannot pause, so while fewer than ``reduction_factor`` trials have reached the rung, only the
  best of them goes on (the same adaptation as Optuna's ``SuccessiveHalvingPruner``).

Nothing here imports torch: the pruner runs inside every job.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from nasrun.bo.settings import Direction
from nasrun.bo.store import TrialState


class PrunerKind(str, Enum):
    """Which pruner stops trials early (``hydra.sweeper.pruner``)."""

    none = "none"  # every trial runs all its epochs
    median = "median"  # worse than the completed trials' median at the same epoch
    asha = "asha"  # asynchronous successive halving (Li et al. 2020)


#: A report of another trial at the same epoch: ``(trial id, state, value)``.
Report = tuple[int, TrialState, float]


@dataclass(frozen=True)
class Pruner:
    """The pruning rule and its settings.

    Args:
        kind: The rule.
        direction: Whether larger or smaller values are better.
        min_epochs: ``median``: no trial is stopped before this epoch; ``asha``: the first rung.
        reduction_factor: ``asha``: one trial in this many goes on at each rung.
        min_trials: ``median``: completed trials that must have reported at an epoch before a
            trial is compared with their median there.
        max_epochs: Epochs of a trial that runs to the end, if known: no rung is placed there.
    """

    kind: PrunerKind
    direction: Direction
    min_epochs: int = 1
    reduction_factor: int = 4
    min_trials: int = 5
    max_epochs: int | None = None

    def rungs(self) -> list[int]:
        """``asha``'s rungs up to ``max_epochs`` (the first 20 when it is unknown)."""
        out: list[int] = []
        r = self.min_epochs
        while (self.max_epochs is None and len(out) < 20) or (
            self.max_epochs is not None and r < self.max_epochs
        ):
            out.append(r)
            r *= self.reduction_factor
        return out

    def checks_at(self, epoch: int) -> bool:
        """Whether a report after ``epoch`` is compared with others at all (saves a query)."""
        if self.kind is PrunerKind.median:
            return epoch >= self.min_epochs
        if self.kind is PrunerKind.asha:
            return epoch in self.rungs()
        return False

    def decide(self, trial_id: int, epoch: int, value: float, others: Sequence[Report]) -> str | None:
        """Why trial ``trial_id`` should stop after ``epoch`` with ``value``, or ``None`` to go on.

        Args:
            trial_id: The trial that reported.
            epoch: The epoch it reported after (from 1).
            value: Its objective then.
            others: Every report at ``epoch`` (this trial's may be among them).

        Returns:
            One line saying why the trial stops, or ``None``.
        """
        if not self.checks_at(epoch):
            return None
        sign = 1.0 if Direction(self.direction) is Direction.maximize else -1.0
        if self.kind is PrunerKind.median:
            done = [v for i, s, v in others if s is TrialState.COMPLETED and i != trial_id]
            if len(done) < self.min_trials:
                return None
            median = statistics.median(done)
            if sign * value < sign * median:
                return (
                    f"epoch {epoch}: {value:.6g} is worse than the median {median:.6g} of "
                    f"{len(done)} completed trials there"
                )
            return None
        # asha: this trial against every trial that reached the rung, itself included
        entrants = sorted([sign * v for i, _, v in others if i != trial_id] + [sign * value], reverse=True)
        top = max(1, len(entrants) // self.reduction_factor)
        if sign * value >= entrants[top - 1]:
            return None
        rung = self.rungs().index(epoch)
        return (
            f"epoch {epoch} (rung {rung}): {value:.6g} is not in the top {top} of the "
            f"{len(entrants)} trials there (1 in {self.reduction_factor} goes on)"
        )
