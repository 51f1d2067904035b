"""The trial store: every trial is written as it is proposed, launched, reported on and ended.

One row per trial: its parameters, encoded point, state, value, error, job number, times, the
last epoch its job reported, and the worker holding it. One row per (trial, epoch) report.
Every change is one database transaction, so a process killed at any instant (SIGKILL included)
leaves either the old or the new row, never a torn one; that is what makes resume safe.

The store is a database URL (SQLAlchemy): an SQLite file for one machine, PostgreSQL for workers
on several. Several sweeper processes ("workers") may share one store; ``claim`` hands each the
next trial to run inside one transaction, so the budget holds and no job number is used twice,
and trials held by a worker that stopped beating (``heartbeat``) go back to the queue.
``":memory:"`` gives a throw-away store for the in-process ask/tell API.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, Row


class TrialState(str, Enum):
    """Life cycle: PENDING (proposed or queued) -> RUNNING (launched) -> COMPLETED | FAILED | PRUNED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    PRUNED = "PRUNED"  # stopped early by the pruner; ``value`` is its last report, at ``epoch``


#: States of a trial that has ended.
ENDED = (TrialState.COMPLETED, TrialState.FAILED, TrialState.PRUNED)
#: States of a trial that still has to end.
OPEN = (TrialState.PENDING, TrialState.RUNNING)


@dataclass
class Trial:
    """One evaluation of the objective.

    Attributes:
        id: Number in proposal order, from 0.
        params: Parameter name -> value; empty while the trial is only reserved (see ``claim``).
        x: The encoded point, ``d`` floats (see ``ParamSpace.encode``); empty while reserved.
        state: Where the trial is in its life cycle.
        value: The objective, as returned (not negated for minimisation): the final value of a
            COMPLETED trial, the last reported one of a PRUNED trial, else ``None``.
        error: One line saying why the trial FAILED.
        job: Hydra job number of its latest launch.
        created, started, finished: Unix times of proposal, latest launch and end.
        epoch: The last epoch its job reported (``report``), if it reports.
        owner: The worker holding the trial while it is PENDING or RUNNING (``worker_id``).
        heartbeat: Unix time of the owner's (or the job's) last sign of life.
    """

    id: int
    params: dict[str, Any]
    x: list[float]
    state: TrialState = TrialState.PENDING
    value: float | None = None
    error: str | None = None
    job: int | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    epoch: int | None = None
    owner: str | None = None
    heartbeat: float | None = None

    @property
    def wall_time(self) -> float | None:
        """Seconds from the latest launch to the end, when both are known."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    @property
    def proposed(self) -> bool:
        """Whether the trial has its point (a reserved trial gets it from the next ``ask``)."""
        return bool(self.x)


def worker_id() -> str:
    """A new worker name, ``host|pid-namespace|pid|random``: unique, and telling where it runs."""
    return f"{_host_key()}|{os.getpid()}|{secrets.token_hex(4)}"


def _host_key() -> str:
    """This machine and PID namespace: processes with the same key can see each other's PIDs."""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        namespace = "-"
    return f"{socket.gethostname()}|{namespace}"


