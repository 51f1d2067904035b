"""The ask/tell engine on small problems: initial design, batches and pending points, failures,
resume from the store, every acquisition, mixed spaces, and Branin against Sobol."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch
from torch.quasirandom import SobolEngine

from nasrun import UserError
from nasrun.bo import (
    Acquisition,
    BayesOpt,
    BOSettings,
    Direction,
    Exploration,
    ModelKind,
    ParamSpace,
    Real,
    TrialState,
    TrialStore,
    _explore,
    _model,
    engine,
    parse_overrides,
)
from nasrun.bo._acquisition import gp_ucb_beta
from nasrun.bo._optimize import Proposal, bounds, unit_to_space

# Small optimiser settings keep every ask well under a second on a busy 2-core machine.
FAST = {"num_restarts": 3, "raw_samples": 64}


@pytest.fixture
def unguarded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Takes away the engine's two safety nets, so that a test sees the proposals as they are made.

    ``ParamSpace.snap`` no longer clamps continuous columns into the space (integer and categorical
    columns still round to their grid), and ``BayesOpt._unique`` no longer replaces a point that
    repeats an earlier trial by a random one. A proposal outside the space, or a repeat, then
    reaches the trial store as it is.
    """
    snap = ParamSpace.snap

    def snap_without_clamp(self: ParamSpace, x: list[float]) -> list[float]:
        snapped = snap(self, x)
        return [
            float(v) if isinstance(p, Real) else s for p, v, s in zip(self.params, x, snapped, strict=True)
        ]

    monkeypatch.setattr(ParamSpace, "snap", snap_without_clamp)
    monkeypatch.setattr(BayesOpt, "_unique", lambda self, x, seen: x)


def assert_inside_and_apart(space: ParamSpace, xs: list[list[float]], gap: float) -> None:
    """Every encoded point lies in the space's box, and any two are more than ``gap`` apart."""
    X = torch.tensor(xs, dtype=torch.float64)
    box = bounds(space)
    assert ((box[0] <= X) & (X <= box[1])).all(), xs
    assert torch.pdist(X).min() > gap, xs


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


BRANIN_MIN = 0.397887


def branin_space():
    return parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])[0]


def run(bo: BayesOpt, f, n: int) -> None:
    for _ in range(n):
        (trial,) = bo.ask()
        bo.tell(trial.id, f(**trial.params))


def test_initial_design_is_seeded_sobol() -> None:
    space = branin_space()
    a = BayesOpt(space, BOSettings(seed=3, n_initial=4)).ask(4)
    b = BayesOpt(space, BOSettings(seed=3, n_initial=4)).ask(4)
    c = BayesOpt(space, BOSettings(seed=4, n_initial=4)).ask(4)
    assert [t.params for t in a] == [t.params for t in b] != [t.params for t in c]
    assert len({tuple(t.x) for t in a}) == 4 and all(t.state is TrialState.PENDING for t in a)
    assert BayesOpt(space).n_initial == 5  # max(5, 2 d) with d = 2
    assert BayesOpt(parse_overrides([f"x{i}=interval(0, 1)" for i in range(4)])[0]).n_initial == 8


def test_batches_are_distinct_and_respect_pending_points(unguarded: None) -> None:
    space = parse_overrides(["x=interval(0, 1)"])[0]
    bo = BayesOpt(space, BOSettings(direction=Direction.minimize, n_initial=4, **FAST))
    run(bo, lambda x: (x - 0.3) ** 2, 4)
    batch = bo.ask(4)
    assert_inside_and_apart(space, [t.x for t in batch], gap=0.01)
    # The batch is still pending: the next proposal must go elsewhere, not on top of it.
    (extra,) = bo.ask(1)
    assert_inside_and_apart(space, [t.x for t in [*batch, extra]], gap=0.01)
    # Without pending points the same model state proposes near the optimum, i.e. pending points moved it.
    fresh = BayesOpt(space, BOSettings(direction=Direction.minimize, n_initial=4, **FAST))
    run(fresh, lambda x: (x - 0.3) ** 2, 4)
    (alone,) = fresh.ask(1)
    assert abs(alone.params["x"] - 0.3) < 0.15


def test_failures_are_recorded_and_avoided(unguarded: None) -> None:
    space = parse_overrides(["x=interval(0, 1)"])[0]
    bo = BayesOpt(space, BOSettings(direction=Direction.minimize, n_initial=5, **FAST))

    def f(x: float) -> float:
        return float("nan") if x > 0.6 else (x - 0.2) ** 2

    run(bo, f, 16)
    trials = bo.trials()
    failed = [t for t in trials if t.state is TrialState.FAILED]
    assert failed and all(t.error == "the objective is nan" and t.value is None for t in failed)
    assert len({tuple(t.x) for t in trials}) == len(trials)  # nothing proposed twice
    bo_failed = [t for t in failed if t.id >= 5]
    assert len(bo_failed) <= 3, [t.params for t in bo_failed]  # the model steers away from the failing region
    assert bo.best().value == pytest.approx(0.0, abs=1e-3)


