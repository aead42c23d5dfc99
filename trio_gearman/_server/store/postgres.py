"""PostgreSQL as the job server's persistent queue, through psycopg 3.

For operators who already run PostgreSQL: the queue is one table with a row per
background job, and a second table (``<table>_meta``) with the highest handle
number reserved, so a restarted server never issues a handle twice. psycopg is an
optional dependency (``pip install 'trio-gearman[postgres]'``); it needs libpq
(Debian's ``libpq5``), or ``pip install 'psycopg[binary]'`` for a bundled one.

The store keeps one connection, used by the server's store thread only. Each
:meth:`PostgresStore.commit` is one transaction. When the database goes away the
failing call raises :class:`~trio_gearman._server.store.base.StoreError` and drops
the connection; every later call makes one attempt to connect again (bounded by
``connect_timeout``), so the store recovers by itself once the database is back.
The loss and the recovery are logged once each (logger
``trio_gearman.server.store``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, NoReturn, TypeVar

from .base import StoreContents, StoredJob, StoreError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow

__all__ = [
    "COLUMNS",
    "COPY_TYPES",
    "DEFAULT_TABLE",
    "FIELDS",
    "JOB_COLUMNS_SQL",
    "META_COLUMNS",
    "PostgresStore",
]

logger = logging.getLogger("trio_gearman.server.store")
_T = TypeVar("_T")

DEFAULT_TABLE: Final = "gearman_queue"
INSTALL_HINT: Final = "pip install 'trio-gearman[postgres]'"
# PostgreSQL keeps 63 bytes of a name; "<table>_meta" must fit.
_TABLE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,57}")
COLUMNS: Final = (
    ("seq", "bigint"),
    ("handle", "bytea"),
    ("function", "bytea"),
    ("unique_key", "bytea"),
    ("data", "bytea"),
    ("priority", "smallint"),
    ("reducer", "bytea"),
    ("when_epoch", "bigint"),
)
"""The columns of the jobs table, with their types (a cluster's table adds two)."""
META_COLUMNS: Final = (("key", "text"), ("value", "bigint"))
"""The columns of the ``<table>_meta`` table."""
FIELDS: Final = "handle, function, unique_key, data, priority, reducer, when_epoch"
"""The columns of a :class:`StoredJob`, in its order."""
COPY_TYPES: Final = ("bytea", "bytea", "bytea", "bytea", "int2", "bytea", "int8")
"""The types of :data:`FIELDS` for a binary COPY."""
JOB_COLUMNS_SQL: Final = (
    "seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " handle bytea NOT NULL UNIQUE,"
    " function bytea NOT NULL,"
    " unique_key bytea NOT NULL,"
    " data bytea NOT NULL,"
    " priority smallint NOT NULL,"
    " reducer bytea NOT NULL,"
    " when_epoch bigint"
)
"""The definition of :data:`COLUMNS` in ``CREATE TABLE``."""


_warned_slow = False


def _import_psycopg() -> None:
    """Fail with the install command when psycopg (or the libpq it needs) is missing.

    psycopg's pure-Python implementation (plain ``psycopg`` with the system's
    libpq) works but makes each commit cost about twice the CPU of its C one;
    that is logged once, with the install command.
    """
    global _warned_slow
    try:
        from psycopg import pq
    except ImportError as exc:
        raise StoreError(
            f"the PostgreSQL queue needs psycopg 3 and libpq: {INSTALL_HINT}"
            f" (or pip install 'psycopg[binary]'): {exc}"
        ) from None
    if pq.__impl__ == "python" and not _warned_slow:
        _warned_slow = True
        logger.warning(
            "psycopg runs its pure-Python implementation, which about halves the "
            "PostgreSQL queue's throughput: pip install 'psycopg[binary]' (or "
            "'psycopg[c]', built against the system's libpq)"
        )


def _location(dsn: str) -> str:
    """``user@host:port/dbname`` for a connection string, without the password."""
    import psycopg
    from psycopg import conninfo, pq

    try:
        params = conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # libpq's message quotes a piece of the string, which may be of a password.
        secret = "password" in dsn.lower() or "@" in dsn
        detail = "libpq cannot parse it" if secret else _first_line(exc)
        raise StoreError(f"not a PostgreSQL connection string: {detail}") from None
    # libpq's defaults for what the string leaves out: PGHOST, PGPORT, ... or built in.
    defaults = {
        option.keyword.decode(): option.val.decode()
        for option in pq.Conninfo.get_defaults()
        if option.val is not None
    }

    def value(key: str, fallback: str = "") -> str:
        given = params.get(key)
        return str(given) if given not in (None, "") else defaults.get(key, fallback)

    user = value("user")
    host = value("host") or value("hostaddr") or "localhost"
    port = value("port", "5432")
    dbname = value("dbname") or user
    return f"{user}@{host}:{port}/{dbname}" if user else f"{host}:{port}/{dbname}"


class PostgresStore:
    """Background jobs in a PostgreSQL table (implements ``QueueStore``).

    Args:
        dsn: a libpq connection string, ``"host=db port=5432 dbname=gearman
            user=gearman password=..."`` or ``"postgresql://user:pw@db/gearman"``.
            libpq's environment variables (``PGHOST``, ``PGPASSWORD``, ...) and
            ``~/.pgpass`` fill in what it leaves out. TCP keepalive settings
            (``keepalives_idle``, ``tcp_user_timeout``) bound how long a call
            waits on a database that stopped answering without closing the
            connection.
        table: the jobs table (created when missing); the handle counter lives in
            ``<table>_meta``. A plain SQL name, folded to lower case as
            PostgreSQL folds an unquoted name; at most 58 characters.
        connect_timeout: how long one attempt to connect may take, in seconds
            (rounded up to whole seconds; libpq waits at least 2).

    Raises:
        StoreError: psycopg is not installed, or ``dsn`` is not a connection string.
        ValueError: the table name is not a plain SQL name.

    Example:
        >>> store = PostgresStore("host=db user=gearman dbname=queue password=secret")
        >>> store.description
        'postgresql gearman@db:5432/queue table gearman_queue'
    """

    def __init__(
        self, dsn: str, table: str = DEFAULT_TABLE, *, connect_timeout: float = 5.0
    ) -> None:
        folded = table.lower()
        if not _TABLE_NAME.fullmatch(folded):
            raise ValueError(
                f"{table!r} is not a table name (letters, digits and _, not starting"
                " with a digit, at most 58 characters)"
            )
        if not (connect_timeout > 0 and math.isfinite(connect_timeout)):
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout!r}")
        _import_psycopg()
        self.table = folded
        self._dsn = dsn
        self._where = _location(dsn)
        self._connect_timeout = max(1, math.ceil(connect_timeout))
        self._conn: psycopg.Connection[TupleRow] | None = None
        self._lost = False

    @property
    def location(self) -> str:
        """``user@host:port/dbname``: the database, without the password."""
        return self._where

    @property
    def dsn(self) -> str:
        """The connection string given (it may hold a password: never log it)."""
        return self._dsn

    @property
    def description(self) -> str:
        """``postgresql user@host:port/dbname table NAME``: where the queue is, no password."""
        return f"postgresql {self._where} table {self.table}"

    # --- the QueueStore protocol ------------------------------------------------------------

    def open(self) -> StoreContents:
        """Connect, create the tables when missing, and read every stored job.

        Returns:
            The stored jobs in submission order, and the highest handle number
            reserved so far.

        Raises:
            StoreError: PostgreSQL cannot be reached or read, or the table has
                another layout.
        """
        return self.transaction(self._read, "cannot read the queue from")

    def commit(
        self, added: Sequence[StoredJob], removed: Sequence[bytes], handle_limit: int | None
    ) -> Mapping[bytes, bytes] | None:
        """Write one transaction: delete ``removed``, then insert ``added`` in order.

        A commit with nothing to write still sends BEGIN and COMMIT, so the server
        can use it to learn whether the database is back.

        Args:
            added: new jobs, none of whose handles is stored yet.
            removed: handles of jobs that ended (an unknown handle is no error);
                never one of ``added``.
            handle_limit: the new highest reserved handle number, or ``None``; the
                stored one only grows.

        Returns:
            ``None``: this queue coalesces nothing itself (the server does).

        Raises:
            StoreError: nothing was written (the transaction was rolled back, or
                the database cannot be reached).
        """
        self.transaction(
            lambda conn: self._write(conn, added, removed, handle_limit),
            "cannot write the queue to",
        )
        return None

    def close(self) -> None:
        """Close the connection (never raises)."""
        self._discard()

    # --- helpers ----------------------------------------------------------------------------

    def transaction(self, work: Callable[[psycopg.Connection[TupleRow]], _T], doing: str) -> _T:
        """Run ``work`` in one transaction, turning psycopg's errors into StoreError.

        For the store's own methods and those of stores built on it (the cluster
        store); ``doing`` starts the error message (``"cannot read the queue from"``).

        A connection that PostgreSQL closed while the store was idle (the database
        restarted) is replaced at once, within this call: BEGIN failed on it, so
        nothing of the transaction was sent.
        """
        import psycopg

        retried = False
        while True:
            fresh = self._conn is None
            conn = self._connection()
            began = False
            try:
                with conn.transaction():
                    began = True
                    return work(conn)
            except psycopg.Error as exc:
                if not conn.broken or began or fresh or retried:
                    self._failed(conn, exc, doing)
                logger.info("Reconnecting to PostgreSQL at %s: %s", self._where, _first_line(exc))
                self._discard()
                retried = True

    def _read(self, conn: psycopg.Connection[TupleRow]) -> StoreContents:
        table, meta = self._names()
        conn.execute(
            self.compose(
                f"CREATE TABLE IF NOT EXISTS {{}} ({JOB_COLUMNS_SQL})",
                table,
            )
        )
        conn.execute(
            self.compose(
                "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value bigint NOT NULL)",
                meta,
            )
        )
        self.check_layout(conn, self.table, COLUMNS)
        self.check_layout(conn, self.table + "_meta", META_COLUMNS)
        conn.execute(
            self.compose(
                "INSERT INTO {} VALUES ('handle_limit', 0) ON CONFLICT (key) DO NOTHING", meta
            )
        )
        row = conn.execute(
            self.compose("SELECT value FROM {} WHERE key = 'handle_limit'", meta)
        ).fetchone()
        assert row is not None
        limit = row[0]
        assert isinstance(limit, int)
        with conn.cursor(binary=True) as cursor:
            cursor.execute(self.compose(f"SELECT {FIELDS} FROM {{}} ORDER BY seq", table))
            jobs = [StoredJob(h, f, u, d, p, r, w) for h, f, u, d, p, r, w in cursor]
        return StoreContents(jobs, limit)

    def _write(
        self,
        conn: psycopg.Connection[TupleRow],
        added: Sequence[StoredJob],
        removed: Sequence[bytes],
        handle_limit: int | None,
    ) -> None:
        table, meta = self._names()
        with conn.cursor() as cursor:
            if removed:
                cursor.execute(
                    self.compose("DELETE FROM {} WHERE handle = ANY(%s)", table), (list(removed),)
                )
            if added:
                # COPY keeps the order, like INSERTs; it takes a batch of 10,000 jobs
                # about four times faster than executemany() (bench/store_postgres.py).
                with cursor.copy(
                    self.compose(f"COPY {{}} ({FIELDS}) FROM STDIN (FORMAT BINARY)", table)
                ) as copy:
                    copy.set_types(COPY_TYPES)
                    for job in added:  # a StoredJob is a tuple in column order
                        copy.write_row(job)
            if handle_limit is not None:
                cursor.execute(
                    self.compose(
                        "UPDATE {} SET value = GREATEST(value, %s) WHERE key = 'handle_limit'",
                        meta,
                    ),
                    (handle_limit,),
                )

    def _names(self) -> tuple[sql.Identifier, sql.Identifier]:
        from psycopg import sql

        return sql.Identifier(self.table), sql.Identifier(self.table + "_meta")

    @staticmethod
    def compose(template: str, name: sql.Identifier) -> sql.Composed:
        """``template`` with ``{}`` replaced by the quoted name ``name``."""
        from psycopg import sql

        return sql.SQL(template).format(name)

    def check_layout(
        self,
        conn: psycopg.Connection[TupleRow],
        name: str,
        expected: tuple[tuple[str, str], ...],
    ) -> None:
        """Raise StoreError unless the table ``name`` has the columns ``expected``."""
        from psycopg import sql

        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
            " ORDER BY attnum",
            (sql.Identifier(name).as_string(conn),),
        ).fetchall()
        columns = tuple((str(column), str(kind)) for column, kind in rows)
        if columns != expected:
            found = ", ".join(f"{column} {kind}" for column, kind in columns)
            raise StoreError(
                f"the table {name} in {self._where} is not a trio-gearmand"
                f" queue (columns {found}); choose another table name"
            )

    def _connection(self) -> psycopg.Connection[TupleRow]:
        """The open connection, or one attempt at a new one."""
        import psycopg

        if self._conn is not None:
            return self._conn
        try:
            conn = psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._connect_timeout
            )
        except psycopg.Error as exc:
            self._lose(exc)
            raise StoreError(
                f"cannot reach PostgreSQL at {self._where}: {_first_line(exc)}"
            ) from None
        self._conn = conn
        if self._lost:
            self._lost = False
            logger.info("PostgreSQL queue reachable again (%s)", self._where)
        return conn

    def _failed(
        self, conn: psycopg.Connection[TupleRow], exc: psycopg.Error, doing: str
    ) -> NoReturn:
        """Turn a failed statement into a StoreError; drop a broken connection."""
        if conn.broken or conn.closed:
            self._discard()
            self._lose(exc)
            raise StoreError(
                f"cannot reach PostgreSQL at {self._where}: {_first_line(exc)}"
            ) from None
        raise StoreError(f"{doing} PostgreSQL at {self._where}: {_first_line(exc)}") from None

    def _lose(self, exc: BaseException) -> None:
        if not self._lost:
            self._lost = True
            logger.info("PostgreSQL queue unreachable (%s): %s", self._where, _first_line(exc))

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover  (psycopg closes a broken one quietly)
                logger.debug("Closing the PostgreSQL connection failed", exc_info=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
