"""Runs inside every job: save the task's return value the moment it exists; a pruned job's too.

Kept apart from ``_core`` so that process launchers (joblib, submitit), which unpickle
``RecordingTask`` in their workers, import only this light module, not BoTorch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import TaskFunction
from omegaconf import DictConfig

from nasrun.bo.reporting import Pruned, TrialPruned
from nasrun.run_folder import write_text_atomic

RESULTS = ".botorch_returns"  # per-job return files, inside the sweep folder


class RecordingTask:
    """Wraps the task function: runs it, then saves its return value under the sweep folder.

    A job stopped by the pruner (``TrialPruned``, raised from its per-epoch report) ends cleanly
    here: it returns a ``Pruned`` with its last epoch and value instead of an objective. A plain
    class (not a closure) so that process launchers can pickle it.
    """

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Any:
        hc = HydraConfig.get()
        try:
            value = self.task_function(cfg)
        except TrialPruned as e:
            pruned = Pruned(e.epoch, e.value, e.reason)
            text = json.dumps({"pruned": {"epoch": e.epoch, "value": e.value, "reason": e.reason}})
            write_text_atomic(Path(hc.sweep.dir) / RESULTS / f"{hc.job.num}.json", text)
            return pruned
        try:
            text = json.dumps({"return": value})
        except (TypeError, ValueError):
            return value  # not JSON, hence no usable objective: the sweeper reports it from the JobReturn
        write_text_atomic(Path(hc.sweep.dir) / RESULTS / f"{hc.job.num}.json", text)
        return value


def saved_return(sweep_dir: Path, job: int | None) -> tuple[Any] | None:
    """``(value,)`` that job ``job`` returned (a ``Pruned`` if it was pruned), if it got that far;
    ``None`` otherwise."""
    path = sweep_dir / RESULTS / f"{job}.json"
    if job is None or not path.is_file():
        return None
    saved = json.loads(path.read_text())
    if "pruned" in saved:
        return (Pruned(**saved["pruned"]),)
    return (saved["return"],)
