"""TensorBoard scalars beside the run folder's JSON history, for users who follow runs there.

Optional: ``trainer.tensorboard=true`` needs the ``tensorboard`` package
(``pip install nasrun[tensorboard]``); without it the run stops at once with one line, before any
training. The JSON history stays the record that resume and reports read; the event files are a
copy for viewing (``tensorboard --logdir outputs/``).
"""

from __future__ import annotations

import importlib.util
from numbers import Real
from pathlib import Path
from typing import Any

from nasrun import UserError


def require_tensorboard() -> None:
    """Raise a one-line ``UserError`` when the ``tensorboard`` package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "trainer.tensorboard=true needs the tensorboard package: pip install 'nasrun[tensorboard]' "
            "(or set trainer.tensorboard=false)"
        )


class ScalarLog:
    """Each numeric field of a history record as a scalar ``<phase>/<field>`` at step ``record[step_key]``.

    Args:
        log_dir: where the event files go (``run_dir/tensorboard``).
        phase: the scalars' prefix (``search``, ``retrain``).
        step_key: the record field that numbers the steps (``epoch``).
    """

    def __init__(self, log_dir: Path, phase: str, step_key: str = "epoch") -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.phase = phase
        self.step_key = step_key

    def append(self, record: dict[str, Any]) -> None:
        step = int(record[self.step_key])
        for key, value in record.items():
            if key != self.step_key and isinstance(value, Real) and not isinstance(value, bool):
                self.writer.add_scalar(f"{self.phase}/{key}", float(value), step)
        self.writer.flush()  # readable at once, and nothing to close when a run is killed
