"""SQLite trial store: every trial is written as it is proposed and as it ends.

One row per trial: its parameters, encoded point, state, value, error, job number and times.
Every change is one SQLite transaction, so a sweeper killed at any instant (SIGKILL included)
leaves either the old or the new row, never a torn one; that is what makes resume safe.
``":memory:"`` gives a throw-away store for the in-process ask/tell API.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from nasrun import UserError


class TrialState(str, Enum):
    """Life cycle of a trial: PENDING (proposed) -> RUNNING (launched) -> COMPLETED | FAILED."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass
class Trial:
    """One evaluation of the objective.

    Attributes:
        id: Number in proposal order, from 0.
        params: Parameter name -> value.
        x: The encoded point, ``d`` floats (see ``SearchSpace.encode``).
        state: Where the trial is in its life cycle.
        value: The objective, as returned (not negated for minimisation); ``None`` unless COMPLETED.
        error: One line saying why the trial FAILED.
        job: Hydra job number of its latest launch.
        created, started, finished: Unix times of proposal, latest launch and end.
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

    @property
    def wall_time(self) -> float | None:
        """Seconds from the latest launch to the end, when both are known."""
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY, params TEXT NOT NULL, x TEXT NOT NULL, state TEXT NOT NULL,
    value REAL, error TEXT, job INTEGER, created REAL NOT NULL, started REAL, finished REAL
);
"""
_COLUMNS = ("id", "params", "x", "state", "value", "error", "job", "created", "started", "finished")


class TrialStore:
    """Trials in an SQLite database.

    Args:
        path: Database file (created with its folder if missing), or ``":memory:"``.

    Raises:
        UserError: If ``path`` exists but is not a trial store.
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we open transactions explicitly, one per change.
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            # Full sync: a committed trial survives power loss, not only a killed process.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"storage '{self.path}' is not a nasrun trial store: {e}") from None

    def close(self) -> None:
        """Closes the database; every change is already committed."""
        self._db.close()

    # -- metadata ---------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """Value stored under ``key``, or ``None``."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Stores ``value`` under ``key`` (replacing it)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- trials -----------------------------------------------------------------------------------

    def add(self, params: dict[str, Any], x: list[float]) -> Trial:
        """Appends a PENDING trial and returns it with its new id."""
        trial = Trial(id=-1, params=params, x=x)
        with self._db:
            cur = self._db.execute(
                "INSERT INTO trials (params, x, state, created) VALUES (?, ?, ?, ?)",
                (json.dumps(params), json.dumps(x), trial.state.value, trial.created),
            )
        # SQLite's INTEGER PRIMARY KEY starts at 1; trial ids start at 0 like Hydra job numbers.
        trial.id = int(cur.lastrowid or 0) - 1
        return trial

    def update(self, trial: Trial) -> None:
        """Writes the mutable fields of ``trial`` (state, value, error, job, times)."""
        with self._db:
            self._db.execute(
                "UPDATE trials SET state = ?, value = ?, error = ?, job = ?, started = ?, finished = ? "
                "WHERE id = ?",
                (
                    trial.state.value,
                    trial.value,
                    trial.error,
                    trial.job,
                    trial.started,
                    trial.finished,
                    trial.id + 1,
                ),
            )

    def trials(self) -> list[Trial]:
        """All trials in proposal order."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM trials ORDER BY id").fetchall()
        return [_to_trial(r) for r in rows]

    def get(self, trial_id: int) -> Trial:
        """The trial with id ``trial_id``.

        Raises:
            KeyError: If there is none.
        """
        row = self._db.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM trials WHERE id = ?", (trial_id + 1,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no trial with id {trial_id}")
        return _to_trial(row)


def _to_trial(r: tuple[Any, ...]) -> Trial:
    return Trial(
        id=r[0] - 1,
        params=json.loads(r[1]),
        x=json.loads(r[2]),
        state=TrialState(r[3]),
        value=r[4],
        error=r[5],
        job=r[6],
        created=r[7],
        started=r[8],
        finished=r[9],
    )
