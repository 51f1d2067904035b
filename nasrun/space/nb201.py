"""The NAS-Bench-201 search space (Dong & Yang, ICLR 2020): one cell, 4 nodes, 6 edges, 5 ops.

Node 0 is the cell input; node ``i`` (1..3) sums one op applied to every earlier node ``j < i``;
node 3 is the cell output. A genotype lists the 6 edges as ``(op, input_node)`` in node order
(node 1: from 0; node 2: from 0, 1; node 3: from 0, 1, 2), so the ``i``-th edge has a fixed input
and the only decision per edge is its op: 5^6 = 15,625 cells.

The string form used by the benchmark and its tables is
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`` (``to_string`` / ``from_string``).

The trainable network is the benchmark's macro skeleton: a 3x3 conv stem with ``C`` channels,
three stages of ``N`` cells with ``C``, ``2C``, ``4C`` channels joined by residual reduction blocks,
then BN-ReLU, global average pooling and a linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrun import UserError
from nasrun.space.base import EdgeFactory, Topology
from nasrun.space.genotype import Genotype, GenotypeError, check_space
from nasrun.space.nb201_supernet import NB201Supernet, ResidualReduction
from nasrun.space.ops import make_op

#: The benchmark's candidate ops, in its own order (the index is the decision value).
NB201_OPS: tuple[str, ...] = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")

#: The fixed input node of each of the 6 edges, in genotype order.
EDGE_INPUTS: tuple[int, ...] = (0, 0, 1, 0, 1, 2)

#: Edges per node (node 1, 2, 3): the blocks a progressive strategy grows one at a time.
NODE_SIZES: tuple[int, ...] = (1, 2, 3)

#: The node each of the 6 edges feeds, in genotype order.
EDGE_NODES: tuple[int, ...] = tuple(i + 1 for i, size in enumerate(NODE_SIZES) for _ in range(size))


def to_string(genotype: Genotype) -> str:
    """The NAS-Bench-201 string of a genotype, e.g. ``|nor_conv_3x3~0|+|none~0|skip_connect~1|+|...|``."""
    nodes, k = [], 0
    for size in NODE_SIZES:
        nodes.append("|" + "|".join(f"{op}~{inp}" for op, inp in genotype.normal[k : k + size]) + "|")
        k += size
    return "+".join(nodes)


def from_string(text: str, where: str = "architecture") -> Genotype:
    """Parse a NAS-Bench-201 string into a genotype.

    Args:
        text: the string, ``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.
        where: names the source in error messages (e.g. ``"table.csv row 12"``).

    Raises:
        GenotypeError: the string is malformed, names an unknown op or has the wrong inputs.
    """
    text = text.strip()
    nodes = text.split("+")
    if len(nodes) != len(NODE_SIZES):
        raise GenotypeError(f"{where}: expected 3 nodes separated by '+' in {text!r}")
    edges: list[tuple[str, int]] = []
    for i, node in enumerate(nodes, start=1):
        if not (node.startswith("|") and node.endswith("|") and len(node) > 2):
            raise GenotypeError(f"{where}: node {i} must look like |op~j|...| in {text!r}")
        for entry in node[1:-1].split("|"):
            op, sep, inp = entry.partition("~")
            if not sep or not inp.isdigit():
                raise GenotypeError(f"{where}: node {i} entry {entry!r} is not op~input in {text!r}")
            edges.append((op, int(inp)))
    genotype = Genotype(normal=tuple(edges), normal_concat=(3,), space="nb201")
    NB201Space.check(genotype, where)
    return genotype


class _Cell(nn.Module):
    """A NAS-Bench-201 cell: node ``i`` = sum over ``j < i`` of ``op_ji(node_j)``; output node 3."""

    def __init__(self, genotype: Genotype, C: int):
        super().__init__()
        self.inputs = [inp for _, inp in genotype.normal]
        # Every cell op keeps the channel count and resolution (stride 1). The registry's zero,
        # identity and 3x3 average pooling (without padded zeros) match NAS-Bench-201's.
        self.edges = nn.ModuleList(make_op(op, C, 1, affine=True) for op, _ in genotype.normal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes, k = [x], 0
        for size in NODE_SIZES:
            nodes.append(sum(self.edges[e](nodes[self.inputs[e]]) for e in range(k, k + size)))
            k += size
        return nodes[-1]


class NB201Network(nn.Module):
    """The NAS-Bench-201 macro network around one cell genotype.

    Args:
        genotype: an ``nb201`` genotype.
        num_classes: classifier outputs.
        in_channels: image channels (3 for CIFAR, 1 for digits).
        C: stem channels; the stages have ``C``, ``2C``, ``4C``.
        N: cells per stage.

    Shapes: ``[B, in_channels, H, W] -> [B, num_classes]``.
    """

    def __init__(self, genotype: Genotype, num_classes: int, in_channels: int = 3, C: int = 16, N: int = 5):
        super().__init__()
        layers: list[nn.Module] = []
        for stage, width in enumerate((C, 2 * C, 4 * C)):
            if stage:
                layers.append(ResidualReduction(width // 2, width))
            layers.extend(_Cell(genotype, width) for _ in range(N))
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        self.cells = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(4 * C), nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.cells(self.stem(x))))


class NB201Space:
    """The NAS-Bench-201 space as 6 categorical decisions (one op per edge).

    Args:
        channels: stem channels C of ``build_network`` (16 in the benchmark).
        cells: cells per stage N of ``build_network`` (5 in the benchmark).
    """

    name = "nb201"

    def __init__(
        self,
        channels: int = 16,  # NAS-Bench-201 (Dong & Yang 2020): 16-channel stem; stages of 16, 32, 64
        cells: int = 5,  # NAS-Bench-201: N = 5 cells per stage
    ):
        if channels <= 0 or cells <= 0:
            raise UserError(f"space.channels and space.cells must be > 0, got {channels}, {cells}")
        self.channels = channels
        self.cells = cells

    def decisions(self) -> list[int]:
        return [len(NB201_OPS)] * len(EDGE_INPUTS)

    def decision_groups(self) -> list[int]:
        return list(NODE_SIZES)

    def decode(self, choices: Sequence[int]) -> Genotype:
        if len(choices) != len(EDGE_INPUTS) or not all(0 <= c < len(NB201_OPS) for c in choices):
            raise GenotypeError(f"nb201: expected 6 op indices in [0, {len(NB201_OPS)}), got {list(choices)}")
        edges = tuple((NB201_OPS[c], inp) for c, inp in zip(choices, EDGE_INPUTS, strict=True))
        return Genotype(normal=edges, normal_concat=(3,), space=self.name)

    def encode(self, genotype: Genotype) -> list[int]:
        self.validate(genotype)
        return [NB201_OPS.index(op) for op, _ in genotype.normal]

    def validate(self, genotype: Genotype, sized: bool = True) -> None:
        """Raise ``GenotypeError`` if ``genotype`` is not an NAS-Bench-201 cell (every cell has one size)."""
        self.check(genotype)

    @staticmethod
    def check(genotype: Genotype, where: str = "genotype") -> None:
        """``validate`` with a caller-chosen source name in the message."""
        check_space(genotype, "nb201", where)
        if len(genotype.normal) != len(EDGE_INPUTS):
            raise GenotypeError(f"{where}: an nb201 cell has 6 edges, got {len(genotype.normal)}")
        for i, ((op, inp), want) in enumerate(zip(genotype.normal, EDGE_INPUTS, strict=True)):
            if op not in NB201_OPS:
                raise GenotypeError(
                    f"{where}: unknown op {op!r} on edge {i}; valid ops: {', '.join(NB201_OPS)}"
                )
            if inp != want:
                raise GenotypeError(f"{where}: edge {i} must read node {want}, got {inp}")
        if genotype.normal_concat != (3,) or genotype.reduce or genotype.reduce_concat:
            raise GenotypeError(f"{where}: an nb201 genotype has normal_concat [3] and no reduce cell")

    def describe(self, genotype: Genotype) -> str:
        return to_string(genotype)

    def build_network(
        self,
        genotype: Genotype,
        num_classes: int,
        in_channels: int,
        channels: int | None = None,
        cells: int | None = None,
    ) -> NB201Network:
        """The NAS-Bench-201 network; ``channels`` / ``cells`` default to the space's."""
        self.validate(genotype)
        return NB201Network(
            genotype, num_classes, in_channels, C=channels or self.channels, N=cells or self.cells
        )

    # -- one-shot search ------------------------------------------------------------------------
    def topology(self) -> Topology:
        """One cell type, the 6 edges node by node, the 5 benchmark ops on each; every edge is kept."""
        edges = tuple(zip(EDGE_NODES, EDGE_INPUTS, strict=True))
        return Topology(cell_types=("normal",), edges=edges, ops=NB201_OPS, kept_inputs=None)

    def build_supernet(
        self,
        num_classes: int,
        in_channels: int,
        make_edge: EdgeFactory,
        edge_ops: dict[str, list[list[str]]] | None = None,
    ) -> NB201Supernet:
        """The benchmark's macro network at the space's size (``channels``, ``cells``), its edges by ``make_edge``.

        The NAS-Bench-201 paper searches its one-shot baselines in this network with every cell a
        supernet cell (Dong & Yang 2020).
        """
        topo = self.topology()
        return NB201Supernet(
            C=self.channels,
            N=self.cells,
            num_classes=num_classes,
            in_channels=in_channels,
            edges=topo.edges,
            edge_ops=edge_ops if edge_ops is not None else topo.full_edge_ops(),
            make_edge=make_edge,
        )

    def derive(
        self,
        weights: dict[str, torch.Tensor],
        edge_ops: dict[str, list[list[str]]] | None = None,
        rule: str = "darts",
    ) -> Genotype:
        """Each edge's strongest op, ``none`` included (Dong & Yang 2020); ties keep the first op.

        Every edge stays in this space's cell, so ``rule`` (``darts`` or ``every_edge``) changes nothing.
        """
        ops = edge_ops["normal"] if edge_ops is not None else self.topology().full_edge_ops()["normal"]
        W = weights["normal"].detach().float().cpu()
        edges = tuple((ops[e][int(W[e].argmax())], inp) for e, inp in enumerate(EDGE_INPUTS))
        return Genotype(normal=edges, normal_concat=(3,), space=self.name)

    def genotype_weights(
        self, genotype: Genotype, edge_ops: dict[str, list[list[str]]] | None = None
    ) -> dict[str, torch.Tensor]:
        """``[6, n_ops]`` one-hot rows: edge ``e`` runs the genotype's op ``e`` (``none``: its zero)."""
        self.validate(genotype)
        ops = edge_ops["normal"] if edge_ops is not None else self.topology().full_edge_ops()["normal"]
        W = torch.zeros(len(EDGE_INPUTS), len(ops[0]))
        for e, (op, _) in enumerate(genotype.normal):
            if op not in ops[e]:
                raise GenotypeError(f"genotype.normal[{e}]: {op!r} is not a candidate of edge {e} ({ops[e]})")
            W[e, ops[e].index(op)] = 1.0
        return {"normal": W}
