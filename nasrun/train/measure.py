"""Measures of a torch model that a run records: parameters and FLOPs."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Parameters of ``model``, without an auxiliary head (as the DARTS papers count them)."""
    return sum(p.numel() for n, p in model.named_parameters() if "auxiliary" not in n)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs of one inference forward pass (torch's FlopCounterMode: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)  # a parameter-free module (pooling) runs on the CPU
    x = (
        torch.zeros(input_shape)
        if param is None
        else torch.zeros(input_shape, device=param.device, dtype=param.dtype)
    )
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops())
