"""What a sweep shows and leaves behind: a rich progress bar, a table of trials, and result files.

Files in the sweep folder: ``optimization_results.yaml`` (Hydra's convention: best parameters and
value), ``trials.txt`` (the table of trials as printed) and ``convergence.png`` (best value so far
against trials).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from omegaconf import OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from nasrun.bo import Direction, SearchSpace, Trial, TrialState
from nasrun.report.console import get_console
from nasrun.run_folder import atomic_write, write_text_atomic

#: Width of ``trials.txt``: a file has no terminal to fit, so the table keeps its natural width.
FILE_WIDTH = 1000


@contextlib.contextmanager
def progress(total: int, done: int) -> Iterator[Callable[[int, Trial | None], None]]:
    """A progress bar over the trial budget; yields ``advance(n_finished, best_trial)``."""
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
            bar.update(task, advance=n, description="" if best is None else f"best {best.value:.6g}")

        yield advance


def table(trials: list[Trial], best: Trial | None, names: list[str]) -> Table:
    """A rich table with one row per trial; the best one in bold green."""
    t = Table(title="BoTorch sweep", show_lines=False)
    for col in ("trial", "job", "state", "value", *names, "seconds", "error"):
        # Folded, not cut with an ellipsis, where a narrow terminal squeezes a column.
        t.add_column(
            col, justify="right" if col in ("trial", "job", "value", "seconds") else "left", overflow="fold"
        )
    for tr in trials:
        style = (
            "bold green"
            if best is not None and tr.id == best.id
            else ("red" if tr.state is TrialState.FAILED else None)
        )
        t.add_row(
            str(tr.id),
            "" if tr.job is None else str(tr.job),
            tr.state.value,
            "" if tr.value is None else f"{tr.value:.6g}",
            *(
                f"{tr.params.get(n):.4g}" if isinstance(tr.params.get(n), float) else str(tr.params.get(n))
                for n in names
            ),
            "" if tr.wall_time is None else f"{tr.wall_time:.1f}",
            tr.error or "",
            style=style,
        )
    return t


def write_results(
    sweep_dir: Path, space: SearchSpace, trials: list[Trial], best: Trial | None, direction: Direction
) -> None:
    """Prints the table and writes ``trials.txt``, ``optimization_results.yaml`` and ``convergence.png``."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    console = get_console()
    console.print(table(trials, best, space.names))
    text = _plain(table(trials, best, space.names))
    write_text_atomic(sweep_dir / "trials.txt", text)
    results = {
        "name": "botorch",
        "direction": Direction(direction).value,
        "best_params": None if best is None else best.params,
        "best_value": None if best is None else best.value,
        "best_trial": None if best is None else best.id,
        "n_trials": len(trials),
        "n_completed": sum(t.state is TrialState.COMPLETED for t in trials),
        "n_failed": sum(t.state is TrialState.FAILED for t in trials),
    }
    yaml = OmegaConf.to_yaml(OmegaConf.create(results))
    write_text_atomic(sweep_dir / "optimization_results.yaml", yaml)
    atomic_write(sweep_dir / "convergence.png", lambda f: _plot(f, trials, direction))
    if best is not None:
        console.print(f"best value {best.value:.6g} at trial {best.id}: {best.params}", soft_wrap=True)


def _plain(renderable: Table) -> str:
    """``renderable`` as plain text (no colours or styles), at its natural width."""
    buf = io.StringIO()
    Console(file=buf, width=FILE_WIDTH, color_system=None, force_terminal=False).print(renderable)
    return buf.getvalue()


def _plot(f: BinaryIO, trials: list[Trial], direction: Direction) -> None:
    """Best value so far against trial number; failed trials as red marks on the x axis."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and in CI
    import matplotlib.pyplot as plt

    better = max if Direction(direction) is Direction.maximize else min
    xs, best_so_far, seen = [], [], None
    for t in trials:
        if t.value is not None:
            seen = t.value if seen is None else better(seen, t.value)
        if seen is not None:
            xs.append(t.id)
            best_so_far.append(seen)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(xs, best_so_far, where="post", label="best so far")
    done = [(t.id, t.value) for t in trials if t.value is not None]
    ax.scatter([i for i, _ in done], [v for _, v in done], s=10, alpha=0.5, label="trial")
    failed = [t.id for t in trials if t.state is TrialState.FAILED]
    if failed:
        ax.scatter(failed, [ax.get_ylim()[0]] * len(failed), marker="x", color="red", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"objective ({Direction(direction).value})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f, format="png")
    plt.close(fig)
