"""ENAS: the controllers and their update against the reference code's formulas, wiring, state, recipes.

The references: github melodyguan/enas (the CIFAR-10 micro search) and github D-X-Y/AutoDL-Projects
(the NAS-Bench-201 version). Constants below carry the reference file and line they come from.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.search.blackbox.reinforce import PolicyGradient
from nasrun.search.oneshot.enas import (
    CellController,
    ControllerStepper,
    EdgeController,
    EnasPolicy,
    ReinforceController,
    controller_logits,
)
from nasrun.search.oneshot.engine import OneShotSearch
from nasrun.search.oneshot.plugin import EpochData
from nasrun.search.oneshot.sampled_edges import SampledEdge
from nasrun.space.nb201 import NB201Space
from nasrun.train.trainer import Trainer
from tests.search.sampling_helpers import batch, count_op_calls, stepper_of, tiny_ctx, tiny_space

# enas scripts/cifar10_micro_search.sh:36-37
MICRO_TANH, MICRO_OP_REDUCE = 1.10, 2.5
# AutoDL xautodl/models/cell_searchs/search_model_enas_utils.py:19-20
NB201_TANH, NB201_TEMPERATURE = 2.5, 5.0
RAW = [-4.0, -0.7, 0.0, 0.3, 2.0, 9.0]


def test_the_logits_transform_is_the_references() -> None:
    raw = torch.tensor(RAW)
    # enas micro_controller.py:158-161 (input logits) and 179-183 (op logits), no temperature.
    assert controller_logits(raw, None, MICRO_TANH).tolist() == pytest.approx(
        [MICRO_TANH * math.tanh(r) for r in RAW], abs=1e-6
    )
    op_tanh = MICRO_TANH / MICRO_OP_REDUCE
    assert controller_logits(raw, None, op_tanh).tolist() == pytest.approx(
        [0.44 * math.tanh(r) for r in RAW], abs=1e-6
    )
    # AutoDL search_model_enas_utils.py:56-57: divide by the temperature, then squash.
    assert controller_logits(raw, NB201_TEMPERATURE, NB201_TANH).tolist() == pytest.approx(
        [2.5 * math.tanh(r / 5.0) for r in RAW], abs=1e-6
    )
    assert torch.equal(controller_logits(raw, None, None), raw)


def test_the_edge_controller_samples_from_the_transformed_logits() -> None:
    """AutoDL's controller: each edge's distribution is softmax(2.5 tanh(w_pred(h) / 5)), h from the LSTM."""
    torch.manual_seed(0)
    ctl = EdgeController(
        6, 5, lstm_size=32, lstm_layers=2, tanh_constant=2.5, op_tanh_reduce=1.0, temperature=5.0
    )
    choices = [0, 4, 2, 2, 1, 3]
    _, log_prob, entropy = ctl(choices)
    want_lp, want_h, x, state = 0.0, 0.0, ctl.input_vars, None
    with torch.no_grad():
        for c in choices:
            out, state = ctl.lstm(x, state)
            p = torch.softmax(2.5 * torch.tanh(ctl.w_pred(out).flatten() / 5.0), 0)
            want_lp += math.log(float(p[c]))
            want_h -= float((p * p.log()).sum())
            x = ctl.w_embd(torch.tensor([[c]]))
    assert float(log_prob.detach()) == pytest.approx(want_lp, abs=1e-5)
    assert float(entropy.detach()) == pytest.approx(want_h, abs=1e-5)
    # The logits are bounded by the tanh constant: no op is ever likelier than e^5 times another.
    assert ctl.lstm.num_layers == 2 and ctl.w_pred.out_features == 5


def test_the_cell_controller_biases_the_normal_cells_ops_as_the_reference() -> None:
    """With every weight at zero, the reference's distributions are known in closed form.

    The LSTM then outputs 0, attention scores are 0 (inputs uniform over the earlier nodes), and
    op logits are the head's bias 10 for the favoured ops, 0 else (micro_controller.py:100), squashed
    by 1.1 / 2.5 and, in the normal cell only, shifted by +0.25 / -0.25 (micro_controller.py:106,184).
    """
    ops = ["max_pool_3x3", "sep_conv_3x3", "skip_connect", "sep_conv_5x5"]
    ctl = CellController(2, ops, 16, 1, MICRO_TANH, MICRO_OP_REDUCE, None, ["sep_conv_3x3", "sep_conv_5x5"])
    assert ctl.w_soft.bias.tolist() == [0.0, 10.0, 0.0, 10.0]
    with torch.no_grad():
        for p in ctl.parameters():
            p.zero_()
        ctl.w_soft.bias.copy_(torch.tensor([0.0, 10.0, 0.0, 10.0]))
    op_tanh = MICRO_TANH / MICRO_OP_REDUCE
    normal = torch.tensor(
        [op_tanh * math.tanh(b) + s for b, s in [(0, -0.25), (10, 0.25), (0, -0.25), (10, 0.25)]]
    )
    reduce = torch.tensor([op_tanh * math.tanh(b) for b in (0, 10, 0, 10)])
    # decisions per node: input, input, op, op; nodes 0 and 1; normal then reduction cell.
    choices = [1, 0, 1, 2, 2, 0, 3, 0] * 2
    want = 0.0
    for cell, logits in ((0, normal), (1, reduce)):
        lp = torch.log_softmax(logits, 0)
        for node in range(2):
            i1, i2, o1, o2 = choices[8 * cell + 4 * node : 8 * cell + 4 * node + 4]
            want += 2 * -math.log(node + 2) + float(lp[o1] + lp[o2])
    _, log_prob, _ = ctl(choices)
    assert float(log_prob.detach()) == pytest.approx(want, abs=1e-5)


def test_the_reward_holds_the_entropy_bonus_and_the_baseline_moves_before_use() -> None:
    ctl = EdgeController(2, 3, 4, 1, None, 1.0, None)
    # AutoDL ENAS.py:144-150: the first baseline is the first accuracy.
    autodl = EnasPolicy(ctl, 1e-3, 0.99, None, 1e-4, 1, 0.0, seed=0)
    assert autodl.reward(0.5, 3.0) == pytest.approx((0.5 + 1e-4 * 3.0, 0.5))
    assert autodl.reward(0.7, 2.0) == pytest.approx((0.7002, 0.5 - 0.01 * (0.5 - 0.7002)))
    # enas micro_controller.py:237-243: the baseline starts at 0 and moves towards the reward first.
    micro = EnasPolicy(ctl, 1e-3, 0.99, 0.0, 1e-4, 1, 0.0, seed=0)
    assert micro.reward(0.5, 3.0) == pytest.approx((0.5003, 0.01 * 0.5003))


def test_the_controller_gradient_is_reinforce_on_the_reward_alone() -> None:
    """The step's gradient is mean_i -(R_i - b_i) grad log p_i: no entropy term in the loss."""

    def policy() -> EnasPolicy:
        torch.manual_seed(0)
        ctl = EdgeController(3, 4, 8, 1, 2.5, 1.0, 5.0)
        return EnasPolicy(ctl, 1e-3, 0.9, None, 0.5, num_aggregate=3, grad_clip=0.0, seed=7)

    accs = iter([0.2, 0.9, 0.4])
    trained = policy()
    seen: list[list[torch.Tensor]] = []
    trained.optimizer.step = lambda *a, **k: seen.append(  # type: ignore[method-assign]
        [p.grad.clone() for p in trained.controller.parameters()]
    )
    trained.train(1, lambda c: next(accs))
    replay = policy()
    want = [torch.zeros_like(p) for p in replay.controller.parameters()]
    for acc in (0.2, 0.9, 0.4):
        _, log_prob, entropy = replay.controller(generator=replay.generator)
        reward, base = replay.reward(acc, float(entropy.detach()))
        grads = torch.autograd.grad(log_prob, list(replay.controller.parameters()), allow_unused=True)
        for w, g in zip(want, grads, strict=True):
            if g is not None:
                w -= (reward - base) * g / 3
    assert len(seen) == 1
    for got, w in zip(seen[0], want, strict=True):
        torch.testing.assert_close(got, w, rtol=1e-4, atol=1e-7)


