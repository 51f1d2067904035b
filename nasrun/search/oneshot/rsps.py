"""Random search with weight sharing, "RSPS" (Li & Talwalkar, UAI 2019), on the one-shot engine.

The shared weights are trained with one uniformly sampled cell per minibatch; the architecture is
never updated. Deriving samples further cells uniformly, scores each with the shared weights on
its own fresh validation batches with BatchNorm in evaluation mode, and keeps the best
(``CellSamplingStepper``).

``search=rsps`` composes this update with ``SampledEdge`` edges (only the sampled cell's ops run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from nasrun import UserError
from nasrun.search.oneshot.plugin import SearchSettings
from nasrun.search.oneshot.steppers import CellSamplingStepper, check_sampled_space

if TYPE_CHECKING:
    from nasrun.search.oneshot.network import OneShotNetwork
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

    The defaults are Li & Talwalkar's CIFAR-10 code (github liamcli/randomNAS_release); the
    NAS-Bench-201 recipe (conf/search_recipe/rsps_nb201.yaml) sets AutoDL-Projects' RANDOM-NAS.

    Args:
        candidates: cells scored to derive each epoch's cell.
        final_candidates: cells scored after the last epoch (the search's result); ``None``:
            ``candidates``.
        score_batches: fresh validation batches each candidate is scored on.
        rescore_top: after the last epoch, the best this many candidates are scored again on the
            whole validation split and the best of them is the result; 0: no second round.
        score_bn: BatchNorm while scoring: ``eval`` (running statistics) or ``train``.
        score_augment: augment the scoring batches as the training batches.
        score_batch_size: the scoring batches' size; ``None``: ``search.batch_size``.
    """

    reads_val_batches = False  # the weight steps train the sampled cell on the training batch alone

    def __init__(
        self,
        candidates: int = 10,  # nasrun's choice: the reference scores no cell per epoch; 10 record each epoch's
        final_candidates: int | None = 1000,  # randomNAS_release random_weight_share.py:90
        score_batches: int = 10,  # randomNAS_release benchmarks/cnn/darts/darts_wrapper_discrete.py:193: 10 batches
        rescore_top: int = 10,  # random_weight_share.py:103-110: the 10 best again on the whole validation split
        score_bn: str = "eval",  # darts_wrapper_discrete.py:190: model.eval() before scoring
        score_augment: bool = True,  # darts_wrapper_discrete.py:65,77: the validation queue uses the train transform
        score_batch_size: int | None = None,  # darts_wrapper_discrete.py:77: the search's batch size
    ) -> None:
        if candidates < 1:
            raise UserError(f"search.update.candidates={candidates}: must be >= 1 (cells sampled to derive)")
        if final_candidates is not None and final_candidates < 1:
            raise UserError(f"search.update.final_candidates={final_candidates}: must be >= 1 (or null)")
        if score_batches < 1:
            raise UserError(f"search.update.score_batches={score_batches}: must be >= 1")
        if rescore_top < 0:
            raise UserError(f"search.update.rescore_top={rescore_top}: must be >= 0")
        if score_bn not in ("eval", "train"):
            raise UserError(f"search.update.score_bn={score_bn!r}: must be eval or train")
        if score_batch_size is not None and score_batch_size < 1:
            raise UserError(f"search.update.score_batch_size={score_batch_size}: must be >= 1 (or null)")
        self.candidates = candidates
        self.final_candidates = final_candidates
        self.score_batches = score_batches
        self.rescore_top = rescore_top
        self.score_bn = score_bn
        self.score_augment = score_augment
        self.score_batch_size = score_batch_size

    def check(self, search: SearchSettings) -> None:
        check_sampled_space(search, "rsps")

    def stepper(
        self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any
    ) -> UniformStepper:
        return UniformStepper(
            network,
            trainer,
            candidates=self.candidates,
            final_candidates=self.final_candidates,
            score_batches=self.score_batches,
            rescore_top=self.rescore_top,
            score_bn=self.score_bn,
            score_augment=self.score_augment,
            score_batch_size=self.score_batch_size,
            seed=seed,
            **darts,
        )
