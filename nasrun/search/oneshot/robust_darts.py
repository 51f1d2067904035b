"""RobustDARTS (Zela et al., ICLR 2020): the validation Hessian's dominant eigenvalue, and DARTS-ES.

The paper relates DARTS's poor cells to a sharp validation loss in the architecture parameters: the
dominant eigenvalue of the Hessian of ``L_val + (arch_weight_decay / 2) ||alpha||^2`` w.r.t. all
alphas grows as the search degenerates. ``HessianEigenvalue`` records that eigenvalue after each
epoch (``hessian_eigenvalue`` in the history) and, as DARTS-ES, stops the search once the
eigenvalue's local average has grown too fast, and makes the cell of ``window`` epochs earlier the
result. The stop and the restore read only the history's records, so a resumed search stops and
restores where the uninterrupted one does.

The regularised forms are settings: R-DARTS(L2) a larger weight decay of the supernet's weights
(``conf/search/robust_darts_l2.yaml``), R-DARTS(DP) the ``ScheduledDropPath`` plug-in
(``conf/search/robust_darts_dp.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from nasrun import UserError
from nasrun.search.oneshot.darts import buffers_restored
from nasrun.search.oneshot.plugin import (
    HESSIAN_STREAM,
    EpochData,
    EpochStart,
    OneShotPlugin,
    SearchSettings,
    Stepper,
)
from nasrun.train.runtime import cross_entropy

KEY = "hessian_eigenvalue"


def dominant_eigenvalue(
    hvp: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    *,
    iters: int = 50,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> float:
    """The largest (algebraic) eigenvalue of a symmetric ``n x n`` matrix given by its products.

    Power iteration finds the eigenvalue of largest magnitude; where that one is negative, a second
    power iteration on ``H - lambda I`` (whose spectrum is then non-negative) finds the largest one.

    Args:
        hvp: ``v [n] -> H v [n]``.
        n: the matrix's size.
        iters: the most iterations of each power iteration.
        tol: stop once the Rayleigh quotient changes by less than ``tol`` times its magnitude.
        generator: draws the start vector (a fixed one makes the result reproducible).
        dtype, device: of the vectors.

    Returns:
        The eigenvalue, as a float.
    """

    def power(op: Callable[[torch.Tensor], torch.Tensor]) -> float:
        v = torch.randn(n, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
        v = v / v.norm()
        lam = 0.0
        for _ in range(iters):
            w = op(v)
            new = float(torch.dot(v, w))  # Rayleigh quotient of the unit vector v
            norm = w.norm()
            if norm == 0:
                return 0.0
            v = w / norm
            if abs(new - lam) <= tol * max(abs(new), 1e-12):
                return new
            lam = new
        return lam

    top = power(hvp)
    if top >= 0:
        return top
    shifted = power(lambda v: hvp(v) - top * v)  # the spectrum of H - top I lies in [0, lambda_max - top]
    return shifted + top


def validation_hvp(
    loss: torch.Tensor, params: Sequence[torch.Tensor], weight_decay: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Hessian-vector products of ``loss + (weight_decay / 2) sum ||p||^2`` w.r.t. ``params``, flattened.

    One backward pass with a graph, then one double-backward pass per product.
    """
    grads = torch.autograd.grad(loss, list(params), create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])

    def hvp(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(flat, list(params), grad_outputs=v.to(flat.dtype), retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).to(v.dtype) + weight_decay * v

    return hvp


def local_averages(values: Sequence[float], window: int) -> list[float]:
    """Trailing means of ``window`` values: entry ``j`` averages ``values[j - window + 1 .. j]``."""
    return [sum(values[j - window + 1 : j + 1]) / window for j in range(window - 1, len(values))]


class HessianEigenvalue(OneShotPlugin):
    """Records the validation Hessian's dominant eigenvalue each epoch; optionally DARTS-ES's stop.

    The eigenvalue is that of the Hessian w.r.t. all architecture parameters (every cell type's
    alphas in one vector) of the validation loss on ``batches`` batches of the architecture's split
    (the supernet in training mode, as the steps run it; its BatchNorm statistics are put back),
    plus the architecture's weight decay.

    DARTS-ES: with ``a(i)`` the mean of the eigenvalues of epochs ``i - window + 1 .. i`` (epochs
    with architecture steps), the search stops after epoch ``i`` once ``a(i - window) / a(i) <
    ratio``, and the result is the cell of epoch ``i - window``.

    Args:
        every: the eigenvalue after every ``every``-th epoch (and the last).
        batches: validation batches of the loss (the search's batch size).
        iters: most power iterations.
        tol: the power iteration's relative tolerance.
        early_stop: whether to stop (DARTS-ES) or only record.
        window: the local average's epochs, and how far back the comparison and the restore go.
        ratio: the stop threshold on ``a(i - window) / a(i)`` (above 1, it stops even without growth).
        first_result_epoch: no cell before this epoch (counted from 1) is restored.
    """

    def __init__(
        self,
        every: int = 1,  # paper: an eigenvalue per epoch (reference scripts: every 2 epochs)
        batches: int = 1,  # reference: one validation batch (src/search/train_search.py:393)
        iters: int = 50,  # ours: the reference builds the full Hessian instead
        tol: float = 1e-4,  # ours
        early_stop: bool = True,  # DARTS-ES
        window: int = 5,  # paper: k = 5 (reference --window 5)
        ratio: float = 0.75,  # paper: 0.75
        first_result_epoch: int = 11,  # reference --es_start_epoch 10, counted from 0
    ) -> None:
        for key, value in (("every", every), ("batches", batches), ("iters", iters), ("window", window)):
            if value < 1:
                raise UserError(f"search.plugins.hessian.{key}={value}: must be >= 1")
        if ratio <= 0:
            raise UserError(f"search.plugins.hessian.ratio={ratio}: must be > 0")
        if tol <= 0:
            raise UserError(f"search.plugins.hessian.tol={tol}: must be > 0")
        self.every = every
        self.batches = batches
        self.iters = iters
        self.tol = tol
        self.early_stop = early_stop
        self.window = window
        self.ratio = ratio
        self.first_result_epoch = first_result_epoch

    def check(self, search: SearchSettings) -> None:
        if search.single_level:
            raise UserError(
                "search.plugins.hessian: the eigenvalue is of the validation loss; this search has no "
                "validation split (search.train_portion) for it"
            )

    def eigenvalue(self, stepper: Stepper, data: EpochData) -> float:
        """The dominant eigenvalue at the stepper's current weights and alphas on ``data``'s batches."""
        alphas = stepper.alphas
        decay = float(stepper.a_opt.param_groups[0]["weight_decay"])
        saved = [a.requires_grad for a in alphas]
        for a in alphas:
            a.requires_grad_(True)
        try:
            with buffers_restored(stepper.module):
                stepper.module.train()
                it = data.batches(HESSIAN_STREAM)
                losses = []
                for _ in range(self.batches):
                    got = next(it, None)
                    if got is None:
                        break
                    x, y = got
                    # The plain module in full precision: a compiled model has no double backward,
                    # and half-precision products would blur the eigenvalue.
                    losses.append(cross_entropy(stepper.module(x), y))
                loss = torch.stack(losses).mean()
                hvp = validation_hvp(loss, alphas, decay)
                n = sum(a.numel() for a in alphas)
                gen = data.generator(HESSIAN_STREAM)
                return dominant_eigenvalue(
                    hvp, n, iters=self.iters, tol=self.tol, generator=gen, device=alphas[0].device
                )
        finally:
            for a, s in zip(alphas, saved):
                a.requires_grad_(s)

    def end_epoch(self, stepper: Stepper, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        if (data.epoch + 1) % self.every != 0 and not data.last:
            return {}
        return {KEY: self.eigenvalue(stepper, data)}

    def _fires(self, records: Sequence[dict[str, Any]]) -> tuple[int, float] | None:
        """If the rule stops after the last record: (the restored epoch, the ratio)."""
        if not self.early_stop or not records or KEY not in records[-1]:
            return None
        seen = [r for r in records if KEY in r and r.get("arch_steps", True)]
        if len(seen) < 2 * self.window or seen[-1] is not records[-1]:
            return None
        avg = local_averages([float(r[KEY]) for r in seen], self.window)
        back, now = avg[-1 - self.window], avg[-1]
        restored = int(seen[-1 - self.window]["epoch"])
        if restored < self.first_result_epoch or now <= 0:
            return None
        if back / now < self.ratio:
            return restored, back / now
        return None

    def stop(self, records: Sequence[dict[str, Any]]) -> str | None:
        fired = self._fires(records)
        if fired is None:
            return None
        restored, r = fired
        return (
            f"the Hessian's dominant eigenvalue grew: its {self.window}-epoch average {self.window} "
            f"epochs back over now is {r:.3f} < {self.ratio}; the cell of epoch {restored} is the result"
        )

    def result_epoch(self, records: Sequence[dict[str, Any]]) -> int | None:
        fired = self._fires(records)
        return None if fired is None else fired[0]


class ScheduledDropPath(OneShotPlugin):
    """Drop-path on every edge's mixed output during the search, its rate rising linearly.

    At epoch ``e`` (from 0) of ``E`` the rate is ``drop_prob * e / (E - 1)``: none in the first
    epoch, ``drop_prob`` in the last. It acts in training mode only (the steps, and the Hessian's
    loss, which the reference also computes in training mode), never on the evaluation passes.

    Args:
        drop_prob: the last epoch's rate.
    """

    def __init__(self, drop_prob: float = 0.2) -> None:  # reference --drop_path_prob default 0.2
        if not 0 <= drop_prob < 1:
            raise UserError(f"search.plugins.drop_path.drop_prob={drop_prob}: must be in [0, 1)")
        self.drop_prob = drop_prob

    def rate(self, epoch: int, epochs: int) -> float:
        """The rate of ``epoch`` (from 0) of ``epochs``."""
        return self.drop_prob * epoch / (epochs - 1) if epochs > 1 else 0.0

    def _set(self, stepper: Stepper, p: float) -> None:
        setter = getattr(stepper.module, "set_drop_path", None)
        if setter is None or setter(p) == 0:
            raise UserError(
                "search.plugins.drop_path: the supernet has no DenseEdge edges (search.edge) to drop paths on"
            )

    def attach(self, stepper: Stepper) -> None:
        self._set(stepper, 0.0)  # fails at build time on a supernet without such edges

    def start_epoch(self, stepper: Stepper, epoch: EpochStart) -> None:
        self._set(stepper, self.rate(epoch.epoch, epoch.epochs))
