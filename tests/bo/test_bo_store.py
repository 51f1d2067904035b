"""The SQLite trial store: round trips, persistence across processes, refusal of foreign files."""

from __future__ import annotations

from pathlib import Path

import pytest

from nasrun import UserError
from nasrun.bo import TrialState, TrialStore


def test_trials_round_trip_and_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sweep" / "trials.sqlite"
    store = TrialStore(path)
    a = store.add({"lr": 0.01, "opt": "sgd"}, [0.5, 1.0])
    b = store.add({"lr": 0.1, "opt": "adam"}, [0.9, 0.0])
    assert (a.id, b.id) == (0, 1)
    a.state, a.job, a.started = TrialState.RUNNING, 0, 10.0
    store.update(a)
    a.state, a.value, a.finished = TrialState.COMPLETED, 0.93, 12.5
    store.update(a)
    b.state, b.error = TrialState.FAILED, "RuntimeError: boom"
    store.update(b)
    store.set_meta("space", "S")
    store.close()

    again = TrialStore(path)  # as a resumed sweeper would
    got = again.trials()
    assert [t.id for t in got] == [0, 1]
    assert got[0].params == {"lr": 0.01, "opt": "sgd"} and got[0].x == [0.5, 1.0]
    assert got[0].state is TrialState.COMPLETED and got[0].value == 0.93 and got[0].job == 0
    assert got[0].wall_time == pytest.approx(2.5)
    assert got[1].state is TrialState.FAILED and got[1].error == "RuntimeError: boom" and got[1].value is None
    assert again.get_meta("space") == "S" and again.get_meta("nope") is None
    assert again.get(1).params["opt"] == "adam"
    with pytest.raises(KeyError):
        again.get(7)


def test_a_file_that_is_not_a_store_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "trials.sqlite"
    bogus.write_text("this is not a database, " * 100)
    with pytest.raises(UserError, match="is not a nasrun trial store"):
        TrialStore(bogus)


def test_a_store_from_before_workers_and_reports_is_upgraded_on_opening(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "trials.sqlite"
    with sqlite3.connect(path) as db:  # the schema of the first release
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE trials (
                id INTEGER PRIMARY KEY, params TEXT NOT NULL, x TEXT NOT NULL, state TEXT NOT NULL,
                value REAL, error TEXT, job INTEGER, created REAL NOT NULL, started REAL, finished REAL
            );
            INSERT INTO trials VALUES (1, '{"lr": 0.1}', '[0.5]', 'COMPLETED', 0.9, NULL, 0, 1.0, 2.0, 3.0);
            INSERT INTO trials VALUES (2, '{"lr": 0.2}', '[0.7]', 'RUNNING', NULL, NULL, 1, 1.0, 2.0, NULL);
            """
        )
    store = TrialStore(path)
    done, running = store.trials()
    assert done.value == 0.9 and done.epoch is None and running.owner is None
    # The old sweeper is gone: its RUNNING trial is queued again, and job numbers go on after 1.
    (claimed,) = store.claim("me", budget=2)
    assert claimed.id == 1 and store.start([claimed])[0].job == 2
