"""ENAS (Pham et al., ICML 2018) on the one-shot engine: a controller samples the cells that share weights.

Two phases alternate, as in the reference code: the shared weights take one pass over the weights'
share of the training data, each batch on a cell sampled from the controller (only its ops run,
with ``SampledEdge`` edges); then the controller takes ``controller_steps`` Adam steps, each on the
REINFORCE gradient averaged over ``num_aggregate`` sampled cells, every cell rewarded with its
accuracy on its own validation batch plus the entropy bonus.

Two controllers, each after its space's reference:

- ``CellController`` (space=cifar_cell): the micro-search controller of the ENAS code
  (github melodyguan/enas, src/cifar10/micro_controller.py): an LSTM that picks each node's two
  inputs by attention over the earlier nodes' hidden states and its two ops from one shared
  softmax head, normal cell then reduction cell;
- ``EdgeController`` (space=nb201): AutoDL-Projects' NAS-Bench-201 controller
  (xautodl/models/cell_searchs/search_model_enas_utils.py): a two-layer LSTM that picks one op
  per edge.

Both turn the raw logits the same way (``controller_logits``): divided by the temperature, then
squashed to ``tanh_constant * tanh(.)`` (ops: ``tanh_constant / op_tanh_reduce``).

Deriving samples cells from the controller, scores each on its own validation batch and keeps the
best (``CellSamplingStepper``). The controller, its optimiser, baseline and generator are in the
checkpoint, so a resumed search continues exactly.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nasrun import UserError
from nasrun.search.blackbox.reinforce import ControllerState
from nasrun.search.oneshot.plugin import CONTROLLER_STREAM, EpochData, SearchSettings
from nasrun.search.oneshot.steppers import CellSamplingStepper, check_sampled_space
from nasrun.space.cifar_cell import CifarCellSpace

if TYPE_CHECKING:
    from nasrun.search.oneshot.network import OneShotNetwork
    from nasrun.train.trainer import Trainer

#: The controller's Adam: beta1 = 0 and eps = 1e-3 in both references (enas src/utils.py:218;
#: AutoDL configs/nas-benchmark/algos/ENAS.config:13-14).
ADAM_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-3
#: The references' initial range of the controller's weights, U(-0.1, 0.1) (enas
#: src/cifar10/micro_controller.py:86; AutoDL search_model_enas_utils.py:42-46).
INIT_RANGE = 0.1


def controller_logits(
    raw: torch.Tensor, temperature: float | None, tanh_constant: float | None
) -> torch.Tensor:
    """ENAS's logits: ``raw / temperature``, then ``tanh_constant * tanh(.)`` (either step skipped if ``None``).

    The order is the references': enas micro_controller.py:158-161 (op logits: 179-183, with
    ``tanh_constant / op_tanh_reduce``), AutoDL search_model_enas_utils.py:56-57.
    """
    if temperature is not None:
        raw = raw / temperature
    if tanh_constant is not None:
        raw = tanh_constant * torch.tanh(raw)
    return raw


class _Sampler:
    """Picks one choice per decision from logits (or takes a given one) and sums log-probabilities and entropies."""

    def __init__(self, choices: Sequence[int] | None, generator: torch.Generator | None) -> None:
        self.given = list(choices) if choices is not None else None
        self.generator = generator
        self.picked: list[int] = []
        self.log_prob = torch.zeros(())
        self.entropy = torch.zeros(())

    def __call__(self, logits: torch.Tensor) -> int:
        log_p = torch.log_softmax(logits.flatten(), dim=0)
        if self.given is not None:
            c = self.given[len(self.picked)]
        else:
            c = int(torch.multinomial(log_p.detach().exp(), 1, generator=self.generator))
        self.picked.append(c)
        self.log_prob = self.log_prob + log_p[c]
        self.entropy = self.entropy - (log_p.exp() * log_p).sum()
        return c


class CellController(nn.Module):
    """The ENAS micro-search controller over a DARTS-style cell space (normal then reduction cell).

    Per node, in the space's decision order: two inputs, each chosen by attention over the hidden
    states of the nodes before it (the cell's two inputs count as zero states), then two ops from
    one softmax head shared by every op decision (enas micro_controller.py:135-201).

    Args:
        nodes: intermediate nodes per cell.
        ops: the choosable ops, in the space's order.
        lstm_size, lstm_layers: the LSTM (no biases, as the reference's stack_lstm, src/common_ops.py:5-24).
        tanh_constant, op_tanh_reduce, temperature: the logits transform (``controller_logits``).
        favoured_ops: ops whose head bias starts at 10 and which get +0.25 (the others -0.25)
            added to the normal cell's op logits (micro_controller.py:100-109, 184-185: the
            reference favours its two separable convolutions).
    """

    def __init__(
        self,
        nodes: int,
        ops: Sequence[str],
        lstm_size: int,
        lstm_layers: int,
        tanh_constant: float | None,
        op_tanh_reduce: float,
        temperature: float | None,
        favoured_ops: Sequence[str],
    ) -> None:
        super().__init__()
        H = lstm_size
        self.nodes = nodes
        self.tanh_constant = tanh_constant
        self.op_tanh = None if tanh_constant is None else tanh_constant / op_tanh_reduce
        self.temperature = temperature
        self.lstm = nn.LSTM(H, H, num_layers=lstm_layers, bias=False)
        self.g_emb = nn.Parameter(torch.empty(1, 1, H))
        self.w_emb = nn.Embedding(len(ops), H)
        self.w_soft = nn.Linear(H, len(ops))
        self.w_attn_1 = nn.Linear(H, H, bias=False)
        self.w_attn_2 = nn.Linear(H, H, bias=False)
        self.v_attn = nn.Linear(H, 1, bias=False)
        for p in self.parameters():
            nn.init.uniform_(p, -INIT_RANGE, INIT_RANGE)
        favoured = torch.tensor([op in favoured_ops for op in ops])
        with torch.no_grad():
            self.w_soft.bias.copy_(torch.where(favoured, 10.0, 0.0))
        self.register_buffer("normal_bias", torch.where(favoured, 0.25, -0.25))

    def forward(
        self, choices: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample a cell pair (or score ``choices``): ``(choices, log_prob, entropy)``."""
        pick = _Sampler(choices, generator)
        state: tuple[torch.Tensor, torch.Tensor] | None = None

        def step(x: torch.Tensor) -> torch.Tensor:
            nonlocal state
            out, state = self.lstm(x.view(1, 1, -1), state)
            return out.view(1, -1)

        for cell in range(2):  # the reduction cell's LSTM continues from the normal cell's state
            x: torch.Tensor = self.g_emb
            anchors: list[torch.Tensor] = []
            keys: list[torch.Tensor] = []
            for _ in range(2):  # the cell's two inputs
                h = step(x)
                anchors.append(torch.zeros_like(h))
                keys.append(self.w_attn_1(h))
            for _ in range(self.nodes):
                for _ in range(2):
                    h = step(x)
                    query = torch.tanh(torch.cat(keys) + self.w_attn_2(h))
                    raw = self.v_attn(query).view(1, -1)
                    x = anchors[pick(controller_logits(raw, self.temperature, self.tanh_constant))]
                for _ in range(2):
                    h = step(x)
                    logits = controller_logits(self.w_soft(h), self.temperature, self.op_tanh)
                    if cell == 0:
                        logits = logits + self.normal_bias  # type: ignore[operator]
                    x = self.w_emb(torch.tensor([pick(logits)]))
                h = step(x)
                anchors.append(h)
                keys.append(self.w_attn_1(h))
                x = self.g_emb
        return pick.picked, pick.log_prob, pick.entropy


class EdgeController(nn.Module):
    """AutoDL-Projects' ENAS controller for NAS-Bench-201: one op per edge from a multi-layer LSTM.

    The first input is a learned vector, each next one the embedding of the op just picked; one
    linear head shared by every edge (search_model_enas_utils.py:31-69). The first layer's
    weights, the input, the embedding and the head's weight start in U(-0.1, 0.1), the rest at
    PyTorch's defaults (search_model_enas_utils.py:42-46).

    Args:
        edges: decisions (one per edge).
        n_ops: ops per edge.
        lstm_size, lstm_layers: the LSTM.
        tanh_constant, op_tanh_reduce, temperature: the logits transform (``controller_logits``).
    """

    def __init__(
        self,
        edges: int,
        n_ops: int,
        lstm_size: int,
        lstm_layers: int,
        tanh_constant: float | None,
        op_tanh_reduce: float,
        temperature: float | None,
    ) -> None:
        super().__init__()
        H = lstm_size
        self.edges = edges
        self.op_tanh = None if tanh_constant is None else tanh_constant / op_tanh_reduce
        self.temperature = temperature
        self.input_vars = nn.Parameter(torch.empty(1, 1, H))
        self.lstm = nn.LSTM(H, H, num_layers=lstm_layers)
        self.w_embd = nn.Embedding(n_ops, H)
        self.w_pred = nn.Linear(H, n_ops)
        first: list[torch.Tensor] = [self.lstm.weight_hh_l0, self.lstm.weight_ih_l0]  # type: ignore[list-item]
        for p in (self.input_vars, *first, self.w_embd.weight, self.w_pred.weight):
            nn.init.uniform_(p, -INIT_RANGE, INIT_RANGE)

    def forward(
        self, choices: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Sample a cell (or score ``choices``): ``(choices, log_prob, entropy)``."""
        pick = _Sampler(choices, generator)
        x, state = self.input_vars, None
        for _ in range(self.edges):
            out, state = self.lstm(x, state)
            op = pick(controller_logits(self.w_pred(out), self.temperature, self.op_tanh))
            x = self.w_embd(torch.tensor([[op]]))
        return pick.picked, pick.log_prob, pick.entropy


class EnasPolicy(ControllerState):
    """An ENAS controller and its REINFORCE update, as the references train it.

    Each sampled cell's reward is ``R = acc + entropy_weight * H`` (the entropy bonus is part of
    the reward: enas micro_controller.py:237-238, AutoDL ENAS.py:144; H carries no gradient, as
    in micro_controller.py:169). The baseline moves before it is used,
    ``b <- b - (1 - baseline_decay) (b - R)`` (micro_controller.py:242-248, ENAS.py:148-150),
    from ``baseline_init`` or, if that is ``None``, from the first cell's accuracy
    (ENAS.py:145-146). The loss ``-log p * (R - b)`` is averaged over ``num_aggregate`` cells per
    Adam step (the reference's replica aggregation, ENAS.py:161-172), whose gradient norm is
    clipped at ``grad_clip`` if positive.

    Args:
        controller: a ``CellController`` or ``EdgeController``.
        lr, baseline_decay, baseline_init, entropy_weight, num_aggregate, grad_clip: see above.
        seed: seeds the controller's sampling generator.
    """

    def __init__(
        self,
        controller: nn.Module,
        lr: float,
        baseline_decay: float,
        baseline_init: float | None,
        entropy_weight: float,
        num_aggregate: int,
        grad_clip: float,
        seed: int,
    ) -> None:
        self.controller = controller
        self.baseline_decay = baseline_decay
        self.entropy_weight = entropy_weight
        self.num_aggregate = num_aggregate
        self.grad_clip = grad_clip
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = torch.optim.Adam(controller.parameters(), lr=lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        self.baseline: float | None = baseline_init

    def sample(self, generator: torch.Generator | None = None) -> tuple[int, ...]:
        """One cell as a tuple of choice indices (``generator``: default the policy's own)."""
        with torch.no_grad():
            choices, _, _ = self.controller(generator=generator or self.generator)
        return tuple(choices)

    def reward(self, accuracy: float, entropy: float) -> tuple[float, float]:
        """One cell's ``(reward, baseline)``; moves the baseline."""
        reward = accuracy + self.entropy_weight * entropy
        if self.baseline is None:
            self.baseline = accuracy
        else:
            self.baseline -= (1 - self.baseline_decay) * (self.baseline - reward)
        return reward, self.baseline

    def train(self, steps: int, score: Callable[[tuple[int, ...]], float]) -> dict[str, float]:
        """``steps`` Adam steps, each on ``num_aggregate`` cells scored by ``score``; the phase's means."""
        self.controller.train()
        accs, rewards, entropies = [], [], []
        self.optimizer.zero_grad()
        for i in range(steps * self.num_aggregate):
            choices, log_prob, entropy = self.controller(generator=self.generator)
            acc = score(tuple(choices))
            reward, baseline = self.reward(acc, float(entropy.detach()))
            loss = -log_prob * (reward - baseline) / self.num_aggregate
            loss.backward()
            if (i + 1) % self.num_aggregate == 0:
                if self.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.controller.parameters(), self.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad()
            accs.append(acc)
            rewards.append(reward)
            entropies.append(float(entropy.detach()))
        assert self.baseline is not None
        return {
            "controller_acc": statistics.fmean(accs),
            "controller_reward": statistics.fmean(rewards),
            "controller_entropy": statistics.fmean(entropies),
            "controller_baseline": self.baseline,
        }


class ControllerStepper(CellSamplingStepper):
    """``CellSamplingStepper`` whose cells come from a REINFORCE-trained controller.

    Args:
        supernet: the ``OneShotNetwork``.
        trainer: device, precision and memory format.
        policy: the controller and its update.
        controller_steps: controller Adam steps after each epoch's weight steps.
        reward_bn, reward_augment: BatchNorm's mode (``eval`` or ``train``) and augmentation for
            the reward batches.
        **cells: ``CellSamplingStepper``'s arguments.
    """

    def __init__(
        self,
        supernet: OneShotNetwork,
        trainer: Trainer,
        *,
        policy: EnasPolicy,
        controller_steps: int,
        reward_bn: str,
        reward_augment: bool,
        **cells: Any,
    ) -> None:
        super().__init__(supernet, trainer, **cells)
        self.policy = policy
        self.controller_steps = controller_steps
        self.reward_bn = reward_bn
        self.reward_augment = reward_augment

    def propose(self, generator: torch.Generator) -> tuple[int, ...]:
        return self.policy.sample(generator)

    def end_epoch(self, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        """The controller phase: each sampled cell rewarded on its own next validation batch."""
        if not arch_steps:
            return {}
        batches = data.endless(CONTROLLER_STREAM, augment=self.reward_augment)
        done = [0]

        def score(choices: tuple[int, ...]) -> float:
            done[0] += 1
            if done[0] % 50 == 1:
                data.status(
                    f"controller sample {done[0]}/{self.controller_steps * self.policy.num_aggregate}"
                )
            return self.accuracy(choices, [next(batches)], bn=self.reward_bn)

        return self.policy.train(self.controller_steps, score)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "policy": self.policy.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.policy.load_state_dict(state["policy"])


class ReinforceController:
    """ENAS's architecture update: an LSTM controller trained by REINFORCE on the validation reward.

    The defaults are the CIFAR-10 micro search of the ENAS code (github melodyguan/enas,
    scripts/cifar10_micro_search.sh and src/cifar10/main.py); the NAS-Bench-201 recipe
    (conf/search_recipe/enas_nb201.yaml) sets AutoDL-Projects' values.

    Args:
        lstm_size, lstm_layers: the controller's LSTM.
        tanh_constant: input logits become ``tanh_constant * tanh(logits / temperature)``;
            ``None``: no squashing.
        op_tanh_reduce: op logits use ``tanh_constant / op_tanh_reduce``.
        temperature: divides the logits first; ``None``: 1.
        favoured_ops: ``CellController``'s biased ops (unused by ``EdgeController``).
        lr: the controller's Adam learning rate.
        baseline_decay, baseline_init: the reward's moving-average baseline (``None``: starts at
            the first cell's accuracy).
        entropy_weight: weight of the entropy bonus in the reward.
        controller_steps: controller Adam steps after each pass of the shared weights.
        num_aggregate: sampled cells averaged in each step.
        grad_clip: the controller's gradient-norm clip (0: none).
        reward_bn: BatchNorm while rewarding: ``train`` (each batch's statistics) or ``eval``.
        reward_augment: augment the reward batches as the training batches.
        candidates: cells sampled from the controller to derive each epoch's cell.
        final_candidates: cells sampled after the last epoch; ``None``: ``candidates``.
        score_batches: validation batches each candidate is scored on.
    """

    reads_val_batches = False  # the weight steps train the sampled cell on the training batch alone

    def __init__(
        self,
        lstm_size: int = 64,  # enas src/cifar10/main.py:153: lstm_size=64
        lstm_layers: int = 1,  # enas main.py:154: lstm_num_layers=1
        tanh_constant: float | None = 1.10,  # enas scripts/cifar10_micro_search.sh:36
        op_tanh_reduce: float = 2.5,  # enas cifar10_micro_search.sh:37
        temperature: float | None = None,  # enas main.py:75: none (the micro script sets none)
        favoured_ops: Sequence[str] = ("sep_conv_3x3", "sep_conv_5x5"),  # enas micro_controller.py:100-109
        lr: float = 0.0035,  # enas cifar10_micro_search.sh:35: 0.0035 (the paper writes 0.00035; the code wins)
        baseline_decay: float = 0.99,  # enas main.py:72 (the script keeps it)
        baseline_init: float | None = 0.0,  # enas micro_controller.py:241: the baseline starts at 0
        entropy_weight: float = 1e-4,  # enas cifar10_micro_search.sh:30
        controller_steps: int = 30,  # enas cifar10_micro_search.sh:34: 30 steps a phase ...
        num_aggregate: int = 10,  # ... of 10 cells each (sh:33, main.py:279-280)
        grad_clip: float = 0.0,  # enas main.py:143-169: the controller gets no clip_mode, so no clipping
        reward_bn: str = "train",  # enas micro_child.py:804: the reward pass runs is_training=True
        reward_augment: bool = False,  # enas micro_child.py:773: build_valid_rl(shuffle=False), no augmentation
        candidates: int = 10,  # enas main.py:308-327: 10 sampled cells, each on its own validation batch
        final_candidates: int | None = None,  # enas: the same 10 after the last epoch
        score_batches: int = 1,  # enas: one validation batch per sampled cell
    ) -> None:
        if lstm_size < 1 or lstm_layers < 1:
            raise UserError(
                f"search.update: need lstm_size >= 1 and lstm_layers >= 1, got {lstm_size}, {lstm_layers}"
            )
        if lr <= 0 or not 0 <= baseline_decay < 1 or entropy_weight < 0 or grad_clip < 0:
            raise UserError(
                "search.update: need lr > 0, 0 <= baseline_decay < 1, entropy_weight >= 0, grad_clip >= 0, got "
                f"{lr}, {baseline_decay}, {entropy_weight}, {grad_clip}"
            )
        if (tanh_constant is not None and tanh_constant <= 0) or op_tanh_reduce <= 0:
            raise UserError(
                f"search.update: need tanh_constant > 0 (or null) and op_tanh_reduce > 0, got "
                f"{tanh_constant}, {op_tanh_reduce}"
            )
        if temperature is not None and temperature <= 0:
            raise UserError(f"search.update.temperature={temperature}: must be > 0 (or null)")
        if controller_steps < 1:
            raise UserError(f"search.update.controller_steps={controller_steps}: must be >= 1")
        if num_aggregate < 1:
            raise UserError(f"search.update.num_aggregate={num_aggregate}: must be >= 1")
        if candidates < 1:
            raise UserError(f"search.update.candidates={candidates}: must be >= 1 (cells sampled to derive)")
        if final_candidates is not None and final_candidates < 1:
            raise UserError(f"search.update.final_candidates={final_candidates}: must be >= 1 (or null)")
        if score_batches < 1:
            raise UserError(f"search.update.score_batches={score_batches}: must be >= 1")
        if reward_bn not in ("eval", "train"):
            raise UserError(f"search.update.reward_bn={reward_bn!r}: must be eval or train")
        self.lstm_size = lstm_size
        self.lstm_layers = lstm_layers
        self.tanh_constant = tanh_constant
        self.op_tanh_reduce = op_tanh_reduce
        self.temperature = temperature
        self.favoured_ops = list(favoured_ops)
        self.lr = lr
        self.baseline_decay = baseline_decay
        self.baseline_init = baseline_init
        self.entropy_weight = entropy_weight
        self.controller_steps = controller_steps
        self.num_aggregate = num_aggregate
        self.grad_clip = grad_clip
        self.reward_bn = reward_bn
        self.reward_augment = reward_augment
        self.candidates = candidates
        self.final_candidates = final_candidates
        self.score_batches = score_batches

    def check(self, search: SearchSettings) -> None:
        check_sampled_space(search, "enas")

    def controller(self, space: Any) -> nn.Module:
        """The space's controller: ``CellController`` for a DARTS-style cell space, else ``EdgeController``."""
        shape: dict[str, Any] = dict(
            lstm_size=self.lstm_size,
            lstm_layers=self.lstm_layers,
            tanh_constant=self.tanh_constant,
            op_tanh_reduce=self.op_tanh_reduce,
            temperature=self.temperature,
        )
        if isinstance(space, CifarCellSpace):
            return CellController(space.nodes, space.choosable_ops, favoured_ops=self.favoured_ops, **shape)
        sizes = space.decisions()
        if len(set(sizes)) != 1:
            raise UserError(
                f"search=enas: space {space.name!r} has decisions of different sizes {sizes}; the edge "
                "controller picks one op per edge from one op set"
            )
        return EdgeController(len(sizes), sizes[0], **shape)

    def stepper(
        self, network: OneShotNetwork, trainer: Trainer, *, seed: int, **darts: Any
    ) -> ControllerStepper:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)  # the controller's initial weights, apart from the supernet's
            controller = self.controller(network.space)
        policy = EnasPolicy(
            controller,
            lr=self.lr,
            baseline_decay=self.baseline_decay,
            baseline_init=self.baseline_init,
            entropy_weight=self.entropy_weight,
            num_aggregate=self.num_aggregate,
            grad_clip=self.grad_clip,
            seed=seed + 1,
        )
        return ControllerStepper(
            network,
            trainer,
            policy=policy,
            controller_steps=self.controller_steps,
            reward_bn=self.reward_bn,
            reward_augment=self.reward_augment,
            candidates=self.candidates,
            final_candidates=self.final_candidates,
            score_batches=self.score_batches,
            score_bn=self.reward_bn,
            score_augment=self.reward_augment,
            seed=seed,
            **darts,
        )
