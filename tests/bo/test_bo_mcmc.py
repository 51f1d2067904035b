"""``model=mcmc``: slice-sampled GP hyperparameters, the acquisition averaged over the samples,
mixed spaces, and the line that says when joint entropy search gives way to Thompson sampling."""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.quasirandom import SobolEngine

from nasrun import UserError
from nasrun.bo import (
    Acquisition,
    BayesOpt,
    BOSettings,
    Exploration,
    ModelKind,
    parse_overrides,
    prepare_sweeper_args,
)
from nasrun.bo._acquisition import build_acquisition
from nasrun.bo._model import _Coordinates, believer, ensemble_size, fit_model, member, slice_sweep
from nasrun.bo._optimize import unit_to_space
from tests.conftest import load_script

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "tests" / "bo" / "app" / "branin_app.py"
_app = load_script(APP)
branin_task = _app.task.__wrapped__  # the plain function under @hydra.main
# Few sweeps keep each fit well under a second; the tests check the mechanism, not the mixing.
SMALL = {"model": ModelKind.mcmc, "mcmc_samples": 6, "mcmc_burn_in": 3, "num_restarts": 3, "raw_samples": 64}


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - 6.0) ** 2 + 10.0 * (1 - t) * math.cos(x) + 10.0


def branin_data(n: int = 12) -> tuple[torch.Tensor, torch.Tensor, object]:
    space = parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])[0]
    u = SobolEngine(2, scramble=True, seed=0).draw(n, dtype=torch.float64)
    X = unit_to_space(u, space)
    Y = torch.tensor([[-branin(-5 + 15 * a, 15 * b)] for a, b in u.tolist()], dtype=torch.float64)
    return X, Y, space


def test_mcmc_model_holds_several_hyperparameter_samples() -> None:
    X, Y, space = branin_data()
    torch.manual_seed(0)
    model = fit_model(X, Y, space, BOSettings(**SMALL), refine=True)
    assert ensemble_size(model) == 6 and model.batch_shape == torch.Size([6])
    lengthscales = model.covar_module.base_kernel.lengthscale.detach().reshape(6, 2)
    noise = model.likelihood.noise.detach().reshape(6)
    # Every sample its own length scales (a chain that never moved would repeat the MAP fit).
    assert len({tuple(row) for row in lengthscales.tolist()}) == 6
    assert (lengthscales.std(dim=0) > 0.01 * lengthscales.mean(dim=0)).all(), lengthscales
    assert len(set(noise.tolist())) == 6
    # The posterior is a mixture over the samples, which the acquisition functions average over.
    posterior = model.posterior(X[:3])
    assert posterior.mean.shape == (6, 3, 1) and posterior.mixture_mean.shape == (3, 1)
    # Each sample can be conditioned on pending points (the kriging believer), the mean kept.
    pending = torch.tensor([[0.3, 0.6]], dtype=torch.float64)
    after = believer(model, pending).posterior(pending)
    before = model.posterior(pending)
    assert torch.allclose(after.mean, before.mean, atol=1e-3 * Y.std().item())
    assert (after.variance < 0.1 * before.variance).all()


@pytest.mark.parametrize("kind", [Acquisition.logei, Acquisition.ucb])
def test_acquisition_is_the_mean_of_the_per_sample_acquisitions(kind: Acquisition) -> None:
    X, Y, space = branin_data()
    settings = BOSettings(**{**SMALL, "acquisition": kind})
    torch.manual_seed(1)
    model = fit_model(X, Y, space, settings, refine=True)
    candidates = torch.rand(5, 1, 2, dtype=torch.float64)
    with torch.no_grad():
        averaged = build_acquisition(model, X, Y, settings, 2)(candidates)
        each = torch.stack(
            [
                build_acquisition(member(model, i), X, Y, settings, 2)(candidates)
                for i in range(ensemble_size(model))
            ]
        )
    # The per-sample values differ (else the check below would hold for any reduction).
    assert (each.max(dim=0).values - each.min(dim=0).values).abs().min() > 1e-6
    if kind is Acquisition.logei:  # a log acquisition: the log of the mean of exp
        expected = torch.logsumexp(each, dim=0) - math.log(len(each))
    else:
        expected = each.mean(dim=0)
    assert torch.allclose(averaged, expected, rtol=1e-6, atol=1e-9), (averaged, expected)


