"""Data-parallel training over several processes with ``torch.distributed``.

A run is data-parallel when ``trainer.distributed=auto`` (the default) and it was started as one of
several processes by ``torchrun --nproc-per-node N`` (on one machine or several), which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. Each process (a *rank*) trains the same network
on its share of every batch; ``DistributedDataParallel`` averages the gradients, so every rank
takes the same step. Started alone, or with ``trainer.distributed=off``, a run is one process.

The data stay in memory on every rank (the data modules are small tensors): every rank draws the
same shuffled, augmented global batch from the epoch's generator and keeps its own contiguous slice
(``World.shard``), which is what a ``DistributedSampler`` per split would give, with the global
batch equal to one process's.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nasrun import UserError

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
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0

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
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(
            f"trainer.distributed=auto: {world.size} processes but {' and '.join(missing)} unset "
            "(torchrun sets them)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size, timeout=TIMEOUT)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
