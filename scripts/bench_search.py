#!/usr/bin/env python
"""Time whole one-shot search steps (architecture step + weight step) on synthetic data.

``--search NAME`` composes ``conf/search/NAME.yaml`` as ``nasrun search=NAME`` does and runs the
same code path (``OneShotSearch.make_stepper`` and the stepper's ``step``) on ``--space`` (the
DARTS cell space, or the NAS-Bench-201 supernet with ``--cells`` cells per stage); it prints one
JSON line: median seconds per step, images per second (both batches of a step counted) and peak
memory (CUDA's peak allocated on a GPU, the process's peak RSS on the CPU: run one configuration
per process to compare RSS). A method with a controller (ENAS) also reports the median seconds of
one controller step (a REINFORCE step on one sampled cell and one batch), which its controller
phase repeats after each epoch. For performance work, not a test.

    python scripts/bench_search.py --search darts --channels 8 --layers 5 --batch-size 16 \
        --image-size 32 --steps 5 [--space nb201 --cells 2] [--order 2] [--device cuda] \
        [--channels-last [auto|true|false]] [--amp bf16] [--compile] [--edge-by-edge] [--native-depthwise]
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import time

import torch
from _bench_args import add_runtime_args, apply_depthwise_arg, trainer_from_args
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nasrun.config import config_dir, register_configs
from nasrun.config.build import build
from nasrun.data.synthetic import synthetic
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.plugin import EpochData
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.nb201 import NB201Space


def _compose(overrides: list[str]) -> DictConfig:
    register_configs()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="config", overrides=overrides)


@functools.cache
def one_shot_searches() -> list[str]:
    """The ``conf/search/`` options that run the one-shot engine."""
    names = sorted(p.stem for p in (config_dir() / "search").glob("*.yaml"))
    return [
        n
        for n in names
        if _compose([f"search={n}"]).search._target_ == f"{OneShotSearch.__module__}.OneShotSearch"
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--search", choices=one_shot_searches(), default="darts", help="a one-shot conf/search/ option"
    )
    p.add_argument("--space", choices=["cifar_cell", "nb201"], default="cifar_cell")
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--layers", type=int, default=5, help="cifar_cell: cells")
    p.add_argument("--nodes", type=int, default=4, help="cifar_cell: nodes per cell")
    p.add_argument("--cells", type=int, default=5, help="nb201: cells per stage")
    p.add_argument("--batch-size", type=int, default=16, help="each of the step's two batches")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, allocator)")
    p.add_argument("--order", type=int, choices=[1, 2], default=None, help="default: the method's")
    add_runtime_args(p)
    p.add_argument(
        "--edge-by-edge", action="store_true", help="turn off the fused per-state path (for comparison)"
    )
    args = p.parse_args(argv)
    trainer = trainer_from_args(args)

    space = (
        CifarCellSpace(layers=args.layers, channels=args.channels, nodes=args.nodes)
        if args.space == "cifar_cell"
        else NB201Space(channels=args.channels, cells=args.cells)
    )
    overrides = [f"search={args.search}", f"search.batch_size={args.batch_size}"]
    if args.order is not None:
        overrides.append(f"search.order={args.order}")
    search = build(_compose(overrides), "search", space=space, seed=0)
    stepper = search.make_stepper(num_classes=10, in_channels=3, trainer=trainer)
    rewritten = apply_depthwise_arg(args, stepper.module)
    if args.edge_by_edge:
        for m in stepper.module.modules():
            if hasattr(m, "fused"):
                m.fused = False
    n = args.batch_size * 2 * (args.steps + args.warmup)
    data = synthetic(n_train=n, n_test=1, image_size=args.image_size, val_portion=0.0)
    batches = list(trainer.batches(data.train, args.batch_size))
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.steps + args.warmup):
        (xt, yt), (xv, yv) = batches[2 * i], batches[2 * i + 1]
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        stepper.step(xt, yt, xv, yv)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    controller_sec = None
    if hasattr(stepper, "controller_steps"):  # a controller phase: time its steps one at a time
        stepper.controller_steps = 1
        split = synthetic(
            n_train=args.batch_size, n_test=1, image_size=args.image_size, val_portion=0.0
        ).train
        phase = EpochData(
            split, args.batch_size, trainer, seed=0, epoch=0, augment=None, status=lambda _: None
        )
        controller_times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            stepper.end_epoch(phase, arch_steps=True)
            if cuda:
                torch.cuda.synchronize()
            controller_times.append(time.perf_counter() - t0)
        controller_sec = round(statistics.median(controller_times), 4)
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    print(
        json.dumps(
            {
                "search": args.search,
                "space": args.space,
                "order": search.order,
                "device": str(trainer.device),
                "threads": torch.get_num_threads(),
                "channels": args.channels,
                "layers": args.layers if args.space == "cifar_cell" else None,
                "cells_per_stage": args.cells if args.space == "nb201" else None,
                "batch_size": args.batch_size,
                "image_size": args.image_size,
                "channels_last": trainer.channels_last,
                "amp": args.amp,
                "compile": args.compile,
                "fused": not args.edge_by_edge,
                "rewritten_depthwise_backward": rewritten,
                "steps": args.steps,
                "sec_per_step": round(sec, 4),
                "sec_per_step_all": [round(t, 4) for t in times],
                "images_per_sec": round(2 * args.batch_size / sec, 2),
                "controller_sec_per_step": controller_sec,
                "peak_memory_mb": round(peak / 2**20, 1),
                "peak_memory_kind": "cuda_allocated" if cuda else "process_max_rss",
            }
        )
    )


if __name__ == "__main__":
    sys.exit(main())