def test_slice_sampler_draws_from_its_target() -> None:
    """On a standard normal, coordinate-wise slice sampling gives mean 0 and variance 1."""
    torch.manual_seed(0)
    x, lp = torch.zeros(2, dtype=torch.float64), 0.0
    draws = []
    for _ in range(2000):
        x, lp = slice_sweep(lambda u: -0.5 * float((u**2).sum()), x, lp)
        draws.append(x)
    stacked = torch.stack(draws)
    assert stacked.mean(dim=0).abs().max() < 0.1 and (stacked.var(dim=0) - 1).abs().max() < 0.15


def test_coordinates_round_trip_the_prior_carrying_hyperparameters() -> None:
    X, Y, space = branin_data()
    model = fit_model(X, Y, space, BOSettings())
    coords = _Coordinates(model)
    u = coords.get()
    assert len(u) == 4  # two length scales, the amplitude and the noise
    coords.set(u + 0.5)
    assert torch.allclose(coords.get(), u + 0.5)
    values = torch.cat(
        [
            model.covar_module.base_kernel.lengthscale.detach().reshape(-1),
            model.covar_module.outputscale.detach().reshape(-1),
            model.likelihood.noise.detach().reshape(-1),
        ]
    )
    assert torch.allclose(values.log().sort().values, (u + 0.5).sort().values)


@pytest.mark.parametrize(
    ("overrides", "settings", "reason"),
    [
        (["x=interval(-5, 10)", "c=choice(a, b, c)"], {}, "the space has choice() parameters"),
        (["x=interval(-5, 10)", "y=interval(0, 15)"], {"model": ModelKind.mcmc}, "model=mcmc is an ensemble"),
        (["x=interval(-5, 10)", "y=interval(0, 15)"], {}, None),
        (["x=interval(-5, 10)", "c=choice(a, b)"], {"exploration": Exploration.thompson}, None),
    ],
    ids=["choice", "mcmc", "jes-runs", "thompson-asked-for"],
)
def test_the_thompson_fallback_is_said_once_at_the_start(
    caplog: pytest.LogCaptureFixture, overrides: list[str], settings: dict, reason: str | None
) -> None:
    caplog.set_level(logging.INFO, logger="nasrun.bo.engine")
    BayesOpt(parse_overrides(overrides)[0], BOSettings(**settings), budget=20)
    lines = [r.getMessage() for r in caplog.records if "Thompson" in r.getMessage()]
    if reason is None:
        assert lines == []
    else:
        assert len(lines) == 1 and lines[0].endswith(reason + (" of GPs" if "mcmc" in reason else "")), lines


def test_bad_mcmc_settings_are_a_user_error() -> None:
    with pytest.raises(UserError, match="mcmc_samples must be at least 1"):
        BayesOpt(branin_data()[2], BOSettings(model=ModelKind.mcmc, mcmc_samples=0))


def test_a_sweep_with_a_choice_parameter_runs_with_model_mcmc(
    hydra_sweep_runner: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sweeper in-process on the Branin app, x a categorical column: the MCMC model, and the
    start line about the exploration phase."""
    caplog.set_level(logging.INFO, logger="nasrun.bo.engine")
    runner = hydra_sweep_runner(
        calling_file=str(APP),
        calling_module=None,
        task_function=branin_task,
        config_path=".",
        config_name="branin",
        overrides=prepare_sweeper_args(
            [
                "hydra.sweeper.params.x=choice(-3.14159, 3.14159, 9.42478)",
                "hydra.sweeper.model=mcmc",
                "hydra.sweeper.mcmc_samples=3",
                "hydra.sweeper.mcmc_burn_in=1",
                # 3 Sobol trials, a Thompson draw (trial 3 < 0.7 * 5), then the averaged acquisition
                "hydra.sweeper.n_trials=5",
            ]
        ),
        temp_dir=tmp_path,
    )
    runner.__enter__()  # no __exit__: it would delete the sweep folder read below
    said = [r.getMessage() for r in caplog.records if "Thompson sampling instead" in r.getMessage()]
    assert len(said) == 1 and "choice() parameters" in said[0], said
    with sqlite3.connect(tmp_path / "trials.sqlite") as db:
        rows = db.execute("SELECT state, params FROM trials ORDER BY id").fetchall()
    assert [state for state, _ in rows] == ["COMPLETED"] * 5
    assert all(json.loads(params)["x"] in (-3.14159, 3.14159, 9.42478) for _, params in rows), rows
