"""The acquisition function that the refinement phase maximises, and the GP-UCB schedule.

All acquisitions are BoTorch's Monte-Carlo forms, so batches and pending points work for every one
(``_optimize.optimize`` passes the pending points in). Values arrive already in maximisation form.
"""

from __future__ import annotations

import math

import torch
from botorch.acquisition import (
    AcquisitionFunction,
    qExpectedImprovement,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
    qProbabilityOfImprovement,
    qUpperConfidenceBound,
)
from botorch.models.model import Model
from botorch.sampling import SobolQMCNormalSampler
from torch import Tensor

from nasrun.bo.settings import Acquisition, BOSettings

# Monte-Carlo samples for the q-acquisitions; fixed QMC base samples make the acquisition a
# deterministic, smooth function that L-BFGS-B can optimise (Balandat et al. 2020, BoTorch §4).
MC_SAMPLES = 256


def gp_ucb_beta(t: int, d: int, delta: float = 0.1, nu: float = 1.0) -> float:
    """GP-UCB schedule beta_t = nu * 2 log(t^(d/2+2) pi^2 / (3 delta)) (Srinivas et al. 2010, Thm 2 as
    stated in Brochu et al. 2010); beta is kappa squared."""
    return nu * 2.0 * ((d / 2.0 + 2.0) * math.log(max(t, 1)) + math.log(math.pi**2 / (3.0 * delta)))


def build_acquisition(
    model: Model, X: Tensor, Y: Tensor, settings: BOSettings, d: int
) -> AcquisitionFunction:
    """The acquisition named by ``settings.acquisition`` (see ``Acquisition``).

    EI, log EI and PI measure improvement over ``best_f = incumbent + xi * std(Y)``: the
    incumbent is the best observation, or with ``settings.noisy`` the best posterior mean at the
    observed points, and ``xi`` is the margin in standard deviations of the observed values.

    Args:
        model: The fitted model.
        X: ``n x d`` observed points (the baseline of qLogNEI, the incumbent candidates otherwise).
        Y: ``n x 1`` observed values to maximise.
        settings: Acquisition choice, ``xi``, ``ucb_beta``, ``noisy`` and seed.
        d: Dimension of the parameter space (for the GP-UCB schedule).
    """
    sampler = SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=settings.seed)
    kind = settings.acquisition
    if kind is Acquisition.qlognei:
        return qLogNoisyExpectedImprovement(model, X_baseline=X, sampler=sampler, prune_baseline=True)
    if kind is Acquisition.ucb:
        beta = settings.ucb_beta if settings.ucb_beta is not None else gp_ucb_beta(len(Y) + 1, d)
        return qUpperConfidenceBound(model, beta=beta, sampler=sampler)
    if settings.noisy:
        # With noise the best *observation* is biased upwards; use the best posterior mean instead.
        with torch.no_grad():
            incumbent = model.posterior(X).mean.max().item()  # type: ignore[attr-defined]
    else:
        incumbent = Y.max().item()
    std = Y.std().item() if len(Y) > 1 else 1.0
    best_f = incumbent + settings.xi * std
    cls = {
        Acquisition.logei: qLogExpectedImprovement,
        Acquisition.ei: qExpectedImprovement,
        Acquisition.pi: qProbabilityOfImprovement,
    }[kind]
    return cls(model, best_f=best_f, sampler=sampler)
