"""Shared fixtures: compose the real conf/config.yaml with tiny overrides; run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nasrun.cli import config_dir

# Tiny networks run faster on one thread, and results are then bit-identical across runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg(*overrides)``: the composed config, as ``nasrun`` would see it."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def run_cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nasrun ARGS`` in a subprocess (one thread, like the tests)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "nasrun", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path, timeout=timeout)

    return _run
