"""Time search steps of the DARTS reference implementation (quark0/darts, CNN search) on the CPU.

The reference's own files are read from REF_DIR, a temporary folder that
``scripts/darts_vs_reference.sh`` fills from a fetched copy of the repository at run time; they
are never copied into this project. One step is what the reference's ``train_search.py`` does per
batch: its architecture step (``Architect.step``) and then its weight step. Prints one JSON line.

Usage: python scripts/ref_darts_step.py REF_DIR --batch 16 --steps 4 --channels 8 --layers 5 --order 1
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn


class ReferenceArgs:
    """The fields of the reference's argparse namespace that its ``Architect`` reads (its defaults)."""

    momentum, weight_decay, arch_learning_rate, arch_weight_decay = 0.9, 3e-4, 3e-4, 1e-3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ref_dir")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--order", type=int, choices=[1, 2], default=1)
    a = p.parse_args()

    sys.path.insert(0, a.ref_dir)
    # The reference moves everything with .cuda(); on this CPU machine that must be a no-op.
    torch.Tensor.cuda = lambda self, *args, **kw: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *args, **kw: self  # type: ignore[method-assign]
    network: Any = importlib.import_module("model_search").Network
    architect: Any = importlib.import_module("architect").Architect

    torch.manual_seed(0)
    crit = nn.CrossEntropyLoss()
    model = network(a.channels, 10, a.layers, crit)
    opt = torch.optim.SGD(model.parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    arch = architect(model, ReferenceArgs)
    s = a.image_size
    xt, yt = torch.randn(a.batch, 3, s, s), torch.randint(0, 10, (a.batch,))
    xv, yv = torch.randn(a.batch, 3, s, s), torch.randint(0, 10, (a.batch,))

    def step() -> None:
        arch.step(xt, yt, xv, yv, 0.025, opt, unrolled=a.order == 2)
        opt.zero_grad()
        crit(model(xt), yt).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5)
        opt.step()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    record = {
        "impl": "reference",
        "order": a.order,
        "sec_per_step": statistics.median(times),
        "batch": a.batch,
        "channels": a.channels,
        "layers": a.layers,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()
