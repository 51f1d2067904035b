"""Compare the black-box strategies on a NAS-Bench-201 table over many seeds.

For each strategy (its conf/search/<name>.yaml defaults) and each seed, run a search of
``--budget`` queries through nasrun's own search loop and record the test accuracy of the
best-by-validation architecture found; print mean ± std (and the standard error) per strategy,
next to the oracle (the best-validation architecture of the whole table).

    python scripts/bench_nb201.py --table nb201_cifar10_12ep --budget 100 --seeds 30
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from nasrun.config import config_dir
from nasrun.console import get_console
from nasrun.evaluator.tabular import TabularEvaluator
from nasrun.search.base import SearchContext
from nasrun.space.nb201 import NB201Space

STRATEGIES = ["random_search", "evolution", "reinforce", "pnas", "bo"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--table",
        required=True,
        help="a shipped table's name (nb201_cifar10_12ep) or a CSV with arch,val_acc,test_acc",
    )
    parser.add_argument("--budget", type=int, default=100, help="queries per search")
    parser.add_argument("--seeds", type=int, default=30, help="seeds 0..N-1 per strategy")
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: threads only add overhead (and contention)

    console = get_console()
    evaluator = TabularEvaluator(args.table)
    oracle_arch, oracle = evaluator.oracle()
    results: dict[str, list[float]] = {}
    for name in args.strategies:
        cfg = OmegaConf.load(config_dir() / "search" / f"{name}.yaml")
        cfg.budget = args.budget
        factory = instantiate(cfg)
        t0, accs = time.perf_counter(), []
        for seed in range(args.seeds):
            with tempfile.TemporaryDirectory() as tmp:
                space = NB201Space()
                ctx = SearchContext(space=space, run_dir=Path(tmp), seed=seed, evaluator=evaluator)
                console.quiet = True  # one line per strategy, not one progress bar per search
                try:
                    result = factory(space=space, seed=seed).run(ctx)
                finally:
                    console.quiet = False
            accs.append(float(result.metrics["search_test_acc"]))
        results[name] = accs
        console.print(f"{name}: {_fmt(accs)}  ({time.perf_counter() - t0:.0f} s)")

    # Plain print: a Markdown table for the README, never wrapped to the terminal's width.
    print(f"\n{args.table}: budget {args.budget}, {args.seeds} seeds")
    print("test accuracy (%) of the best-by-validation architecture found\n")
    print("| strategy | mean ± std | std. error |")
    print("|---|---|---|")
    for name, accs in results.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {name} | {statistics.mean(accs):.2f} ± {sd:.2f} | {sd / len(accs) ** 0.5:.2f} |")
    print(f"| oracle (best validation in the table) | {oracle.test_acc:.2f} | - |")
    print(f"\noracle: {oracle_arch} (val {oracle.val_acc:.3f})")


def _fmt(accs: list[float]) -> str:
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    return f"{statistics.mean(accs):.2f} ± {sd:.2f} (se {sd / len(accs) ** 0.5:.2f})"


if __name__ == "__main__":
    main()
