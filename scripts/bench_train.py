#!/usr/bin/env python
"""Time retraining steps of a discrete cell network (the phase that takes DARTS 600 epochs).

Builds the network of a genotype from ``conf/genotype/`` at the retraining size, and times
``Trainer.train_step`` (the step ``nasrun`` takes in ``fit``) on synthetic 32x32 batches. Prints one
JSON line: median seconds per step over ``--repeats`` timed windows of ``--steps`` steps, images per
second, the implied seconds per CIFAR-10 epoch (50,000 images) and peak memory. For performance
work, not a test.

    python scripts/bench_train.py --genotype darts_v2 --channels 36 --layers 20 --batch-size 96 \
        [--device cuda] [--amp bf16] [--channels-last [auto|true|false]] [--compile] [--native-depthwise]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch
from _bench_args import add_runtime_args, apply_depthwise_arg, trainer_from_args

from nasrun import UserError
from nasrun.data.synthetic import synthetic
from nasrun.pipeline import named_genotype
from nasrun.space.cifar_cell import CifarCellSpace

CIFAR_TRAIN_IMAGES = 50_000


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--genotype", default="darts_v2")
    p.add_argument("--channels", type=int, default=36)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--no-auxiliary", action="store_true")
    p.add_argument("--batch-size", type=int, default=96)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (the median is reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, allocator)")
    add_runtime_args(p)
    args = p.parse_args(argv)
    trainer = trainer_from_args(args)

    torch.manual_seed(0)
    space = CifarCellSpace(layers=args.layers, channels=args.channels)
    try:
        genotype = named_genotype(args.genotype)
    except UserError as e:
        raise SystemExit(f"bench_train: {e}") from None
    module = space.build_network(genotype, num_classes=10, in_channels=3, auxiliary=not args.no_auxiliary)
    module.drop_path_prob = 0.2  # type: ignore[assignment]  # DARTS retraining's value
    rewritten = apply_depthwise_arg(args, module)
    model = trainer.prepare(module)
    model.train()
    opt = torch.optim.SGD(module.parameters(), lr=trainer.lr, momentum=trainer.momentum, weight_decay=3e-4)
    data = synthetic(n_train=args.batch_size * 4, n_test=1, image_size=args.image_size, val_portion=0.0)
    batches = list(trainer.batches(data.train, args.batch_size))
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def window(n: int) -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(n):
            x, y = batches[i % len(batches)]
            trainer.train_step(model, module, opt, x, y, aux_weight=0.4)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    t_first = time.perf_counter()
    window(args.warmup)
    warmup_s = time.perf_counter() - t_first
    sec = statistics.median(window(args.steps) for _ in range(args.repeats))
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(
        json.dumps(
            {
                "genotype": args.genotype,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "channels": args.channels,
                "layers": args.layers,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "channels_last": trainer.channels_last,
                "amp": args.amp,
                "compile": args.compile,
                "rewritten_depthwise_backward": rewritten,
                "params": sum(p.numel() for p in module.parameters()),
                "warmup_s": round(warmup_s, 2),
                "sec_per_step": round(sec, 5),
                "images_per_sec": round(args.batch_size / sec, 1),
                "sec_per_cifar_epoch": round(CIFAR_TRAIN_IMAGES / args.batch_size * sec, 1),
                "peak_memory_mb": round(peak / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
