"""The DARTS / NASNet CIFAR cell space and its discrete network (Liu et al. 2019; Zoph et al. 2018).

A cell has two inputs (the outputs of the two previous cells, numbered 0 and 1) and ``nodes``
intermediate nodes (numbered 2..); node ``i`` sums two edges, each an op applied to an earlier
state. The cell output concatenates the intermediate nodes. The network stacks ``layers`` cells;
those at ``layers // 3`` and ``2 * layers // 3`` are reduction cells (stride 2, channels doubled).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrun import UserError
from nasrun.space.base import EdgeFactory, Topology
from nasrun.space.cifar_cell_supernet import CifarCellSupernet
from nasrun.space.genotype import Genotype, GenotypeError, check_space, edges_by_node
from nasrun.space.ops import DARTS_OPS, FactorizedReduce, ReLUConvBN, check_op, make_op

#: How a one-shot search derives its cell (``search.derivation``): DARTS's two strongest inputs per
#: node, or SNAS's strongest op on every edge (``none`` included, then left out).
DERIVATIONS = ("darts", "every_edge")


def reduction_layers(layers: int) -> tuple[int, int]:
    """Indices of the two reduction cells (DARTS: ``layers // 3`` and ``2 * layers // 3``)."""
    return layers // 3, 2 * layers // 3


def check_layers(layers: int, key: str = "space.layers") -> None:
    """Two distinct reduction cells with a normal cell before the first need at least 3 layers."""
    a, b = reduction_layers(layers)
    if layers < 3 or a == 0 or a == b:
        raise UserError(
            f"{key}={layers}: need at least 3 cells so the two reduction cells are distinct (got reductions at {a} and {b})"
        )


def node_counts(genotype: Genotype, kind: str) -> list[int]:
    """Edges into each intermediate node of the ``kind`` cell: the genotype's own, else two per node."""
    edges, _, own = genotype.cell(kind)
    return list(own) if own else [2] * (len(edges) // 2)


#: A data-parallel process's part of the global batch: ``(global batch size, start, stop)``.
BatchShare = tuple[int, int, int]


def drop_path(x: torch.Tensor, drop_prob: float, share: BatchShare | None = None) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (Larsson et al. 2017).

    ``share``: ``x`` holds rows ``start:stop`` of a global batch of ``n`` (a data-parallel process,
    every process in the same random state): the masks of the whole global batch are drawn, as one
    process would draw them, and this process keeps its rows.
    """
    keep = 1.0 - drop_prob
    n, start, stop = share if share is not None else (x.size(0), 0, x.size(0))
    if stop - start != x.size(0):
        raise ValueError(f"drop_path: a share of rows {start}:{stop} for a batch of {x.size(0)}")
    mask = torch.empty(n, 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x * mask[start:stop] / keep


class Cell(nn.Module):
    """A discrete cell built from a genotype's edges, node by node.

    Node ``i`` sums its edges ``per_node[i]`` (two in a DARTS cell; any number in a cell SNAS
    derives). A node without edges outputs zeros of the cell's output shape: SNAS's retraining
    builds such a node from ``none`` edges, whose sum is zero, and keeps it in the concatenation
    (SNAS-Series ``SNAS/model_edge_all.py``, ``Cell._compile`` / ``forward``), so the cell's width
    does not depend on it.
    """

    def __init__(
        self,
        edges: Sequence[tuple[str, int]],
        concat: Sequence[int],
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        per_node: Sequence[int] | None = None,
    ):
        super().__init__()
        self.preprocess0 = (
            FactorizedReduce(C_prev_prev, C) if reduction_prev else ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.reduction = reduction
        self.C = C
        self.inputs = [j for _, j in edges]
        self.per_node = list(per_node) if per_node is not None else [2] * (len(edges) // 2)
        self.concat = list(concat)
        self.multiplier = len(self.concat)
        self.ops = nn.ModuleList(make_op(name, C, 2 if reduction and j < 2 else 1) for name, j in edges)
        self.is_identity = [isinstance(op, nn.Identity) for op in self.ops]

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float, share: BatchShare | None = None
    ) -> torch.Tensor:
        """The cell's output; ``drop_prob`` and ``share`` as in ``drop_path``, in training mode."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        k = 0
        for n in self.per_node:
            node: torch.Tensor | None = None
            for op, j, ident in zip(self.ops[k : k + n], self.inputs[k : k + n], self.is_identity[k : k + n]):
                h = op(states[j])
                # Identity edges are never dropped: dropping them would remove the only gradient path.
                if self.training and drop_prob > 0.0 and not ident:
                    h = drop_path(h, drop_prob, share)
                node = h if node is None else node + h
            k += n
            states.append(node if node is not None else self._zeros(states[1]))
        return torch.cat([states[i] for i in self.concat], dim=1)

    def _zeros(self, s1: torch.Tensor) -> torch.Tensor:
        """An input-less node: zeros at the cell's output resolution (halved, rounding up, if reducing)."""
        B, _, H, W = s1.shape
        if self.reduction:
            H, W = (H + 1) // 2, (W + 1) // 2
        return s1.new_zeros(B, self.C, H, W)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on 8x8 feature maps (Szegedy et al. 2016; DARTS retraining)."""

    def __init__(self, C: int, num_classes: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)  # 8x8 -> 2x2
        self.features = nn.Sequential(
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # The DARTS head expects 8x8 maps (32x32 inputs); smaller inputs pool adaptively to 2x2.
        x = self.pool(x) if x.shape[-1] >= 8 else nn.functional.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class CifarCellNetwork(nn.Module):
    """The discrete network for a genotype: stem, ``layers`` cells, global pool, linear classifier.

    Args:
        genotype: the cells to stack.
        C: initial channels (36 for DARTS retraining).
        num_classes: classifier outputs.
        layers: number of cells (20 for DARTS retraining).
        auxiliary: add the auxiliary head after the second reduction cell.
        in_channels: image channels (3 for CIFAR, 1 for digits).
        stem_multiplier: the stem outputs ``stem_multiplier * C`` channels.

    Shapes: input ``[B, in_channels, H, W]``; output logits ``[B, num_classes]``, or
    ``(logits, aux_logits)`` in training mode with ``auxiliary=True``.
    """

    def __init__(
        self,
        genotype: Genotype,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool = False,
        in_channels: int = 3,
        stem_multiplier: int = 3,
    ):
        super().__init__()
        check_layers(layers, "layers")
        self.auxiliary = auxiliary
        self.drop_path_prob = 0.0
        # Data-parallel training sets this process's part of each global batch, so that drop-path
        # draws the masks one process would (``drop_path``).
        self.drop_path_share: BatchShare | None = None
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_aux = C_prev
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            kind = "reduce" if reduction else "normal"
            edges, concat, _ = genotype.cell(kind)
            cell = Cell(
                edges,
                concat,
                C_prev_prev,
                C_prev,
                C_curr,
                reduction,
                reduction_prev,
                node_counts(genotype, kind),
            )
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == reductions[1]:
                C_aux = C_prev
        self.aux_index = reductions[1]
        self.auxiliary_head = AuxiliaryHead(C_aux, num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        s0 = s1 = self.stem(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob, self.drop_path_share)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return (logits, aux) if aux is not None else logits


class CifarCellSpace:
    """The DARTS CIFAR cell space.

    Args:
        layers: cells in the search network (DARTS search: 8).
        channels: initial channels of the search network (DARTS search: 16).
        nodes: intermediate nodes per cell (DARTS: 4).
        stem_multiplier: stem width as a multiple of ``channels`` (DARTS: 3).
        ops: candidate operations; ``none`` may be among them (never chosen by a derivation).
    """

    name = "cifar_cell"

    def __init__(
        self,
        layers: int = 8,  # DARTS search (Liu et al. 2019, Sec. 3.1): 8 cells, reductions at 1/3 and 2/3
        channels: int = 16,  # DARTS search: 16 initial channels
        nodes: int = 4,  # DARTS: 4 intermediate nodes, the cell output concatenates them
        stem_multiplier: int = 3,  # DARTS: the stem has 3 * channels channels
        ops: Sequence[str] = DARTS_OPS,  # DARTS: 7 operations + zero, in the reference code's order
    ):
        check_layers(layers)
        if channels < 2 or channels % 2:
            raise UserError(
                f"space.channels={channels}: must be an even number >= 2 (reduction cells halve it)"
            )
        if nodes < 1:
            raise UserError(f"space.nodes={nodes}: must be >= 1")
        if stem_multiplier < 1:
            raise UserError(f"space.stem_multiplier={stem_multiplier}: must be >= 1")
        ops = list(ops)
        for name in ops:
            check_op(name, "space.ops")
        if len(set(ops)) != len(ops):
            raise UserError(f"space.ops: duplicate operation in {ops}")
        if not [o for o in ops if o != "none"]:
            raise UserError("space.ops: needs at least one operation other than 'none'")
        self.layers = layers
        self.channels = channels
        self.nodes = nodes
        self.stem_multiplier = stem_multiplier
        self.ops = ops
        # Architectures never use `none`: the derivation drops it (Liu et al. 2019, Sec. 2.4).
        self.choosable_ops = [o for o in ops if o != "none"]

    # -- the categorical-decision view (black-box strategies) -------------------------------
    def decisions(self) -> list[int]:
        """Per node of the normal then the reduction cell: input 1, input 2, op 1, op 2."""
        n_ops = len(self.choosable_ops)
        per_cell: list[int] = []
        for i in range(self.nodes):
            per_cell += [i + 2, i + 2, n_ops, n_ops]
        return per_cell + per_cell

    def decision_groups(self) -> list[int]:
        return [4] * (2 * self.nodes)

    def decode(self, choices: Sequence[int]) -> Genotype:
        sizes = self.decisions()
        if len(choices) != len(sizes) or any(not 0 <= c < n for c, n in zip(choices, sizes)):
            raise GenotypeError(f"choices {list(choices)} do not fit decisions {sizes}")
        cells = []
        for cell in range(2):
            edges = []
            for i in range(self.nodes):
                base = 4 * (cell * self.nodes + i)
                in1, in2, op1, op2 = choices[base : base + 4]
                edges += [(self.choosable_ops[op1], in1), (self.choosable_ops[op2], in2)]
            cells.append(tuple(edges))
        concat = tuple(range(2, 2 + self.nodes))
        return Genotype(
            normal=cells[0], normal_concat=concat, reduce=cells[1], reduce_concat=concat, space=self.name
        )

    def encode(self, genotype: Genotype) -> list[int]:
        self.validate(genotype)
        out: list[int] = []
        for kind in ("normal", "reduce"):
            edges, _, _ = genotype.cell(kind)
            if node_counts(genotype, kind) != [2] * self.nodes:
                raise GenotypeError(
                    f"genotype.{kind}_nodes: {node_counts(genotype, kind)}: the decisions of this space "
                    "take two inputs per node"
                )
            for i in range(self.nodes):
                (o1, j1), (o2, j2) = edges[2 * i], edges[2 * i + 1]
                out += [j1, j2, self.choosable_ops.index(o1), self.choosable_ops.index(o2)]
        return out

    def validate(self, genotype: Genotype, sized: bool = True) -> None:
        """Raise ``GenotypeError`` naming the first edge or key that does not fit this space.

        A node may have any number of edges (``normal_nodes`` / ``reduce_nodes``), none included;
        without them a cell has two per node.

        Args:
            genotype: the genotype to check.
            sized: also require ``space.nodes`` nodes per cell. ``False`` checks only the cell
                family's rules, each cell with its own node count (a cell retrained as given).
        """
        check_space(genotype, self.name)
        for cell in ("normal", "reduce"):
            edges, concat, own = genotype.cell(cell)
            if own:
                counts = list(own)
                if sized and len(counts) != self.nodes:
                    raise GenotypeError(
                        f"genotype.{cell}_nodes: {len(counts)} nodes, space.nodes={self.nodes}"
                    )
                if not counts:
                    raise GenotypeError(f"genotype.{cell}_nodes: a cell needs at least one node")
            else:
                nodes = self.nodes if sized else max(1, len(edges) // 2)
                if len(edges) != 2 * nodes:
                    raise GenotypeError(
                        f"genotype.{cell}: expected {2 * nodes} edges (2 per node, {nodes} nodes), got {len(edges)}"
                    )
                counts = [2] * nodes
            targets = [2 + i for i, n in enumerate(counts) for _ in range(n)]
            for k, ((op, j), node) in enumerate(zip(edges, targets, strict=True)):
                check_op(op, f"genotype.{cell}[{k}]")
                if op == "none":
                    raise GenotypeError(
                        f"genotype.{cell}[{k}]: 'none' cannot be an edge of a derived cell (leave the edge out)"
                    )
                if op not in self.choosable_ops:
                    raise GenotypeError(
                        f"genotype.{cell}[{k}]: operation {op!r} is not in space.ops {self.choosable_ops}"
                    )
                if j >= node:
                    raise GenotypeError(
                        f"genotype.{cell}[{k}]: node {node} cannot take input {j} (must be < {node})"
                    )
            nodes = len(counts)
            bad = [c for c in concat if not 2 <= c < 2 + nodes]
            if bad or not concat:
                raise GenotypeError(
                    f"genotype.{cell}_concat: {list(concat)} must list nodes in 2..{nodes + 1}"
                )

    def describe(self, genotype: Genotype) -> str:
        def cell(kind: str) -> str:
            edges, _, _ = genotype.cell(kind)
            groups = edges_by_node(edges, node_counts(genotype, kind))
            return " | ".join(" ".join(f"{op}~{j}" for op, j in g) or "-" for g in groups)

        return f"normal: {cell('normal')} ; reduce: {cell('reduce')}"

    def build_network(
        self,
        genotype: Genotype,
        num_classes: int,
        in_channels: int,
        channels: int | None = None,
        layers: int | None = None,
        auxiliary: bool = False,
    ) -> CifarCellNetwork:
        """The discrete network; ``channels``/``layers`` default to the search size.

        The cells take their node count from ``genotype``, whatever ``space.nodes`` says.
        """
        self.validate(genotype, sized=False)
        return CifarCellNetwork(
            genotype,
            C=channels or self.channels,
            num_classes=num_classes,
            layers=layers or self.layers,
            auxiliary=auxiliary,
            in_channels=in_channels,
            stem_multiplier=self.stem_multiplier,
        )

    # -- one-shot search ------------------------------------------------------------------------
    def topology(self) -> Topology:
        """Both cell types share ``sum(2 + i for i < nodes)`` edges, node by node, over ``space.ops``."""
        edges = tuple((i + 2, j) for i in range(self.nodes) for j in range(2 + i))
        return Topology(cell_types=("normal", "reduce"), edges=edges, ops=tuple(self.ops))

    def build_supernet(
        self,
        num_classes: int,
        in_channels: int,
        make_edge: EdgeFactory,
        edge_ops: dict[str, list[list[str]]] | None = None,
        layers: int | None = None,
    ) -> CifarCellSupernet:
        """The DARTS search network at the space's size, its edges built by ``make_edge``.

        ``layers`` overrides ``space.layers`` (methods that deepen the supernet by stages).
        """
        layers = layers or self.layers
        check_layers(layers, "layers")
        topo = self.topology()
        if edge_ops is None:
            edge_ops = topo.full_edge_ops()
        return CifarCellSupernet(
            C=self.channels,
            num_classes=num_classes,
            layers=layers,
            nodes=self.nodes,
            edge_ops=edge_ops,
            make_edge=make_edge,
            reductions=reduction_layers(layers),
            stem_multiplier=self.stem_multiplier,
            in_channels=in_channels,
        )

    def derive(
        self,
        weights: dict[str, torch.Tensor],
        edge_ops: dict[str, list[list[str]]] | None = None,
        rule: str = "darts",
    ) -> Genotype:
        """The discrete cell by ``rule``.

        ``darts`` (Liu et al. 2019, Sec. 2.4): for each intermediate node keep the 2 incoming
        edges whose strongest non-``none`` op is strongest, each with that op; exact ties keep the
        lower input first.

        ``every_edge`` (SNAS, Xie et al. 2019; SNAS-Series ``SNAS/model_search.py``,
        ``genotype_edge_all``): every edge takes its strongest op, ``none`` included, and an edge
        whose strongest op is ``none`` is left out, so a node keeps any number of inputs (none at
        all, too); ``normal_nodes`` / ``reduce_nodes`` record how many. A node's edges are listed
        strongest first, as the reference lists them (exact ties: the lower input first).
        """
        if rule not in DERIVATIONS:
            raise UserError(f"search.derivation={rule!r}: must be one of {', '.join(DERIVATIONS)}")
        topo = self.topology()

        def parse(
            W: torch.Tensor, ops: list[list[str]]
        ) -> tuple[tuple[tuple[str, int], ...], tuple[int, ...]]:
            W = W.detach().float().cpu().clone()
            if rule == "darts":
                for e, names in enumerate(ops):
                    for k, name in enumerate(names):
                        if name == "none":
                            W[e, k] = -1.0  # never pick `none`
            edges: list[tuple[str, int]] = []
            counts: list[int] = []
            for node in topo.node_slices():
                block = W[node]
                strength = block.max(dim=1).values
                n_in = block.shape[0]
                # A stable sort keeps the lower input first on exact ties.
                order = sorted(range(n_in), key=lambda j: -float(strength[j]))
                picked = [(ops[node.start + j][int(block[j].argmax())], j) for j in order]
                kept = picked[:2] if rule == "darts" else [(op, j) for op, j in picked if op != "none"]
                edges += kept
                counts.append(len(kept))
            return tuple(edges), (tuple(counts) if rule == "every_edge" else ())

        if edge_ops is None:
            edge_ops = topo.full_edge_ops()
        concat = tuple(range(2, 2 + self.nodes))
        normal, normal_nodes = parse(weights["normal"], edge_ops["normal"])
        reduce, reduce_nodes = parse(weights["reduce"], edge_ops["reduce"])
        return Genotype(
            normal,
            concat,
            reduce,
            concat,
            space=self.name,
            normal_nodes=normal_nodes,
            reduce_nodes=reduce_nodes,
        )

    def genotype_weights(
        self, genotype: Genotype, edge_ops: dict[str, list[list[str]]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Per cell type ``[n_edges, n_ops]``: a 1 at (edge, op) for each of the genotype's edges.

        Node ``i``'s genotype edges ``(op, j)`` sit on the supernet edge from state ``j`` to
        node ``i``; the other edges stay all 0. A node that takes the same input twice gets both
        ops on that edge (the same op twice counts 2).
        """
        self.validate(genotype)
        topo = self.topology()
        if edge_ops is None:
            edge_ops = topo.full_edge_ops()
        starts = [sl.start for sl in topo.node_slices()]
        out: dict[str, torch.Tensor] = {}
        for kind in ("normal", "reduce"):
            edges, _, _ = genotype.cell(kind)
            nodes = [i for i, n in enumerate(node_counts(genotype, kind)) for _ in range(n)]
            ops = edge_ops[kind]
            W = torch.zeros(len(topo.edges), len(ops[0]))
            for k, (op, j) in enumerate(edges):
                e = starts[nodes[k]] + j
                if op not in ops[e]:
                    raise GenotypeError(
                        f"genotype.{kind}[{k}]: {op!r} is not a candidate of edge {e} ({ops[e]})"
                    )
                W[e, ops[e].index(op)] += 1.0
            out[kind] = W
        return out
