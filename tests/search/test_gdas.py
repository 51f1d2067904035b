"""GDAS: one-hot Gumbel-max samples with a straight-through gradient, the temperature schedule,
and a step that runs only the sampled op of each edge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from nasrun import UserError
from nasrun.search.oneshot import samplers
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.sampled_edges import SampledEdge
from nasrun.search.oneshot.samplers import GumbelMaxST, GumbelSoftmax, annealed
from tests.search.sampling_helpers import batch, count_op_calls, stepper_of, tiny_ctx, tiny_space


def test_gumbel_max_samples_are_one_hot_and_the_gradient_reaches_every_logit() -> None:
    torch.manual_seed(0)
    alpha = torch.randn(6, 5, requires_grad=True)
    sampler = GumbelMaxST()
    seen = set()
    for _ in range(50):
        w = sampler.sample({"normal": alpha})["normal"]
        hard = w.detach()
        assert ((hard == 0) | ((hard - 1).abs() < 1e-6)).all() and torch.allclose(hard.sum(1), torch.ones(6))
        seen.update(hard.argmax(1).tolist())
    assert seen == set(range(5))  # a sample, not the argmax: every op comes up
    # Straight-through: a loss on the one-hot weights sends a gradient to every logit of the edge.
    w = sampler.sample({"normal": alpha})["normal"]
    (w * torch.arange(5.0)).sum().backward()
    assert alpha.grad is not None and (alpha.grad != 0).all()
    # Evaluation mode takes no noise: each edge's most likely op.
    mode = sampler.mode({"normal": alpha.detach()})["normal"]
    assert torch.equal(mode.argmax(1), alpha.detach().argmax(1)) and mode.sum() == 6


def test_gumbel_softmax_is_a_relaxed_sample_that_sharpens_as_the_temperature_falls() -> None:
    torch.manual_seed(0)
    alpha = torch.zeros(200, 5)
    sampler = GumbelSoftmax(tau_start=5.0, tau_end=0.05)
    hot = sampler.sample({"t": alpha})["t"]
    sampler.set_epoch(9, 10)
    cold = sampler.sample({"t": alpha})["t"]
    assert torch.allclose(hot.sum(1), torch.ones(200)) and (hot > 0).all()
    assert cold.max(1).values.mean() > 0.95 > hot.max(1).values.mean()


@pytest.mark.parametrize("schedule", ["linear", "exponential"])
def test_temperature_schedule_hits_its_end_points(schedule: str) -> None:
    taus = [annealed(10.0, 0.1, e, 5, schedule) for e in range(5)]
    assert taus[0] == 10.0 and taus[-1] == 0.1
    assert all(a > b for a, b in zip(taus, taus[1:], strict=False))
    middle = 5.05 if schedule == "linear" else 1.0  # the mean of the values, or of their logarithms
    assert math.isclose(taus[2], middle)
    assert annealed(10.0, 0.1, 0, 1, schedule) == 10.0  # a one-epoch search keeps the start


def test_the_search_anneals_by_epoch_and_records_the_temperature(tmp_path: Path) -> None:
    space = tiny_space("nb201")
    search = OneShotSearch(space, seed=1, epochs=3, batch_size=256, edge=SampledEdge, sampler=GumbelMaxST())
    search.run(tiny_ctx(tmp_path, space))
    history = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    assert [h["tau"] for h in history] == [10.0, 5.05, 0.1]


def test_temperatures_that_increase_are_one_line() -> None:
    with pytest.raises(
        UserError, match=r"search.sampler.tau_end=10.0: must not exceed search.sampler.tau_start=1.0"
    ):
        GumbelMaxST(tau_start=1.0, tau_end=10.0)
    with pytest.raises(UserError, match="temperatures must be > 0"):
        GumbelSoftmax(tau_start=1.0, tau_end=0.0)
    with pytest.raises(UserError, match="search.sampler.schedule='cosine'"):
        GumbelMaxST(schedule="cosine")


@pytest.mark.parametrize("space_name", ["nb201", "cifar_cell"])
def test_a_gdas_step_runs_only_the_sampled_op_of_each_edge(space_name: str) -> None:
    search = OneShotSearch(tiny_space(space_name), edge=SampledEdge, sampler=GumbelMaxST())
    stepper = stepper_of(search)
    alphas = [a.detach().clone() for a in stepper.alphas]
    (xt, yt), (xv, yv) = batch(seed=0), batch(seed=1)
    with count_op_calls(stepper.module) as (edge_calls, op_calls, _):
        stepper.step(xt, yt, xv, yv)
    # Two forward passes (architecture step, weight step): each edge runs at most one op in each.
    assert set(edge_calls.values()) == {2}
    assert all(op_calls[e] <= edge_calls[e] for e in edge_calls)
    assert sum(op_calls.values()) > 0
    # The architecture step moved the alphas through the straight-through gradient.
    assert any(not torch.equal(a, b.detach()) for a, b in zip(alphas, stepper.alphas, strict=True))


def test_with_softmax_weights_the_same_edge_runs_every_op() -> None:
    """The counting above is not vacuous: DARTS's dense weights make a ``SampledEdge`` run every op."""
    search = OneShotSearch(tiny_space("nb201"), edge=SampledEdge)
    stepper = stepper_of(search)
    with count_op_calls(stepper.module) as (edge_calls, op_calls, _):
        stepper.step(*batch(seed=0), *batch(seed=1))
    assert all(op_calls[e] == 4 * edge_calls[e] for e in edge_calls)  # the 5 ops but `none`