def test_resume_from_the_store_continues(tmp_path: Path) -> None:
    space = branin_space()
    path = tmp_path / "trials.sqlite"
    first = BayesOpt(space, BOSettings(direction=Direction.minimize, n_initial=4, **FAST), TrialStore(path))
    run(first, branin, 3)
    (dangling,) = first.ask()  # proposed, never told: the "crashed" trial
    second = BayesOpt(space, BOSettings(direction=Direction.minimize, n_initial=4, **FAST), TrialStore(path))
    assert [t.id for t in second.trials()] == [0, 1, 2, 3]
    assert second.trials()[3].state is TrialState.PENDING
    second.tell(dangling.id, branin(**dangling.params))
    run(second, branin, 2)
    xs = [tuple(t.x) for t in second.trials()]
    assert len(xs) == 6 and len(set(xs)) == 6  # the Sobol sequence continued, nothing repeated
    with pytest.raises(UserError, match="different direction"):
        BayesOpt(space, BOSettings(direction=Direction.maximize), TrialStore(path))
    with pytest.raises(UserError, match="different space"):
        BayesOpt(
            parse_overrides(["x=interval(0, 1)"])[0],
            BOSettings(direction=Direction.minimize),
            TrialStore(path),
        )


@pytest.mark.parametrize("acq", list(Acquisition))
def test_every_acquisition_proposes_distinct_points_inside_the_space(
    acq: Acquisition, unguarded: None
) -> None:
    space = branin_space()
    bo = BayesOpt(
        space, BOSettings(direction=Direction.minimize, n_initial=5, acquisition=acq, noisy=True, **FAST)
    )
    run(bo, branin, 5)
    batch = bo.ask(2)
    assert_inside_and_apart(space, [t.x for t in bo.trials()], gap=0.01)
    assert len(batch) == 2 and all(t.state is TrialState.PENDING for t in batch)


def test_gp_ucb_schedule_grows_with_time_and_dimension() -> None:
    assert gp_ucb_beta(10, 2) < gp_ucb_beta(100, 2) < gp_ucb_beta(100, 6)
    # beta_1 = 2 log(pi^2 / (3 delta)) with delta = 0.1
    assert gp_ucb_beta(1, 3) == pytest.approx(2 * math.log(math.pi**2 / 0.3))


def test_mixed_space_with_choices_and_integers() -> None:
    space = parse_overrides(
        ["lr=tag(log, interval(1e-4, 1e-1))", "bs=choice(32, 64, 128)", "layers=int(interval(1, 8))"]
    )[0]

    def f(lr: float, bs: int, layers: int) -> float:
        return -((math.log10(lr) + 2) ** 2) - (bs != 64) - 0.1 * (layers - 5) ** 2

    bo = BayesOpt(space, BOSettings(n_initial=6, **FAST))
    run(bo, f, 8)
    for t in bo.trials():
        assert (
            t.params["bs"] in (32, 64, 128)
            and isinstance(t.params["layers"], int)
            and 1 <= t.params["layers"] <= 8
        )
    assert bo.best().value > -1.5


def test_branin_beats_sobol_at_equal_budget() -> None:
    """Fixed seeds, 15 evaluations: BO's median regret is below scrambled Sobol's."""
    budget, seeds = 15, (0, 1, 2)
    bo_regret, sobol_regret = [], []
    for seed in seeds:
        bo = BayesOpt(
            branin_space(), BOSettings(direction=Direction.minimize, seed=seed, n_initial=5, **FAST)
        )
        run(bo, branin, budget)
        bo_regret.append(bo.best().value - BRANIN_MIN)
        pts = SobolEngine(2, scramble=True, seed=seed).draw(budget, dtype=torch.float64)
        sobol_regret.append(min(branin(-5 + 15 * u, 15 * v) for u, v in pts.tolist()) - BRANIN_MIN)
    assert statistics.median(bo_regret) < statistics.median(sobol_regret), (bo_regret, sobol_regret)


