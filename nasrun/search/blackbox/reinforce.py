"""The NAS-RL controller (Zoph & Le, "Neural Architecture Search with Reinforcement Learning",
ICLR 2017): an LSTM emits an architecture one decision at a time and learns by REINFORCE.

At step ``i`` the LSTM reads the embedding of the previous decision (a learned start token first)
and a per-decision linear head turns its output into a softmax over ``decisions()[i]`` choices.
After every ``batch`` scored architectures the controller takes one Adam step on

    - mean_b[(R_b - baseline) * log p(arch_b)] - entropy_weight * mean_b[H(arch_b)],

where the baseline is an exponential moving average of past rewards. ``PolicyGradient`` holds the
controller and this update; the one-shot ``search=enas`` trains the same piece on the validation
accuracy of cells sampled in a supernet (``nasrun.search.oneshot.enas``).

Repeats: the search loop charges every query against the budget, so when the controller samples
an architecture it has already been told about, the known score is fed back as that sample's
reward (learning continues at no cost) and the controller samples again.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nasrun import UserError
from nasrun.run_folder import python_rng_state, set_python_rng_state
from nasrun.search.base import DEFAULT_BUDGET, BlackBoxStrategy
from nasrun.search.blackbox._common import Key, sample_unseen
from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype

#: Repeats sampled (and learnt from) in one ``ask`` before the query goes to a random new
#: architecture instead: a collapsed policy would otherwise loop here without end.
MAX_REPEATS = 100


class Controller(nn.Module):
    """An LSTM policy over a fixed sequence of categorical decisions.

    Args:
        sizes: number of choices of each decision.
        hidden: LSTM hidden and embedding size.
    """

    def __init__(self, sizes: list[int], hidden: int):
        super().__init__()
        self.sizes = sizes
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.embed = nn.ModuleList(nn.Embedding(n, hidden) for n in sizes)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)

    def forward(
        self, choices: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample one architecture, or score given ones (teacher forcing).

        Args:
            choices: ``[B, len(sizes)]`` int64 architectures to score; ``None`` samples one.
            generator: random source for sampling.

        Returns:
            ``(choices [B, D], log_prob [B], entropy [B])``.
        """
        batch = 1 if choices is None else choices.shape[0]
        x = self.start.expand(batch, -1)
        state = None
        picked = []
        log_prob = torch.zeros(batch, dtype=torch.float64)
        entropy = torch.zeros(batch, dtype=torch.float64)
        for i in range(len(self.sizes)):
            state = self.lstm(x, state)
            dist = torch.distributions.Categorical(logits=self.heads[i](state[0]))
            if choices is None:
                c = torch.multinomial(dist.probs, 1, generator=generator).squeeze(1)
            else:
                c = choices[:, i]
            picked.append(c)
            log_prob = log_prob + dist.log_prob(c)
            entropy = entropy + dist.entropy()
            x = self.embed[i](c)
        return torch.stack(picked, dim=1), log_prob, entropy


class ControllerState:
    """Resume state of a REINFORCE controller: its weights, its optimiser, its random stream and
    its reward baseline (``controller``, ``optimizer``, ``generator``, ``baseline`` attributes)."""

    controller: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    baseline: float | None

    def state_dict(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = state["baseline"]


class PolicyGradient(ControllerState):
    """An LSTM controller over a fixed sequence of decisions, trained by REINFORCE.

    One update on a batch of ``(architecture, reward)`` pairs takes an Adam step on
    ``-mean_b[(R_b - baseline) * log p(arch_b)] - entropy_weight * mean_b[H(arch_b)]``; the baseline
    is an exponential moving average of the rewards, seeded by the first one (so that the first
    update is not one huge push towards whatever came first).

    Args:
        sizes: number of choices of each decision.
        hidden: LSTM hidden and embedding size.
        lr: Adam learning rate.
        baseline_decay: decay of the reward moving average, in ``[0, 1)``.
        entropy_weight: weight of the entropy bonus (keeps the policy from collapsing early).
        seed: seeds the controller's initial weights and its sampling generator.
    """

    def __init__(
        self,
        sizes: list[int],
        hidden: int,
        lr: float,
        baseline_decay: float,
        entropy_weight: float,
        seed: int,
    ) -> None:
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # weight init uses the global generator; keep it reproducible
            self.controller = Controller(sizes, hidden).double()
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=lr)
        self.baseline: float | None = None

    def sample(self, generator: torch.Generator | None = None) -> Key:
        """One architecture as a tuple of choice indices (``generator``: default the policy's own)."""
        with torch.no_grad():
            choices, _, _ = self.controller(generator=generator or self.generator)
        return tuple(int(c) for c in choices[0])

    def update(self, keys: Sequence[Key], rewards: Sequence[float]) -> dict[str, float]:
        """One REINFORCE step on ``keys`` with their ``rewards``; returns the step's mean entropy and baseline."""
        advantages = []
        for r in rewards:
            self.baseline = r if self.baseline is None else self.baseline
            advantages.append(r - self.baseline)
            self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * r
        choices = torch.tensor([list(k) for k in keys], dtype=torch.int64)
        _, log_prob, entropy = self.controller(choices)
        adv = torch.tensor(advantages, dtype=torch.float64)
        loss = -(adv * log_prob).mean() - self.entropy_weight * entropy.mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        assert self.baseline is not None
        return {"entropy": float(entropy.detach().mean()), "baseline": self.baseline}


