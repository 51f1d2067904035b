"""The exploration phase: joint entropy search, or Thompson sampling.

Exploration values evaluating a basin that only might hold the optimum, where an improvement
criterion climbs only the best basin found so far. The engine uses it for the first
``explore_fraction`` of the budget (``BOSettings.exploration``).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch
from botorch.acquisition.joint_entropy_search import qJointEntropySearch
from botorch.acquisition.thompson_sampling import PathwiseThompsonSampling
from botorch.acquisition.utils import get_optimal_samples
from botorch.generation.sampling import MaxPosteriorSampling
from botorch.models.model import Model
from torch import Tensor

from nasrun.bo._model import DTYPE, believer, ensemble_size, member
from nasrun.bo._optimize import Proposal, bounds, candidates, optimize
from nasrun.bo.settings import BOSettings, Exploration, ModelKind
from nasrun.bo.space import ParamSpace

# Sampled optima behind joint entropy search: posterior draws (pathwise), each maximised with the
# acquisition optimiser's raw_samples and num_restarts. 16 is what docs/benchmarks/bo.md
# measured; the time of a proposal grows with it (bo.md: time per proposal).
JES_OPTIMA = 16


def explore(model: Model, p: Proposal) -> Tensor:
    """``p.q`` points of the exploration phase: joint entropy search, or Thompson samples.

    Joint entropy search (Hvarfner et al. 2022, BoTorch's ``qJointEntropySearch``) picks the point
    whose evaluation is expected to tell most about where the optimum is and how high it is; the
    optimum is represented by the maximisers of ``JES_OPTIMA`` posterior draws. Pending points
    enter as for the acquisition (``optimize``). Spaces with categorical columns and ensembles
    (SAAS, MCMC) use Thompson sampling (``jes_fallback``).

    Args:
        model: The fitted model.
        p: What the proposal works from.

    Returns:
        ``q x d`` encoded points, snapped onto the space.
    """
    settings = p.settings
    if settings.exploration is Exploration.thompson or jes_fallback(p.space, settings):
        return thompson(model, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimiser restarts that stop early are expected
        optimal_inputs, optimal_outputs = get_optimal_samples(
            model,
            bounds=bounds(p.space),
            num_optima=JES_OPTIMA,
            raw_samples=settings.raw_samples,
            num_restarts=settings.num_restarts,
        )
    acqf = qJointEntropySearch(model, optimal_inputs=optimal_inputs, optimal_outputs=optimal_outputs)
    return optimize(acqf, p)


def jes_fallback(space: ParamSpace, settings: BOSettings) -> str | None:
    """Why ``exploration=jes`` runs Thompson sampling instead on this space and model, or ``None``.

    The optima behind joint entropy search are maximisers of pathwise posterior draws, which need a
    kernel with random features (none for the categorical kernel) and, in BoTorch, one GP (its
    ``qJointEntropySearch`` refuses fully Bayesian models).
    """
    if space.cat_dims:
        return "the space has choice() parameters"
    if settings.model is ModelKind.fully_bayesian:
        return "model=fully_bayesian is an ensemble of GPs"
    if settings.model is ModelKind.mcmc:
        return "model=mcmc is an ensemble of GPs"
    return None


def thompson(model: Model, p: Proposal) -> Tensor:
    """``p.q`` Thompson samples: each the maximiser of its own draw from the GP posterior.

    Continuous and integer spaces draw whole functions (BoTorch's pathwise sampler: random Fourier
    features of the prior, updated by Matheron's rule) and maximise each with ``optimize``. The
    pathwise sampler has no features for the categorical kernel, so mixed spaces draw jointly over a
    candidate set instead (``candidates``: Sobol points and steps around the best points, as for
    the acquisition's starts) and take the best candidate of each draw.

    With ``model=mcmc`` each draw first picks one of the hyperparameter samples at random.

    Pending points (running trials, and the points already chosen for this batch) enter as
    "kriging believer" fantasies (``believer``): each draw comes from the posterior conditioned on
    the model's own mean at those points. Their uncertainty is gone, so no draw is maximised where
    an evaluation is already under way; independent draws from one posterior can put two points of
    a batch on nearly the same spot.

    Args:
        model: The fitted model.
        p: What the proposal works from.

    Returns:
        ``q x d`` encoded points, snapped onto the space.
    """
    pool = candidates(p) if p.space.cat_dims else None
    one = replace(p, q=1, X_pending=None)
    chosen: list[Tensor] = []
    members = ensemble_size(model)
    for _ in range(p.q):
        pending = [t for t in [p.X_pending, *chosen] if t is not None]
        # A hyperparameter sample (model=mcmc) drawn first, then a function from its GP: a draw
        # from the posterior integrated over the hyperparameters.
        single = member(model, int(torch.randint(members, (1,), generator=p.generator))) if members else model
        drawn_from = believer(single, torch.cat(pending)) if pending else single
        if pool is not None:
            picked = MaxPosteriorSampling(drawn_from)(pool, num_samples=1)
            chosen.append(torch.tensor([p.space.snap(picked[0].tolist())], dtype=DTYPE))
        else:
            chosen.append(optimize(PathwiseThompsonSampling(drawn_from), one))
    return torch.cat(chosen)
