"""Shared pieces of the sampling one-shot methods' tests: tiny spaces and data, op-call counting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from nasrun.data.digits import digits
from nasrun.search.base import SearchContext
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.sampled_edges import SampledEdge
from nasrun.space.base import OneShotSpace
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.nb201 import NB201Space
from nasrun.train.trainer import Trainer

CELL_OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]


def tiny_space(name: str) -> OneShotSpace:
    """``cifar_cell`` (3 cells of 2 nodes, 4 ops) or ``nb201`` (1 cell per stage), 4 channels."""
    if name == "nb201":
        return NB201Space(channels=4, cells=1)
    return CifarCellSpace(layers=3, channels=4, nodes=2, ops=CELL_OPS)


def tiny_ctx(tmp_path: Path, space: OneShotSpace, resume: bool = False) -> SearchContext:
    data = digits(image_size=8, val_portion=0.2, test_portion=0.2, split_seed=0)
    return SearchContext(
        space=space, run_dir=tmp_path, seed=1, resume=resume, data=data, trainer=Trainer(device="cpu")
    )


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(10, (n,), generator=g)


@contextmanager
def count_op_calls(net: nn.Module) -> Iterator[tuple[Counter[int], Counter[int], dict[int, list[str]]]]:
    """Count, per ``SampledEdge`` (by position), its calls and the calls of its ops, by hooks.

    Yields ``(edge_calls, op_calls, op_names)``: ``op_names[e]`` lists the ops edge ``e`` ran, in order.
    """
    edges = [m for m in net.modules() if isinstance(m, SampledEdge)]
    edge_calls: Counter[int] = Counter()
    op_calls: Counter[int] = Counter()
    names: dict[int, list[str]] = {e: [] for e in range(len(edges))}
    handles = []
    for e, edge in enumerate(edges):
        handles.append(edge.register_forward_hook(lambda *_, e=e: edge_calls.update([e])))
        for name, op in zip(edge.names, edge.ops, strict=True):

            def hook(*_: object, e: int = e, name: str = name) -> None:
                op_calls.update([e])
                names[e].append(name)

            handles.append(op.register_forward_hook(hook))
    try:
        yield edge_calls, op_calls, names
    finally:
        for h in handles:
            h.remove()


def stepper_of(search: OneShotSearch):  # noqa: ANN201 - the method's stepper type
    return search.make_stepper(num_classes=10, in_channels=1, trainer=Trainer(device="cpu"))