class Reinforce(BlackBoxStrategy):
    """REINFORCE on an LSTM controller with a moving-average baseline and an entropy bonus.

    Args:
        space: the search space.
        seed: seeds the controller's weights and its sampling.
        budget: number of architectures to evaluate.
        batch: architectures per controller update (Zoph & Le's m).
        hidden: controller LSTM size.
        lr: controller Adam learning rate.
        baseline_decay: decay of the reward moving average.
        entropy_weight: weight of the entropy bonus (keeps the policy from collapsing early).
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int = DEFAULT_BUDGET,  # architectures evaluated (nasrun.search.base)
        batch: int = 5,  # architectures per controller update (Zoph & Le's m, scaled down to small budgets)
        hidden: int = 64,  # LSTM size (Zoph & Le: 35; ENAS: 100)
        lr: float = 0.01,  # Adam lr of NATS-Bench's REINFORCE baseline (Dong et al. 2021); Zoph & Le: 6e-4
        baseline_decay: float = 0.9,  # moving-average reward baseline, as NAS-Bench-201's REINFORCE baseline
        entropy_weight: float = 1e-4,  # entropy bonus of ENAS (Pham et al. 2018)
    ) -> None:
        super().__init__(space, seed, budget)
        if batch < 1 or hidden < 1 or lr <= 0 or not 0 <= baseline_decay < 1 or entropy_weight < 0:
            raise UserError(
                "search: need batch >= 1, hidden >= 1, lr > 0, 0 <= baseline_decay < 1, entropy_weight >= 0"
            )
        self.batch = batch
        self.policy = PolicyGradient(space.decisions(), hidden, lr, baseline_decay, entropy_weight, seed)
        self.rng = random.Random(seed)
        self.scores: dict[Key, float] = {}
        self.buffer: list[tuple[Key, float]] = []  # (architecture, reward) awaiting an update

    def ask(self) -> Genotype:
        for _ in range(MAX_REPEATS):
            key = self.policy.sample()
            if key not in self.scores:
                return self.space.decode(key)
            self._reward(key, self.scores[key])  # a repeat: learn from the known score for free
        # The policy has collapsed onto evaluated architectures: spend the query on a new one.
        return self.space.decode(sample_unseen(self.space, self.rng, set(self.scores)))

    def ask_batch(self, n: int) -> list[Genotype]:
        # The policy changes only once ``batch`` rewards are queued, so the samples until then
        # come from the same controller. A repeat (of a told or a pending architecture) is
        # rewarded at once in ``ask``, so it ends the batch: its draw is undone and left to ``ask``.
        out: list[Key] = []
        for _ in range(min(n, self.batch - len(self.buffer))):
            before = self.policy.generator.get_state()
            key = self.policy.sample()
            if key in self.scores or key in out:
                self.policy.generator.set_state(before)
                break
            out.append(key)
        return [self.space.decode(k) for k in out] if out else [self.ask()]

    def tell(self, genotype: Genotype, score: float) -> None:
        key = tuple(self.space.encode(genotype))
        self.scores[key] = float(score)
        self._reward(key, float(score))

    def state_dict(self) -> dict[str, Any]:
        return {
            **self.policy.state_dict(),
            "rng": python_rng_state(self.rng),
            "scores": [[list(k), s] for k, s in self.scores.items()],
            "buffer": [[list(k), r] for k, r in self.buffer],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)
        set_python_rng_state(self.rng, state["rng"])
        self.scores = {tuple(int(v) for v in k): float(s) for k, s in state["scores"]}
        self.buffer = [(tuple(int(v) for v in k), float(r)) for k, r in state["buffer"]]

    def _reward(self, key: Key, reward: float) -> None:
        """Queue one reward; update the controller once ``batch`` are queued."""
        self.buffer.append((key, reward))
        if len(self.buffer) < self.batch:
            return
        self.policy.update([k for k, _ in self.buffer], [r for _, r in self.buffer])
        self.buffer = []
