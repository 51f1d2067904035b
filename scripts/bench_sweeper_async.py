"""Hydra batches against asynchronous workers, and what pruning saves, on a sleep-based toy sweep.

The toy is ``tests/bo/app/curves_app.py``: known learning curves, a planted bad learning-rate
region, and epochs that sleep ``epoch_seconds * (0.2 + 1.8 * width)``, so trials last from 0.2 to
2 times the mean. Every configuration runs the same sweep (``--trials`` trials, ``--slots`` at a
time, BoTorch proposals after 5 Sobol points) for each seed, one after the other, in one run:

* ``batches``: one sweeper, ``batch_size=slots`` through the joblib launcher (Hydra's batches: a
  batch starts when the slowest trial of the previous one has ended);
* ``async``: ``workers=slots`` sweeper processes sharing the trial store, one trial each at a time;
* ``async+median``, ``async+asha``: the same with a pruner.

Wall time is the sweep command's, from start to exit (process start-up included). Prints a
Markdown table of means over the seeds and writes one JSON line per sweep to ``--out``::

    .venv/bin/python scripts/bench_sweeper_async.py --seeds 0,1,2 --out outputs/bench_sweeper_async.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "tests" / "bo" / "app" / "curves_app.py"


def configs(slots: int) -> dict[str, list[str]]:
    """Overrides of each configuration compared."""
    return {
        "batches": [
            f"hydra.sweeper.batch_size={slots}",
            "hydra/launcher=joblib",
            f"hydra.launcher.n_jobs={slots}",
        ],
        "async": [f"hydra.sweeper.workers={slots}"],
        "async+median": [
            f"hydra.sweeper.workers={slots}",
            "hydra.sweeper.pruner=median",
            "hydra.sweeper.min_trials=3",
        ],
        "async+asha": [
            f"hydra.sweeper.workers={slots}",
            "hydra.sweeper.pruner=asha",
            "hydra.sweeper.reduction_factor=3",
        ],
    }


def run(name: str, extra: list[str], seed: int, args: argparse.Namespace) -> dict[str, object]:
    """One sweep; its wall time, best value and epochs (run and saved)."""
    sweep_dir = Path(tempfile.mkdtemp(prefix=f"bench-{name.replace('+', '-')}-"))
    command = [
        sys.executable,
        str(APP),
        "-m",
        f"hydra.sweep.dir={sweep_dir}",
        f"epoch_seconds={args.epoch_seconds}",
        f"hydra.sweeper.n_trials={args.trials}",
        "hydra.sweeper.n_initial=5",
        f"hydra.sweeper.seed={seed}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    out = subprocess.run(command, cwd=APP.parent, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{name} seed {seed} failed:\n{out.stderr[-3000:]}")
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / "optimization_results.yaml"))
    assert isinstance(results, dict)
    return {
        "config": name,
        "seed": seed,
        "wall_s": round(wall, 2),
        "best_value": results["best_value"],
        "n_trials": results["n_trials"],
        "n_pruned": results["n_pruned"],
        "epochs_saved": results.get("epochs_saved", 0),
        "epochs_total": results.get("epochs_per_trial", 0) * results["n_trials"],
        "sweep_dir": str(sweep_dir),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--epoch-seconds", type=float, default=1.5, help="mean sleep per epoch (12 epochs)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--configs", default="batches,async,async+median,async+asha")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per sweep here")
    args = parser.parse_args()
    chosen = configs(args.slots)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in args.configs.split(","):
            row = run(name, chosen[name], seed, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(
        f"\n{args.trials} trials, {args.slots} slots, seeds {args.seeds} (means; best value: higher is better)\n"
    )
    print("| configuration | wall time (s) | best value | pruned trials | epochs saved |")
    print("|---|---|---|---|---|")
    for name in args.configs.split(","):
        mine = [r for r in rows if r["config"] == name]

        def mean(key: str, mine: list[dict[str, object]] = mine) -> float:
            return statistics.mean(float(str(r[key])) for r in mine)

        saved = f"{mean('epochs_saved'):.0f} of {mean('epochs_total'):.0f}"
        print(
            f"| {name} | {mean('wall_s'):.1f} | {mean('best_value'):.2f} | {mean('n_pruned'):.1f} | {saved} |"
        )


if __name__ == "__main__":
    main()