def test_the_search_recipes_compose_per_space(compose_cfg) -> None:
    """The CIFAR micro search's values on cifar_cell, AutoDL's on nb201 (each from its reference)."""
    cifar = compose_cfg("search=enas").search
    assert (cifar.epochs, cifar.batch_size, cifar.train_portion) == (150, 160, 0.9)
    assert (cifar.lr, cifar.lr_min, cifar.lr_schedule, cifar.lr_period, cifar.lr_period_mul) == (
        0.05,
        5e-4,
        "cosine_restarts",
        10,
        2,
    )
    u = cifar["update"]
    assert (u.tanh_constant, u.op_tanh_reduce, u.temperature, u.lr) == (1.1, 2.5, None, 0.0035)
    assert (u.controller_steps, u.num_aggregate, u.entropy_weight, u.baseline_decay) == (30, 10, 1e-4, 0.99)
    nb = compose_cfg("search=enas", "space=nb201").search
    assert (nb.epochs, nb.batch_size, nb.weight_decay, nb.nesterov, nb.lr_schedule, nb.lr_period) == (
        250,
        128,
        2.5e-4,
        True,
        "cosine",
        10,
    )
    u = nb["update"]
    assert (u.lstm_size, u.lstm_layers, u.tanh_constant, u.temperature, u.lr) == (32, 2, 2.5, 5.0, 0.001)
    assert (u.controller_steps, u.num_aggregate, u.candidates, u.final_candidates, u.reward_bn) == (
        50,
        20,
        10,
        100,
        "eval",
    )
    smoke = compose_cfg("experiment=smoke", "search=enas", "space=nb201").search
    assert smoke.epochs == 1 and smoke["update"].final_candidates == 2 and smoke["update"].lstm_layers == 2


