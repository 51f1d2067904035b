"""The ``nasrun-report`` command (also ``python -m nasrun.report``): tables and figures of runs.

``nasrun-report PATH [PATH ...]`` reads run folders, Hydra multirun folders, BoTorch sweep folders
and folders that hold them, such as ``outputs/runs`` (``nasrun.report.folders``). It prints one
table of all their runs (the overrides that differ between them, objective, accuracies,
parameters, wall time, status) and, where runs differ only by their seed, a table of each group's
mean ± standard deviation over seeds. It then writes figures: the architecture weights of a
one-shot search (``alphas_<cell type>.png``), the convergence of a black-box search and of a sweep
(``convergence.png``), into each run's folder (a multirun's or sweep's: into PATH) or below
``--out DIR``. A path that is none of these folders is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.table import Table

from nasrun import UserError
from nasrun.console import get_console
from nasrun.report.folders import DONE, Folder, Run, read_folders

PROG = "nasrun-report"

_STATUS_STYLE = {DONE: "green", "failed": "red", "pruned": "magenta"}


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point: print the tables of PATH's runs and write their figures.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Tables and figures of nasrun runs: each PATH is a run folder, a multirun folder "
            "(nasrun -m), a BoTorch sweep folder, or a folder of these (outputs/runs); the runs "
            "of several are compared in one table."
        ),
    )
    parser.add_argument("path", type=Path, nargs="+", help="the run, multirun or sweep folders")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the figures (default: each run's own folder, or PATH for a multirun or sweep)",
    )
    parser.add_argument("--no-figures", action="store_true", help="print the tables, write no figures")
    args = parser.parse_args(argv)
    try:
        folder = read_folders(args.path)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(2)
    console = get_console()
    console.print(runs_table(folder))
    for sweep in [folder] if folder.kind == "sweep" else [p for p in folder.parts if p.kind == "sweep"]:
        where = f" of {sweep.path}" if sweep is not folder else ""
        console.print(_trial_counts(sweep, where), highlight=False, soft_wrap=True)
    seeds = seed_table(folder)
    if seeds is not None:
        console.print(seeds)
    if not args.no_figures:
        out = args.out if args.out is not None else folder.path
        written = write_figures(folder, out)
        if written:
            names = ", ".join(str(p.relative_to(out)) for p in written)
            console.print(f"figures in {out}: {names}", markup=False, highlight=False, soft_wrap=True)


# --------------------------------------------------------------------------------------------
# tables


def varying_overrides(runs: Sequence[Run], ignore: Sequence[str] = ()) -> list[str]:
    """The override keys whose value differs between ``runs`` (a key some runs lack differs).

    Args:
        runs: the runs.
        ignore: keys never returned.

    Returns:
        The keys, in the order they first appear.
    """
    keys = [k for k in dict.fromkeys(k for r in runs for k in r.overrides) if k not in ignore]
    return [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]


def runs_table(folder: Folder) -> Table:
    """One row per run: the overrides that differ, objective, accuracies, size, wall time, status.

    A single run shows all its overrides in one column, as there is nothing to differ from.
    """
    runs = folder.runs
    table = Table(title=f"{folder.kind} {folder.path} ({len(runs)} run{'s' if len(runs) != 1 else ''})")
    table.add_column("run", overflow="fold")
    keys = varying_overrides(runs)
    single = len(runs) == 1
    if single:
        table.add_column("overrides", overflow="fold")
    for key in keys:
        table.add_column(key, overflow="fold")
    for name in ("objective", "val_acc", "test_acc", "params", "wall"):
        table.add_column(name, justify="right")
    table.add_column("status")
    for run in runs:
        result = run.result or {}
        over = (
            [" ".join(f"{k}={v}" for k, v in run.overrides.items())]
            if single
            else [run.overrides.get(k, "") for k in keys]
        )
        table.add_row(
            run.name,
            *over,
            _num(run.objective),
            _num(result.get("val_acc")),
            _num(result.get("test_acc")),
            "" if result.get("params") is None else f"{int(result['params']):,}",
            _duration(run.wall_s),
            run.status,
            style=_STATUS_STYLE.get(run.status),
        )
    return table


def seed_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs with a ``seed`` override grouped by all their other overrides, in order of appearance."""
    groups: dict[tuple[tuple[str, str], ...], list[Run]] = {}
    for run in runs:
        if "seed" in run.overrides:
            key = tuple(sorted((k, v) for k, v in run.overrides.items() if k != "seed"))
            groups.setdefault(key, []).append(run)
    return list(groups.values())


