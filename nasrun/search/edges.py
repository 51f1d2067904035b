"""How a supernet edge combines its candidate ops: the method's choice, built by the space's skeleton.

A space's supernet skeleton calls ``make_edge(C, stride, ops)`` once per edge and then
``edge(x, weights)`` with that edge's architecture weights (``[n_ops]``, already normalised). Both
edge kinds here compute the same weighted sum over the ops, with less work than one op call per
candidate would take:

- the ``none`` op contributes zeros and its weight's gradient is zero, so it is never computed;
- ops that begin with a ReLU on the edge's input share one ReLU instead of one each.

Pooling ops are followed by a non-affine BatchNorm, as in the DARTS reference search model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nasrun import UserError
from nasrun.space.ops import FactorizedReduce, make_op


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


class DenseEdge(nn.Module):
    """``sum_k w_k * op_k(x)`` over the non-``none`` ops (DARTS's mixed op).

    Args:
        C: channels in and out.
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
        self.stride = stride
        self.C = C
        # P-DARTS's dropout after identity skip-connects (a rate the search sets per epoch).
        self.skip_dropout = 0.0
        self.skip = ops.index("skip_connect") if stride == 1 and "skip_connect" in ops else -1

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, H, W]``, ``weights`` ``[n_ops]`` -> ``[B, C, H/stride, W/stride]``."""
        if not self.ops:  # every candidate is `none`
            B, C, H, W = x.shape
            return x.new_zeros(B, C, H // self.stride, W // self.stride)
        xr = F.relu(x) if self.any_relu else x
        out: torch.Tensor | None = None
        for op, k, relu in zip(self.ops, self.index, self.pre_relu):
            h = op(xr if relu else x)
            if k == self.skip and self.skip_dropout > 0:
                h = F.dropout(h, self.skip_dropout, self.training)
            y = weights[k] * h
            out = y if out is None else out + y
        assert out is not None
        return out


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` equal channel blocks: ``[a0 a1 | b0 b1] -> [a0 b0 a1 b1]`` for 2 groups."""
    B, C, H, W = x.shape
    return x.view(B, groups, C // groups, H, W).transpose(1, 2).reshape(B, C, H, W)


class PartialChannelEdge(nn.Module):
    """PC-DARTS's partial channel connection (Xu et al., ICLR 2020).

    The first ``C / k`` channels go through a ``DenseEdge`` of ``C / k`` channels; the other
    channels bypass the ops (max-pooled on a stride-2 edge, to match the resolution); the two
    parts are concatenated and channel-shuffled with ``k`` groups, so that the next edge's sampled
    slice holds other channels.

    Args:
        C: channels in and out.
        stride: 1 or 2.
        ops: candidate op names.
        k: the sampling ratio: 1/k of the channels pass the ops (PC-DARTS: K = 4).
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str], k: int = 4):
        super().__init__()
        if k < 1 or C % k:
            raise UserError(
                f"search.edge.k={k}: must divide the edges' channel counts (an edge has {C} channels)"
            )
        self.k = k
        self.part = C // k
        self.mixed = DenseEdge(self.part, stride, ops)
        self.bypass: nn.Module = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, H, W]``, ``weights`` ``[n_ops]`` -> ``[B, C, H/stride, W/stride]``."""
        if self.k == 1:
            return self.mixed(x, weights)
        through, rest = x[:, : self.part], x[:, self.part :]
        out = torch.cat([self.mixed(through, weights), self.bypass(rest)], dim=1)
        return channel_shuffle(out, self.k)
