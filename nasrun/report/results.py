"""Result files and the end-of-run summary table."""

from __future__ import annotations

from typing import Any

import torch
from rich.table import Table
from torch import nn

from nasrun.report.console import get_console


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


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return str(value)


def print_summary(result: dict[str, Any]) -> None:
    """A rich table of the run's result: genotype, size, accuracies, wall time per phase."""
    table = Table(title="nasrun result", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    for key in (
        "task",
        "space",
        "genotype",
        "params",
        "flops",
        "n_evaluations",
        "search_val_acc",
        "val_acc",
        "test_acc",
    ):
        if result.get(key) is not None:
            table.add_row(key, _fmt(result[key]))
    for phase, seconds in result.get("wall_s", {}).items():
        table.add_row(f"wall time {phase.removesuffix('_s')}", f"{seconds:.1f} s")
    get_console().print(table)
