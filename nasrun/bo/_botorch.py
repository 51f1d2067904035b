"""BoTorch glue: fit the GP, build the acquisition function, optimise it.

Everything numeric is BoTorch's or GPyTorch's; this module only picks the pieces and their
settings. All tensors are float64 (BoTorch's recommendation for GP fitting). The model always
*maximises*: the engine negates values of minimisation problems before they arrive here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from botorch.acquisition import (
    AcquisitionFunction,
    qExpectedImprovement,
    qLogExpectedImprovement,
    qLogNoisyExpectedImprovement,
    qProbabilityOfImprovement,
    qUpperConfidenceBound,
)
from botorch.acquisition.joint_entropy_search import qJointEntropySearch
from botorch.acquisition.thompson_sampling import PathwiseThompsonSampling
from botorch.acquisition.utils import get_optimal_samples
from botorch.fit import fit_gpytorch_mll
from botorch.generation.sampling import MaxPosteriorSampling
from botorch.models import MixedSingleTaskGP, SingleTaskGP
from botorch.models.model import Model
from botorch.models.transforms import Normalize, Standardize
from botorch.optim import optimize_acqf, optimize_acqf_mixed_alternating
from botorch.optim.initializers import initialize_q_batch
from botorch.sampling import SobolQMCNormalSampler
from gpytorch.constraints import GreaterThan
from gpytorch.kernels import Kernel as GPKernel
from gpytorch.kernels import MaternKernel, RBFKernel, ScaleKernel
from gpytorch.likelihoods import GaussianLikelihood
from gpytorch.mlls import ExactMarginalLogLikelihood
from gpytorch.priors import GammaPrior, LogNormalPrior
from torch import Tensor

from nasrun.bo.settings import Acquisition, BOSettings, Exploration, Kernel, ModelKind
from nasrun.bo.space import SearchSpace, SearchSpaceError

DTYPE = torch.float64
# Monte-Carlo samples for the q-acquisitions; fixed QMC base samples make the acquisition a
# deterministic, smooth function that L-BFGS-B can optimise (Balandat et al. 2020, BoTorch §4).
MC_SAMPLES = 256
# Noise floors in standardised units. 1e-4 is BoTorch's MIN_INFERRED_NOISE_LEVEL; 1e-6 (Optuna
# GPSampler's minimum noise variance) lets the GP nearly interpolate deterministic objectives.
NOISE_FLOOR = {True: 1e-4, False: 1e-6}
# Log-centres of the MAP models' LogNormal noise prior, in standardised units (SAAS keeps its own).
# "explore", e^-4 (about 0.018), is BoTorch's prior, used for the Thompson phase and for noisy
# objectives; on Hartmann6 centring it on e^-2, e^-6 or e^-8 during the Thompson phase left more
# runs in the local optimum. "refine", e^-8 (about 3e-4), lets the model nearly interpolate a
# deterministic objective (noisy=False) while the acquisition refines the best basin; on Hartmann6
# it cut the median regret at 50 evaluations about four-fold (docs/benchmarks/bo.md).
NOISE_PRIOR_LOC = {"explore": -4.0, "refine": -8.0}
# Local candidates: Gaussian steps around the best observations, as fractions of the unit cube.
# Half the raw samples go there so the optimiser also refines the incumbent's basin (the global
# Sobol half keeps exploring); Optuna's GPSampler likewise starts a local search at its best point.
LOCAL_SCALES = (0.01, 0.05, 0.2)
LOCAL_TOP_K = 5
# Sampled optima behind joint entropy search: posterior draws (pathwise), each maximised with the
# acquisition optimiser's raw_samples and num_restarts. 16 is what docs/benchmarks/bo.md
# measured; the time of a proposal grows with it (bo.md: time per proposal).
JES_OPTIMA = 16


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
    space: SearchSpace,
    settings: BOSettings,
    warm_start: dict[str, Tensor] | None = None,
    refine: bool = False,
) -> Model:
    """Fits a GP to the observations.

    Args:
        X: ``n x d`` encoded points.
        Y: ``n x 1`` values to maximise.
        space: The search space (for bounds and categorical columns).
        settings: Kernel, model kind, noise and seed.
        warm_start: Hyperparameters of the previous fit (``hyperparameters(model)``); the optimiser
            starts there, which is several times faster than from the priors' modes, and is what
            Optuna's GPSampler does too.
        refine: The fit serves the acquisition's refinement rather than Thompson sampling; with a
            deterministic objective (``settings.noisy`` false) the noise prior then favours
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
    X: Tensor, Y: Tensor, space: SearchSpace, settings: BOSettings, normalize: Normalize | None
) -> Model:
    """SAAS GP sampled with NUTS; acquisitions then average over the samples (integrated acquisition)."""
    if space.cat_dims:
        raise SearchSpaceError("model=fully_bayesian does not support choice() parameters; use model=map")
    try:
        from botorch.fit import fit_fully_bayesian_model_nuts
        from botorch.models.fully_bayesian import SaasFullyBayesianSingleTaskGP
    except ImportError as e:  # pragma: no cover - depends on the optional extra
        raise SearchSpaceError(
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


def gp_ucb_beta(t: int, d: int, delta: float = 0.1, nu: float = 1.0) -> float:
    """GP-UCB schedule beta_t = nu * 2 log(t^(d/2+2) pi^2 / (3 delta)) (Srinivas et al. 2010, Thm 2 as
    stated in Brochu et al. 2010); beta is kappa squared."""
    return nu * 2.0 * ((d / 2.0 + 2.0) * math.log(max(t, 1)) + math.log(math.pi**2 / (3.0 * delta)))


def build_acquisition(
    model: Model, X: Tensor, Y: Tensor, settings: BOSettings, d: int
) -> AcquisitionFunction:
    """The acquisition named by ``settings.acquisition`` (see ``Acquisition``).

    Args:
        model: The fitted model.
        X: ``n x d`` observed points (the baseline of qLogNEI, the incumbent candidates otherwise).
        Y: ``n x 1`` observed values to maximise.
        settings: Acquisition choice, ``xi``, ``ucb_beta``, ``noisy`` and seed.
        d: Dimension of the search space (for the GP-UCB schedule).
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


def _bounds(space: SearchSpace) -> Tensor:
    """``2 x d`` box of the encoded space, as BoTorch's optimisers take it."""
    return torch.tensor([[0.0] * space.dim, space.upper()], dtype=DTYPE)


def unit_to_space(u: Tensor, space: SearchSpace) -> Tensor:
    """Points of the unit cube as encoded points; categorical columns are stretched over their index range."""
    upper = torch.tensor(space.upper(), dtype=DTYPE)
    return u.to(DTYPE) * torch.where(upper > 1, upper + 1, upper)


def _raw_points(
    X: Tensor, Y: Tensor, space: SearchSpace, settings: BOSettings, generator: torch.Generator
) -> Tensor:
    """``raw_samples`` scrambled Sobol points and as many Gaussian steps around the best observations."""
    from torch.quasirandom import SobolEngine

    d = space.dim
    upper = torch.tensor(space.upper(), dtype=DTYPE)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    sobol = unit_to_space(SobolEngine(d, scramble=True, seed=seed).draw(settings.raw_samples), space)
    top = X[Y.squeeze(-1).argsort(descending=True)[:LOCAL_TOP_K]]
    n_local = max(settings.raw_samples // 2 // max(len(top) * len(LOCAL_SCALES), 1), 1)
    local = [
        torch.minimum(
            (x + s * upper * torch.randn(n_local, d, generator=generator, dtype=DTYPE)).clamp(min=0.0), upper
        )
        for x in top
        for s in LOCAL_SCALES
    ]
    return torch.cat([sobol, *local])


def _initial_conditions(
    acqf: AcquisitionFunction,
    X: Tensor,
    Y: Tensor,
    space: SearchSpace,
    settings: BOSettings,
    generator: torch.Generator,
) -> Tensor:
    """``num_restarts x 1 x d`` starts: Boltzmann-picked from Sobol points and steps around the best."""
    raw = _raw_points(X, Y, space, settings, generator).unsqueeze(-2)
    with torch.no_grad():
        values = torch.cat([acqf(chunk) for chunk in raw.split(256)])
    starts, _ = initialize_q_batch(raw, values, n=min(settings.num_restarts, len(raw)))
    # The best raw point is always a start: cheap insurance that the optimum found stays found.
    starts[0] = raw[values.argmax()]
    return starts


def optimize(
    acqf: AcquisitionFunction,
    X: Tensor,
    Y: Tensor,
    space: SearchSpace,
    settings: BOSettings,
    q: int,
    X_pending: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """Maximises the acquisition for ``q`` new points, one at a time, each pending for the next.

    Sequential greedy selection (BoTorch's ``sequential=True``) keeps the points of a batch distinct:
    every chosen point, like every running trial, is passed to the acquisition as ``X_pending``.

    Args:
        acqf: The acquisition function.
        X: ``n x d`` observed points; Y: ``n x 1`` values (to seed local starts).
        space: The search space.
        settings: Restarts and raw samples.
        q: Number of points.
        X_pending: ``p x d`` points being evaluated, or ``None``.
        generator: Random source for the starts.

    Returns:
        ``q x d`` encoded points, snapped onto the space.
    """
    bounds = _bounds(space)
    chosen: list[Tensor] = []
    discrete = {**space.int_dims}
    for _ in range(q):
        pending = [t for t in [X_pending, *chosen] if t is not None]
        acqf.set_X_pending(torch.cat(pending) if pending else None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optimiser restarts that stop early are expected
            if space.cat_dims or discrete:
                cand, _ = optimize_acqf_mixed_alternating(
                    acqf,
                    bounds=bounds,
                    discrete_dims=discrete or None,
                    cat_dims=space.cat_dims or None,
                    q=1,
                    num_restarts=settings.num_restarts,
                    raw_samples=settings.raw_samples,
                )
            else:
                starts = _initial_conditions(acqf, X, Y, space, settings, generator)
                cand, _ = optimize_acqf(
                    acqf, bounds=bounds, q=1, num_restarts=len(starts), batch_initial_conditions=starts
                )
        chosen.append(torch.tensor([space.snap(cand[0].tolist())], dtype=DTYPE))
    return torch.cat(chosen)


def explore(
    model: Model,
    X: Tensor,
    Y: Tensor,
    space: SearchSpace,
    settings: BOSettings,
    q: int,
    X_pending: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """``q`` points of the exploration phase: joint entropy search, or Thompson samples.

    Joint entropy search (Hvarfner et al. 2022, BoTorch's ``qJointEntropySearch``) picks the point
    whose evaluation is expected to tell most about where the optimum is and how high it is; the
    optimum is represented by the maximisers of ``JES_OPTIMA`` posterior draws. Unlike an
    improvement criterion it values evaluating a basin that only might hold the optimum. Pending
    points enter as for the acquisition (``optimize``). Spaces with categorical columns and SAAS
    ensembles use Thompson sampling: the sampled optima need a continuous space and one GP.

    Returns:
        ``q x d`` encoded points, snapped onto the space.
    """
    if (
        settings.exploration is Exploration.thompson
        or space.cat_dims
        or settings.model is ModelKind.fully_bayesian
    ):
        return thompson(model, X, Y, space, settings, q, X_pending, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optimiser restarts that stop early are expected
        optimal_inputs, optimal_outputs = get_optimal_samples(
            model,
            bounds=_bounds(space),
            num_optima=JES_OPTIMA,
            raw_samples=settings.raw_samples,
            num_restarts=settings.num_restarts,
        )
    acqf = qJointEntropySearch(model, optimal_inputs=optimal_inputs, optimal_outputs=optimal_outputs)
    return optimize(acqf, X, Y, space, settings, q, X_pending, generator)


def thompson(
    model: Model,
    X: Tensor,
    Y: Tensor,
    space: SearchSpace,
    settings: BOSettings,
    q: int,
    X_pending: Tensor | None,
    generator: torch.Generator,
) -> Tensor:
    """``q`` Thompson samples: each the maximiser of its own draw from the GP posterior.

    Continuous and integer spaces draw whole functions (BoTorch's pathwise sampler: random Fourier
    features of the prior, updated by Matheron's rule) and maximise each with ``optimize``. The
    pathwise sampler has no features for the categorical kernel, so mixed spaces draw jointly over a
    candidate set instead (Sobol points and steps around the best points, as for the acquisition's
    starts) and take the best candidate of each draw.

    Pending points (running trials, and the points already chosen for this batch) enter as
    "kriging believer" fantasies: each draw comes from the posterior conditioned on the model's own
    mean at those points. Their uncertainty is gone, so no draw is maximised where an evaluation is
    already under way; independent draws from one posterior can put two points of a batch on
    nearly the same spot.

    Returns:
        ``q x d`` encoded points, snapped onto the space.
    """
    candidates = _candidates(X, Y, space, settings, generator) if space.cat_dims else None
    chosen: list[Tensor] = []
    for _ in range(q):
        pending = [t for t in [X_pending, *chosen] if t is not None]
        believer = _believer(model, torch.cat(pending)) if pending else model
        if candidates is not None:
            picked = MaxPosteriorSampling(believer)(candidates, num_samples=1)
            chosen.append(torch.tensor([space.snap(picked[0].tolist())], dtype=DTYPE))
        else:
            ts = PathwiseThompsonSampling(believer)
            chosen.append(optimize(ts, X, Y, space, settings, 1, None, generator))
    return torch.cat(chosen)


def _believer(model: Model, X_pending: Tensor) -> Model:
    """``model`` conditioned on its posterior mean at ``X_pending`` (hyperparameters unchanged)."""
    with torch.no_grad():
        mean = model.posterior(X_pending).mean  # type: ignore[attr-defined]
    return model.condition_on_observations(X=X_pending, Y=mean)


def _candidates(
    X: Tensor, Y: Tensor, space: SearchSpace, settings: BOSettings, generator: torch.Generator
) -> Tensor:
    """Distinct snapped points of ``_raw_points``."""
    raw = _raw_points(X, Y, space, settings, generator)
    return torch.tensor([space.snap(x) for x in raw.tolist()], dtype=DTYPE).unique(dim=0)
