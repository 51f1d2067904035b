"""The trial store shared by several workers: claims, the budget, job numbers, heartbeats."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nasrun import UserError
from nasrun.bo import TrialState, TrialStore
from nasrun.bo.store import worker_id

REPO = Path(__file__).resolve().parents[2]


def test_claims_reserve_up_to_the_budget_and_jobs_are_numbered_once(tmp_path: Path) -> None:
    store = TrialStore(tmp_path / "trials.sqlite")
    a, b = worker_id(), worker_id()
    first = store.claim(a, budget=3, n=2)
    assert [t.id for t in first] == [0, 1] and all(not t.proposed and t.owner == a for t in first)
    assert [t.id for t in store.claim(b, budget=3, n=2)] == [2]  # the budget holds
    assert store.claim(b, budget=3, n=2) == []
    started = store.start(first)
    assert [t.job for t in started] == [0, 1] and all(t.state is TrialState.RUNNING for t in started)
    assert [t.job for t in store.start(store.trials()[2:])] == [2]


def test_a_silent_workers_trials_are_requeued_after_the_heartbeat_timeout(tmp_path: Path) -> None:
    store = TrialStore(tmp_path / "trials.sqlite")
    remote = "elsewhere|0|4242|00000000"  # another machine: only its heartbeat tells
    (trial,) = store.claim(remote, budget=2)
    store.propose(trial.id, {"x": 0.5}, [0.5])
    store.start([trial])
    me = worker_id()
    (mine,) = store.claim(me, budget=2, timeout=60.0)
    assert mine.id == 1  # the remote trial is still held: a new one is reserved
    assert store.claim(me, budget=2, timeout=60.0) == []
    store.heartbeat(remote)
    assert store.claim(me, budget=2, timeout=60.0) == []
    time.sleep(0.3)
    (taken,) = store.claim(me, budget=2, timeout=0.2)  # silent for longer than the timeout
    assert taken.id == trial.id and taken.owner == me and taken.params == {"x": 0.5}
    assert taken.job == 0  # the old job number, to look for its saved return value
    assert store.start([taken])[0].job == 1  # a re-run gets a new one


def test_trials_of_an_exited_local_worker_are_requeued_at_once(tmp_path: Path) -> None:
    store = TrialStore(tmp_path / "trials.sqlite")
    gone = subprocess.run(
        [sys.executable, "-c", "from nasrun.bo.store import worker_id; print(worker_id())"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout.strip()
    (trial,) = store.claim(gone, budget=1)
    (taken,) = store.claim(worker_id(), budget=1, timeout=3600.0)
    assert taken.id == trial.id


_CLAIMER = """
import sys
from nasrun.bo.store import TrialStore, worker_id
store, me = TrialStore(sys.argv[1]), worker_id()
while True:
    got = store.claim(me, budget=60, n=2)
    if not got:
        break
    for t in got:
        store.propose(t.id, {{"x": t.id}}, [float(t.id)])
    for t in store.start(got):
        t.state, t.value = t.state.__class__("COMPLETED"), float(t.job)
        store.update(t)
"""


def test_concurrent_workers_on_one_sqlite_file_keep_the_budget_and_job_numbers(tmp_path: Path) -> None:
    path = tmp_path / "trials.sqlite"
    TrialStore(path).close()
    script = textwrap.dedent(_CLAIMER.format())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], env=env) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    trials = TrialStore(path).trials()
    assert len(trials) == 60 and all(t.state is TrialState.COMPLETED for t in trials)
    assert sorted(t.job for t in trials if t.job is not None) == list(range(60))


def test_storage_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"^storage 'postgresql\+psycopg://nasrun:\*\*\*@127.0.0.1:9/none': cannot open"
    ) as info:
        TrialStore("postgresql://nasrun:secret@127.0.0.1:9/none")
    assert "\n" not in str(info.value) and "secret" not in str(info.value)
    with pytest.raises(UserError, match="is not a database URL"):
        TrialStore("nodriver://::")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="cannot create its folder"):
        TrialStore(tmp_path / "file" / "trials.sqlite")
