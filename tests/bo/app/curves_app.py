"""A toy trainable with known learning curves, for pruning and asynchronous-worker tests.

"Accuracy" after epoch ``e`` is ``final(lr, width) * (1 - exp(-e / 3))``: every curve has the same
shape, so trials rank the same at every epoch, and the best trial is the one with the best final
value. Learning rates above 0.1 are the planted bad region: the curve tops out at 10. Each epoch
is reported to the sweep (``nasrun.bo.reporting``) and may be pruned; ``epoch_seconds`` makes
trials last ``epochs * epoch_seconds * (0.2 + 1.8 * width)`` seconds: up to 10 times longer than others.
"""

from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from nasrun.bo.reporting import current_reporter

BAD_LR = 0.1  # learning rates above this diverge


def final(lr: float, width: float) -> float:
    """The value a trial reaches at its last epoch: best at lr = 0.01, width = 0.7."""
    if lr > BAD_LR:
        return 10.0
    return 90.0 - 8.0 * (math.log10(lr) + 2.0) ** 2 - 20.0 * (width - 0.7) ** 2


def curve(lr: float, width: float, epoch: int) -> float:
    """The value after ``epoch`` (from 1)."""
    return final(lr, width) * (1.0 - math.exp(-epoch / 3.0))


@hydra.main(version_base="1.3", config_path=".", config_name="curves")
def task(cfg: DictConfig) -> float:
    job = HydraConfig.get().job.num
    if cfg.calls_file:
        with open(cfg.calls_file, "a") as f:
            f.write(f"{job} {os.getpid()} {cfg.lr} {cfg.width}\n")
    reporter = current_reporter(max_epochs=cfg.epochs)
    value = 0.0
    for epoch in range(1, cfg.epochs + 1):
        time.sleep(cfg.epoch_seconds * (0.2 + 1.8 * cfg.width))
        value = curve(cfg.lr, cfg.width, epoch)
        if reporter is not None:
            reporter.report(epoch, value)
        marker = Path(f"{cfg.calls_file}.killed")
        if cfg.kill_at_job == job and epoch == cfg.kill_at_epoch and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no cleanup, no except, no atexit
    return value


if __name__ == "__main__":
    import sys

    from nasrun.bo import prepare_sweeper_args

    sys.argv[1:] = prepare_sweeper_args(sys.argv[1:])  # as nasrun's cli does
    task()
