"""Helpers shared by the black-box strategies: architecture keys, encodings, neighbourhoods.

Strategies work on the space's decision view (one choice index per categorical decision), so the
same code searches every space. An architecture's *key* is its tuple of choice indices; strategies
keep the set of keys they have evaluated and never propose one twice (the search loop counts every
query towards the budget, and a repeat would teach the strategy nothing).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from nasrun.space.base import SearchSpace

Key = tuple[int, ...]

#: Rejection-sampling attempts before giving up on finding an unevaluated architecture; with a
#: budget far below the space size a miss is vanishingly rare, so this only bounds tiny spaces.
MAX_TRIES = 1000


def sample_choices(space: SearchSpace, rng: random.Random) -> list[int]:
    """A uniformly random architecture, as choice indices."""
    return [rng.randrange(n) for n in space.decisions()]


def sample_unseen(space: SearchSpace, rng: random.Random, seen: set[Key]) -> list[int]:
    """A uniformly random architecture not in ``seen`` (any architecture once the space runs dry)."""
    choices = sample_choices(space, rng)
    for _ in range(MAX_TRIES):
        if tuple(choices) not in seen:
            break
        choices = sample_choices(space, rng)
    return choices


def sample_unseen_many(space: SearchSpace, rng: random.Random, seen: set[Key], n: int) -> list[list[int]]:
    """``n`` calls of ``sample_unseen``, each also avoiding the ones before it (``seen`` is not
    changed): the proposals of ``n`` ask/tell rounds of a uniform sampler, made before any tell."""
    seen, out = set(seen), []
    for _ in range(n):
        out.append(sample_unseen(space, rng, seen))
        seen.add(tuple(out[-1]))
    return out


def neighbours(space: SearchSpace, choices: Sequence[int]) -> list[list[int]]:
    """Every architecture that differs from ``choices`` in exactly one decision, in a fixed order."""
    out = []
    for i, n in enumerate(space.decisions()):
        for v in range(n):
            if v != choices[i]:
                out.append([*choices[:i], v, *choices[i + 1 :]])
    return out


def one_hot(space: SearchSpace, rows: Iterable[Sequence[int | None]]) -> torch.Tensor:
    """One-hot encoding of architectures: ``[n, sum(decisions)]`` float64.

    A ``None`` choice (a decision not taken yet, in a partial architecture) encodes as all zeros.
    """
    sizes = space.decisions()
    offsets = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    idx = torch.tensor([[-1 if c is None else c for c in r] for r in rows], dtype=torch.int64).view(
        -1, len(sizes)
    )
    x = torch.zeros(len(idx), sum(sizes) + 1, dtype=torch.float64)
    # Undecided entries write into a spare last column, dropped at the end.
    cols = torch.where(idx >= 0, idx + offsets, sum(sizes))
    x.scatter_(1, cols, 1.0)
    return x[:, :-1]


def keys_to_state(keys: Iterable[Key]) -> list[list[int]]:
    """A key set as sorted plain lists (``torch.load(weights_only=True)`` reads those back)."""
    return [list(k) for k in sorted(keys)]


def keys_from_state(state: Any) -> set[Key]:
    return {tuple(int(v) for v in k) for k in state}


def top_k(observed: dict[Key, float], k: int) -> list[Key]:
    """The ``k`` best evaluated architectures; ties keep evaluation order (dicts are ordered)."""
    return [key for key, _ in sorted(observed.items(), key=lambda kv: -kv[1])[:k]]
