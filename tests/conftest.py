"""Shared fixtures: compose the real conf/config.yaml with tiny overrides; run the real CLI."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from nasrun import UserError
from nasrun.config import config_dir, register_configs
from nasrun.run_folder import read_history

# Tiny networks run faster on one thread, and results are then bit-identical across runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# Composing conf/ needs the schemas its files name in Hydra's ConfigStore (the CLI stores them too).
register_configs()

REPO = Path(__file__).resolve().parent.parent
#: The NAS-Bench-201 table shipped with nasrun (nasrun/evaluator/tables/).
NB201_TABLE = REPO / "nasrun" / "evaluator" / "tables" / "nb201_cifar10_12ep.csv"


@pytest.fixture
def compose_cfg() -> Callable[..., DictConfig]:
    """``compose_cfg(*overrides)``: the composed config, as ``nasrun`` would see it."""

    def _compose(*overrides: str) -> DictConfig:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


def _cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``nasrun`` subprocess: one thread, like the tests, and unbuffered."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(extra or {})}


#: ``torchrun`` starting two processes on this machine (gloo on the CPU): a command's prefix.
TORCHRUN = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")


def run_command(cmd: Sequence[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in a subprocess (one thread, like the tests), its output captured."""
    return subprocess.run(list(cmd), cwd=cwd, env=_cli_env(), capture_output=True, text=True, timeout=timeout)


def run_cli(
    *args: str, cwd: Path, timeout: float = 300, launcher: Sequence[str] = (sys.executable,)
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m nasrun ARGS`` in a subprocess (``launcher=TORCHRUN``: as two processes)."""
    return run_command([*launcher, "-m", "nasrun", *args], cwd, timeout)


def start_cli(
    *args: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = (sys.executable,),
    **popen: Any,
) -> subprocess.Popen[str]:
    """Start ``python -m nasrun ARGS`` (one thread) and return at once, for tests that kill it.

    Its standard output is discarded and its standard error kept (``proc.stderr``); ``env`` adds
    variables, ``launcher=TORCHRUN`` starts it as two processes, ``popen`` adds
    ``subprocess.Popen`` arguments.
    """
    return subprocess.Popen(
        [*launcher, "-m", "nasrun", *args],
        cwd=cwd,
        env=_cli_env(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def wait_until(
    proc: subprocess.Popen[str], done: Callable[[], bool], what: str, timeout: float = 240
) -> None:
    """Wait until ``done()`` while ``proc`` runs; fail naming ``what`` was awaited if it ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what} never happened in {timeout:.0f} s")
        time.sleep(0.02)


def wait_for_lines(proc: subprocess.Popen[str], path: Path, lines: int) -> None:
    """Wait until ``path`` (a history file) holds ``lines`` lines while ``proc`` runs."""
    wait_until(
        proc,
        lambda: path.is_file() and len(path.read_text().splitlines()) >= lines,
        f"{path} held {lines} lines",
    )


def timeless_history(path: Path) -> list[dict[str, Any]]:
    """A history file's records without their wall times, to compare two runs of the same work."""
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in read_history(path)]


def children(pid: int) -> list[int]:
    """The processes that ``pid`` started (Linux's ``/proc``), e.g. torchrun's workers."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def running(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def kill_when(proc: subprocess.Popen[str], path: Path, lines: int, group: bool = False) -> None:
    """SIGKILL ``proc`` once ``path`` holds ``lines`` lines.

    ``group``: the whole job, a launcher with its session and the processes it started (torchrun
    starts its workers in sessions of their own, so killing its session alone would leave them).
    """
    wait_for_lines(proc, path, lines)
    if not group:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return
    workers = children(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(map(running, workers)):
        assert time.monotonic() < deadline, f"processes {workers} still run 30 s after SIGKILL"
        time.sleep(0.02)


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, cwd=tmp_path, timeout=timeout)

    return _run


def load_script(path: Path) -> ModuleType:
    """Import a script (``scripts/*.py``, ``docs/benchmarks/*.py``) as a module, by its path."""
    if str(path.parent) not in sys.path:  # as when run: its folder's helpers (_bench_args) import
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def enter_sweep(runner: Any) -> None:
    """Run an in-process sweep (Hydra's ``hydra_sweep_runner``) and keep its folder.

    A sweep that ends on a user mistake (the sweeper's contract: exit status 2 and one line
    ``nasrun: error: ...`` on stderr) raises ``UserError`` with that line. Failed jobs before it
    are logged by Hydra on lines of their own.
    """
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            runner.__enter__()  # no __exit__: it would delete the sweep folder we inspect
    except SystemExit as e:
        last = err.getvalue().rstrip("\n").splitlines()[-1]
        assert e.code == 2 and last.startswith("nasrun: error: "), err.getvalue()
        raise UserError(last.removeprefix("nasrun: error: ")) from None
