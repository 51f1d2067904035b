"""The Gaussian-process surrogate: kernels, priors, the MAP, MCMC and SAAS fits, pending-point fantasies.

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
from botorch.posteriors.fully_bayesian import MCMC_DIM, GaussianMixturePosterior
from gpytorch import settings as gpytorch_settings
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
    cont = [i for i in range(d) if i not in space.cat_dims]
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
    model = _build(X, Y, space, settings, phase)
    if warm_start is not None:
        model.load_state_dict(warm_start, strict=False)
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        # Poorly conditioned fits are retried by fit_gpytorch_mll; its warnings are noise for users.
        warnings.simplefilter("ignore")
        fit_gpytorch_mll(mll)
    if settings.model is ModelKind.mcmc:
        return _integrate(model, X, Y, space, settings, phase)
    return model.eval()


def _build(
    X: Tensor, Y: Tensor, space: ParamSpace, settings: BOSettings, phase: str, ensemble: int = 0
) -> Model:
    """The unfitted MAP model, or with ``ensemble`` > 0 that many copies batched as an ensemble."""
    d = space.dim
    cat = sorted(space.cat_dims)
    cont = [i for i in range(d) if i not in cat]
    batch = torch.Size([ensemble]) if ensemble else torch.Size()
    if ensemble:
        X, Y = X.expand(ensemble, *X.shape), Y.expand(ensemble, *Y.shape)
    normalize = (
        Normalize(d=d, indices=cont, bounds=torch.tensor([[0.0] * len(cont), [1.0] * len(cont)], dtype=DTYPE))
        if cont
        else None
    )
    likelihood = GaussianLikelihood(
        batch_shape=batch,
        noise_prior=LogNormalPrior(loc=NOISE_PRIOR_LOC[phase], scale=1.0),
        noise_constraint=GreaterThan(NOISE_FLOOR[settings.noisy], transform=None, initial_value=1e-3),
    )
    standardize = Standardize(m=1, batch_shape=batch)
    if cat:
        return (_EnsembleMixedGP if ensemble else MixedSingleTaskGP)(
            X,
            Y,
            cat_dims=cat,
            likelihood=likelihood,
            input_transform=normalize,
            outcome_transform=standardize,
            cont_kernel_factory=lambda batch_shape, ard_num_dims, active_dims: _base_kernel(
                settings.kernel, ard_num_dims, active_dims, batch_shape
            ),
        )
    return (_EnsembleGP if ensemble else SingleTaskGP)(
        X,
        Y,
        likelihood=likelihood,
        covar_module=_scaled_kernel(settings.kernel, d, batch_shape=batch),
        input_transform=normalize,
        outcome_transform=standardize,
    )


def hyperparameters(model: Model) -> dict[str, Tensor] | None:
    """The fitted kernel, mean and noise parameters of a MAP model, for ``fit_model(warm_start=...)``."""
    if isinstance(model, _Ensemble):
        return model.map_fit  # the MAP fit its chain started from
    if getattr(model, "_is_fully_bayesian", False):
        return None  # MCMC samples, not a point estimate: nothing to warm-start
    skip = ("outcome_transform.", "input_transform.")
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(skip)}


class _Ensemble:
    """A GP batched over hyperparameter samples, which BoTorch treats as a fully Bayesian ensemble.

    The same mechanism as BoTorch's ``SaasFullyBayesianSingleTaskGP``: the posterior evaluates every
    sample at once along ``MCMC_DIM`` and comes back as a ``GaussianMixturePosterior``, and the
    acquisition functions, seeing ``_is_ensemble``, average their value over that dimension.
    """

    _is_fully_bayesian = True
    _is_ensemble = True
    map_fit: dict[str, Tensor] | None = None  # the MAP fit the chain started from (next warm start)
    samples: list[dict[str, Tensor]]  # each sample's parameters, as the unbatched model names them
    _single: Any  # builds the unbatched model

    def member(self, i: int) -> Model:
        """The unbatched GP with the ``i``-th sample's hyperparameters."""
        model = self._single()
        model.load_state_dict(self.samples[i], strict=False)
        return model.eval()

    def posterior(self, X: Tensor, *args: Any, **kwargs: Any) -> GaussianMixturePosterior:
        posterior = super().posterior(X.unsqueeze(MCMC_DIM), *args, **kwargs)  # type: ignore[misc]
        return GaussianMixturePosterior(distribution=posterior.distribution)

    def condition_on_observations(
        self, X: Tensor, Y: Tensor, noise: Tensor | None = None, **kwargs: Any
    ) -> Any:
        # As SaasFullyBayesianSingleTaskGP's: gpytorch infers the batch from the training data, so
        # observations shared by all samples get a copy per sample. (Also keeps mypy's view of the
        # two bases' conflicting signatures of this method in one place.)
        batch = self.batch_shape  # type: ignore[attr-defined]
        if X.ndim == 2:
            X = X.expand(*batch, *X.shape)
        if Y.ndim == 2:
            Y = Y.expand(*batch, *Y.shape)
        if noise is not None:
            kwargs["noise"] = noise
        return super().condition_on_observations(X, Y, **kwargs)  # type: ignore[misc]


