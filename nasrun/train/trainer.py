"""The trainer: a ``Runtime`` that also trains, with the epoch loop, its checkpoints and its history.

``Trainer`` is the ``trainer`` config group. The search strategies use its ``Runtime`` side (device,
precision, batches, evaluation; ``nasrun.train.runtime``) and its SGD settings; ``fit`` trains a
discrete network (retraining, or a proxy run inside an evaluator), checkpoints every epoch
(weights, optimiser, scheduler, RNG states, history) and resumes from the last complete epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from nasrun import UserError
from nasrun.console import get_console, progress_bar
from nasrun.data.base import DataModule, clamp_batch_size
from nasrun.run_folder import (
    HistoryLog,
    RecordSink,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from nasrun.train.distributed import detect, join
from nasrun.train.duration import DurationCheck
from nasrun.train.runtime import NonFiniteLossError, Runtime, cross_entropy, epoch_generator
from nasrun.train.scalar_log import ScalarLog, require_tensorboard


class Trainer(Runtime):
    """How networks are trained: a ``Runtime`` (device, precision, ...) with an SGD schedule.

    Args:
        device, amp, channels_last, compile, eval_batch_size, threads: the ``Runtime``'s.
        epochs: training epochs.
        batch_size: training batch size.
        lr: initial SGD learning rate, annealed by a cosine schedule to ``lr_min``.
        lr_min: final learning rate.
        momentum: SGD momentum.
        nesterov: Nesterov momentum instead of the plain heavy-ball form.
        weight_decay: SGD weight decay.
        grad_clip: clip the gradient norm to this (0 = off).
        tensorboard: also write each epoch's metrics as TensorBoard scalars under
            ``run_dir/tensorboard/`` (needs the ``tensorboard`` package: ``pip install nasrun[tensorboard]``).
        distributed: ``auto``: data-parallel when started as several processes (torchrun, a
            SLURM job of several tasks; ``nasrun.train.distributed``); ``off``: one process.
        batch_per_device: data-parallel: each process's batch, the global batch being this times
            the processes; ``None``: the global batch is ``batch_size``, split over the processes.
        sync_batchnorm: data-parallel: BatchNorm normalises with the statistics of the global batch
            (``nasrun.train.sync_batchnorm``), as one process would; ``false``: with each process's
            share's (``DistributedDataParallel``'s default: no collective call per BatchNorm, but
            results that depend on the number of processes).
    """

    def __init__(
        self,
        device: str = "auto",  # auto picks CUDA when present, else the CPU
        amp: str = "none",  # none | bf16 (autocast; weights stay float32)
        channels_last: bool | str = "auto",  # NHWC memory format; auto: on where measured faster (the CPU)
        compile: bool = False,  # torch.compile the network (pays a compile time up front)
        epochs: int = 600,  # DARTS retraining (Liu et al. 2019, Sec. 3.3): 600 epochs
        batch_size: int = 96,  # DARTS retraining: batch 96
        lr: float = 0.025,  # DARTS retraining: SGD lr 0.025 ...
        lr_min: float = 0.0,  # ... cosine-annealed to 0
        momentum: float = 0.9,  # DARTS: SGD momentum 0.9
        nesterov: bool = False,  # DARTS: plain momentum (NAS-Bench-201 uses Nesterov's)
        weight_decay: float = 3e-4,  # DARTS: weight decay 3e-4
        grad_clip: float = 5.0,  # DARTS: gradient norm clipped at 5
        eval_batch_size: int = 256,  # evaluation only; no effect on results
        threads: int | str = "auto",  # CPU threads: auto = cores / the launcher's parallel jobs, or N
        tensorboard: bool = False,  # also write TensorBoard scalars (pip install nasrun[tensorboard])
        distributed: str = "auto",  # data-parallel when started by torchrun or as SLURM tasks; off: never
        batch_per_device: int | None = None,  # data-parallel: per-process batch; None: batch_size split
        sync_batchnorm: bool = True,  # data-parallel: BatchNorm statistics of the global batch, as one process
    ):
        super().__init__(device, amp, channels_last, compile, eval_batch_size, threads)
        self.world = detect(distributed)
        if self.world.active and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", self.world.local_rank)  # one GPU per process
        if batch_per_device is not None and batch_per_device <= 0:
            raise UserError(f"trainer.batch_per_device={batch_per_device}: must be > 0 (or null)")
        self.batch_per_device = batch_per_device
        self.sync_batchnorm = sync_batchnorm
        for key, value in (("epochs", epochs), ("batch_size", batch_size)):
            if value <= 0:
                raise UserError(f"trainer.{key}={value}: must be > 0")
        if not lr > 0 or lr_min < 0 or lr_min > lr:
            raise UserError(f"trainer.lr={lr} / trainer.lr_min={lr_min}: need 0 <= lr_min <= lr and lr > 0")
        if nesterov and not momentum > 0:
            raise UserError(f"trainer.nesterov=true needs trainer.momentum > 0, got {momentum}")
        if tensorboard:
            require_tensorboard()
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.lr_min = lr_min
        self.momentum = momentum
        self.nesterov = nesterov
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.tensorboard = tensorboard

    @property
    def global_batch_size(self) -> int:
        """The batch of one SGD step over all processes."""
        if self.batch_per_device is not None:
            return self.batch_per_device * self.world.size
        return self.batch_size

    def scalar_log(self, run_dir: Path, phase: str, step_key: str = "epoch") -> ScalarLog | None:
        """TensorBoard scalars for a phase's history records, if ``tensorboard`` is on."""
        return ScalarLog(run_dir / "tensorboard", phase, step_key) if self.tensorboard else None

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
        sinks: Sequence[RecordSink] = (),
    ) -> dict[str, Any]:
        """Train ``model`` with SGD and a cosine schedule; evaluate on val and test every epoch.

        Args:
            model: returns logits ``[B, K]``, or ``(logits, aux_logits)`` in training mode when it
                has an auxiliary head. A ``drop_path_prob`` attribute, if present, is ramped
                linearly from 0 to ``drop_path`` over the epochs (DARTS retraining); a
                ``drop_path_share`` attribute is set to this process's part of each global batch
                when data-parallel (``None`` alone), so that the masks are one process's.
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
            sinks: also receive each epoch's record (with ``run_dir``): a sweep's per-epoch
                reports, whose pruner may stop the run by raising from ``append``.

        Returns:
            Final-epoch metrics: ``train_loss``, ``train_acc``, ``val_loss``/``val_acc`` (when a
            validation split exists), ``test_loss``, ``test_acc``, ``epochs``, ``wall_s``.

        Raises:
            NonFiniteLossError: the loss became NaN/inf (the previous epoch's checkpoint stays).
        """
        n_epochs = epochs or self.epochs
        world = self.world
        join(world, self.device)
        quiet = quiet or not world.main
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
        if resume and ckpt is not None and ckpt.is_file():  # every rank reads rank 0's checkpoint
            state = load_checkpoint(ckpt)
            module.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            start, records, wall = state["epoch"], state["history"], state["wall_s"]
        log = (
            HistoryLog(
                run_dir / f"{phase}_history.jsonl",
                records,
                [self.scalar_log(run_dir, phase), *sinks],
                write=world.main,  # data-parallel: the first process writes for all
            )
            if run_dir is not None
            else None
        )
        augment = data.augment(cutout)
        batch_size = clamp_batch_size(self.global_batch_size, len(data.train), "trainer.batch_size")
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
                for batch in self.batches(data.train, batch_size, gen, augment):
                    share = world.share(*batch)  # data-parallel: this process's part of the batch
                    if share is None:
                        continue
                    x, y = share
                    if hasattr(module, "drop_path_share"):  # the masks of the global batch, this share's rows
                        cast(Any, module).drop_path_share = world.rows(len(batch[0]))
                    loss, logits = self.train_step(model, module, opt, x, y, aux_weight)
                    if check is not None:
                        check.step()
                    loss_sum += loss.to(self._sum_dtype) * y.numel()
                    correct_sum += (logits.argmax(1) == y).sum()
                    n += int(y.numel())
                train_loss, correct_f, n_f = world.totals([loss_sum, correct_sum, n], self.device)
                correct, n = int(correct_f), int(n_f)
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
                # Data-parallel: every rank evaluates its share of the split with rank 0's weights
                # and BatchNorm statistics (the unwrapped module: no collective per forward pass).
                evaluated = self.synced(module) if world.active else model
                if data.val is not None:
                    metrics["val_loss"], metrics["val_acc"] = self.evaluate(evaluated, data.val)
                metrics["test_loss"], metrics["test_acc"] = self.evaluate(evaluated, data.test)
                metrics["wall_s"] = wall
                if log is not None and ckpt is not None:
                    # The checkpoint first, then the epoch's line (HistoryLog.commit): a kill in
                    # between leaves no line that the checkpoint lacks.
                    saved = {
                        "model": module.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "rng": rng_state(),
                        "epoch": epoch + 1,
                        "wall_s": wall,
                    }
                    world.write_together(partial(log.commit, [metrics], ckpt, saved), self.device)
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
