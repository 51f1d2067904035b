"""What a sweep shows and leaves behind: a rich progress bar, a table of trials, and result files.

Files in the sweep folder: ``optimization_results.yaml`` (Hydra's convention: best parameters and
value; counts, pruned trials and the epochs pruning saved), ``trials.txt`` (the table of trials as
printed) and ``convergence.png`` (best value so far against trials).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nasrun.bo import Direction, ParamSpace, Trial, TrialState
from nasrun.console import get_console
from nasrun.plots.history import plot_trials
from nasrun.run_folder import write_text_atomic

#: Width of ``trials.txt``: a file has no terminal to fit, so the table keeps its natural width.
FILE_WIDTH = 1000


@contextlib.contextmanager
def progress(total: int, done: int) -> Iterator[Callable[[int, Trial | None], None]]:
    """A progress bar over the trial budget; yields ``advance(n_ended, best_trial)``.

    ``n_ended`` counts the ended trials of every worker sharing the store.
    """
    columns = (
        TextColumn("[bold]BoTorch sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=get_console(), transient=True) as bar:
        task = bar.add_task("", total=total, completed=done)

        def advance(n: int, best: Trial | None) -> None:
            bar.update(task, completed=n, description="" if best is None else f"best {best.value:.6g}")

        yield advance


def table(trials: list[Trial], best: Trial | None, names: list[str]) -> Table:
    """A rich table with one row per trial; the best one in bold green, pruned ones dim.

    ``epoch`` is the last epoch a trial's job reported (where a PRUNED trial stopped), empty for
    tasks that do not report.
    """
    t = Table(title="BoTorch sweep", show_lines=False)
    right = ("trial", "job", "value", "epoch", "seconds")
    for col in ("trial", "job", "state", "value", "epoch", *names, "seconds", "error"):
        # Folded, not cut with an ellipsis, where a narrow terminal squeezes a column.
        t.add_column(col, justify="right" if col in right else "left", overflow="fold")
    styles = {TrialState.FAILED: "red", TrialState.PRUNED: "dim"}
    for tr in trials:
        style = "bold green" if best is not None and tr.id == best.id else styles.get(tr.state)
        t.add_row(
            str(tr.id),
            "" if tr.job is None else str(tr.job),
            tr.state.value,
            "" if tr.value is None else f"{tr.value:.6g}",
            "" if tr.epoch is None else str(tr.epoch),
            *(
                f"{tr.params.get(n):.4g}" if isinstance(tr.params.get(n), float) else str(tr.params.get(n))
                for n in names
            ),
            "" if tr.wall_time is None else f"{tr.wall_time:.1f}",
            tr.error or "",
            style=style,
        )
    return t


def epochs_saved(trials: list[Trial], max_epochs: int | None) -> tuple[int | None, int]:
    """``(epochs of a full trial, epochs the pruned trials did not run)``.

    A full trial runs ``max_epochs``, or, when that is unknown, as many epochs as the longest
    completed trial reported; ``(None, 0)`` if neither is known.
    """
    full = max_epochs or max(
        (t.epoch for t in trials if t.state is TrialState.COMPLETED and t.epoch is not None), default=None
    )
    if full is None:
        return None, 0
    return full, sum(full - t.epoch for t in trials if t.state is TrialState.PRUNED and t.epoch is not None)


def write_results(
    sweep_dir: Path,
    space: ParamSpace,
    trials: list[Trial],
    best: Trial | None,
    direction: Direction,
    max_epochs: int | None = None,
) -> None:
    """Prints the table and writes ``trials.txt``, ``optimization_results.yaml`` and ``convergence.png``.

    Args:
        sweep_dir: The sweep folder.
        space: The search space (the table's parameter columns).
        trials: Every trial.
        best: The best completed trial.
        direction: The sweep's direction.
        max_epochs: Epochs of a trial that is not pruned, if known (for the epochs saved).
    """
    sweep_dir.mkdir(parents=True, exist_ok=True)
    console = get_console()
    summary = table(trials, best, space.names)
    console.print(summary)
    text = _plain(summary)
    write_text_atomic(sweep_dir / "trials.txt", text)
    results: dict[str, Any] = {
        "name": "botorch",
        "direction": Direction(direction).value,
        "best_params": None if best is None else best.params,
        "best_value": None if best is None else best.value,
        "best_trial": None if best is None else best.id,
        "n_trials": len(trials),
        "n_completed": sum(t.state is TrialState.COMPLETED for t in trials),
        "n_failed": sum(t.state is TrialState.FAILED for t in trials),
        "n_pruned": sum(t.state is TrialState.PRUNED for t in trials),
    }
    full, saved = epochs_saved(trials, max_epochs)
    if full is not None:
        pruned = [t for t in trials if t.state is TrialState.PRUNED]
        # Epochs the pruned trials would have run to the end, and the share of all trials' epochs.
        results["epochs_saved"] = saved
        results["epochs_saved_fraction"] = round(saved / (full * len(trials)), 4) if trials else 0.0
        results["epochs_per_trial"] = full
        results["pruned_at_epochs"] = [t.epoch for t in pruned]
    yaml = OmegaConf.to_yaml(OmegaConf.create(results))
    write_text_atomic(sweep_dir / "optimization_results.yaml", yaml)
    plot_trials(trials, sweep_dir / "convergence.png", Direction(direction).value)
    if best is not None:
        console.print(f"best value {best.value:.6g} at trial {best.id}: {best.params}", soft_wrap=True)
    if results["n_pruned"]:
        console.print(f"{results['n_pruned']} trials pruned, {saved} epochs saved", soft_wrap=True)


def _plain(renderable: Table) -> str:
    """``renderable`` as plain text (no colours or styles), at its natural width."""
    buf = io.StringIO()
    Console(file=buf, width=FILE_WIDTH, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()
