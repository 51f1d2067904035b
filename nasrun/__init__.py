"""nasrun: neural architecture search and Bayesian-optimisation sweeps, driven by Hydra configs."""

from __future__ import annotations

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input (config, file, data): shown as one line, without a traceback."""


class StoppedWithFirstProcess(Exception):
    """A data-parallel run's other processes end with this when its first process stopped the run.

    Only the first process writes and reports (to a sweep's pruner, say); when it stops early, the
    others leave the run quietly with it and return no results.
    """
