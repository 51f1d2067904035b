"""How a one-shot method turns architecture parameters into the weights its edges get (the method's choice).

DARTS gives every edge the softmax of its parameters ``alpha`` (``OneShotNetwork`` does that when
no sampler is set). The samplers here draw a random architecture on every training forward pass:

- ``GumbelSoftmax`` (SNAS, Xie et al., ICLR 2019): the concrete relaxation of a one-hot sample,
  ``softmax((log_softmax(alpha) + g) / tau)`` with Gumbel noise ``g``; every op gets a weight.
- ``GumbelMaxST`` (GDAS, Dong & Yang, CVPR 2019): the one-hot Gumbel-max sample in the forward
  pass, the gradient of the relaxed sample in the backward pass (straight-through). With
  ``nasrun.search.oneshot.sampled_edges.SampledEdge`` only the sampled op of each edge runs.

The temperature ``tau`` anneals over the search, one value per epoch: the search loop calls
``set_epoch`` at the start of every epoch, so a resumed search has the temperature it would have
had. In evaluation mode (``mode``) no noise is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch
import torch.nn.functional as F

from nasrun import UserError

SCHEDULES = ("linear", "exponential", "linear_stepped")


class ArchSampler(Protocol):
    """Turns each cell type's ``[n_edges, n_ops]`` architecture parameters into edge weights."""

    tau: float

    def sample(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Training-mode weights: a fresh random draw, differentiable w.r.t. ``alphas``."""
        ...

    def mode(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Evaluation-mode weights: no noise."""
        ...

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Set the temperature of ``epoch`` (counted from 0) of a search of ``epochs`` epochs."""
        ...


def annealed(start: float, end: float, epoch: int, epochs: int, schedule: str) -> float:
    """The temperature of ``epoch`` (from 0) of ``epochs``; ``end`` at the last epoch.

    ``linear`` interpolates the value, ``exponential`` its logarithm (a constant factor per epoch),
    both from ``start`` at the first epoch; a one-epoch search stays at ``start``.
    ``linear_stepped`` is SNAS's schedule, which steps once before every epoch, the first
    included: epoch ``e`` runs at ``end + (start - end) * (1 - (e + 1) / epochs)``, so ``start`` is
    the value before the first step (SNAS-Series ``SNAS/utils.py`` ``Temp_Scheduler``, lines
    140-148, stepped at ``SNAS/train_search.py`` lines 314 and 323-325).
    """
    if schedule == "linear_stepped":
        e = min(max(epoch, 0), epochs - 1)
        return max(end, end + (start - end) * (1.0 - (e + 1) / epochs))
    t = min(max(epoch, 0), epochs - 1) / max(epochs - 1, 1)
    if t in (0.0, 1.0):  # the end points exactly, without rounding
        return start if t == 0.0 else end
    if schedule == "linear":
        return start * (1.0 - t) + end * t
    return math.exp(math.log(start) * (1.0 - t) + math.log(end) * t)


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise of ``like``'s shape, dtype and device: ``-log(-log(u))``, ``u ~ U(0, 1)``."""
    u = torch.rand_like(like).clamp_(min=1e-20, max=1.0 - 1e-7)
    return -torch.log(-torch.log(u))


class _Annealed:
    """A temperature that falls from ``tau_start`` to ``tau_end`` over the search."""

    def __init__(self, tau_start: float, tau_end: float, schedule: str) -> None:
        if not (tau_start > 0 and tau_end > 0):
            raise UserError(
                f"search.sampler.tau_start={tau_start}, tau_end={tau_end}: temperatures must be > 0"
            )
        if tau_end > tau_start:
            raise UserError(
                f"search.sampler.tau_end={tau_end}: must not exceed search.sampler.tau_start={tau_start} "
                "(the temperature anneals down)"
            )
        if schedule not in SCHEDULES:
            raise UserError(f"search.sampler.schedule={schedule!r}: must be one of {', '.join(SCHEDULES)}")
        self.tau_start = tau_start
        self.tau_end = tau_end
        self.schedule = schedule
        self.tau = tau_start

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.tau = annealed(self.tau_start, self.tau_end, epoch, epochs, self.schedule)

    def _relaxed(self, alpha: torch.Tensor) -> torch.Tensor:
        """``[n_edges, n_ops]``: ``softmax((log_softmax(alpha) + g) / tau)`` with fresh Gumbel noise ``g``."""
        return F.softmax((F.log_softmax(alpha, dim=-1) + gumbel_noise(alpha)) / self.tau, dim=-1)


class GumbelSoftmax(_Annealed):
    """SNAS's concrete (Gumbel-softmax) relaxation of a one-hot op sample per edge.

    Args:
        tau_start: the temperature of the first epoch.
        tau_end: the temperature of the last epoch (``<= tau_start``).
        schedule: ``linear_stepped`` (SNAS's), ``linear`` or ``exponential`` (``annealed``).
    """

    def __init__(
        self,
        tau_start: float = 1.0,  # SNAS-Series SNAS/train_search.py:74 (--temp 1, as its README's search command)
        tau_end: float = 0.03,  # SNAS-Series SNAS/train_search.py:75 (--temp_min 0.03)
        schedule: str = "linear_stepped",  # SNAS-Series SNAS/utils.py:140-148, linear, stepped before each epoch
    ) -> None:
        super().__init__(tau_start, tau_end, schedule)

    def sample(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: self._relaxed(a) for t, a in alphas.items()}

    def mode(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The distribution's probabilities, ``softmax(alpha)``."""
        return {t: F.softmax(a, dim=-1) for t, a in alphas.items()}


class GumbelMaxST(_Annealed):
    """GDAS's Gumbel-max sample of one op per edge, with a straight-through gradient.

    The forward value is one-hot (the argmax of the relaxed sample); the backward pass takes the
    relaxed sample's gradient: ``hard - soft.detach() + soft``.

    Args:
        tau_start: the temperature of the first epoch.
        tau_end: the temperature of the last epoch (``<= tau_start``).
        schedule: ``linear`` or ``exponential``.
    """

    def __init__(
        self,
        tau_start: float = 10.0,  # GDAS (Dong & Yang 2019): tau from 10 ...
        tau_end: float = 0.1,  # ... to 0.1 ...
        schedule: str = "linear",  # ... linearly over the search
    ) -> None:
        super().__init__(tau_start, tau_end, schedule)

    def sample(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for t, a in alphas.items():
            soft = self._relaxed(a)
            hard = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
            out[t] = hard - soft.detach() + soft  # one-hot values, the relaxed sample's gradient
        return out

    def mode(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One-hot at each edge's most likely op."""
        return {t: F.one_hot(a.argmax(dim=-1), a.shape[-1]).to(a.dtype) for t, a in alphas.items()}
