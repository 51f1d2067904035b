"""DrNAS: the Dirichlet architecture distribution, its KL term and its derivation (smoke runs: tests/test_smoke_runs.py)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.distributions import Dirichlet, kl_divergence

from nasrun import UserError
from nasrun.search.oneshot.drnas import (
    DirichletKL,
    DirichletSampler,
    ProgressiveSchedule,
    concentration,
    dirichlet_kl,
    prune,
)
from nasrun.search.oneshot.edges import DenseEdge, PartialChannelEdge
from nasrun.search.oneshot.plugin import EpochStart
from nasrun.search.oneshot.widen import Widening
from nasrun.space.ops import DilConv


def test_samples_have_the_dirichlet_moments_of_elu_plus_one() -> None:
    """Empirical mean and variance of many draws match beta_i / beta_0 and
    beta_i (beta_0 - beta_i) / (beta_0^2 (beta_0 + 1)) for beta = elu(alpha) + 1."""
    torch.manual_seed(0)
    alpha = torch.tensor([-0.5, 0.0, 0.7, 2.0])
    beta = F.elu(alpha) + 1.0
    b0 = beta.sum()
    draws = DirichletSampler().sample({"normal": alpha.expand(40000, 4)})["normal"]
    assert torch.allclose(draws.sum(-1), torch.ones(40000), atol=1e-5)  # on the simplex
    mean, var = draws.mean(0), draws.var(0)
    assert torch.allclose(mean, beta / b0, atol=4e-3), (mean, beta / b0)
    want_var = beta * (b0 - beta) / (b0**2 * (b0 + 1))
    assert torch.allclose(var, want_var, rtol=0.05), (var, want_var)


def test_the_gradient_reaches_the_alphas_through_the_draw() -> None:
    """rsample is pathwise: averaged over many draws, d E[c . w] / d alpha is the gradient of
    c . mean(alpha); a non-reparameterised draw would give no gradient at all."""
    torch.manual_seed(1)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0])
    alpha = torch.tensor([0.3, -0.4, 0.0, 1.2], requires_grad=True)
    w = DirichletSampler().sample({"t": alpha.expand(40000, 4)})["t"]
    (w @ c).mean().backward()
    mc = alpha.grad.clone()
    alpha.grad = None
    mean = concentration(alpha) / concentration(alpha).sum()
    (mean @ c).backward()
    assert mc.abs().min() > 0
    assert torch.allclose(mc, alpha.grad, atol=0.03, rtol=0.05), (mc, alpha.grad)


def test_evaluation_weights_are_the_mean_and_derivation_weights_the_softmax() -> None:
    alpha = torch.tensor([[0.2, -1.0, 1.5], [0.0, 0.0, 0.0]])
    s = DirichletSampler()
    beta = F.elu(alpha) + 1
    assert torch.allclose(s.mode({"n": alpha})["n"], beta / beta.sum(-1, keepdim=True))
    assert torch.allclose(s.expected({"n": alpha})["n"], F.softmax(alpha, -1))
    s.set_epoch(3, 10)
    assert s.tau == 1.0


def test_the_kl_term_is_torchs_kl_and_zero_at_the_anchor() -> None:
    torch.manual_seed(2)
    alphas = {"normal": torch.randn(14, 7), "reduce": torch.randn(14, 7)}
    for anchor in (1.0, 2.5):
        want = sum(
            kl_divergence(Dirichlet(F.elu(a) + 1), Dirichlet(torch.full((14, 7), anchor))).sum()
            for a in alphas.values()
        )
        assert torch.allclose(dirichlet_kl(alphas, anchor), want)
    # elu(alpha) + 1 equals the anchor: alpha = 0 for anchor 1, alpha = 1.5 for anchor 2.5
    assert dirichlet_kl({"n": torch.zeros(6, 5)}, 1.0).abs() < 1e-6
    assert dirichlet_kl({"n": torch.full((6, 5), 1.5)}, 2.5).abs() < 1e-6
    assert dirichlet_kl({"n": torch.full((6, 5), 0.1)}, 1.0) > 0


def test_the_plugin_penalty_is_scaled_and_differentiable() -> None:
    alpha = torch.nn.Parameter(torch.randn(6, 5))
    net = SimpleNamespace(arch=SimpleNamespace(alphas=torch.nn.ParameterDict({"normal": alpha})))
    pen = DirichletKL(scale=0.01).arch_penalty(net)  # type: ignore[arg-type]
    assert pen is not None and torch.allclose(pen, 0.01 * dirichlet_kl({"n": alpha.detach()}, 1.0))
    pen.backward()
    assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    assert DirichletKL(scale=0.0).arch_penalty(net) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "kwargs"), [("scale", {"scale": -1.0}), ("anchor", {"anchor": 0.0})])
def test_bad_kl_settings_name_their_key(key: str, kwargs: dict[str, float]) -> None:
    with pytest.raises(UserError, match=f"search.plugins.kl.{key}="):
        DirichletKL(**kwargs)


def test_derivation_from_known_concentrations_gives_the_expected_cell(compose_cfg) -> None:
    """On nb201 each edge keeps the op of its largest alpha (largest concentration)."""
    cfg = compose_cfg("experiment=smoke", "search=drnas", "space=nb201")
    search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
    assert isinstance(search.sampler, DirichletSampler)
    net = search.build_network(10, 1)
    names = net.edge_ops["normal"]
    alpha = net.arch.alphas["normal"]
    want = []
    with torch.no_grad():
        alpha.zero_()
        for e, ops in enumerate(names):
            k = (2 * e + 1) % len(ops)
            alpha[e, k] = 0.5 + 0.1 * e  # concentration 1.5 + 0.1 e against 1 for the others
            want.append(ops[k])
    assert torch.allclose(net.op_weights()["normal"], F.softmax(alpha, -1))
    assert [op for op, _ in net.genotype().normal] == want


# -- the progressive schedule: pruning, masking, widening -----------------------------------------


def test_prune_keeps_each_edges_largest_alphas_among_those_still_kept() -> None:
    alpha = torch.tensor([[0.5, 2.0, -1.0, 1.0], [3.0, 0.125, 0.25, 0.375]])
    mask = prune(alpha, 2, None)
    assert mask.tolist() == [[False, True, False, True], [True, False, False, True]]
    assert alpha.tolist() == [[0.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.0, 0.375]]  # kept values stay
    # A second pruning never brings back an op pruned before, even with the largest alpha.
    alpha[0, 0] = 9.0
    mask = prune(alpha, 1, mask)
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False]]


def test_masked_weights_are_zero_on_pruned_ops_and_renormalised() -> None:
    torch.manual_seed(0)
    alpha = {"n": torch.randn(3, 5)}
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    s = DirichletSampler()
    s.mask = {"n": mask}
    for weights in (s.sample(alpha)["n"], s.mode(alpha)["n"], s.expected(alpha)["n"]):
        assert (weights[~mask] == 0).all()
        assert torch.allclose(weights.sum(-1), torch.ones(3))
    # softmax over all ops, then the kept ones renormalised: the reference's order
    soft = F.softmax(alpha["n"][0], -1)[:2]
    assert torch.allclose(s.expected(alpha)["n"][0, :2], soft / soft.sum())


@pytest.mark.parametrize(
    "name", ["sep_conv_3x3", "dil_conv_5x5", "nor_conv_3x3", "avg_pool_3x3", "skip_connect"]
)
@pytest.mark.parametrize("stride", [1, 2])
def test_a_widened_op_copies_its_own_channels_and_runs_at_the_new_width(name: str, stride: int) -> None:
    torch.manual_seed(0)
    old, new = 4, 6
    edge = DenseEdge(old, stride, [name])
    before = {k: v.clone() for k, v in edge.state_dict().items()}
    params = list(edge.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9) if params else None
    if opt is not None:
        edge(torch.randn(2, old, 8, 8), torch.ones(1)).sum().backward()
        opt.step()
        before = {k: v.clone() for k, v in edge.state_dict().items()}
        momentum = {id(p): opt.state[p]["momentum_buffer"].clone() for p in params}
    Widening(opt, torch.Generator().manual_seed(1)).module(edge.ops[0], new)
    for key, value in edge.state_dict().items():
        was = before[key]
        if was.dim() == 0:
            continue
        # The old channels are kept as they were; every new slice is a copy of an old one.
        assert value[tuple(slice(0, n) for n in was.shape)].equal(was), key
        for a, b in zip(value.shape, was.shape):
            assert a in (b, new if b == old else new // 2 if b == old // 2 else a), (key, value.shape)
    if opt is not None:
        for p in params:  # the same parameters, their momentum grown alongside
            assert opt.state[p]["momentum_buffer"].shape == p.shape
            m0 = momentum[id(p)]
            assert opt.state[p]["momentum_buffer"][tuple(slice(0, n) for n in m0.shape)].equal(m0)
        assert all(any(p is q for q in opt.param_groups[0]["params"]) for p in edge.parameters())
    out = edge(torch.randn(2, new, 8, 8), torch.ones(1))
    assert out.shape == (2, new, 8 // stride, 8 // stride)


def test_widening_a_dilconv_copies_matching_channels_down_the_chain() -> None:
    """The pointwise convolution's new input columns read the very channels the depthwise copied,
    and the BatchNorm copies the statistics of the channels the pointwise copied."""
    torch.manual_seed(0)
    op = DilConv(4, 4, 3, 1, 2, 2, affine=True)
    op[3].running_mean.copy_(torch.randn(4))
    dw, pw, bn = op[1].weight.clone(), op[2].weight.clone(), op[3].running_mean.clone()
    Widening(None, torch.Generator().manual_seed(3)).module(op, 7)
    copied = [int((dw == row).all(dim=(1, 2, 3)).nonzero()[0]) for row in op[1].weight[4:]]
    assert op[2].weight[:4, 4:].equal(pw[:, copied])
    out_copied = [int((pw == row[:4]).all(dim=(1, 2, 3)).nonzero()[0]) for row in op[2].weight[4:]]
    assert op[3].running_mean[4:].equal(bn[out_copied])
    assert (op[1].groups, op[1].in_channels, op[2].in_channels, op[3].num_features) == (7, 7, 7, 7)


def test_the_schedule_prunes_then_widens_between_its_stages(compose_cfg) -> None:
    cfg = compose_cfg("experiment=smoke", "search=drnas_progressive")
    search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
    plugin = search.plugins["progressive"]
    stepper = search.make_stepper(10, 1, instantiate(cfg.trainer, device="cpu"))
    network = stepper.module
    edges = [m for m in network.modules() if isinstance(m, PartialChannelEdge)]
    assert edges and all(e.k == 2 for e in edges)
    with torch.no_grad():
        for a in network.arch.alphas.values():
            a.copy_(torch.arange(a.shape[1], dtype=a.dtype).expand_as(a))  # the last ops strongest
    plugin.start_epoch(stepper, EpochStart(epoch=0, epochs=2, stage=0, stage_epoch=0, arch_steps=True))
    assert plugin.stage == 0 and all(e.k == 2 for e in edges)
    plugin.start_epoch(stepper, EpochStart(epoch=1, epochs=2, stage=0, stage_epoch=1, arch_steps=True))
    assert plugin.stage == 1
    assert all(e.k == 1 and e.part == e.mixed.C for e in edges)
    n_ops = len(network.topology.ops)
    for t, mask in search.sampler.mask.items():
        assert mask.sum(-1).tolist() == [3] * mask.shape[0]
        assert mask[:, n_ops - 3 :].all()  # the three strongest
        assert (network.arch.alphas[t][~mask] == 0).all()
    network.train()
    assert network(torch.randn(2, 1, 8, 8)).shape == (2, 10)  # the widened supernet runs
    weights = network.op_weights()
    assert all((weights[t][~m] == 0).all() for t, m in search.sampler.mask.items())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.epochs=3"], "stage_epochs=[1, 1]: must add up to search.epochs=3"),
        (["search.plugins.progressive.k=[4,1]"], "must equal search.edge.k=2"),
        (["search.plugins.progressive.ops_kept=[null,9]"], "an edge has only 8 candidate ops"),
        (["search.sampler=null"], "needs search.sampler"),
    ],
)
def test_bad_schedules_name_their_key(overrides: list[str], message: str, compose_cfg) -> None:
    cfg = compose_cfg("experiment=smoke", "search=drnas_progressive", *overrides)
    with pytest.raises(UserError, match=re.escape(message)):
        search = instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
        search.make_stepper(10, 1, instantiate(cfg.trainer, device="cpu"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": [2, 3]}, "progressive.k=[2, 3]: partial-channel ratios must be >= 1 and must not grow"),
        ({"ops_kept": [None, 3, 4]}, "need one entry per stage (got 2, 2, 3)"),
        ({"ops_kept": [8, 3]}, "progressive.ops_kept[0]=8: the first stage searches every op"),
        ({"stage_epochs": [0, 2]}, "progressive.stage_epochs=[0, 2]: every stage needs an epoch"),
    ],
)
def test_bad_schedule_values_name_their_key(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        ProgressiveSchedule(**{"stage_epochs": [1, 1], "k": [2, 1], "ops_kept": [None, 3], **kwargs})


def test_the_darts_space_schedule_needs_channels_divisible_by_both_ratios(compose_cfg) -> None:
    cfg = compose_cfg("search=drnas_progressive")  # space=cifar_cell's 16 channels
    with pytest.raises(UserError, match=re.escape("need space.channels divisible by 12, not 16")):
        instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)
    cfg = compose_cfg("search=drnas_progressive", "space.channels=36")
    instantiate(cfg.search)(space=instantiate(cfg.space), seed=0)  # the reference's width: accepted
