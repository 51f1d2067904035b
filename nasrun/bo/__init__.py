"""Bayesian optimisation on BoTorch: parameter spaces, a trial store (SQLite, PostgreSQL) and an ask/tell engine.

``BayesOpt`` (and with it torch and BoTorch) is imported on first use, so that reading a parameter
space or a store stays light; the Hydra sweeper validates its input before any heavy import.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from nasrun.bo.settings import Acquisition, BOSettings, Direction, Exploration, Kernel, ModelKind
from nasrun.bo.space import (
    Categorical,
    Integer,
    ParamSpace,
    ParamSpaceError,
    Real,
    parse_overrides,
    prepare_sweeper_args,
)
from nasrun.bo.store import Trial, TrialState, TrialStore

if TYPE_CHECKING:
    from nasrun.bo.engine import BayesOpt

__all__ = [
    "Acquisition",
    "BOSettings",
    "BayesOpt",
    "Categorical",
    "Direction",
    "Exploration",
    "Integer",
    "Kernel",
    "ModelKind",
    "ParamSpace",
    "ParamSpaceError",
    "Real",
    "Trial",
    "TrialState",
    "TrialStore",
    "parse_overrides",
    "prepare_sweeper_args",
]


def ignore_import_warnings() -> None:
    """Silence the deprecation warning that importing GPyTorch triggers, and only that one.

    Its ``linear_operator`` dependency decorates functions with ``torch.jit.script`` at import,
    and torch warns about that on stderr, two lines in every sweep and every ``search=bo`` run
    that a user can do nothing about. The filter matches that message from that torch module
    only, so the same deprecation caused by other code is still shown.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`torch\.jit\.script` is deprecated",
        category=FutureWarning,
        module=r"torch\.jit\._script",
    )


# Installed on import of this package, which every import of the BoTorch glue (``engine``,
# ``_model``, ``_acquisition``, ``_optimize``, ``_explore``) and the sweeper goes through first.
ignore_import_warnings()


def __getattr__(name: str) -> Any:
    if name == "BayesOpt":
        from nasrun.bo.engine import BayesOpt

        return BayesOpt
    raise AttributeError(f"module 'nasrun.bo' has no attribute {name!r}")
