"""SNAS (Xie et al., ICLR 2019) on the one-shot engine: single-level steps with a resource term.

SNAS samples each edge's op weights from a concrete (Gumbel-softmax) relaxation
(``nasrun.search.oneshot.samplers.GumbelSoftmax``, temperature annealed per epoch) and optimises the
weights and the architecture on the same batches, every training image, with one loss:

    L = CE(f(x; w, Z), y) + eta * R(Z)

The resource term is the reference code's default of its README's search command
(SNAS-Series ``SNAS/README.md``: ``--resource_efficient --method reparametrization
--log_penalty --resource_lambda 1.5e-3``, the three resources of ``--separation all``): on every
edge of every cell, each resource ``r`` (parameters, FLOPs, memory access cost) of the sampled
mixture is ``R_r = sum_k Z_k c_rk``, where ``Z`` is the very sample the forward pass used and
``c_rk`` the cost of op ``k`` at that cell's width and resolution; values below 1 count as 1 (their
log is 0, no gradient); the edge's penalty is the mean over resources of ``log R_r``. ``R(Z)`` sums
the penalties over a cell's edges and averages over the cells of each type, normal plus reduction
(SNAS-Series ``SNAS/model_search.py`` lines 448-474 and 556-562, ``SNAS/train_search.py``
lines 425-427 and 444-452). The gradient reaches the architecture through ``Z`` (the
reparametrisation); the costs are constants, so the weights get none from it.

Costs are counted per sample as the reference's op classes count them
(``SNAS/operations.py``): parameters are the convolutions' weights; FLOPs are multiply-adds of the
convolutions plus ``k * k`` per output of a ``k x k`` pooling; memory access cost is, per
convolution or pooling layer, the feature maps it reads and writes plus its weights (an identity
skip: its input and output). ``none`` costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nasrun import UserError
from nasrun.search.oneshot.darts import DartsStepper
from nasrun.search.oneshot.plugin import SearchSettings
from nasrun.space.ops import make_op
from nasrun.train.runtime import NonFiniteLossError

if TYPE_CHECKING:
    from nasrun.search.oneshot.network import OneShotNetwork
    from nasrun.train.trainer import Trainer

RESOURCES = ("params", "flops", "mac")
COSTS = ("all", *RESOURCES)


@torch.no_grad()
def op_resources(name: str, C: int, stride: int, height: int, width: int) -> tuple[float, float, float]:
    """``(params, flops, mac)`` of op ``name`` with ``C`` channels on one ``[C, height, width]`` input.

    Counted as SNAS's reference ops count them (see the module's docstring); ``none`` is all 0.
    """
    if name == "none":
        return 0.0, 0.0, 0.0
    op = make_op(name, C, stride, affine=False).eval()
    x = torch.zeros(1, C, height, width)
    if isinstance(op, nn.Identity):
        return 0.0, 0.0, float(2 * x.numel())
    totals = [0.0, 0.0, 0.0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        moved = float(inputs[0].numel() + out.numel())
        if isinstance(module, nn.Conv2d):
            weights = float(module.weight.numel())
            totals[0] += weights
            totals[1] += weights * out.shape[-2] * out.shape[-1]
            totals[2] += moved + weights
        else:  # pooling
            k: Any = module.kernel_size
            area = k * k if isinstance(k, int) else k[0] * k[1]
            totals[1] += float(area * out.numel())
            totals[2] += moved

    handles = [
        m.register_forward_hook(hook)
        for m in op.modules()
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
    ]
    try:
        op(x)
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1], totals[2]


def search_cells(network: OneShotNetwork) -> list[tuple[str, nn.Module]]:
    """The supernet's search cells (modules with a list of ``edges``) in order, each with its cell type."""
    return [
        ("reduce" if getattr(cell, "reduction", False) else "normal", cell)
        for cell in network.skeleton.modules()
        if isinstance(getattr(cell, "edges", None), nn.ModuleList)
    ]


