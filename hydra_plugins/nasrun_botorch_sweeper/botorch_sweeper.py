"""The ``Sweeper`` Hydra discovers; it defers everything to ``_core`` so discovery stays light."""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from .config import BoTorchSweeperConf


class BoTorchSweeper(Sweeper):
    """Bayesian-optimisation sweeper; its keyword arguments are the fields of ``BoTorchSweeperConf``."""

    def __init__(self, **config: Any) -> None:
        # Imported here, not at module level: discovery (e.g. `nasrun --help`) must not import BoTorch.
        from nasrun.bo import ignore_import_warnings

        ignore_import_warnings()  # again, here: a caller may have reset the filters since
        from ._core import BoTorchSweeperImpl

        self._impl = BoTorchSweeperImpl(BoTorchSweeperConf(**config))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Builds the launcher; see ``BoTorchSweeperImpl.setup``."""
        self._impl.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        """Runs (or resumes) the sweep; see ``BoTorchSweeperImpl.sweep``.

        A user mistake (bad search space, too many failed trials) ends the process with one line
        on stderr and exit status 2: Hydra would otherwise print it under a traceback.
        """
        from nasrun import UserError

        try:
            return self._impl.sweep(arguments)
        except UserError as e:
            print(f"nasrun: error: {e}", file=sys.stderr)
            sys.exit(2)
