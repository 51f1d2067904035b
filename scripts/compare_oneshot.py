#!/usr/bin/env python
"""Compare one-shot methods on the bundled digits at the demo's sizes, against random cells.

Each method searches and retrains with ``experiment=demo`` on every seed; random cells of the same
space (the DARTS paper's baseline) are retrained the same way. Every run is a real ``nasrun`` run
in its own folder under ``--out``; a run already finished there is reused, so the script can be
stopped and started again. Prints mean ± std of the test accuracy, the search's wall time and the
skip-connects of each derived normal cell, and writes them to ``--out/summary.json``.

    python scripts/compare_oneshot.py --seeds 0,1,2 --random 3 --jobs 2 --out outputs/compare_oneshot
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nasrun.space.base import sample_genotype
from nasrun.space.cifar_cell import CifarCellSpace

#: The demo's search settings for each method, with what the demo's 6 epochs force on the recipes
#: meant for 50-75 epochs (PC-DARTS's 15 warm-up epochs, P-DARTS's three 25-epoch stages) and on
#: ENAS's controller phase.
METHODS: dict[str, list[str]] = {
    "darts": ["search=darts"],
    "pc_darts": ["search=pc_darts", "search.warmup_epochs=2"],
    "p_darts": [
        "search=p_darts",
        "search.stages.layers=[3,4,5]",
        "search.stages.epochs=[2,2,2]",
        "search.stages.warmup_epochs=[1,1,1]",
    ],
    "darts_plus": ["search=darts_plus"],
    "gdas": ["search=gdas"],
    "snas": ["search=snas"],
    "rsps": ["search=rsps"],
    # ENAS's controller phase (30 steps of 10 cells), scaled down to the demo's 9 weight steps an epoch.
    "enas": ["search=enas", "search.update.controller_steps=5"],
}


def _run(args: list[str], run_dir: Path, threads: int) -> dict:
    result = run_dir / "result.json"
    if not result.is_file():
        cmd = [sys.executable, "-m", "nasrun", "experiment=demo", *args, f"trainer.threads={threads}"]
        cmd.append(f"hydra.run.dir={run_dir}")
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}")
    return json.loads(result.read_text())


def _skips(run_dir: Path) -> int:
    genotype = json.loads((run_dir / "genotype.json").read_text())
    return sum(1 for op, _ in genotype["normal"] if op == "skip_connect")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: " + ", ".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--random", type=int, default=3, help="random cells retrained as the baseline")
    p.add_argument("--jobs", type=int, default=2, help="runs at once (each gets cores // jobs threads)")
    p.add_argument("--out", type=Path, default=Path("outputs/compare_oneshot"))
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)} (options: {', '.join(METHODS)})")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    args.out.mkdir(parents=True, exist_ok=True)

    jobs: list[tuple[str, list[str], Path]] = []
    for method in methods:
        for seed in seeds:
            jobs.append((method, [*METHODS[method], f"seed={seed}"], args.out / f"{method}_seed{seed}"))
    space = CifarCellSpace()  # the demo's space: the DARTS cell with its 8 ops
    for i in range(args.random):
        path = args.out / f"random_cell{i}.json"
        sample_genotype(space, random.Random(i)).save(path)
        jobs.append(("random", ["task=retrain", f"genotype_path={path}", "seed=0"], args.out / f"random_{i}"))

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: _run(job[1], job[2], threads), jobs))

    summary: dict[str, dict] = {}
    for name in [*methods, "random"] if args.random else methods:
        runs = [(r, job[2]) for r, job in zip(results, jobs, strict=True) if job[0] == name]
        test = [r["test_acc"] for r, _ in runs]
        summary[name] = {
            "runs": len(runs),
            "test_acc_mean": statistics.mean(test),
            "test_acc_std": statistics.stdev(test) if len(test) > 1 else 0.0,
            "search_s_mean": statistics.mean(r["wall_s"].get("search_s", 0.0) for r, _ in runs),
            "normal_skips": [_skips(d) for _, d in runs],
            "search_epochs": [r.get("search_epochs") for r, _ in runs],
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = Table(title=f"digits, experiment=demo, seeds {args.seeds}")
    for col in ("method", "test acc (%)", "search (s)", "normal-cell skips", "search epochs"):
        table.add_column(col)
    for name, row in summary.items():
        table.add_row(
            name,
            f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f}",
            f"{row['search_s_mean']:.0f}",
            " ".join(map(str, row["normal_skips"])),
            " ".join("-" if e is None else str(e) for e in row["search_epochs"]),
        )
    Console(width=200).print(table)


if __name__ == "__main__":
    main()
