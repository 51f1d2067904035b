"""Search steps on digits that tests/search/test_data_parallel.py runs alone and under torchrun.

``python tests/search/ddp_steps.py OUT SEARCH [nobn]``: builds ``experiment=smoke search=SEARCH``'s
supernet, takes 6 search steps on global batches of 32 digits (each process on its share) and
writes every process's alphas and weights to ``OUT.rank<r>.json``. ``nobn``: the supernet without
BatchNorm and edge by edge, so that one process and several compute the same function of the same
global batch (BatchNorm's batch statistics are each process's own).
"""

from __future__ import annotations

import json
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from nasrun.config import config_dir, register_configs
from nasrun.train.distributed import join, leave
from nasrun.train.trainer import Trainer


def without_batchnorm(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            without_batchnorm(child)
        if hasattr(child, "fused"):
            child.fused = False  # edge by edge: the fused path reads the BatchNorms itself


def main() -> None:
    out, search_name, nobn = sys.argv[1], sys.argv[2], "nobn" in sys.argv[3:]
    torch.set_num_threads(1)
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("config", overrides=["experiment=smoke", f"search={search_name}", "data=digits"])
    trainer = Trainer(device="cpu", channels_last=False, threads=1)
    world = trainer.world
    join(world, trainer.device)
    data = instantiate(cfg.data)
    search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
    if nobn:  # removed before the stepper collects the weights
        build = search.build_network

        def build_without_batchnorm(*args: object, **kwargs: object) -> nn.Module:
            network = build(*args, **kwargs)
            without_batchnorm(network)
            return network

        search.build_network = build_without_batchnorm
    stepper = search.make_stepper(data.num_classes, data.in_channels, trainer)
    stepper.model.train()
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        idx = torch.randperm(len(data.train), generator=gen)[:64]
        x, y = data.train.x[idx], data.train.y[idx]
        xt, yt, xv, yv = x[:32], y[:32], x[32:], y[32:]
        part = world.shard(32)
        torch.manual_seed(100 + step)  # the step's draws (samplers) the same for every run
        stepper.step(xt[part], yt[part], xv[part], yv[part])
    state = {
        "world": world.size,
        "alphas": [a.detach().flatten().tolist() for a in stepper.alphas],
        "weights": [w.detach().flatten().tolist() for w in stepper.weights],
    }
    with open(f"{out}.rank{world.rank}.json", "w") as f:
        json.dump(state, f)
    leave()


if __name__ == "__main__":
    main()
