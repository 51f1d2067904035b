"""The model, the acquisition and the proposal routines under the engine, called directly.

Nothing here goes through ``BayesOpt.ask``, whose snapping and re-drawing of repeats would hide a
proposal on top of a pending point; the routines' own outputs are checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from botorch.models.model import Model
from gpytorch.kernels import MaternKernel, RBFKernel
from torch import Tensor
from torch.quasirandom import SobolEngine

from nasrun.bo import (
    Acquisition,
    BayesOpt,
    BOSettings,
    Direction,
    Exploration,
    Kernel,
    ParamSpace,
    TrialState,
    engine,
    parse_overrides,
)
from nasrun.bo._acquisition import build_acquisition
from nasrun.bo._explore import explore, thompson
from nasrun.bo._model import fit_model
from nasrun.bo._optimize import Proposal, optimize, unit_to_space

FAST = {"num_restarts": 3, "raw_samples": 64}


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def observations(space: ParamSpace, n: int = 8) -> tuple[Tensor, Tensor]:
    """``n`` Sobol points of ``space`` and minus Branin at their first two columns (to maximise)."""
    X = unit_to_space(SobolEngine(space.dim, scramble=True, seed=0).draw(n, dtype=torch.float64), space)
    Y = torch.tensor([[-branin(-5 + 15 * x[0], 15 * x[1])] for x in X.tolist()], dtype=torch.float64)
    return X, Y


def by_acquisition(model: Model, p: Proposal) -> Tensor:
    return optimize(build_acquisition(model, p.X, p.Y, p.settings, p.space.dim), p)


@pytest.mark.parametrize(
    ("routine", "exploration"),
    [(by_acquisition, Exploration.jes), (explore, Exploration.jes), (thompson, Exploration.thompson)],
    ids=["acquisition", "entropy-search", "thompson"],
)
def test_a_pending_point_moves_the_proposal_away_from_it(
    routine: Callable[[Model, Proposal], Tensor], exploration: Exploration
) -> None:
    space = parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])[0]
    settings = BOSettings(exploration=exploration, **FAST)
    X, Y = observations(space)
    model = fit_model(X, Y, space, settings)

    def propose(X_pending: Tensor | None) -> Tensor:
        torch.manual_seed(0)  # BoTorch's samplers draw from torch's global generator
        p = Proposal(space, settings, X, Y, 1, X_pending, torch.Generator().manual_seed(0))
        return routine(model, p)

    alone = propose(None)
    assert torch.equal(propose(None), alone)  # repeatable: only the pending point differs below
    moved = propose(alone)
    assert moved.shape == (1, 2) and (moved - alone).norm() > 0.05, (alone, moved)


@pytest.mark.parametrize("noisy", [False, True])
@pytest.mark.parametrize("acq", [Acquisition.logei, Acquisition.ei, Acquisition.pi])
def test_xi_raises_the_improvement_threshold_by_xi_standard_deviations(acq: Acquisition, noisy: bool) -> None:
    space = parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])[0]
    X, Y = observations(space)
    model = fit_model(X, Y, space, BOSettings(noisy=noisy))

    def acquisition(xi: float):
        return build_acquisition(model, X, Y, BOSettings(acquisition=acq, xi=xi, noisy=noisy), space.dim)

    plain, margin = acquisition(0.0), acquisition(0.5)
    with torch.no_grad():
        incumbent = model.posterior(X).mean.max() if noisy else Y.max()
        assert plain.best_f.item() == pytest.approx(incumbent.item())
        assert (margin.best_f - plain.best_f).item() == pytest.approx(0.5 * Y.std().item())
        # A higher bar: no candidate is worth more, and those that may improve are worth less.
        candidates = torch.rand(32, 1, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        lower, higher = margin(candidates), plain(candidates)
        assert (lower <= higher).all() and (lower < higher).sum() >= 8, (lower, higher)


@pytest.mark.parametrize(
    "overrides",
    [
        ["x=interval(-5, 10)", "y=interval(0, 15)"],
        ["x=interval(-5, 10)", "y=int(interval(0, 15))", "c=choice(a, b, c)"],
    ],
    ids=["continuous", "mixed"],
)
@pytest.mark.parametrize(("kernel", "cls"), [(Kernel.matern52, MaternKernel), (Kernel.rbf, RBFKernel)])
def test_the_kernel_setting_is_the_fitted_models_kernel(
    overrides: list[str], kernel: Kernel, cls: type
) -> None:
    space = parse_overrides(overrides)[0]
    X, Y = observations(space)
    model = fit_model(X, Y, space, BOSettings(kernel=kernel))
    stationary = [m for m in model.modules() if isinstance(m, MaternKernel | RBFKernel)]
    assert stationary and all(type(m) is cls for m in stationary), stationary
    if kernel is Kernel.matern52:
        assert all(m.nu == 2.5 for m in stationary)
    # ARD: one fitted length scale per continuous or integer column.
    assert sum(m.lengthscale.shape[-1] for m in stationary) >= 2


def test_failed_trials_enter_the_model_at_the_worst_value(monkeypatch: pytest.MonkeyPatch) -> None:
    fitted: list[tuple[Tensor, Tensor]] = []
    fit = engine.fit_model

    def spy(X: Tensor, Y: Tensor, *args, **kwargs):
        fitted.append((X.clone(), Y.clone()))
        return fit(X, Y, *args, **kwargs)

    monkeypatch.setattr(engine, "fit_model", spy)
    space = parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])[0]
    bo = BayesOpt(space, BOSettings(direction=Direction.minimize, n_initial=4, **FAST))
    trials = bo.ask(4)
    for t in trials[:3]:
        bo.tell(t.id, branin(**t.params))
    failed = bo.tell(trials[3].id, None, error="diverged")
    assert failed.state is TrialState.FAILED and failed.value is None and failed.error == "diverged"
    bo.ask()
    ((X, Y),) = fitted
    worst = max(branin(**t.params) for t in trials[:3])
    # Minimisation: the model maximises minus the value, so the worst value is the lowest Y.
    assert X[-1].tolist() == failed.x and Y[-1].item() == pytest.approx(-worst)
    assert Y[-1].item() == Y.min().item() and len(Y) == 4


def test_a_uniform_design_draws_every_choice_equally_often() -> None:
    """Sobol points of the unit cube decode to each of k choices about 1/k of the time."""
    space, _ = parse_overrides(["a=choice(x, y, z)", "b=choice(1, 2, 3, 4, 5)", "c=interval(0, 1)"])
    unit = SobolEngine(3, scramble=True, seed=0).draw(1500)
    points = unit_to_space(unit, space)
    decoded = [space.decode(row.tolist()) for row in points]
    for key, choices in (("a", ["x", "y", "z"]), ("b", [1, 2, 3, 4, 5])):
        counts = [sum(d[key] == c for d in decoded) for c in choices]
        assert max(counts) - min(counts) <= 0.02 * len(decoded), (key, counts)
    # interval(0, 1) is the identity of its own (third) coordinate, not another column's.
    assert [d["c"] for d in decoded] == pytest.approx(unit[:, 2].tolist(), abs=1e-6)
