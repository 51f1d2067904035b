"""The supernet skeleton of the CIFAR cell space: the DARTS search network without its edges.

The space owns the macro structure (stem, cells with their reductions, the classifier); a one-shot
method supplies the edges (``make_edge``: how an edge combines its candidate ops) and, on every
forward pass, the architecture weights of each cell type. Nothing here knows a method's name.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch
from torch import nn

from nasrun.space.base import EdgeFactory, states_by_state
from nasrun.space.ops import FactorizedReduce, ReLUConvBN


class SearchCell(nn.Module):
    """A supernet cell: node ``i`` sums one edge per earlier state (``2 + i`` edges).

    Args:
        nodes: intermediate nodes.
        C_prev_prev, C_prev: channels of the two cell inputs.
        C: channels of every node.
        reduction: whether this cell halves the resolution (stride 2 on edges from its inputs).
        reduction_prev: whether the previous cell did (the first input is then reduced too).
        edge_ops: the candidate ops of each edge, in edge order.
        make_edge: builds one edge.
        fused: compute the edges that read one state together (their class's fused path, if
            any); false: edge by edge (the same mathematics; for comparisons). Kept as the
            attribute ``fused``, which may be changed later.
    """

    def __init__(
        self,
        nodes: int,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        edge_ops: Sequence[Sequence[str]],
        make_edge: EdgeFactory,
        fused: bool = True,
    ):
        super().__init__()
        self.fused = fused
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0 = (
            FactorizedReduce(C_prev_prev, C, affine=False)
            if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        inputs = [j for i in range(nodes) for j in range(2 + i)]
        self.edges = nn.ModuleList(
            make_edge(C, 2 if reduction and j < 2 else 1, ops)
            for j, ops in zip(inputs, edge_ops, strict=True)
        )
        self.inputs = inputs  # the state each edge reads
        self.targets = [2 + i for i in range(nodes) for _ in range(2 + i)]  # the state each edge feeds

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        edge_scales: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the cell.

        Args:
            s0, s1: the two cell inputs.
            weights: ``[n_edges, n_ops]``, each edge's normalised op weights.
            edge_scales: ``[n_edges]`` factors on the edges' outputs (PC-DARTS's edge
                normalisation), or ``None``.

        Returns:
            ``[B, nodes * C, H', W']``: the nodes' outputs concatenated.
        """
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        if self.fused:
            out = states_by_state(states, self.edges, self.inputs, self.targets, weights, edge_scales)
            return torch.cat(out[2:], dim=1)
        e = 0
        for _ in range(self.nodes):
            s = None
            for h in states:
                y = self.edges[e](h, weights[e])
                if edge_scales is not None:
                    y = edge_scales[e] * y
                s = y if s is None else s + y
                e += 1
            states.append(s)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)


class CifarCellSupernet(nn.Module):
    """The DARTS search network's skeleton: stem, ``layers`` search cells, classifier.

    Shapes: input ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``.

    Args:
        C: initial channels.
        num_classes: classifier outputs.
        layers: cells.
        nodes: intermediate nodes per cell.
        edge_ops: per cell type (``normal``, ``reduce``), the candidate ops of each edge.
        make_edge: builds one edge.
        reductions: indices of the reduction cells.
        stem_multiplier: the stem has ``stem_multiplier * C`` channels.
        in_channels: image channels.
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        nodes: int,
        edge_ops: Mapping[str, Sequence[Sequence[str]]],
        make_edge: EdgeFactory,
        reductions: Collection[int],
        stem_multiplier: int = 3,
        in_channels: int = 3,
    ):
        super().__init__()
        self.nodes = nodes
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            ops = edge_ops["reduce" if reduction else "normal"]
            self.cells.append(
                SearchCell(nodes, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, ops, make_edge)
            )
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(
        self,
        x: torch.Tensor,
        weights: dict[str, torch.Tensor],
        edge_scales: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]``; ``weights[cell_type]`` ``[n_edges, n_ops]`` -> ``[B, classes]``."""
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            scales = edge_scales[kind] if edge_scales is not None else None
            s0, s1 = s1, cell(s0, s1, weights[kind], scales)
        return self.classifier(self.global_pooling(s1).flatten(1))
