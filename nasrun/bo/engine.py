"""The ask/tell Bayesian-optimisation engine behind the Hydra sweeper, usable without Hydra.

    >>> space, _ = parse_overrides(["x=interval(-5, 10)", "y=interval(0, 15)"])
    >>> bo = BayesOpt(space, BOSettings(direction=Direction.minimize, seed=0))
    >>> for _ in range(20):
    ...     (trial,) = bo.ask()
    ...     bo.tell(trial.id, branin(**trial.params))
    >>> bo.best().params

State lives in the ``TrialStore`` (SQLite file or memory): a new ``BayesOpt`` on an existing store
carries on where the old one stopped. The first ``n_initial`` trials are scrambled Sobol points;
after that every ``ask`` fits a GP to the completed trials. Given a budget, the trials up to
``explore_fraction`` of it explore (``exploration``: joint entropy search by default, or Thompson
sampling); the rest maximise the acquisition. Both phases see the trials still running as pending
points; for a deterministic objective (``noisy=False``) the model behind the acquisition nearly
interpolates.
Failed trials enter the model at the worst value observed so far, so the model steers away from
them instead of proposing them again.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch.quasirandom import SobolEngine

from nasrun import UserError
from nasrun.bo import _botorch
from nasrun.bo.settings import BOSettings, Direction
from nasrun.bo.space import SearchSpace
from nasrun.bo.store import Trial, TrialState, TrialStore

log = logging.getLogger(__name__)

# Re-draws of a random point when a proposal repeats an earlier trial exactly (discrete spaces).
_MAX_REDRAWS = 100


class BayesOpt:
    """Ask/tell Bayesian optimisation over a ``SearchSpace``.

    Args:
        space: What to search.
        settings: Model, acquisition and budget settings.
        store: Where trials live; a fresh in-memory store by default.
        budget: Total trials planned (the sweeper's ``n_trials``); sets the length of the
            Thompson-sampling phase. ``None``: no such phase, the acquisition throughout.

    Raises:
        UserError: If ``store`` holds trials of a different search space or direction.
    """

    def __init__(
        self,
        space: SearchSpace,
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

    def ask(self, n: int = 1) -> list[Trial]:
        """Proposes ``n`` new trials, chosen jointly with every trial still pending or running.

        Args:
            n: Number of trials.

        Returns:
            ``n`` PENDING trials, already stored.
        """
        trials = self.store.trials()
        proposals: list[list[float]] = []
        n_sobol = max(0, min(n, self.n_initial - len(trials)))
        observed = [t for t in trials if t.state in (TrialState.COMPLETED, TrialState.FAILED)]
        if not any(t.state is TrialState.COMPLETED for t in observed):
            n_sobol = n  # nothing to model yet (e.g. every initial trial failed): keep exploring
        if n_sobol:
            proposals += [self.space.snap(x) for x in self._sobol(n_sobol).tolist()]
        if n - n_sobol:
            proposals += self._propose(trials, proposals, n - n_sobol)
        seen = {self._key(t.x) for t in trials}
        out = []
        for x in proposals:
            x = self._unique(x, seen)
            seen.add(self._key(x))
            out.append(self.store.add(self.space.decode(x), x))
        return out

    def tell(self, trial_id: int, value: float | None = None, error: str | None = None) -> Trial:
        """Records the end of a trial.

        Args:
            trial_id: Id from ``ask``.
            value: The objective, as the task returned it; NaN or inf marks the trial FAILED.
            error: Why the trial failed; given with ``value=None``.

        Returns:
            The updated trial, state COMPLETED or FAILED.
        """
        trial = self.store.get(trial_id)
        trial.finished = time.time()
        if value is not None and math.isfinite(value):
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
        drawn = int(self.store.get_meta("sobol_drawn") or 0)
        engine = SobolEngine(self.space.dim, scramble=True, seed=self.settings.seed)
        engine.fast_forward(drawn)
        points = engine.draw(n, dtype=torch.float64)
        self.store.set_meta("sobol_drawn", str(drawn + n))
        return _botorch.unit_to_space(points, self.space)

    def _propose(self, trials: list[Trial], extra_pending: list[list[float]], q: int) -> list[list[float]]:
        """``q`` points from the model: fit, build the acquisition, optimise with pending points."""
        sign = 1.0 if self.settings.direction == Direction.maximize else -1.0
        done = [t for t in trials if t.state is TrialState.COMPLETED]
        failed = [t for t in trials if t.state is TrialState.FAILED]
        pending = [t.x for t in trials if t.state in (TrialState.PENDING, TrialState.RUNNING)] + extra_pending
        y = [sign * float(t.value) for t in done if t.value is not None]
        # Impute failures at the worst value seen: the GP then predicts poor results near them.
        y += [min(y)] * len(failed)
        X = torch.tensor([t.x for t in done + failed], dtype=torch.float64)
        Y = torch.tensor(y, dtype=torch.float64).unsqueeze(-1)
        X_pending = torch.tensor(pending, dtype=torch.float64) if pending else None
        # Reproducible yet different at each step: seeded from the sweep seed and the trial count.
        step_seed = self.settings.seed * 100_003 + len(trials)
        generator = torch.Generator().manual_seed(step_seed)
        threads = torch.get_num_threads()
        # GP matrices here are at most a few hundred rows: extra threads only add synchronisation,
        # which on a busy machine (a sweep's own trials) slows fitting several-fold.
        torch.set_num_threads(1)
        # BoTorch's optimisers draw from torch's global generator: seed it, then restore the caller's.
        with torch.random.fork_rng():
            torch.manual_seed(step_seed)
            try:
                explore = self._explore_phase(len(trials) + len(extra_pending))
                model = _botorch.fit_model(X, Y, self.space, self.settings, self._hyper, refine=not explore)
                self._hyper = _botorch.hyperparameters(model)
                if explore:
                    return _botorch.explore(
                        model, X, Y, self.space, self.settings, q, X_pending, generator
                    ).tolist()
                acqf = _botorch.build_acquisition(model, X, Y, self.settings, self.space.dim)
                return _botorch.optimize(
                    acqf, X, Y, self.space, self.settings, q, X_pending, generator
                ).tolist()
            finally:
                torch.set_num_threads(threads)

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
