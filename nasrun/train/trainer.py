"""The trainer: device, precision, memory format, compilation, and the epoch loop with checkpoints.

One ``Trainer`` serves every phase: the search strategies use its device/precision helpers, and
``fit`` trains a discrete network (retraining, or a proxy run inside an evaluator). ``fit``
checkpoints every epoch (weights, optimiser, scheduler, RNG states, history) and resumes from the
last complete epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from nasrun import UserError
from nasrun.data.base import DataModule, TensorSplit, batches
from nasrun.report.console import get_console, progress_bar
from nasrun.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


class Trainer:
    """How networks are trained.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``none`` or ``bf16`` (autocast; weights and optimiser stay float32).
        channels_last: NHWC memory format (faster convolutions on recent GPUs and on CPUs).
        compile: wrap the model in ``torch.compile``.
        epochs: training epochs.
        batch_size: training batch size.
        lr: initial SGD learning rate, annealed by a cosine schedule to ``lr_min``.
        lr_min: final learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        grad_clip: clip the gradient norm to this (0 = off).
        eval_batch_size: batch size for evaluation passes.
    """

    def __init__(
        self,
        device: str = "auto",
        amp: str = "none",
        channels_last: bool = False,
        compile: bool = False,
        epochs: int = 600,
        batch_size: int = 96,
        lr: float = 0.025,
        lr_min: float = 0.0,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        grad_clip: float = 5.0,
        eval_batch_size: int = 256,
    ):
        if amp not in ("none", "bf16"):
            raise UserError(f"trainer.amp={amp!r}: must be 'none' or 'bf16'")
        for key, value in (
            ("epochs", epochs),
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
        ):
            if value <= 0:
                raise UserError(f"trainer.{key}={value}: must be > 0")
        if not lr > 0 or lr_min < 0 or lr_min > lr:
            raise UserError(f"trainer.lr={lr} / trainer.lr_min={lr_min}: need 0 <= lr_min <= lr and lr > 0")
        self.device = resolve_device(device)
        self.amp = amp
        self.channels_last = channels_last
        self.compile = compile
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_min = lr_min
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.eval_batch_size = eval_batch_size
        # Running loss sums; Apple's MPS backend has no float64.
        self._sum_dtype = torch.float32 if self.device.type == "mps" else torch.float64

    # -- helpers shared with the search strategies ---------------------------------------------
    def prepare(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (and memory format); returns the module to call.

        With ``compile`` the returned module is the compiled wrapper; it shares its parameters with
        ``model``, so save and load ``model``'s state dict.
        """
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return torch.compile(model) if self.compile else model  # type: ignore[return-value]

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
        """Mean cross-entropy and accuracy (%) of ``model`` on ``split``, in eval mode."""
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
        return float(loss_sum) / max(n, 1), 100.0 * int(correct) / max(n, 1)

    def train_step(
        self,
        model: nn.Module,
        module: nn.Module,
        opt: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        aux_weight: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on a batch, as ``fit`` takes it; no host synchronisation.

        Args:
            model: the module to call (``prepare``'s result: maybe compiled).
            module: the underlying module (its parameters are clipped).
            opt: the optimiser over ``module``'s parameters.
            x, y: the batch, already on the device.
            aux_weight: weight of the auxiliary head's loss, if the model returns one.

        Returns:
            The detached loss and logits.
        """
        with self.autocast():
            out = model(x)
            logits, aux = out if isinstance(out, tuple) else (out, None)
            loss = cross_entropy(logits, y)
            if aux is not None and aux_weight > 0:
                loss = loss + aux_weight * cross_entropy(aux, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        self.clip(module.parameters())
        opt.step()
        return loss.detach(), logits.detach()

    def clip(self, params: Any) -> None:
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, self.grad_clip)

    # -- the training loop ------------------------------------------------------------------------
    def fit(
        self,
        model: nn.Module,
        data: DataModule,
        *,
        run_dir: Path | None = None,
        phase: str = "retrain",
        epochs: int | None = None,
        aux_weight: float = 0.0,
        drop_path: float = 0.0,
        cutout: int = 0,
        resume: bool = False,
        seed: int = 0,
        quiet: bool = False,
    ) -> dict[str, Any]:
        """Train ``model`` with SGD and a cosine schedule; evaluate on val and test every epoch.

        Args:
            model: returns logits ``[B, K]``, or ``(logits, aux_logits)`` in training mode when it
                has an auxiliary head. A ``drop_path_prob`` attribute, if present, is ramped
                linearly from 0 to ``drop_path`` over the epochs (DARTS retraining).
            data: the data module.
            run_dir: if given, checkpoints go to ``run_dir/checkpoints/{phase}.pt`` and one line per
                epoch to ``run_dir/{phase}_history.jsonl``.
            phase: name of the phase (progress bar, checkpoint and history file names).
            epochs: overrides ``self.epochs`` (proxy schedules).
            aux_weight: weight of the auxiliary loss (DARTS: 0.4).
            drop_path: final drop-path probability.
            cutout: cutout side for training batches (0 = off).
            resume: continue from the phase's checkpoint if present.
            seed: seeds shuffling and augmentation (per epoch, so resumes replay exactly).
            quiet: no progress bar or epoch lines (evaluators training many children).

        Returns:
            Final-epoch metrics: ``train_loss``, ``train_acc``, ``val_loss``/``val_acc`` (when a
            validation split exists), ``test_loss``, ``test_acc``, ``epochs``, ``wall_s``.

        Raises:
            NonFiniteLossError: the loss became NaN/inf (the previous epoch's checkpoint stays).
        """
        from nasrun.search.base import HistoryLog  # the search loop's history file, shared

        n_epochs = epochs or self.epochs
        module = model
        model = self.prepare(module)
        opt = torch.optim.SGD(
            module.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_epochs, eta_min=self.lr_min)
        ckpt = run_dir / "checkpoints" / f"{phase}.pt" if run_dir is not None else None
        start, records, wall = 0, [], 0.0
        if resume and ckpt is not None and ckpt.is_file():
            state = load_checkpoint(ckpt)
            module.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start, records, wall = state["epoch"], state["history"], state["wall_s"]
        log = HistoryLog(run_dir / f"{phase}_history.jsonl", records) if run_dir is not None else None
        augment = data.augment(cutout)
        console = get_console()
        metrics: dict[str, Any] = dict(records[-1]) if records else {}
        bar = (
            progress_bar(phase, total=n_epochs, completed=start)
            if not quiet
            else contextlib.nullcontext(lambda n, s: None)
        )
        with bar as advance:
            for epoch in range(start, n_epochs):
                t0 = time.perf_counter()
                if hasattr(module, "drop_path_prob"):
                    cast(Any, module).drop_path_prob = drop_path * epoch / n_epochs  # linear ramp (DARTS)
                model.train()
                # Sums stay on the device: one synchronisation per epoch, not one per step.
                loss_sum = torch.zeros((), dtype=self._sum_dtype, device=self.device)
                correct_sum = torch.zeros((), dtype=torch.int64, device=self.device)
                n = 0
                gen = epoch_generator(seed, epoch)
                for x, y in self.batches(data.train, self.batch_size, gen, augment):
                    loss, logits = self.train_step(model, module, opt, x, y, aux_weight)
                    loss_sum += loss.to(self._sum_dtype) * y.numel()
                    correct_sum += (logits.argmax(1) == y).sum()
                    n += int(y.numel())
                train_loss, correct = float(loss_sum), int(correct_sum)
                if not math.isfinite(train_loss):
                    # Checked once per epoch; the epoch's checkpoint is not written, so the last
                    # good one stays.
                    raise NonFiniteLossError(
                        f"{phase}: loss became {train_loss} in epoch {epoch + 1}; the checkpoint of epoch {epoch} is intact"
                        " (try a lower trainer.lr)"
                    )
                sched.step()
                wall += time.perf_counter() - t0
                metrics = {
                    "epoch": epoch + 1,
                    "lr": opt.param_groups[0]["lr"],
                    "train_loss": train_loss / n,
                    "train_acc": 100.0 * correct / n,
                }
                if data.val is not None:
                    metrics["val_loss"], metrics["val_acc"] = self.evaluate(model, data.val)
                metrics["test_loss"], metrics["test_acc"] = self.evaluate(model, data.test)
                metrics["wall_s"] = wall
                if log is not None:
                    log.append(metrics)
                if ckpt is not None:
                    save_checkpoint(
                        ckpt,
                        {
                            "model": module.state_dict(),
                            "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(),
                            "rng": rng_state(),
                            "epoch": epoch + 1,
                            "history": log.records if log is not None else [],
                            "wall_s": wall,
                        },
                    )
                if not quiet:
                    val = f" val_acc {metrics['val_acc']:.2f}" if "val_acc" in metrics else ""
                    console.print(
                        f"{phase} epoch {epoch + 1}/{n_epochs} loss {metrics['train_loss']:.4f} "
                        f"train_acc {metrics['train_acc']:.2f}{val} ({time.perf_counter() - t0:.1f}s)"
                    )
                advance(1, "")
        metrics["epochs"] = n_epochs
        metrics["wall_s"] = wall
        return metrics
