#!/usr/bin/env python
"""Time data-parallel steps: N processes under torchrun against one, same global batch.

Runs the timing worker alone, then under ``torchrun --standalone --nproc-per-node N``, each on
synthetic batches of ``--batch-size`` images (the global batch, split over the processes as
``Trainer.fit`` and the one-shot engine split it): retraining steps of the network of a genotype
from ``conf/genotype/``, or with ``--search NAME`` the search steps of a one-shot ``conf/search/``
option (architecture step on a second batch, then weight step). Prints one JSON line: per
run, the median seconds per global step over ``--repeats`` windows of ``--steps`` steps and images
per second; and the speed-up of N processes over one. On the CPU the machine's threads are shared
out: one process gets ``--threads``, each of N processes ``--threads / N``. For performance work,
not a test.

    python scripts/bench_ddp.py --nproc 2 --genotype darts_v2 --channels 16 --layers 8 \
        --batch-size 64 [--device cpu|cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--genotype", default="darts_v2")
    p.add_argument(
        "--search", default=None, help="time a one-shot search's steps instead (a conf/search/ option)"
    )
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64, help="the global batch")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=3, help="timed windows (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--local-batchnorm",
        action="store_true",
        help="each process's own BatchNorm statistics (trainer.sync_batchnorm=false)",
    )
    p.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of all processes together"
    )


def worker(args: argparse.Namespace) -> None:
    """One process's timing (under torchrun: one of several); the first process prints the JSON line."""
    import torch

    from nasrun.pipeline import named_genotype
    from nasrun.space.cifar_cell import CifarCellSpace
    from nasrun.train.distributed import join, leave
    from nasrun.train.trainer import Trainer

    trainer = Trainer(
        device=args.device, channels_last="auto", threads=1, sync_batchnorm=not args.local_batchnorm
    )
    world = trainer.world
    torch.set_num_threads(max(1, args.threads // world.size))
    join(world, trainer.device)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    part = world.shard(args.batch_size)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)[part]
        y = torch.randint(0, 10, (args.batch_size,), generator=gen)[part]
        x, y = x.to(trainer.device), y.to(trainer.device)
        return (x.contiguous(memory_format=torch.channels_last) if trainer.channels_last else x), y

    (x, y), (xv, yv) = batch(), batch()
    if args.search is None:
        space = CifarCellSpace(layers=args.layers, channels=args.channels)
        genotype = named_genotype(args.genotype)
        module = space.build_network(genotype, num_classes=10, in_channels=3, auxiliary=False)
        model = trainer.prepare(module)
        model.train()
        opt = torch.optim.SGD(module.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)

        def step() -> None:
            trainer.train_step(model, module, opt, x, y)
    else:
        stepper = _stepper(args, trainer)

        def step() -> None:
            stepper.step(x, y, xv, yv)

    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    def window(steps: int) -> float:
        sync()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        seconds = time.perf_counter() - t0
        if world.active:  # the processes wait for each other every step: their times agree
            seconds = float(world.all_sum(torch.tensor([seconds], device=trainer.device))) / world.size
        return seconds / steps

    window(args.warmup)
    per_step = statistics.median(window(args.steps) for _ in range(args.repeats))
    if world.main:
        print(json.dumps({"processes": world.size, "sec_per_step": per_step}))
    leave()


def _stepper(args: argparse.Namespace, trainer: Any) -> Any:
    """The one-shot search step of ``conf/search/<args.search>.yaml`` on a supernet of the asked size."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from nasrun.config import config_dir, register_configs

    register_configs()
    overrides = [f"search={args.search}", f"space.channels={args.channels}", f"space.layers={args.layers}"]
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("config", overrides=overrides)
    search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
    stepper = search.make_stepper(10, 3, trainer)
    stepper.model.train()
    return stepper


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    _options(p)
    p.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    keys = (
        "genotype",
        "search",
        "channels",
        "layers",
        "batch_size",
        "image_size",
        "steps",
        "repeats",
        "warmup",
        "device",
        "threads",
    )
    passed = [
        item
        for k in keys
        if getattr(args, k) is not None
        for item in (f"--{k.replace('_', '-')}", str(getattr(args, k)))
    ]
    if args.local_batchnorm:
        passed.append("--local-batchnorm")
    worker_cmd = [str(HERE / "bench_ddp.py"), "--worker", *passed]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    rows = {}
    for name, cmd in (("one", [sys.executable, *worker_cmd]), ("many", [*launch, *worker_cmd])):
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench_ddp: the {name} run failed: {done.stderr.strip().splitlines()[-1:]}")
        rows[name] = json.loads(done.stdout.strip().splitlines()[-1])
    out = {
        "phase": f"search {args.search}" if args.search else "retrain",
        "genotype": None if args.search else args.genotype,
        "channels": args.channels,
        "layers": args.layers,
        "global_batch": args.batch_size,
        "device": args.device,
        "threads": args.threads,
        "batchnorm": "local" if args.local_batchnorm else "synchronised",
    }
    for name in ("one", "many"):
        sec = rows[name]["sec_per_step"]
        out[f"{name}_processes"] = rows[name]["processes"]
        out[f"{name}_sec_per_step"] = round(sec, 5)
        out[f"{name}_images_per_sec"] = round(args.batch_size / sec, 1)
    out["speedup"] = round(rows["one"]["sec_per_step"] / rows["many"]["sec_per_step"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
