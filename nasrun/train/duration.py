"""A phase's expected duration, measured on its first steps, announced before the user waits for it.

The papers' defaults (600 retraining epochs of a 20-cell network, 50 DARTS search epochs) are hours
on a GPU and days on a CPU. A run that long must say so at once, not after the first epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.markup import escape

from nasrun.console import get_console

#: Phases expected to take longer than this get a warning with the way to shorten them.
LONG_S = 30 * 60.0


def format_duration(seconds: float) -> str:
    """``42 s``, ``13 min``, ``5.2 h``, ``3.1 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class DurationCheck:
    """Times a phase's first training steps and warns once if the phase will take long.

    Call ``step()`` after every training step; it costs nothing once the estimate is made. The
    first ``skip`` steps are not timed (they include one-off work: memory allocation, kernel
    selection), then ``measure`` steps are.

    Args:
        phase: the phase's name, as printed (``search``, ``retrain``).
        steps_per_epoch: training steps in one epoch.
        epochs: epochs still to run in this process.
        hint: how to shorten the phase (config keys), printed with the warning.
        device: the device's name, printed with the warning.
        sync: waits for the device's queued work (CUDA runs asynchronously); ``None`` on the CPU.
        long_s: the duration above which the phase is announced (default ``LONG_S``).
        skip: steps before the timing starts.
        measure: steps timed.
    """

    def __init__(
        self,
        phase: str,
        steps_per_epoch: int,
        epochs: int,
        hint: str,
        device: str = "cpu",
        sync: Callable[[], None] | None = None,
        long_s: float | None = None,
        skip: int = 1,
        measure: int = 3,
    ) -> None:
        self.phase = phase
        self.total_steps = steps_per_epoch * epochs
        self.epochs = epochs
        self.hint = hint
        self.device = device
        self.sync = sync
        self.long_s = LONG_S if long_s is None else long_s
        self.skip = skip
        self.measure = measure
        self.steps = 0
        self.t0 = 0.0
        self.estimate_s: float | None = None

    def step(self) -> None:
        """Count one training step; after the timed steps, estimate and maybe warn."""
        if self.estimate_s is not None:
            return
        self.steps += 1
        if self.steps == self.skip:
            if self.sync is not None:
                self.sync()
            self.t0 = time.perf_counter()
        elif self.steps == self.skip + self.measure:
            if self.sync is not None:
                self.sync()
            per_step = (time.perf_counter() - self.t0) / self.measure
            self.estimate_s = per_step * self.total_steps
            if self.estimate_s > self.long_s:
                get_console().print(
                    f"[yellow]warning:[/] {escape(self.message(per_step))}", soft_wrap=True, highlight=False
                )

    def message(self, per_step: float) -> str:
        """The warning for an estimate of ``per_step`` seconds a step."""
        assert self.estimate_s is not None
        return (
            f"{self.phase} will take about {format_duration(self.estimate_s)} on {self.device} "
            f"({self.epochs} epochs of {self.total_steps // max(self.epochs, 1)} steps, {per_step * 1e3:.0f} ms a step; "
            f"training only); to make it short: {self.hint}"
        )
