"""Data-parallel training over several processes with ``torch.distributed``.

A run is data-parallel when ``trainer.distributed=auto`` (the default) and it was started as one of
several processes:

- by ``torchrun --nproc-per-node N`` (on one machine or several), which sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
- as one of the tasks of a submitit job (``hydra/launcher=slurm_gpu`` with
  ``hydra.launcher.tasks_per_node=N``, or ``submitit_local``): submitit's job environment gives the
  ranks, and ``submitit.helpers.TorchDistributedEnvironment`` the first node's address and a port
  drawn from the job id (the same in every task).

Each process (a *rank*) trains the same network
on its share of every batch; ``DistributedDataParallel`` averages the gradients, so every rank
takes the same step. Started alone, or with ``trainer.distributed=off``, a run is one process.

The data stay in memory on every rank (the data modules are small tensors): every rank draws the
same shuffled, augmented global batch from the epoch's generator and keeps its own contiguous slice
(``World.shard``), which is what a ``DistributedSampler`` per split would give, with the global
batch equal to one process's.
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from nasrun import StoppedWithFirstProcess, UserError

#: How long a rank waits for the others at a collective call before the run fails (a rank that died
#: or hangs ends the job instead of leaving the others waiting for ever).
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes.

    Attributes:
        rank: this process, from 0 (rank 0 writes the run folder).
        size: the number of processes.
        local_rank: this process among those on its machine (its GPU index).
        launcher: what started the processes: ``torchrun`` or ``submitit``.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    launcher: str = "torchrun"

    @property
    def active(self) -> bool:
        """Whether the run is data-parallel (more than one process)."""
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run folder and prints progress."""
        return self.rank == 0

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one, the first larger)."""
        q, r = divmod(n, self.size)
        start = self.rank * q + min(self.rank, r)
        return slice(start, start + q + (1 if self.rank < r else 0))

    def rows(self, n: int) -> tuple[int, int, int] | None:
        """``(n, start, stop)``: this rank's rows of a global batch of ``n``; ``None`` when alone."""
        if not self.active:
            return None
        part = self.shard(n)
        return n, part.start, part.stop

    def share(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """This rank's share of a global batch (the tensors themselves when alone).

        ``None`` for a batch too small to give every rank an item: every rank skips it alike.
        """
        if not self.active:
            return tensors
        n = len(tensors[0])
        if n < self.size:
            return None
        part = self.shard(n)
        return tuple(t[part] for t in tensors)

    def totals(self, values: Sequence[float | torch.Tensor], device: torch.device) -> list[float]:
        """Each of ``values`` (numbers or 0-d tensors) summed over the ranks, in one all-reduce."""
        stacked = torch.stack([torch.as_tensor(v, device=device).to(torch.float64) for v in values])
        return self.all_sum(stacked).tolist()

    def write_together(self, write: Callable[[], None], device: torch.device) -> None:
        """Run ``write`` (an epoch's checkpoint and history line), then end every process with it if it raised.

        Only the first process writes (a ``HistoryLog(write=False)`` does nothing elsewhere) and
        reports to a sweep, whose pruner may stop the run by raising from ``write``. The exception
        then ends the first process, and the others raise ``StoppedWithFirstProcess`` at the same
        point instead of waiting for it at the next collective call. Alone, ``write`` simply runs.
        """
        if not self.active:
            write()
            return
        failed: Exception | None = None
        try:
            write()
        except Exception as e:  # a sweep's pruner stopping the run, a failed write
            failed = e
        if self.any_rank(failed is not None, device):
            if failed is not None:
                raise failed
            raise StoppedWithFirstProcess

    def average(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor averaged over the ranks, in one all-reduce; the tensors themselves when alone.

        For gradients that ``DistributedDataParallel`` cannot average: those taken with
        ``torch.autograd.grad`` and the several passes of one DARTS step (its reducer hooks one
        ``backward()`` after each forward pass).
        """
        if not self.active or not tensors:
            return list(tensors)
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.size
        return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def average_grads(self, params: Sequence[torch.Tensor]) -> None:
        """Average the ``.grad`` of ``params`` over the ranks, in place (those without one are skipped)."""
        if not self.active:
            return
        have = [p for p in params if p.grad is not None]
        for p, g in zip(have, self.average([p.grad for p in have])):  # type: ignore[misc]
            p.grad.copy_(g)  # type: ignore[union-attr]

    def any_rank(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (``device``: where the backend reduces, a GPU for NCCL)."""
        if not self.active:
            return flag
        return bool(self.all_sum(torch.tensor([float(flag)], device=device)) > 0)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (itself when alone)."""
        if self.active:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


SINGLE = World()


def detect(mode: str, env: Mapping[str, str] | None = None) -> World:
    """The world this process belongs to, by ``trainer.distributed`` (``auto`` or ``off``) and the environment."""
    if mode not in ("auto", "off"):
        raise UserError(f"trainer.distributed={mode!r}: must be auto or off")
    env = os.environ if env is None else env
    if mode == "off":
        return SINGLE
    try:
        if "WORLD_SIZE" in env and "RANK" in env:  # torchrun (or any launcher that sets them)
            world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
        elif "SUBMITIT_EXECUTOR" in env:  # a task of a submitit job (SLURM, or submitit_local)
            job = _submitit_job()
            if job is None or job.num_tasks <= 1:
                return SINGLE
            world = World(job.global_rank, job.num_tasks, job.local_rank, launcher="submitit")
        else:
            return SINGLE
    except ValueError as e:
        raise UserError(f"trainer.distributed=auto: a launcher variable is not an integer ({e})") from None
    if not 0 <= world.rank < world.size:
        raise UserError(f"trainer.distributed=auto: rank {world.rank} is outside a world of {world.size}")
    return world


def join(world: World, device: torch.device) -> None:
    """Join the run's process group (once per process): NCCL between GPUs, Gloo on the CPU."""
    if not world.active or dist.is_initialized():
        return
    if world.launcher == "submitit":
        from submitit.helpers import TorchDistributedEnvironment

        where = TorchDistributedEnvironment()  # the job's first node, a port from the job id
        os.environ.setdefault("MASTER_ADDR", where.master_addr)
        os.environ.setdefault("MASTER_PORT", str(where.master_port))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(
            f"trainer.distributed=auto: {world.size} processes but {' and '.join(missing)} unset "
            "(torchrun sets them)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun: its agent is this process's parent
        _end_with_launcher(os.getppid())


#: How often a torchrun worker checks that its launcher is still there, in seconds.
LAUNCHER_POLL_S = 1.0


def _end_with_launcher(launcher: int) -> None:
    """End this process when torchrun's agent, process ``launcher``, is gone.

    torchrun starts its workers in sessions of their own, so a SIGKILL of the launcher (or of its
    process group, ``kill -9 -PGID``), which it cannot pass on, leaves them running: rank 0 would
    go on writing the run folder while a ``resume=true`` rewrites it. A daemon thread watches the
    parent process id (it changes when the parent dies) and ends the process with one line.
    """

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(LAUNCHER_POLL_S)
        sys.stderr.write(
            f"nasrun: error: torchrun's launcher (process {launcher}) is gone; this process stops "
            "too (resume=true goes on from the last checkpoint)\n"
        )
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="nasrun-launcher-watch", daemon=True).start()


def _submitit_job() -> Any:
    """submitit's description of the running job (its tasks and this one's rank), if submitit is installed."""
    try:
        import submitit
    except ImportError:
        return None
    return submitit.JobEnvironment()


def leave() -> None:
    """Leave the process group, if this process joined one.

    Wrappers that still hold the group (a ``DistributedDataParallel`` kept alive by a reference
    cycle, an exception's frames) are collected first: destroyed after the group, they abort.
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
