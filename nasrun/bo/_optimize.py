"""Maximising an acquisition over the encoded space: the box, the starts, the candidates.

``Proposal`` holds what every proposal step works from (space, settings, observations, pending
points, batch size, random source); ``optimize`` maximises any acquisition for it, one point at a
time with the points chosen so far pending. Continuous spaces start L-BFGS-B from Boltzmann-picked
Sobol points and Gaussian steps around the best observations; spaces with integer or categorical
columns use BoTorch's mixed alternating optimiser.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.optim import optimize_acqf, optimize_acqf_mixed_alternating
from botorch.optim.initializers import initialize_q_batch
from torch import Tensor

from nasrun.bo._model import DTYPE
from nasrun.bo.settings import BOSettings
from nasrun.bo.space import Categorical, ParamSpace

# Local candidates: Gaussian steps around the best observations, as fractions of the unit cube.
# Half the raw samples go there so the optimiser also refines the incumbent's basin (the global
# Sobol half keeps exploring); Optuna's GPSampler likewise starts a local search at its best point.
LOCAL_SCALES = (0.01, 0.05, 0.2)
LOCAL_TOP_K = 5


@dataclass(frozen=True, eq=False)
class Proposal:
    """What one model-based proposal works from, besides the model or acquisition it maximises.

    Attributes:
        space: The parameter space; proposed points are snapped onto it.
        settings: Restarts and raw samples of the optimiser, exploration and model choices.
        X: ``n x d`` observed points, encoded.
        Y: ``n x 1`` their values, to maximise; the best ones seed local starts.
        q: Number of points to propose.
        X_pending: ``p x d`` points being evaluated (running trials, and points proposed earlier
            in the same ask), or ``None``.
        generator: Random source of the starts and candidates; every use advances it.
    """

    space: ParamSpace
    settings: BOSettings
    X: Tensor
    Y: Tensor
    q: int
    X_pending: Tensor | None
    generator: torch.Generator


def bounds(space: ParamSpace) -> Tensor:
    """``2 x d`` box of the encoded space, as BoTorch's optimisers take it."""
    return torch.tensor([[0.0] * space.dim, space.upper()], dtype=DTYPE)


def unit_to_space(u: Tensor, space: ParamSpace) -> Tensor:
    """Points of the unit cube as encoded points.

    A categorical column with ``k`` choices takes index ``floor(u * k)``: each choice an equal share
    of the cube, so a uniform design (Sobol, random) draws every choice equally often.
    """
    upper = torch.tensor(space.upper(), dtype=DTYPE)
    categorical = torch.tensor([isinstance(p, Categorical) for p in space.params])
    u = u.to(DTYPE)
    return torch.where(categorical, torch.minimum(torch.floor(u * (upper + 1)), upper), u * upper)


def _raw_points(p: Proposal) -> Tensor:
    """``raw_samples`` scrambled Sobol points and as many Gaussian steps around the best observations."""
    from torch.quasirandom import SobolEngine

    d = p.space.dim
    upper = torch.tensor(p.space.upper(), dtype=DTYPE)
    seed = int(torch.randint(2**31 - 1, (1,), generator=p.generator))
    sobol = unit_to_space(SobolEngine(d, scramble=True, seed=seed).draw(p.settings.raw_samples), p.space)
    top = p.X[p.Y.squeeze(-1).argsort(descending=True)[:LOCAL_TOP_K]]
    n_local = max(p.settings.raw_samples // 2 // max(len(top) * len(LOCAL_SCALES), 1), 1)
    local = [
        torch.minimum(
            (x + s * upper * torch.randn(n_local, d, generator=p.generator, dtype=DTYPE)).clamp(min=0.0),
            upper,
        )
        for x in top
        for s in LOCAL_SCALES
    ]
    return torch.cat([sobol, *local])


def _initial_conditions(acqf: AcquisitionFunction, p: Proposal) -> Tensor:
    """``num_restarts x 1 x d`` starts: Boltzmann-picked from Sobol points and steps around the best."""
    raw = _raw_points(p).unsqueeze(-2)
    with torch.no_grad():
        values = torch.cat([acqf(chunk) for chunk in raw.split(256)])
    starts, _ = initialize_q_batch(raw, values, n=min(p.settings.num_restarts, len(raw)))
    # The best raw point is always a start: cheap insurance that the optimum found stays found.
    starts[0] = raw[values.argmax()]
    return starts


def optimize(acqf: AcquisitionFunction, p: Proposal) -> Tensor:
    """Maximises the acquisition for ``p.q`` new points, one at a time, each pending for the next.

    Sequential greedy selection (BoTorch's ``sequential=True``) keeps the points of a batch distinct:
    every chosen point, like every running trial, is passed to the acquisition as ``X_pending``.

    Args:
        acqf: The acquisition function.
        p: The space, observations (to seed local starts), pending points, ``q`` and random source.

    Returns:
        ``q x d`` encoded points, snapped onto the space.
    """
    space, settings = p.space, p.settings
    box = bounds(space)
    chosen: list[Tensor] = []
    discrete = {**space.int_dims}
    for _ in range(p.q):
        pending = [t for t in [p.X_pending, *chosen] if t is not None]
        acqf.set_X_pending(torch.cat(pending) if pending else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optimiser restarts that stop early are expected
            if space.cat_dims or discrete:
                cand, _ = optimize_acqf_mixed_alternating(
                    acqf,
                    bounds=box,
                    discrete_dims=discrete or None,
                    cat_dims=space.cat_dims or None,
                    q=1,
                    num_restarts=settings.num_restarts,
                    raw_samples=settings.raw_samples,
                )
            else:
                starts = _initial_conditions(acqf, p)
                cand, _ = optimize_acqf(
                    acqf, bounds=box, q=1, num_restarts=len(starts), batch_initial_conditions=starts
                )
        chosen.append(torch.tensor([space.snap(cand[0].tolist())], dtype=DTYPE))
    return torch.cat(chosen)


def candidates(p: Proposal) -> Tensor:
    """A finite candidate set: the distinct snapped points of the raw Sobol points and local steps."""
    raw = _raw_points(p)
    return torch.tensor([p.space.snap(x) for x in raw.tolist()], dtype=DTYPE).unique(dim=0)
