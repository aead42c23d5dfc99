"""A SQLite file as the job server's persistent queue (``--queue-type libsqlite3``).

One row per background job, keyed by its handle, written and committed before the
client hears JOB_CREATED and deleted once the job is finished, failed, cancelled or
dropped. A second table keeps the highest handle number issued, so a restarted
server never hands out a handle again, even when the jobs that had the highest
ones are long gone.

The calls block the event loop for the time of one small transaction, as
gearmand's own SQLite queue blocks its processing thread.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from pathlib import Path
from typing import Final

import attrs

from ..._exceptions import GearmanError
from ..._proto.server.model import Job
from ..._proto.server.state import ServerState

__all__ = ["SqliteStore", "StoredJob"]

logger = logging.getLogger("trio_gearman.server")

DEFAULT_TABLE: Final = "gearman_queue"
_TABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_COLUMNS: Final = (
    "created",
    "handle",
    "function",
    "unique_key",
    "data",
    "priority",
    "reducer",
    "when_epoch",
)


@attrs.frozen
class StoredJob:
    """One background job as the store holds it.

    Attributes:
        handle: the job handle.
        function: the function name.
        unique: the unique key (empty: none).
        data: the payload.
        priority: 0 (HIGH), 1 (NORMAL) or 2 (LOW).
        reducer: the reducer of a SUBMIT_REDUCE_JOB, else empty.
        epoch: when an epoch job is due, in seconds since the Unix epoch, else ``None``.
    """

    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    priority: int
    reducer: bytes
    epoch: int | None


class SqliteStore:
    """Background jobs in a SQLite database file (WAL mode).

    Args:
        path: the database file; created with its tables when missing.
        handle_prefix: the server's ``--job-handle-prefix`` (without the ``:``);
            handle numbers are counted for it.
        table: the jobs table; the handle counter lives in ``<table>_meta``.
        synchronous: SQLite's ``synchronous`` setting: ``FULL`` (the default)
            makes every accepted job survive a power cut, ``NORMAL`` only a crash
            of the process.
        busy_timeout: how long a write waits, in seconds, while another process
            holds the file's write lock (the whole server waits with it) before the
            submission is refused.

    Raises:
        GearmanError: the file cannot be opened, or its table has another layout.
        ValueError: the table name is not a plain SQL name.

    Example:
        >>> store = SqliteStore(":memory:", b"H:x")
        >>> store.load()
        []
        >>> store.close()
    """

    def __init__(
        self,
        path: str | Path,
        handle_prefix: bytes,
        table: str = DEFAULT_TABLE,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 0.5,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"{table!r} is not a table name (letters, digits, _)")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"{synchronous!r} is not a SQLite synchronous setting")
        self.path = str(path)
        self.table = table
        self._prefix = handle_prefix + b":"
        self._issued = 0
        try:
            self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise GearmanError(f"cannot open the queue database {self.path}: {exc}") from None
        try:
            self._setup(synchronous.upper())
        except sqlite3.Error as exc:
            self._db.close()
            raise GearmanError(f"cannot use the queue database {self.path}: {exc}") from None
        except GearmanError:
            self._db.close()
            raise
        self._insert = (
            f"INSERT INTO {table} (handle, function, unique_key, data, priority, reducer,"
            " when_epoch) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self._delete = f"DELETE FROM {table} WHERE handle = ?"
        self._count = f"UPDATE {table}_meta SET value = ? WHERE key = 'handles_issued'"

    def _setup(self, synchronous: str) -> None:
        db, table = self._db, self.table
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " created INTEGER PRIMARY KEY,"
            " handle BLOB NOT NULL UNIQUE,"
            " function BLOB NOT NULL,"
            " unique_key BLOB NOT NULL,"
            " data BLOB NOT NULL,"
            " priority INTEGER NOT NULL,"
            " reducer BLOB NOT NULL,"
            " when_epoch INTEGER)"
        )
        columns = tuple(row[1] for row in db.execute(f"PRAGMA table_info({table})"))
        if columns != _COLUMNS:
            raise GearmanError(
                f"the table {table!r} in {self.path} is not a trio-gearmand queue"
                f" (columns {', '.join(columns)}); choose another table name"
            )
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {table}_meta (key TEXT PRIMARY KEY, value NOT NULL)"
        )
        db.execute(
            f"INSERT OR IGNORE INTO {table}_meta VALUES ('handles_issued', 0), ('prefix', ?)",
            (self._prefix[:-1],),
        )
        meta = dict(db.execute(f"SELECT key, value FROM {table}_meta"))
        self._issued = int(meta["handles_issued"])
        if meta["prefix"] != self._prefix[:-1]:
            logger.warning(
                "The queue %s was written with the job handle prefix %r, now %r: "
                "its jobs keep their handles",
                self.path,
                bytes(meta["prefix"]).decode(errors="replace"),
                self._prefix[:-1].decode(errors="replace"),
            )
            db.execute(
                f"UPDATE {table}_meta SET value = ? WHERE key = 'prefix'", (self._prefix[:-1],)
            )

    # --- the JobStore protocol --------------------------------------------------------------

    def add(self, job: Job, epoch: int = 0) -> None:
        """Write ``job`` and commit, before the client hears JOB_CREATED.

        Args:
            job: the new background job.
            epoch: when an epoch job is due (seconds since the Unix epoch), else 0.

        Raises:
            GearmanError: SQLite failed (disk full, read-only file, ...): the
                submission is refused with ``ERROR QUEUE_ERROR``.
        """
        handle = job.handle
        number = self._number(handle)
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                db.execute(
                    self._insert,
                    (
                        handle,
                        job.function.name,
                        job.unique,
                        job.data,
                        job.priority,
                        job.reducer,
                        epoch or None,
                    ),
                )
                if number > self._issued:
                    db.execute(self._count, (number,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            logger.error("Cannot store the job %s: %s", handle.decode(errors="replace"), exc)
            raise GearmanError(f"cannot store the job: {exc}") from None
        if number > self._issued:
            self._issued = number

    def done(self, job: Job) -> None:
        """Delete ``job``: it finished. Errors are logged, never raised.

        Args:
            job: the job that ended.
        """
        try:
            self._db.execute(self._delete, (job.handle,))
        except sqlite3.Error as exc:
            logger.error(
                "Cannot delete the job %s from the queue: %s", job.handle.decode("latin-1"), exc
            )

    # --- restarts ----------------------------------------------------------------------------

    @property
    def handles_issued(self) -> int:
        """The highest handle number (of this prefix) the store knows was issued."""
        return self._issued

    def load(self) -> list[StoredJob]:
        """Every stored job, in the order they were submitted.

        Raises:
            GearmanError: SQLite failed.
        """
        try:
            rows = self._db.execute(
                f"SELECT handle, function, unique_key, data, priority, reducer, when_epoch"
                f" FROM {self.table} ORDER BY created"
            ).fetchall()
        except sqlite3.Error as exc:
            raise GearmanError(f"cannot read the queue {self.path}: {exc}") from None
        return [
            StoredJob(bytes(h), bytes(f), bytes(u), bytes(d), int(p), bytes(r), w)
            for h, f, u, d, p, r, w in rows
        ]

    def replay(self, state: ServerState, wall_time: float) -> int:
        """Give every stored job back to a server that accepts no connections yet.

        The jobs keep their handles and their order; no later handle repeats one
        the store saw issued. Epoch jobs keep their time.

        Args:
            state: the new server's state; its ``wall_offset`` must be current.
            wall_time: the wall-clock time now (``time.time()``).

        Returns:
            How many jobs were replayed.

        Raises:
            GearmanError: SQLite failed.
        """
        state.reserve_handles(self._issued)
        jobs = self.load()
        for job in jobs:
            due = None
            if job.epoch is not None and job.epoch > wall_time:
                due = job.epoch - state.wall_offset
            state.restore_job(
                job.handle, job.function, job.unique, job.data, job.priority, job.reducer, due
            )
        return len(jobs)

    def close(self, handles_issued: int = 0) -> None:
        """Record the handle counter and close the database.

        Args:
            handles_issued: the server's
                :attr:`~trio_gearman._proto.server.state.ServerState.handles_issued`
                at shutdown (foreground jobs' handles count too).
        """
        try:
            if handles_issued > self._issued:
                self._db.execute(self._count, (handles_issued,))
                self._issued = handles_issued
        except sqlite3.Error as exc:
            logger.error("Cannot record the handle counter in %s: %s", self.path, exc)
        finally:
            self._db.close()

    def _number(self, handle: bytes) -> int:
        prefix = self._prefix
        if handle.startswith(prefix):
            digits = handle[len(prefix) :]
            if digits.isdigit():
                return int(digits)
        return 0
