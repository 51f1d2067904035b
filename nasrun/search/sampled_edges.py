"""An edge that runs only the ops its weights select: the edge of the sampling one-shot methods.

GDAS gives each edge a one-hot weight vector (a Gumbel-max sample, straight-through), ENAS and
RSPS the one-hot rows of a sampled cell (``SampledSpace.genotype_weights``; an edge the cell does
not use is all zero). ``SampledEdge`` computes ``sum_k w_k * op_k(x)`` over the ops whose weight is
not zero, so such a step costs one op per edge instead of all of them. With dense weights (a
softmax) it computes every op and equals ``nasrun.search.edges.DenseEdge``.

The ops are those of the DARTS search model: built with non-affine BatchNorm, pooling followed
by a non-affine BatchNorm.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nasrun.space.ops import make_op


class SampledEdge(nn.Module):
    """``sum_k w_k * op_k(x)`` over the ops with ``w_k != 0`` only.

    Reading which weights are zero costs one device-to-host copy of the ``[n_ops]`` weights per
    call (a synchronisation on a GPU).

    Args:
        C: channels in and out.
        stride: 2 for edges from the cell inputs of a reduction cell, else 1.
        ops: candidate op names (``none`` allowed: it contributes zeros and is never run).
    """

    def __init__(self, C: int, stride: int, ops: Sequence[str]):
        super().__init__()
        self.names = list(ops)
        self.stride = stride
        self.C = C
        self.ops = nn.ModuleList()
        for name in self.names:
            op = make_op(name, C, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``x`` ``[B, C, H, W]``, ``weights`` ``[n_ops]`` -> ``[B, C, H/stride, W/stride]``."""
        values = weights.detach().float().cpu()
        out: torch.Tensor | None = None
        for k in torch.nonzero(values).flatten().tolist():
            if self.names[k] == "none":
                continue
            h = self.ops[k](x)
            # A fixed weight of exactly 1 (a sampled cell) needs no multiply; a weight that carries
            # a gradient (straight-through) always gets one.
            if weights.requires_grad or float(values[k]) != 1.0:
                h = weights[k] * h
            out = h if out is None else out + h
        if out is None:  # nothing selected, or only `none`
            B, C, H, W = x.shape
            return x.new_zeros(B, C, H // self.stride, W // self.stride)
        return out
