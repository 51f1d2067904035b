"""Regularised (ageing) evolution, Real et al. "Regularized Evolution for Image Classifier
Architecture Search", AAAI 2019.

A population of ``population`` architectures starts random. Every later step samples ``sample``
members uniformly, mutates the best of them (one op or one input, uniformly), evaluates the child,
adds it to the population and removes the *oldest* member, so an architecture survives only by
having good descendants, not by being lucky once.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from nasrun import UserError
from nasrun.run_folder import python_rng_state, set_python_rng_state
from nasrun.search.base import DEFAULT_BUDGET, BlackBoxStrategy
from nasrun.search.blackbox._common import (
    MAX_TRIES,
    Key,
    keys_from_state,
    keys_to_state,
    sample_unseen,
    sample_unseen_many,
)
from nasrun.space.base import SearchSpace, mutate_genotype
from nasrun.space.genotype import Genotype


class RegularizedEvolution(BlackBoxStrategy):
    """Ageing evolution with tournament selection.

    Args:
        space: the search space.
        seed: seeds sampling and mutation.
        budget: number of architectures to evaluate.
        population: population size P (the first P evaluations are random).
        sample: tournament size S (members compared to pick a parent).
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int = DEFAULT_BUDGET,  # architectures evaluated (nasrun.search.base)
        population: int = 20,  # P, scaled to a 100-query budget (Real et al. use 100 for 20k models)
        sample: int = 5,  # S: tournament size, P/4 as in Real et al.'s P=100, S=25
    ) -> None:
        super().__init__(space, seed, budget)
        if population < 1 or not 1 <= sample <= population:
            raise UserError(
                f"search: need population >= 1 and 1 <= sample <= population, got {population}, {sample}"
            )
        self.population_size = population
        self.sample_size = sample
        self.rng = random.Random(seed)
        self.population: deque[tuple[Key, float]] = deque()
        self.seen: set[Key] = set()

    def ask(self) -> Genotype:
        if len(self.seen) < self.population_size:
            return self.space.decode(sample_unseen(self.space, self.rng, self.seen))
        tournament = self.rng.sample(list(self.population), self.sample_size)
        parent = self.space.decode(max(tournament, key=lambda m: m[1])[0])
        # Re-draw a mutation that lands on an evaluated architecture: a repeat costs a query and
        # teaches nothing. A parent whose whole neighbourhood is evaluated falls back to random.
        for _ in range(MAX_TRIES):
            child = mutate_genotype(self.space, parent, self.rng)
            if tuple(self.space.encode(child)) not in self.seen:
                return child
        return self.space.decode(sample_unseen(self.space, self.rng, self.seen))

    def ask_batch(self, n: int) -> list[Genotype]:
        # The random initial population is proposed without scores (each member only avoids the
        # ones before it); every later child descends from a scored tournament, so comes alone.
        m = min(n, self.population_size - len(self.seen))
        if m <= 1:
            return [self.ask()]
        return [self.space.decode(c) for c in sample_unseen_many(self.space, self.rng, self.seen, m)]

    def tell(self, genotype: Genotype, score: float) -> None:
        key = tuple(self.space.encode(genotype))
        self.seen.add(key)
        self.population.append((key, score))
        if len(self.population) > self.population_size:
            self.population.popleft()  # the oldest dies (ageing), not the worst

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": python_rng_state(self.rng),
            "population": [[list(k), s] for k, s in self.population],
            "seen": keys_to_state(self.seen),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_python_rng_state(self.rng, state["rng"])
        self.population = deque((tuple(int(v) for v in k), float(s)) for k, s in state["population"])
        self.seen = keys_from_state(state["seen"])
