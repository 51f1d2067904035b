"""SNAS: the resource term from the op registry, and single-level steps on the training batch."""

from __future__ import annotations

import math

import pytest
import torch

from nasrun import UserError
from nasrun.search.oneshot import OneShotSearch
from nasrun.search.samplers import GumbelSoftmax
from nasrun.search.snas import SingleLevel, op_cost, op_costs
from nasrun.space.cifar_cell import CifarCellSpace
from tests.search.sampling_helpers import batch, stepper_of, tiny_space

OPS = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5"]


@pytest.mark.parametrize("cost", ["params", "flops"])
def test_op_costs_come_from_building_the_ops_and_grow_with_heavier_ops(cost: str) -> None:
    c = {name: op_cost(name, cost) for name in OPS}
    assert c["none"] == c["max_pool_3x3"] == c["skip_connect"] == 0.0
    assert 0 < c["sep_conv_3x3"] < c["sep_conv_5x5"]
    assert op_cost("nor_conv_1x1", cost) < op_cost("nor_conv_3x3", cost)
    # Each edge's own candidates (pruned edges differ), scaled by the heaviest op: at most 1.
    table = op_costs({"normal": [OPS, OPS[::-1]]}, cost)
    expected = torch.tensor([0, 0, 0, c["sep_conv_3x3"] / c["sep_conv_5x5"], 1.0])
    torch.testing.assert_close(table["normal"][0], expected)
    assert table["normal"][1].tolist() == table["normal"][0].flip(0).tolist()


def _snas(cost_weight: float, seed: int = 0) -> OneShotSearch:
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=OPS)
    return OneShotSearch(
        space, seed=seed, sampler=GumbelSoftmax(), update=SingleLevel(cost_weight=cost_weight)
    )


def test_the_expected_cost_grows_as_the_distribution_moves_to_heavier_ops() -> None:
    stepper = stepper_of(_snas(1.0))
    costs = []
    for heavy in (2, 3, 4):  # all weight on skip_connect, sep_conv_3x3, sep_conv_5x5
        with torch.no_grad():
            for a in stepper.alphas:
                a.zero_()
                a[:, heavy] = 20.0
        costs.append(float(stepper.expected_cost().detach()))
    assert costs[0] < 1e-6 < costs[1] < costs[2] <= 1.0


def test_a_single_level_step_learns_from_the_training_batch_only_and_the_cost_pulls_to_cheap_ops() -> None:
    (xt, yt) = batch(seed=0)
    nan = torch.full_like(xt, float("nan"))  # the validation batch: never read
    after = {}
    for eta in (0.0, 50.0):
        stepper = stepper_of(_snas(eta))
        w0 = [p.detach().clone() for p in stepper.weights]
        a0 = [a.detach().clone() for a in stepper.alphas]
        loss, _ = stepper.step(xt, yt, nan, yt)
        # The NaN batch was not used: anything computed from it would have turned alphas or weights NaN.
        assert math.isfinite(loss)
        assert all(bool(torch.isfinite(p).all()) for p in [*stepper.alphas, *stepper.weights])
        assert any(not torch.equal(a, b.detach()) for a, b in zip(a0, stepper.alphas, strict=True))
        assert any(not torch.equal(a, b.detach()) for a, b in zip(w0, stepper.weights, strict=True))
        after[eta] = float(stepper.expected_cost().detach())
    assert after[50.0] < after[0.0]  # the resource term pushes the distribution to cheaper ops


def test_warmup_epochs_freeze_the_architecture() -> None:
    stepper = stepper_of(_snas(1.0))
    a0 = [a.detach().clone() for a in stepper.alphas]
    stepper.step(*batch(seed=0), *batch(seed=1), arch_step=False)
    assert all(torch.equal(a, b.detach()) for a, b in zip(a0, stepper.alphas, strict=True))


def test_bad_snas_settings_are_one_line() -> None:
    with pytest.raises(UserError, match="search.update.cost='memory': must be one of params, flops"):
        SingleLevel(cost="memory")
    with pytest.raises(UserError, match="search.update.cost_weight=-1.0: must be >= 0"):
        SingleLevel(cost_weight=-1.0)
    with pytest.raises(UserError, match="search.order=2: search=snas takes single-level steps"):
        OneShotSearch(tiny_space("nb201"), order=2, sampler=GumbelSoftmax(), update=SingleLevel())
