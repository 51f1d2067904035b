"""DARTS's architecture updates (Liu, Simonyan, Yang, ICLR 2019), first and second order.

The one-shot engine (``nasrun.search.oneshot.engine``) runs these steps for DARTS and its family.

Bilevel optimisation on two halves of the training data: the supernet's weights ``w`` minimise the
training loss with SGD; the architecture parameters ``alpha`` minimise the validation loss with
Adam. First order treats ``w`` as fixed when differentiating w.r.t. ``alpha``. Second order
differentiates through one unrolled SGD step ``w' = w - xi * grad_w L_train(w, alpha)`` and
approximates the Hessian-vector product by central finite differences (Eq. 7-8 of the paper).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nasrun import UserError
from nasrun.search.oneshot.plugin import OneShotPlugin, all_around
from nasrun.train.runtime import NonFiniteLossError, cross_entropy
from nasrun.train.trainer import Trainer


@contextlib.contextmanager
def buffers_restored(module: nn.Module) -> Iterator[None]:
    """Put ``module``'s buffers (BatchNorm running statistics) back as they were on leaving the block.

    For training-mode passes that must not count as training: one copy of every buffer on entry,
    one multi-tensor copy back on exit (also when the block raises).
    """
    buffers = list(module.buffers())
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        if buffers:  # a supernet without BatchNorm has none
            with torch.no_grad():
                torch._foreach_copy_(buffers, saved)


def weight_schedule(
    optimizer: torch.optim.Optimizer,
    kind: str,
    epochs: int,
    lr_min: float,
    period: int | None = None,
    period_mul: int = 1,
) -> torch.optim.lr_scheduler.LRScheduler:
    """The weights' learning-rate schedule, stepped once per epoch.

    Args:
        optimizer: the weights' optimiser (its lr is the schedule's top).
        kind: ``cosine``: ``lr_min + (lr - lr_min) (1 + cos(pi e / period)) / 2`` at epoch ``e``
            (``period`` = the search's epochs: DARTS's single decay; a shorter one swings back up
            after ``period`` epochs, as the cosine continues); ``cosine_restarts``: SGDR (Loshchilov
            & Hutter 2017), a cosine over ``period`` epochs that restarts at the top, each period
            ``period_mul`` times the one before.
        epochs: the search's (stage's) epochs.
        lr_min: the schedule's floor.
        period: see ``kind``; ``None``: ``epochs``.
        period_mul: ``cosine_restarts`` only.
    """
    T = period if period is not None else epochs
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T, eta_min=lr_min)
    if kind == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=T, T_mult=period_mul, eta_min=lr_min
        )
    raise UserError(f"search.lr_schedule={kind!r}: must be cosine or cosine_restarts")


class DartsStepper:
    """One DARTS search step (architecture step, then weight step) on a supernet.

    The benchmark script and ``OneShotSearch.run`` both drive this class, so what is timed is what
    runs.

    Args:
        supernet: a module with ``arch_parameters()`` and ``weight_parameters()``.
        trainer: device, precision and memory format.
        order: 1 (first order, xi = 0) or 2 (unrolled, xi = current weight lr).
        lr, lr_min, momentum, weight_decay, grad_clip: the weights' SGD and cosine schedule.
        arch_lr, arch_betas, arch_weight_decay: the architecture's Adam.
        arch_grad_clip: the architecture gradient's norm is clipped at this before each Adam step
            (P-DARTS); 0: no clipping (DARTS).
        unrolled_eps: finite-difference step of the second-order Hessian-vector product, relative
            to the norm of the direction.
        epochs: length of the cosine schedule.
        nesterov: Nesterov momentum for the weights' SGD.
        lr_schedule, lr_period, lr_period_mul: the weights' schedule, stepped once per epoch
            (``weight_schedule``).
    """

    def __init__(
        self,
        supernet: nn.Module,
        trainer: Trainer,
        *,
        order: int,
        epochs: int,
        lr: float,
        lr_min: float,
        momentum: float,
        weight_decay: float,
        grad_clip: float,
        arch_lr: float,
        arch_betas: Sequence[float],
        arch_weight_decay: float,
        arch_grad_clip: float,
        unrolled_eps: float,
        nesterov: bool = False,
        lr_schedule: str = "cosine",
        lr_period: int | None = None,
        lr_period_mul: int = 1,
    ):
        self.module = supernet
        self.unrolled_eps = unrolled_eps
        self.trainer = trainer
        # Data-parallel (several processes), every gradient of a step is averaged over the
        # processes where it is taken (``World.average``), so that weights and alphas stay the same
        # on every process; DistributedDataParallel's reducer cannot follow DARTS's
        # ``autograd.grad`` calls and several passes per step, so the supernet is not wrapped.
        self.world = trainer.world
        self.model = trainer.prepare(supernet, ddp=False)
        self.order = order
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.arch_grad_clip = arch_grad_clip
        self.alphas: list[nn.Parameter] = list(supernet.arch_parameters())  # type: ignore[operator]
        self.weights: list[nn.Parameter] = list(supernet.weight_parameters())  # type: ignore[operator]
        # The weights' names in the same order, for functional calls with substituted weights.
        names = {id(p): n for n, p in supernet.named_parameters()}
        self.weight_names = [names[id(p)] for p in self.weights]
        # foreach: one multi-tensor kernel per update term over all weights (PyTorch picks it by
        # itself only on GPUs; on the CPU it saves a Python loop over hundreds of small tensors).
        self.w_opt = torch.optim.SGD(
            self.weights,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            foreach=True,
        )
        self.sched = weight_schedule(self.w_opt, lr_schedule, epochs, lr_min, lr_period, lr_period_mul)
        betas = (float(arch_betas[0]), float(arch_betas[1]))
        self.a_opt = torch.optim.Adam(self.alphas, lr=arch_lr, betas=betas, weight_decay=arch_weight_decay)
        # The method's plug-ins (set by the loop): their penalties join every architecture step,
        # their contexts surround every weight step.
        self.plugins: Sequence[OneShotPlugin] = ()

    def arch_penalty(self) -> torch.Tensor | None:
        """The sum of the plug-ins' architecture penalties (functions of the alphas), or ``None``."""
        terms = [t for t in (p.arch_penalty(self.module) for p in self.plugins) if t is not None]  # type: ignore[arg-type]
        return torch.stack(terms).sum() if terms else None

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.trainer.autocast():
            logits = self.model(x)
        return cross_entropy(logits, y), logits

    def reads_val_batch(self, arch_step: bool) -> bool:
        """Whether ``step`` reads its validation batch: only for an architecture step."""
        return arch_step

    def step(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor | None,
        y_val: torch.Tensor | None,
        arch_step: bool = True,
    ) -> tuple[float, int]:
        """Update alpha on the validation batch (unless ``arch_step`` is false), then w on the training batch.

        The validation batch may be ``None`` when ``reads_val_batch(arch_step)`` is false.

        Returns:
            The weight step's training loss and number of correct predictions.
        """
        if arch_step:
            assert x_val is not None and y_val is not None, "an architecture step needs a validation batch"
            self.arch_step(x_train, y_train, x_val, y_val)
        return self.weight_step(x_train, y_train)

    def arch_step(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> None:
        """One Adam step of the architecture parameters on the validation loss."""
        if self.order == 1:
            loss_v, _ = self.loss(x_val, y_val)
            # Only the alphas' gradients: autograd then skips every weight-gradient kernel.
            grads: Sequence[torch.Tensor] = self.world.average(torch.autograd.grad(loss_v, self.alphas))
        else:
            grads = self.unrolled_arch_grad(x_train, y_train, x_val, y_val)
        penalty = self.arch_penalty()
        if penalty is not None:  # it depends on the alphas only: its gradient adds to either order's
            extra = torch.autograd.grad(penalty, self.alphas, allow_unused=True)
            grads = [g if e is None else g + e for g, e in zip(grads, extra)]
        for a, g in zip(self.alphas, grads):
            a.grad = g
        if self.arch_grad_clip > 0:
            nn.utils.clip_grad_norm_(self.alphas, self.arch_grad_clip)
        self.a_opt.step()

    def weight_step(self, x_train: torch.Tensor, y_train: torch.Tensor) -> tuple[float, int]:
        """One SGD step of the weights on the training loss; returns the loss and the correct count.

        It runs inside every plug-in's ``around_weight_step`` (SDARTS perturbs the edges' weights
        there).
        """
        with all_around(self.plugins, self, x_train, y_train):
            return self._weight_step(x_train, y_train)

    def _weight_step(self, x_train: torch.Tensor, y_train: torch.Tensor) -> tuple[float, int]:
        # The alphas are frozen so that no gradient is computed for them.
        for a in self.alphas:
            a.requires_grad_(False)
        try:
            loss, logits = self.loss(x_train, y_train)
            if not torch.isfinite(loss):
                # The schedule steps once per finished epoch (and is restored on resume), so it
                # counts the epochs before this one: those the search has checkpointed.
                raise NonFiniteLossError.in_epoch(
                    "search", float(loss.detach()), self.sched.last_epoch, "search.lr"
                )
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
        finally:
            for a in self.alphas:
                a.requires_grad_(True)
        self.world.average_grads(self.weights)
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.w_opt.step()
        return float(loss.detach()), int((logits.detach().argmax(1) == y_train).sum())

    # -- second order -----------------------------------------------------------------------------
    def _functional_loss(
        self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Training-mode loss of the supernet with ``weights`` substituted for its own.

        It updates the BatchNorm running statistics like any training pass; ``unrolled_arch_grad``
        restores them afterwards.
        """
        params: dict[str, torch.Tensor] = dict(zip(self.weight_names, weights, strict=True))
        with self.trainer.autocast():
            logits = functional_call(self.module, params, (x,))
        return cross_entropy(logits, y)

    def unrolled_arch_grad(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> list[torch.Tensor]:
        """The second-order DARTS gradient w.r.t. alpha.

        ``grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)``
        with ``w' = w - xi * (momentum * buf + grad_w L_train(w, alpha) + wd * w)`` (the SGD step the
        weight optimiser would take), ``w+- = w +- eps * grad_w' L_val(w', alpha)`` and
        ``eps = unrolled_eps / ||grad_w' L_val||`` (Liu et al. 2019, Eq. 7-8: ``unrolled_eps = 0.01``).
        """
        # The four extra passes run in training mode, which normalises with the batch's own
        # statistics: the running statistics they record change no output and are put back after,
        # so the ordinary steps alone set them (one copy of all buffers, not one per pass).
        with buffers_restored(self.module):
            return self._unrolled_arch_grad(x_train, y_train, x_val, y_val)

    def _unrolled_arch_grad(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> list[torch.Tensor]:
        xi = self.w_opt.param_groups[0]["lr"]
        w = [p.detach() for p in self.weights]
        loss_t = self._functional_loss(self.weights, x_train, y_train)
        g_train = self.world.average(torch.autograd.grad(loss_t, self.weights))
        # The SGD step the optimiser would take, over all weights at once (multi-tensor ops, the
        # same arithmetic term by term as per-tensor code, so the same rounding).
        steps: list[torch.Tensor] = list(
            torch._foreach_add(g_train, torch._foreach_mul(w, self.weight_decay))
        )
        bufs = [self.w_opt.state.get(p, {}).get("momentum_buffer") for p in self.weights]
        if all(b is not None for b in bufs):
            torch._foreach_add_(steps, torch._foreach_mul(bufs, self.momentum))  # type: ignore[arg-type]
        else:  # before the first weight step there is no buffer
            steps = [st if b is None else st + self.momentum * b for st, b in zip(steps, bufs)]
        unrolled = [u.requires_grad_(True) for u in torch._foreach_sub(w, torch._foreach_mul(steps, xi))]
        loss_v = self._functional_loss(unrolled, x_val, y_val)
        grads = self.world.average(torch.autograd.grad(loss_v, [*self.alphas, *unrolled]))
        d_alpha, d_w = grads[: len(self.alphas)], list(grads[len(self.alphas) :])
        eps = self.unrolled_eps / torch.cat([g.flatten() for g in d_w]).norm()
        shift = torch._foreach_mul(d_w, eps)
        w_plus = torch._foreach_add(w, shift)
        g_plus = torch.autograd.grad(self._functional_loss(w_plus, x_train, y_train), self.alphas)
        w_minus = torch._foreach_sub(w, shift)
        g_minus = torch.autograd.grad(self._functional_loss(w_minus, x_train, y_train), self.alphas)
        both = self.world.average([*g_plus, *g_minus])  # one all-reduce for the two
        g_plus, g_minus = tuple(both[: len(g_plus)]), tuple(both[len(g_plus) :])
        return [da - xi * (gp - gm) / (2 * eps) for da, gp, gm in zip(d_alpha, g_plus, g_minus)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "supernet": self.module.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "sched": self.sched.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["supernet"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.sched.load_state_dict(state["sched"])
