"""An edge that runs only the ops its weights select: the edge of the sampling one-shot methods.

GDAS gives each edge a one-hot weight vector (a Gumbel-max sample, straight-through), ENAS and
RSPS the one-hot rows of a sampled cell (``SampledSpace.genotype_weights``; an edge the cell does
not use is all zero). ``SampledEdge`` computes ``sum_k w_k * op_k(x)`` over the ops whose weight is
not zero, so such a step costs one op per edge instead of all of them. With dense weights (a
softmax) it computes every op and equals ``nasrun.search.oneshot.edges.DenseEdge``.

GDAS's reference code has two forms of the edge, both running only the sampled op ``s``:
``w_s * op_s(x)`` (its DARTS-space search cell, and NAS-Bench-201's ``forward_gdas_v1``), and
NAS-Bench-201's ``forward_gdas``, which also adds every other op's weight ``w_k`` to the output.
Those weights are 0 in value (``hard - soft.detach() + soft``), so the output is the same; in the
backward pass each gets the sum of the output's gradient, so every op's weight, not only the
sampled one's, passes a straight-through gradient to the architecture parameters.
``unsampled_weights`` picks the second form.

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
        unsampled_weights: when the weights carry a gradient, also add the weight of each op not
            run (zero in value) to the output, as AutoDL's NAS-Bench-201 GDAS forward does
            (D-X-Y/AutoDL-Projects xautodl/models/cell_searchs/search_cells.py:72-86).
    """

    def __init__(
        self,
        C: int,
        stride: int,
        ops: Sequence[str],
        unsampled_weights: bool = False,  # GDAS, DARTS space: the sampled op's weight only (search_cells.py:180)
    ):
        super().__init__()
        self.names = list(ops)
        self.stride = stride
        self.unsampled_weights = unsampled_weights
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
        selected = torch.nonzero(values).flatten().tolist()
        for k in selected:
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
            out = x.new_zeros(B, C, H // self.stride, W // self.stride)
        if self.unsampled_weights and weights.requires_grad:
            rest = [k for k in range(len(self.names)) if k not in selected]
            if rest:  # zero in value: only the gradient changes
                out = out + weights[rest].sum()
        return out