def test_fully_bayesian_saas_fit_finds_the_relevant_dimension() -> None:
    """One NUTS fit of the SAAS GP (the dev install carries jax and numpyro): 32 samples thinned by
    16 leave 2 GPs, the posterior mean goes through the observations, and the sparsity prior keeps
    the lengthscales of the two dimensions the objective ignores long while x0's is short."""
    pytest.importorskip("numpyro")
    space = parse_overrides([f"x{i}=interval(0, 1)" for i in range(3)])[0]
    X = torch.rand(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    Y = -4 * (X[:, :1] - 0.5) ** 2
    settings = BOSettings(model=ModelKind.fully_bayesian, nuts_warmup=16, nuts_samples=32, seed=0)
    model = _model.fit_model(X, Y, space, settings)
    assert model.batch_shape == torch.Size([2])
    mean = model.posterior(X).mixture_mean.detach()
    assert torch.allclose(mean, Y, atol=0.05), (mean, Y)
    lengthscale = model.median_lengthscale.detach()
    assert lengthscale[0] < 0.5 * lengthscale[1:].min(), lengthscale


@pytest.mark.slow
def test_fully_bayesian_saas_model() -> None:
    pytest.importorskip("numpyro")
    space = parse_overrides([f"x{i}=interval(0, 1)" for i in range(3)])[0]
    settings = BOSettings(
        direction=Direction.minimize,
        n_initial=5,
        model=ModelKind.fully_bayesian,
        nuts_warmup=32,
        nuts_samples=32,
        **FAST,
    )
    # budget=10: trials 5 and 6 are a Thompson batch of the ensemble (the second drawn with the
    # first pending), 7-9 maximise the acquisition.
    bo = BayesOpt(space, settings, budget=10)

    def f(x0: float, x1: float, x2: float) -> float:
        return (x0 - 0.5) ** 2 + (x1 - 0.2) ** 2

    run(bo, f, 5)
    batch = bo.ask(2)
    assert len({tuple(t.x) for t in batch}) == 2
    for t in batch:
        bo.tell(t.id, f(**t.params))
    run(bo, f, 2)
    assert len(bo.trials()) == 9 and all(t.state is TrialState.COMPLETED for t in bo.trials())


def _spy_phases(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records, per model-based ask, whether it explored or maximised the acquisition."""
    calls: list[str] = []
    explore, build = engine.explore, engine.build_acquisition

    def spy_explore(*args, **kwargs):
        calls.append("explore")
        return explore(*args, **kwargs)

    def spy_build(*args, **kwargs):
        calls.append("acquisition")
        return build(*args, **kwargs)

    monkeypatch.setattr(engine, "explore", spy_explore)
    monkeypatch.setattr(engine, "build_acquisition", spy_build)
    return calls


def test_exploration_phase_covers_the_given_share_of_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _spy_phases(monkeypatch)
    refine_flags: list[bool] = []
    fit = engine.fit_model

    def spy_fit(*args, refine: bool = False, **kwargs):
        refine_flags.append(refine)
        return fit(*args, refine=refine, **kwargs)

    monkeypatch.setattr(engine, "fit_model", spy_fit)
    settings = BOSettings(direction=Direction.minimize, n_initial=4, explore_fraction=0.6, **FAST)
    bo = BayesOpt(branin_space(), settings, budget=10)
    run(bo, branin, 10)
    # Trials 0-3 Sobol; 4 and 5 explore (index < 0.6 * 10); 6-9 the acquisition.
    assert calls == ["explore"] * 2 + ["acquisition"] * 4
    # The acquisition's model is the refining one (near-interpolating for deterministic objectives).
    assert refine_flags == [False] * 2 + [True] * 4
    assert len({tuple(t.x) for t in bo.trials()}) == 10


def test_refining_model_nearly_interpolates_only_deterministic_objectives() -> None:
    from botorch.test_functions import Hartmann

    # Hartmann6 is a plateau with narrow wells: the stationary GP's misfit goes into the noise.
    space = parse_overrides([f"x{i}=interval(0, 1)" for i in range(6)])[0]
    X = SobolEngine(6, scramble=True, seed=0).draw(30, dtype=torch.float64)
    Y = -Hartmann(dim=6)(X).unsqueeze(-1)

    def noise(noisy: bool, refine: bool) -> float:
        model = _model.fit_model(X, Y, space, BOSettings(noisy=noisy), refine=refine)
        return model.likelihood.noise.item()

    assert noise(noisy=False, refine=True) < noise(noisy=False, refine=False) / 10
    assert noise(noisy=True, refine=True) == pytest.approx(noise(noisy=True, refine=False))


def test_without_a_budget_or_with_fraction_zero_there_is_no_exploration_phase(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _spy_phases(monkeypatch)
    run(BayesOpt(branin_space(), BOSettings(n_initial=4, **FAST)), branin, 6)
    run(BayesOpt(branin_space(), BOSettings(n_initial=4, explore_fraction=0.0, **FAST), budget=6), branin, 6)
    assert calls == ["acquisition"] * 4


@pytest.mark.parametrize(
    ("overrides", "exploration"),
    [
        (["x=interval(-5, 10)", "y=interval(0, 15)"], Exploration.jes),
        (["x=interval(-5, 10)", "y=interval(0, 15)"], Exploration.thompson),
        (["x=interval(-5, 10)", "y=int(interval(0, 15))"], Exploration.jes),
        (["x=interval(-5, 10)", "y=int(interval(0, 15))", "c=choice(a, b, c)"], Exploration.jes),
    ],
    ids=["continuous-jes", "continuous-thompson", "integer-jes", "mixed"],
)
def test_exploration_batches_are_distinct_points_of_the_space(
    overrides: list[str], exploration: Exploration, unguarded: None
) -> None:
    space = parse_overrides(overrides)[0]
    bo = BayesOpt(space, BOSettings(n_initial=5, seed=2, exploration=exploration, **FAST), budget=20)
    run(bo, lambda **p: -((p["x"] - 2) ** 2) - (p["y"] - 3) ** 2, 5)
    batch = bo.ask(4)
    assert_inside_and_apart(space, [t.x for t in batch], gap=0.01)
    grid = {**space.int_dims, **space.cat_dims}
    for t in batch:
        assert all(t.x[i] in values for i, values in grid.items()), t.x


def test_explore_fraction_outside_0_1_is_a_user_error() -> None:
    with pytest.raises(UserError, match="explore_fraction must be in \\[0, 1\\], got 1.5"):
        BayesOpt(branin_space(), BOSettings(explore_fraction=1.5), budget=10)


def test_believer_removes_the_uncertainty_at_pending_points_and_keeps_the_mean() -> None:
    space = branin_space()
    u = SobolEngine(2, scramble=True, seed=0).draw(12, dtype=torch.float64)
    X = unit_to_space(u, space)
    Y = torch.tensor([[-branin(-5 + 15 * a, 15 * b)] for a, b in u.tolist()], dtype=torch.float64)
    model = _model.fit_model(X, Y, space, BOSettings())
    pending = torch.tensor([[0.3, 0.6], [0.8, 0.1]], dtype=torch.float64)
    before = model.posterior(pending)
    after = _model.believer(model, pending).posterior(pending)
    assert torch.allclose(after.mean, before.mean, atol=1e-3 * Y.std().item())
    # One (noisy) observation at a point leaves at most the noise variance there.
    noise = model.likelihood.noise.item() * Y.var().item()
    assert (after.variance <= noise).all() and (before.variance > 10 * noise).all()


def test_thompson_samples_are_drawn_with_running_trials_pending(monkeypatch: pytest.MonkeyPatch) -> None:
    conditioned_on: list[list[list[float]]] = []
    believer = _explore.believer

    def spy(model, X_pending):
        conditioned_on.append(X_pending.tolist())
        return believer(model, X_pending)

    monkeypatch.setattr(_explore, "believer", spy)
    settings = BOSettings(n_initial=5, exploration=Exploration.thompson, **FAST)
    bo = BayesOpt(branin_space(), settings, budget=20)
    run(bo, branin, 5)
    (running,) = bo.ask()  # a Thompson sample, still being evaluated
    assert conditioned_on == []
    bo.ask()
    assert conditioned_on == [[running.x]]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["x=interval(-5, 10)", "y=interval(0, 15)"], "qJointEntropySearch"),
        (["x=interval(-5, 10)", "c=choice(a, b, c)"], "thompson"),
    ],
    ids=["continuous", "categorical"],
)
def test_entropy_search_explores_continuous_spaces_with_running_trials_pending(
    monkeypatch: pytest.MonkeyPatch, overrides: list[str], expected: str
) -> None:
    """Default exploration: joint entropy search, told about running trials; Thompson sampling
    where the space has categorical columns (the sampled optima need a continuous space)."""
    seen: list[tuple[str, list[list[float]] | None]] = []
    optimize, thompson = _explore.optimize, _explore.thompson

    def spy_optimize(acqf, p: Proposal):
        seen.append((type(acqf).__name__, None if p.X_pending is None else p.X_pending.tolist()))
        return optimize(acqf, p)

    def spy_thompson(model, p: Proposal):
        seen.append(("thompson", None if p.X_pending is None else p.X_pending.tolist()))
        return thompson(model, p)

    monkeypatch.setattr(_explore, "optimize", spy_optimize)
    monkeypatch.setattr(_explore, "thompson", spy_thompson)
    space = parse_overrides(overrides)[0]
    bo = BayesOpt(space, BOSettings(n_initial=5, **FAST), budget=20)
    run(bo, lambda **p: -((p["x"] - 2) ** 2), 5)
    (running,) = bo.ask()
    bo.ask()
    assert seen == [(expected, None), (expected, [running.x])]
