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

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from nasrun import UserError
from nasrun.search.oneshot.plugin import OneShotPlugin

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
    """

    tau: float = 1.0

    def sample(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {t: Dirichlet(concentration(a)).rsample() for t, a in alphas.items()}

    def mode(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The Dirichlet's mean per edge: ``beta_i / sum_j beta_j``."""
        out = {}
        for t, a in alphas.items():
            beta = concentration(a)
            out[t] = beta / beta.sum(dim=-1, keepdim=True)
        return out

    def expected(self, alphas: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The derivation's weights: ``softmax(alpha)`` per edge, as the reference's ``genotype``."""
        return {t: F.softmax(a, dim=-1) for t, a in alphas.items()}

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
