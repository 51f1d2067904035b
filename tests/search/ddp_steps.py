"""Search steps on digits that tests/search/test_data_parallel.py runs alone and under torchrun.

``python tests/search/ddp_steps.py OUT SEARCH [local] [double]``: builds ``experiment=smoke search=SEARCH``'s
supernet, takes 6 search steps on global batches of 32 digits (each process on its share) and
writes every process's alphas and weights to ``OUT.rank<r>.json``. Under torchrun the supernet's
BatchNorms normalise with the global batch's statistics (``trainer.sync_batchnorm``'s default);
``local``: with each process's share's. ``double``: in float64, where the float reordering of the
processes' sums stays far below the differences a wrong gradient or statistic would make.
"""

from __future__ import annotations

import json
import sys

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from nasrun.config import config_dir, register_configs
from nasrun.train.distributed import join, leave
from nasrun.train.trainer import Trainer


def main() -> None:
    out, search_name, local = sys.argv[1], sys.argv[2], "local" in sys.argv[3:]
    torch.set_num_threads(1)
    if "double" in sys.argv[3:]:
        torch.set_default_dtype(torch.float64)  # the supernet's parameters and buffers
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("config", overrides=["experiment=smoke", f"search={search_name}", "data=digits"])
    trainer = Trainer(device="cpu", channels_last=False, threads=1, sync_batchnorm=not local)
    world = trainer.world
    join(world, trainer.device)
    data = instantiate(cfg.data)
    search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
    stepper = search.make_stepper(data.num_classes, data.in_channels, trainer)
    stepper.model.train()
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        idx = torch.randperm(len(data.train), generator=gen)[:64]
        x, y = data.train.x[idx].to(torch.get_default_dtype()), data.train.y[idx]
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
