"""The fused path (all edges that read one state, computed together) equals edge-by-edge compute.

Checked on whole supernets (normal and reduction cells, so stride 1 and 2 edges, and the stride-2
skip that stays edge by edge): the same logits, the same gradients for every weight and every
architecture parameter, and the same BatchNorm running statistics, in training and in evaluation
mode; for dense edges, partial-channel edges, edges whose candidates were pruned differently
(P-DARTS) and skip-connect dropout off.
"""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch

from nasrun.search.oneshot.edges import DenseEdge, PartialChannelEdge
from nasrun.search.oneshot.network import OneShotNetwork
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.cifar_cell_supernet import SearchCell
from nasrun.space.nb201 import NB201Space
from nasrun.space.nb201_supernet import NB201SearchCell


def _set_fused(net: torch.nn.Module, fused: bool) -> int:
    cells = [m for m in net.modules() if isinstance(m, SearchCell | NB201SearchCell)]
    for cell in cells:
        cell.fused = fused
    return len(cells)


def _pruned_ops(space: CifarCellSpace) -> dict[str, list[list[str]]]:
    """Each edge keeps a different subset of the ops (as after a P-DARTS stage)."""
    topo = space.topology()
    ops = list(topo.ops)
    return {t: [[ops[0], *ops[1 + (e % 3) :: 2]] for e in range(len(topo.edges))] for t in topo.cell_types}


CASES = {
    "dense": dict(make_edge=DenseEdge),
    "partial_channel": dict(make_edge=partial(PartialChannelEdge, k=2), edge_normalisation=True),
    "pruned_per_edge": dict(make_edge=DenseEdge, pruned=True),
    "nb201": dict(make_edge=DenseEdge, nb201=True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_fused_supernet_equals_edge_by_edge(case: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    kw = dict(CASES[case])
    space = (
        NB201Space(channels=4, cells=1)
        if kw.pop("nb201", False)
        else CifarCellSpace(layers=3, channels=4, nodes=3)
    )
    edge_ops = _pruned_ops(space) if kw.pop("pruned", False) else None  # type: ignore[arg-type]
    plain = OneShotNetwork(space, 10, 3, edge_ops=edge_ops, **kw).double()  # type: ignore[arg-type]
    with torch.no_grad():  # distinct weights per op and edge, so that a mix-up shows
        for p in plain.arch_parameters():
            p.normal_(0, 1)
    fused = copy.deepcopy(plain)
    assert _set_fused(plain, False) == 3 and _set_fused(fused, True) == 3  # 3 cells either way
    x = torch.randn(6, 3, 12, 12, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))
    if channels_last:
        plain, fused = (n.to(memory_format=torch.channels_last) for n in (plain, fused))
        x = x.contiguous(memory_format=torch.channels_last)
    for net in (plain, fused):
        for _ in range(2):  # two steps, so running statistics build up
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
    assert torch.allclose(fused(x), plain(x), atol=1e-10)
    for (name, a), b in zip(plain.named_parameters(), fused.parameters(), strict=True):
        assert a.grad is not None and b.grad is not None, name
        assert torch.allclose(a.grad, b.grad, atol=1e-10), name
    for (name, a), b in zip(plain.named_buffers(), fused.buffers(), strict=True):
        assert torch.equal(a, b) if a.dtype == torch.int64 else torch.allclose(a, b, atol=1e-12), name
    plain.eval(), fused.eval()
    assert torch.allclose(fused(x), plain(x), atol=1e-10)  # each edge's own running statistics


def test_the_fused_path_takes_fewer_convolution_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """One stacked call per op and state instead of one per edge (nn.Conv2d calls F.conv2d too)."""
    net = OneShotNetwork(CifarCellSpace(layers=3, channels=4, nodes=4), 10, 3, make_edge=DenseEdge)
    real, calls = torch.nn.functional.conv2d, [0]

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls[0] += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.nn.functional, "conv2d", counting)
    x, counts = torch.randn(2, 3, 8, 8), {}
    for fused in (False, True):
        _set_fused(net, fused)
        calls[0] = 0
        net(x)
        counts[fused] = calls[0]
    # Per cell, 14 edges read 5 states: 2 sep convs x 4 + 2 dil convs x 2 = 12 convolutions per
    # edge; a stacked call serves the 2.8 edges of a state on average.
    assert counts[False] > 2.4 * counts[True], counts


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_fan_out_of_nb201_ops_equals_each_edge(train: bool) -> None:
    """NAS-Bench-201's ops (zero, skip, 1x1 and 3x3 ReLU-conv-BN, average pooling) on three edges."""
    torch.manual_seed(0)
    ops = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"]
    plain = torch.nn.ModuleList(DenseEdge(4, 1, ops) for _ in range(3)).double().train(train)
    fused = copy.deepcopy(plain)
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, len(ops), dtype=torch.float64).softmax(-1).requires_grad_()
    ys = [e(x, w) for e, w in zip(plain, weights, strict=True)]
    g = torch.autograd.grad(
        sum((y * (i + 1)).sum() for i, y in enumerate(ys)), [x, weights, *plain.parameters()]
    )
    zs = DenseEdge.fan_out(list(fused), x, weights)
    h = torch.autograd.grad(
        sum((z * (i + 1)).sum() for i, z in enumerate(zs)), [x, weights, *fused.parameters()]
    )
    for y, z in zip(ys, zs, strict=True):
        assert torch.allclose(y, z, atol=1e-12)
    assert len(g) == 2 + 6  # the input, the weights, and each edge's two convolutions
    for a, b in zip(g, h, strict=True):
        assert torch.allclose(a, b, atol=1e-12)
    for a, b in zip(plain.buffers(), fused.buffers(), strict=True):
        assert torch.allclose(a.double(), b.double(), atol=1e-12)