def _enas(space_name: str = "nb201", **kwargs) -> OneShotSearch:
    update = ReinforceController(
        **{"lstm_size": 8, "controller_steps": 3, "num_aggregate": 1, "candidates": 2, **kwargs}
    )
    return OneShotSearch(tiny_space(space_name), edge=SampledEdge, update=update)


def _epoch_data(tmp_path: Path) -> EpochData:
    ctx = tiny_ctx(tmp_path, tiny_space("nb201"))
    assert ctx.data is not None
    return EpochData(
        ctx.data.train, 16, Trainer(device="cpu"), seed=0, epoch=0, augment=None, status=lambda _: None
    )


def test_the_controller_phase_learns_the_reward_of_the_cells(tmp_path: Path) -> None:
    """ENAS's wiring: the phase's rewards reach the controller (a toy reward: nor_conv_3x3 on edge 0)."""
    stepper = stepper_of(_enas(controller_steps=150, lr=0.05, tanh_constant=None))
    assert isinstance(stepper, ControllerStepper)
    stepper.accuracy = lambda choices, batches, bn=None: float(choices[0] == 3)  # type: ignore[method-assign]
    data = _epoch_data(tmp_path)
    gen = torch.Generator().manual_seed(0)
    share = lambda: sum(stepper.propose(gen)[0] == 3 for _ in range(200)) / 200  # noqa: E731
    before = share()
    record = stepper.end_epoch(data, arch_steps=True)
    assert before < 0.4 and share() > 0.8
    assert {
        "controller_reward",
        "controller_entropy",
        "controller_baseline",
        "controller_acc",
    } <= record.keys()
    assert stepper.end_epoch(data, arch_steps=False) == {}  # warm-up epochs leave the controller


def test_the_tanh_constant_bounds_how_sure_the_controller_gets(tmp_path: Path) -> None:
    """With 2.5 tanh(./5), an op is at most e^5 times likelier than another: the policy cannot collapse."""
    stepper = stepper_of(_enas(controller_steps=150, lr=0.05, tanh_constant=2.5, temperature=5.0))
    stepper.accuracy = lambda choices, batches, bn=None: float(choices[0] == 3)  # type: ignore[method-assign]
    stepper.end_epoch(_epoch_data(tmp_path), arch_steps=True)
    gen = torch.Generator().manual_seed(0)
    share = sum(stepper.propose(gen)[0] == 3 for _ in range(400)) / 400
    assert share < math.exp(5) / (math.exp(5) + 4 * math.exp(-5)) and share > 0.5


@pytest.mark.parametrize("space_name", ["nb201", "cifar_cell"])
def test_enas_steps_run_only_the_sampled_cells_ops(tmp_path: Path, space_name: str) -> None:
    stepper = stepper_of(_enas(space_name))
    with count_op_calls(stepper.module) as (edge_calls, op_calls, _):
        stepper.step(*batch(seed=0), *batch(seed=1))  # a weight step
        stepper.end_epoch(_epoch_data(tmp_path), arch_steps=True)  # 3 controller samples
    assert set(edge_calls.values()) == {4}  # 1 + 3 forward passes
    # An edge runs the ops its cell takes from it: at most 2 (a DARTS-cell node may take one input twice).
    most = 1 if space_name == "nb201" else 2
    assert all(op_calls[e] <= most * edge_calls[e] for e in edge_calls)
    assert sum(op_calls.values()) < 2 * len(edge_calls) * 4


