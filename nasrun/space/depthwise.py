"""Depthwise convolution with a faster backward pass for dilated filters on the CPU.

On the CPU, PyTorch's depthwise convolution backward (oneDNN, channels-last) handles dilated
filters poorly: for 64 channels of 32x32 at batch 16, a 5x5 filter with stride 2 and dilation 2
took 0.3 ms forward and 21 ms backward (``docs/benchmarks/darts_step.md`` lists the measured
shapes). DARTS's ``dil_conv_3x3`` / ``dil_conv_5x5`` are such convolutions, and in the
search supernet they account for about half of all convolution time.

Both gradients are themselves depthwise convolutions, which the CPU runs fast:

- input gradient: the output gradient, with ``stride - 1`` zeros inserted between its pixels,
  correlated with the spatially flipped filter (same dilation, stride 1);
- weight gradient: with the batch folded into the channels, the input correlated with the output
  gradient used as the filter (the forward stride becomes the dilation and the forward dilation the
  stride); the ``k x k`` result is summed over the batch.

The same mathematics as ``torch.nn.functional.conv2d``'s own backward, in a different order of
summation (float rounding differs). It is used only where it was measured faster: on the CPU, for
dilated filters, without autocast and outside ``torch.compile`` (which generates its own kernels).
Everything else calls ``conv2d`` unchanged.

The rewrite is on by default and can be turned off per call (``rewritten_backward=False``) or per
module (``DepthwiseConv2d.rewritten_backward``; ``use_rewritten_backward`` sets it on a whole
network), for comparisons and for reproducing runs recorded before it existed (float sums in
another order).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

Pair = tuple[int, int]


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
    *,
    rewritten_backward: bool = True,
) -> torch.Tensor:
    """``conv2d(x, weight, groups=channels)`` for ``x`` ``[B, C, H, W]``, ``weight`` ``[C, 1, kh, kw]``.

    ``rewritten_backward``: whether the rewritten backward may be used (where it was measured
    faster); false: PyTorch's own backward always.
    """
    if rewritten_backward and _use_rewritten_backward(x, weight, padding, dilation):
        return _DilatedDepthwise.apply(x, weight, stride, padding, dilation)
    return F.conv2d(x, weight, None, stride, padding, dilation, groups=x.shape[1])


class DepthwiseConv2d(nn.Conv2d):
    """A bias-free depthwise ``nn.Conv2d`` (groups = channels) that runs through ``depthwise_conv2d``.

    Same parameters and state-dict keys as the plain module, so checkpoints are interchangeable.
    ``rewritten_backward`` (an attribute, not state) is passed on to ``depthwise_conv2d``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int = 1,
        rewritten_backward: bool = True,
    ):
        super().__init__(
            channels, channels, kernel_size, stride, padding, dilation=dilation, groups=channels, bias=False
        )
        self.rewritten_backward = rewritten_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(
            x,
            self.weight,
            self.stride,  # type: ignore[arg-type]
            self.padding,  # type: ignore[arg-type]
            self.dilation,  # type: ignore[arg-type]
            rewritten_backward=self.rewritten_backward,
        )


def use_rewritten_backward(model: nn.Module, enabled: bool) -> int:
    """Set ``rewritten_backward`` on every ``DepthwiseConv2d`` in ``model``; returns how many there are."""
    convs = [m for m in model.modules() if isinstance(m, DepthwiseConv2d)]
    for conv in convs:
        conv.rewritten_backward = enabled
    return len(convs)


def _use_rewritten_backward(x: torch.Tensor, weight: torch.Tensor, padding: Pair, dilation: Pair) -> bool:
    kh, kw = weight.shape[-2:]
    return (
        x.device.type == "cpu"
        and max(dilation) > 1
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        # the flipped correlation needs non-negative padding
        and padding[0] <= dilation[0] * (kh - 1)
        and padding[1] <= dilation[1] * (kw - 1)
    )


class _DilatedDepthwise(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, stride: Pair, padding: Pair, dilation: Pair) -> Any:
        return F.conv2d(x, weight, None, stride, padding, dilation, groups=x.shape[1])

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, weight, stride, padding, dilation = inputs
        ctx.save_for_backward(x, weight)
        ctx.conv = (tuple(stride), tuple(padding), tuple(dilation))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.conv
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_grad(grad, weight, x.shape, stride, padding, dilation)
            nhwc = x.is_contiguous(memory_format=torch.channels_last)
            grad_x = grad_x.contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(x, grad, weight.shape, stride, padding, dilation)
            if grad_w.stride() != weight.stride():  # the weight's own layout, as DDP's buckets expect
                grad_w = torch.empty_like(weight).copy_(grad_w)
        return grad_x, grad_w, None, None, None


def _input_grad(
    grad: torch.Tensor, weight: torch.Tensor, x_shape: torch.Size, stride: Pair, padding: Pair, dilation: Pair
) -> torch.Tensor:
    """The gradient w.r.t. the input: zero-inserted output gradient * flipped filter."""
    B, C, Ho, Wo = grad.shape
    H, W = x_shape[-2:]
    kh, kw = weight.shape[-2:]
    sh, sw = stride
    if (sh, sw) != (1, 1):
        spread = grad.new_zeros(B, sh * Ho, sw * Wo, C).permute(0, 3, 1, 2)  # channels-last
        spread[:, :, ::sh, ::sw] = grad
        grad = spread
    pad = (dilation[0] * (kh - 1) - padding[0], dilation[1] * (kw - 1) - padding[1])
    out = F.conv2d(grad, weight.flip(-2, -1), None, 1, pad, dilation, groups=C)
    return out[:, :, :H, :W]


def _weight_grad(
    x: torch.Tensor,
    grad: torch.Tensor,
    w_shape: torch.Size,
    stride: Pair,
    padding: Pair,
    dilation: Pair,
) -> torch.Tensor:
    """The gradient w.r.t. the filter: the batch folded into the channels, the output gradient as filter."""
    B, C, H, W = x.shape
    Ho, Wo = grad.shape[-2:]
    kh, kw = w_shape[-2:]
    # [B, C, H, W] -> [1, B*C, H, W] (channel index b*C + c), channels-last in memory.
    folded = x.permute(2, 3, 0, 1).reshape(1, H, W, B * C).permute(0, 3, 1, 2)
    filters = grad.reshape(B * C, 1, Ho, Wo)
    out = F.conv2d(folded, filters, None, dilation, padding, stride, groups=B * C)
    return out[0, :, :kh, :kw].reshape(B, C, kh, kw).sum(0).unsqueeze(1)
