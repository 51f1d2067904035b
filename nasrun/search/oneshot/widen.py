"""Widening a trained op to more channels by copying some of its own (DrNAS's progressive search).

Between the stages of DrNAS's progressive search, each partial-channel edge lets more channels
through its ops (``k`` falls), so every op grows from ``C / k_old`` to ``C / k_new`` channels. The
new channels are copies of randomly chosen old ones, Net2Wider-style but without rescaling, as the
reference does (github xiangning-chen/DrNAS, ``net2wider.py``; each op's ``wider`` in
``DARTS-space/operations.py``):

- a depthwise convolution copies the filters of random channels; the pointwise convolution after it
  copies its input columns at the same channels, then the rows of new random output channels;
- any other convolution copies random input columns and random output rows;
- a BatchNorm copies the statistics (and affine parameters) of the channels the convolution
  before it copied, or of random channels when nothing before it chose (after a pooling);
- ``FactorizedReduce`` widens its two convolutions independently and its BatchNorm at the two
  convolutions' output choices joined (``operations.py`` ``FactorizedReduce.wider``).

The parameters stay the same ``nn.Parameter`` objects (their data is replaced), so the optimiser
keeps them; their optimiser state (momentum) grows with them, as the reference carries it over
(``net2wider.py`` ``configure_optimizer``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nasrun.space.depthwise import DepthwiseConv2d
from nasrun.space.ops import FactorizedReduce


class Widening:
    """Grows parameters and buffers along a channel dimension, with their optimiser state.

    Args:
        optimizer: the optimiser of the parameters that grow (its per-parameter state grows too).
        generator: draws the copied channels.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None, generator: torch.Generator) -> None:
        self.optimizer = optimizer
        self.generator = generator

    def choose(self, old: int, new: int) -> torch.Tensor:
        """``new - old`` random channels among ``old`` to copy."""
        if new < old:
            raise ValueError(f"cannot widen {old} channels to {new}")
        return torch.randint(0, old, (new - old,), generator=self.generator)

    def param(self, p: torch.Tensor, dim: int, index: torch.Tensor) -> None:
        """Append ``p``'s slices ``index`` along ``dim`` (and its optimiser state's)."""
        old_shape = p.shape
        index = index.to(p.device)
        with torch.no_grad():
            p.data = _append(p.data, dim, index)
        p.grad = None
        if self.optimizer is not None:
            state = self.optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == old_shape:
                    state[key] = _append(value, dim, index.to(value.device))

    def bn(self, bn: _BatchNorm, index: torch.Tensor) -> None:
        """Append channels ``index`` to ``bn``'s statistics and affine parameters."""
        with torch.no_grad():
            for name in ("running_mean", "running_var"):
                buf = getattr(bn, name)
                if buf is not None:
                    setattr(bn, name, _append(buf, 0, index.to(buf.device)))
        if bn.affine:
            self.param(bn.weight, 0, index)
            self.param(bn.bias, 0, index)
        bn.num_features += len(index)

    def conv(
        self, conv: nn.Conv2d, new: int, index: torch.Tensor | None = None, new_out: int | None = None
    ) -> torch.Tensor:
        """Widen ``conv`` to ``new`` input channels and ``new_out`` (default ``new``) output channels.

        ``index``: the input channels the module before copied (``None``: none chose, draw them).
        Returns the output channels it copied.
        """
        new_out = new if new_out is None else new_out
        if isinstance(conv, DepthwiseConv2d) or 1 < conv.groups == conv.in_channels:  # one filter per channel
            conv.groups = new  # its filters copied at fresh channels, as the reference (DilConv.wider)
        elif conv.groups != 1:
            raise ValueError(f"cannot widen a grouped convolution ({conv.groups} groups)")
        else:
            self.param(conv.weight, 1, index if index is not None else self.choose(conv.in_channels, new))
        out = self.choose(conv.out_channels, new_out)
        self.param(conv.weight, 0, out)
        conv.in_channels, conv.out_channels = new, new_out
        return out

    def module(self, module: nn.Module, new: int, index: torch.Tensor | None = None) -> torch.Tensor | None:
        """Widen an op (its convolutions and BatchNorms, in order) to ``new`` channels.

        ``index``: the channels the module before copied. Returns the channels that this module's
        output copied, for the module after it (``None`` if it chose none).
        """
        if isinstance(module, FactorizedReduce):
            half = new // 2
            first = self.conv(module.conv_1, new, new_out=half)
            second = self.conv(module.conv_2, new, new_out=half)
            # The reference's choice for the joined BatchNorm: both halves' indices appended.
            self.bn(module.bn, torch.cat([first, second]))
            return None
        if isinstance(module, nn.Conv2d):
            return self.conv(module, new, index)
        if isinstance(module, _BatchNorm):  # plain, or synchronised (data-parallel)
            chosen = index if index is not None else self.choose(module.num_features, new)
            self.bn(module, chosen)
            return chosen
        for child in module.children():
            index = self.module(child, new, index)
        return index


def _append(t: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``t`` with its slices ``index`` along ``dim`` appended (in ``t``'s memory format)."""
    out = torch.cat([t, t.index_select(dim, index)], dim=dim)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out
