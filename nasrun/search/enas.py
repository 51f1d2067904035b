"""ENAS (Pham et al., ICML 2018) on the one-shot engine: a controller samples the cells that share weights.

Two phases alternate, as in the paper: the shared weights take one pass over the weights' half
of the training data, each batch on a cell sampled from the controller (only its ops run, with
``SampledEdge`` edges); then the controller takes ``controller_steps`` REINFORCE steps, each on
one sampled cell whose reward is its accuracy on one validation batch with the shared weights. The
controller is the LSTM policy of the black-box ``search=reinforce`` (``PolicyGradient``: a
moving-average baseline and an entropy bonus), over the space's categorical decisions. Deriving
samples ``candidates`` cells from the controller, scores each on validation batches and keeps the
best. The controller, its optimiser, baseline and generator are in the checkpoint, so a resumed
search continues exactly.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

import torch

from nasrun import UserError
from nasrun.search.reinforce import PolicyGradient
from nasrun.search.steppers import CONTROLLER_STREAM, CellSamplingStepper, EpochData, check_sampled_space

if TYPE_CHECKING:
    from nasrun.search.oneshot import OneShotNetwork, OneShotSearch
    from nasrun.train.trainer import Trainer


class ControllerStepper(CellSamplingStepper):
    """``CellSamplingStepper`` whose cells come from a REINFORCE-trained controller.

    Args:
        supernet: the ``OneShotNetwork``.
        trainer: device, precision and memory format.
        policy: the controller and its update.
        controller_steps: REINFORCE steps after each epoch's weight steps.
        **cells: ``CellSamplingStepper``'s arguments.
    """

    def __init__(
        self,
        supernet: OneShotNetwork,
        trainer: Trainer,
        *,
        policy: PolicyGradient,
        controller_steps: int,
        **cells: Any,
    ) -> None:
        super().__init__(supernet, trainer, **cells)
        self.policy = policy
        self.controller_steps = controller_steps

    def propose(self, generator: torch.Generator) -> tuple[int, ...]:
        return self.policy.sample(generator)

    def end_epoch(self, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        """The controller phase: ``controller_steps`` REINFORCE steps on validation batches."""
        if not arch_steps:
            return {}
        batches = data.endless(CONTROLLER_STREAM)
        rewards: list[float] = []
        stats: dict[str, float] = {}
        for i in range(self.controller_steps):
            choices = self.policy.sample()
            reward = self.accuracy(choices, [next(batches)])
            stats = self.policy.update([choices], [reward])
            rewards.append(reward)
            if i % 20 == 0:
                data.status(f"controller step {i + 1}/{self.controller_steps}")
        return {
            "controller_reward": statistics.fmean(rewards),
            "controller_entropy": stats["entropy"],
            "controller_baseline": stats["baseline"],
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.policy.load_state_dict(state["policy"])


class ReinforceController:
    """ENAS's architecture update: an LSTM controller trained by REINFORCE on the validation reward.

    Args:
        hidden: the controller LSTM's size.
        lr: the controller's Adam learning rate.
        baseline_decay: decay of the reward moving average.
        entropy_weight: weight of the entropy bonus.
        controller_steps: REINFORCE steps (one sampled cell and one validation batch each) after
            each pass of the shared weights over the training data.
        candidates: cells sampled from the controller to derive each epoch's cell (N).
        score_batches: validation batches each candidate is scored on.
    """

    def __init__(
        self,
        hidden: int = 100,  # ENAS (Pham et al. 2018): an LSTM controller with 100 hidden units
        lr: float = 3.5e-4,  # ENAS: controller Adam lr 0.00035
        baseline_decay: float = 0.99,  # ENAS reference code: moving-average baseline decay 0.99
        entropy_weight: float = 1e-4,  # ENAS: the sample entropy added to the reward, weighted 1e-4
        controller_steps: int = 2000,  # ENAS (Sec. 2.2): the controller phase takes 2000 steps
        candidates: int = 100,  # nasrun's choice: ENAS samples "several" cells to derive; 100 as search=rsps
        score_batches: int = 1,  # ENAS: each sampled cell is scored on one validation minibatch
    ) -> None:
        if hidden < 1 or lr <= 0 or not 0 <= baseline_decay < 1 or entropy_weight < 0:
            raise UserError(
                "search.update: need hidden >= 1, lr > 0, 0 <= baseline_decay < 1, entropy_weight >= 0, got "
                f"{hidden}, {lr}, {baseline_decay}, {entropy_weight}"
            )
        if controller_steps < 1:
            raise UserError(f"search.update.controller_steps={controller_steps}: must be >= 1")
        if candidates < 1:
            raise UserError(f"search.update.candidates={candidates}: must be >= 1 (cells sampled to derive)")
        if score_batches < 1:
            raise UserError(f"search.update.score_batches={score_batches}: must be >= 1")
        self.hidden = hidden
        self.lr = lr
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.controller_steps = controller_steps
        self.candidates = candidates
        self.score_batches = score_batches

    def check(self, search: OneShotSearch) -> None:
        check_sampled_space(search, "enas")

    def stepper(
        self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any
    ) -> ControllerStepper:
        policy = PolicyGradient(
            network.space.decisions(),
            self.hidden,
            self.lr,
            self.baseline_decay,
            self.entropy_weight,
            seed + 1,
        )
        return ControllerStepper(
            network,
            trainer,
            policy=policy,
            controller_steps=self.controller_steps,
            candidates=self.candidates,
            score_batches=self.score_batches,
            seed=seed,
            **darts,
        )
