"""CPU threads per process (``trainer.threads``), so that runs sharing a machine don't slow each other.

torch starts one intra-op thread per core in every process. Several processes that each do so on
the same cores (a launcher's parallel jobs, an evaluator's worker pool) spend their time switching
and spin-waiting instead of computing. ``resolve_threads`` chooses each process's share and
``apply_threads`` sets it before torch does any parallel work.

How ``auto`` interacts with the environment: an ``OMP_NUM_THREADS`` (else ``MKL_NUM_THREADS``)
that was set before the run is taken as the user's per-process choice and used as it is (so is
the value joblib's loky backend sets in its workers); an explicit ``trainer.threads=N`` wins over
the environment. ``apply_threads`` then exports the chosen count in both variables, so that
processes the run spawns start with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from nasrun import UserError

#: The environment variables that set a process's thread count, in the order torch reads them.
ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

#: Those variables as they were before ``apply_threads`` first set them (``None``: not set yet).
_user_env: dict[str, str] | None = None


def parse_threads(value: Any) -> int | None:
    """``trainer.threads`` checked: ``None`` for ``auto``, else the positive int.

    Raises:
        UserError: neither ``auto`` nor a positive integer.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    n = value
    if isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"trainer.threads={value!r}: must be auto or a positive integer")
    return n


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def env_threads(env: Mapping[str, str] | None = None) -> int | None:
    """The per-process thread count set in ``env``: ``OMP_NUM_THREADS``, else ``MKL_NUM_THREADS``.

    Args:
        env: the environment to read; default: the process's, as it was before ``apply_threads``.

    Returns:
        The count, or ``None`` when neither is set to a positive integer (OpenMP's list form
        ``4,2`` counts as its first item).
    """
    if env is None:
        env = os.environ if _user_env is None else _user_env
    for var in ENV_VARS:
        first = env.get(var, "").split(",")[0].strip()
        if first.isdigit() and int(first) > 0:
            return int(first)
    return None


def launcher_jobs(launcher: Mapping[str, Any] | None, cores: int | None = None) -> int:
    """How many jobs a Hydra launcher runs at once on this process's cores.

    Args:
        launcher: the launcher's config (``hydra.launcher``) as plain values; ``None`` in a single
            run.
        cores: CPU cores available to this process (default: ``available_cores()``).

    Returns:
        joblib's ``n_jobs`` (``-1`` or ``None``: one job per core; ``-2``: all cores but one, as
        joblib counts); 1 for a single run, the basic launcher (one job after another) and other
        launchers (submitit, ray), whose jobs each run on an allocation of their own.
    """
    if launcher is None or "joblib" not in str(launcher.get("_target_", "")):
        return 1
    n_jobs = launcher.get("n_jobs")
    n = -1 if n_jobs is None else int(n_jobs)
    if n < 0:
        return max(1, (available_cores() if cores is None else cores) + 1 + n)
    return max(1, n)


def hydra_launcher() -> dict[str, Any] | None:
    """The current Hydra multirun's launcher config as plain values; ``None`` in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    launcher = OmegaConf.to_container(hc.launcher, resolve=True)
    return {str(k): v for k, v in launcher.items()} if isinstance(launcher, dict) else None


def resolve_threads(
    setting: Any,
    *,
    cores: int | None = None,
    jobs: int = 1,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
) -> int:
    """CPU threads for each of a run's training processes.

    ``auto`` gives the per-process count set in the environment (``env_threads``) if any, else
    ``cores // jobs``; a positive int is used as it is. Either is then split among ``workers``
    processes. Never less than 1.

    Args:
        setting: ``trainer.threads``: ``auto`` or a positive int.
        cores: CPU cores available to this process (default: ``available_cores()``).
        jobs: runs the launcher runs at once on these cores (``launcher_jobs``).
        workers: processes that share the run's threads (``evaluator.workers`` for the children
            of a worker pool; 1 for the run's own process).
        env: the environment for ``auto`` (default: the process's, before ``apply_threads``).

    Raises:
        UserError: ``setting`` is neither ``auto`` nor a positive integer.
    """
    n = parse_threads(setting)
    if n is None:
        n = env_threads(env) or max(1, (available_cores() if cores is None else cores) // max(1, jobs))
    return max(1, n // max(1, workers))


def apply_threads(n: int) -> int:
    """Use ``n`` CPU threads in this process and in the processes it starts from now on; returns ``n``.

    Sets torch's intra-op threads, its inter-op threads where torch still allows it (once, before
    any inter-op work), and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` for child processes.
    """
    global _user_env
    if _user_env is None:
        _user_env = {var: os.environ[var] for var in ENV_VARS if var in os.environ}
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or inter-op work has started: torch allows it only once
        pass
    for var in ENV_VARS:
        os.environ[var] = str(n)
    return n
