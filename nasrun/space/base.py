"""What every search space offers: a categorical-decision view for black-box strategies.

Black-box strategies (random, evolution, REINFORCE, PNAS, BO) never look inside a cell: they see a
space as a fixed sequence of categorical decisions, ``decisions()[i]`` choices at position ``i``,
and convert with ``decode`` / ``encode``. One-shot strategies (DARTS) use the space's supernet.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from torch import nn

from nasrun.space.genotype import Genotype


@runtime_checkable
class SearchSpace(Protocol):
    """A search space of cell architectures."""

    name: str

    def decisions(self) -> list[int]:
        """Number of choices at each categorical decision, in a fixed order."""
        ...

    def decision_groups(self) -> list[int]:
        """How many consecutive decisions make up one block (node), block by block.

        ``sum(decision_groups()) == len(decisions())``. Progressive strategies (PNAS) grow
        architectures one block at a time.
        """
        ...

    def decode(self, choices: Sequence[int]) -> Genotype:
        """Build the genotype for one choice index per decision."""
        ...

    def encode(self, genotype: Genotype) -> list[int]:
        """Inverse of ``decode``."""
        ...

    def validate(self, genotype: Genotype, sized: bool = True) -> None:
        """Raise ``GenotypeError`` naming the first problem if the genotype is not in this space.

        ``sized=False`` skips the checks of the space's own size (its node count, say), for a
        cell that is retrained as given.
        """
        ...

    def describe(self, genotype: Genotype) -> str:
        """A one-line string form (the NAS-Bench-201 string for that space)."""
        ...

    def build_network(
        self, genotype: Genotype, num_classes: int, in_channels: int, **kwargs: object
    ) -> nn.Module:
        """The discrete network for ``genotype`` (size arguments are the space's own)."""
        ...


def sample_genotype(space: SearchSpace, rng: random.Random) -> Genotype:
    """A uniformly random architecture of ``space``."""
    return space.decode([rng.randrange(n) for n in space.decisions()])


def mutate_genotype(space: SearchSpace, genotype: Genotype, rng: random.Random) -> Genotype:
    """Change one decision (an op or an input) to a different value, uniformly at random."""
    choices = space.encode(genotype)
    sizes = space.decisions()
    free = [i for i, n in enumerate(sizes) if n > 1]
    i = rng.choice(free)
    new = rng.randrange(sizes[i] - 1)
    choices[i] = new if new < choices[i] else new + 1
    return space.decode(choices)