@torch.no_grad()
def cell_costs(network: OneShotNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per cell type ``[n_cells, n_edges, n_ops, 3]``: each op's resources in each cell of that type.

    One evaluation-mode pass of ``x`` (a batch of one image is enough) records each search cell's
    output resolution; an edge of stride ``s`` reads ``s`` times that.

    Raises:
        UserError: an edge that does not say its channels and stride (``C``, ``stride``).
    """
    cells = search_cells(network)
    sizes: dict[int, tuple[int, int]] = {}
    handles = [
        cell.register_forward_hook(
            lambda m, _i, out, k=k: sizes.__setitem__(k, (int(out.shape[-2]), int(out.shape[-1])))
        )
        for k, (_, cell) in enumerate(cells)
    ]
    was_training = network.training
    network.eval()
    try:
        network.skeleton(x[:1], network.op_weights(), network.edge_scales())
    finally:
        network.train(was_training)
        for h in handles:
            h.remove()
    memo: dict[tuple[str, int, int, int, int], tuple[float, float, float]] = {}
    out: dict[str, list[list[list[tuple[float, float, float]]]]] = {}
    for k, (kind, cell) in enumerate(cells):
        H, W = sizes[k]
        rows = []
        for e, edge in enumerate(cell.edges):  # type: ignore[union-attr,arg-type]
            C, stride = getattr(edge, "C", None), getattr(edge, "stride", None)
            if C is None or stride is None:
                raise UserError(
                    f"search.update.cost_weight: the resource term needs edges that name their channels "
                    f"and stride; {type(edge).__name__} does not (set search.update.cost_weight=0)"
                )
            key_ops: Sequence[str] = network.edge_ops[kind][e]
            rows.append([_memo(memo, name, int(C), int(stride), H * stride, W * stride) for name in key_ops])
        out.setdefault(kind, []).append(rows)
    return {kind: torch.tensor(v, dtype=torch.float32) for kind, v in out.items()}


def _memo(
    memo: dict[tuple[str, int, int, int, int], tuple[float, float, float]],
    name: str,
    C: int,
    stride: int,
    H: int,
    W: int,
) -> tuple[float, float, float]:
    key = (name, C, stride, H, W)
    if key not in memo:
        memo[key] = op_resources(name, C, stride, H, W)
    return memo[key]


def resource_penalty(
    weights: dict[str, torch.Tensor], costs: dict[str, torch.Tensor], resources: Sequence[int]
) -> torch.Tensor:
    """SNAS's log resource penalty of the sampled edge weights; a scalar.

    Args:
        weights: per cell type ``[n_edges, n_ops]``, the forward pass's sample ``Z``.
        costs: per cell type ``[n_cells, n_edges, n_ops, 3]`` (``cell_costs``).
        resources: which of ``params``, ``flops``, ``mac`` (indices) the penalty averages.
    """
    total = torch.zeros((), device=next(iter(weights.values())).device)
    for kind, c in costs.items():
        c = c[..., list(resources)].to(weights[kind].device)
        R = torch.einsum("eo,neor->ner", weights[kind].float(), c)
        # The reference sets a mixture's resource below 1 to 1 (log 0, no gradient).
        R = torch.where(R.abs() < 1, torch.ones_like(R), R)
        total = total + R.abs().log().mean(dim=-1).sum(dim=-1).mean()
    return total


class SingleLevelStepper(DartsStepper):
    """One step: the loss plus ``cost_weight`` times SNAS's resource penalty updates weights and architecture.

    Args:
        supernet: the ``OneShotNetwork``.
        trainer: device, precision and memory format.
        cost: ``all`` (the mean of the three resources' logs) or one of ``params``, ``flops``, ``mac``.
        cost_weight: the penalty's weight (SNAS's lambda); 0 leaves it out.
        **darts: ``DartsStepper``'s arguments (the two optimisers, the weights' schedule, the
            architecture gradient's clip ``search.arch_grad_clip``).
    """

    def __init__(
        self,
        supernet: OneShotNetwork,
        trainer: Trainer,
        *,
        cost: str,
        cost_weight: float,
        **darts: Any,
    ) -> None:
        super().__init__(supernet, trainer, **darts)
        self.network = supernet
        self.cost_weight = cost_weight
        self.resources = list(range(len(RESOURCES))) if cost == "all" else [RESOURCES.index(cost)]
        self.costs: dict[str, torch.Tensor] | None = None  # counted on the first step's image size

    def reads_val_batch(self, arch_step: bool) -> bool:
        """Never: weights and architecture learn from the training batch."""
        return False

    def penalty(self) -> torch.Tensor:
        """The resource penalty of the last forward pass's sampled weights (``cost_weight`` not applied)."""
        assert self.costs is not None and self.network.last_weights is not None
        return resource_penalty(self.network.last_weights, self.costs, self.resources)

    def step(
        self,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        x_val: torch.Tensor | None,
        y_val: torch.Tensor | None,
        arch_step: bool = True,
    ) -> tuple[float, int]:
        """One update of the weights and (unless ``arch_step`` is false) the architecture on the training batch.

        The validation batch is not used: the architecture learns from the training loss.
        """
        if not arch_step:
            return self.weight_step(x_train, y_train)
        if self.cost_weight and self.costs is None:
            self.costs = cell_costs(self.network, x_train)
        loss, logits = self.loss(x_train, y_train)
        if not torch.isfinite(loss):
            raise NonFiniteLossError.in_epoch(
                "search", float(loss.detach()), self.sched.last_epoch, "search.lr"
            )
        total = loss + self.cost_weight * self.penalty() if self.cost_weight else loss
        extra = self.arch_penalty()  # the plug-ins' terms (functions of the alphas only)
        if extra is not None:
            total = total + extra
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        total.backward()
        self.world.average_grads([*self.weights, *self.alphas])  # data-parallel: the same step everywhere
        if self.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.weights, self.grad_clip)
        if self.arch_grad_clip > 0:
            nn.utils.clip_grad_norm_(self.alphas, self.arch_grad_clip)
        self.w_opt.step()
        self.a_opt.step()
        return float(loss.detach()), int((logits.detach().argmax(1) == y_train).sum())


