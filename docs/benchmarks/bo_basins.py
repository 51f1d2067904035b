"""Which Hartmann6 basin each evaluation of nasrun's BO falls in: why runs end in the local optimum.

Hartmann6 (minimised on the unit cube) has its global minimum, -3.3224, and a local one, -3.2032
(regret 0.12), far apart. For every evaluated point this script runs L-BFGS-B on the true function
from that point and labels the point by where it ends: ``G`` global basin, ``L`` local basin, ``o``
elsewhere; upper case when the point's own value is below -0.5 (off the plateau), lower case
otherwise. One line per run, e.g. ``seed 0: regret 0.1204 LgggLggll...LLLL``, then a summary of the
runs that ended above ``--stuck``. Settings as in ``bench_bo.py`` (``--set KEY=VALUE``).
``--uniform N`` instead reports how much of the cube lies off the plateau, and in which basin.

It imports ``scripts/bench_bo.py`` (found from this file's place in the repository). The commands
behind docs/benchmarks/bo.md:

    python docs/benchmarks/bo_basins.py --seeds 0,3,17 --q 1 --out basins.jsonl
    python docs/benchmarks/bo_basins.py --uniform 20000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from botorch.test_functions import Hartmann
from rich.console import Console
from scipy.optimize import minimize

# The BO runs and the settings parser are the benchmark's own, in scripts/bench_bo.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
from bench_bo import NASRUN_SETTINGS, evaluate, parse_settings, run_nasrun  # noqa: E402

GLOBAL_BELOW = -3.3  # the global minimum is -3.3224
LOCAL_BELOW = -3.1  # the local one is -3.2032
OFF_PLATEAU = -0.5


def basin(f: Hartmann, x: list[float]) -> str:
    """``G``, ``L`` or ``o``: where a local descent of ``f`` from ``x`` ends."""
    end = minimize(lambda z: evaluate(f, z.tolist()), x, bounds=[(0.0, 1.0)] * len(x), method="L-BFGS-B").fun
    return "G" if end < GLOBAL_BELOW else "L" if end < LOCAL_BELOW else "o"


def label(f: Hartmann, x: list[float], value: float) -> str:
    """``basin``'s letter, lower case when ``value`` is on the plateau."""
    b = basin(f, x)
    return b if value < OFF_PLATEAU else b.lower()


def labels(f: Hartmann, points: list[list[float]], values: list[float]) -> str:
    return "".join(label(f, x, v) for x, v in zip(points, values, strict=True))


def uniform_shares(f: Hartmann, n: int, seed: int = 0) -> dict[float, tuple[float, float]]:
    """For ``n`` uniform points (``torch.rand``): per threshold (-1 and -0.5), the share of points
    below it and, of those, the share that drains to the global minimum."""
    torch.manual_seed(seed)
    U = torch.rand(n, f.dim, dtype=torch.float64)
    values = f(U)
    off = torch.where(values < OFF_PLATEAU)[0].tolist()
    global_basin = {i: basin(f, U[i].tolist()) == "G" for i in off}
    shares = {}
    for threshold in (-1.0, OFF_PLATEAU):
        below = [i for i in off if values[i] < threshold]
        shares[threshold] = (len(below) / n, sum(global_basin[i] for i in below) / max(len(below), 1))
    return shares


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--budget", type=int, default=50)
    p.add_argument("--q", type=int, default=1)
    p.add_argument("--stuck", type=float, default=0.05, help="regret above which a run counts as stuck")
    p.add_argument("--out", type=Path, help="JSON lines: seed, regret, labels, values (appended)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a BOSettings field")
    p.add_argument(
        "--uniform",
        type=int,
        metavar="N",
        help="instead: how much of N uniform points lies off the plateau, per basin",
    )
    args = p.parse_args()
    NASRUN_SETTINGS.update(parse_settings(args.set))
    torch.set_num_threads(1)
    console = Console()
    f = Hartmann(dim=6)
    if args.uniform:
        for threshold, (below, global_share) in uniform_shares(f, args.uniform).items():
            console.print(
                f"{below:.1%} of {args.uniform} uniform points are below {threshold}; "
                f"{global_share:.1%} of those drain to the global minimum",
                highlight=False,
            )
        return
    stuck = []
    for seed in (int(s) for s in args.seeds.split(",")):
        points: list[list[float]] = []
        values, _ = run_nasrun(f, seed, args.budget, args.q, points)
        row = {
            "seed": seed,
            "regret": min(values) - f.optimal_value,
            "labels": labels(f, points, values),
            "values": values,
        }
        console.print(f"seed {seed}: regret {row['regret']:.4f} {row['labels']}", highlight=False)
        if args.out:
            with args.out.open("a") as out:
                out.write(json.dumps(row) + "\n")
        if row["regret"] > args.stuck:
            stuck.append(row)
    # Runs whose best point drains to the local minimum, and what they saw of the global basin.
    in_local = [r for r in stuck if r["labels"][r["values"].index(min(r["values"]))] == "L"]
    if in_local:
        last_g = [max((i for i, c in enumerate(r["labels"]) if c in "Gg"), default=-1) for r in in_local]
        best_g = [
            min((v for c, v in zip(r["labels"], r["values"], strict=True) if c in "Gg"), default=0.0)
            for r in in_local
        ]
        console.print(
            f"{len(in_local)} of {len(stuck)} runs above {args.stuck} end in the local basin. Their last evaluation in the "
            f"global basin: trial {statistics.median(last_g)} (median, from 0); the best value they saw there: "
            f"{statistics.median(best_g):.2f} (median)",
            highlight=False,
        )


if __name__ == "__main__":
    main()
