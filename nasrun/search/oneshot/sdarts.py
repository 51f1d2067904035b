"""SDARTS (Chen & Hsieh, ICML 2020): weight steps on perturbed architecture weights.

SDARTS regularises DARTS by training the supernet's weights on a neighbourhood of the current
architecture instead of the architecture itself: every weight step runs on the softmaxed
architecture weights ``A = softmax(alpha)`` plus an offset ``delta`` with ``|delta|_inf <= eps``,
either drawn uniformly (SDARTS-RS, random smoothing) or found by a projected-gradient attack that
maximises the training loss (SDARTS-ADV). The architecture step, taken before the weight step as in
DARTS's first order, sees the unperturbed weights. The paper shows that this implicitly penalises
the Hessian of the validation loss with respect to the architecture.

Both are plug-ins of the one-shot loop (``search.plugins.<name>``): ``start_epoch`` sets ``eps``
from its linear schedule, and ``around_weight_step`` runs the weight step inside
``OneShotNetwork.perturbed``. As in the reference code, the perturbed weights are projected back
to the probability simplex (clamped to [0, 1], each edge's row renormalised), so the offset the
edges get is ``clip(A + delta) - A``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from nasrun import UserError
from nasrun.search.oneshot.plugin import (
    PERTURBATION_STREAM,
    EpochStart,
    OneShotPlugin,
    SearchSettings,
    Stepper,
)
from nasrun.train.runtime import epoch_generator

Weights = dict[str, torch.Tensor]


def epsilon_at(epoch: int, epochs: int, epsilon: float, epsilon_start: float) -> float:
    """The perturbation radius of ``epoch`` (from 0) of ``epochs``: linear from ``epsilon_start`` towards ``epsilon``.

    The reference reaches ``epsilon_start + (epsilon - epsilon_start) * (epochs - 1) / epochs`` in
    its last epoch, not ``epsilon`` itself; we keep that.
    """
    return epsilon_start + (epsilon - epsilon_start) * epoch / max(epochs, 1)


def simplex_clip(weights: torch.Tensor) -> torch.Tensor:
    """Each row of ``[n_edges, n_ops]`` clamped to [0, 1] and divided by its sum.

    A row clamped to all zeros puts 1 on its largest entry before the clamp, so that every row
    stays a distribution.
    """
    clamped = weights.clamp(0.0, 1.0)
    empty = clamped.sum(dim=-1) == 0
    if bool(empty.any()):
        top = torch.nn.functional.one_hot(weights.argmax(dim=-1), weights.shape[-1]).to(weights.dtype)
        clamped = torch.where(empty.unsqueeze(-1), top, clamped)
    return clamped / clamped.sum(dim=-1, keepdim=True)


class _Perturbation(OneShotPlugin):
    """What both SDARTS variants share: the ε schedule, the seeded noise, the perturbed weight step."""

    def __init__(self, epsilon: float, epsilon_start: float):
        if not 0.0 <= epsilon_start <= epsilon:
            raise UserError(
                f"search.plugins: SDARTS needs 0 <= epsilon_start <= epsilon, got "
                f"epsilon_start={epsilon_start}, epsilon={epsilon}"
            )
        self.epsilon_max = epsilon
        self.epsilon_start = epsilon_start
        self.seed = 0
        self.epsilon = epsilon_start
        self._seed_epoch(0)

    def _seed_epoch(self, epoch: int) -> None:
        # The epoch's own stream: its noise is the same whether the run got there in one go or
        # resumed from the previous epoch's checkpoint.
        self.generator = epoch_generator(self.seed, epoch, PERTURBATION_STREAM)

    def check(self, search: SearchSettings) -> None:
        if search.sampler is not None:
            raise UserError(
                "search.sampler: SDARTS perturbs the softmax of the architecture parameters; "
                "it needs search.sampler: null"
            )
        self.seed = int(search.seed)
        self._seed_epoch(0)

    def start_epoch(self, stepper: Stepper, epoch: EpochStart) -> None:
        self.epsilon = epsilon_at(epoch.epoch, epoch.epochs, self.epsilon_max, self.epsilon_start)
        self._seed_epoch(epoch.epoch)

    def uniform(self, like: torch.Tensor, radius: float) -> torch.Tensor:
        """Noise uniform in [-radius, radius], shaped like ``like``, from the plug-in's generator."""
        u = torch.rand(like.shape, generator=self.generator, dtype=like.dtype)
        return ((2 * u - 1) * radius).to(like.device)

    def offsets(self, stepper: Stepper, x: torch.Tensor, y: torch.Tensor) -> Weights:
        """Per cell type ``[n_edges, n_ops]``: what the weight step on ``(x, y)`` adds to the edges' weights."""
        raise NotImplementedError

    @contextlib.contextmanager
    def around_weight_step(self, stepper: Stepper, x: torch.Tensor, y: torch.Tensor) -> Iterator[None]:
        with stepper.module.perturbed(self.offsets(stepper, x, y)):  # type: ignore[operator]
            yield

    def end_epoch(self, stepper: Stepper, data: Any, arch_steps: bool) -> dict[str, Any]:
        return {"sdarts_epsilon": self.epsilon}

    def state_dict(self) -> dict[str, Any]:
        # start_epoch reseeds the generator, so this only matters to a resume within an epoch.
        return {"epsilon": self.epsilon, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "epsilon" in state:
            self.epsilon = float(state["epsilon"])
        if "generator" in state:
            self.generator.set_state(state["generator"])


def _clean_weights(stepper: Stepper) -> Weights:
    """The edges' weights without any offset: the softmax of the alphas (the architecture step's)."""
    with torch.no_grad():
        return {t: w.detach() for t, w in stepper.module.op_weights().items()}  # type: ignore[operator]


class RandomSmoothing(_Perturbation):
    """SDARTS-RS: every weight step sees ``clip(softmax(alpha) + U[-eps, eps])``.

    Args:
        epsilon: the radius the linear schedule heads for (its value at ``epochs``).
        epsilon_start: the radius of the first epoch.
    """

    def __init__(self, epsilon: float = 0.3, epsilon_start: float = 0.03):
        super().__init__(epsilon, epsilon_start)

    def offsets(self, stepper: Stepper, x: torch.Tensor, y: torch.Tensor) -> Weights:
        clean = _clean_weights(stepper)
        return {t: simplex_clip(w + self.uniform(w, self.epsilon)) - w for t, w in clean.items()}


class AdversarialPGD(_Perturbation):
    """SDARTS-ADV: every weight step sees the L-inf PGD attack on the training batch's loss.

    Starting from a uniform point of the ε-ball (``random_start``), ``steps`` signed-gradient ascent
    steps of size ``2 eps / steps`` on the training loss, each followed by the projection onto the
    ε-ball around ``softmax(alpha)`` and onto the simplex. The supernet is in evaluation mode
    during the attack (batch norm on its running statistics, none of them updated). If the attack
    ends with a lower loss than the unperturbed weights, the step runs unperturbed.

    Args:
        epsilon: the radius the linear schedule heads for (its value at ``epochs``).
        epsilon_start: the radius of the first epoch.
        steps: PGD's ascent steps per weight step.
        random_start: start from a uniform point of the ball instead of its centre.
    """

    data_parallel = False  # each process would attack its own share of the batch

    def __init__(
        self, epsilon: float = 0.3, epsilon_start: float = 0.03, steps: int = 7, random_start: bool = True
    ):
        super().__init__(epsilon, epsilon_start)
        if steps < 1:
            raise UserError(f"search.plugins: SDARTS-ADV steps={steps}: must be >= 1")
        self.steps = steps
        self.random_start = random_start

    def offsets(self, stepper: Stepper, x: torch.Tensor, y: torch.Tensor) -> Weights:
        net = stepper.module
        clean = _clean_weights(stepper)
        eps = self.epsilon
        step_size = 2 * eps / self.steps

        def loss_at(point: Weights) -> torch.Tensor:
            with net.perturbed({t: point[t] - clean[t] for t in clean}):  # type: ignore[operator]
                return stepper.loss(x, y)[0]

        training = net.training
        net.eval()
        try:
            with torch.no_grad():
                loss_before = float(loss_at(clean))
            point = {t: w.clone() for t, w in clean.items()}
            if self.random_start:
                point = {t: simplex_clip(p + self.uniform(p, eps)) for t, p in point.items()}
            for _ in range(self.steps):
                leaves = {t: p.detach().requires_grad_(True) for t, p in point.items()}
                grads = torch.autograd.grad(loss_at(leaves), list(leaves.values()))
                point = {
                    t: simplex_clip(
                        clean[t] + (p.detach() + step_size * g.sign() - clean[t]).clamp(-eps, eps)
                    )
                    for (t, p), g in zip(leaves.items(), grads)
                }
            with torch.no_grad():
                loss_after = float(loss_at(point))
        finally:
            net.train(training)
        if loss_before > loss_after:
            return {t: torch.zeros_like(w) for t, w in clean.items()}
        return {t: point[t] - clean[t] for t in clean}
