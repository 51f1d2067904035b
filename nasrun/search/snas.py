"""SNAS (Xie et al., ICLR 2019) on the one-shot engine: single-level steps with a resource term.

SNAS samples each edge's op from a concrete (Gumbel-softmax) relaxation
(``nasrun.search.samplers.GumbelSoftmax``, temperature annealed per epoch) and optimises the
weights and the architecture on the same batches with one loss:

    L = CE(f(x; w, Z), y) + eta * E[C(Z)],

where ``E[C(Z)] = mean over edges of sum_k p_k * c_k`` with ``p = softmax(alpha)`` the edge's op
distribution and ``c_k`` the cost of op ``k``. The costs come from the op registry by building
each op (``op_costs``): its parameters, or its FLOPs on a reference input, divided by the largest
of the space's ops, so that ``E[C(Z)]`` lies in [0, 1] whatever the unit. ``eta = 0`` (the
default) leaves the term out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nasrun import UserError
from nasrun.report.results import count_flops, count_params
from nasrun.search.darts import DartsStepper
from nasrun.space.ops import make_op
from nasrun.train.runtime import NonFiniteLossError

if TYPE_CHECKING:
    from nasrun.search.oneshot import OneShotNetwork, OneShotSearch
    from nasrun.train.trainer import Trainer

COSTS = ("params", "flops")


def op_cost(name: str, cost: str, channels: int = 16, size: int = 8) -> float:
    """The cost of op ``name``, built from the registry with ``channels`` channels and stride 1.

    Args:
        name: a registered op.
        cost: ``params`` (its parameter count) or ``flops`` (torch's FLOP count of one forward pass
            on a ``[1, channels, size, size]`` input; pooling and identity count 0).
        channels: the reference width.
        size: the reference resolution for FLOPs.
    """
    op = make_op(name, channels, 1, affine=False)
    if cost == "params":
        return float(count_params(op))
    return float(count_flops(op, (1, channels, size, size)))


def op_costs(edge_ops: dict[str, list[list[str]]], cost: str) -> dict[str, torch.Tensor]:
    """Per cell type ``[n_edges, n_ops]``: each edge's op costs, divided by the largest op's (max 1)."""
    names = sorted({n for rows in edge_ops.values() for ops in rows for n in ops})
    raw = {n: op_cost(n, cost) for n in names}
    top = max(raw.values()) or 1.0
    return {t: torch.tensor([[raw[n] / top for n in ops] for ops in rows]) for t, rows in edge_ops.items()}


class SingleLevelStepper(DartsStepper):
    """One step: the loss (plus ``cost_weight`` times the expected cost) updates weights and architecture.

    Args:
        supernet: the ``OneShotNetwork``.
        trainer: device, precision and memory format.
        cost: ``params`` or ``flops`` (``op_costs``).
        cost_weight: the weight eta of the expected cost; 0 leaves it out.
        **darts: ``DartsStepper``'s arguments (the two optimisers, the weights' schedule).
    """

    def __init__(
        self, supernet: OneShotNetwork, trainer: Trainer, *, cost: str, cost_weight: float, **darts: Any
    ) -> None:
        super().__init__(supernet, trainer, **darts)
        self.network = supernet
        self.cost_weight = cost_weight
        device = next(supernet.parameters()).device
        self.costs = {t: c.to(device) for t, c in op_costs(supernet.edge_ops, cost).items()}

    def expected_cost(self) -> torch.Tensor:
        """``E[C(Z)]``: the mean over every edge of its ops' costs weighted by ``softmax(alpha)``; a scalar."""
        weights = self.network.op_weights()
        total = sum((weights[t] * c).sum() for t, c in self.costs.items())
        n_edges = sum(c.shape[0] for c in self.costs.values())
        return total / n_edges  # type: ignore[return-value]

    def step(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor,
        y_val: torch.Tensor,
        arch_step: bool = True,
    ) -> tuple[float, int]:
        """One update of the weights and (unless ``arch_step`` is false) the architecture on the training batch.

        The validation batch is not used: the architecture learns from the training loss.
        """
        if not arch_step:
            return self.weight_step(x_train, y_train)
        loss, logits = self._loss(x_train, y_train)
        if not torch.isfinite(loss):
            raise NonFiniteLossError.in_epoch(
                "search", float(loss.detach()), self.sched.last_epoch, "search.lr"
            )
        total = loss + self.cost_weight * self.expected_cost() if self.cost_weight else loss
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        total.backward()
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        self.w_opt.step()
        self.a_opt.step()
        return float(loss.detach()), int((logits.detach().argmax(1) == y_train).sum())


class SingleLevel:
    """SNAS's architecture update: single-level steps with the expected-cost term.

    Args:
        cost: what an op costs: ``params`` or ``flops`` (from the op registry, ``op_costs``).
        cost_weight: eta, the weight of ``E[C(Z)]`` in the loss.
    """

    def __init__(
        self,
        cost: str = "params",  # SNAS constrains parameters, FLOPs or memory access cost; nasrun offers the first two
        cost_weight: float = 0.0,  # off by default: SNAS's constraint is optional (eta > 0 turns it on)
    ) -> None:
        if cost not in COSTS:
            raise UserError(f"search.update.cost={cost!r}: must be one of {', '.join(COSTS)}")
        if cost_weight < 0:
            raise UserError(f"search.update.cost_weight={cost_weight}: must be >= 0")
        self.cost = cost
        self.cost_weight = cost_weight

    def check(self, search: OneShotSearch) -> None:
        if search.order != 1:
            raise UserError(
                f"search.order={search.order}: search=snas takes single-level steps (no unrolled step)"
            )

    def stepper(
        self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any
    ) -> SingleLevelStepper:
        return SingleLevelStepper(network, trainer, cost=self.cost, cost_weight=self.cost_weight, **darts)
