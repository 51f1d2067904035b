"""A retraining on digits that tests/train/test_distributed.py runs alone and under torchrun.

``python tests/train/ddp_fit.py OUT.json [batch_norm|prune|cell]``: trains a small convolutional
network for two epochs with ``Trainer.fit`` (global batch 64) and, on the first process, writes the
final metrics and weights to ``OUT.json``. Under ``torchrun --nproc-per-node 2`` the same global
batches are split over two processes. ``prune``: a sink that stops the run after its first epoch, as
a sweep's pruner does; each process writes how it ended to ``OUT.json.rank<r>``. ``cell``: the
DARTS_V2 cell network at smoke size (4 channels, 3 cells, auxiliary head), retrained as DARTS
retrains, with drop-path (rate 0.3) and cutout, on 192 training images in float64.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from nasrun import StoppedWithFirstProcess
from nasrun.data.base import DataModule
from nasrun.data.digits import digits
from nasrun.pipeline import named_genotype
from nasrun.space.cifar_cell import CifarCellNetwork
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


def cell_network(data: DataModule) -> nn.Module:
    """DARTS_V2's cell network at smoke size, in float64 (and ``data`` with it)."""
    genotype = named_genotype("darts_v2")
    data.train = data.train.subset(torch.arange(192))  # three steps an epoch
    for split in (data.train, data.val, data.test):
        split.x = split.x.double()
    torch.manual_seed(0)
    return CifarCellNetwork(genotype, 4, data.num_classes, 3, auxiliary=True, in_channels=1).double()


def main() -> None:
    out, batch_norm, prune = sys.argv[1], "batch_norm" in sys.argv[2:], "prune" in sys.argv[2:]
    cell = "cell" in sys.argv[2:]
    torch.set_num_threads(1)
    data = digits(image_size=16 if cell else 8)
    trainer = Trainer(device="cpu", epochs=2, batch_size=64, lr=0.05, channels_last=False, threads=1)
    model = cell_network(data) if cell else network(batch_norm)
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
    # cell: as DARTS retrains, with an auxiliary loss, drop-path ramped over the epochs and cutout
    darts = {"aux_weight": 0.4, "drop_path": 0.3, "cutout": 4} if cell else {}
    metrics = trainer.fit(model, data, seed=0, quiet=True, **darts)
    if trainer.world.main:
        weights = [p.detach().flatten().tolist() for p in model.parameters()]
        with open(out, "w") as f:
            json.dump({"metrics": metrics, "weights": weights, "world": trainer.world.size}, f)
    leave()


if __name__ == "__main__":
    main()
