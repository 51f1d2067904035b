"""Where and how a network runs: device, precision, memory format, compilation, batches, evaluation.

``Runtime`` is what the search strategies and the trainer share: it moves a model to the device
(channels_last, ``torch.compile``), opens the autocast context, yields device batches and
evaluates. The training schedule (SGD, epochs, checkpoints) is ``nasrun.train.trainer.Trainer``,
a ``Runtime`` that also trains.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from nasrun import UserError
from nasrun.data.base import TensorSplit, batches
from nasrun.train import sync_batchnorm
from nasrun.train.distributed import SINGLE, World
from nasrun.train.threads import parse_threads


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    @classmethod
    def in_epoch(
        cls, phase: str, value: float, epoch: int, lr_key: str, checkpoints: bool = True
    ) -> NonFiniteLossError:
        """The error for a non-finite loss in epoch ``epoch`` (counted from 0) of ``phase``.

        Args:
            phase: the phase's name (``search``, ``retrain``).
            value: the loss.
            epoch: the failing epoch, counted from 0; epochs before it have been checkpointed.
            lr_key: the config key of the phase's learning rate, suggested as the fix.
            checkpoints: whether the phase writes checkpoints at all.
        """
        if not checkpoints:
            state = ""
        elif epoch == 0:
            # Nothing to resume from: saying "the checkpoint of epoch 0 is intact" would send the
            # user looking for a file that was never written.
            state = "; no epoch completed, so there is no checkpoint yet: start the run again"
        else:
            state = f"; the checkpoint of epoch {epoch} is intact"
        return cls(f"{phase}: loss became {value} in epoch {epoch + 1}{state} (try a lower {lr_key})")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"trainer.device={device!r}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"trainer.device={device!r}: CUDA is not available on this machine (use trainer.device=auto)"
        )
    return dev


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy computed in at least float32 (logits may be bf16 under autocast)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, y, reduction=reduction)


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch's shuffling and augmentation, the same after a resume."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


#: Device types where ``channels_last=auto`` switches NHWC on: where nasrun's benchmarks measured it
#: faster for the search and retraining steps (scripts/bench_search.py, scripts/bench_train.py).
#: CUDA joins when a GPU run measures it.
CHANNELS_LAST_AUTO = frozenset({"cpu"})


class Runtime:
    """Device, precision, memory format and compilation of a phase's networks.

    Built by ``Trainer`` (the ``trainer`` config group), whose signature holds the defaults.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``none`` or ``bf16`` (autocast; weights and optimiser stay float32).
        channels_last: NHWC memory format: ``true``, ``false`` or ``auto`` (on where it is measured
            faster: the CPU; see ``nasrun.train.runtime.CHANNELS_LAST_AUTO``).
        compile: wrap the model in ``torch.compile``.
        eval_batch_size: batch size for evaluation passes.
        threads: CPU threads per process: ``auto`` (this process's cores divided by the jobs the
            launcher runs at once, or ``OMP_NUM_THREADS`` if set) or a positive int; applied by the
            pipeline when a run starts (``nasrun.train.threads``).
    """

    def __init__(
        self,
        device: str,
        amp: str,
        channels_last: bool | str,
        compile: bool,
        eval_batch_size: int,
        threads: int | str,
    ) -> None:
        if amp not in ("none", "bf16"):
            raise UserError(f"trainer.amp={amp!r}: must be 'none' or 'bf16'")
        if eval_batch_size <= 0:
            raise UserError(f"trainer.eval_batch_size={eval_batch_size}: must be > 0")
        self.device = resolve_device(device)
        self.amp = amp
        if channels_last == "auto":
            channels_last = self.device.type in CHANNELS_LAST_AUTO
        elif not isinstance(channels_last, bool):
            raise UserError(f"trainer.channels_last={channels_last!r}: must be true, false or auto")
        self.channels_last: bool = channels_last
        self.compile = compile
        self.eval_batch_size = eval_batch_size
        parse_threads(threads)  # UserError naming trainer.threads
        self.threads = threads
        self.world: World = SINGLE  # one process (``Trainer`` sets its own from trainer.distributed)
        self.sync_batchnorm = True  # data-parallel: BatchNorm over the global batch (``Trainer`` sets it)
        # Running loss sums; Apple's MPS backend has no float64.
        self._sum_dtype = torch.float32 if self.device.type == "mps" else torch.float64

    def prepare(self, model: nn.Module, ddp: bool = True) -> nn.Module:
        """Move ``model`` to the device (and memory format); returns the module to call.

        With ``compile`` the returned module is the compiled wrapper; it shares its parameters with
        ``model``, so save and load ``model``'s state dict. Data-parallel, the module is wrapped in
        ``DistributedDataParallel`` unless ``ddp`` is false (the caller averages the gradients), and
        with ``sync_batchnorm`` its BatchNorms are synchronised in place (same tensors).
        """
        if self.world.active and self.sync_batchnorm:
            sync_batchnorm.convert(model, self.device)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.world.active and ddp:  # gradients averaged over the processes in every backward pass
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.compile else model  # type: ignore[return-value]

    def synced(self, module: nn.Module) -> nn.Module:
        """``module`` with rank 0's buffers (BatchNorm statistics) on every rank; itself when alone."""
        if self.world.active:
            for buf in module.buffers():
                dist.broadcast(buf, src=0)
        return module

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batches(
        self,
        split: TensorSplit,
        batch_size: int,
        generator: torch.Generator | None = None,
        augment: Any = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in batches(split, batch_size, device=self.device, generator=generator, augment=augment):
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: TensorSplit) -> tuple[float, float]:
        """Mean cross-entropy and accuracy (%) of ``model`` on ``split``, in eval mode.

        Data-parallel, each rank evaluates its share of ``split`` and the sums are added up.
        """
        if self.world.active:
            part = self.world.shard(len(split))
            split = split.subset(torch.arange(part.start, part.stop))
        was_training = model.training
        model.eval()
        loss_sum = torch.zeros((), dtype=self._sum_dtype, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        n = 0
        for x, y in self.batches(split, self.eval_batch_size):
            with self.autocast():
                logits = model(x)
            loss_sum += cross_entropy(logits, y, reduction="sum").to(self._sum_dtype)
            correct += (logits.argmax(1) == y).sum()
            n += int(y.numel())
        model.train(was_training)
        if self.world.active:
            sums = self.world.all_sum(
                torch.stack([loss_sum.double(), correct.double(), loss_sum.new_tensor(n).double()])
            )
            loss_sum, correct, n = sums[0], sums[1], int(sums[2])
        return float(loss_sum) / max(n, 1), 100.0 * int(correct) / max(n, 1)
