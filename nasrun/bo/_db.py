"""The trial store's database: SQLAlchemy tables, engines for SQLite and PostgreSQL, transactions.

Imported by ``TrialStore`` on first use only: SQLAlchemy takes a fifth of a second to import, and
``nasrun --help`` (which imports ``nasrun.bo`` for the command-line rewrite) must stay quick.

SQLite: the file is put in write-ahead-log mode (readers never wait for the writer) with full
sync; every write transaction starts with ``BEGIN IMMEDIATE``, which takes the write lock before
the first read, so a read-then-write (count the trials, then add one) cannot interleave with
another process's. Python's sqlite3 module would otherwise begin transactions lazily, at the first
write; SQLAlchemy's documentation gives the recipe used here ("Serializable isolation /
Savepoints / Transactional DDL"). SQLite's locks need a local file system: workers on several
machines share a PostgreSQL database instead.

PostgreSQL: read-committed transactions; a read-then-write first locks the row of the job counter
(``SELECT ... FOR UPDATE``), which serialises those transactions the way ``BEGIN IMMEDIATE`` does
in SQLite.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from nasrun import UserError

metadata = MetaData()

meta = Table(
    "meta", metadata, Column("key", String(64), primary_key=True), Column("value", Text, nullable=False)
)

trials = Table(
    "trials",
    metadata,
    Column("id", Integer, primary_key=True),  # trial id + 1 (SQLite's rowid and SERIAL start at 1)
    Column("params", Text, nullable=False),  # JSON; "{}" while the trial is only reserved
    Column("x", Text, nullable=False),  # JSON; "[]" while the trial is only reserved
    Column("state", String(16), nullable=False),
    Column("value", Float),
    Column("error", Text),
    Column("job", Integer),
    Column("created", Float, nullable=False),
    Column("started", Float),
    Column("finished", Float),
    Column("epoch", Integer),  # last epoch reported by the job
    Column("owner", String(255)),  # the worker holding it while PENDING or RUNNING
    Column("heartbeat", Float),  # the owner's last sign of life
)

reports = Table(
    "reports",
    metadata,
    Column("trial", Integer, primary_key=True),  # trials.id
    Column("epoch", Integer, primary_key=True),
    Column("value", Float),
    Column("time", Float, nullable=False),
)

# PostgreSQL advisory-lock key held while the tables are created ("nasr" in ASCII).
_SCHEMA_LOCK = 0x6E617372

# Columns added after the first release of the store; older files get them on opening.
_ADDED = {"epoch": "INTEGER", "owner": "VARCHAR(255)", "heartbeat": "FLOAT"}


def parse_url(storage: str) -> URL:
    """The SQLAlchemy URL of ``storage``: a URL, a file path (SQLite) or ``":memory:"``.

    Raises:
        UserError: ``storage`` is not a database URL SQLAlchemy knows.
    """
    if storage == ":memory:":
        return make_url("sqlite://")
    if "://" not in storage:
        return make_url("sqlite://").set(database=str(Path(storage).expanduser().absolute()))
    try:
        url = make_url(storage)
    except (ArgumentError, ValueError) as e:
        raise UserError(f"storage '{storage}' is not a database URL: {e}") from None
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        # SQLAlchemy's default PostgreSQL driver is psycopg2; nasrun's extra installs psycopg 3.
        url = url.set(drivername="postgresql+psycopg")
    return url


def shown(url: URL) -> str:
    """``url`` as it may be printed: without its password; a SQLite file as its path."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def open_engine(url: URL) -> Engine:
    """An engine for ``url`` with the tables created (and older stores upgraded).

    Raises:
        UserError: The database cannot be reached, created or read as a trial store; one line
            naming it.
    """
    where = shown(url)
    try:
        if url.get_backend_name() == "sqlite":
            engine = _sqlite_engine(url)
        else:
            engine = create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))
    except (SQLAlchemyError, ImportError) as e:
        raise UserError(f"storage '{where}': {_first_line(e)}") from None
    try:
        with transaction(engine, write=True) as conn:  # two workers may create it at once
            if url.get_backend_name() == "postgresql":
                # CREATE TABLE IF NOT EXISTS races between sessions in PostgreSQL: take turns.
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK})
            metadata.create_all(conn)
            present = {c["name"] for c in inspect(conn).get_columns("trials")}
            for name, sql_type in _ADDED.items():
                if name not in present:
                    conn.execute(text(f"ALTER TABLE trials ADD COLUMN {name} {sql_type}"))
    except SQLAlchemyError as e:
        engine.dispose()
        orig = getattr(e, "orig", None)
        if url.get_backend_name() == "sqlite" and type(orig).__name__ == "DatabaseError":
            raise UserError(f"storage '{where}' is not a nasrun trial store: {orig}") from None
        raise UserError(f"storage '{where}': cannot open the trial store: {_first_line(e)}") from None
    return engine


def _connect_args(url: URL) -> dict[str, Any]:
    if url.get_backend_name() == "postgresql" and url.get_driver_name() in ("psycopg", "psycopg2"):
        return {"connect_timeout": 10}  # an unreachable server is reported in seconds, not minutes
    return {}


def _sqlite_engine(url: URL) -> Engine:
    memory = url.database in (None, "", ":memory:")
    if memory:
        # One connection shared by every thread, or each thread would see its own empty database.
        engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        assert url.database is not None
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"storage '{url.database}': cannot create its folder: {e}") from None
        # A writer waits up to a minute for another's lock (sqlite3's busy timeout) before failing.
        engine = create_engine(url, connect_args={"timeout": 60.0})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        # Full sync: a committed trial survives power loss, not only a killed process.
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(
            "BEGIN IMMEDIATE" if conn.get_execution_options().get("nasrun_write") else "BEGIN"
        )

    return engine


@contextlib.contextmanager
def transaction(engine: Engine, write: bool = False) -> Iterator[Connection]:
    """One transaction, committed on leaving; ``write=True`` takes SQLite's write lock at once."""
    with engine.connect() as conn:
        if write:
            conn = conn.execution_options(nasrun_write=True)
        with conn.begin():
            yield conn


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    return f"{type(orig).__name__}: {lines[0] if lines else ''}"
