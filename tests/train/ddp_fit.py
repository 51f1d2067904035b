"""A retraining on digits that tests/train/test_distributed.py runs alone and under torchrun.

``python tests/train/ddp_fit.py OUT.json [batch_norm|prune]``: trains a small convolutional network
for two epochs with ``Trainer.fit`` (global batch 64) and, on the first process, writes the final
metrics and weights to ``OUT.json``. Under ``torchrun --nproc-per-node 2`` the same global batches
are split over two processes. ``prune``: a sink that stops the run after its first epoch, as a
sweep's pruner does; each process writes how it ended to ``OUT.json.rank<r>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from nasrun import StoppedWithFirstProcess
from nasrun.data.digits import digits
from nasrun.train.distributed import leave
from nasrun.train.trainer import Trainer


def network(batch_norm: bool) -> nn.Module:
    torch.manual_seed(0)
    norm = (lambda c: nn.BatchNorm2d(c)) if batch_norm else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        norm(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        norm(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


class Pruned(Exception):
    pass


class Pruner:
    """A sink that stops the run at its first record, as a sweep's pruner stops a trial."""

    def append(self, record: dict) -> None:
        raise Pruned


def main() -> None:
    out, batch_norm, prune = sys.argv[1], "batch_norm" in sys.argv[2:], "prune" in sys.argv[2:]
    torch.set_num_threads(1)
    data = digits(image_size=8)
    trainer = Trainer(device="cpu", epochs=2, batch_size=64, lr=0.05, channels_last=False, threads=1)
    model = network(batch_norm)
    if prune:
        try:
            trainer.fit(model, data, seed=0, quiet=True, run_dir=Path(out).parent / "run", sinks=[Pruner()])
            ended = "finished"
        except StoppedWithFirstProcess:
            ended = "stopped with the first process"
        except Pruned:
            ended = "pruned"
        Path(f"{out}.rank{trainer.world.rank}").write_text(ended)
        leave()
        return
    metrics = trainer.fit(model, data, seed=0, quiet=True)
    if trainer.world.main:
        weights = [p.detach().flatten().tolist() for p in model.parameters()]
        with open(out, "w") as f:
            json.dump({"metrics": metrics, "weights": weights, "world": trainer.world.size}, f)
    leave()


if __name__ == "__main__":
    main()
