"""A phase that will take long says so after its first steps, with the way to shorten it."""

from __future__ import annotations

import time

import pytest
from torch import nn

from nasrun.data.synthetic import synthetic
from nasrun.train.duration import DurationCheck, format_duration
from nasrun.train.trainer import Trainer


def test_format_duration() -> None:
    assert [format_duration(s) for s in (42, 600, 5 * 3600, 3 * 86400)] == [
        "42 s",
        "10 min",
        "5.0 h",
        "3.0 days",
    ]


def test_estimate_is_steps_times_the_timed_step(capsys: pytest.CaptureFixture[str]) -> None:
    check = DurationCheck("retrain", steps_per_epoch=100, epochs=600, hint="trainer.epochs=30", long_s=60.0)
    for _ in range(4):  # one untimed step, then three timed ones of about 10 ms
        check.step()
        time.sleep(0.01)
    assert check.estimate_s is not None and 0.005 * 60_000 < check.estimate_s < 0.1 * 60_000
    out = capsys.readouterr().out
    assert (
        "retrain will take about" in out and "600 epochs of 100 steps" in out and "trainer.epochs=30" in out
    )
    check.step()  # no second warning
    assert capsys.readouterr().out == ""


def test_a_short_phase_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    check = DurationCheck("search", steps_per_epoch=2, epochs=1, hint="search.epochs=1")
    for _ in range(5):
        check.step()
    assert check.estimate_s is not None and check.estimate_s < 1.0
    assert capsys.readouterr().out == ""


def test_fit_warns_before_a_long_retraining(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import nasrun.train.duration as duration

    monkeypatch.setattr(duration, "LONG_S", 0.0)  # any retraining counts as long here
    data = synthetic(n_train=64, n_test=8, image_size=4, in_channels=1, num_classes=2, val_portion=0.0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    Trainer(device="cpu", epochs=2, batch_size=8).fit(model, data, shorten_hint="trainer.epochs=1")
    out = capsys.readouterr().out
    assert "retrain will take about" in out and "2 epochs of 8 steps" in out and "trainer.epochs=1" in out
