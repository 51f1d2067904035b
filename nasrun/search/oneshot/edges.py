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
from nasrun.space.cifar_cell import drop_path
from nasrun.space.depthwise import DepthwiseConv2d, depthwise_conv2d
from nasrun.space.ops import FactorizedReduce, make_op
from nasrun.train import sync_batchnorm


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
        self.names: list[str] = []  # the computed ops' names
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
            self.names.append(name)
        self.any_relu = any(self.pre_relu)
        self.stride = stride
        self.C = C
        # P-DARTS's dropout after identity skip-connects (a rate the search sets per epoch).
        self.skip_dropout = 0.0
        self.skip = ops.index("skip_connect") if stride == 1 and "skip_connect" in ops else -1
        # Drop-path on the edge's mixed output in training (a rate the search may set per epoch).
        self.drop_path = 0.0

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
        if self.drop_path > 0 and self.training:
            out = drop_path(out, self.drop_path)
        return out

    @staticmethod
    def fan_out(edges: Sequence[DenseEdge], x: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
        """The mixed outputs of several edges that read the same state ``x`` (see the fused path below).

        Args:
            edges: edges of the same cell with the same channels and stride; their candidate
                ops may differ (pruned per edge).
            x: ``[B, C, H, W]``, the state they read.
            weights: ``[len(edges), n_ops]``, each edge's normalised op weights.

        Returns:
            Per edge, ``[B, C, H/stride, W/stride]``: what ``edge(x, weights[i])`` returns.
        """
        k = len(edges)
        if k == 1 or any(not e.ops for e in edges):
            return [e(x, w) for e, w in zip(edges, weights, strict=True)]
        xr = F.relu(x) if any(e.any_relu for e in edges) else x
        members: dict[str, list[tuple[int, nn.Module, int]]] = {}  # op name -> (edge, module, weight index)
        for i, e in enumerate(edges):
            for op, j, name in zip(e.ops, e.index, e.names, strict=True):
                members.setdefault(name, []).append((i, op, j))
        stride = edges[0].stride
        repeated: dict[int, torch.Tensor] = {}  # m -> the ReLU'd input repeated m times, for the conv ops
        acc: torch.Tensor | None = None  # [B, k, C, H', W']
        for name, group in members.items():
            who = [i for i, _, _ in group]
            mods = [m for _, m, _ in group]
            w = weights[who, [j for _, _, j in group]]  # [m]
            m = len(group)
            if name.endswith("pool_3x3"):
                pooled = mods[0][0](x)  # type: ignore[index]
                h = _shared_bn(pooled, [op[1] for op in mods])  # type: ignore[index]
            elif name == "skip_connect" and stride == 1:
                h = x.unsqueeze(1)
                rate = edges[who[0]].skip_dropout
                if rate > 0 and edges[0].training:
                    h = F.dropout(h.expand(-1, m, -1, -1, -1), rate, True)  # a mask per edge
            elif name.startswith(("sep_conv", "dil_conv", "nor_conv")):
                if m not in repeated:
                    repeated[m] = _repeat(xr, m)
                out = _stacked_op(name, repeated[m], mods)
                h = out.view(out.shape[0], m, out.shape[1] // m, *out.shape[2:])
            elif name == "skip_connect" and all(isinstance(op, FactorizedReduce) for op in mods):
                h = _stacked_factorized_reduce(xr, mods)  # type: ignore[arg-type]
            else:  # another op (a stride-2 skip, say): edge by edge
                relu = edges[who[0]].pre_relu[edges[who[0]].names.index(name)]
                h = torch.stack([op(xr if relu else x) for op in mods], dim=1)
            w = w.view(1, m, 1, 1, 1)
            if m < k:  # the op is a candidate on some of the edges only
                contrib = w * h
                contrib = contrib.new_zeros(contrib.shape[0], k, *contrib.shape[2:]).index_add(
                    1, torch.tensor(who, device=x.device), contrib
                )
                acc = contrib if acc is None else acc + contrib
            else:  # one multiply-add for all the edges
                acc = w * h if acc is None else torch.addcmul(acc, w, h)
        assert acc is not None
        outs = list(acc.unbind(1))
        if edges[0].training:
            outs = [drop_path(o, e.drop_path) if e.drop_path > 0 else o for o, e in zip(outs, edges)]
        return outs


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

    @staticmethod
    def fan_out(
        edges: Sequence[PartialChannelEdge], x: torch.Tensor, weights: torch.Tensor
    ) -> list[torch.Tensor]:
        """The outputs of several edges that read ``x``: their channel slices mixed together."""
        k = edges[0].k
        if k == 1 or any(e.k != k for e in edges):
            return [e(x, w) for e, w in zip(edges, weights, strict=True)]
        part = edges[0].part
        mixed = DenseEdge.fan_out([e.mixed for e in edges], x[:, :part], weights)
        rest = edges[0].bypass(x[:, part:])  # parameter-free: the same on every edge
        return [channel_shuffle(torch.cat([m, rest], dim=1), k) for m in mixed]


# -- the fused path: every edge that reads one state, at once --------------------------------------
#
# The edges that leave one state of a cell all read the same tensor. ``DenseEdge.fan_out`` computes
# their mixed outputs together, with the same mathematics as calling each edge:
#
# - the ReLU that starts the convolution ops runs once per state, not once per edge;
# - pooling (and, stride 2, its strides) is the same function of the same input on every edge, and
#   a non-affine BatchNorm in training mode normalises with the batch's own statistics, so the
#   pooled-and-normalised output (and the running statistics it records) is computed once and the
#   statistics are copied to every edge's BatchNorm;
# - the identity skip is the input itself;
# - each convolution op runs as one stacked call over the edges that have it: the input repeated
#   once per edge, depthwise convolutions with every edge's filters (groups = edges x channels),
#   pointwise convolutions with groups = edges (each edge keeps its own weights), and one
#   non-affine BatchNorm over the stacked channels (per-channel statistics, so the same as one per
#   edge); the running statistics are written back to each edge's BatchNorm;
# - the weighted sum over the ops is one broadcast multiply-add per op for all the edges.
#
# The parameters stay in the edges' own modules (the stacked weights are concatenated views in the
# autograd graph), so checkpoints, derivation and every method see the plain modules.


def _shared_bn(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """The same non-affine BatchNorm of ``x`` ``[B, C, H, W]`` on several edges: ``[B, 1 or m, C, H, W]``.

    In training mode the output and the running statistics are the same on every edge: computed
    once, statistics copied. In evaluation mode each edge uses its own running statistics.
    """
    if not bns[0].training:
        return torch.stack([bn(x) for bn in bns], dim=1)
    out = bns[0](x).unsqueeze(1)
    if len(bns) > 1:
        with torch.no_grad():
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                first = getattr(bns[0], name)
                torch._foreach_copy_([getattr(bn, name) for bn in bns[1:]], [first] * (len(bns) - 1))
    return out


def _stacked_bn(x: torch.Tensor, bns: Sequence[nn.BatchNorm2d]) -> torch.Tensor:
    """One non-affine BatchNorm over the channels of ``len(bns)`` stacked edges; statistics written back.

    Data-parallel with synchronised BatchNorm, each edge's module normalises its own channels (its
    statistics are those of every process's batch).
    """
    bn0 = bns[0]
    if sync_batchnorm.synced(bn0):
        return torch.cat([bn(h) for bn, h in zip(bns, x.chunk(len(bns), 1), strict=True)], 1)
    means: list[torch.Tensor] = [b.running_mean for b in bns]  # type: ignore[misc]
    variances: list[torch.Tensor] = [b.running_var for b in bns]  # type: ignore[misc]
    mean, var = torch.cat(means), torch.cat(variances)
    if not bn0.training:
        return F.batch_norm(x, mean, var, None, None, False, 0.0, bn0.eps)
    out = F.batch_norm(x, mean, var, None, None, True, bn0.momentum or 0.0, bn0.eps)
    with torch.no_grad():  # one multi-tensor call each, not one small copy per edge
        k = len(bns)
        torch._foreach_copy_(means, list(mean.chunk(k)))
        torch._foreach_copy_(variances, list(var.chunk(k)))
        torch._foreach_add_([b.num_batches_tracked for b in bns], 1)  # type: ignore[misc]
    return out


def _stacked_dilconv(x: torch.Tensor, blocks: Sequence[Sequence[nn.Module]], k: int) -> torch.Tensor:
    """``k`` edges' (depthwise conv, pointwise conv, BN) blocks on ``x`` ``[B, k*C, H, W]`` (edge-major)."""
    dw0 = blocks[0][0]
    assert isinstance(dw0, DepthwiseConv2d)
    dw = torch.cat([b[0].weight for b in blocks])  # type: ignore[misc]  # [k*C, 1, kh, kw]
    pw = torch.cat([b[1].weight for b in blocks])  # type: ignore[misc]  # [k*C_out, C, 1, 1]
    h = depthwise_conv2d(
        x,
        dw,
        dw0.stride,  # type: ignore[arg-type]
        dw0.padding,  # type: ignore[arg-type]
        dw0.dilation,  # type: ignore[arg-type]
        rewritten_backward=dw0.rewritten_backward,
    )
    h = F.conv2d(h, pw, None, 1, 0, 1, groups=k)
    return _stacked_bn(h, [b[2] for b in blocks])  # type: ignore[misc]


def _stacked_op(name: str, xk: torch.Tensor, ops: Sequence[nn.Module]) -> torch.Tensor:
    """``k = len(ops)`` edges' op ``name`` on the ReLU'd input repeated k times (``_repeat``):
    ``[B, k*C, H', W']``, edge-major channels.

    The ops are the edges' modules with their leading ReLU stripped: a nor_conv is (conv, BN); a
    dil_conv is (depthwise, pointwise, BN); a sep_conv is that block followed by a whole DilConv
    (ReLU, depthwise, pointwise, BN).
    """
    k = len(ops)
    if name.startswith("nor_conv"):  # (conv, BN): NAS-Bench-201's plain convolutions
        conv0 = ops[0][0]  # type: ignore[index]
        assert isinstance(conv0, nn.Conv2d)
        weight = torch.cat([op[0].weight for op in ops])  # type: ignore[index]
        h = F.conv2d(xk, weight, None, conv0.stride, conv0.padding, conv0.dilation, groups=k)
        return _stacked_bn(h, [op[1] for op in ops])  # type: ignore[index]
    if name.startswith("dil_conv"):
        return _stacked_dilconv(xk, [list(op.children()) for op in ops], k)
    first = [list(op[0].children()) for op in ops]  # type: ignore[index]
    h = _stacked_dilconv(xk, first, k)
    second = [list(op[1].children())[1:] for op in ops]  # type: ignore[index]
    return _stacked_dilconv(F.relu(h), second, k)


def _stacked_factorized_reduce(xr: torch.Tensor, ops: Sequence[FactorizedReduce]) -> torch.Tensor:
    """``m`` edges' stride-2 skips (their ReLU done) on one input: ``[B, m, C, H/2, W/2]``."""
    m = len(ops)
    c1 = F.conv2d(xr, torch.cat([op.conv_1.weight for op in ops]), None, 2)
    c2 = F.conv2d(xr[:, :, 1:, 1:], torch.cat([op.conv_2.weight for op in ops]), None, 2)
    B, half, H, W = c1.shape
    h = torch.cat([c1.view(B, m, half // m, H, W), c2.view(B, m, half // m, H, W)], dim=2)
    out = _stacked_bn(h.reshape(B, 2 * half, H, W), [op.bn for op in ops])
    return out.view(B, m, 2 * half // m, H, W)


def _repeat(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` -> ``[B, k*C, H, W]`` (k copies, edge-major), in ``x``'s memory format, one copy."""
    if k == 1:
        return x
    B, C, H, W = x.shape
    if C > 1 and x.stride(1) == 1:  # channels innermost (NHWC, or a channel slice of it)
        nhwc = x.permute(0, 2, 3, 1).unsqueeze(3).expand(B, H, W, k, C)
        return nhwc.reshape(B, H, W, k * C).permute(0, 3, 1, 2)
    return x.repeat(1, k, 1, 1)
