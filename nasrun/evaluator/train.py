"""Score an architecture by training it: a short proxy schedule with the run's trainer and data.

Each child is built by the space (``space.build_network``), trained with ``Trainer.fit`` for
``epochs`` epochs on the configured data's training split, and scored by its accuracy on the
validation split. The test accuracy is recorded alongside, never used to choose. Children train
one after another in the search process; results are cached per architecture, so a repeated
query costs nothing.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from nasrun import UserError
from nasrun.evaluator.base import Evaluation
from nasrun.report.results import count_params
from nasrun.space.genotype import Genotype

if TYPE_CHECKING:
    from nasrun.search.base import SearchContext


class TrainEvaluator:
    """Proxy training of each child network.

    Args:
        epochs: training epochs per child (overrides ``trainer.epochs``).
        network: size arguments for ``space.build_network`` (e.g. ``{channels: 8, cells: 1}`` for
            nb201); empty means the space's own defaults.
    """

    def __init__(self, epochs: int = 12, network: dict[str, Any] | None = None) -> None:
        if epochs <= 0:
            raise UserError(f"evaluator.epochs must be > 0, got {epochs}")
        self.epochs = epochs
        self.network = dict(network or {})
        self.cache: dict[str, Evaluation] = {}

    def evaluate(self, genotype: Genotype, ctx: SearchContext) -> Evaluation:
        """Train ``genotype``'s network and return its validation and test accuracy (%).

        Raises:
            UserError: no data or trainer in the run, no validation split, or a bad network size.
        """
        key = ctx.space.describe(genotype)
        if key in self.cache:
            return self.cache[key]
        data, trainer = ctx.data, ctx.trainer
        if data is None or trainer is None:
            raise UserError("evaluator=train needs data (data=digits, data=cifar10, ...) and a trainer")
        if data.val is None:
            raise UserError(
                "evaluator=train scores children on the validation split: set data.val_portion > 0"
            )
        # Every child starts from the same seed, so a score depends on the architecture and the
        # run's seed only (not on how many children were trained before it, e.g. after a resume).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed)
            try:
                model = ctx.space.build_network(
                    genotype, num_classes=data.num_classes, in_channels=data.in_channels, **self.network
                )
            except TypeError as e:
                raise UserError(f"evaluator.network: {e} (space {ctx.space.name!r})") from None
            t0 = time.perf_counter()
            metrics = trainer.fit(model, data, epochs=self.epochs, seed=ctx.seed, quiet=True)
        ev = Evaluation(
            val_acc=float(metrics["val_acc"]),
            test_acc=float(metrics["test_acc"]),
            cost_s=time.perf_counter() - t0,
            extra={"params": count_params(model), "train_acc": float(metrics["train_acc"])},
        )
        self.cache[key] = ev
        return ev
