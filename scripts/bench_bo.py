"""Benchmark nasrun's BO against scrambled Sobol and Optuna's GPSampler / TPESampler.

Simple regret f(x_best) - f* after ``--budget`` evaluations, over ``--seeds`` seeds, on Branin and
Hartmann6 from ``botorch.test_functions`` (minimisation), with batches of ``q`` points. Results are
appended to ``--out`` (JSON lines) as each run ends, so a long benchmark can be split over several
invocations; runs already in the file are skipped, and the table covers every run in the file.

    python scripts/bench_bo.py --seeds 20 --budget 50 --functions branin,hartmann6 \
        --methods nasrun,sobol,optuna-gp,optuna-tpe --q 1,4 --out bench_bo.jsonl

Optuna is a dev extra (``pip install optuna``); its methods are skipped when it is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from botorch.test_functions import Branin, Hartmann, SyntheticTestFunction
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.console import Console
from rich.table import Table
from torch.quasirandom import SobolEngine

from nasrun.bo import BayesOpt, BOSettings, Direction, ParamSpace, Real

# Runs that end above this regret are counted: on Hartmann6 they sit in a local optimum (the
# nearest one is at regret 0.12); docs/benchmarks/bo.md's target for the 75th percentile is 0.05.
STUCK = 0.05

# BOSettings overrides from --set (e.g. explore_fraction=0.5), for ablations.
NASRUN_SETTINGS: dict[str, Any] = {}

FUNCTIONS: dict[str, Callable[[], SyntheticTestFunction]] = {
    "branin": Branin,
    "hartmann6": lambda: Hartmann(dim=6),
}


def parse_settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides of ``BOSettings``, typed and checked by OmegaConf against its fields.

    Values are converted as the sweeper's config would convert them (``acquisition=ucb`` becomes
    ``Acquisition.ucb``, ``noisy=true`` a bool); a bad key or value exits with one line naming it.
    """
    schema = OmegaConf.structured(BOSettings)
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or key not in BOSettings.__dataclass_fields__:
            raise SystemExit(f"--set {item}: expected KEY=VALUE with KEY a BOSettings field")
        try:
            merged = OmegaConf.merge(schema, OmegaConf.from_dotlist([item]))
        except OmegaConfBaseException as e:
            raise SystemExit(f"--set {item}: {str(e).splitlines()[0]}") from None
        overrides[key] = getattr(OmegaConf.to_object(merged), key)
    return overrides


def evaluate(f: SyntheticTestFunction, x: list[float]) -> float:
    """f at one point given in f's own coordinates (``d`` floats)."""
    return float(f(torch.tensor([x], dtype=torch.float64)).item())


def run_nasrun(
    f: SyntheticTestFunction, seed: int, budget: int, q: int, points: list[list[float]] | None = None
) -> tuple[list[float], list[float]]:
    """Values in evaluation order, and seconds per proposed point of each model-based ask.

    ``points``, when given, receives the evaluated points in the same order (``docs/benchmarks/bo_basins.py``).
    """
    lo, hi = f.bounds.tolist()
    space = ParamSpace([Real(f"x{i}", lo[i], hi[i]) for i in range(f.dim)])
    settings = BOSettings(direction=Direction.minimize, seed=seed, **NASRUN_SETTINGS)
    bo = BayesOpt(space, settings, budget=budget)
    values, seconds = [], []
    while len(values) < budget:
        n = min(q, budget - len(values))
        start = time.perf_counter()
        trials = bo.ask(n)
        if len(values) >= bo.n_initial:
            seconds.append((time.perf_counter() - start) / n)
        for t in trials:
            x = [t.params[f"x{i}"] for i in range(f.dim)]
            values.append(evaluate(f, x))
            bo.tell(t.id, values[-1])
            if points is not None:
                points.append(x)
    return values, seconds


def run_sobol(f: SyntheticTestFunction, seed: int, budget: int, q: int) -> tuple[list[float], list[float]]:
    lo, hi = f.bounds
    u = SobolEngine(f.dim, scramble=True, seed=seed).draw(budget, dtype=torch.float64)
    return [evaluate(f, x) for x in (lo + u * (hi - lo)).tolist()], []


