"""Black-box strategies on the NAS-Bench-201 table: learning, determinism, resume, honesty.

Every strategy is driven through the shared ask/tell loop (``BlackBoxStrategy.run``) where the
behaviour of the run folder matters, and through a bare ask/tell loop where only the choices do.
"""

from __future__ import annotations

import csv
import functools
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.evaluator.base import Evaluation
from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.run_folder import read_history
from nasrun.search.base import BlackBoxStrategy, SearchContext, SearchResult
from nasrun.search.blackbox.bo_search import BayesianOptimization
from nasrun.search.blackbox.evolution import RegularizedEvolution
from nasrun.search.blackbox.pnas import PNAS
from nasrun.search.blackbox.random_search import RandomSearch
from nasrun.search.blackbox.reinforce import Reinforce
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.genotype import Genotype
from nasrun.space.nb201 import NB201Space
from tests.conftest import NB201_TABLE

TABLE = NB201_TABLE

Factory = Callable[..., BlackBoxStrategy]
STRATEGIES: dict[str, Factory] = {
    "random_search": RandomSearch,
    "evolution": RegularizedEvolution,
    "reinforce": Reinforce,
    "pnas": PNAS,
    "bo": BayesianOptimization,
}
LEARNERS = [name for name in STRATEGIES if name != "random_search"]


@functools.cache
def _table() -> dict[str, float]:
    return {k: row.val_acc for k, row in TabularEvaluator(str(TABLE)).table.items()}


def ask_tell(strategy: BlackBoxStrategy, steps: int) -> list[str]:
    """Drive ``strategy`` for ``steps`` queries against the table; the architectures asked."""
    space, table, asked = strategy.space, _table(), []
    for _ in range(steps):
        g = strategy.ask()
        asked.append(space.describe(g))
        strategy.tell(g, table[asked[-1]])
    return asked


def archs(run_dir: Path) -> list[str]:
    """The architectures a search evaluated, in order (its ``history.jsonl``)."""
    return [r["arch"] for r in read_history(run_dir / "history.jsonl")]


def search(
    factory: Factory, run_dir: Path, table: Path = TABLE, resume: bool = False, **kw: object
) -> SearchResult:
    space = NB201Space()
    ctx = SearchContext(space=space, run_dir=run_dir, seed=kw.get("seed", 0), resume=resume)  # type: ignore[arg-type]
    ctx.evaluator = TabularEvaluator(str(table))
    return factory(space=space, **kw).run(ctx)


@pytest.mark.parametrize("name", LEARNERS)
def test_strategy_beats_random_search_at_a_small_budget(name: str) -> None:
    """Mean best validation accuracy over fixed seeds after 50 queries exceeds random search's."""
    seeds, budget = range(4), 50
    table = _table()

    def best(factory: Factory, seed: int) -> float:
        return max(table[a] for a in ask_tell(factory(space=NB201Space(), seed=seed, budget=budget), budget))

    random_mean = statistics.mean(best(RandomSearch, s) for s in seeds)
    mean = statistics.mean(best(STRATEGIES[name], s) for s in seeds)
    assert mean > random_mean, f"{name}: {mean:.3f} <= random {random_mean:.3f}"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_same_seed_same_run_and_no_repeats(name: str) -> None:
    a = ask_tell(STRATEGIES[name](space=NB201Space(), seed=7, budget=25), 25)
    b = ask_tell(STRATEGIES[name](space=NB201Space(), seed=7, budget=25), 25)
    c = ask_tell(STRATEGIES[name](space=NB201Space(), seed=8, budget=25), 25)
    assert a == b
    assert a != c
    assert len(set(a)) == len(a), "an architecture was proposed twice"


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_state_dict_round_trip_continues_identically(name: str, tmp_path: Path) -> None:
    original = STRATEGIES[name](space=NB201Space(), seed=3, budget=40)
    ask_tell(original, 22)  # mid-way through an evolution cycle, a controller batch, a PNAS round
    path = tmp_path / "state.pt"
    torch.save(original.state_dict(), path)
    restored = STRATEGIES[name](space=NB201Space(), seed=99, budget=40)  # a different seed: state wins
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert ask_tell(restored, 12) == ask_tell(original, 12)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_resumed_run_equals_uninterrupted_run(name: str, tmp_path: Path) -> None:
    full = search(STRATEGIES[name], tmp_path / "full", seed=1, budget=24)
    # "Interrupt" after 13 evaluations: the run ends with its checkpoint, a new process resumes.
    search(STRATEGIES[name], tmp_path / "cut", seed=1, budget=13)
    resumed = search(STRATEGIES[name], tmp_path / "cut", resume=True, seed=1, budget=24)
    assert archs(tmp_path / "cut") == archs(tmp_path / "full")
    assert resumed.genotype == full.genotype
    lines = (tmp_path / "cut" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 24
    assert (tmp_path / "cut" / "convergence.png").is_file()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_choice_ignores_test_accuracy(name: str, tmp_path: Path) -> None:
    """Shuffling the test_acc column changes nothing that the strategy chooses."""
    with TABLE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    tests = [r["test_acc"] for r in rows]
    random.Random(0).shuffle(tests)
    shuffled = tmp_path / "shuffled.csv"
    with shuffled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["arch", "val_acc", "test_acc"])
        w.writeheader()
        w.writerows({**r, "test_acc": t} for r, t in zip(rows, tests, strict=True))
    real = search(STRATEGIES[name], tmp_path / "real", seed=5, budget=30)
    fake = search(STRATEGIES[name], tmp_path / "fake", table=shuffled, seed=5, budget=30)
    assert fake.genotype == real.genotype
    assert archs(tmp_path / "fake") == archs(tmp_path / "real")
    assert fake.metrics["search_val_acc"] == real.metrics["search_val_acc"]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_strategies_search_the_cifar_cell_space_too(name: str) -> None:
    """Only the space protocol is used: the same code proposes 30 distinct DARTS/PNAS cells (each is
    built by the space's decoder, which makes only valid cells, so validity is not checked here)."""
    space = CifarCellSpace()
    strategy = STRATEGIES[name](space=space, seed=0, budget=30)
    rng, seen = random.Random(0), set()
    for _ in range(30):
        g = strategy.ask()
        key = tuple(space.encode(g))
        assert key not in seen
        seen.add(key)
        strategy.tell(g, rng.uniform(80, 90))


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_budget_must_be_positive(name: str) -> None:
    with pytest.raises(UserError, match="budget must be > 0"):
        STRATEGIES[name](space=NB201Space(), seed=0, budget=0)


