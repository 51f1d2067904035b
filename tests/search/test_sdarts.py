"""SDARTS (Chen & Hsieh, ICML 2020) against the paper's equations and the reference's
(xiangning-chen/SmoothDARTS, sota/cnn/train_search.py and attacker/perturb.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from nasrun import UserError
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.plugin import EpochStart
from nasrun.search.oneshot.sdarts import AdversarialPGD, RandomSmoothing, epsilon_at, simplex_clip
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.space.nb201 import NB201Space
from nasrun.train.trainer import Trainer


def _tiny_stepper(space=None):
    if space is None:
        space = CifarCellSpace(
            layers=3, channels=4, nodes=2, ops=["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
        )
    search = OneShotSearch(space, seed=0, order=1, epochs=4, lr=0.1, weight_decay=3e-4)
    stepper = search.make_stepper(num_classes=3, in_channels=2, trainer=Trainer(device="cpu"))
    stepper.module.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    return stepper, x, y


def _start(plugin, epoch: int, epochs: int = 50) -> None:
    plugin.start_epoch(None, EpochStart(epoch, epochs, 0, epoch, True))


def _loss(stepper, offsets, x, y) -> float:
    net = stepper.module
    net.eval()
    try:
        with torch.no_grad(), net.perturbed(offsets):
            return float(stepper.loss(x, y)[0])
    finally:
        net.train()


def test_epsilon_schedule_is_the_reference_linear_ramp() -> None:
    # train_search.py: epsilon_alpha = 0.03 + (args.epsilon_alpha - 0.03) * epoch / args.epochs
    plugin = RandomSmoothing()
    for epoch, expected in [(0, 0.03), (25, 0.165), (49, 0.03 + 0.27 * 49 / 50)]:
        _start(plugin, epoch)
        assert plugin.epsilon == pytest.approx(expected)
    assert epsilon_at(10, 10, 0.5, 0.1) == pytest.approx(0.5)


def test_random_noise_is_uniform_on_the_ball_and_seeded_per_epoch() -> None:
    plugin = RandomSmoothing()
    _start(plugin, 3)
    eps = plugin.epsilon
    noise = plugin.uniform(torch.zeros(200_000, dtype=torch.float64), eps)
    assert float(noise.abs().max()) <= eps
    # U[-eps, eps]: mean 0, variance eps^2 / 3.
    assert float(noise.mean()) == pytest.approx(0.0, abs=3e-4)
    assert float(noise.var()) == pytest.approx(eps**2 / 3, rel=1e-2)
    again = RandomSmoothing()
    _start(again, 3)
    assert torch.equal(again.uniform(torch.zeros(5, dtype=torch.float64), eps), noise[:5])
    _start(again, 4)
    assert not torch.equal(again.uniform(torch.zeros(5, dtype=torch.float64), eps), noise[:5])


def test_random_smoothing_offsets_give_distributions_near_the_softmax() -> None:
    stepper, x, y = _tiny_stepper()
    plugin = RandomSmoothing()
    _start(plugin, 10)
    clean = stepper.module.op_weights()
    offsets = plugin.offsets(stepper, x, y)
    for t, w in clean.items():
        point = w.detach() + offsets[t]
        assert torch.allclose(point.sum(-1), torch.ones_like(point[:, 0]))
        assert float(point.min()) >= 0 and float(offsets[t].abs().max()) > 0


def test_simplex_clip_projects_rows_like_the_reference() -> None:
    # model_search.py clip(): clamp to [0, 1], an all-zero row gets 1 at its argmax, rows / sum.
    rows = torch.tensor([[0.5, -0.2, 0.9], [-0.1, -0.3, -0.05]])
    assert torch.allclose(simplex_clip(rows), torch.tensor([[0.5 / 1.4, 0.0, 0.9 / 1.4], [0.0, 0.0, 1.0]]))


def test_pgd_raises_the_training_loss_within_the_linf_ball() -> None:
    stepper, x, y = _tiny_stepper()
    plugin = AdversarialPGD(epsilon=0.3, epsilon_start=0.1)
    _start(plugin, 0)
    eps = plugin.epsilon
    clean = {t: w.detach() for t, w in stepper.module.op_weights().items()}
    offsets = plugin.offsets(stepper, x, y)
    assert stepper.module.training  # the attack's evaluation mode is undone
    zero = {t: torch.zeros_like(w) for t, w in clean.items()}
    assert _loss(stepper, offsets, x, y) > _loss(stepper, zero, x, y)
    for t, c in clean.items():
        p = c + offsets[t]
        assert torch.allclose(p.sum(-1), torch.ones_like(p[:, 0]))
        # p is a row-rescaling of c + d with |d| <= eps (no clamping at these sizes): some scale s
        # per row puts s * p inside the ball around c.
        lower = ((c - eps) / p).max(-1).values
        upper = ((c + eps) / p).min(-1).values
        assert bool((lower <= upper + 1e-12).all())


def test_the_perturbation_covers_the_weight_step_only() -> None:
    stepper, x, y = _tiny_stepper()
    net = stepper.module
    plugin = RandomSmoothing(epsilon=0.3, epsilon_start=0.3)
    _start(plugin, 0)
    with plugin.around_weight_step(stepper, x, y):
        inside = {t: w.detach().clone() for t, w in net.forward_weights().items()}
        stepper.weight_step(x, y)
    clean = net.op_weights()
    assert net.offsets is None
    for t, w in net.forward_weights().items():
        assert torch.equal(w, clean[t])
        assert not torch.allclose(inside[t], clean[t])


def test_sdarts_refuses_a_sampler() -> None:
    settings = SimpleNamespace(sampler=object(), seed=0)
    with pytest.raises(UserError, match="search.sampler"):
        RandomSmoothing().check(settings)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="epsilon"):
        AdversarialPGD(epsilon=0.1, epsilon_start=0.2)


@pytest.mark.parametrize("plugin", [RandomSmoothing(), AdversarialPGD(steps=2)], ids=["rs", "adv"])
def test_a_perturbed_step_on_nb201_moves_the_weights_and_keeps_the_alphas(plugin) -> None:
    stepper, x, y = _tiny_stepper(NB201Space(channels=4, cells=1))
    _start(plugin, 5)
    before = [w.detach().clone() for w in stepper.weights]
    alphas = [a.detach().clone() for a in stepper.alphas]
    with plugin.around_weight_step(stepper, x, y):
        loss, _ = stepper.weight_step(x, y)
    assert loss == loss and any(not torch.equal(b, w) for b, w in zip(before, stepper.weights))
    assert all(torch.equal(a, b) for a, b in zip(alphas, stepper.alphas))
    assert stepper.module.offsets is None


def test_state_dict_resumes_the_noise_within_an_epoch() -> None:
    plugin = RandomSmoothing()
    plugin.check(SimpleNamespace(sampler=None, seed=7))  # type: ignore[arg-type]
    _start(plugin, 2)
    plugin.uniform(torch.zeros(3), 0.1)
    state = plugin.state_dict()
    expected = plugin.uniform(torch.zeros(3), 0.1)
    resumed = RandomSmoothing()
    resumed.check(SimpleNamespace(sampler=None, seed=7))  # type: ignore[arg-type]
    resumed.load_state_dict(state)
    assert torch.equal(resumed.uniform(torch.zeros(3), 0.1), expected)
    assert resumed.epsilon == plugin.epsilon
