"""A tiny ``@hydra.main`` app for the sweeper tests: Branin as the task, plus ways to misbehave.

Run as a script (``python branin_app.py -m ...``) so that a SIGKILL hits a real sweeper process.
Every call appends ``job x y`` to ``calls_file`` so tests can count which trials really ran.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def branin(x: float, y: float) -> float:
    """Branin-Hoo; global minimum 0.397887 at (-pi, 12.275), (pi, 2.275), (9.42478, 2.475)."""
    b, c, r, s, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * math.cos(x) + s


@hydra.main(version_base="1.3", config_path=".", config_name="branin")
def task(cfg: DictConfig) -> Any:
    job = HydraConfig.get().job.num
    if cfg.calls_file:
        with open(cfg.calls_file, "a") as f:
            f.write(f"{job} {cfg.x} {cfg.y}\n")
    if cfg.kill_at_job == job and not Path(cfg.calls_file + ".killed").exists():
        Path(cfg.calls_file + ".killed").touch()
        os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no cleanup, no except, no atexit
    value = branin(cfg.x, cfg.y)
    if cfg.misbehave == "raise_if_x_gt_5" and cfg.x > 5:
        raise RuntimeError(f"diverged at x={cfg.x}")
    if cfg.misbehave == "nan_if_x_gt_5" and cfg.x > 5:
        return float("nan")
    if cfg.misbehave == "always_raise":
        raise RuntimeError("always fails")
    if cfg.misbehave == "string":
        return "not a number"
    if cfg.misbehave == "dict":
        return {"branin": value, "other": 1.0}
    return value


if __name__ == "__main__":
    import sys

    from nasrun.bo import prepare_sweeper_args

    sys.argv[1:] = prepare_sweeper_args(sys.argv[1:])  # as nasrun's cli does
    task()
