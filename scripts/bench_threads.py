#!/usr/bin/env python
"""Time concurrent nasrun runs with ``trainer.threads`` at all cores and at ``auto``.

Each repeat runs, one after another: one run alone (the baseline; ``auto`` gives it every core),
the same run with one thread, then N runs at once as a Hydra joblib multirun
(``hydra/launcher=joblib hydra.launcher.n_jobs=N``) with ``auto`` (each run takes cores / N
threads), then the same multirun with ``trainer.threads=<cores>`` (every run takes every core, as
independent runs did before ``trainer.threads``). Every run is a real ``python -m nasrun`` run in its own temporary folder, by
default ``experiment=smoke search.epochs=2 retrain.enabled=false`` with seeds 0..N-1. The time of
a run is its search phase's wall time from its ``result.json``. Prints a table: median time per
run over all runs and repeats, and the slowdown concurrent / alone. ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` are removed from the runs' environment (``auto`` would use them). For
performance work, not a test.

    python scripts/bench_threads.py [--runs 2] [--repeats 3] [--epochs 2] [-- OVERRIDE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from nasrun.train.threads import ENV_VARS, available_cores


def run_nasrun(args: list[str], cwd: Path) -> tuple[float, list[int]]:
    """Run ``python -m nasrun ARGS``; return its wall time and the thread counts its runs reported."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "nasrun", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"bench_threads: nasrun {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return wall, [int(n) for n in re.findall(r"\bthreads (\d+)", proc.stdout)]


def search_seconds(run_dir: Path) -> float:
    """The search phase's wall time, from the run's ``result.json``."""
    result = json.loads((run_dir / "result.json").read_text())
    return float(result["wall_s"]["search_s"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", type=int, default=2, help="runs at once (joblib n_jobs); default 2")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the three measurements; default 3")
    p.add_argument("--epochs", type=int, default=2, help="search epochs per run; default 2")
    p.add_argument("--cores", type=int, default=available_cores(), help="threads of the 'all cores' setting")
    p.add_argument(
        "overrides",
        nargs="*",
        default=["experiment=smoke", "retrain.enabled=false"],
        help="nasrun overrides of every run (after --); default: experiment=smoke retrain.enabled=false",
    )
    args = p.parse_args(argv)
    if args.runs < 2 or args.repeats < 1 or args.epochs < 1:
        raise SystemExit("bench_threads: need --runs >= 2, --repeats >= 1, --epochs >= 1")
    base = [*args.overrides, f"search.epochs={args.epochs}"]
    seeds = ",".join(str(s) for s in range(args.runs))
    multirun = ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.runs}", f"seed={seeds}"]
    # (runs at once, trainer.threads): the overrides that start them
    settings: dict[tuple[int, str], list[str]] = {
        (1, "auto"): ["seed=0"],
        (1, "1"): ["seed=0", "trainer.threads=1"],
        (args.runs, "auto"): [*multirun, "trainer.threads=auto"],
        (args.runs, f"{args.cores} (all cores)"): [*multirun, f"trainer.threads={args.cores}"],
    }
    times: dict[tuple[int, str], list[float]] = {key: [] for key in settings}
    walls: dict[tuple[int, str], list[float]] = {key: [] for key in settings}
    threads: dict[tuple[int, str], set[int]] = {key: set() for key in settings}
    console = Console(width=None if sys.stdout.isatty() else 120)  # a log's 80 columns wrap the table
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        for rep in range(args.repeats):
            for i, ((runs, setting), extra) in enumerate(settings.items()):
                out = Path(tmp) / f"{rep}-{i}"
                where = f"hydra.sweep.dir={out}" if runs > 1 else f"hydra.run.dir={out}"
                mode = ["-m"] if runs > 1 else []  # before the overrides
                wall, reported = run_nasrun([*mode, *base, *extra, where], cwd=Path(tmp))
                dirs = [out / str(j) for j in range(runs)] if runs > 1 else [out]
                times[runs, setting] += [search_seconds(d) for d in dirs]
                walls[runs, setting].append(wall)
                threads[runs, setting].update(reported)
                console.print(
                    f"repeat {rep + 1}/{args.repeats}, {runs} at once, trainer.threads={setting}: search "
                    f"{', '.join(f'{search_seconds(d):.1f}' for d in dirs)} s, command {wall:.1f} s, "
                    f"threads {sorted(set(reported))}",
                    soft_wrap=True,
                )

    alone = statistics.median(times[1, "auto"])
    table = Table(title=f"{args.runs} runs at once vs one alone ({available_cores()} cores available)")
    columns = ("runs at once", "trainer.threads", "threads per run", "search s per run", "command s")
    for col in (*columns, "vs alone", "vs alone / N"):
        table.add_column(col, justify="right")
    for (runs, setting), values in times.items():
        ratio = statistics.median(values) / alone
        table.add_row(
            str(runs),
            setting,
            ",".join(str(t) for t in sorted(threads[runs, setting])),
            f"{statistics.median(values):.1f}",
            f"{statistics.median(walls[runs, setting]):.1f}",
            f"{ratio:.2f}",
            "-" if runs == 1 else f"{ratio / runs:.2f}",
        )
    console.print(table)
    console.print(
        f"Medians over {args.repeats} repeats (and over the runs of each multirun); baseline: 1 at once, "
        "trainer.threads=auto. 'vs alone / N' above 1: the runs slow each other more than N-fold, "
        "worse than running them one after another.",
        soft_wrap=True,
    )


if __name__ == "__main__":
    sys.exit(main())
