"""SNAS's resource penalty: the size of the cell it derives, with and without the penalty.

Each run is ``search=snas`` (Gumbel-softmax sample, single-level steps on every training image,
every edge's strongest op derived, ``none`` included) on the bundled digits at the demo's search
size (5 cells of 8 channels, 16x16 images), for ``--epochs`` epochs with the temperature annealed
over them, once per penalty weight (``--lambdas``; 0 is no penalty, 1.5e-3 nasrun's default, the
reference README's) and seed. The derived cell is then built as the demo retrains it (8 cells of 16
channels) and its parameters and FLOPs counted (``nasrun.train.measure``; FLOPs as torch counts
them, 2 per multiply-add). Prints one line per run and the mean per weight; ``--out`` writes the
runs as JSON lines. The command behind docs/benchmarks/snas.md:

    python docs/benchmarks/snas_resource.py --seeds 0,1,2 --lambdas 0,1.5e-3,1e-2 --epochs 10 --out snas_resource.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from nasrun.data.digits import digits
from nasrun.search.base import SearchContext
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.samplers import GumbelSoftmax
from nasrun.search.oneshot.snas import SingleLevel
from nasrun.space.cifar_cell import CifarCellSpace, node_counts
from nasrun.train.measure import count_flops, count_params
from nasrun.train.trainer import Trainer


def run_one(lam: float, seed: int, epochs: int, arch_lr: float) -> dict:
    """One search with penalty weight ``lam``; the derived cell and its size as the demo retrains it."""
    data = digits()
    space = CifarCellSpace(layers=5, channels=8)
    search = OneShotSearch(
        space,
        seed=seed,
        epochs=epochs,
        arch_lr=arch_lr,
        sampler=GumbelSoftmax(),
        update=SingleLevel(cost_weight=lam),
        derivation="every_edge",
    )
    with tempfile.TemporaryDirectory() as tmp:
        ctx = SearchContext(
            space=space, run_dir=Path(tmp), seed=seed, data=data, trainer=Trainer(device="cpu")
        )
        t0 = time.perf_counter()
        result = search.run(ctx)
        wall = time.perf_counter() - t0
    g = result.genotype
    net = space.build_network(
        g, num_classes=data.num_classes, in_channels=data.in_channels, channels=16, layers=8
    )
    return {
        "lambda": lam,
        "seed": seed,
        "epochs": epochs,
        "edges": {"normal": len(g.normal), "reduce": len(g.reduce)},
        "nodes": {"normal": node_counts(g, "normal"), "reduce": node_counts(g, "reduce")},
        "params": count_params(net),
        "flops": count_flops(net, (1, data.in_channels, data.image_size, data.image_size)),
        "search_val_acc": result.metrics["search_val_acc"],
        "genotype": space.describe(g),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lambdas", default="0,1.5e-3,1e-2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--arch-lr", type=float, default=3e-3, help="the demo's 10x DARTS's, for short runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console()
    runs = []
    for lam in (float(v) for v in args.lambdas.split(",")):
        for seed in (int(v) for v in args.seeds.split(",")):
            r = run_one(lam, seed, args.epochs, args.arch_lr)
            runs.append(r)
            console.print(
                f"lambda {lam:g} seed {seed}: {r['params']} params, {r['flops'] / 1e6:.2f} MFLOPs, "
                f"nodes {r['nodes']}, val {r['search_val_acc']:.2f} ({r['wall_s']} s)  {r['genotype']}",
                markup=False,
                highlight=False,
            )
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(r) + "\n")
    for lam in dict.fromkeys(r["lambda"] for r in runs):
        mine = [r for r in runs if r["lambda"] == lam]
        params = [r["params"] for r in mine]
        flops = [r["flops"] / 1e6 for r in mine]
        console.print(
            f"lambda {lam:g}: params {statistics.mean(params):.0f} (min {min(params)}, max {max(params)}), "
            f"MFLOPs {statistics.mean(flops):.2f} (min {min(flops):.2f}, max {max(flops):.2f}), {len(mine)} runs",
            markup=False,
            highlight=False,
        )


if __name__ == "__main__":
    main()
