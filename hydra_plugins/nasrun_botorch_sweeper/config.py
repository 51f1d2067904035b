"""Typed config of ``hydra/sweeper=botorch``; a misspelt key or a wrong type fails at compose time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from nasrun.bo.pruners import PrunerKind
from nasrun.bo.settings import BOSettings


# OmegaConf checks every key against these annotations; keep to types it knows (primitives, enums,
# ``X | None``, ``dict``).
@dataclass
class BoTorchSweeperConf(BOSettings):
    """``hydra.sweeper`` for BoTorch sweeps: the engine's ``BOSettings`` plus the sweep's own keys."""

    _target_: str = "hydra_plugins.nasrun_botorch_sweeper.botorch_sweeper.BoTorchSweeper"
    # Total trials of the sweep, counted across resumes, failed trials included (Optuna sweeper: 20).
    n_trials: int = 20
    # Trials per launcher batch, chosen jointly (1: fully sequential BO, the most sample-efficient).
    batch_size: int = 1
    # The task result's key to optimise when the task returns a dict of results, as nasrun does
    # (val_acc: the retrained network's accuracy on the validation split). A task returning a plain
    # number is optimised as it is. A result without this key fails its trial and stops the sweep.
    objective: str = "val_acc"
    # Stop once more than this fraction of n_trials has failed (ours; Optuna's 0.0 stops at the first).
    max_failure_rate: float = 0.25
    # Trial store: a path or sqlite:///path (one machine), or a server's URL such as
    # postgresql://user@host/db (workers on several machines; pip install 'nasrun[postgres]').
    # None means <hydra.sweep.dir>/trials.sqlite, which is what makes resume work.
    storage: str | None = None
    # Stops trials early on their per-epoch reports: none, median (worse than the completed
    # trials' median at the same epoch) or asha (Li et al. 2020).
    pruner: PrunerKind = PrunerKind.none
    # median: first epoch compared; asha: the first rung. 1: from the first epoch on (Optuna's
    # MedianPruner starts at once, n_warmup_steps=0; Li et al. 2020 set the minimum resource r per task).
    min_epochs: int = 1
    # asha: one trial in this many goes on at each rung (Optuna's SuccessiveHalvingPruner: 4).
    reduction_factor: int = 4
    # median: completed trials needed at an epoch before anyone is compared (Optuna's MedianPruner:
    # n_startup_trials=5).
    min_trials: int = 5
    # Epochs of a trial that is not pruned; None reads the task config (nasrun: trainer.epochs, or
    # search.epochs with retrain.enabled=false). Bounds asha's rungs and counts the epochs saved.
    max_epochs: int | None = None
    # Sweeper processes sharing the store; N > 1 starts N - 1 copies of this command (ours: 1 keeps
    # today's single sweeper). Or start copies yourself: same command, same hydra.sweep.dir.
    workers: int = 1
    # Seconds without a sign of life after which a worker's trials are re-queued for the others.
    # Workers beat 4 times per timeout, so one or two beats delayed by a busy database do no harm
    # (Optuna's heartbeat allows 2 missed beats: grace period = 2 x interval). Ours: 2 minutes.
    heartbeat_timeout: float = 120.0
    # Search space in Hydra's override grammar, e.g. {trainer.lr: "tag(log, interval(1e-4, 0.1))"}.
    # An empty mapping rather than None, so that command-line keys can be added under it.
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="botorch", node=BoTorchSweeperConf, provider="nasrun_botorch_sweeper"
)
