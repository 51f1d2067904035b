"""The shared rich console and progress bars (one bar per phase)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Line width when stdout is not a terminal and ``COLUMNS`` is unset. rich would use 80 and
#: truncate or wrap tables in log files; a table is only as wide as its content, so a wide limit
#: pads nothing and keeps a DARTS genotype (about 250 characters) on one line of the summary.
PIPE_WIDTH = 400


@cache
def get_console() -> Console:
    """The one console every part of nasrun prints to (stderr stays free for errors).

    On a terminal rich measures its width; elsewhere (a pipe, a log file, a batch job) the width
    is ``COLUMNS`` if set, else ``PIPE_WIDTH``.
    """
    console = Console()
    if not console.is_terminal and not os.environ.get("COLUMNS", "").strip().isdigit():
        console.width = PIPE_WIDTH
    return console


@contextmanager
def progress_bar(phase: str, total: int, completed: int = 0) -> Iterator[Callable[[int, str], None]]:
    """A progress bar for one phase; yields ``advance(n, status_text)``.

    On a non-interactive terminal (CI, log files) rich prints nothing transient, so the epoch
    lines printed by the phases are what remains in the log.
    """
    progress = Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=get_console(),
        transient=False,
    )
    with progress:
        task = progress.add_task(phase, total=total, completed=completed, status="")

        def advance(n: int = 1, status: str = "") -> None:
            progress.update(task, advance=n, status=status)

        yield advance
