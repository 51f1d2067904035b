"""DARTS: differentiable architecture search (Liu, Simonyan, Yang, ICLR 2019), first and second order.

Bilevel optimisation on two halves of the training data: the supernet's weights ``w`` minimise the
training loss with SGD; the architecture parameters ``alpha`` minimise the validation loss with
Adam. First order treats ``w`` as fixed when differentiating w.r.t. ``alpha``. Second order
differentiates through one unrolled SGD step ``w' = w - xi * grad_w L_train(w, alpha)`` and
approximates the Hessian-vector product by central finite differences (Eq. 7-8 of the paper).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from nasrun import UserError
from nasrun.data.base import TensorSplit, clamp_batch_size
from nasrun.report.console import get_console, progress_bar
from nasrun.search.base import HistoryLog, SearchContext, SearchResult
from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype
from nasrun.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from nasrun.train.trainer import NonFiniteLossError, Trainer, cross_entropy, epoch_generator


class DartsStepper:
    """One DARTS search step (architecture step, then weight step) on a supernet.

    The benchmark script and ``DartsSearch.run`` both drive this class, so what is timed is what
    runs.

    Args:
        supernet: a module with ``arch_parameters()`` and ``weight_parameters()``.
        trainer: device, precision and memory format.
        order: 1 (first order, xi = 0) or 2 (unrolled, xi = current weight lr).
        lr, lr_min, momentum, weight_decay, grad_clip: the weights' SGD and cosine schedule.
        arch_lr, arch_betas, arch_weight_decay: the architecture's Adam.
        unrolled_eps: finite-difference step of the second-order Hessian-vector product, relative
            to the norm of the direction.
        epochs: length of the cosine schedule.
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
        unrolled_eps: float = 0.01,
    ):
        self.module = supernet
        self.unrolled_eps = unrolled_eps
        self.trainer = trainer
        self.model = trainer.prepare(supernet)
        self.order = order
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.alphas: list[nn.Parameter] = list(supernet.arch_parameters())  # type: ignore[operator]
        self.weights: list[nn.Parameter] = list(supernet.weight_parameters())  # type: ignore[operator]
        # Parameter names in the same order, for functional calls with substituted weights.
        self.weight_names = [n for n, p in supernet.named_parameters() if not n.startswith("alphas_")]
        self.w_opt = torch.optim.SGD(self.weights, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=epochs, eta_min=lr_min)
        betas = (float(arch_betas[0]), float(arch_betas[1]))
        self.a_opt = torch.optim.Adam(self.alphas, lr=arch_lr, betas=betas, weight_decay=arch_weight_decay)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.trainer.autocast():
            logits = self.model(x)
        return cross_entropy(logits, y), logits

    def step(
        self, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> tuple[float, int]:
        """Update alpha on the validation batch, then w on the training batch.

        Returns:
            The weight step's training loss and number of correct predictions.
        """
        # Architecture step.
        if self.order == 1:
            loss_v, _ = self._loss(x_val, y_val)
            # Only the alphas' gradients: autograd then skips every weight-gradient kernel.
            grads: Sequence[torch.Tensor] = torch.autograd.grad(loss_v, self.alphas)
        else:
            grads = self.unrolled_arch_grad(x_train, y_train, x_val, y_val)
        for a, g in zip(self.alphas, grads):
            a.grad = g
        self.a_opt.step()
        # Weight step, with the alphas frozen so that no gradient is computed for them.
        for a in self.alphas:
            a.requires_grad_(False)
        try:
            loss, logits = self._loss(x_train, y_train)
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
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.w_opt.step()
        return float(loss.detach()), int((logits.detach().argmax(1) == y_train).sum())

    # -- second order -----------------------------------------------------------------------------
    def _functional_loss(
        self, weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Training-mode loss of the supernet with ``weights`` substituted for its own.

        Buffers are passed as copies, so these extra forward passes leave the BatchNorm running
        statistics as the ordinary steps set them.
        """
        params: dict[str, torch.Tensor] = dict(zip(self.weight_names, weights))
        params.update({n: b.clone() for n, b in self.module.named_buffers()})
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
        xi = self.w_opt.param_groups[0]["lr"]
        w = [p.detach() for p in self.weights]
        loss_t = self._functional_loss(self.weights, x_train, y_train)
        g_train = torch.autograd.grad(loss_t, self.weights)
        unrolled = []
        for p, wi, gi in zip(self.weights, w, g_train):
            buf = self.w_opt.state.get(p, {}).get("momentum_buffer")
            step = gi + self.weight_decay * wi
            if buf is not None:
                step = step + self.momentum * buf
            unrolled.append((wi - xi * step).requires_grad_(True))
        loss_v = self._functional_loss(unrolled, x_val, y_val)
        grads = torch.autograd.grad(loss_v, [*self.alphas, *unrolled])
        d_alpha, d_w = grads[: len(self.alphas)], grads[len(self.alphas) :]
        eps = self.unrolled_eps / torch.cat([g.flatten() for g in d_w]).norm()
        w_plus = [wi + eps * d for wi, d in zip(w, d_w)]
        g_plus = torch.autograd.grad(self._functional_loss(w_plus, x_train, y_train), self.alphas)
        w_minus = [wi - eps * d for wi, d in zip(w, d_w)]
        g_minus = torch.autograd.grad(self._functional_loss(w_minus, x_train, y_train), self.alphas)
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


class DartsSearch:
    """The DARTS search loop: epochs of steps, a genotype derived after each epoch.

    Defaults are the DARTS paper's CIFAR-10 search protocol (Liu et al. 2019, Sec. 3.1 and the
    reference code); see ``conf/search/darts.yaml``. ``budget`` exists only so that the black-box
    strategies' ``search.budget`` composes in a multirun over strategies; a value is refused.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        order: int = 1,
        epochs: int = 50,
        batch_size: int = 64,
        train_portion: float = 0.5,
        lr: float = 0.025,
        lr_min: float = 0.001,
        momentum: float = 0.9,
        weight_decay: float = 3e-4,
        grad_clip: float = 5.0,
        arch_lr: float = 3e-4,
        arch_betas: Sequence[float] = (0.5, 0.999),
        arch_weight_decay: float = 1e-3,
        unrolled_eps: float = 0.01,
        budget: int | None = None,
    ):
        if budget is not None:
            raise UserError(
                f"search.budget={budget}: DARTS has no evaluation budget (it trains a supernet for "
                "search.epochs epochs); the budget is for the black-box strategies (search=random_search, ...)"
            )
        if order not in (1, 2):
            raise UserError(f"search.order={order}: must be 1 (first order) or 2 (second order)")
        if epochs <= 0:
            raise UserError(f"search.epochs={epochs}: must be > 0")
        if batch_size <= 0:
            raise UserError(f"search.batch_size={batch_size}: must be > 0")
        if not 0.0 < train_portion < 1.0:
            raise UserError(f"search.train_portion={train_portion}: must be in (0, 1)")
        if len(arch_betas) != 2:
            raise UserError(f"search.arch_betas={list(arch_betas)}: needs two values")
        if not hasattr(space, "build_supernet"):
            raise UserError(f"search=darts needs a space with a supernet; space {space.name!r} has none")
        self.space = space
        self.seed = seed
        self.order = order
        self.epochs = epochs
        self.batch_size = batch_size
        self.train_portion = train_portion
        self.opt_args = dict(
            lr=lr,
            lr_min=lr_min,
            momentum=momentum,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            arch_lr=arch_lr,
            arch_betas=arch_betas,
            arch_weight_decay=arch_weight_decay,
            unrolled_eps=unrolled_eps,
        )

    def make_stepper(self, num_classes: int, in_channels: int, trainer: Trainer) -> DartsStepper:
        torch.manual_seed(self.seed)
        supernet = self.space.build_supernet(num_classes=num_classes, in_channels=in_channels)  # type: ignore[attr-defined]
        return DartsStepper(supernet, trainer, order=self.order, epochs=self.epochs, **self.opt_args)  # type: ignore[arg-type]

    def split(self, train: TensorSplit) -> tuple[TensorSplit, TensorSplit]:
        """The weights' half and the architecture's half of the training data."""
        n = len(train)
        n_w = int(n * self.train_portion)
        if n_w < 1 or n - n_w < 1:
            raise UserError(
                f"search.train_portion={self.train_portion}: leaves an empty half of {n} training images"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        return train.subset(perm[:n_w]), train.subset(perm[n_w:])

    def run(self, ctx: SearchContext) -> SearchResult:
        if ctx.data is None or ctx.trainer is None:
            raise UserError("search=darts needs data and a trainer")
        data, trainer = ctx.data, ctx.trainer
        w_half, a_half = self.split(data.train)
        stepper = self.make_stepper(data.num_classes, data.in_channels, trainer)
        ckpt = ctx.checkpoint_dir / "search.pt"
        start, records, wall = 0, [], 0.0
        if ctx.resume and ckpt.is_file():
            state = load_checkpoint(ckpt)
            stepper.load_state_dict(state["stepper"])
            set_rng_state(state["rng"])
            start, records, wall = state["epoch"], state["history"], state["wall_s"]
        log = HistoryLog(ctx.run_dir / "history.jsonl", records)
        n_half = min(len(w_half), len(a_half))  # zip stops at the shorter half
        batch_size = clamp_batch_size(
            self.batch_size, n_half, "search.batch_size", "images in each half of the search data"
        )
        steps = -(-n_half // batch_size)
        console = get_console()
        augment = data.augment()
        with progress_bar("search", total=self.epochs * steps, completed=start * steps) as advance:
            for epoch in range(start, self.epochs):
                t0 = time.perf_counter()
                stepper.model.train()
                loss_sum, correct, n = 0.0, 0, 0
                train_it = trainer.batches(w_half, batch_size, epoch_generator(self.seed, epoch, 0), augment)
                val_it = trainer.batches(a_half, batch_size, epoch_generator(self.seed, epoch, 1), augment)
                for (xt, yt), (xv, yv) in zip(train_it, val_it):
                    loss, c = stepper.step(xt, yt, xv, yv)
                    loss_sum += loss * yt.numel()
                    correct += c
                    n += int(yt.numel())
                    advance(1, f"epoch {epoch + 1} loss {loss_sum / n:.3f}")
                stepper.sched.step()
                val_loss, val_acc = trainer.evaluate(stepper.model, a_half)
                wall += time.perf_counter() - t0
                genotype = stepper.module.genotype()  # type: ignore[operator]
                record = {
                    "epoch": epoch + 1,
                    "lr": stepper.w_opt.param_groups[0]["lr"],
                    "train_loss": loss_sum / max(n, 1),
                    "train_acc": 100.0 * correct / max(n, 1),
                    "val_loss": val_loss,
                    "val_acc": val_acc,
                    "alphas": stepper.module.arch_weights(),  # type: ignore[operator]
                    "genotype": genotype.to_dict(),
                    "wall_s": wall,
                }
                log.append(record)
                save_checkpoint(
                    ckpt,
                    {
                        "stepper": stepper.state_dict(),
                        "rng": rng_state(),
                        "epoch": epoch + 1,
                        "history": log.records,
                        "wall_s": wall,
                    },
                )
                console.print(
                    f"search epoch {epoch + 1}/{self.epochs} loss {record['train_loss']:.4f} "
                    f"train_acc {record['train_acc']:.2f} val_acc {val_acc:.2f} ({time.perf_counter() - t0:.1f}s)"
                )
        last = log.records[-1]
        return SearchResult(
            genotype=Genotype.from_dict(last["genotype"]),
            metrics={
                "search_val_acc": last["val_acc"],
                "search_wall_s": last["wall_s"],
                "search_epochs": self.epochs,
            },
            history=log.records,
        )
