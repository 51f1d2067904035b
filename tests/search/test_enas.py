"""ENAS: the shared REINFORCE controller learns from rewards, steps run only sampled cells, state resumes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasrun import UserError
from nasrun.search.enas import ControllerStepper, ReinforceController
from nasrun.search.oneshot import OneShotSearch
from nasrun.search.reinforce import PolicyGradient
from nasrun.search.sampled_edges import SampledEdge
from nasrun.search.steppers import EpochData
from nasrun.space.nb201 import NB201Space
from nasrun.train.trainer import Trainer
from tests.search.sampling_helpers import batch, count_op_calls, stepper_of, tiny_ctx, tiny_space


def _p_first(policy: PolicyGradient, choice: int, n: int = 3) -> float:
    """The controller's probability of ``choice`` at the first of two decisions (summed over the second)."""
    with torch.no_grad():
        return sum(float(policy.controller(torch.tensor([[choice, k]]))[1].exp()) for k in range(n))


def test_the_controller_shifts_probability_toward_a_rewarded_choice() -> None:
    policy = PolicyGradient([3, 3], hidden=16, lr=0.05, baseline_decay=0.9, entropy_weight=0.0, seed=0)
    before = _p_first(policy, 2)
    for _ in range(150):
        key = policy.sample()
        policy.update([key], [1.0 if key[0] == 2 else 0.0])
    after = _p_first(policy, 2)
    assert 0.2 < before < 0.5 and after > 0.8


def _enas(space_name: str = "nb201", **kwargs) -> OneShotSearch:
    update = ReinforceController(**{"hidden": 8, "controller_steps": 3, "candidates": 2, **kwargs})
    return OneShotSearch(tiny_space(space_name), edge=SampledEdge, update=update)


def _epoch_data(tmp_path: Path) -> EpochData:
    ctx = tiny_ctx(tmp_path, tiny_space("nb201"))
    assert ctx.data is not None
    return EpochData(
        ctx.data.train, 16, Trainer(device="cpu"), seed=0, epoch=0, augment=None, status=lambda _: None
    )


def test_the_controller_phase_learns_the_reward_of_the_cells(tmp_path: Path) -> None:
    """ENAS's wiring: the phase's rewards reach the controller (a toy reward: nor_conv_3x3 on edge 0)."""
    stepper = stepper_of(_enas(controller_steps=200, lr=0.05))
    assert isinstance(stepper, ControllerStepper)
    stepper.accuracy = lambda choices, batches: float(choices[0] == 3)  # type: ignore[method-assign]
    data = _epoch_data(tmp_path)
    gen = torch.Generator().manual_seed(0)
    share = lambda: sum(stepper.propose(gen)[0] == 3 for _ in range(200)) / 200  # noqa: E731
    before = share()
    record = stepper.end_epoch(data, arch_steps=True)
    assert before < 0.4 and share() > 0.8
    assert {"controller_reward", "controller_entropy", "controller_baseline"} <= record.keys()
    assert stepper.end_epoch(data, arch_steps=False) == {}  # warm-up epochs leave the controller


@pytest.mark.parametrize("space_name", ["nb201", "cifar_cell"])
def test_enas_steps_run_only_the_sampled_cells_ops(tmp_path: Path, space_name: str) -> None:
    stepper = stepper_of(_enas(space_name))
    with count_op_calls(stepper.module) as (edge_calls, op_calls, _):
        stepper.step(*batch(seed=0), *batch(seed=1))  # a weight step
        stepper.end_epoch(_epoch_data(tmp_path), arch_steps=True)  # 3 controller steps
    assert set(edge_calls.values()) == {4}  # 1 + 3 forward passes
    # An edge runs the ops its cell takes from it: at most 2 (a DARTS-cell node may take one input twice).
    most = 1 if space_name == "nb201" else 2
    assert all(op_calls[e] <= most * edge_calls[e] for e in edge_calls)
    assert sum(op_calls.values()) < 2 * len(edge_calls) * 4


def test_the_controller_is_in_the_stepper_state_and_resumes_exactly() -> None:
    first = stepper_of(_enas())
    for _ in range(5):
        key = first.policy.sample()
        first.policy.update([key], [float(key[0])])
    state = first.state_dict()
    assert {"policy", "cell_generator", "supernet"} <= state.keys()
    second = stepper_of(_enas())
    second.load_state_dict(state)
    assert second.policy.baseline == first.policy.baseline
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [first.propose(gen_a) for _ in range(10)] == [second.propose(gen_b) for _ in range(10)]
    assert [first.policy.sample() for _ in range(5)] == [second.policy.sample() for _ in range(5)]


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


def test_an_enas_search_runs_on_both_spaces(tmp_path: Path) -> None:
    for space_name in ("nb201", "cifar_cell"):
        space = tiny_space(space_name)
        update = ReinforceController(hidden=8, controller_steps=2, candidates=2)
        search = OneShotSearch(space, seed=1, epochs=1, batch_size=256, edge=SampledEdge, update=update)
        result = search.run(tiny_ctx(tmp_path / space_name, space))
        space.validate(result.genotype)
