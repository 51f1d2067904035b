"""The supernet skeleton of the NAS-Bench-201 space: the benchmark's macro network without its edges.

The macro structure is the benchmark's (Dong & Yang, ICLR 2020): a 3x3 conv stem with ``C``
channels, three stages of ``N`` cells with ``C``, ``2C`` and ``4C`` channels joined by residual
reduction blocks, then BN-ReLU, global average pooling and a linear classifier. Every cell shares
one set of architecture weights (the space has one cell type, ``normal``); a one-shot method
supplies the edges (``make_edge``) and, on every forward pass, those weights. Nothing here knows a
method's name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nasrun.space.base import EdgeFactory, states_by_state
from nasrun.space.ops import ReLUConvBN


class ResidualReduction(nn.Module):
    """The benchmark's reduction block: a stride-2 basic residual block from ``C_in`` to ``C_out``.

    Main path ReLU-Conv3x3(stride 2)-BN, ReLU-Conv3x3-BN; shortcut 2x2 average pooling then a 1x1
    conv, as in NAS-Bench-201's ``ResNetBasicblock``.

    Shapes: ``[B, C_in, H, W] -> [B, C_out, H/2, W/2]``.
    """

    def __init__(self, C_in: int, C_out: int):
        super().__init__()
        self.conv_a = ReLUConvBN(C_in, C_out, 3, 2, 1)
        self.conv_b = ReLUConvBN(C_out, C_out, 3, 1, 1)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, stride=2), nn.Conv2d(C_in, C_out, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class NB201SearchCell(nn.Module):
    """A supernet cell: node ``i`` sums one edge from every earlier node; the last node is the output.

    Args:
        C: channels of every node (edges keep them and the resolution).
        edges: per edge, ``(node, input)``, node by node (the space's topology).
        edge_ops: the candidate ops of each edge, in edge order.
        make_edge: builds one edge.
        fused: compute the edges that read one state together (their class's fused path, if
            any); false: edge by edge (the same mathematics; for comparisons). Kept as the
            attribute ``fused``, which may be changed later.
    """

    def __init__(
        self,
        C: int,
        edges: Sequence[tuple[int, int]],
        edge_ops: Sequence[Sequence[str]],
        make_edge: EdgeFactory,
        fused: bool = True,
    ):
        super().__init__()
        self.fused = fused
        self.inputs = [j for _, j in edges]
        self.targets = [i for i, _ in edges]
        self.edges = nn.ModuleList(make_edge(C, 1, ops) for ops in edge_ops)
        if len(self.edges) != len(edges):
            raise ValueError(f"{len(edges)} edges but {len(self.edges)} op lists")

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, edge_scales: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Run the cell.

        Args:
            x: ``[B, C, H, W]``, the cell input (node 0).
            weights: ``[n_edges, n_ops]``, each edge's op weights.
            edge_scales: ``[n_edges]`` factors on the edges' outputs (PC-DARTS's edge
                normalisation), or ``None``.

        Returns:
            ``[B, C, H, W]``: the last node.
        """
        if self.fused:
            return states_by_state([x], self.edges, self.inputs, self.targets, weights, edge_scales)[-1]
        states = [x]
        node: torch.Tensor | None = None
        for e, (target, source) in enumerate(zip(self.targets, self.inputs, strict=True)):
            if target > len(states):  # the edges of the next node begin
                assert node is not None
                states.append(node)
                node = None
            y = self.edges[e](states[source], weights[e])
            if edge_scales is not None:
                y = edge_scales[e] * y
            node = y if node is None else node + y
        assert node is not None
        return node


class NB201Supernet(nn.Module):
    """The NAS-Bench-201 search network's skeleton: stem, 3 stages of ``N`` search cells, classifier.

    Shapes: input ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``.

    Args:
        C: stem channels; the stages have ``C``, ``2C``, ``4C``.
        N: search cells per stage.
        num_classes: classifier outputs.
        in_channels: image channels.
        edges: the cell's edges, ``(node, input)`` each.
        edge_ops: per cell type (only ``normal``), the candidate ops of each edge.
        make_edge: builds one edge.
    """

    def __init__(
        self,
        C: int,
        N: int,
        num_classes: int,
        in_channels: int,
        edges: Sequence[tuple[int, int]],
        edge_ops: Mapping[str, Sequence[Sequence[str]]],
        make_edge: EdgeFactory,
    ):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))
        layers: list[nn.Module] = []
        for stage, width in enumerate((C, 2 * C, 4 * C)):
            if stage:
                layers.append(ResidualReduction(width // 2, width))
            layers.extend(NB201SearchCell(width, edges, edge_ops["normal"], make_edge) for _ in range(N))
        self.layers = nn.ModuleList(layers)
        self.head = nn.Sequential(
            nn.BatchNorm2d(4 * C), nn.ReLU(inplace=False), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.classifier = nn.Linear(4 * C, num_classes)

    def forward(
        self,
        x: torch.Tensor,
        weights: dict[str, torch.Tensor],
        edge_scales: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]``; ``weights["normal"]`` ``[n_edges, n_ops]`` -> ``[B, classes]``."""
        w = weights["normal"]
        scales = edge_scales["normal"] if edge_scales is not None else None
        h = self.stem(x)
        for layer in self.layers:
            h = layer(h, w, scales) if isinstance(layer, NB201SearchCell) else layer(h)
        return self.classifier(self.head(h))