class _EnsembleGP(_Ensemble, SingleTaskGP):
    pass


class _EnsembleMixedGP(_Ensemble, MixedSingleTaskGP):
    pass


def _integrate(
    model: Model, X: Tensor, Y: Tensor, space: ParamSpace, settings: BOSettings, phase: str
) -> Model:
    """The ensemble of ``settings.mcmc_samples`` hyperparameter draws, starting from the MAP ``model``.

    Every hyperparameter with a prior (length scales, amplitude, noise) is slice-sampled, one
    coordinate at a time in log space, from its posterior: the marginal likelihood times the prior.
    The rest (the constant mean; in spaces with ``choice`` parameters the categorical kernel's
    length scales and the amplitudes BoTorch gives no prior) keep their MAP values.
    """
    map_fit = hyperparameters(model)
    model.train()
    coords = _Coordinates(model)
    gp: Any = model
    train_x = gp.transform_inputs(gp.train_inputs[0])
    train_y = gp.train_targets  # standardised
    eye = torch.eye(len(train_y), dtype=DTYPE)

    def log_density(u: Tensor) -> float:
        """log p(y | θ) + log p(θ) + log |dθ/du|: the posterior of ``u = log θ``, unnormalised."""
        if bool((u < coords.lower).any()) or bool((u > coords.upper).any()):
            return -math.inf
        prior = coords.set(u)
        # The marginal likelihood written out (the same value as gpytorch's ExactMarginalLogLikelihood
        # times n, without the cost of its lazy tensors; this is the sampler's inner loop).
        with gpytorch_settings.lazily_evaluate_kernels(False):
            K = gp.covar_module(train_x).to_dense() + gp.likelihood.noise * eye
        L, info = torch.linalg.cholesky_ex(K)
        if int(info) != 0:
            return -math.inf
        r = (train_y - gp.mean_module.constant).unsqueeze(-1)
        fit = -0.5 * float((r * torch.cholesky_solve(r, L)).sum()) - float(L.diagonal().log().sum())
        value = fit + prior + float(u.sum())
        return value if math.isfinite(value) else -math.inf

    u = coords.get()
    samples = []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # jitter added to near-singular covariances: expected here
        lp = log_density(u)
        for sweep in range(settings.mcmc_burn_in + settings.mcmc_samples):
            u, lp = slice_sweep(log_density, u, lp)
            if sweep >= settings.mcmc_burn_in:
                coords.set(u)
                samples.append({k: v.detach().clone() for k, v in model.named_parameters()})
    ensemble: Any = _build(X, Y, space, settings, phase, ensemble=len(samples))
    stacked = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    ensemble.load_state_dict(stacked, strict=False)
    ensemble.map_fit = map_fit
    ensemble.samples = samples
    ensemble._single = lambda: _build(X, Y, space, settings, phase)
    return ensemble.eval()


