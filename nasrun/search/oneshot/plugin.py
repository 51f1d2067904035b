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
``start_epoch``           before an epoch's steps                          schedules; DrNAS's stages
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from nasrun.data.base import TensorSplit
from nasrun.search.oneshot.network import OneShotNetwork, Stage
from nasrun.search.oneshot.samplers import ArchSampler
from nasrun.space.base import OneShotSpace
from nasrun.train.runtime import epoch_generator
from nasrun.train.trainer import Trainer

#: ``(x [B, C, H, W], y [B])`` batches on the run's device.
Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class SearchSettings(Protocol):
    """What a plug-in (or an update) may read of the search it joins, to check that it fits."""

    @property
    def space(self) -> OneShotSpace: ...
    @property
    def seed(self) -> int: ...
    @property
    def epochs(self) -> int: ...
    @property
    def order(self) -> int: ...
    @property
    def stages(self) -> Sequence[Stage]: ...
    @property
    def max_skips(self) -> int | None: ...
    @property
    def derivation(self) -> str: ...
    @property
    def sampler(self) -> ArchSampler | None: ...
    @property
    def train_portion(self) -> float: ...

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


class Stepper(Protocol):
    """What a plug-in may use of the stepper that drives a stage (``darts.DartsStepper`` and its kin)."""

    @property
    def module(self) -> nn.Module: ...  # the supernet (a ``OneShotNetwork``)
    @property
    def model(self) -> nn.Module: ...  # the supernet as the runtime runs it (compiled, channels-last ...)
    @property
    def trainer(self) -> Trainer: ...  # device, precision, batches
    @property
    def alphas(self) -> list[nn.Parameter]: ...  # the architecture parameters
    @property
    def weights(self) -> list[nn.Parameter]: ...  # the supernet's weights
    @property
    def w_opt(self) -> torch.optim.Optimizer: ...  # the weights' optimiser
    @property
    def a_opt(self) -> torch.optim.Optimizer: ...  # the architecture's optimiser

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The supernet's training-mode loss and logits on ``(x, y)``, under the run's autocast."""
        ...


# The random streams of an epoch (``EpochData.generator``), one per use, so that a resumed epoch
# draws what the uninterrupted one drew. 0 and 1 shuffle the epoch's weight and architecture steps.
CONTROLLER_STREAM = 2  # ENAS's controller phase: its validation batches
SCORE_STREAM = 3  # the validation batches that score candidate cells
CANDIDATE_STREAM = 4  # the draws of the candidate cells
RESCORE_STREAM = 5  # the pass over the validation split that scores the best candidates again
HESSIAN_STREAM = 6  # R-DARTS: the validation batches of the Hessian's eigenvalue, and its start vector
PERTURBATION_STREAM = 7  # SDARTS: the noise of the epoch's perturbed weight steps
WIDEN_STREAM = 8  # DrNAS's progressive search: which channels a widened op copies


@dataclass
class EpochData:
    """The architecture's half of the search data, for a stepper's work at the end of an epoch.

    Each ``stream`` shuffles it the same way on every run of ``epoch``, so a resumed search does
    exactly what the uninterrupted one did.

    Attributes:
        split: the architecture's half of the training images.
        batch_size: the search's batch size.
        runtime: device, precision and memory format.
        seed: the search's seed.
        epoch: the epoch, counted from 0 over the whole search.
        augment: the data set's training augmentation.
        status: shows a short status text in the search's progress bar.
        last: this is the search's last epoch.
    """

    split: TensorSplit
    batch_size: int
    runtime: Trainer
    seed: int
    epoch: int
    augment: Any
    status: Callable[[str], None]
    last: bool = False

    def generator(self, stream: int) -> torch.Generator:
        """A CPU generator for ``stream`` of this epoch (streams 0 and 1 shuffle the epoch's steps)."""
        return epoch_generator(self.seed, self.epoch, stream)

    def batches(self, stream: int, augment: bool = True, batch_size: int | None = None) -> Batches:
        """One pass over the split, shuffled by ``stream`` (``batch_size``: default the search's)."""
        return self.runtime.batches(
            self.split,
            batch_size or self.batch_size,
            self.generator(stream),
            self.augment if augment else None,
        )

    def endless(self, stream: int, augment: bool = True, batch_size: int | None = None) -> Batches:
        """Pass after pass over the split, shuffled anew each pass from ``stream``."""
        gen = self.generator(stream)
        size = batch_size or self.batch_size
        while True:
            yield from self.runtime.batches(self.split, size, gen, self.augment if augment else None)


class OneShotPlugin:
    """A method's additions to the one-shot loop; every hook is a no-op until overridden.

    ``data_parallel``: whether the plug-in keeps a data-parallel search (several processes, each on
    its share of every batch) the same on every process and equal to one process's; false for one
    whose hooks compute on the process's own share (an attack on the batch, say).
    """

    data_parallel: bool = True

    def check(self, search: SearchSettings) -> None:
        """Raise ``nasrun.UserError`` naming the key if the search's space or settings do not fit."""

    def attach(self, stepper: Stepper) -> None:
        """A stage's stepper (its supernet: ``stepper.module``) was built; resume state follows."""

    def start_epoch(self, stepper: Stepper, epoch: EpochStart) -> None:
        """Before the steps of ``epoch``."""

    def around_weight_step(
        self, stepper: Stepper, x: torch.Tensor, y: torch.Tensor
    ) -> contextlib.AbstractContextManager[None]:
        """A context the weight step on the batch ``(x [B, C, H, W], y [B])`` runs inside."""
        return contextlib.nullcontext()

    def arch_penalty(self, network: OneShotNetwork) -> torch.Tensor | None:
        """A scalar added to the architecture loss of every architecture step, or ``None``.

        It may depend on the architecture parameters only (not on the batch), so that its gradient
        adds to either order's architecture gradient.
        """
        return None

    def end_epoch(self, stepper: Stepper, data: EpochData, arch_steps: bool) -> dict[str, Any]:
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
        """Back on resume, after ``attach`` and before the stepper's own state loads."""


@contextlib.contextmanager
def all_around(
    plugins: Sequence[OneShotPlugin], stepper: Stepper, x: torch.Tensor, y: torch.Tensor
) -> Iterator[None]:
    """Every plug-in's ``around_weight_step`` context, entered in order."""
    with contextlib.ExitStack() as stack:
        for p in plugins:
            stack.enter_context(p.around_weight_step(stepper, x, y))
        yield
