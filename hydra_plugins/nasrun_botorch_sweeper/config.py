"""Typed config of ``hydra/sweeper=botorch``; a misspelt key or a wrong type fails at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from nasrun.bo.settings import BOSettings


# Optional/Dict rather than "X | None"/"dict": OmegaConf 2.3 reads these annotations.
@dataclass
class BoTorchSweeperConf(BOSettings):
    """``hydra.sweeper`` for BoTorch sweeps: the engine's ``BOSettings`` plus the sweep's own keys."""

    _target_: str = "hydra_plugins.nasrun_botorch_sweeper.botorch_sweeper.BoTorchSweeper"
    # Total trials of the sweep, counted across resumes, failed trials included (Optuna sweeper: 20).
    n_trials: int = 20
    # Trials per launcher batch, chosen jointly (1: fully sequential BO, the most sample-efficient).
    batch_size: int = 1
    # Key of the objective when the task returns a dict; None means the task returns a number.
    objective: str | None = None
    # Stop once more than this fraction of n_trials has failed (ours; Optuna's 0.0 stops at the first).
    max_failure_rate: float = 0.25
    # SQLite trial store; None means <hydra.sweep.dir>/trials.sqlite, which is what makes resume work.
    storage: str | None = None
    # Search space in Hydra's override grammar, e.g. {trainer.lr: "tag(log, interval(1e-4, 0.1))"}.
    # An empty mapping rather than None, so that command-line keys can be added under it.
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="botorch", node=BoTorchSweeperConf, provider="nasrun_botorch_sweeper"
)