class SingleLevel:
    """SNAS's architecture update: single-level steps on all the training data, with the resource penalty.

    Args:
        cost: the resources penalised: ``all`` (parameters, FLOPs and memory access cost, the
            mean of their logs) or one of ``params``, ``flops``, ``mac``.
        cost_weight: lambda, the penalty's weight; 0 leaves it out.
    """

    #: Weights and architecture train on the same batches: the search uses every training image.
    single_level = True
    data_parallel = True  # its step averages the weights' and alphas' gradients over the processes

    def __init__(
        self,
        cost: str = "all",  # SNAS-Series SNAS/train_search.py:97 (--separation all: size, FLOPs and MAC)
        cost_weight: float = 1.5e-3,  # SNAS-Series SNAS/README.md search command (--resource_lambda 1.5e-3)
    ) -> None:
        if cost not in COSTS:
            raise UserError(f"search.update.cost={cost!r}: must be one of {', '.join(COSTS)}")
        if cost_weight < 0:
            raise UserError(f"search.update.cost_weight={cost_weight}: must be >= 0")
        self.cost = cost
        self.cost_weight = cost_weight

    def check(self, search: SearchSettings) -> None:
        if search.order != 1:
            raise UserError(
                f"search.order={search.order}: search=snas takes single-level steps (no unrolled step)"
            )

    def stepper(
        self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any
    ) -> SingleLevelStepper:
        return SingleLevelStepper(
            network,
            trainer,
            cost=self.cost,
            cost_weight=self.cost_weight,
            **darts,
        )
