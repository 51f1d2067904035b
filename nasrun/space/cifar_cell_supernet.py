"""The DARTS supernet over the CIFAR cell space: every edge a softmax-weighted mix of all ops.

Same mathematics as the reference implementation (Liu et al. 2019), computed with less work:
- the ``none`` op contributes zeros and its weight's gradient is zero, so it is never computed;
- ops that begin with a ReLU on the edge's input share one ReLU instead of one each.
Pooling ops are followed by a non-affine BatchNorm, as in the reference search model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasrun.space.cifar_cell import reduction_layers
from nasrun.space.genotype import Genotype
from nasrun.space.ops import FactorizedReduce, ReLUConvBN, make_op


def _strip_leading_relu(op: nn.Module) -> tuple[nn.Module, bool]:
    """Return ``op`` without the ReLU it starts with, and whether it had one."""
    if isinstance(op, FactorizedReduce):
        op.relu = nn.Identity()  # type: ignore[assignment]
        return op, True
    if isinstance(op, nn.Sequential) and len(op) > 0:
        first = op[0]
        if isinstance(first, nn.ReLU):
            return nn.Sequential(*list(op)[1:]), True
        inner, had = _strip_leading_relu(first)
        if had:
            return nn.Sequential(inner, *list(op)[1:]), True
    return op, False


class MixedOp(nn.Module):
    """One edge: ``sum_k w_k * op_k(x)`` over the non-``none`` ops.

    Args:
        C: channels.
        stride: 2 for edges from the cell inputs of a reduction cell, else 1.
        ops: candidate op names (``none`` allowed, skipped in compute).
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str]):
        super().__init__()
        self.index: list[int] = []  # position of each computed op in the weight vector
        self.pre_relu: list[bool] = []
        self.ops = nn.ModuleList()
        for k, name in enumerate(ops):
            if name == "none":
                continue
            op = make_op(name, C, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            op, had_relu = _strip_leading_relu(op)
            self.ops.append(op)
            self.index.append(k)
            self.pre_relu.append(had_relu)
        self.any_relu = any(self.pre_relu)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, H, W]``, ``weights`` ``[n_ops]`` -> ``[B, C, H/stride, W/stride]``."""
        xr = F.relu(x) if self.any_relu else x
        out: torch.Tensor | None = None
        for op, k, relu in zip(self.ops, self.index, self.pre_relu):
            y = weights[k] * op(xr if relu else x)
            out = y if out is None else out + y
        assert out is not None
        return out


class SearchCell(nn.Module):
    """A supernet cell: node ``i`` sums one ``MixedOp`` per earlier state."""

    def __init__(
        self,
        nodes: int,
        C_prev_prev: int,
        C_prev: int,
        C: int,
        reduction: bool,
        reduction_prev: bool,
        ops: Sequence[str],
    ):
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        self.preprocess0 = (
            FactorizedReduce(C_prev_prev, C, affine=False)
            if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        )
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and j < 2 else 1, ops) for i in range(nodes) for j in range(2 + i)
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``weights`` ``[n_edges, n_ops]`` (softmaxed); returns ``[B, nodes * C, H', W']``."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(self.nodes):
            s = None
            for h in states:
                y = self.edges[e](h, weights[e])
                s = y if s is None else s + y
                e += 1
            states.append(s)  # type: ignore[arg-type]
        return torch.cat(states[2:], dim=1)


class CifarCellSupernet(nn.Module):
    """The DARTS search network with architecture parameters ``alphas_normal``/``alphas_reduce``.

    Shapes: input ``[B, in_channels, H, W]`` -> logits ``[B, num_classes]``; each alpha
    ``[n_edges, n_ops]`` with ``n_edges = sum(2 + i for i < nodes)`` (14 for 4 nodes).
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        nodes: int,
        ops: Sequence[str],
        stem_multiplier: int = 3,
        in_channels: int = 3,
        alpha_init_std: float = 1e-3,
    ):
        super().__init__()
        self.ops = list(ops)
        self.nodes = nodes
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr)
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reductions
            if reduction:
                C_curr *= 2
            self.cells.append(
                SearchCell(nodes, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, self.ops)
            )
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        n_edges = sum(2 + i for i in range(nodes))
        # DARTS initialises alphas at 1e-3 * N(0, 1) (reference code; the paper says zero).
        self.alphas_normal = nn.Parameter(alpha_init_std * torch.randn(n_edges, len(self.ops)))
        self.alphas_reduce = nn.Parameter(alpha_init_std * torch.randn(n_edges, len(self.ops)))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("alphas_")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal = F.softmax(self.alphas_normal, dim=-1)
        w_reduce = F.softmax(self.alphas_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def arch_weights(self) -> dict[str, list[list[float]]]:
        """The softmaxed architecture weights, for history records."""
        return {
            "normal": F.softmax(self.alphas_normal.detach().float(), dim=-1).cpu().tolist(),
            "reduce": F.softmax(self.alphas_reduce.detach().float(), dim=-1).cpu().tolist(),
        }

    def genotype(self) -> Genotype:
        """Derive the discrete cell (Liu et al. 2019, Sec. 2.4).

        For each intermediate node keep the 2 incoming edges whose strongest non-``none`` op has the
        largest softmax weight, each with that op.
        """
        none = self.ops.index("none") if "none" in self.ops else -1

        def parse(alphas: torch.Tensor) -> tuple[tuple[str, int], ...]:
            W = F.softmax(alphas.detach().float(), dim=-1).cpu()
            if none >= 0:
                W[:, none] = -1.0  # never pick `none`
            edges: list[tuple[str, int]] = []
            start = 0
            for i in range(self.nodes):
                n_in = 2 + i
                block = W[start : start + n_in]
                strength = block.max(dim=1).values
                # Stable sort keeps the lower input first on exact ties, as the reference's sorted().
                top = sorted(range(n_in), key=lambda j: -float(strength[j]))[:2]
                edges += [(self.ops[int(block[j].argmax())], j) for j in top]
                start += n_in
            return tuple(edges)

        concat = tuple(range(2, 2 + self.nodes))
        return Genotype(
            parse(self.alphas_normal), concat, parse(self.alphas_reduce), concat, space="cifar_cell"
        )
