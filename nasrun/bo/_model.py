"""The Gaussian-process surrogate: kernels, priors, the MAP and SAAS fits, and pending-point fantasies.

Everything numeric is BoTorch's or GPyTorch's; this module only picks the pieces and their
settings. All tensors are float64 (BoTorch's recommendation for GP fitting). The model always
*maximises*: the engine negates values of minimisation problems before they arrive here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from botorch.fit import fit_gpytorch_mll
from botorch.models import MixedSingleTaskGP, SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms import Normalize, Standardize
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel as GPKernel
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior
from torch import Tensor

from nasrun.bo.settings import BOSettings, Kernel, ModelKind
from nasrun.bo.space import ParamSpace, ParamSpaceError

DTYPE = torch.float64
# Noise floors in standardised units. 1e-4 is BoTorch's MIN_INFERRED_NOISE_LEVEL; 1e-6 (Optuna
# GPSampler's minimum noise variance) lets the GP nearly interpolate deterministic objectives.
NOISE_FLOOR = {True: 1e-4, False: 1e-6}
# Log-centres of the MAP models' LogNormal noise prior, in standardised units (SAAS keeps its own).
# "explore", e^-4 (about 0.018), is BoTorch's prior, used for the exploration phase and for noisy
# objectives; on Hartmann6 centring it on e^-2, e^-6 or e^-8 during the Thompson phase left more
# runs in the local optimum. "refine", e^-8 (about 3e-4), lets the model nearly interpolate a
# deterministic objective (noisy=False) while the acquisition refines the best basin; on Hartmann6
# it cut the median regret at 50 evaluations about four-fold (docs/benchmarks/bo.md).
NOISE_PRIOR_LOC = {"explore": -4.0, "refine": -8.0}


def _base_kernel(
    kind: Kernel, d: int, active_dims: Sequence[int] | None, batch_shape: torch.Size
) -> GPKernel:
    """ARD Matérn-5/2 or SE kernel on ``d`` columns, with a Gamma(3, 6) length-scale prior.

    Gamma(3, 6) (mean 0.5 of the unit cube) is BoTorch's long-standing Matérn prior; it keeps
    length scales short enough to model multi-modal objectives such as Hartmann6, where the
    dimension-scaled default prior favours over-smooth fits.
    """
    cls = MaternKernel if kind is Kernel.matern52 else RBFKernel
    extra = {"nu": 2.5} if kind is Kernel.matern52 else {}
    return cls(
        ard_num_dims=d,
        active_dims=active_dims,
        batch_shape=batch_shape,
        lengthscale_prior=GammaPrior(3.0, 6.0),
        lengthscale_constraint=GreaterThan(1e-4),
        **extra,
    )


def _scaled_kernel(
    kind: Kernel, d: int, active_dims: Sequence[int] | None = None, batch_shape: torch.Size | None = None
) -> GPKernel:
    batch_shape = batch_shape or torch.Size()
    # Gamma(2, 0.15) amplitude prior: BoTorch's companion to the Gamma(3, 6) length scales.
    return ScaleKernel(
        _base_kernel(kind, d, active_dims, batch_shape),
        batch_shape=batch_shape,
        outputscale_prior=GammaPrior(2.0, 0.15),
    )


def fit_model(
    X: Tensor,
    Y: Tensor,
    space: ParamSpace,
    settings: BOSettings,
    warm_start: dict[str, Tensor] | None = None,
    refine: bool = False,
) -> Model:
    """Fits a GP to the observations.

    Args:
        X: ``n x d`` encoded points.
        Y: ``n x 1`` values to maximise.
        space: The parameter space (for bounds and categorical columns).
        settings: Kernel, model kind, noise and seed.
        warm_start: Hyperparameters of the previous fit (``hyperparameters(model)``); the optimiser
            starts there, which is several times faster than from the priors' modes, and is what
            Optuna's GPSampler does too.
        refine: The fit serves the acquisition's refinement rather than the exploration phase;
            with a deterministic objective (``settings.noisy`` false) the noise prior then favours
            near-interpolation (``NOISE_PRIOR_LOC``).

    Returns:
        The fitted model, in eval mode; its posterior is in the units of ``Y``.
    """
    d = space.dim
    cat = sorted(space.cat_dims)
    cont = [i for i in range(d) if i not in cat]
    # Integer and real columns are already in [0, 1]; Normalize with fixed bounds states that
    # explicitly and keeps categorical columns untouched, as MixedSingleTaskGP requires.
    normalize = (
        Normalize(d=d, indices=cont, bounds=torch.tensor([[0.0] * len(cont), [1.0] * len(cont)], dtype=DTYPE))
        if cont
        else None
    )
    if settings.model is ModelKind.fully_bayesian:
        return _fit_saas(X, Y, space, settings, normalize)
    phase = "refine" if refine and not settings.noisy else "explore"
    likelihood = GaussianLikelihood(
        noise_prior=LogNormalPrior(loc=NOISE_PRIOR_LOC[phase], scale=1.0),
        noise_constraint=GreaterThan(NOISE_FLOOR[settings.noisy], transform=None, initial_value=1e-3),
    )
    if cat:
        model: Model = MixedSingleTaskGP(
            X,
            Y,
            cat_dims=cat,
            likelihood=likelihood,
            input_transform=normalize,
            outcome_transform=Standardize(m=1),
            cont_kernel_factory=lambda batch_shape, ard_num_dims, active_dims: _base_kernel(
                settings.kernel, ard_num_dims, active_dims, batch_shape
            ),
        )
    else:
        model = SingleTaskGP(
            X,
            Y,
            likelihood=likelihood,
            covar_module=_scaled_kernel(settings.kernel, d),
            input_transform=normalize,
            outcome_transform=Standardize(m=1),
        )
    if warm_start is not None:
        model.load_state_dict(warm_start, strict=False)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        # Poorly conditioned fits are retried by fit_gpytorch_mll; its warnings are noise for users.
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(mll)
    return model.eval()


def hyperparameters(model: Model) -> dict[str, Tensor] | None:
    """The fitted kernel, mean and noise parameters of a MAP model, for ``fit_model(warm_start=...)``."""
    if getattr(model, "_is_fully_bayesian", False):
        return None  # MCMC samples, not a point estimate: nothing to warm-start
    skip = ("outcome_transform.", "input_transform.")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(skip)}


def _fit_saas(
    X: Tensor, Y: Tensor, space: ParamSpace, settings: BOSettings, normalize: Normalize | None
) -> Model:
    """SAAS GP sampled with NUTS; acquisitions then average over the samples (integrated acquisition)."""
    if space.cat_dims:
        raise ParamSpaceError("model=fully_bayesian does not support choice() parameters; use model=map")
    try:
        from botorch.fit import fit_fully_bayesian_model_nuts
        from botorch.models.fully_bayesian import SaasFullyBayesianSingleTaskGP
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise ParamSpaceError(
            f"model=fully_bayesian needs the optional extra 'nasrun[saas]' (jax, numpyro): {e}"
        ) from None
    model = SaasFullyBayesianSingleTaskGP(X, Y, input_transform=normalize, outcome_transform=Standardize(m=1))
    # Thinning 16 as in the SAASBO paper (Eriksson & Jankowiak 2021): 256 samples -> 16 GPs.
    fit_fully_bayesian_model_nuts(
        model,
        warmup_steps=settings.nuts_warmup,
        num_samples=settings.nuts_samples,
        thinning=16,
        disable_progbar=True,
        seed=settings.seed,
    )
    return model


def believer(model: Model, X_pending: Tensor) -> Model:
    """``model`` conditioned on its own posterior mean at ``X_pending`` (hyperparameters unchanged).

    The "kriging believer" fantasy for points being evaluated: the mean there stays, the
    uncertainty drops to the noise level, so a draw from the result is not maximised where an
    evaluation is already under way.
    """
    with torch.no_grad():
        mean = model.posterior(X_pending).mean  # type: ignore[attr-defined]
    return model.condition_on_observations(X=X_pending, Y=mean)


def censored_mean(model: Model, X: Tensor, upper: float) -> Tensor:
    """``E[f(x) | f(x) <= upper]`` under ``model``'s posterior at each row of ``X`` (``n x d`` -> ``n``).

    The mean of a normal distribution truncated above: ``mu - sigma * phi(a) / Phi(a)`` with
    ``a = (upper - mu) / sigma``, the ratio taken in log space (``log_ndtr``) so that it stays
    finite far in the tail, where the result tends to ``upper``.
    """
    with torch.no_grad():
        posterior: Any = model.posterior(X)
        # A fully Bayesian model's posterior is a mixture over its samples: use its moments.
        mu = getattr(posterior, "mixture_mean", posterior.mean).reshape(-1)
        var = getattr(posterior, "mixture_variance", posterior.variance).reshape(-1)
        sigma = var.clamp_min(1e-12).sqrt()
    a = (upper - mu) / sigma
    log_pdf = -0.5 * a**2 - 0.5 * math.log(2 * math.pi)
    return torch.minimum(
        mu - sigma * torch.exp(log_pdf - torch.special.log_ndtr(a)), torch.full_like(mu, upper)
    )