def run_optuna(
    kind: str,
) -> Callable[[SyntheticTestFunction, int, int, int], tuple[list[float], list[float]]]:
    def run(f: SyntheticTestFunction, seed: int, budget: int, q: int) -> tuple[list[float], list[float]]:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = (
            optuna.samplers.GPSampler(seed=seed) if kind == "gp" else optuna.samplers.TPESampler(seed=seed)
        )
        study = optuna.create_study(direction="minimize", sampler=sampler)
        lo, hi = f.bounds.tolist()
        values, seconds = [], []
        while len(values) < budget:
            n = min(q, budget - len(values))
            start = time.perf_counter()
            trials = [study.ask() for _ in range(n)]
            xs = [[t.suggest_float(f"x{i}", lo[i], hi[i]) for i in range(f.dim)] for t in trials]
            if len(values) >= 10:  # GPSampler's n_startup_trials
                seconds.append((time.perf_counter() - start) / n)
            for t, x in zip(trials, xs, strict=True):
                values.append(evaluate(f, x))
                study.tell(t, values[-1])
        return values, seconds

    return run


METHODS = {
    "nasrun": run_nasrun,
    "sobol": run_sobol,
    "optuna-gp": run_optuna("gp"),
    "optuna-tpe": run_optuna("tpe"),
}


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def table(rows: list[dict], budget: int) -> Table:
    t = Table(title=f"Simple regret after {budget} evaluations (lower is better)")
    stuck = f"> {STUCK}"
    for col in (
        "function",
        "q",
        "method",
        "seeds",
        "median",
        "25%",
        "75%",
        stuck,
        "s/proposal",
        "s/proposal@end",
    ):
        t.add_column(col, justify="left" if col in ("function", "method") else "right")
    keys = sorted(
        {(r["function"], r["q"], r["method"]) for r in rows},
        key=lambda k: (k[0], k[1], list(METHODS).index(k[2])),
    )
    for fn, q, method in keys:
        runs = [r for r in rows if (r["function"], r["q"], r["method"]) == (fn, q, method)]
        regrets = [r["regret"] for r in runs]
        q1, med, q3 = quartiles(regrets)
        sec = [s for r in runs for s in r["seconds"]]
        end = [r["seconds"][-1] for r in runs if r["seconds"]]
        t.add_row(
            fn,
            str(q),
            method,
            str(len(runs)),
            f"{med:.4f}",
            f"{q1:.4f}",
            f"{q3:.4f}",
            str(sum(r > STUCK for r in regrets)),
            f"{statistics.median(sec):.2f}" if sec else "-",
            f"{statistics.median(end):.2f}" if end else "-",
        )
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=20, help="seeds 0 .. N-1 (the published tables use 20)")
    p.add_argument("--seed-offset", type=int, default=0, help="first seed, to split a run over processes")
    p.add_argument("--budget", type=int, default=50, help="evaluations per run (the published tables use 50)")
    p.add_argument("--functions", default="branin,hartmann6")
    p.add_argument("--methods", default="nasrun,sobol,optuna-gp,optuna-tpe")
    p.add_argument("--q", default="1,4", help="batch sizes")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench_bo.jsonl"),
        help="results, appended; runs already there are skipped",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fair and fastest for small GPs)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a BOSettings field for nasrun's runs, e.g. explore_fraction=0 or acquisition=ucb (ablations; use another --out)",
    )
    args = p.parse_args()
    NASRUN_SETTINGS.update(parse_settings(args.set))
    torch.set_num_threads(args.threads)
    console = Console()
    done = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    have = {(r["function"], r["method"], r["q"], r["seed"], r["budget"]) for r in done}
    for fn in args.functions.split(","):
        f = FUNCTIONS[fn]()
        for q in map(int, args.q.split(",")):
            for method in args.methods.split(","):
                for seed in range(args.seed_offset, args.seed_offset + args.seeds):
                    if (fn, method, q, seed, args.budget) in have:
                        continue
                    try:
                        values, seconds = METHODS[method](f, seed, args.budget, q)
                    except ImportError as e:
                        console.print(f"[yellow]skipping {method}: {e}")
                        break
                    row = {
                        "function": fn,
                        "method": method,
                        "q": q,
                        "seed": seed,
                        "budget": args.budget,
                        "regret": min(values) - f.optimal_value,
                        "seconds": seconds,
                    }
                    with args.out.open("a") as out:
                        out.write(json.dumps(row) + "\n")
                    done.append(row)
                    console.print(f"{fn} q={q} {method} seed={seed}: regret {row['regret']:.4f}")
    console.print(table([r for r in done if r["budget"] == args.budget], args.budget))


if __name__ == "__main__":
    main()
