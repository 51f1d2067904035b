"""Uniform random search: the baseline every NAS paper reports (Li & Talwalkar 2019)."""

from __future__ import annotations

import random
from typing import Any

from nasrun.run_folder import python_rng_state, set_python_rng_state
from nasrun.search.base import DEFAULT_BUDGET, BlackBoxStrategy
from nasrun.search.blackbox._common import (
    Key,
    keys_from_state,
    keys_to_state,
    sample_unseen,
    sample_unseen_many,
)
from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype


class RandomSearch(BlackBoxStrategy):
    """Sample architectures uniformly at random, without repeats.

    Args:
        space: the search space.
        seed: seeds the sampler.
        budget: number of architectures to evaluate.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int = DEFAULT_BUDGET,  # architectures evaluated (nasrun.search.base)
    ) -> None:
        super().__init__(space, seed, budget)
        self.rng = random.Random(seed)
        self.seen: set[Key] = set()

    def ask(self) -> Genotype:
        return self.space.decode(sample_unseen(self.space, self.rng, self.seen))

    def ask_batch(self, n: int) -> list[Genotype]:
        # Scores never matter here; each proposal only has to avoid the ones before it, which
        # one ask/tell at a time would have told already.
        return [self.space.decode(c) for c in sample_unseen_many(self.space, self.rng, self.seen, n)]

    def tell(self, genotype: Genotype, score: float) -> None:
        self.seen.add(tuple(self.space.encode(genotype)))

    def state_dict(self) -> dict[str, Any]:
        return {"rng": python_rng_state(self.rng), "seen": keys_to_state(self.seen)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_python_rng_state(self.rng, state["rng"])
        self.seen = keys_from_state(state["seen"])
