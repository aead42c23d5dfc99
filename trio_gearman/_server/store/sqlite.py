"""A SQLite file as the job server's persistent queue (``--queue-type sqlite``).

One row per durable background job, keyed by its handle, inserted in a group
commit before the client hears JOB_CREATED and deleted in a later one once the
job is finished, failed, cancelled or dropped. A second table keeps the highest
handle number reserved, so a restarted server never hands out a handle again,
foreground or background, even after a crash.

The store runs on the server's store thread (:mod:`.writer`), never on the
event loop. WAL mode with ``synchronous=FULL``: a commit has reached the disk
when it returns.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from ..._proto.server.model import StoredJob
from .base import StoreContents, StoreError

__all__ = ["DEFAULT_TABLE", "SqliteStore"]

logger = logging.getLogger("trio_gearman.server.store")

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


_CHUNKS: Final = (128, 32, 8, 2, 1)
"""Rows per statement: a batch is written by a few statements of these sizes (128 rows
bind 896 values, under the 999 of SQLite before 3.32)."""


def _chunks(count: int) -> list[int]:
    """``count`` as a sum of :data:`_CHUNKS`, largest first."""
    sizes = []
    for size in _CHUNKS:
        while count >= size:
            sizes.append(size)
            count -= size
    return sizes


class SqliteStore:
    """Background jobs in a SQLite database file (WAL mode): a :class:`~.base.QueueStore`.

    Args:
        path: the database file; created with its tables when missing.
        table: the jobs table; the handle reservation lives in ``<table>_meta``.
        synchronous: SQLite's ``synchronous`` setting: ``FULL`` (the default)
            makes every acknowledged job survive a power cut, ``NORMAL`` only a
            crash of the process.
        busy_timeout: how long a commit waits, in seconds, while another process
            holds the file's write lock, before it fails.
        max_size: the most bytes the database may grow to, or ``None`` for no
            limit: past it, new jobs are refused (QUEUE_ERROR) until finished
            jobs free room, as when the disk is full.

    Raises:
        ValueError: the table name is not a plain SQL name, or ``synchronous``
            is not one of SQLite's settings.

    Example:
        >>> store = SqliteStore(":memory:")
        >>> store.open().jobs
        []
        >>> store.close()
    """

    def __init__(
        self,
        path: str | Path,
        table: str = DEFAULT_TABLE,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 5.0,
        max_size: int | None = None,
    ) -> None:
        if not _TABLE_NAME.fullmatch(table):
            raise ValueError(f"{table!r} is not a table name (letters, digits, _)")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"{synchronous!r} is not a SQLite synchronous setting")
        self.path = str(path)
        self.table = table
        self._synchronous = synchronous.upper()
        self._busy_timeout = busy_timeout
        self._max_size = max_size
        self._db: sqlite3.Connection | None = None
        # One statement per row count: a batch takes a few statements (and so a few
        # steps of SQLite, which run beside the event loop's thread), not one per row.
        insert = (
            f"INSERT INTO {table} (handle, function, unique_key, data, priority, reducer,"
            " when_epoch) VALUES "
        )
        self._inserts = {n: insert + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n) for n in _CHUNKS}
        self._deletes = {
            n: f"DELETE FROM {table} WHERE handle IN ({', '.join(['?'] * n)})" for n in _CHUNKS
        }
        self._limit = f"UPDATE {table}_meta SET value = max(value, ?) WHERE key = 'handle_limit'"

    @property
    def description(self) -> str:
        """``sqlite PATH``."""
        return f"sqlite {self.path}"

    def open(self) -> StoreContents:
        """Open the file (creating the tables) and read every job, in submission order.

        Raises:
            StoreError: the file cannot be opened or read, or its table has
                another layout.
        """
        try:
            db = self._connect()
            rows = db.execute(
                f"SELECT handle, function, unique_key, data, priority, reducer, when_epoch"
                f" FROM {self.table} ORDER BY created"
            ).fetchall()
            (limit,) = db.execute(
                f"SELECT value FROM {self.table}_meta WHERE key = 'handle_limit'"
            ).fetchone()
        except sqlite3.Error as exc:
            self.close()
            raise StoreError(f"cannot use the queue database {self.path}: {exc}") from None
        jobs = [
            StoredJob(bytes(h), bytes(f), bytes(u), bytes(d), int(p), bytes(r), w)
            for h, f, u, d, p, r, w in rows
        ]
        return StoreContents(jobs, int(limit))

    def commit(
        self, added: Sequence[StoredJob], removed: Sequence[bytes], handle_limit: int | None
    ) -> None:
        """Delete ``removed``, insert ``added``, raise the handle limit: one transaction.

        Raises:
            StoreError: SQLite failed (disk full, read-only file, locked, ...);
                nothing was written.
        """
        try:
            db = self._db if self._db is not None else self._connect()
            db.execute("BEGIN IMMEDIATE")
            try:
                start = 0
                for size in _chunks(len(removed)):
                    db.execute(self._deletes[size], removed[start : start + size])
                    start += size
                start = 0
                for size in _chunks(len(added)):
                    rows = added[start : start + size]
                    db.execute(self._inserts[size], [v for row in rows for v in row])
                    start += size
                if handle_limit is not None:
                    db.execute(self._limit, (handle_limit,))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write the queue database {self.path}: {exc}") from None

    def close(self) -> None:
        """Close the database file."""
        db, self._db = self._db, None
        if db is not None:
            try:
                db.close()
            except sqlite3.Error as exc:
                logger.error("Cannot close the queue database %s: %s", self.path, exc)

    def _connect(self) -> sqlite3.Connection:
        # The store thread of the writer may change between calls (one at a time).
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            self._setup(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        table = self.table
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
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
            raise StoreError(
                f"the table {table!r} in {self.path} is not a trio-gearmand queue"
                f" (columns {', '.join(columns)}); choose another table name"
            )
        db.execute(
            f"CREATE TABLE IF NOT EXISTS {table}_meta (key TEXT PRIMARY KEY, value NOT NULL)"
        )
        # Stores of earlier versions counted the handles issued: that is a limit too.
        db.execute(
            f"INSERT OR IGNORE INTO {table}_meta SELECT 'handle_limit', value"
            f" FROM {table}_meta WHERE key = 'handles_issued'"
        )
        db.execute(f"INSERT OR IGNORE INTO {table}_meta VALUES ('handle_limit', 0)")
        if self._max_size is not None:
            (page_size,) = db.execute("PRAGMA page_size").fetchone()
            db.execute(f"PRAGMA max_page_count = {max(self._max_size // page_size, 1)}")
