"""What a nasrun run means to a sweep: which epochs it reports, and which sweeps cannot move it.

The BoTorch sweeper (``hydra_plugins.nasrun_botorch_sweeper``) is nasrun's; the optimisation
package it drives (``nasrun.bo``) knows nothing of nasrun's config keys, so they are read here.

A nasrun run's objective is the validation accuracy of its last phase. With retraining off
(``retrain.enabled=false``), that phase is the search, and the retraining settings (``retrain.*``)
and, unless the search trains each candidate with the trainer, the trainer's (``trainer.*``) change
nothing a trial returns: a sweep over them only would fit a model to noise.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf


def _trains_candidates(cfg: DictConfig) -> bool:
    """Whether the search scores candidates by training them with ``trainer`` (a black-box
    strategy with ``evaluator=train``)."""
    from nasrun.evaluator.train import TrainEvaluator
    from nasrun.search.base import BlackBoxStrategy

    search = OmegaConf.select(cfg, "search._target_", default=None)
    evaluator = OmegaConf.select(cfg, "evaluator._target_", default=None)
    if not isinstance(search, str) or not isinstance(evaluator, str):
        return False
    try:
        return issubclass(get_class(search), BlackBoxStrategy) and issubclass(
            get_class(evaluator), TrainEvaluator
        )
    except (ImportError, ValueError, TypeError):
        return False  # a target that does not load fails the first trial with its own message


def task_epochs(cfg: DictConfig) -> tuple[str, int] | None:
    """The config key and number of epochs of the phase whose validation accuracy a nasrun run
    returns: retraining's ``trainer.epochs`` or, with ``retrain.enabled=false``, the one-shot
    search's ``search.epochs``; ``None`` when the config has no such key (a black-box search, an
    app of another kind).
    """
    key = (
        "search.epochs"
        if OmegaConf.select(cfg, "retrain.enabled", default=None) is False
        else "trainer.epochs"
    )
    epochs = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if isinstance(epochs, int) and not isinstance(epochs, bool):
        return key, epochs
    return None


def sweep_without_effect(cfg: DictConfig, keys: Sequence[str]) -> str | None:
    """The line that warns a sweep over ``keys`` cannot change the objective, or ``None``.

    Args:
        cfg: The composed config of the sweep (its fixed overrides applied).
        keys: The swept config keys, e.g. ``["trainer.lr", "retrain.drop_path"]``.
    """
    if not keys or OmegaConf.select(cfg, "retrain.enabled", default=None) is not False:
        return None
    inert = ("retrain.",) if _trains_candidates(cfg) else ("retrain.", "trainer.")
    if "retrain.enabled" in keys or not all(k.startswith(inert) for k in keys):
        return None
    return (
        f"retrain.enabled=false: the swept {', '.join(keys)} cannot change the objective (the search's "
        "validation accuracy); turn retraining on, or sweep the search's settings"
    )