def test_the_controller_is_in_the_stepper_state_and_resumes_exactly(tmp_path: Path) -> None:
    first = stepper_of(_enas())
    first.policy.train(2, lambda c: float(c[0]) / 4)
    state = first.state_dict()
    assert {"policy", "cell_generator", "supernet"} <= state.keys()
    second = stepper_of(_enas())
    second.load_state_dict(state)
    assert second.policy.baseline == first.policy.baseline
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [first.propose(gen_a) for _ in range(10)] == [second.propose(gen_b) for _ in range(10)]
    assert [first.policy.sample() for _ in range(5)] == [second.policy.sample() for _ in range(5)]


def test_the_black_box_reinforce_policy_still_learns() -> None:
    """search=reinforce keeps its own controller (nasrun.search.blackbox.reinforce.PolicyGradient)."""
    policy = PolicyGradient([3, 3], hidden=16, lr=0.05, baseline_decay=0.9, entropy_weight=0.0, seed=0)
    for _ in range(150):
        key = policy.sample()
        policy.update([key], [1.0 if key[0] == 2 else 0.0])
    with torch.no_grad():
        p = sum(float(policy.controller(torch.tensor([[2, k]]))[1].exp()) for k in range(3))
    assert p > 0.8


class _NoCells:
    """A one-shot space that cannot run a sampled cell in its supernet (no ``genotype_weights``)."""

    name = "nocells"

    def __init__(self) -> None:
        self._inner = NB201Space(channels=4, cells=1)

    def __getattr__(self, key: str) -> object:  # the rest of the space is NB201's
        if key == "genotype_weights":
            raise AttributeError(key)
        return getattr(self._inner, key)


def test_bad_enas_settings_are_one_line() -> None:
    with pytest.raises(UserError, match=r"search=enas samples whole cells .* space 'nocells' cannot") as info:
        OneShotSearch(_NoCells(), edge=SampledEdge, update=ReinforceController())  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"search.update.candidates=0: must be >= 1"):
        ReinforceController(candidates=0)
    with pytest.raises(UserError, match=r"search.update.controller_steps=0: must be >= 1"):
        ReinforceController(controller_steps=0)
    with pytest.raises(UserError, match=r"search.update.num_aggregate=0: must be >= 1"):
        ReinforceController(num_aggregate=0)
    with pytest.raises(UserError, match=r"search.update.reward_bn='x': must be eval or train"):
        ReinforceController(reward_bn="x")
    with pytest.raises(UserError, match=r"search.update.temperature=0: must be > 0"):
        ReinforceController(temperature=0)
    with pytest.raises(
        UserError, match=r"search.stages.ops_kept: search=enas samples cells of the whole space"
    ):
        OneShotSearch(
            tiny_space("cifar_cell"),
            epochs=2,
            stages={
                "layers": [3, 3],
                "epochs": [1, 1],
                "warmup_epochs": [0, 0],
                "ops_kept": [4, 2],
                "skip_dropout": [0, 0],
            },
            update=ReinforceController(),
        )


def test_an_enas_search_runs_on_both_spaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search's cell is the best scored of the candidates drawn after the last epoch."""
    scored: list[tuple[tuple[int, ...], float]] = []
    accuracy = ControllerStepper.accuracy

    def spy(self, choices, batches, bn=None):  # type: ignore[no-untyped-def]
        scored.append((choices, accuracy(self, choices, batches, bn)))
        return scored[-1][1]

    monkeypatch.setattr(ControllerStepper, "accuracy", spy)
    for space_name in ("nb201", "cifar_cell"):
        space = tiny_space(space_name)
        update = ReinforceController(lstm_size=8, controller_steps=2, num_aggregate=2, candidates=2)
        search = OneShotSearch(space, seed=1, epochs=1, batch_size=256, edge=SampledEdge, update=update)
        scored.clear()
        result = search.run(tiny_ctx(tmp_path / space_name, space))
        # The last two scores are the derivation's (the controller's rewards come before it).
        candidates = scored[-2:]
        best = max(candidates, key=lambda s: s[1])[0]  # max keeps the first of equals, as derive does
        assert space.encode(result.genotype) == list(best), candidates