class _Coordinates:
    """The log values of a model's prior-carrying hyperparameters as one flat vector, and back.

    Written straight into the raw parameters (through their constraints' inverse transforms)
    rather than through gpytorch's setters: this runs in the slice sampler's inner loop.
    """

    def __init__(self, model: Model) -> None:
        self.entries: list[tuple[Any, Any, Any, torch.Size]] = []
        lower = []
        gp: Any = model
        for name, module, prior, closure, _setting in gp.named_priors():
            # "<what>_prior" belongs to the raw parameter "raw_<what>" of the same module.
            what = name.rsplit(".", 1)[-1].removesuffix("_prior")
            raw = getattr(module, f"raw_{what}", None)
            if raw is None:
                continue
            constraint = module.constraint_for_parameter_name(f"raw_{what}")
            value = closure(module)
            self.entries.append((raw, constraint, prior, value.shape))
            bound = float(getattr(constraint, "lower_bound", 0.0)) if constraint is not None else 0.0
            lower += [math.log(bound) if bound > 0 else -math.inf] * value.numel()
        # Beyond e^±12 of the unit cube and standardised values a GP is degenerate: cap the slices.
        self.lower = torch.tensor(lower, dtype=DTYPE).clamp_min(-12.0)
        self.upper = torch.full_like(self.lower, 12.0)

    def values(self, u: Tensor) -> list[Tensor]:
        """The hyperparameters at ``u``, one tensor per prior, shaped as their parameters."""
        out, i = [], 0
        for _raw, _constraint, _prior, shape in self.entries:
            out.append(u[i : i + shape.numel()].exp().reshape(shape))
            i += shape.numel()
        return out

    def get(self) -> Tensor:
        with torch.no_grad():
            return torch.cat(
                [
                    (constraint.transform(raw) if constraint is not None else raw).reshape(-1).log()
                    for raw, constraint, _prior, _shape in self.entries
                ]
            )

    def set(self, u: Tensor) -> float:
        """Writes ``u`` into the model; returns the log prior density of the values."""
        log_prior = 0.0
        with torch.no_grad():
            for (raw, constraint, prior, _shape), value in zip(self.entries, self.values(u), strict=True):
                raw.copy_(constraint.inverse_transform(value) if constraint is not None else value)
                log_prior += float(prior.log_prob(value).sum())
        return log_prior


def slice_sweep(
    log_density: Any, x: Tensor, lp: float, width: float = 1.0, max_steps: int = 20
) -> tuple[Tensor, float]:
    """One sweep of coordinate-wise slice sampling (Neal 2003, stepping out and shrinkage).

    Each coordinate, in random order, moves to a uniform point of the slice
    ``{x_i : log_density(x) > lp + log U}``, found by stepping out ``width`` at a time (at most
    ``max_steps`` each way) and shrinking the interval towards the current value on rejection.
    The random numbers come from torch's global generator (the engine seeds it per proposal).

    Args:
        log_density: Unnormalised log density of a flat ``Tensor``; ``-inf`` outside the support.
        x: The current point.
        lp: ``log_density(x)``.
        width: Initial interval width, in the units of ``x`` (Spearmint's ``sigma``: 1,
            spearmint/util.py:34).
        max_steps: Stepping-out limit per side.

    Returns:
        The new point and its log density.
    """
    x = x.clone()
    for i in torch.randperm(len(x)).tolist():
        level = lp + math.log(float(torch.rand(())))
        x0 = float(x[i])

        def at(v: float, i: int = i) -> float:
            x[i] = v
            return log_density(x)

        left = x0 - width * float(torch.rand(()))
        right = left + width
        for _ in range(max_steps):
            if at(left) <= level:
                break
            left -= width
        for _ in range(max_steps):
            if at(right) <= level:
                break
            right += width
        while True:
            v = left + (right - left) * float(torch.rand(()))
            new = at(v)
            if new > level:
                lp = new
                break
            if v < x0:
                left = v
            else:
                right = v
            if right - left < 1e-10:  # cannot happen in exact arithmetic: x0 itself is in the slice
                new = at(x0)
                lp = new
                break
    return x, lp


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


def ensemble_size(model: Model) -> int:
    """The number of hyperparameter samples of a ``model=mcmc`` ensemble; 0 for any other model."""
    return len(model.samples) if isinstance(model, _Ensemble) else 0


def member(model: Model, i: int) -> Model:
    """The ``i``-th hyperparameter sample of a ``model=mcmc`` ensemble, as an unbatched GP."""
    if not isinstance(model, _Ensemble):
        raise TypeError(f"{type(model).__name__} is not a model=mcmc ensemble")
    return model.member(i)
