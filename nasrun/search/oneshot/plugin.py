"""The one-shot loop's extension points: what a method may plug in without editing the engine.

The loop (``engine.py``) runs epochs of steps over a supernet and owns what every method shares:
epochs and stages, checkpoints and resume, the history file, progress. A method adds behaviour at
named points by one or more plug-ins (``search.plugins.<name>``, and the early-stop criterion
``search.early_stop``), each a ``OneShotPlugin`` that overrides only the hooks it needs:

========================  ===============================================  =========================
hook                      when the loop calls it                           used by
========================  ===============================================  =========================
``check``                 once, when the search is built                   every plug-in (settings)
``attach``                each stage's stepper is built (before resume)    plug-ins holding state
``start_epoch``           before an epoch's steps                          schedules (dropout, ε)
``around_weight_step``    a context around every weight step               SDARTS's perturbations
``arch_penalty``          added to the loss of every architecture step     DrNAS's KL term
``end_epoch``             after an epoch's steps; values join its record   R-DARTS's eigenvalue
``stop``                  after each epoch's record: a reason to stop      DARTS+, R-DARTS
``result_epoch``          at the end: the epoch whose cell is the result   R-DARTS (stop, restore)
``state_dict``            with every checkpoint, and back on resume        plug-ins holding state
========================  ===============================================  =========================

How the edges' weights come from the architecture parameters (softmax, Gumbel, Dirichlet) is the
architecture distribution's (``search.sampler``, ``samplers.py``), with its own weights for the
derivation and the history (``ArchSampler.expected``). How the architecture is updated (bilevel
steps, single-level, sampled cells) is the update's (``search.update``, ``steppers.py``).

Plug-ins never read the loop's variables: what a hook needs is passed to it (the stepper, which
holds the supernet, its optimisers and the run's device; the epoch; the history records).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from nasrun.search.oneshot.darts import DartsStepper
    from nasrun.search.oneshot.network import OneShotNetwork, Stage
    from nasrun.search.oneshot.samplers import ArchSampler
    from nasrun.search.oneshot.steppers import EpochData
    from nasrun.space.base import OneShotSpace


class SearchSettings(Protocol):
    """What a plug-in (or an update) may read of the search it joins, to check that it fits."""

    space: OneShotSpace
    seed: int
    epochs: int
    order: int
    stages: Sequence[Stage]
    max_skips: int | None
    derivation: str
    sampler: ArchSampler | None
    train_portion: float

    @property
    def single_level(self) -> bool: ...


@dataclass(frozen=True)
class EpochStart:
    """Where an epoch stands, for ``start_epoch``.

    Attributes:
        epoch: the epoch, counted from 0 over the whole search.
        epochs: the search's epochs.
        stage: the stage, from 0.
        stage_epoch: the epoch within its stage, from 0.
        arch_steps: whether the epoch takes architecture steps (false in warm-up).
    """

    epoch: int
    epochs: int
    stage: int
    stage_epoch: int
    arch_steps: bool


class OneShotPlugin:
    """A method's additions to the one-shot loop; every hook is a no-op until overridden."""

    def check(self, search: SearchSettings) -> None:
        """Raise ``nasrun.UserError`` naming the key if the search's space or settings do not fit."""

    def attach(self, stepper: DartsStepper) -> None:
        """A stage's stepper (its supernet: ``stepper.module``) was built; resume state follows."""

    def start_epoch(self, stepper: DartsStepper, epoch: EpochStart) -> None:
        """Before the steps of ``epoch``."""

    def around_weight_step(
        self, stepper: DartsStepper, x: torch.Tensor, y: torch.Tensor
    ) -> contextlib.AbstractContextManager[None]:
        """A context the weight step on the batch ``(x [B, C, H, W], y [B])`` runs inside."""
        return contextlib.nullcontext()

    def arch_penalty(self, network: OneShotNetwork) -> torch.Tensor | None:
        """A scalar added to the architecture loss of every architecture step, or ``None``.

        It may depend on the architecture parameters only (not on the batch), so that its gradient
        adds to either order's architecture gradient.
        """
        return None

    def end_epoch(self, stepper: DartsStepper, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        """After the epoch's steps; returns values for the epoch's history record."""
        return {}

    def stop(self, records: Sequence[dict[str, Any]]) -> str | None:
        """After the last of ``records`` (the history so far): the reason to stop, or ``None``."""
        return None

    def result_epoch(self, records: Sequence[dict[str, Any]]) -> int | None:
        """The epoch (as the records count it, from 1) whose cell is the search's result; ``None``: the last."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@contextlib.contextmanager
def all_around(
    plugins: Sequence[OneShotPlugin], stepper: DartsStepper, x: torch.Tensor, y: torch.Tensor
) -> Iterator[None]:
    """Every plug-in's ``around_weight_step`` context, entered in order."""
    with contextlib.ExitStack() as stack:
        for p in plugins:
            stack.enter_context(p.around_weight_step(stepper, x, y))
        yield
