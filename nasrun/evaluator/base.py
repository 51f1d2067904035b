"""The evaluator interface used by black-box search strategies."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from nasrun.space.genotype import Genotype

if TYPE_CHECKING:
    from nasrun.data.base import DataModule
    from nasrun.space.base import SearchSpace
    from nasrun.train.trainer import Trainer


class EvalContext(Protocol):
    """What an evaluator reads of the run that asks it (a search's ``SearchContext`` is one).

    A protocol here, rather than the search's class, so that the evaluators and the searches that
    use them do not import each other.
    """

    @property
    def space(self) -> SearchSpace: ...

    @property
    def seed(self) -> int: ...

    @property
    def data(self) -> DataModule | None: ...

    @property
    def trainer(self) -> Trainer | None: ...


@dataclass
class Evaluation:
    """The outcome of evaluating one architecture.

    Attributes:
        val_acc: validation accuracy in percent: the only number a strategy may learn from.
        test_acc: test accuracy in percent, reported for the chosen architecture, never used to choose.
        cost_s: seconds the evaluation took (training time, or the benchmark's recorded cost).
        extra: anything else worth recording (params, FLOPs, losses).
    """

    val_acc: float
    test_acc: float | None = None
    cost_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Evaluator(Protocol):
    """Scores architectures. Built from ``conf/evaluator/*.yaml`` with its own arguments only."""

    def evaluate(self, genotype: Genotype, ctx: EvalContext) -> Evaluation:
        """Score ``genotype``; ``ctx`` carries the space, data, trainer and run folder."""
        ...


@runtime_checkable
class ParallelEvaluator(Evaluator, Protocol):
    """An evaluator that can score several architectures at once (e.g. ``evaluator.workers``).

    The search loop hands it a batch only when the strategy can propose the batch without any of
    its scores (``BlackBoxStrategy.ask_batch``), so the scores are the same as one at a time.
    """

    workers: int  #: architectures scored concurrently at most (1: one at a time)

    def evaluate_many(self, genotypes: Sequence[Genotype], ctx: EvalContext) -> Iterator[Evaluation]:
        """Score ``genotypes`` concurrently; yield the evaluations in order, each once it is done."""
        ...

    def close(self) -> None:
        """Release the workers (the search loop calls this when it ends, also on an error)."""
        ...
