"""How a one-shot method updates its architecture: the pieces the one loop (``oneshot.py``) composes.

``DartsStepper`` (``nasrun.search.oneshot.darts``) is the default: bilevel gradient steps, first or second
order. A method that updates the architecture differently names an ``ArchUpdate`` in
``search.update`` (SNAS's single-level step, RSPS's uniform sampling, ENAS's controller); the
update checks the search's settings when the search is built and then builds the stepper the
loop drives. Every stepper is a ``DartsStepper`` underneath (the same weight optimiser, schedule
and checkpoint state), so the loop treats them alike.

Steppers that sample whole cells (RSPS, ENAS) also implement ``EpochHooks``: work after an
epoch's weight steps (ENAS's controller phase) and their own derivation (sample candidate cells,
score each with the shared weights on validation batches, keep the best). ``CellSamplingStepper``
is their common part.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from nasrun import UserError
from nasrun.search.oneshot.darts import DartsStepper, buffers_restored
from nasrun.search.oneshot.plugin import (
    CANDIDATE_STREAM,
    RESCORE_STREAM,
    SCORE_STREAM,
    EpochData,
    SearchSettings,
)
from nasrun.space.base import SampledSpace
from nasrun.space.genotype import Genotype
from nasrun.train.trainer import Trainer

if TYPE_CHECKING:
    from nasrun.search.oneshot.network import OneShotNetwork


class ArchUpdate(Protocol):
    """A method's architecture update (``search.update``): checks the search, builds its stepper."""

    def check(self, search: SearchSettings) -> None:
        """Raise ``UserError`` (naming the key) if the search's space or settings do not fit."""
        ...

    def stepper(self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any) -> DartsStepper:
        """The stepper of one stage; ``darts`` are ``DartsStepper``'s arguments (order, epochs, lrs ...)."""
        ...


