from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from nasrun.data.synthetic import synthetic
from nasrun.run_folder import read_history
from nasrun.search.base import SearchContext
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.space.cifar_cell import CifarCellSpace
from nasrun.train.runtime import NonFiniteLossError
from nasrun.train.trainer import Trainer


def _tiny_stepper(order: int, unrolled_eps: float = 0.01):
    space = CifarCellSpace(
        layers=3, channels=4, nodes=2, ops=["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    )
    search = OneShotSearch(
        space, seed=0, order=order, epochs=4, lr=0.1, weight_decay=3e-4, unrolled_eps=unrolled_eps
    )
    stepper = search.make_stepper(num_classes=3, in_channels=2, trainer=Trainer(device="cpu"))
    stepper.module.double()
    return stepper


def test_second_order_gradient_matches_autograd_through_the_unrolled_step() -> None:
    torch.manual_seed(0)
    # The paper's step (0.01) crosses ReLU/max-pool kinks of a random tiny net; the estimator itself
    # is checked with a step small enough to stay on one linear piece, in float64.
    stepper = _tiny_stepper(order=2, unrolled_eps=1e-5)
    g = torch.Generator().manual_seed(1)
    xt, xv = (
        torch.randn(8, 2, 8, 8, generator=g, dtype=torch.float64),
        torch.randn(8, 2, 8, 8, generator=g, dtype=torch.float64),
    )
    yt, yv = torch.randint(0, 3, (8,), generator=g), torch.randint(0, 3, (8,), generator=g)
    # One ordinary step first, so the momentum buffers are non-zero and enter the unrolled step.
    stepper.step(xt, yt, xv, yv)
    fd = stepper.unrolled_arch_grad(xt, yt, xv, yv)

    # Direct: L_val(w - xi * (m * buf + grad_w L_train(w) + wd * w), alpha), differentiated exactly.
    module = stepper.module
    names = stepper.weight_names
    weights = [dict(module.named_parameters())[n] for n in names]
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    xi = stepper.w_opt.param_groups[0]["lr"]

    def loss(ws, x, y):
        return F.cross_entropy(functional_call(module, {**dict(zip(names, ws)), **buffers}, (x,)), y)

    g_train = torch.autograd.grad(loss(weights, xt, yt), weights, create_graph=True)
    unrolled = [
        w
        - xi
        * (
            gw
            + stepper.weight_decay * w.detach()
            + stepper.momentum * stepper.w_opt.state[w]["momentum_buffer"]
        )
        for w, gw in zip(weights, g_train)
    ]
    exact = torch.autograd.grad(loss(unrolled, xv, yv), stepper.alphas)
    for a, b in zip(fd, exact):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-7), (a - b).abs().max()
    # The second-order term matters: the gradient at the unrolled weights alone differs.
    detached = [u.detach() for u in unrolled]
    first = torch.autograd.grad(loss(detached, xv, yv), stepper.alphas)
    assert not torch.allclose(first[0], exact[0], rtol=1e-2)


def test_the_unrolled_gradient_leaves_the_batchnorm_statistics_as_they_were() -> None:
    """Its four extra training passes record running statistics; they are restored, even on an error."""
    stepper = _tiny_stepper(order=2)
    x, y = torch.randn(8, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (8,))
    stepper.step(x, y, x, y)
    before = [b.clone() for b in stepper.module.buffers()]
    stepper.unrolled_arch_grad(x, y, 2 * x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, stepper.module.buffers(), strict=True))
    with pytest.raises(RuntimeError):
        stepper.unrolled_arch_grad(x, y, x[:, :1], y)  # a wrong input shape fails mid-way
    assert all(torch.equal(a, b) for a, b in zip(before, stepper.module.buffers(), strict=True))
    stepper.weight_step(x, y)  # an ordinary step does record them
    assert not all(torch.equal(a, b) for a, b in zip(before, stepper.module.buffers(), strict=True))


def test_first_order_step_moves_alphas_and_weights() -> None:
    torch.manual_seed(0)
    stepper = _tiny_stepper(order=1)
    stepper.module.float()
    a0 = [a.detach().clone() for a in stepper.alphas]
    w0 = stepper.weights[0].detach().clone()
    x, y = torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,))
    outputs: list[torch.Tensor] = []
    hook = stepper.model.register_forward_hook(lambda m, args, out: outputs.append(out.detach()))
    loss, correct = stepper.step(x, y, x, y)
    hook.remove()
    # The step reports the weight step's forward pass (the last one): its loss and right answers.
    assert len(outputs) == 2
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(outputs[-1], y)))
    assert correct == int((outputs[-1].argmax(1) == y).sum())
    assert any(not torch.equal(a, b) for a, b in zip(a0, stepper.alphas))
    assert not torch.equal(w0, stepper.weights[0])
    assert all(a.requires_grad for a in stepper.alphas)


def _nan_data():
    data = synthetic(n_train=32, n_test=8, image_size=8, in_channels=2, num_classes=3, val_portion=0.0)
    data.train.x.fill_(float("nan"))
    return data


def test_nan_in_the_first_search_epoch_says_there_is_no_checkpoint_yet(tmp_path: Path) -> None:
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=["none", "skip_connect", "sep_conv_3x3"])
    search = OneShotSearch(space, seed=0, epochs=2, batch_size=8)
    ctx = SearchContext(space=space, run_dir=tmp_path, data=_nan_data(), trainer=Trainer(device="cpu"))
    with pytest.raises(NonFiniteLossError) as info:
        search.run(ctx)
    message = str(info.value)
    assert "search: loss became nan in epoch 1" in message and "no checkpoint yet" in message
    assert "search.lr" in message and "is intact" not in message
    assert not (tmp_path / "checkpoints" / "search.pt").exists()


def test_nan_in_a_later_search_epoch_names_the_intact_checkpoint() -> None:
    stepper = _tiny_stepper(order=1)
    y = torch.zeros(4, dtype=torch.int64)
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    stepper.step(x, y, x, y)  # epoch 1 goes well,
    stepper.sched.step()  # and ends as in the search loop
    x = torch.full((4, 2, 8, 8), float("nan"), dtype=torch.float64)
    with pytest.raises(
        NonFiniteLossError, match="loss became nan in epoch 2; the checkpoint of epoch 1 is intact"
    ):
        stepper.step(x, y, x, y)


def test_search_batch_size_larger_than_the_halves_is_clamped_with_a_warning(tmp_path: Path, capsys) -> None:
    data = synthetic(n_train=20, n_test=4, image_size=8, in_channels=2, num_classes=3, val_portion=0.0)
    space = CifarCellSpace(layers=3, channels=4, nodes=2, ops=["none", "skip_connect", "sep_conv_3x3"])
    search = OneShotSearch(space, seed=0, epochs=1, batch_size=500)
    ctx = SearchContext(space=space, run_dir=tmp_path, data=data, trainer=Trainer(device="cpu"))
    result = search.run(ctx)
    assert (
        result.metrics and read_history(tmp_path / "history.jsonl")[0]["train_loss"] > 0
    )  # a step on 10 images
    out = capsys.readouterr().out
    assert "search.batch_size=500 is larger than the 10 images in each half" in out