def test_drop_path_on_edges_fused_and_edge_by_edge() -> None:
    """Drop-path zeroes whole samples of an edge's mixed output and scales the rest by 1 / (1 - p),
    in training only; the fused path draws the same masks as edge-by-edge compute."""
    torch.manual_seed(0)
    ops = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    edges = [DenseEdge(4, 1, ops).double() for _ in range(3)]
    x = torch.randn(16, 4, 6, 6, dtype=torch.float64)
    w = torch.softmax(torch.randn(3, len(ops), dtype=torch.float64), dim=-1)
    for e in edges:
        e.eval()  # BatchNorm with running statistics: the outputs depend on the drop-path only
    clean = DenseEdge.fan_out(edges, x, w)
    for e in edges:
        e.drop_path = 0.5
    assert all(torch.equal(a, b) for a, b in zip(clean, DenseEdge.fan_out(edges, x, w)))  # not in eval
    for e in edges:
        e.training = True  # the edge itself only: its BatchNorms stay in eval mode
    torch.manual_seed(1)
    fused = DenseEdge.fan_out(edges, x, w)
    torch.manual_seed(1)
    single = [e(x, wi) for e, wi in zip(edges, w)]
    for f, s, c in zip(fused, single, clean):
        assert torch.allclose(f, s)
        kept = f.flatten(1).abs().sum(1) > 0
        assert 0 < int(kept.sum()) < 16  # some samples dropped, some kept
        assert torch.allclose(f[kept], 2 * c[kept])


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "edge_by_edge"])
def test_a_cell_is_built_fused_or_edge_by_edge(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The constructor's ``fused`` decides the cell's path; a cell built with the default is fused."""
    real, calls = DenseEdge.fan_out, [0]

    def counting(*args: object) -> list[torch.Tensor]:
        calls[0] += 1
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(DenseEdge, "fan_out", staticmethod(counting))
    ops = ["none", "skip_connect", "dil_conv_3x3"]
    cell = SearchCell(2, 4, 4, 4, False, False, [ops] * 5, DenseEdge, fused=fused)
    default = SearchCell(2, 4, 4, 4, False, False, [ops] * 5, DenseEdge)
    assert (cell.fused, default.fused) == (fused, True)
    x = torch.randn(2, 4, 6, 6)
    w = torch.softmax(torch.randn(5, len(ops)), dim=-1)
    cell(x, x, w)
    assert (calls[0] > 0) == fused, calls
