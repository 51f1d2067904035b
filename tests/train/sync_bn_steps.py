"""BatchNorm forward and backward passes that tests/train/test_sync_batchnorm.py runs alone and under torchrun.

``python tests/train/sync_bn_steps.py OUT [local] [channels_last]``: a small network with an
affine BatchNorm (momentum 0.1) and a non-affine one (cumulative averages) runs three training
passes on global batches of 11 images; under torchrun each process takes its contiguous share
(6 and 5 images) and its BatchNorms are synchronised (``local``: left as they are). Each process
writes its share's outputs and input gradients, the parameters' gradients summed over the
processes, and the running statistics, to ``OUT.rank<r>.json``.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

from nasrun.train import sync_batchnorm
from nasrun.train.distributed import detect, join, leave


def main() -> None:
    out, local, channels_last = sys.argv[1], "local" in sys.argv[2:], "channels_last" in sys.argv[2:]
    torch.set_num_threads(1)
    world = detect("auto")
    join(world, torch.device("cpu"))
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.BatchNorm2d(5, affine=False, momentum=None),
    )
    if world.active and not local:
        sync_batchnorm.convert(net, torch.device("cpu"))
    converted = sum(map(sync_batchnorm.synced, net.modules()))
    if channels_last:
        net.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(11, 3, 6, 6, generator=gen) * 3 + 1
        w = torch.randn(11, 5, 4, 4, generator=gen)
        part = world.shard(11)
        xs = x[part].clone().requires_grad_(True)
        if channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
            xs.retain_grad()
        net.zero_grad()
        y = net(xs)
        (y * w[part]).sum().backward()  # a sum, so that the processes' gradients add up to one's
    grads = world.all_sum(torch.cat([p.grad.flatten() for p in net.parameters()]))  # type: ignore[union-attr]
    state = {
        "world": world.size,
        "converted": converted,
        "out": y.detach().tolist(),
        "x_grad": xs.grad.tolist(),  # type: ignore[union-attr]
        "param_grads": grads.tolist(),
        "buffers": {k: v.tolist() for k, v in net.state_dict().items() if "running" in k or "batches" in k},
    }
    with open(f"{out}.rank{world.rank}.json", "w") as f:
        json.dump(state, f)
    leave()


if __name__ == "__main__":
    main()
