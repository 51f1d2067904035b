"""The PNG figures a run writes.

``history``: convergence curves, a sweep's trials and architecture-weight heatmaps (which
``nasrun-report`` also draws from run folders); ``cell_diagram``: a genotype's cells.

matplotlib is imported inside the functions so that ``import nasrun`` stays fast for commands that
never draw. Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas directly, which
needs no global backend and so cannot disturb a caller that chose one (or a headless worker that has
no display). Every PNG is written with ``save_png`` (``nasrun.run_folder.atomic_write``), so a
reader (or a crash) never sees half an image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nasrun.run_folder import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write the figure as PNG atomically (``nasrun.run_folder.atomic_write``)."""
    return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