def _reference_edge(
    alpha: torch.Tensor, gumbel: torch.Tensor, tau: float, ops: list, x: torch.Tensor, unsampled: bool
) -> torch.Tensor:
    """AutoDL's GDAS on one edge, written out: the sample (search_model_gdas.py:116-121), then
    ``forward_gdas`` (search_cells.py:72-86, every op's weight added) or ``forward_gdas_v1`` (89-100)."""
    probs = F.softmax((F.log_softmax(alpha, dim=-1) + gumbel) / tau, dim=-1)
    index = int(probs.argmax())
    hardwts = F.one_hot(torch.tensor(index), probs.numel()).float() - probs.detach() + probs
    if not unsampled:
        return hardwts[index] * ops[index](x)
    return sum(hardwts[k] * op(x) if k == index else hardwts[k] for k, op in enumerate(ops))  # type: ignore[return-value]


@pytest.mark.parametrize("sampled", [3, 0])  # nor_conv_3x3; `none`
@pytest.mark.parametrize("unsampled", [True, False])
def test_the_gdas_edge_and_its_arch_gradient_are_the_references(
    monkeypatch: pytest.MonkeyPatch, unsampled: bool, sampled: int
) -> None:
    """For a fixed Gumbel draw, a NAS-Bench-201 edge's output and d(loss)/d(alpha) equal AutoDL's formula."""
    torch.manual_seed(0)
    ops = list(tiny_space("nb201").topology().ops)
    edge = SampledEdge(3, 1, ops, unsampled_weights=unsampled)
    x, r = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    alpha = (1e-3 * torch.randn(1, len(ops))).requires_grad_()
    gumbel = torch.randn(1, len(ops)) * 0.1
    gumbel[0, sampled] += 5.0  # the op this draw samples
    monkeypatch.setattr(samplers, "gumbel_noise", lambda like: gumbel.to(like))
    sampler = GumbelMaxST()
    sampler.set_epoch(1, 3)  # tau 5.05
    weights = sampler.sample({"normal": alpha})["normal"][0]
    assert int(weights.detach().argmax()) == sampled
    out = edge(x, weights)
    # `+ 0 * alpha.sum()`: a sampled `none` alone leaves the output without a graph (zero gradient).
    ((out * r).sum() + 0 * alpha.sum()).backward()
    grads = {}
    for form in (True, False):
        a = alpha.detach().clone().requires_grad_()
        ref = _reference_edge(a[0], gumbel[0], sampler.tau, list(edge.ops), x, form)
        ((ref * r).sum() + 0 * a.sum()).backward()
        grads[form] = a.grad
        if form == unsampled:
            assert torch.allclose(out, ref)
    assert alpha.grad is not None and torch.allclose(alpha.grad, grads[unsampled], rtol=1e-5, atol=1e-8)
    assert not torch.allclose(grads[True], grads[False], rtol=1e-3)  # the two forms differ


def test_on_nb201_gdas_defaults_to_the_benchmarks_form(compose_cfg) -> None:
    """search=gdas adds the unsampled weights on space=nb201 (AutoDL's NAS-Bench-201 GDAS), not on
    the DARTS cell space (its DARTS-space cell), and a key switches it off."""
    for space, want in (("nb201", True), ("cifar_cell", False), ("nb201 off", False)):
        name, *off = space.split()
        extra = ["search.edge.unsampled_weights=false"] if off else []
        cfg = compose_cfg("experiment=smoke", "search=gdas", f"space={name}", *extra)
        search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
        edges = [m for m in search.build_network(10, 1).modules() if isinstance(m, SampledEdge)]
        assert edges and all(e.unsampled_weights is want for e in edges), space


def test_second_order_gdas_is_refused_in_one_line(cli) -> None:
    proc = cli("experiment=smoke", "search=gdas", "search.order=2", "hydra.run.dir=run")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("nasrun: error: search.order=2: ") and "Gumbel" in lines[0], lines[0]
