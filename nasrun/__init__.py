"""nasrun: neural architecture search and Bayesian-optimisation sweeps, driven by Hydra configs."""

from __future__ import annotations

__version__ = "0.1.0"


class UserError(Exception):
    """A mistake in the user's input (config, file, data): shown as one line, without a traceback."""
