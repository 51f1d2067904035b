"""What every search space offers: a categorical-decision view for black-box strategies.

Black-box strategies (random, evolution, REINFORCE, PNAS, BO) never look inside a cell: they see a
space as a fixed sequence of categorical decisions, ``decisions()[i]`` choices at position ``i``,
and convert with ``decode`` / ``encode``. One-shot strategies (DARTS) use the space's supernet.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor, nn

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


#: ``make_edge(C, stride, ops)``: a one-shot method's module for one supernet edge, called as
#: ``edge(x, weights[n_ops])``.
EdgeFactory = Callable[[int, int, Sequence[str]], nn.Module]


def edge_outputs(edges: Sequence[nn.Module], x: Tensor, weights: Tensor) -> list[Tensor]:
    """``[edge(x, w) for edge, w in zip(edges, weights)]`` for edges that all read the state ``x``.

    When the edges are of one class with a ``fan_out(edges, x, weights)`` static method (a fused
    path that computes them together with the same mathematics), that runs instead.
    """
    kind = type(edges[0])
    fused = getattr(kind, "fan_out", None)
    if fused is not None and all(type(e) is kind for e in edges):
        return list(fused(edges, x, weights))
    return [e(x, w) for e, w in zip(edges, weights, strict=True)]


def states_by_state(
    states: list[Tensor],
    edges: Sequence[nn.Module] | nn.ModuleList,
    inputs: Sequence[int],
    targets: Sequence[int],
    weights: Tensor,
    edge_scales: Tensor | None = None,
) -> list[Tensor]:
    """A cell's states, its edges taken state by state: all the edges that read a state at once.

    Each node is the sum of its incoming edges. A node is complete once every state before it has
    been read, and its terms are added in the order of its inputs, as edge by edge.

    Args:
        states: the cell's input states (its first ``len(states)`` states).
        edges: the cell's edges, called as ``edge(x, weights[e])`` (through ``edge_outputs``).
        inputs, targets: per edge, the index of the state it reads and of the state it feeds.
        weights: ``[n_edges, n_ops]``, each edge's op weights.
        edge_scales: ``[n_edges]`` factors on the edges' outputs, or ``None``.

    Returns:
        Every state of the cell: the inputs, then each node.
    """
    states = list(states)
    last = max(targets)
    sums: dict[int, Tensor] = {}
    for s in range(last):
        if s >= len(states):
            states.append(sums[s])
        ids = [e for e, j in enumerate(inputs) if j == s]
        if not ids:
            continue
        outs = edge_outputs([edges[e] for e in ids], states[s], weights[ids])
        for e, y in zip(ids, outs, strict=True):
            if edge_scales is not None:
                y = edge_scales[e] * y
            t = targets[e]
            sums[t] = sums[t] + y if t in sums else y
    states.append(sums[last])
    return states


@dataclass(frozen=True)
class Topology:
    """What a one-shot method needs to know of a space's supernet.

    Attributes:
        cell_types: the cell types that have architecture weights of their own (e.g. ``normal``,
            ``reduce``); every type has the same edges.
        edges: per edge, in order, ``(node, input)``: the node it feeds and the state it reads.
        ops: the candidate op names of every edge, in weight order.
        kept_inputs: how many incoming edges of each node a derived cell keeps (DARTS: 2, the
            strongest); ``None``: every edge stays, each with its own op (NAS-Bench-201).
    """

    cell_types: tuple[str, ...]
    edges: tuple[tuple[int, int], ...]
    ops: tuple[str, ...]
    kept_inputs: int | None = 2

    def full_edge_ops(self) -> dict[str, list[list[str]]]:
        """Per cell type, every edge's candidate ops: all of ``ops`` (before any pruning)."""
        return {t: [list(self.ops) for _ in self.edges] for t in self.cell_types}

    def node_slices(self) -> list[slice]:
        """The consecutive edges of each node (edges are listed node by node)."""
        out: list[slice] = []
        start = 0
        for k in range(1, len(self.edges) + 1):
            if k == len(self.edges) or self.edges[k][0] != self.edges[start][0]:
                out.append(slice(start, k))
                start = k
        return out


@runtime_checkable
class OneShotSpace(SearchSpace, Protocol):
    """A space with a supernet: one-shot methods search it by training shared weights."""

    def topology(self) -> Topology:
        """The supernet's cell types, edges and candidate ops."""
        ...

    def build_supernet(
        self,
        num_classes: int,
        in_channels: int,
        make_edge: EdgeFactory,
        edge_ops: dict[str, list[list[str]]] | None = None,
    ) -> nn.Module:
        """The supernet skeleton, called as ``net(x, weights, edge_scales=None)``.

        Args:
            num_classes: classifier outputs.
            in_channels: image channels.
            make_edge: ``make_edge(C, stride, ops)`` builds one edge (the method's choice).
            edge_ops: per cell type, the candidate ops of each edge (default: ``topology().ops``
                on every edge); methods that prune candidates per edge pass their own.
        """
        ...

    def derive(
        self,
        weights: dict[str, Tensor],
        edge_ops: dict[str, list[list[str]]] | None = None,
        rule: str = "darts",
    ) -> Genotype:
        """The discrete cell from each cell type's ``[n_edges, n_ops]`` edge-op strengths.

        Args:
            weights: per cell type, non-negative strengths (normalised weights, possibly scaled
                per edge by the method).
            edge_ops: the candidate ops of each edge, as given to ``build_supernet``.
            rule: ``darts`` (the method's own rule for this space) or ``every_edge`` (each
                edge's strongest op, ``none`` included: SNAS). Spaces that keep every edge anyway
                derive the same cell by both.
        """
        ...


@runtime_checkable
class SampledSpace(OneShotSpace, Protocol):
    """A space whose discrete cells run inside its supernet (methods that sample whole cells)."""

    def genotype_weights(
        self, genotype: Genotype, edge_ops: dict[str, list[list[str]]] | None = None
    ) -> dict[str, Tensor]:
        """The supernet weights that run exactly ``genotype``'s cells.

        Args:
            genotype: a cell of this space (``decode`` of its decisions).
            edge_ops: the candidate ops of each edge, as given to ``build_supernet``.

        Returns:
            Per cell type, ``[n_edges, n_ops]``: the number of times the genotype takes op ``k``
            on edge ``e`` (1 for a plain cell), 0 elsewhere; an edge the cell does not use is all 0.

        Raises:
            GenotypeError: an op of the genotype is not among its edge's candidates.
        """
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