def ask_tell_batched(strategy: BlackBoxStrategy, steps: int, n: int) -> list[str]:
    """``ask_tell`` through ``ask_batch(n)``: a batch is asked in full before any of it is told."""
    space, table, asked = strategy.space, _table(), []
    while len(asked) < steps:
        batch = strategy.ask_batch(min(n, steps - len(asked)))
        assert 1 <= len(batch) <= min(n, steps - len(asked))
        asked += [space.describe(g) for g in batch]
        for g in batch:
            strategy.tell(g, table[space.describe(g)])
    return asked


BATCHED = {
    **STRATEGIES,
    # A policy that collapses at once: nearly every sample repeats, the path where a batch must
    # stop and leave the repeat to ``ask``.
    "reinforce_collapsing": functools.partial(Reinforce, lr=0.5, entropy_weight=0.0),
}


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("name", list(BATCHED))
def test_batched_asks_propose_what_one_at_a_time_proposes(name: str, n: int) -> None:
    steps = 15 if name == "reinforce_collapsing" else 30
    one = BATCHED[name](space=NB201Space(), seed=2, budget=40)
    batched = BATCHED[name](space=NB201Space(), seed=2, budget=40)
    assert ask_tell_batched(batched, steps, n) == ask_tell(one, steps)
    assert ask_tell(batched, 5) == ask_tell(one, 5)  # and the states are the same


class _BatchingTable(TabularEvaluator):
    """Table lookups handed over in batches, as a ``workers``-process evaluator receives them;
    optionally failing at the ``fail_at``-th lookup (a crash in the middle of a batch)."""

    def __init__(self, table: str, workers: int, fail_at: int = 0) -> None:
        super().__init__(table)
        self.workers = workers
        self.fail_at = fail_at
        self.batches: list[int] = []
        self.lookups = 0
        self.closed = False

    def evaluate(self, genotype: Genotype, ctx: SearchContext) -> Evaluation:
        self.lookups += 1
        if self.lookups == self.fail_at:
            raise RuntimeError("crash")
        return super().evaluate(genotype, ctx)

    def evaluate_many(self, genotypes: Sequence[Genotype], ctx: SearchContext) -> Iterator[Evaluation]:
        self.batches.append(len(genotypes))
        return (self.evaluate(g, ctx) for g in genotypes)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_batched_run_equals_one_at_a_time_and_resumes_mid_batch(name: str, tmp_path: Path) -> None:
    full = search(STRATEGIES[name], tmp_path / "full", seed=1, budget=24)

    def batched(run_dir: Path, fail_at: int = 0, resume: bool = False) -> SearchResult:
        space = NB201Space()
        evaluator = _BatchingTable(str(TABLE), workers=3, fail_at=fail_at)
        ctx = SearchContext(space=space, run_dir=run_dir, seed=1, resume=resume, evaluator=evaluator)
        try:
            return STRATEGIES[name](space=space, seed=1, budget=24).run(ctx)
        finally:
            assert evaluator.closed  # the loop releases the workers, also after an error
            assert all(1 < b <= 3 for b in evaluator.batches)

    same = batched(tmp_path / "same")
    assert [(r["arch"], r["val_acc"]) for r in read_history(tmp_path / "same" / "history.jsonl")] == [
        (r["arch"], r["val_acc"]) for r in read_history(tmp_path / "full" / "history.jsonl")
    ]
    assert same.genotype == full.genotype
    # Crash at the 15th lookup: in a batch when the strategy batches there; the resumed run
    # starts again from the last whole batch and ends where the uninterrupted run ends.
    with pytest.raises(RuntimeError, match="crash"):
        batched(tmp_path / "cut", fail_at=15)
    batched(tmp_path / "cut", resume=True)
    assert archs(tmp_path / "cut") == archs(tmp_path / "full")
    assert len((tmp_path / "cut" / "history.jsonl").read_text().splitlines()) == 24