def seed_table(folder: Folder) -> Table | None:
    """Mean ± standard deviation over seeds of each group of runs that differ only by ``seed``.

    The standard deviation is the sample one (``n - 1`` in the denominator), over the runs of the
    group that are done and have the value. ``None`` where no two runs differ only by their seed.
    """
    groups = seed_groups(folder.runs)
    if not any(len(g) > 1 for g in groups):
        return None
    keys = varying_overrides([g[0] for g in groups], ignore=("seed",))
    table = Table(title="mean ± std over seeds")
    for key in keys:
        table.add_column(key, overflow="fold")
    table.add_column("seeds", overflow="fold")
    table.add_column("done", justify="right")
    for name in ("objective", "val_acc", "test_acc"):
        table.add_column(name, justify="right")
    for group in groups:
        done = [r for r in group if r.status == DONE]
        table.add_row(
            *(group[0].overrides.get(k, "") for k in keys),
            ", ".join(r.overrides["seed"] for r in group),
            f"{len(done)}/{len(group)}",
            mean_std([r.objective for r in done]),
            mean_std([(r.result or {}).get("val_acc") for r in done]),
            mean_std([(r.result or {}).get("test_acc") for r in done]),
        )
    return table


def mean_std(values: Sequence[float | None]) -> str:
    """``"mean ± std"`` of the values that are not ``None`` (2 decimals; the mean alone for one)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return ""
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def _trial_counts(folder: Folder, where: str = "") -> str:
    counts = collections.Counter(t.state.value.lower() for t in folder.trials)
    listed = ", ".join(f"{n} {state}" for state, n in counts.items()) or "none"
    return f"trials in the store{where} ({folder.direction}): {listed}"


def _num(value: Any) -> str:
    return "" if value is None else f"{float(value):.2f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 600:
        return f"{seconds:.1f} s"
    if seconds < 36_000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --------------------------------------------------------------------------------------------
# figures


def write_figures(folder: Folder, out: Path) -> list[Path]:
    """Write the figures of ``folder`` under ``out``; returns the files written.

    Each run's figures go to ``out`` for a single run and to ``out/<run name>`` otherwise (the
    job's number; for ``runs``, its path below ``folder.path``, so that by default each run's
    figures land in its own folder): one ``alphas_<cell type>.png`` per cell type of a one-shot
    search, ``convergence.png`` for a black-box search. A sweep adds ``convergence.png`` over its
    trials, in ``out`` (or its own folder's place below ``out``). A run whose history cannot be
    drawn is reported in one line and skipped.
    """
    written: list[Path] = []
    for run in folder.runs:
        target = out if folder.kind == "run" else out / run.name
        written += _guarded(partial(run_figures, run, target), f"run {run.name}")
    sweeps = [(folder, out)] if folder.kind == "sweep" else []
    base = folder.path.resolve()
    for part in folder.parts:
        where = part.path.resolve()
        if part.kind == "sweep" and where.is_relative_to(base):
            sweeps.append((part, out / where.relative_to(base)))
    for sweep, target in sweeps:
        if sweep.trials:
            draw = partial(_sweep_figure, sweep, target / "convergence.png")
            written += _guarded(draw, f"the sweep {sweep.path}")
    return written


def _sweep_figure(sweep: Folder, png: Path) -> list[Path]:
    """The convergence of a sweep over its trials."""
    from nasrun.plots.history import plot_trials

    return [plot_trials(sweep.trials, png, sweep.direction)]


def run_figures(run: Run, out: Path) -> list[Path]:
    """The figures of one run's history, written into ``out``; returns the files written."""
    from nasrun.plots.history import arch_weight_records, plot_arch_weights, plot_convergence

    history = run.history
    alphas = [r["alphas"] for r in history if isinstance(r.get("alphas"), dict)]
    if alphas:
        cell_types = [t for t in alphas[-1] if arch_weight_records(history, t)]
        return [plot_arch_weights(history, t, out / f"alphas_{t}.png") for t in cell_types]
    evaluations = [r for r in history if "step" in r and r.get("val_acc") is not None]
    if evaluations:
        # As the search itself draws it (nasrun.search.base).
        values = [float(r["val_acc"]) for r in evaluations]
        return [
            plot_convergence(
                values, out / "convergence.png", title="search", ylabel="validation accuracy (%)"
            )
        ]
    return []


def _guarded(draw: Callable[[], list[Path]], what: str) -> list[Path]:
    """``draw()``; a history it cannot draw (or a folder it cannot write) costs one warning line."""
    try:
        return draw()
    except (ValueError, KeyError, TypeError, IndexError, OSError) as e:
        get_console().print(f"[yellow]could not draw the figures of {what}: {e}", soft_wrap=True)
        return []
