"""The ask/tell Bayesian-optimisation engine behind the Hydra sweeper, usable without Hydra.

    >>> space, _ = parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])
    >>> bo = BayesOpt(space, BOSettings(direction=Direction.minimize, seed=0))
    >>> for _ in range(20):
    ...     (trial,) = bo.ask()
    ...     bo.tell(trial.id, branin(**trial.params))
    >>> bo.best().params

State lives in the ``TrialStore`` (a database, or memory): a new ``BayesOpt`` on an existing store
carries on where the old one stopped. The first ``n_initial`` trials are scrambled Sobol points;
after that every ``ask`` fits a GP to the completed trials. Given a budget, the trials up to
``explore_fraction`` of it explore (``exploration``: joint entropy search by default, or Thompson
sampling); the rest maximise the acquisition. Both phases see the trials still running as pending
points; for a deterministic objective (``noisy=False``) the model behind the acquisition nearly
interpolates. With ``model=mcmc`` the GP's hyperparameters are sampled rather than fitted, and
the acquisition is averaged over the samples.
Failed trials enter the model at the worst value observed so far, so the model steers away from
them instead of proposing them again. A pruned trial (stopped early by the sweeper's pruner) is
right-censored: its final value, which it never reached, is taken to be no better than the median
of the completed trials' values, and enters the model as the GP's mean below that bound
(``_model.censored_mean``), not as its last reported value.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch.quasirandom import SobolEngine

from nasrun import UserError
from nasrun.bo._acquisition import build_acquisition
from nasrun.bo._explore import explore, jes_fallback
from nasrun.bo._model import censored_mean, fit_model, hyperparameters
from nasrun.bo._optimize import Proposal, optimize, unit_to_space
from nasrun.bo.settings import BOSettings, Direction, Exploration
from nasrun.bo.space import ParamSpace
from nasrun.bo.store import Trial, TrialState, TrialStore

log = logging.getLogger(__name__)

# Re-draws of a random point when a proposal repeats an earlier trial exactly (discrete spaces).
_MAX_REDRAWS = 100


class BayesOpt:
    """Ask/tell Bayesian optimisation over a ``ParamSpace``.

    Args:
        space: What to search.
        settings: Model, acquisition and budget settings.
        store: Where trials live; a fresh in-memory store by default.
        budget: Total trials planned (the sweeper's ``n_trials``); sets the length of the
            exploration phase. ``None``: no such phase, the acquisition throughout.

    Raises:
        UserError: If ``store`` holds trials of a different search space or direction.
    """

    def __init__(
        self,
        space: ParamSpace,
        settings: BOSettings | None = None,
        store: TrialStore | None = None,
        budget: int | None = None,
    ) -> None:
        self.space = space
        self.budget = budget
        self.settings = settings or BOSettings()
        self.store = store or TrialStore()
        self._check_store()
        self.n_initial = self.settings.n_initial or max(5, 2 * space.dim)
        self._hyper: dict[str, torch.Tensor] | None = None  # last fit's hyperparameters (warm start)
        if self.n_initial < 1:
            raise UserError(f"n_initial must be at least 1, got {self.settings.n_initial}")
        if not 0.0 <= self.settings.explore_fraction <= 1.0:
            raise UserError(f"explore_fraction must be in [0, 1], got {self.settings.explore_fraction}")
        if self.settings.mcmc_samples < 1 or self.settings.mcmc_burn_in < 0:
            raise UserError(
                f"mcmc_samples must be at least 1 and mcmc_burn_in at least 0, got "
                f"{self.settings.mcmc_samples} and {self.settings.mcmc_burn_in}"
            )
        fallback = jes_fallback(space, self.settings)
        if self.settings.exploration is Exploration.jes and fallback and self._explore_phase(0):
            log.info("exploration: Thompson sampling instead of joint entropy search, because %s", fallback)

    def _check_store(self) -> None:
        for key, mine in (
            ("space", self.space.signature()),
            ("direction", Direction(self.settings.direction).value),
        ):
            stored = self.store.get_meta(key)
            if stored is None:
                self.store.set_meta(key, mine)
            elif stored != mine:
                raise UserError(
                    f"storage '{self.store.path}' holds a sweep with a different {key}; "
                    "resume with the same settings or start a new sweep folder"
                )

    # -- the interface ----------------------------------------------------------------------------

    def ask(self, n: int = 1, *, into: list[Trial] | None = None) -> list[Trial]:
        """Proposes ``n`` new trials, chosen jointly with every trial still pending or running.

        Args:
            n: Number of trials.
            into: Trials reserved in the store without a point (``TrialStore.claim``): they get
                the proposals instead of new trials, and ``n`` is their number.

        Returns:
            ``n`` PENDING trials, already stored.
        """
        everything = self.store.trials()
        if into:
            n = len(into)
        first_id = into[0].id if into else len(everything)
        # Reserved trials have no point yet: neither data nor pending points for the model.
        trials = [t for t in everything if t.proposed]
        proposals: list[list[float]] = []
        n_sobol = max(0, min(n, self.n_initial - len(trials)))
        observed = [t for t in trials if t.state in (TrialState.COMPLETED, TrialState.FAILED)]
        if not any(t.state is TrialState.COMPLETED for t in observed):
            n_sobol = n  # nothing to model yet (e.g. every initial trial failed): keep exploring
        if n_sobol:
            proposals += [self.space.snap(x) for x in self._sobol(n_sobol).tolist()]
        if n - n_sobol:
            proposals += self._propose(trials, proposals, n - n_sobol, first_id)
        seen = {self._key(t.x) for t in trials}
        out = []
        for i, x in enumerate(proposals):
            x = self._unique(x, seen)
            seen.add(self._key(x))
            if into:
                trial = into[i]
                trial.params, trial.x = self.space.decode(x), x
                self.store.propose(trial.id, trial.params, x)
                out.append(trial)
            else:
                out.append(self.store.add(self.space.decode(x), x))
        return out

    def tell(
        self,
        trial_id: int,
        value: float | None = None,
        error: str | None = None,
        *,
        pruned_at: int | None = None,
    ) -> Trial:
        """Records the end of a trial.

        Args:
            trial_id: Id from ``ask``.
            value: The objective, as the task returned it; NaN or inf marks the trial FAILED.
            error: Why the trial failed; given with ``value=None``.
            pruned_at: The epoch after which the pruner stopped the trial; ``value`` is then its
                last report (or ``None``), and the trial is PRUNED.

        Returns:
            The updated trial, state COMPLETED, FAILED or PRUNED.
        """
        trial = self.store.get(trial_id)
        trial.finished, trial.owner = time.time(), None
        if pruned_at is not None:
            finite = value is not None and math.isfinite(value)
            trial.state, trial.epoch, trial.error = TrialState.PRUNED, pruned_at, None
            trial.value = float(value) if finite and value is not None else None
        elif value is not None and math.isfinite(value):
            trial.state, trial.value, trial.error = TrialState.COMPLETED, float(value), None
        else:
            trial.state, trial.value = TrialState.FAILED, None
            trial.error = error or f"the objective is {value}"
        self.store.update(trial)
        return trial

    def best(self) -> Trial | None:
        """The completed trial with the best value, or ``None`` before the first one."""
        done = [t for t in self.store.trials() if t.state is TrialState.COMPLETED]
        if not done:
            return None
        sign = 1.0 if self.settings.direction == Direction.maximize else -1.0
        return max(done, key=lambda t: sign * (t.value or 0.0))

    def trials(self) -> list[Trial]:
        """Every trial in proposal order."""
        return self.store.trials()

    # -- machinery --------------------------------------------------------------------------------

    def _sobol(self, n: int) -> torch.Tensor:
        """The next ``n x d`` scrambled Sobol points of this sweep's sequence (continued on resume)."""
        # One transaction: workers sharing the store never draw the same points.
        drawn = self.store.bump_counter("sobol_drawn", n)
        engine = SobolEngine(self.space.dim, scramble=True, seed=self.settings.seed)
        engine.fast_forward(drawn)
        points = engine.draw(n, dtype=torch.float64)
        return unit_to_space(points, self.space)

    def _propose(
        self, trials: list[Trial], extra_pending: list[list[float]], q: int, first_id: int
    ) -> list[list[float]]:
        """``q`` points from a fresh fit: exploration or the acquisition, with the pending points."""
        sign = 1.0 if self.settings.direction == Direction.maximize else -1.0
        done = [t for t in trials if t.state is TrialState.COMPLETED]
        failed = [t for t in trials if t.state is TrialState.FAILED]
        pruned = [t for t in trials if t.state is TrialState.PRUNED]
        pending = [t.x for t in trials if t.state in (TrialState.PENDING, TrialState.RUNNING)] + extra_pending
        y = [sign * float(t.value) for t in done if t.value is not None]
        # Impute failures at the worst value seen: the GP then predicts poor results near them.
        y += [min(y)] * len(failed)
        X = torch.tensor([t.x for t in done + failed], dtype=torch.float64)
        Y = torch.tensor(y, dtype=torch.float64).unsqueeze(-1)
        X_pending = torch.tensor(pending, dtype=torch.float64) if pending else None
        # Reproducible yet different at each step (and for each worker sharing the store): seeded
        # from the sweep seed and the id of the first trial proposed.
        step_seed = self.settings.seed * 100_003 + first_id
        generator = torch.Generator().manual_seed(step_seed)
        threads = torch.get_num_threads()
        # GP matrices here are at most a few hundred rows: extra threads only add synchronisation,
        # which on a busy machine (a sweep's own trials) slows fitting several-fold.
        torch.set_num_threads(1)
        # BoTorch's optimisers draw from torch's global generator: seed it, then restore the caller's.
        with torch.random.fork_rng():
            torch.manual_seed(step_seed)
            try:
                exploring = self._explore_phase(len(trials) + len(extra_pending))
                if pruned:
                    X, Y = self._with_pruned(X, Y, pruned, n_done=len(y) - len(failed))
                model = fit_model(X, Y, self.space, self.settings, self._hyper, refine=not exploring)
                self._hyper = hyperparameters(model)
                proposal = Proposal(self.space, self.settings, X, Y, q, X_pending, generator)
                if exploring:
                    return explore(model, proposal).tolist()
                acqf = build_acquisition(model, X, Y, self.settings, self.space.dim)
                return optimize(acqf, proposal).tolist()
            finally:
                torch.set_num_threads(threads)

    def _with_pruned(
        self, X: torch.Tensor, Y: torch.Tensor, pruned: list[Trial], n_done: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``X``, ``Y`` with each pruned trial imputed as a right-censored observation.

        A pruned trial stopped below its peers, and its last report is not its final value (a
        learning curve still rises). All the model is told is that the final value would not
        have beaten the median of the completed trials' values (``Y``'s completed rows); each
        pruned point enters at the mean of the GP fitted to the other data, truncated to that
        bound (``censored_mean``), so it pulls the surface down where it was stopped without
        claiming a value it never reached.
        """
        # Y holds the completed trials' values first, then the imputed failures.
        bound = float(Y[:n_done].quantile(0.5))
        model = fit_model(X, Y, self.space, self.settings, self._hyper)
        X_pruned = torch.tensor([t.x for t in pruned], dtype=torch.float64)
        y_pruned = censored_mean(model, X_pruned, bound)
        return torch.cat([X, X_pruned]), torch.cat([Y, y_pruned.unsqueeze(-1)])

    def _explore_phase(self, n_proposed: int) -> bool:
        """Whether the next proposal, after ``n_proposed`` trials, belongs to the exploration phase."""
        return self.budget is not None and n_proposed < self.settings.explore_fraction * self.budget

    @staticmethod
    def _key(x: list[float]) -> tuple[float, ...]:
        return tuple(round(v, 12) for v in x)

    def _unique(self, x: list[float], seen: set[tuple[float, ...]]) -> list[float]:
        """``x``, or a random point of the space if ``x`` repeats an earlier trial exactly."""
        if self._key(x) not in seen:
            return x
        for _ in range(_MAX_REDRAWS):
            y = self.space.snap(self._sobol(1)[0].tolist())
            if self._key(y) not in seen:
                return y
        log.warning("the search space seems exhausted: proposing a point that was tried before")
        return x