@runtime_checkable
class EpochHooks(Protocol):
    """What a stepper may add after an epoch's steps."""

    def end_epoch(self, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        """Work after the epoch's steps (``arch_steps``: the epoch updates the architecture).

        Returns:
            Values to add to the epoch's history record.
        """
        ...

    def derive(self, data: EpochData) -> Genotype | None:
        """The epoch's cell, or ``None`` for the space's derivation from the architecture weights."""
        ...


def check_sampled_space(search: SearchSettings, method: str) -> SampledSpace:
    """The search's space, if cells of it can be sampled and run in its supernet; else ``UserError``."""
    space = search.space
    if not isinstance(space, SampledSpace) or not space.decisions():
        raise UserError(
            f"search={method} samples whole cells and runs them in the supernet; space {space.name!r} "
            "cannot (it has no genotype_weights or no decisions)"
        )
    if any(st.ops_kept is not None for st in search.stages):
        raise UserError(
            f"search.stages.ops_kept: search={method} samples cells of the whole space; pruning the "
            "candidate ops does not apply (set the stages' ops_kept to null)"
        )
    if search.order != 1:
        raise UserError(f"search.order={search.order}: search={method} takes no unrolled architecture step")
    if search.max_skips is not None:
        raise UserError(
            f"search.max_skips={search.max_skips}: search={method} derives sampled cells, not from the "
            "architecture weights that the skip-connect cap edits (set search.max_skips=null)"
        )
    return space


class CellSamplingStepper(DartsStepper):
    """Weight steps on one sampled cell per batch; the epoch's cell is the best of sampled candidates.

    Every training batch runs one cell drawn by ``propose`` (the supernet's ``SampledEdge`` edges
    compute only its ops). After the epoch, ``candidates`` cells are drawn (``final_candidates``
    after the search's last epoch), each scored by its accuracy with the shared weights on its own
    ``score_batches`` fresh validation batches, as the references' random-NAS and ENAS do (each
    candidate takes the loader's next batch); the best (the first of equals) is the epoch's cell.

    ``score_bn``: ``eval`` runs BatchNorm on its running statistics (the references call
    ``network.eval()`` before scoring); ``train`` on each batch's own statistics, leaving the
    running statistics untouched.

    Args:
        supernet: the ``OneShotNetwork`` (its space must be a ``SampledSpace``).
        trainer: device, precision and memory format.
        candidates: cells drawn to derive the epoch's cell.
        score_batches: validation batches each candidate is scored on.
        seed: seeds the sampling of the training cells.
        final_candidates: cells drawn after the last epoch; ``None``: ``candidates``.
        rescore_top: after the last epoch, the best this many are scored again on one pass over
            the whole validation split, and the best of that round is the result (RSPS); 0: none.
        score_bn: ``eval`` or ``train``, BatchNorm's mode while scoring.
        score_augment: augment the scoring batches as the training batches.
        score_batch_size: the scoring batches' size; ``None``: the search's.
        **darts: ``DartsStepper``'s arguments (the weight optimiser and schedule).
    """

    def __init__(
        self,
        supernet: OneShotNetwork,
        trainer: Trainer,
        *,
        candidates: int,
        score_batches: int,
        seed: int,
        final_candidates: int | None = None,
        rescore_top: int = 0,
        score_bn: str = "eval",
        score_augment: bool = False,
        score_batch_size: int | None = None,
        **darts: Any,
    ) -> None:
        super().__init__(supernet, trainer, **darts)
        self.network = supernet
        assert isinstance(supernet.space, SampledSpace)
        self.space: SampledSpace = supernet.space
        self.sizes = self.space.decisions()
        self.candidates = candidates
        self.final_candidates = final_candidates if final_candidates is not None else candidates
        self.score_batches = score_batches
        self.rescore_top = rescore_top
        self.score_bn = score_bn
        self.score_augment = score_augment
        self.score_batch_size = score_batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.device = next(supernet.parameters()).device

    def propose(self, generator: torch.Generator) -> tuple[int, ...]:
        """One cell as a choice index per decision of the space."""
        raise NotImplementedError

    def use(self, choices: tuple[int, ...]) -> Genotype:
        """Make the supernet run ``choices``'s cell; returns the cell."""
        genotype = self.space.decode(choices)
        weights = self.space.genotype_weights(genotype, self.network.edge_ops)
        self.network.set_architecture({t: w.to(self.device) for t, w in weights.items()})
        return genotype

    def reads_val_batch(self, arch_step: bool) -> bool:
        """Never: a step trains the weights only (validation batches score cells after the epoch)."""
        return False

    def step(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor | None,
        y_val: torch.Tensor | None,
        arch_step: bool = True,
    ) -> tuple[float, int]:
        """One weight step on a freshly sampled cell (the validation batch is not used here)."""
        self.use(self.propose(self.generator))
        return self.weight_step(x_train, y_train)

    @torch.no_grad()
    def accuracy(
        self,
        choices: tuple[int, ...],
        batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
        bn: str | None = None,
    ) -> float:
        """The fraction of ``batches`` that ``choices``'s cell classifies right with the shared weights.

        ``bn``: BatchNorm's mode, ``eval`` (running statistics) or ``train`` (each batch's own; the
        running statistics are put back after); ``None``: ``score_bn``.
        """
        self.use(choices)
        was_training = self.module.training
        self.module.train((bn or self.score_bn) == "train")
        correct, n = 0, 0
        with buffers_restored(self.module):
            for x, y in batches:
                with self.trainer.autocast():
                    logits = self.model(x)
                correct += int((logits.argmax(1) == y).sum())
                n += int(y.numel())
        self.module.train(was_training)
        return correct / max(n, 1)

    def end_epoch(self, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        return {}

    def derive(self, data: EpochData) -> Genotype:
        """The best of the drawn cells, each scored on its own next ``score_batches`` validation batches."""
        batches = data.endless(SCORE_STREAM, augment=self.score_augment, batch_size=self.score_batch_size)
        gen = data.generator(CANDIDATE_STREAM)
        n = self.final_candidates if data.last else self.candidates
        scored: list[tuple[float, tuple[int, ...]]] = []
        for i in range(n):
            choices = self.propose(gen)
            scored.append(
                (self.accuracy(choices, list(itertools.islice(batches, self.score_batches))), choices)
            )
            if i % 10 == 0:
                data.status(f"scoring cell {i + 1}/{n}")
        ranked = sorted(scored, key=lambda s: -s[0])  # stable: the first of equals stays first
        if data.last and self.rescore_top > 0:
            top = [c for _, c in ranked[: self.rescore_top]]
            full = [
                self.accuracy(c, data.batches(RESCORE_STREAM, self.score_augment, self.score_batch_size))
                for c in top
            ]
            return self.use(top[max(range(len(top)), key=lambda k: (full[k], -k))])
        return self.use(ranked[0][1])  # the epoch's evaluation runs the chosen cell

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "cell_generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["cell_generator"])
