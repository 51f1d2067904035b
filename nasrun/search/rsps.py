"""Random search with weight sharing, "RSPS" (Li & Talwalkar, UAI 2019), on the one-shot engine.

The shared weights are trained with one uniformly sampled cell per minibatch; the architecture is
never updated. Deriving samples ``candidates`` further cells uniformly, scores each with the
shared weights on validation batches and keeps the best (``CellSamplingStepper``).

``search=rsps`` composes this update with ``SampledEdge`` edges (only the sampled cell's ops run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from nasrun import UserError
from nasrun.search.steppers import CellSamplingStepper, check_sampled_space

if TYPE_CHECKING:
    from nasrun.search.oneshot import OneShotNetwork, OneShotSearch
    from nasrun.train.trainer import Trainer


def uniform_choices(sizes: list[int], generator: torch.Generator) -> tuple[int, ...]:
    """One choice per decision, each uniform over its ``sizes[i]`` values: a uniform cell of the space."""
    return tuple(int(torch.randint(n, (), generator=generator)) for n in sizes)


class UniformStepper(CellSamplingStepper):
    """``CellSamplingStepper`` whose cells are uniform draws from the space."""

    def propose(self, generator: torch.Generator) -> tuple[int, ...]:
        return uniform_choices(self.sizes, generator)


class UniformSampling:
    """RSPS's architecture update: none; cells are sampled uniformly, for training and for deriving.

    Args:
        candidates: cells scored to derive each epoch's cell (N).
        score_batches: validation batches each candidate is scored on.
    """

    def __init__(
        self,
        candidates: int = 100,  # nasrun's choice: RSPS scores "many" random cells; 100 per epoch here
        score_batches: int = 1,  # nasrun's choice: one validation batch per cell, as ENAS scores its samples
    ) -> None:
        if candidates < 1:
            raise UserError(f"search.update.candidates={candidates}: must be >= 1 (cells sampled to derive)")
        if score_batches < 1:
            raise UserError(f"search.update.score_batches={score_batches}: must be >= 1")
        self.candidates = candidates
        self.score_batches = score_batches

    def check(self, search: OneShotSearch) -> None:
        check_sampled_space(search, "rsps")

    def stepper(
        self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any
    ) -> UniformStepper:
        return UniformStepper(
            network,
            trainer,
            candidates=self.candidates,
            score_batches=self.score_batches,
            seed=seed,
            **darts,
        )
