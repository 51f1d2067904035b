"""Pruners, per-epoch reports and how the model treats pruned trials, without a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from nasrun.bo import BOSettings, Direction, TrialState, TrialStore, parse_overrides
from nasrun.bo import engine as engine_module
from nasrun.bo._model import censored_mean
from nasrun.bo.engine import BayesOpt
from nasrun.bo.pruners import Pruner, PrunerKind
from nasrun.bo.reporting import HistorySink, TrialPruned, TrialReporter
from nasrun.config.sweeps import task_epochs
from nasrun.run_folder import HistoryLog, read_history

DONE, RUN = TrialState.COMPLETED, TrialState.RUNNING


def median(**kw: Any) -> Pruner:
    return Pruner(PrunerKind.median, Direction.maximize, **{"min_trials": 3, **kw})


def test_median_stops_below_the_completed_median_only() -> None:
    others = [(1, DONE, 50.0), (2, DONE, 60.0), (3, DONE, 70.0), (4, RUN, 99.0)]
    assert "worse than the median 60" in (median().decide(0, 2, 59.0, others) or "")
    assert median().decide(0, 2, 60.0, others) is None  # not worse
    # A running trial's report does not count, so two completed ones are too few here.
    assert median().decide(0, 2, 10.0, others[1:]) is None
    assert median(min_epochs=3).decide(0, 2, 10.0, others) is None  # before min_epochs
    low = Pruner(PrunerKind.median, Direction.minimize, min_trials=3)
    assert low.decide(0, 2, 61.0, others) is not None and low.decide(0, 2, 59.0, others) is None
    assert Pruner(PrunerKind.none, Direction.maximize).decide(0, 2, 0.0, others) is None


def test_asha_rungs_and_promotions() -> None:
    asha = Pruner(PrunerKind.asha, Direction.maximize, min_epochs=1, reduction_factor=3, max_epochs=12)
    assert asha.rungs() == [1, 3, 9] and not asha.checks_at(2)
    # Fewer entrants than the reduction factor: only the best so far goes on.
    assert asha.decide(0, 1, 5.0, []) is None
    assert asha.decide(1, 1, 4.0, [(0, DONE, 5.0)]) is not None
    assert asha.decide(1, 1, 6.0, [(0, DONE, 5.0)]) is None
    # Six entrants, itself included: the top two go on, whatever state the others are in.
    rung = [(i, RUN if i % 2 else DONE, float(v)) for i, v in enumerate([10, 20, 30, 40, 50])]
    assert asha.decide(9, 3, 41.0, rung) is None  # second of six
    assert "not in the top 2 of the 6" in (asha.decide(9, 3, 39.0, rung) or "")
    assert asha.decide(9, 2, 0.0, rung) is None  # no rung at epoch 2


def running(store: TrialStore, x: float) -> Any:
    (trial,) = store.claim("w", budget=100)
    store.propose(trial.id, {"x": x}, [x])
    return store.start([trial])[0]


def test_reporter_stores_reports_and_prunes_the_trial(tmp_path: Path) -> None:
    store = TrialStore(tmp_path / "trials.sqlite")
    for i, finals in enumerate([[40.0, 60.0], [50.0, 70.0], [30.0, 50.0]]):
        done = running(store, 0.1 * i)
        for epoch, v in enumerate(finals, 1):
            assert store.report(done.id, done.job, epoch, v)
        done.state, done.value = TrialState.COMPLETED, finals[-1]
        store.update(done)
    trial = running(store, 0.9)
    reporter = TrialReporter(store, trial, median())
    reporter.report(1, 45.0)  # above the median at epoch 1 (40)
    with pytest.raises(TrialPruned) as info:
        reporter.report(2, 55.0)  # below the median at epoch 2 (60)
    assert info.value.epoch == 2 and info.value.value == 55.0
    got = store.get(trial.id)
    assert got.state is TrialState.PRUNED and got.value == 55.0 and got.epoch == 2
    assert store.curves([trial.id]) == {trial.id: [(1, 45.0), (2, 55.0)]}


def test_a_job_whose_trial_was_requeued_stops_reporting(tmp_path: Path) -> None:
    store = TrialStore(tmp_path / "trials.sqlite")
    trial = running(store, 0.5)
    reporter = TrialReporter(store, trial, median())
    store.release("w")  # its worker gave it back: the job's reports no longer count
    reporter.report(1, 1.0)
    assert not reporter.active and store.curves() == {}


def test_history_log_sinks_report_each_record_after_it_is_written(tmp_path: Path) -> None:
    store = TrialStore(tmp_path / "trials.sqlite")
    trial = running(store, 0.5)
    never = Pruner(PrunerKind.none, Direction.maximize)
    seen: list[dict[str, Any]] = []

    class Spy:
        def append(self, record: dict[str, Any]) -> None:
            seen.append(record)

    sink = HistorySink(TrialReporter(store, trial, never), "val_acc", "epoch")
    log = HistoryLog(tmp_path / "history.jsonl", [], [None, Spy(), sink])
    log.append({"epoch": 1, "val_acc": 12.5})
    log.append({"step": 0, "val_acc": 99.0})  # no epoch: an evaluation, not reported
    assert len(seen) == 2 and len(read_history(tmp_path / "history.jsonl")) == 2
    assert store.curves() == {trial.id: [(1, 12.5)]} and store.get(trial.id).epoch == 1


def test_task_epochs_names_the_objectives_phase() -> None:
    from omegaconf import OmegaConf

    retrain = OmegaConf.create(
        {"trainer": {"epochs": 30}, "retrain": {"enabled": True}, "search": {"epochs": 5}}
    )
    assert task_epochs(retrain) == ("trainer.epochs", 30)
    retrain.retrain.enabled = False
    assert task_epochs(retrain) == ("search.epochs", 5)
    assert task_epochs(OmegaConf.create({"x": 1})) is None


def test_a_pruned_trial_enters_the_model_below_the_completed_median(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its last report (here better than every completed trial) is not fitted as a final value."""
    space, _ = parse_overrides(["x=interval(0, 1)"])
    store = TrialStore()
    bo = BayesOpt(space, BOSettings(n_initial=1, num_restarts=2, raw_samples=32), store)
    for x, v in [(0.1, 1.0), (0.3, 2.0), (0.7, 3.0), (0.9, 4.0)]:
        bo.tell(store.add({"x": x}, [x]).id, v)
    pruned = store.add({"x": 0.5}, [0.5])
    bo.tell(pruned.id, 100.0, pruned_at=2)
    fits: list[tuple[torch.Tensor, torch.Tensor]] = []
    fit = engine_module.fit_model

    def spy(X: torch.Tensor, Y: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        fits.append((X.clone(), Y.clone()))
        return fit(X, Y, *args, **kwargs)

    monkeypatch.setattr(engine_module, "fit_model", spy)
    bo.ask()
    X, Y = fits[-1]  # the model behind the proposal
    assert X.shape == (5, 1) and float(X[-1, 0]) == 0.5
    assert float(Y[-1, 0]) < 2.5  # below the median of 1, 2, 3, 4: a mean truncated there
    assert store.get(pruned.id).state is TrialState.PRUNED and bo.best().value == 4.0


def test_censored_mean_is_the_mean_of_the_normal_truncated_above() -> None:
    from scipy.stats import truncnorm

    mu = torch.tensor([[0.0], [1.0], [3.0], [-40.0]], dtype=torch.float64)
    var = torch.tensor([[1.0], [4.0], [0.25], [1.0]], dtype=torch.float64)

    class Posterior:
        mean, variance = mu, var

    class Model:
        def posterior(self, X: torch.Tensor) -> Posterior:
            return Posterior()

    got = censored_mean(Model(), torch.zeros(4, 1), upper=1.5)  # type: ignore[arg-type]
    for m, v, g in zip(mu.flatten().tolist(), var.flatten().tolist(), got.tolist(), strict=True):
        s = v**0.5
        want = truncnorm.mean(-float("inf"), (1.5 - m) / s, loc=m, scale=s)
        assert abs(g - want) < 1e-9, (m, v, g, want)
