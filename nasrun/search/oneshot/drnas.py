"""DrNAS (Chen, Wang, Cheng, Tang, Hsieh, ICLR 2021): each edge's op weights drawn from a Dirichlet.

The architecture parameters ``alpha`` of an edge give the concentration ``beta = elu(alpha) + 1``
(positive, ``1`` at ``alpha = 0``) of a Dirichlet distribution over the edge's op weights. Every
training forward pass draws fresh weights with the reparameterised (pathwise) sample, so the
architecture gradient flows through the draw (reference: github xiangning-chen/DrNAS,
``utils.py`` ``process_step_vector``, lines 167-175; ``DARTS-space/model_search.py:173-177``).

- ``DirichletSampler`` is the architecture distribution (``search.sampler``).
- ``DirichletKL`` is the optional regulariser (``search.plugins``): ``scale`` times the summed KL
  divergence of each edge's Dirichlet from a Dirichlet anchor of constant concentration
  (``DARTS-space/model_search.py:200-209``, anchor ``Dirichlet(ones)`` at lines 147-148).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from nasrun import UserError
from nasrun.search.oneshot.edges import PartialChannelEdge
from nasrun.search.oneshot.plugin import WIDEN_STREAM, EpochData, EpochStart, OneShotPlugin, Stepper
from nasrun.search.oneshot.widen import Widening
from nasrun.train.runtime import epoch_generator

if TYPE_CHECKING:
    from nasrun.search.oneshot.network import OneShotNetwork
    from nasrun.search.oneshot.plugin import SearchSettings


def concentration(alpha: torch.Tensor) -> torch.Tensor:
    """``[..., n_ops]``: the Dirichlet concentration ``elu(alpha) + 1`` (> 0 for every real ``alpha``)."""
    return F.elu(alpha) + 1.0


class DirichletSampler:
    """Op weights per edge drawn from ``Dirichlet(elu(alpha) + 1)``, reparameterised.

    ``sample`` draws with ``rsample`` (pathwise gradient to ``alpha``). ``mode`` (evaluation-mode
    forward passes) gives the Dirichlet's mean ``beta / sum(beta)``, with no noise; the reference
    draws a sample in evaluation mode too (its ``forward`` has no training switch,
    ``DARTS-space/model_search.py:173-177``), which would make validation accuracy noisy.
    ``expected`` (what the derivation ranks and the history records) is ``softmax(alpha)``, as the
    reference's ``genotype`` (``DARTS-space/model_search.py:251-254``,
    ``201-space/search_model.py:104-106``), not the Dirichlet mean.

    There is no temperature: ``tau`` stays 1 and ``set_epoch`` does nothing.

    ``mask`` (set by ``ProgressiveSchedule`` once it prunes): per cell type, ``[n_edges, n_ops]``
    booleans, the ops each edge keeps; all three weightings are then zero on the others and
    renormalised over the kept ones (the reference's ``process_step_vector``, ``utils.py:177-183``).
    """

    tau: float = 1.0

    def __init__(self) -> None:
        self.mask: dict[str, torch.Tensor] | None = None

    def sample(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._masked({t: Dirichlet(concentration(a)).rsample() for t, a in alphas.items()})

    def mode(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The Dirichlet's mean per edge: ``beta_i / sum_j beta_j``."""
        out = {}
        for t, a in alphas.items():
            beta = concentration(a)
            out[t] = beta / beta.sum(dim=-1, keepdim=True)
        return self._masked(out)

    def expected(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The derivation's weights: ``softmax(alpha)`` per edge, as the reference's ``genotype``."""
        return self._masked({t: F.softmax(a, dim=-1) for t, a in alphas.items()})

    def _masked(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.mask is None:
            return weights
        out = {}
        for t, w in weights.items():
            kept = w * self.mask[t].to(w.device, w.dtype)
            out[t] = kept / kept.sum(dim=-1, keepdim=True)
        return out

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """No schedule: the Dirichlet has no temperature."""


def dirichlet_kl(alphas: Mapping[str, torch.Tensor], anchor: float) -> torch.Tensor:
    """The sum over cell types and edges of ``KL(Dirichlet(elu(alpha) + 1) || Dirichlet(anchor))``."""
    total: torch.Tensor | None = None
    for a in alphas.values():
        beta = concentration(a)
        kl = kl_divergence(Dirichlet(beta), Dirichlet(torch.full_like(beta, anchor))).sum()
        total = kl if total is None else total + kl
    if total is None:
        raise UserError("search.plugins: DirichletKL found no architecture parameters")
    return total


class DirichletKL(OneShotPlugin):
    """``scale * sum KL(Dirichlet(elu(alpha) + 1) || Dirichlet(anchor))``, added to every architecture loss.

    Args:
        scale: the KL term's factor (the reference's ``--reg_scale``).
        anchor: the anchor Dirichlet's concentration, the same for every op (the reference's: 1,
            the uniform distribution over the simplex).
    """

    def __init__(
        self,
        scale: float = 1e-3,  # DrNAS DARTS-space/train_search.py:46 (--reg_scale 1e-3)
        anchor: float = 1.0,  # DrNAS DARTS-space/model_search.py:147-148 (Dirichlet(ones))
    ) -> None:
        if scale < 0:
            raise UserError(f"search.plugins.kl.scale={scale}: must be >= 0")
        if anchor <= 0:
            raise UserError(f"search.plugins.kl.anchor={anchor}: a Dirichlet concentration must be > 0")
        self.scale = scale
        self.anchor = anchor

    def check(self, search: SearchSettings) -> None:
        if not isinstance(search.sampler, DirichletSampler):
            raise UserError(
                "search.plugins.kl: the Dirichlet KL term needs search.sampler to be "
                "nasrun.search.oneshot.drnas.DirichletSampler"
            )

    def arch_penalty(self, network: OneShotNetwork) -> torch.Tensor | None:
        if self.scale == 0:
            return None
        return self.scale * dirichlet_kl(dict(network.arch.alphas.items()), self.anchor)


class ProgressiveSchedule(OneShotPlugin):
    """DrNAS's progressive search: stages that let more channels through fewer ops per edge.

    The search runs ``len(stage_epochs)`` stages over one supernet and one learning-rate schedule.
    Between two stages, each edge keeps its ``ops_kept`` strongest ops by ``alpha`` (the others'
    alphas are zeroed and their weights masked out: ``DirichletSampler.mask``), then every
    partial-channel edge widens its ops from ``C / k_old`` to ``C / k_new`` channels, keeping the
    trained weights and copying some of them into the new channels (``widen.Widening``). The
    weights' optimiser (with its momentum), the alphas' optimiser and the cosine schedule carry on.
    Reference: github xiangning-chen/DrNAS, ``DARTS-space/train_search.py:118-159`` (K 6 then 4, 7
    then 4 ops, 25 + 25 epochs), ``201-space/train_search_progressive.py:189-255`` (K 4 then 2,
    5 then 3 ops, 50 + 50 epochs), ``utils.py:197-208`` (``prune``).

    Args:
        stage_epochs: the epochs of each stage (their sum is ``search.epochs``).
        k: each stage's partial-channel ratio (the first is ``search.edge.k``); must not grow.
        ops_kept: each stage's candidate ops per edge, pruned when the stage starts; the first
            stage's is ``None`` (all); ``None`` later: no pruning then.
    """

    def __init__(
        self,
        stage_epochs: Sequence[int] = (25, 25),  # DrNAS DARTS-space/train_search.py:122
        k: Sequence[int] = (6, 4),  # DrNAS DARTS-space/train_search.py:120
        ops_kept: Sequence[int | None] = (None, 4),  # DrNAS DARTS-space/train_search.py:121 (7: all)
    ) -> None:
        key = "search.plugins.progressive"
        n = len(stage_epochs)
        if n < 1 or len(k) != n or len(ops_kept) != n:
            raise UserError(
                f"{key}: stage_epochs, k and ops_kept need one entry per stage (got {n}, {len(k)}, {len(ops_kept)})"
            )
        if any(e < 1 for e in stage_epochs):
            raise UserError(f"{key}.stage_epochs={list(stage_epochs)}: every stage needs an epoch")
        if any(c < 1 for c in k) or any(b > a for a, b in zip(k, k[1:])):
            raise UserError(f"{key}.k={list(k)}: partial-channel ratios must be >= 1 and must not grow")
        if ops_kept[0] is not None:
            raise UserError(f"{key}.ops_kept[0]={ops_kept[0]}: the first stage searches every op (use null)")
        kept = [c for c in ops_kept if c is not None]
        if any(c < 1 for c in kept) or any(b > a for a, b in zip(kept, kept[1:])):
            raise UserError(f"{key}.ops_kept={list(ops_kept)}: must be >= 1 and must not grow")
        self.stage_epochs = [int(e) for e in stage_epochs]
        self.k = [int(c) for c in k]
        self.ops_kept = list(ops_kept)
        self.stage = 0
        self.seed = 0
        self.sampler: DirichletSampler | None = None
        self.stepper: Stepper | None = None

    def check(self, search: SearchSettings) -> None:
        key = "search.plugins.progressive"
        if not isinstance(search.sampler, DirichletSampler):
            raise UserError(f"{key}: needs search.sampler to be nasrun.search.oneshot.drnas.DirichletSampler")
        if sum(self.stage_epochs) != search.epochs:
            raise UserError(
                f"{key}.stage_epochs={self.stage_epochs}: must add up to search.epochs={search.epochs}"
            )
        if len(search.stages) > 1:
            raise UserError(f"{key}: its stages share one supernet; it does not combine with search.stages")
        channels = getattr(search.space, "channels", None)  # the supernet's widths are multiples of it
        need = math.lcm(*self.k)
        if isinstance(channels, int) and channels % need:
            raise UserError(
                f"{key}.k={self.k}: the stages' partial-channel ratios need space.channels divisible "
                f"by {need}, not {channels} (the reference's DARTS-space search has space.channels=36)"
            )
        self.sampler = search.sampler
        self.seed = search.seed

    def attach(self, stepper: Stepper) -> None:
        key = "search.plugins.progressive"
        edges = self._edges(stepper)
        if not edges:
            raise UserError(f"{key}: needs search.edge to be nasrun.search.oneshot.edges.PartialChannelEdge")
        if edges[0].k != self.k[0]:
            raise UserError(
                f"{key}.k[0]={self.k[0]}: must equal search.edge.k={edges[0].k} (the first stage's)"
            )
        bad = next(((c, e.part * e.k) for c in self.k for e in edges if e.part * e.k % c), None)
        if bad is not None:
            raise UserError(f"{key}.k={self.k}: {bad[0]} does not divide an edge's {bad[1]} channels")
        n_ops = len(next(iter(_network(stepper).arch.alphas.values()))[0])
        if any(c is not None and c > n_ops for c in self.ops_kept):
            raise UserError(f"{key}.ops_kept={self.ops_kept}: an edge has only {n_ops} candidate ops")
        self.stepper = stepper
        self.stage = 0
        assert self.sampler is not None
        self.sampler.mask = None

    def start_epoch(self, stepper: Stepper, epoch: EpochStart) -> None:
        while self.stage + 1 < len(self.stage_epochs) and epoch.epoch >= sum(
            self.stage_epochs[: self.stage + 1]
        ):
            self._next_stage(stepper, epoch.epoch)

    def end_epoch(self, stepper: Stepper, data: EpochData, arch_steps: bool) -> dict[str, Any]:
        return {"progressive_stage": self.stage + 1, "partial_k": self.k[self.stage]}

    def state_dict(self) -> dict[str, Any]:
        assert self.sampler is not None
        return {"stage": self.stage, "mask": self.sampler.mask}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reshape the fresh supernet to the saved stage's widths; the checkpoint's weights follow."""
        assert self.stepper is not None and self.sampler is not None
        while self.stage < state["stage"]:
            self._next_stage(self.stepper, 0)
        self.sampler.mask = state["mask"]

    def _next_stage(self, stepper: Stepper, epoch: int) -> None:
        """Prune each edge to the next stage's ops, widen the edges to its ``k``."""
        assert self.sampler is not None
        s = self.stage + 1
        keep = self.ops_kept[s]
        if keep is not None:
            network = _network(stepper)
            old = self.sampler.mask
            self.sampler.mask = {
                t: prune(alpha, keep, None if old is None else old[t])
                for t, alpha in network.arch.alphas.items()
            }
        if self.k[s] != self.k[s - 1]:
            widening = Widening(stepper.w_opt, epoch_generator(self.seed, epoch, WIDEN_STREAM))
            for edge in self._edges(stepper):
                C = edge.part * edge.k
                new = C // self.k[s]
                for op in edge.mixed.ops:
                    widening.module(op, new)
                edge.k, edge.part, edge.mixed.C = self.k[s], new, new
        self.stage = s

    @staticmethod
    def _edges(stepper: Stepper) -> list[PartialChannelEdge]:
        return [m for m in stepper.module.modules() if isinstance(m, PartialChannelEdge)]


def _network(stepper: Stepper) -> OneShotNetwork:
    return cast("OneShotNetwork", stepper.module)


def prune(alpha: torch.Tensor, keep: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Keep each edge's ``keep`` largest alphas (among those ``mask`` kept), zero the rest, in place.

    ``alpha`` ``[n_edges, n_ops]``; returns the new mask (true: kept). The reference's ``prune``
    (github xiangning-chen/DrNAS, ``utils.py:197-208``): the kept alphas keep their values, the
    pruned ones become 0 (their weights are masked out from then on).
    """
    with torch.no_grad():
        scores = alpha.detach().clone()
        if mask is not None:
            scores[~mask] = -float("inf")
        index = scores.topk(keep, dim=-1).indices
        kept = torch.zeros_like(alpha, dtype=torch.bool).scatter(1, index, True)
        alpha.masked_fill_(~kept, 0.0)
    return kept
