"""The supernet of a one-shot search: a space's skeleton with its architecture parameters.

``OneShotNetwork`` registers its architecture parameters in a module of their own (``arch``), so
``weight_parameters()`` and ``arch_parameters()`` are disjoint and cover every parameter by
construction, whatever a method adds: no parameter is recognised by its name. How the edges'
weights come from those parameters is the architecture distribution's (``samplers.py``): the
softmax by default, a Gumbel or Dirichlet draw for the methods that sample.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nasrun.search.oneshot.edges import DenseEdge
from nasrun.search.oneshot.samplers import ArchSampler
from nasrun.space.base import EdgeFactory, OneShotSpace
from nasrun.space.genotype import Genotype


class ArchParameters(nn.Module):
    """The architecture parameters, and only they.

    Args:
        cell_types: one op-weight matrix per type.
        n_edges: edges per cell.
        n_ops: candidate ops per edge.
        edge_normalisation: also one weight per edge (PC-DARTS's β), softmaxed over each node's
            incoming edges.
        init_std: initial values are ``init_std * N(0, 1)`` (DARTS reference code: 1e-3).
    """

    def __init__(
        self,
        cell_types: Sequence[str],
        n_edges: int,
        n_ops: int,
        edge_normalisation: bool,
        init_std: float = 1e-3,
    ) -> None:
        super().__init__()
        self.alphas = nn.ParameterDict(
            {t: nn.Parameter(init_std * torch.randn(n_edges, n_ops)) for t in cell_types}
        )
        self.betas = (
            nn.ParameterDict({t: nn.Parameter(init_std * torch.randn(n_edges)) for t in cell_types})
            if edge_normalisation
            else None
        )


class OneShotNetwork(nn.Module):
    """A space's supernet skeleton with its architecture parameters.

    Args:
        space: a space with one-shot support.
        num_classes: classifier outputs.
        in_channels: image channels.
        make_edge: how each edge mixes its ops.
        edge_normalisation: PC-DARTS's per-edge weights.
        edge_ops: per cell type, each edge's candidate ops (the same number on every edge); default:
            the space's ops everywhere. Methods that prune candidates per edge pass their own.
        layers: the supernet's depth, if not the space's (methods that deepen it by stages).
        sampler: how the edges' weights are drawn from the alphas on each forward pass; ``None``:
            their softmax (DARTS).
        derivation: the space's derivation rule (``darts`` or ``every_edge``; ``space.derive``).
    """

    def __init__(
        self,
        space: OneShotSpace,
        num_classes: int,
        in_channels: int,
        make_edge: EdgeFactory,
        edge_normalisation: bool = False,
        edge_ops: dict[str, list[list[str]]] | None = None,
        layers: int | None = None,
        sampler: ArchSampler | None = None,
        derivation: str = "darts",
    ) -> None:
        super().__init__()
        self.space = space
        self.sampler = sampler
        self.derivation = derivation
        # The edge weights of the last forward pass (a sample, with a sampler): the resource term
        # of a single-level step reads the very sample that its loss was computed with.
        self.last_weights: dict[str, torch.Tensor] | None = None
        # A whole cell's weights that a method sets for the next forward passes (RSPS, ENAS).
        self.fixed: dict[str, torch.Tensor] | None = None
        # Offsets added to the edges' weights inside ``perturbed`` (SDARTS's perturbations).
        self.offsets: dict[str, torch.Tensor] | None = None
        self.topology = space.topology()
        self.node_slices = self.topology.node_slices()
        if edge_ops is None:
            edge_ops = self.topology.full_edge_ops()
        self.edge_ops = edge_ops
        extra = {"layers": layers} if layers is not None else {}
        self.skeleton = space.build_supernet(
            num_classes=num_classes, in_channels=in_channels, make_edge=make_edge, edge_ops=edge_ops, **extra
        )
        # Created after the skeleton, so that a seed gives DARTS's initial weights and alphas.
        n_ops = len(next(iter(edge_ops.values()))[0])
        self.arch = ArchParameters(
            self.topology.cell_types, len(self.topology.edges), n_ops, edge_normalisation
        )

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.arch.parameters())

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.skeleton.parameters())

    def op_weights(self) -> dict[str, torch.Tensor]:
        """Per cell type, ``[n_edges, n_ops]``: the architecture distribution's expected op weights.

        The softmax of each edge's alphas, or the sampler's own (``ArchSampler.expected``: the
        Dirichlet's mean for DrNAS); derivation ranks these and the history records them.
        """
        alphas = dict(self.arch.alphas.items())
        expected = getattr(self.sampler, "expected", None)
        if expected is not None:
            return expected(alphas)  # type: ignore[no-any-return]
        return {t: F.softmax(a, dim=-1) for t, a in alphas.items()}

    def edge_scales(self) -> dict[str, torch.Tensor] | None:
        """Per cell type, ``[n_edges]``: each node's softmax over its incoming edges' β, or ``None``."""
        if self.arch.betas is None:
            return None
        return {
            t: torch.cat([F.softmax(b[s], dim=-1) for s in self.node_slices])
            for t, b in self.arch.betas.items()
        }

    def forward_weights(self) -> dict[str, torch.Tensor]:
        """Per cell type, ``[n_edges, n_ops]``: what the edges get on this forward pass.

        The cell set by ``set_architecture`` if any; else the sampler's draw (training mode) or its
        noise-free weights (evaluation mode); else the softmax of the alphas.
        """
        if self.fixed is not None:
            return self.fixed
        if self.sampler is None:
            weights = self.op_weights()
        else:
            alphas = dict(self.arch.alphas.items())
            weights = self.sampler.sample(alphas) if self.training else self.sampler.mode(alphas)
        if self.offsets is not None:
            weights = {t: w + self.offsets[t] for t, w in weights.items()}
        return weights

    @contextlib.contextmanager
    def perturbed(self, offsets: dict[str, torch.Tensor]) -> Iterator[None]:
        """Inside the block, the edges get their weights plus ``offsets`` (per cell type ``[n_edges, n_ops]``).

        The offsets are added after the softmax (or the sampler's draw), unnormalised: a method
        that perturbs the architecture weights (SDARTS) runs its weight steps inside this block.
        """
        self.offsets = offsets
        try:
            yield
        finally:
            self.offsets = None

    def set_architecture(self, weights: dict[str, torch.Tensor] | None) -> None:
        """Run the cell given by ``weights`` (per cell type ``[n_edges, n_ops]``) until changed; ``None``: stop."""
        self.fixed = weights

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """The loop's hook at the start of ``epoch`` (from 0) of ``epochs``: the sampler's temperature."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch, epochs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.last_weights = self.forward_weights()
        return self.skeleton(x, self.last_weights, self.edge_scales())

    @torch.no_grad()
    def strengths(self) -> dict[str, torch.Tensor]:
        """What derivation ranks: op weights, times the edge weights where edges are normalised."""
        weights = {t: w.float().cpu() for t, w in self.op_weights().items()}
        scales = self.edge_scales()
        if scales is not None:
            weights = {t: w * scales[t].float().cpu()[:, None] for t, w in weights.items()}
        return weights

    def genotype(self, max_skips: int | None = None) -> Genotype:
        """The derived cell; with ``max_skips``, the normal cell keeps at most that many skip-connects.

        P-DARTS's rule (Chen et al. 2019): while the normal cell has too many, the weakest of its
        skip-connects loses its skip weight and the cell is derived again (the edge then takes its
        next-best op, or the node another input).
        """
        strengths = self.strengths()
        genotype = self.space.derive(strengths, self.edge_ops, self.derivation)
        if max_skips is None:
            return genotype
        W, ops = strengths["normal"], self.edge_ops["normal"]
        starts = [sl.start for sl in self.node_slices]
        for _ in range(W.numel()):  # each round demotes one skip for good: a bound, never reached
            skips = [
                (starts[k // 2] + j, ops[starts[k // 2] + j].index(op))
                for k, (op, j) in enumerate(genotype.normal)
                if op == "skip_connect" and W[starts[k // 2] + j, ops[starts[k // 2] + j].index(op)] >= 0
            ]
            if len(skips) <= max_skips:
                break
            e, k = min(skips, key=lambda ek: float(W[ek[0], ek[1]]))
            W[e, k] = -0.5  # below every real op, above `none` (which derivation never picks)
            genotype = self.space.derive(strengths, self.edge_ops, self.derivation)
        return genotype

    def pruned_ops(self, keep: int) -> dict[str, list[list[str]]]:
        """Each edge's ``keep`` strongest candidate ops, in their current order (P-DARTS's pruning).

        ``none`` competes like any op: P-DARTS drops each edge's weakest ops by their softmax
        weight, ``none``'s included, between stages, and sets ``none`` aside only when it derives
        the final cell (chenxin061/pdarts train_search.py:181-185, 211-218).
        """
        out: dict[str, list[list[str]]] = {}
        for kind, W in self.strengths().items():
            rows = []
            for e, names in enumerate(self.edge_ops[kind]):
                order = sorted(range(len(names)), key=lambda k: -float(W[e, k]))
                rows.append([names[k] for k in sorted(order[:keep])])
            out[kind] = rows
        return out

    def set_skip_dropout(self, p: float) -> None:
        """Dropout on the outputs of every identity skip-connect (P-DARTS)."""
        for m in self.skeleton.modules():
            if isinstance(m, DenseEdge):
                m.skip_dropout = p

    def set_drop_path(self, p: float) -> int:
        """Drop-path at rate ``p`` on the mixed output of every DARTS edge in training; returns their count."""
        edges = [m for m in self.skeleton.modules() if isinstance(m, DenseEdge)]
        for m in edges:
            m.drop_path = p
        return len(edges)

    def arch_weights(self) -> dict[str, Any]:
        """The architecture weights for history records: softmaxed op weights (and edge weights)."""
        out: dict[str, Any] = {t: w.detach().float().cpu().tolist() for t, w in self.op_weights().items()}
        scales = self.edge_scales()
        if scales is not None:
            out["edges"] = {t: s.detach().float().cpu().tolist() for t, s in scales.items()}
        return out


#: P-DARTS's decay of the skip-connect dropout once architecture steps begin, ``exp(-0.2 e)``
#: (reference train_search.py:145, ``scale_factor``).
SKIP_DROPOUT_DECAY = 0.2


@dataclass(frozen=True)
class Stage:
    """One stage of a search: the supernet's depth, its epochs and what changes between stages."""

    layers: int | None  # None: the space's
    epochs: int
    warmup_epochs: int  # first epochs without architecture steps
    ops_kept: int | None  # candidate ops per edge, pruned from the stage before; None: all
    skip_dropout: float  # the stage's dropout rate after skip-connects (scheduled: skip_dropout_at)

    def skip_dropout_at(self, epoch: int) -> float:
        """The skip-connect dropout of the stage's ``epoch`` (from 0), P-DARTS's schedule.

        Warm-up epochs decay it linearly, ``p (E - e - 1) / E`` over the stage's ``E`` epochs; from
        the first epoch with architecture steps, ``w``, it restarts at ``p`` and decays as
        ``p exp(-0.2 (e - w))`` (chenxin061/pdarts train_search.py:152-158).
        """
        if epoch < self.warmup_epochs:
            return self.skip_dropout * (self.epochs - epoch - 1) / self.epochs
        return self.skip_dropout * math.exp(-SKIP_DROPOUT_DECAY * (epoch - self.warmup_epochs))
