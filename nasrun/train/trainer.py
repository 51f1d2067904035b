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
from nasrun.data.base import DataModule, TensorSplit, batches, clamp_batch_size
from nasrun.report.console import get_console, progress_bar
from nasrun.run_folder import HistoryLog, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nasrun.train.duration import DurationCheck
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
        nesterov: Nesterov momentum instead of the plain heavy-ball form.
        weight_decay: SGD weight decay.
        grad_clip: clip the gradient norm to this (0 = off).
        eval_batch_size: batch size for evaluation passes.
        threads: CPU threads per process: ``auto`` (this process's cores divided by the jobs the
            launcher runs at once, or ``OMP_NUM_THREADS`` if set) or a positive int; applied by the
            pipeline when a run starts (``nasrun.train.threads``).
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
        nesterov: bool = False,
        weight_decay: float = 3e-4,
        grad_clip: float = 5.0,
        eval_batch_size: int = 256,
        threads: int | str = "auto",
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
        if nesterov and not momentum > 0:
            raise UserError(f"trainer.nesterov=true needs trainer.momentum > 0, got {momentum}")
        self.device = resolve_device(device)
        self.amp = amp
        self.channels_last = channels_last
        self.compile = compile
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_min = lr_min
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.eval_batch_size = eval_batch_size
        parse_threads(threads)  # UserError naming trainer.threads
        self.threads = threads
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
        shorten_hint: str = "trainer.epochs=N",
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
            shorten_hint: the config keys that shorten this phase, named in the warning printed
                when its first steps show that it will take long (``DurationCheck``).

        Returns:
            Final-epoch metrics: ``train_loss``, ``train_acc``, ``val_loss``/``val_acc`` (when a
            validation split exists), ``test_loss``, ``test_acc``, ``epochs``, ``wall_s``.

        Raises:
            NonFiniteLossError: the loss became NaN/inf (the previous epoch's checkpoint stays).
        """
        n_epochs = epochs or self.epochs
        module = model
        model = self.prepare(module)
        opt = torch.optim.SGD(
            module.parameters(),
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            weight_decay=self.weight_decay,
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
        batch_size = clamp_batch_size(self.batch_size, len(data.train), "trainer.batch_size")
        console = get_console()
        metrics: dict[str, Any] = dict(records[-1]) if records else {}
        bar = (
            progress_bar(phase, total=n_epochs, completed=start)
            if not quiet
            else contextlib.nullcontext(lambda n, s: None)
        )
        check = (
            DurationCheck(
                phase,
                steps_per_epoch=math.ceil(len(data.train) / batch_size),
                epochs=n_epochs - start,
                hint=shorten_hint,
                device=str(self.device),
                sync=torch.cuda.synchronize if self.device.type == "cuda" else None,
            )
            if not quiet
            else None
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
                for x, y in self.batches(data.train, batch_size, gen, augment):
                    loss, logits = self.train_step(model, module, opt, x, y, aux_weight)
                    if check is not None:
                        check.step()
                    loss_sum += loss.to(self._sum_dtype) * y.numel()
                    correct_sum += (logits.argmax(1) == y).sum()
                    n += int(y.numel())
                train_loss, correct = float(loss_sum), int(correct_sum)
                if not math.isfinite(train_loss):
                    # Checked once per epoch; the epoch's checkpoint is not written, so the last
                    # good one stays.
                    raise NonFiniteLossError.in_epoch(
                        phase, train_loss, epoch, "trainer.lr", checkpoints=ckpt is not None
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