def _dead_here(owner: str) -> bool:
    """Whether worker ``owner`` is known to be gone: a process of this machine that has exited.
    Workers elsewhere are judged by their heartbeat alone."""
    parts = owner.split("|")
    if len(parts) != 4 or f"{parts[0]}|{parts[1]}" != _host_key() or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False  # another worker of this process (tests run several), or a reused PID
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # it exists, under another user
    try:  # a killed process that its parent has not reaped yet is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class TrialStore:
    """Trials in a database.

    Args:
        storage: A database URL (``sqlite:///path``, ``postgresql://user@host/db``), a file path
            (SQLite; created with its folder if missing), or ``":memory:"``.

    Raises:
        UserError: The database cannot be reached or created, or holds something else than a
            trial store; one line naming it (without its password).
    """

    def __init__(self, storage: str | Path = ":memory:") -> None:
        from nasrun.bo import _db

        url = _db.parse_url(str(storage))
        #: Where the store is, as it may be printed (a file path, or the URL without password).
        self.path = _db.shown(url)
        self.backend = url.get_backend_name()
        self._db = _db
        self._engine: Engine = _db.open_engine(url)
        self._ensure_counter("next_job", self._max_job() + 1)
        self._ensure_counter("sobol_drawn", 0)

    def close(self) -> None:
        """Closes the database connections; every change is already committed."""
        self._engine.dispose()

    # -- metadata ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """Value stored under ``key``, or ``None``."""
        t = self._db.meta
        with self._db.transaction(self._engine) as conn:
            row = conn.execute(t.select().where(t.c.key == key)).first()
        return None if row is None else str(row.value)

    def set_meta(self, key: str, value: str) -> None:
        """Stores ``value`` under ``key`` (replacing it)."""
        t = self._db.meta
        with self._db.transaction(self._engine, write=True) as conn:
            if conn.execute(t.update().where(t.c.key == key).values(value=value)).rowcount == 0:
                conn.execute(t.insert().values(key=key, value=value))

    def bump_counter(self, key: str, n: int) -> int:
        """Adds ``n`` to the integer counter ``key`` in one transaction; returns its value before."""
        with self._db.transaction(self._engine, write=True) as conn:
            return self._bump(conn, key, n)

    def _bump(self, conn: Connection, key: str, n: int) -> int:
        t = self._db.meta
        row = conn.execute(t.select().where(t.c.key == key).with_for_update()).first()
        assert row is not None, f"counter {key} missing"
        conn.execute(t.update().where(t.c.key == key).values(value=str(int(row.value) + n)))
        return int(row.value)

    def _ensure_counter(self, key: str, start: int) -> None:
        from sqlalchemy.exc import IntegrityError

        if self.get_meta(key) is not None:
            return
        try:
            with self._db.transaction(self._engine, write=True) as conn:
                conn.execute(self._db.meta.insert().values(key=key, value=str(start)))
        except IntegrityError:
            pass  # another worker created it first

    def _max_job(self) -> int:
        from sqlalchemy import func, select

        with self._db.transaction(self._engine) as conn:
            top = conn.execute(select(func.max(self._db.trials.c.job))).scalar()
        return -1 if top is None else int(top)

    # -- trials -----------------------------------------------------------------------------------

    def add(self, params: dict[str, Any], x: list[float]) -> Trial:
        """Appends a PENDING trial and returns it with its new id."""
        trial = Trial(id=-1, params=params, x=x)
        with self._db.transaction(self._engine, write=True) as conn:
            trial.id = self._insert(conn, trial)
        return trial

    def _insert(self, conn: Connection, trial: Trial) -> int:
        res = conn.execute(
            self._db.trials.insert().values(
                params=json.dumps(trial.params),
                x=json.dumps(trial.x),
                state=trial.state.value,
                created=trial.created,
                owner=trial.owner,
                heartbeat=trial.heartbeat,
            )
        )
        # Row ids start at 1; trial ids start at 0 like Hydra job numbers.
        return int(res.inserted_primary_key[0]) - 1  # type: ignore[index]

    def update(self, trial: Trial) -> None:
        """Writes the mutable fields of ``trial`` (state, value, error, job, times, epoch, owner)."""
        t = self._db.trials
        with self._db.transaction(self._engine, write=True) as conn:
            conn.execute(t.update().where(t.c.id == trial.id + 1).values(**_mutable(trial)))

    def propose(self, trial_id: int, params: dict[str, Any], x: list[float]) -> None:
        """Gives the reserved trial ``trial_id`` its point."""
        t = self._db.trials
        with self._db.transaction(self._engine, write=True) as conn:
            conn.execute(
                t.update().where(t.c.id == trial_id + 1).values(params=json.dumps(params), x=json.dumps(x))
            )

    def trials(self) -> list[Trial]:
        """All trials in proposal order."""
        t = self._db.trials
        with self._db.transaction(self._engine) as conn:
            return [_to_trial(r) for r in conn.execute(t.select().order_by(t.c.id))]

    def get(self, trial_id: int) -> Trial:
        """The trial with id ``trial_id``.

        Raises:
            KeyError: If there is none.
        """
        t = self._db.trials
        with self._db.transaction(self._engine) as conn:
            row = conn.execute(t.select().where(t.c.id == trial_id + 1)).first()
        if row is None:
            raise KeyError(f"no trial with id {trial_id}")
        return _to_trial(row)

    # -- workers ----------------------------------------------------------------------------------

    def claim(self, owner: str, budget: int, n: int = 1, timeout: float = 120.0) -> list[Trial]:
        """Up to ``n`` trials for worker ``owner`` to run, in one transaction.

        First, open trials whose worker is gone go back to the queue: those whose heartbeat is
        older than ``timeout`` seconds, those of a worker on this machine that has exited, and
        RUNNING ones without a worker (a store written before workers existed). Then queued
        trials are taken, oldest first; then new trials are reserved (empty ``params`` and ``x``;
        ``BayesOpt.ask(into=...)`` proposes their points) while the store holds fewer than
        ``budget``. Every trial returned is PENDING and held by ``owner``; one that was launched
        before keeps its old ``job`` number until ``start``.

        Returns:
            The trials, in id order; empty when the budget is used up and nothing is queued.
        """
        from sqlalchemy import and_, func, or_, select

        t, now = self._db.trials, time.time()
        with self._db.transaction(self._engine, write=True) as conn:
            self._lock(conn)
            open_states = [s.value for s in OPEN]
            held = conn.execute(
                select(t.c.id, t.c.owner).where(t.c.state.in_(open_states), t.c.owner.is_not(None))
            ).all()
            gone = [r.id for r in held if _dead_here(r.owner)]
            conn.execute(
                t.update()
                .where(
                    t.c.state.in_(open_states),
                    or_(
                        t.c.id.in_(gone),
                        and_(t.c.owner.is_not(None), t.c.heartbeat < now - timeout),
                        and_(t.c.owner.is_(None), t.c.state == TrialState.RUNNING.value),
                    ),
                )
                .values(state=TrialState.PENDING.value, owner=None)
            )
            free = conn.execute(
                t.select()
                .where(t.c.state == TrialState.PENDING.value, t.c.owner.is_(None))
                .order_by(t.c.id)
                .limit(n)
            ).all()
            ids = [r.id for r in free]
            if ids:
                conn.execute(t.update().where(t.c.id.in_(ids)).values(owner=owner, heartbeat=now))
            claimed = [_to_trial(r) for r in free]
            total = int(conn.execute(select(func.count()).select_from(t)).scalar() or 0)
            while len(claimed) < n and total < budget:
                trial = Trial(id=-1, params={}, x=[], owner=owner, heartbeat=now)
                trial.id = self._insert(conn, trial)
                claimed.append(trial)
                total += 1
        for trial in claimed:
            trial.owner, trial.heartbeat, trial.state = owner, now, TrialState.PENDING
        return claimed

    def start(self, trials: list[Trial]) -> list[Trial]:
        """Marks ``trials`` RUNNING with new consecutive job numbers, in one transaction.

        Returns:
            ``trials``, updated.
        """
        t, now = self._db.trials, time.time()
        with self._db.transaction(self._engine, write=True) as conn:
            first = self._bump(conn, "next_job", len(trials))
            for i, trial in enumerate(trials):
                trial.state, trial.job, trial.started, trial.heartbeat = (
                    TrialState.RUNNING,
                    first + i,
                    now,
                    now,
                )
                trial.finished, trial.epoch = None, None
                conn.execute(t.update().where(t.c.id == trial.id + 1).values(**_mutable(trial)))
                # A re-run starts its curve afresh: the earlier launch's reports no longer hold.
                conn.execute(self._db.reports.delete().where(self._db.reports.c.trial == trial.id + 1))
        return trials

    def heartbeat(self, owner: str) -> None:
        """Records that worker ``owner`` is alive, on every open trial it holds."""
        t = self._db.trials
        with self._db.transaction(self._engine, write=True) as conn:
            conn.execute(
                t.update()
                .where(t.c.owner == owner, t.c.state.in_([s.value for s in OPEN]))
                .values(heartbeat=time.time())
            )

    def release(self, owner: str) -> None:
        """Puts the open trials of ``owner`` back in the queue (a worker leaving early)."""
        t = self._db.trials
        with self._db.transaction(self._engine, write=True) as conn:
            conn.execute(
                t.update()
                .where(t.c.owner == owner, t.c.state.in_([s.value for s in OPEN]))
                .values(state=TrialState.PENDING.value, owner=None)
            )

    def _lock(self, conn: Connection) -> None:
        """Serialises read-then-write transactions (SQLite: already, by BEGIN IMMEDIATE)."""
        if self.backend != "sqlite":
            t = self._db.meta
            conn.execute(t.select().where(t.c.key == "next_job").with_for_update())

    # -- per-epoch reports ------------------------------------------------------------------------

    def running_trial(self, job: int) -> Trial | None:
        """The RUNNING trial launched as job ``job``, if any."""
        t = self._db.trials
        with self._db.transaction(self._engine) as conn:
            row = conn.execute(
                t.select().where(t.c.job == job, t.c.state == TrialState.RUNNING.value)
            ).first()
        return None if row is None else _to_trial(row)

    def report(self, trial_id: int, job: int, epoch: int, value: float | None) -> bool:
        """Stores the value of trial ``trial_id`` after ``epoch``, if job ``job`` still runs it.

        Returns:
            False if the trial is no longer RUNNING as job ``job`` (it was re-queued or ended):
            the report is then dropped.
        """
        t, r, now = self._db.trials, self._db.reports, time.time()
        with self._db.transaction(self._engine, write=True) as conn:
            done = conn.execute(
                t.update()
                .where(t.c.id == trial_id + 1, t.c.job == job, t.c.state == TrialState.RUNNING.value)
                .values(epoch=epoch, heartbeat=now)
            )
            if done.rowcount == 0:
                return False
            conn.execute(r.delete().where(r.c.trial == trial_id + 1, r.c.epoch == epoch))
            conn.execute(r.insert().values(trial=trial_id + 1, epoch=epoch, value=value, time=now))
        return True

    def reports_at(self, epoch: int) -> list[tuple[int, TrialState, float]]:
        """``(trial id, state, value)`` of every finite report made at ``epoch``."""
        from sqlalchemy import select

        t, r = self._db.trials, self._db.reports
        with self._db.transaction(self._engine) as conn:
            rows = conn.execute(
                select(r.c.trial, t.c.state, r.c.value)
                .join(t, t.c.id == r.c.trial)
                .where(r.c.epoch == epoch, r.c.value.is_not(None))
            ).all()
        return [(int(a) - 1, TrialState(s), float(v)) for a, s, v in rows if v == v]

    def curves(self, trial_ids: Iterable[int] | None = None) -> dict[int, list[tuple[int, float | None]]]:
        """Every trial's reports, ``{trial id: [(epoch, value), ...]}`` in epoch order."""
        r = self._db.reports
        query = r.select().order_by(r.c.trial, r.c.epoch)
        if trial_ids is not None:
            query = query.where(r.c.trial.in_([i + 1 for i in trial_ids]))
        out: dict[int, list[tuple[int, float | None]]] = {}
        with self._db.transaction(self._engine) as conn:
            for row in conn.execute(query):
                out.setdefault(int(row.trial) - 1, []).append((int(row.epoch), row.value))
        return out

    def end_running(self, trial_id: int, job: int, change: Callable[[Trial], None]) -> bool:
        """Applies ``change`` to trial ``trial_id`` and writes it, if job ``job`` still runs it.

        Returns:
            Whether the trial was changed.
        """
        t = self._db.trials
        with self._db.transaction(self._engine, write=True) as conn:
            row = conn.execute(t.select().where(t.c.id == trial_id + 1)).first()
            if row is None or row.state != TrialState.RUNNING.value or row.job != job:
                return False
            trial = _to_trial(row)
            change(trial)
            conn.execute(t.update().where(t.c.id == trial_id + 1).values(**_mutable(trial)))
        return True


def _mutable(trial: Trial) -> dict[str, Any]:
    return {
        "state": trial.state.value,
        "value": trial.value,
        "error": trial.error,
        "job": trial.job,
        "started": trial.started,
        "finished": trial.finished,
        "epoch": trial.epoch,
        "owner": trial.owner,
        "heartbeat": trial.heartbeat,
    }


def _to_trial(r: Row[Any]) -> Trial:
    return Trial(
        id=int(r.id) - 1,
        params=json.loads(r.params),
        x=json.loads(r.x),
        state=TrialState(r.state),
        value=r.value,
        error=r.error,
        job=r.job,
        created=r.created,
        started=r.started,
        finished=r.finished,
        epoch=r.epoch,
        owner=r.owner,
        heartbeat=r.heartbeat,
    )
