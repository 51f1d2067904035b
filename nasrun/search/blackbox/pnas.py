"""Progressive Neural Architecture Search, Liu et al. ECCV 2018 (``search=pnas``).

The space's decisions come in blocks (``decision_groups()``: a node of the cell). PNAS grows cells
one block at a time: it starts from every 1-block cell, and at each level expands every cell of
its beam by every possible next block, ranks the expansions with a learned predictor, keeps the
best ``beam`` of them and evaluates the top ``k``; the predictor is refit on everything evaluated
before the next level. Once the cell is complete, the search keeps re-ranking the complete
expansions of the last beam with the refit predictor and evaluating the top ``k`` until the
budget is spent.

Adaptation to fixed-size spaces: every evaluated architecture must be complete, so a ``b``-block
cell is evaluated through a completion of its remaining blocks, and it is ranked by the
predictor's mean over ``completions`` uniform completions (the expected score of the prefix).
The one evaluated is the best-predicted of those completions. The predictor is the paper's
ensemble of 5 MLPs, each fit on 4/5 of the data (``nasrun.search.blackbox._predictor``).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import torch

from nasrun import UserError
from nasrun.run_folder import python_rng_state, set_python_rng_state
from nasrun.search.base import DEFAULT_BUDGET, BlackBoxStrategy
from nasrun.search.blackbox._common import Key, one_hot
from nasrun.search.blackbox._predictor import MLPEnsemble
from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype

#: Expansions ranked per level at most; beyond this a uniform subset is ranked (large spaces only:
#: a 256-cell beam of the CIFAR cell space has ~400k one-block expansions).
MAX_EXPANSIONS = 4096


class PNAS(BlackBoxStrategy):
    """Progressive beam search over blocks, guided by an MLP-ensemble predictor.

    Args:
        space: the search space.
        seed: seeds sampling, completions and the predictor.
        budget: number of architectures to evaluate.
        beam: cells kept per level (PNAS's beam size B).
        k: architectures evaluated per level (PNAS's K).
        completions: uniform completions averaged to rank an incomplete cell.
        members: predictor ensemble size.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int = DEFAULT_BUDGET,  # architectures evaluated (nasrun.search.base)
        beam: int = 256,  # PNAS: beam size B = 256
        k: int = 10,  # evaluated per round (PNAS: K = 256 for ~1,200 models; a tenth of a 100 budget)
        completions: int = 16,  # uniform completions averaged to rank an incomplete cell (our adaptation)
        members: int = 5,  # PNAS: ensemble of 5 predictors, each fit on 4/5 of the data
    ) -> None:
        super().__init__(space, seed, budget)
        if beam < 1 or k < 1 or completions < 1 or members < 1:
            raise UserError(
                f"search: beam, k, completions and members must be >= 1, got {beam}, {k}, {completions}, {members}"
            )
        self.beam_size = beam
        self.k = k
        self.completions = completions
        self.predictor = MLPEnsemble(members=members)
        self.sizes = space.decisions()
        self.groups = space.decision_groups()
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.observed: dict[Key, float] = {}
        self.level = 0  # blocks decided in the beam's cells
        self.beam: list[Key] = [()]
        self.queue: list[Key] = []

    def ask(self) -> Genotype:
        self.queue = [q for q in self.queue if q not in self.observed]
        if not self.queue:
            self._plan()
        return self.space.decode(self.queue.pop(0))

    def ask_batch(self, n: int) -> list[Genotype]:
        # A planned round is fixed before any of its architectures is scored (its entries are
        # distinct, so telling one never drops another from the queue); only the next plan needs
        # the scores, so a batch never reaches past the end of the queue.
        out = [self.ask()]  # plans the next round first if the queue is empty
        while len(out) < n and any(q not in self.observed for q in self.queue):
            out.append(self.ask())
        return out

    def tell(self, genotype: Genotype, score: float) -> None:
        self.observed[tuple(self.space.encode(genotype))] = float(score)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": python_rng_state(self.rng),
            "generator": self.generator.get_state(),
            "keys": [list(k) for k in self.observed],
            "scores": list(self.observed.values()),
            "level": self.level,
            "beam": [list(b) for b in self.beam],  # ordered: the order breaks ranking ties
            "queue": [list(q) for q in self.queue],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_python_rng_state(self.rng, state["rng"])
        self.generator.set_state(state["generator"])
        keys = [tuple(int(v) for v in k) for k in state["keys"]]
        self.observed = dict(zip(keys, (float(s) for s in state["scores"]), strict=True))
        self.level = int(state["level"])
        self.beam = [tuple(int(v) for v in b) for b in state["beam"]]
        self.queue = [tuple(int(v) for v in q) for q in state["queue"]]

    def _plan(self) -> None:
        """Expand the beam by one block, rank the expansions, queue the top ``k`` for evaluation."""
        start = sum(self.groups[: self.level])
        block = [range(n) for n in self.sizes[start : start + self.groups[self.level]]]
        expansions = [p + b for p in self.beam for b in itertools.product(*block)]
        if len(expansions) > MAX_EXPANSIONS:
            expansions = self.rng.sample(expansions, MAX_EXPANSIONS)
        # A complete cell has one completion: itself.
        n_comp = self.completions if len(expansions[0]) < len(self.sizes) else 1
        completed = [[self._complete(p) for _ in range(n_comp)] for p in expansions]
        if self.observed:
            keys = list(self.observed)
            self.predictor.fit(
                one_hot(self.space, keys),
                torch.tensor([self.observed[k] for k in keys], dtype=torch.float64),
                self.generator,
            )
            flat = [c for cs in completed for c in cs]
            pred, _ = self.predictor.predict(one_hot(self.space, flat))
            pred = pred.view(len(expansions), n_comp)
            value = pred.mean(1)
            # Within a prefix, evaluate the completion the predictor likes best (stable sort:
            # ties keep sampling order, so the plan is reproducible).
            completed = [
                [cs[int(j)] for j in torch.argsort(-row, stable=True)]
                for cs, row in zip(completed, pred, strict=True)
            ]
            order = [int(i) for i in torch.argsort(-value, stable=True)]
        else:  # level 1, nothing to learn from yet: a random order, as the paper trains all
            order = list(range(len(expansions)))
            self.rng.shuffle(order)
        self.queue = self._pick([completed[i] for i in order])
        if self.level + 1 < len(self.groups):
            self.beam = [expansions[i] for i in order[: self.beam_size]]
            self.level += 1
        # At the last block the beam stays: each round re-ranks its complete expansions.

    def _pick(self, ranked: list[list[Key]]) -> list[Key]:
        """Up to ``k`` unevaluated architectures, walking the ranked prefixes round-robin."""
        picked: list[Key] = []
        for depth in range(len(ranked[0])):
            for cs in ranked:
                if len(picked) == self.k:
                    return picked
                if cs[depth] not in self.observed and cs[depth] not in picked:
                    picked.append(cs[depth])
        if not picked:  # every ranked cell is evaluated: spend the query on a fresh random one
            picked.append(self._complete(()))
        return picked

    def _complete(self, prefix: Key) -> Key:
        return prefix + tuple(self.rng.randrange(n) for n in self.sizes[len(prefix) :])
