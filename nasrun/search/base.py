"""The interface between the pipeline and search strategies, and the ask/tell driver loop.

Every strategy is built by Hydra with ``_partial_: true`` and then called as
``factory(space=space, seed=seed)``; the pipeline then calls ``strategy.run(ctx)``. One-shot
strategies (DARTS) implement ``run`` themselves. Black-box strategies subclass
``BlackBoxStrategy`` and implement ``ask``/``tell``/``state_dict``/``load_state_dict``; the shared
loop here evaluates, records ``history.jsonl``, checkpoints after every evaluation and resumes.

An evaluator that scores several architectures at once (``evaluator.workers > 1``) gets batches:
a strategy may implement ``ask_batch`` to propose, before any of their scores is known, exactly
the architectures that one ``ask``/``tell`` at a time would propose. The loop then checkpoints
once per batch, so a resume re-asks an unfinished batch and the run stays the same; a batch's
history lines are written together, after its checkpoint.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nasrun import UserError
from nasrun.console import get_console, progress_bar
from nasrun.evaluator.base import ParallelEvaluator
from nasrun.run_folder import HistoryLog, RecordSink, load_checkpoint
from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype

if TYPE_CHECKING:
    from nasrun.data.base import DataModule
    from nasrun.evaluator.base import Evaluation, Evaluator
    from nasrun.train.trainer import Trainer


class SearchContext:
    """Everything a strategy may use, built by the pipeline from the config.

    Args:
        space: the search space.
        run_dir: the Hydra run folder; strategies write ``history.jsonl`` and ``checkpoints/`` here.
        seed: the run's seed.
        resume: continue from ``run_dir/checkpoints`` if a checkpoint is there.
        data: the data module, or a zero-argument callable that loads it on first use (so that a
            tabular-benchmark run never loads images).
        trainer: the trainer (device, precision, optimiser settings).
        evaluator: scores genotypes for black-box strategies.
        sinks: receive each epoch's record of a one-shot search's history (with TensorBoard's):
            a sweep's per-epoch reports, when the search's accuracy is the run's objective.
    """

    def __init__(
        self,
        space: SearchSpace,
        run_dir: Path,
        seed: int = 0,
        resume: bool = False,
        data: DataModule | Callable[[], DataModule] | None = None,
        trainer: Trainer | None = None,
        evaluator: Evaluator | None = None,
        sinks: Sequence[RecordSink] = (),
    ) -> None:
        self.space = space
        self.run_dir = run_dir
        self.seed = seed
        self.resume = resume
        self._data = data
        self.trainer = trainer
        self.evaluator = evaluator
        self.sinks = list(sinks)

    @property
    def data(self) -> DataModule | None:
        if callable(self._data):
            self._data = self._data()
        return self._data

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"


@dataclass
class SearchResult:
    """What a search returns: the chosen genotype and its metrics (the steps are in ``history.jsonl``)."""

    genotype: Genotype
    metrics: dict[str, Any] = field(default_factory=dict)


class SearchStrategy(Protocol):
    def run(self, ctx: SearchContext) -> SearchResult: ...


#: Architectures a black-box strategy evaluates unless ``search.budget`` says otherwise
#: (NAS-Bench-201 comparisons commonly report ~100 queries). Written once, here.
DEFAULT_BUDGET = 100


class BlackBoxStrategy(ABC):
    """A strategy that proposes architectures and learns from their scores (higher is better).

    Args:
        space: the search space.
        seed: seeds the strategy's own random number generators.
        budget: number of architectures to evaluate.
    """

    def __init__(self, space: SearchSpace, seed: int = 0, budget: int = DEFAULT_BUDGET) -> None:
        if budget <= 0:
            raise UserError(f"search.budget must be > 0, got {budget}")
        self.space = space
        self.seed = seed
        self.budget = budget

    @abstractmethod
    def ask(self) -> Genotype:
        """Propose the next architecture to evaluate."""

    def ask_batch(self, n: int) -> list[Genotype]:
        """Propose up to ``n`` architectures to evaluate together (at least one).

        They must be the ones that ``ask`` would propose one at a time, each told its score before
        the next ``ask``, whatever the scores turn out to be; and telling them in order must leave
        the same state. The default proposes one; strategies whose next proposals do not depend on
        the pending scores (a random design, a planned round) override this.
        """
        return [self.ask()]

    @abstractmethod
    def tell(self, genotype: Genotype, score: float) -> None:
        """Report the score (validation accuracy, %) of an architecture from ``ask``."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (RNG states included); torch-saveable."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict``."""

    def run(self, ctx: SearchContext) -> SearchResult:
        """Evaluate ``budget`` architectures, checkpointing after each one (each batch)."""
        if ctx.evaluator is None:
            raise UserError(
                "this search strategy needs an evaluator: set evaluator=train or evaluator=tabular"
            )
        evaluator = ctx.evaluator
        workers = evaluator.workers if isinstance(evaluator, ParallelEvaluator) else 1
        free = bool(getattr(evaluator, "free", False))
        ckpt_path = ctx.checkpoint_dir / "search.pt"
        records: list[dict[str, Any]] = []
        if ctx.resume and ckpt_path.is_file():
            state = load_checkpoint(ckpt_path)
            self.load_state_dict(state["strategy"])
            records = state["history"]
        log = HistoryLog(ctx.run_dir / "history.jsonl", records)
        best: dict[str, Any] | None = max(records, key=lambda r: r["val_acc"], default=None)
        # Wall time continues across a resume instead of restarting at zero.
        t0 = time.perf_counter() - (records[-1]["wall_s"] if records else 0.0)
        console = get_console()
        # rich draws no progress bar where stdout is not a terminal (a log file, a batch job):
        # there, one line every `every` evaluations shows that the search is alive.
        every = max(1, self.budget // 20) if not console.is_terminal else 0
        try:
            with progress_bar("search", total=self.budget, completed=len(records)) as advance:
                while len(log.records) < self.budget:
                    n = min(workers, self.budget - len(log.records))
                    genotypes = self.ask_batch(n) if n > 1 else [self.ask()]
                    assert 1 <= len(genotypes) <= n, f"ask_batch({n}) proposed {len(genotypes)}"
                    if isinstance(evaluator, ParallelEvaluator) and len(genotypes) > 1:
                        evaluations: Iterator[Evaluation] = evaluator.evaluate_many(genotypes, ctx)
                    else:
                        evaluations = (evaluator.evaluate(g, ctx) for g in genotypes)
                    batch: list[dict[str, Any]] = []
                    for genotype, ev in zip(genotypes, evaluations, strict=True):
                        if not math.isfinite(ev.val_acc):
                            raise UserError(
                                f"evaluator returned a non-finite score ({ev.val_acc}) for {ctx.space.describe(genotype)}"
                            )
                        self.tell(genotype, ev.val_acc)
                        done = len(log.records) + len(batch) + 1
                        record = {
                            "step": done - 1,
                            "arch": ctx.space.describe(genotype),
                            "genotype": genotype.to_dict(),
                            "val_acc": ev.val_acc,
                            "test_acc": ev.test_acc,
                            "cost_s": ev.cost_s,
                            "wall_s": time.perf_counter() - t0,
                        }
                        if best is None or ev.val_acc > best["val_acc"]:
                            best = record
                        record["best_val_acc"] = best["val_acc"]
                        batch.append(record)
                        advance(1, f"best val {best['val_acc']:.2f}")
                        if every and (done % every == 0 or done == self.budget):
                            console.print(
                                f"search {done}/{self.budget} evaluations, best val_acc "
                                f"{best['val_acc']:.2f}, {record['wall_s']:.1f}s",
                                highlight=False,
                            )
                    # Only now is the strategy's state that of its told architectures: a batch's
                    # asks ran ahead of its tells, so a resume must start again from the batch.
                    # The checkpoint goes first, then the batch's lines (HistoryLog.commit): a kill
                    # in between leaves no line that the checkpoint lacks. Look-ups that cost
                    # nothing are not worth a flush to the disk per evaluation.
                    log.commit(batch, ckpt_path, {"strategy": self.state_dict()}, durable=not free)
        finally:
            if isinstance(evaluator, ParallelEvaluator):
                evaluator.close()
        assert best is not None
        console.print(
            f"[bold]search[/] best val_acc {best['val_acc']:.2f} after {len(log.records)} evaluations"
        )
        _plot(log.records, ctx.run_dir / "convergence.png")
        genotype = Genotype.from_dict(best["genotype"])
        return SearchResult(
            genotype=genotype,
            metrics={
                "search_val_acc": best["val_acc"],
                "search_test_acc": best["test_acc"],
                "n_evaluations": len(log.records),
            },
        )


def _plot(records: list[dict[str, Any]], path: Path) -> None:
    """``convergence.png``: each evaluation's score and the best so far; never costs the results."""
    try:
        from nasrun.plots.history import plot_convergence

        plot_convergence(
            [r["val_acc"] for r in records], path, title="search", ylabel="validation accuracy (%)"
        )
    except Exception as e:  # noqa: BLE001 - a plot is a convenience, the search result matters more
        get_console().print(f"[yellow]could not plot the convergence: {e}")
