"""The rewritten depthwise backward (nasrun.space.depthwise) gives PyTorch's own gradients.

Checked in float64 against ``conv2d``'s autograd over strides, dilations, kernel sizes, paddings,
odd and non-square sizes and both memory formats; and on a whole DARTS supernet (the second-order
architecture gradient, whose finite differences amplify any error most).
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nasrun.search.oneshot.edges import DenseEdge
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.network import OneShotNetwork
from nasrun.space import depthwise
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.cifar_cell_supernet import SearchCell
from nasrun.space.depthwise import DepthwiseConv2d, depthwise_conv2d, use_rewritten_backward
from nasrun.space.ops import DilConv
from nasrun.train.trainer import Trainer

SHAPES = [(7, 7), (8, 8), (9, 6)]


def _padding(padding: int | str, k: int, dilation: int) -> int:
    return dilation * (k - 1) // 2 if padding == "same" else int(padding)


CASES = [
    (hw, k, s, d, p, nhwc)
    for hw, k, s, d, p, nhwc in itertools.product(
        SHAPES, [3, 5], [1, 2], [2, 3], ["same", 0, 1], [False, True]
    )
    if min(hw) + 2 * _padding(p, k, d) > d * (k - 1)  # the dilated filter fits
]


@pytest.mark.parametrize(("hw", "k", "stride", "dilation", "padding", "nhwc"), CASES)
def test_gradients_equal_pytorchs(
    hw: tuple[int, int], k: int, stride: int, dilation: int, padding: int | str, nhwc: bool
) -> None:
    pad = _padding(padding, k, dilation)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, *hw, dtype=torch.float64, generator=gen)
    if nhwc:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    w = torch.randn(5, 1, k, k, dtype=torch.float64, generator=gen, requires_grad=True)
    want = F.conv2d(x, w, None, stride, pad, dilation, groups=5)
    g = torch.randn(want.shape, dtype=torch.float64, generator=gen)
    want_x, want_w = torch.autograd.grad(want, [x, w], g)
    assert depthwise._use_rewritten_backward(x, w, (pad, pad), (dilation, dilation))
    got = depthwise_conv2d(x, w, (stride, stride), (pad, pad), (dilation, dilation))
    got_x, got_w = torch.autograd.grad(got, [x, w], g)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_w, want_w, rtol=1e-12, atol=1e-12)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    assert got_x.is_contiguous(memory_format=fmt)


def test_only_the_requested_gradient_is_computed() -> None:
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64)  # frozen filter: only the input's gradient
    out = depthwise_conv2d(x, w, (1, 1), (2, 2), (2, 2))
    (gx,) = torch.autograd.grad(out.sum(), [x])
    torch.testing.assert_close(gx, torch.autograd.grad(F.conv2d(x, w, None, 1, 2, 2, 4).sum(), [x])[0])


def test_the_rewrite_is_used_only_where_it_was_measured_faster() -> None:
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    use = depthwise._use_rewritten_backward
    assert use(x, w, (2, 2), (2, 2))
    assert not use(x, w, (1, 1), (1, 1))  # undilated: PyTorch's kernel is fast
    assert not use(x.half(), w.half(), (2, 2), (2, 2))
    with torch.no_grad():
        assert not use(x, w, (2, 2), (2, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use(x, w, (2, 2), (2, 2))
    assert not use(x, w, (5, 5), (2, 2))  # padding beyond the dilated filter


def test_the_module_keeps_a_plain_conv2d_state_dict() -> None:
    op = DilConv(4, 4, 3, 1, 2, 2)
    conv = op[1]
    assert isinstance(conv, DepthwiseConv2d) and isinstance(conv, torch.nn.Conv2d)
    plain = torch.nn.Conv2d(4, 4, 3, 1, 2, dilation=2, groups=4, bias=False)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(conv(x), plain(x))


def _is_rewritten(out: torch.Tensor) -> bool:
    """Whether autograd will run the rewritten backward for ``out``."""
    return type(out.grad_fn).__name__.startswith("_DilatedDepthwise")


def test_the_backward_is_chosen_per_call_and_per_module() -> None:
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, requires_grad=True)
    assert _is_rewritten(depthwise_conv2d(x, w, (1, 1), (2, 2), (2, 2)))
    assert not _is_rewritten(depthwise_conv2d(x, w, (1, 1), (2, 2), (2, 2), rewritten_backward=False))
    a, b = DepthwiseConv2d(4, 3, 1, 2, 2), DepthwiseConv2d(4, 3, 1, 2, 2, rewritten_backward=False)
    assert (a.rewritten_backward, b.rewritten_backward) == (True, False)
    assert _is_rewritten(a(x)) and not _is_rewritten(b(x))  # one module's setting leaves the other's
    net = torch.nn.Sequential(DilConv(4, 4, 3, 1, 2, 2), torch.nn.ReLU(), DilConv(4, 4, 3, 1, 2, 2))
    assert use_rewritten_backward(net, False) == 2
    assert not any(_is_rewritten(op[1](x)) for op in (net[0], net[2]))
    assert use_rewritten_backward(net, True) == 2
    assert all(_is_rewritten(op[1](x)) for op in (net[0], net[2]))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "edge_by_edge"])
def test_a_network_setting_reaches_its_edges(fused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``use_rewritten_backward`` on a supernet decides the backward of its dilated convolutions, on
    the fused path (which reads the first edge's module) and edge by edge."""
    real, calls = depthwise._DilatedDepthwise.apply, [0]

    def counting(*args: object) -> torch.Tensor:
        calls[0] += 1
        return real(*args)  # type: ignore[no-any-return]

    monkeypatch.setattr(depthwise._DilatedDepthwise, "apply", counting)
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=["none", "dil_conv_3x3"])
    net = OneShotNetwork(space, 3, 3, make_edge=DenseEdge)
    for cell in (m for m in net.modules() if isinstance(m, SearchCell)):
        cell.fused = fused
    x = torch.randn(2, 3, 8, 8)
    counts = {}
    for rewritten in (False, True):
        assert use_rewritten_backward(net, rewritten) > 0
        calls[0] = 0
        net(x)
        counts[rewritten] = calls[0]
    assert counts[False] == 0 and counts[True] > 0, counts


def test_second_order_arch_gradient_is_unchanged() -> None:
    """DARTS's unrolled gradient on a supernet with dilated convolutions, float64, both backward passes."""

    def arch_grad(rewritten: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=["none", "dil_conv_3x3", "sep_conv_5x5"])
        search = OneShotSearch(space, seed=0, order=2, epochs=1, batch_size=4)
        stepper = search.make_stepper(num_classes=3, in_channels=3, trainer=Trainer(device="cpu"))
        assert use_rewritten_backward(stepper.module, rewritten) > 0
        stepper.module.double()
        gen = torch.Generator().manual_seed(1)
        xt, xv = (torch.randn(4, 3, 8, 8, dtype=torch.float64, generator=gen) for _ in range(2))
        xt, xv = (x.contiguous(memory_format=torch.channels_last) for x in (xt, xv))
        yt, yv = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 1])
        stepper.weight_step(xt, yt)  # so that the momentum term is in the unrolled step
        return [g.detach() for g in stepper.unrolled_arch_grad(xt, yt, xv, yv)]

    for got, want in zip(arch_grad(True), arch_grad(False), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
