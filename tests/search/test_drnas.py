"""DrNAS: the Dirichlet architecture distribution, its KL term and its derivation (smoke runs: tests/test_smoke_runs.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.distributions import Dirichlet, kl_divergence

from nasrun import UserError
from nasrun.search.oneshot.drnas import DirichletKL, DirichletSampler, concentration, dirichlet_kl


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
