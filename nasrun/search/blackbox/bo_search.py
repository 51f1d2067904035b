"""Bayesian optimisation over architectures with BoTorch (``search=bo``).

A Gaussian process models the score as a function of an architecture's categorical decisions
(every space offers that view, so this needs no space-specific features). Its kernel is the
categorical "overlap" kernel ``exp(-mean_d [x_d != x'_d] / l_d)`` (BoTorch's ``CategoricalKernel``,
as in COMBO/CoCaBO, Ru et al. 2020): architectures that share more decisions are more alike, with
one learned relevance per decision. Each step conditions the GP on everything evaluated and
evaluates the architecture with the largest expected improvement (log form, Ament et al. 2023)
among a discrete candidate pool: every
single-decision neighbour of the best architectures so far plus uniform samples. Proposing from
the neighbourhoods of the incumbents is what makes BO sample-efficient on NAS benchmarks (White
et al., "BANANAS", AAAI 2021, mutates the best architectures); the random part keeps exploring.

Evaluated architectures are never proposed again. Before ``n_init`` evaluations there is nothing
to fit, so those are uniform samples. The kernel hyperparameters are refit by maximum likelihood
every ``refit_every`` evaluations and reused in between (they move slowly once a few dozen points
are in, and the fit is most of the cost of a step).
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import torch

from nasrun import UserError
from nasrun.run_folder import python_rng_state, set_python_rng_state
from nasrun.search.base import DEFAULT_BUDGET, BlackBoxStrategy
from nasrun.search.blackbox._common import Key, neighbours, sample_unseen, sample_unseen_many, top_k
from nasrun.space.base import SearchSpace
from nasrun.space.genotype import Genotype


class BayesianOptimization(BlackBoxStrategy):
    """GP-based BO with log expected improvement over a pool of candidate architectures.

    Args:
        space: the search space.
        seed: seeds the initial design, the random candidates and the GP fitting.
        budget: number of architectures to evaluate.
        n_init: uniform random architectures evaluated before the first GP fit.
        n_parents: the best architectures whose single-decision neighbours are candidates.
        n_random: uniform random candidates added to each pool.
        refit_every: evaluations between two maximum-likelihood fits of the GP hyperparameters.
    """

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        budget: int = DEFAULT_BUDGET,  # architectures evaluated (nasrun.search.base)
        n_init: int = 10,  # random architectures before the first GP fit (BANANAS, White et al. 2021: 10)
        n_parents: int = 10,  # incumbents whose one-decision neighbours are candidates (BANANAS: top 10)
        n_random: int = 100,  # uniform candidates per step, for exploration (BANANAS: 100 per step)
        refit_every: int = 10,  # evaluations between hyperparameter fits (BANANAS refits every 10 queries)
    ) -> None:
        super().__init__(space, seed, budget)
        if n_init < 2 or n_parents < 1 or n_random < 0 or refit_every < 1:
            raise UserError(
                f"search: need n_init >= 2, n_parents >= 1, n_random >= 0, refit_every >= 1; "
                f"got {n_init}, {n_parents}, {n_random}, {refit_every}"
            )
        self.n_init = n_init
        self.n_parents = n_parents
        self.n_random = n_random
        self.refit_every = refit_every
        self.rng = random.Random(seed)
        self.observed: dict[Key, float] = {}
        self.hyper: dict[str, torch.Tensor] = {}  # fitted GP hyperparameters (raw), reused between fits

    def ask(self) -> Genotype:
        seen = set(self.observed)
        if len(self.observed) < self.n_init:
            return self.space.decode(sample_unseen(self.space, self.rng, seen))
        pool = self._candidates(seen)
        if not pool:
            return self.space.decode(sample_unseen(self.space, self.rng, seen))
        scores = self._acquisition(pool)
        return self.space.decode(pool[int(torch.argmax(scores))])

    def ask_batch(self, n: int) -> list[Genotype]:
        # The initial design is uniform, so it needs no scores (each sample only avoids the ones
        # before it); every later proposal maximises an acquisition fit to all scores, so comes alone.
        m = min(n, self.n_init - len(self.observed))
        if m <= 1:
            return [self.ask()]
        return [self.space.decode(c) for c in sample_unseen_many(self.space, self.rng, set(self.observed), m)]

    def tell(self, genotype: Genotype, score: float) -> None:
        self.observed[tuple(self.space.encode(genotype))] = float(score)

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": python_rng_state(self.rng),
            "keys": [list(k) for k in self.observed],
            "scores": list(self.observed.values()),
            "hyper": dict(self.hyper),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_python_rng_state(self.rng, state["rng"])
        keys = [tuple(int(v) for v in k) for k in state["keys"]]
        self.observed = dict(zip(keys, (float(s) for s in state["scores"]), strict=True))
        self.hyper = dict(state["hyper"])

    def _candidates(self, seen: set[Key]) -> list[Key]:
        """Unevaluated neighbours of the incumbents, then random samples; deduplicated, ordered."""
        pool: dict[Key, None] = {}
        for parent in top_k(self.observed, self.n_parents):
            for n in neighbours(self.space, parent):
                if tuple(n) not in seen:
                    pool[tuple(n)] = None
        for _ in range(self.n_random):
            c = tuple(sample_unseen(self.space, self.rng, seen))
            if c not in seen:
                pool[c] = None
        return list(pool)

    def _acquisition(self, pool: list[Key]) -> torch.Tensor:
        """Log expected improvement of every candidate under a GP fit to the observations."""
        # Heavy imports stay here so that importing the strategy (e.g. for `--help`) is cheap.
        from nasrun.bo import ignore_import_warnings

        ignore_import_warnings()  # before GPyTorch's first import
        from botorch.acquisition.analytic import LogExpectedImprovement
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.kernels.categorical import CategoricalKernel
        from gpytorch.kernels import ScaleKernel
        from gpytorch.mlls import ExactMarginalLogLikelihood

        X = torch.tensor(list(self.observed), dtype=torch.float64)  # [n, D] choice indices
        Y = torch.tensor(list(self.observed.values()), dtype=torch.float64).unsqueeze(-1)
        refit = not self.hyper or len(self.observed) % self.refit_every == 0
        # A few dozen points make matrices so small that thread start-up dominates (and threads
        # oversubscribe a shared CPU badly); the restarts of a failed fit draw random
        # hyperparameters, so the global generator is forked and seeded per step for reproducibility.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                torch.manual_seed(self.seed * 1_000_003 + len(self.observed))
                warnings.simplefilter("ignore")  # fit warnings fall back to the prior fit: not actionable
                # SingleTaskGP standardises the outputs itself; the inputs are categories, not
                # coordinates, so no input transform.
                model = SingleTaskGP(
                    X, Y, covar_module=ScaleKernel(CategoricalKernel(ard_num_dims=X.shape[1]))
                )
                if refit:
                    fit_gpytorch_mll(
                        ExactMarginalLogLikelihood(model.likelihood, model),
                        optimizer_kwargs={"options": {"maxiter": 100}},
                    )
                    self.hyper = {
                        k: v.detach().clone()
                        for k, v in model.state_dict().items()
                        if k.split(".")[-1].startswith("raw_")
                    }
                else:
                    model.load_state_dict(self.hyper, strict=False)
            model.eval()
            with torch.no_grad():
                # With noisy scores the incumbent is the best posterior mean at an observed point.
                best_f = model.posterior(X).mean.max()
                acq = LogExpectedImprovement(model, best_f=best_f)
                return acq(torch.tensor(pool, dtype=torch.float64).unsqueeze(1))
        finally:
            torch.set_num_threads(threads)
