"""One PostgreSQL queue shared by a cluster of job servers.

Every server started with the same connection string and cluster name is a
*member* of one cluster. The background jobs live in one table,
``<table>_<cluster>``, whose rows carry a claim: ``claimed_by`` (the member
number of the server that runs the job, or NULL) and ``lease_until`` (when the
claim lapses unless renewed). The member numbers come from ``<table>_<cluster>_meta``
and are never given twice, so a restarted server never believes it owns the
claims of its earlier life; they also tag the member's job handles
(``H:host:m7:1``), which stay unique across the cluster.

* A submission is committed unclaimed, with a ``NOTIFY <table>_<cluster>`` in the
  same transaction, so that every member learns of it when it is committed.
* A member claims jobs for its workers (:meth:`ClusterClaims.claim`) with
  ``FOR UPDATE SKIP LOCKED``: two members never win the same row, and a row whose
  lease lapsed (its member died) can be claimed again.
* A finished job's row is deleted, as with the plain PostgreSQL queue, but only
  while no other member claimed it.
* A background submission with a unique key coalesces onto the live row (queued
  or claimed, by any member) of the same function and key: a unique index on
  ``(function, key)`` (``<table>_<cluster>_uniq``) makes the insertion do
  nothing, and the submission gets the existing job's handle
  (:meth:`ClusterStore.commit` returns it). The key is the unique key, or for
  the unique ``-`` the SHA-256 digest of the payload; an empty unique key
  coalesces nothing.

Four connections per member: the store's (group commits, on the writer's
thread), the claims' (:class:`ClusterClaims`), one reading the counts of the
admin view (another :class:`ClusterClaims`) and a listening one
(:class:`ClusterListener`), each used by one thread at a time.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

import attrs

from ..._proto.server.cluster import ClusterCounts, ClusterView
from .base import StoreContents, StoredJob, StoreError
from .postgres import (
    COLUMNS,
    COPY_TYPES,
    DEFAULT_TABLE,
    FIELDS,
    JOB_COLUMNS_SQL,
    META_COLUMNS,
    PostgresStore,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow

__all__ = [
    "DEFAULT_LEASE",
    "DEFAULT_POLL",
    "Claimed",
    "ClusterClaims",
    "ClusterListener",
    "ClusterStore",
]

logger = logging.getLogger("trio_gearman.server.cluster")

DEFAULT_LEASE: Final = 30.0
"""Seconds a claim lasts unless renewed (``--cluster-lease``)."""
DEFAULT_POLL: Final = 5.0
"""Seconds between looks at the shared table when no notification comes."""

_CLUSTER_NAME: Final = re.compile(r"[a-z0-9_]{1,40}")
_LONGEST_TABLE: Final = 57  # "<table>_claim" (the index) must fit in 63 bytes
_LOOKUPS: Final = 5  # rounds of insert-then-look-up when a conflicting row ends meanwhile
_DEADLOCK_RETRIES: Final = 3
_COALESCE_KEY: Final = (
    "(CASE WHEN {u}unique_key = '\\x2d'::bytea THEN '\\x00'::bytea || sha256({u}data)"
    " ELSE {u}unique_key END)"
)
"""What a row's unique key coalesces on: the key, or for ``-`` the payload's digest
after a NUL (which no unique key holds: the protocol separates arguments with it)."""
_COLUMNS: Final = (
    *COLUMNS,
    ("claimed_by", "bigint"),
    ("lease_until", "timestamp with time zone"),
)


def check_cluster_name(name: str) -> str:
    """The cluster name, folded to lower case.

    Raises:
        ValueError: it is not 1 to 40 letters, digits and ``_``.
    """
    folded = name.lower()
    if not _CLUSTER_NAME.fullmatch(folded):
        raise ValueError(f"{name!r} is not a cluster name (1 to 40 letters, digits and _)")
    return folded


class ClusterStore(PostgresStore):
    """The store of one cluster member (implements ``QueueStore``).

    :meth:`open` takes a member number and reads no jobs (the member claims
    them as its workers need them); :meth:`commit` inserts unclaimed rows and
    notifies the other members. :meth:`claims` and :meth:`listener` make the
    member's other two connections.

    Args:
        dsn: a libpq connection string (see :class:`PostgresStore`).
        cluster: the cluster's name: 1 to 40 letters, digits and ``_``.
        table: the prefix of the cluster's tables: its jobs live in
            ``<table>_<cluster>``.
        lease: seconds a claim lasts unless renewed.
        poll: seconds between looks at the table when no notification comes.
        connect_timeout: how long one attempt to connect may take, in seconds.

    Raises:
        StoreError: psycopg is not installed, or ``dsn`` is not a connection string.
        ValueError: a bad cluster or table name, or a lease that is not positive.
    """

    def __init__(
        self,
        dsn: str,
        cluster: str,
        table: str = DEFAULT_TABLE,
        *,
        lease: float = DEFAULT_LEASE,
        poll: float = DEFAULT_POLL,
        connect_timeout: float = 5.0,
    ) -> None:
        cluster = check_cluster_name(cluster)
        name = f"{table.lower()}_{cluster}"
        if len(name) > _LONGEST_TABLE:
            raise ValueError(
                f"the cluster's table {name!r} is longer than {_LONGEST_TABLE} characters;"
                " choose a shorter table or cluster name"
            )
        for what, value in (("lease", lease), ("poll", poll)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"the {what} must be a positive number of seconds, not {value!r}")
        super().__init__(dsn, name, connect_timeout=connect_timeout)
        self.cluster = cluster
        self.lease = lease
        self.poll = poll
        self.member = 0
        self._connect_timeout_seconds = connect_timeout

    @property
    def description(self) -> str:
        """``postgresql user@host:port/dbname cluster NAME member N``: no password."""
        member = f" member {self.member}" if self.member else ""
        return f"postgresql {self.location} cluster {self.cluster} (table {self.table}){member}"

    def open(self) -> StoreContents:
        """Create the cluster's tables when missing and take a new member number.

        Returns:
            No jobs (the member claims them later), and the member's handle tag.

        Raises:
            StoreError: PostgreSQL cannot be reached, or a table has another layout.
        """
        self.member = self.transaction(self._join, "cannot join the cluster in")
        return StoreContents((), 0, b"m%d" % self.member)

    def commit(
        self, added: Sequence[StoredJob], removed: Sequence[bytes], handle_limit: int | None
    ) -> Mapping[bytes, bytes]:
        """Delete the rows of ended jobs this member held, insert ``added``, notify.

        A job of ``added`` whose function and unique key (for ``-``: payload)
        match a live row gets no row of its own: it coalesced onto that job.
        ``handle_limit`` is not needed (the member's handle tag keeps handles
        unique) and is ignored.

        Returns:
            The handles of the jobs of ``added`` that coalesced, each with the
            handle of the job it coalesced onto (empty when none did).

        Raises:
            StoreError: nothing was written.
        """
        return self.transaction(
            lambda conn: self._write_rows(conn, added, removed), "cannot write the queue to"
        )

    def claims(self) -> ClusterClaims:
        """A second connection of this member, for claims (after :meth:`open`)."""
        return ClusterClaims(self)

    def listener(self) -> ClusterListener:
        """A third connection of this member, listening for new jobs."""
        return ClusterListener(self.dsn, self.table, self.location, self._connect_timeout_seconds)

    # --- helpers ----------------------------------------------------------------------------

    def names(self) -> tuple[sql.Identifier, sql.Identifier, sql.Identifier]:
        """The quoted names of the jobs table, its meta table and its claim index."""
        from psycopg import sql

        table = self.table
        return (
            sql.Identifier(table),
            sql.Identifier(table + "_meta"),
            sql.Identifier(table + "_claim"),
        )

    def _create_unique_index(self, conn: psycopg.Connection[TupleRow]) -> None:
        """Create the index that coalesces unique keys, unless duplicates prevent it.

        A table made by an earlier version has none, and may hold rows that
        share a function and unique key: the server then goes on without
        coalescing, and says so.
        """
        import psycopg
        from psycopg import sql

        table = self.names()[0]
        index = sql.Identifier(self.table + "_uniq")
        key = _COALESCE_KEY.format(u="")
        try:
            with conn.transaction():  # a savepoint: the join goes on if it fails
                conn.execute(
                    sql.SQL(
                        "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} (function, "
                        + key
                        + ") WHERE unique_key <> ''::bytea"
                    ).format(index, table)
                )
        except psycopg.errors.UniqueViolation as exc:
            logger.error(
                "Cannot create the unique index %s_uniq: the table %s holds jobs of the same"
                " function and unique key (%s); background jobs do not coalesce on unique"
                " keys in this cluster until those rows are gone and a server starts again",
                self.table,
                self.table,
                str(exc).strip().splitlines()[-1],
            )

    def _join(self, conn: psycopg.Connection[TupleRow]) -> int:
        table, meta, index = self.names()
        # Members starting together would race to create the tables.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
        conn.execute(
            self.compose(
                f"CREATE TABLE IF NOT EXISTS {{}} ({JOB_COLUMNS_SQL},"
                " claimed_by bigint, lease_until timestamptz)",
                table,
            )
        )
        from psycopg import sql

        conn.execute(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (function, priority, seq)").format(
                index, table
            )
        )
        self._create_unique_index(conn)
        conn.execute(
            self.compose(
                "CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, value bigint NOT NULL)",
                meta,
            )
        )
        self.check_layout(conn, self.table, _COLUMNS)
        self.check_layout(conn, self.table + "_meta", META_COLUMNS)
        row = conn.execute(
            self.compose(
                "INSERT INTO {0} AS m VALUES ('members', 1) ON CONFLICT (key)"
                " DO UPDATE SET value = m.value + 1 RETURNING value",
                meta,
            )
        ).fetchone()
        assert row is not None
        member = row[0]
        assert isinstance(member, int)
        logger.info(
            "Joined the cluster %s as member %d (%s, pid %d)",
            self.cluster,
            member,
            socket.gethostname(),
            os.getpid(),
        )
        return member

    def _write_rows(
        self,
        conn: psycopg.Connection[TupleRow],
        added: Sequence[StoredJob],
        removed: Sequence[bytes],
    ) -> dict[bytes, bytes]:
        table = self.names()[0]
        existing: dict[bytes, bytes] = {}
        with conn.cursor() as cursor:
            if removed:
                # A row another member claimed (this member's lease lapsed) is its now.
                cursor.execute(
                    self.compose(
                        "DELETE FROM {} WHERE handle = ANY(%s)"
                        " AND (claimed_by IS NULL OR claimed_by = %s)",
                        table,
                    ),
                    (list(removed), self.member),
                )
            if not added:
                return existing
            if any(job.unique for job in added):
                existing = self._insert_coalescing(conn, added)
            else:
                # No unique key: nothing can coalesce, and COPY is the fastest way in.
                with cursor.copy(
                    self.compose(f"COPY {{}} ({FIELDS}) FROM STDIN (FORMAT BINARY)", table)
                ) as copy:
                    copy.set_types(COPY_TYPES)
                    for job in added:
                        copy.write_row(job)
            if len(existing) < len(added):
                cursor.execute(self.compose("NOTIFY {}", table))
        return existing

    def _insert_coalescing(
        self, conn: psycopg.Connection[TupleRow], added: Sequence[StoredJob]
    ) -> dict[bytes, bytes]:
        """Insert ``added`` in order, in one statement, but not the rows whose unique
        key a live row has: those coalesce onto it (their handle, with its handle).

        Two members inserting the same keys in another order can deadlock: the one
        PostgreSQL aborts tries again (a savepoint keeps the rest of the commit).
        """
        import psycopg

        for attempt in range(_DEADLOCK_RETRIES):
            try:
                with conn.transaction():
                    return self._insert_and_look_up(conn, added)
            except psycopg.errors.DeadlockDetected:
                if attempt == _DEADLOCK_RETRIES - 1:
                    raise
                logger.info("Inserting jobs met another member's insertion; trying again")
        raise AssertionError("unreachable")  # pragma: no cover

    def _insert_and_look_up(
        self, conn: psycopg.Connection[TupleRow], added: Sequence[StoredJob]
    ) -> dict[bytes, bytes]:
        table = self.names()[0]
        insert = self.compose(
            f"INSERT INTO {{}} ({FIELDS}) SELECT h, f, u, d, p, r, w FROM"
            " unnest(%s::bytea[], %s::bytea[], %s::bytea[], %s::bytea[], %s::int2[],"
            " %s::bytea[], %s::int8[]) WITH ORDINALITY AS n(h, f, u, d, p, r, w, o)"
            " ORDER BY o ON CONFLICT DO NOTHING RETURNING handle",
            table,
        )
        look_up = self.compose(
            "SELECT d.h, t.handle FROM unnest(%s::bytea[], %s::bytea[], %s::bytea[])"
            " AS d(h, f, k) JOIN {} AS t ON t.function = d.f"
            " AND t.unique_key <> ''::bytea AND " + _COALESCE_KEY.format(u="t.") + " = d.k",
            table,
        )
        existing: dict[bytes, bytes] = {}
        todo = list(added)
        with conn.cursor(binary=True) as cursor:
            for _ in range(_LOOKUPS):
                cursor.execute(insert, [list(column) for column in zip(*todo, strict=True)])
                inserted = {bytes(row[0]) for row in cursor.fetchall()}
                conflicted = [job for job in todo if job.handle not in inserted]
                if not conflicted:
                    return existing
                cursor.execute(
                    look_up,
                    (
                        [job.handle for job in conflicted],
                        [job.function for job in conflicted],
                        [_coalesce_key(job) for job in conflicted],
                    ),
                )
                for handle, found in cursor.fetchall():
                    existing[bytes(handle)] = bytes(found)
                # A row that ended between the two statements: insert those again.
                todo = [job for job in conflicted if job.handle not in existing]
                if not todo:
                    return existing
        raise StoreError(
            f"cannot insert {len(todo)} jobs into {self.table} at {self.location}:"
            " the jobs they coalesce onto keep ending"
        )


def _coalesce_key(job: StoredJob) -> bytes:
    """What ``job`` coalesces on in the store (as :data:`_COALESCE_KEY` computes it)."""
    return b"\0" + hashlib.sha256(job.data).digest() if job.unique == b"-" else job.unique


@attrs.frozen
class Claimed:
    """What :meth:`ClusterClaims.claim` got.

    Attributes:
        jobs: the jobs claimed, highest priority and oldest first.
        next_in: when fewer jobs were found than wanted: in how many seconds
            (by the database's clock) the next job of those functions becomes
            claimable, or ``None`` when none will without a new submission.
    """

    jobs: list[StoredJob]
    next_in: float | None


class ClusterClaims:
    """A member's claims: its own connection, used from one thread at a time.

    Args:
        store: the member's opened :class:`ClusterStore` (its member number,
            names and lease are used).
    """

    def __init__(self, store: ClusterStore) -> None:
        self._store = store
        self._db = PostgresStore(store.dsn, store.table)
        self._member = store.member
        self._lease = store.lease

    def claim(self, wanted: Sequence[tuple[bytes, int]], skip: Sequence[bytes] = ()) -> Claimed:
        """Claim up to ``count`` due, unclaimed (or lapsed) jobs of each function.

        Highest priority first, then oldest first; epoch jobs only once due (by
        the database's clock). No two members ever claim the same job while its
        lease runs.

        Args:
            wanted: ``(function, count)`` pairs.
            skip: handles not to claim (jobs that ended here, whose rows are
                not deleted yet).

        Returns:
            The jobs claimed, highest priority and oldest first; when fewer than
            wanted, also in how many seconds another job of these functions
            becomes claimable (a lease lapses, an epoch job comes due), if any.

        Raises:
            StoreError: nothing was claimed.
        """
        if not wanted:
            return Claimed([], None)
        functions = [function for function, _ in wanted]
        counts = [count for _, count in wanted]
        table = self._store.names()[0]
        query = self._db.compose(
            "UPDATE {0} SET claimed_by = %s, lease_until = now() + %s * interval '1 second'"
            " WHERE seq IN (SELECT c.seq FROM unnest(%s::bytea[], %s::int[]) AS d(f, n)"
            " CROSS JOIN LATERAL (SELECT seq FROM {0} WHERE function = d.f"
            " AND (claimed_by IS NULL OR lease_until < now())"
            " AND (when_epoch IS NULL OR when_epoch <= extract(epoch FROM now()))"
            " AND NOT (handle = ANY(%s::bytea[]))"
            " ORDER BY priority, seq LIMIT d.n FOR UPDATE SKIP LOCKED) AS c)"
            f" RETURNING priority, seq, {FIELDS}",
            table,
        )

        later = self._db.compose(
            "SELECT min(CASE WHEN claimed_by IS NULL"
            " THEN when_epoch - extract(epoch FROM now())"
            " ELSE extract(epoch FROM lease_until - now()) END)::float8"
            " FROM {} WHERE function = ANY(%s::bytea[]) AND ("
            " (claimed_by IS NULL AND when_epoch > extract(epoch FROM now()))"
            " OR (claimed_by IS NOT NULL AND claimed_by <> %s))",
            table,
        )

        def work(conn: psycopg.Connection[TupleRow]) -> Claimed:
            with conn.cursor(binary=True) as cursor:
                cursor.execute(query, (self._member, self._lease, functions, counts, list(skip)))
                rows = sorted(cursor.fetchall(), key=lambda row: (row[0], row[1]))
            jobs = [StoredJob(h, f, u, d, p, r, w) for _, _, h, f, u, d, p, r, w in rows]
            wait = None
            if len(jobs) < sum(counts):
                found = conn.execute(later, (functions, self._member)).fetchone()
                if found is not None and found[0] is not None:
                    wait = max(float(found[0]), 0.0)
            return Claimed(jobs, wait)

        return self._db.transaction(work, "cannot claim jobs in")

    def view(self, limit: int) -> ClusterView:
        """The jobs of the shared queue that this member does not hold.

        Counts per function (waiting per priority, held by other members), and
        the handles of the oldest ``limit`` of them. It reads the whole table
        (a count per function and priority): call it about once a second at most.

        Raises:
            StoreError: the table cannot be read.
        """
        table = self._store.names()[0]
        counts = self._db.compose(
            "SELECT function, priority,"
            " count(*) FILTER (WHERE claimed_by IS NULL OR lease_until < now()),"
            " count(*) FILTER (WHERE claimed_by <> %s AND lease_until >= now())"
            " FROM {} GROUP BY function, priority ORDER BY function",
            table,
        )
        oldest = self._db.compose(
            "SELECT handle FROM {} WHERE claimed_by IS NULL OR claimed_by <> %s"
            " OR lease_until < now() ORDER BY seq LIMIT %s",
            table,
        )

        def work(conn: psycopg.Connection[TupleRow]) -> ClusterView:
            functions: dict[bytes, list[int]] = {}
            with conn.cursor(binary=True) as cursor:
                cursor.execute(counts, (self._member,))
                for function, priority, waiting, elsewhere in cursor.fetchall():
                    if not (waiting or elsewhere):
                        continue  # all held by this member
                    found = functions.setdefault(bytes(function), [0, 0, 0, 0])
                    found[min(max(priority, 0), 2)] += waiting
                    found[3] += elsewhere
                cursor.execute(oldest, (self._member, limit))
                handles = [bytes(row[0]) for row in cursor.fetchall()]
            return ClusterView(
                {
                    name: ClusterCounts((high, normal, low), elsewhere)
                    for name, (high, normal, low, elsewhere) in functions.items()
                },
                handles,
            )

        return self._db.transaction(work, "cannot read the queue's counts from")

    def renew(self, handles: Sequence[bytes]) -> int:
        """Extend the leases of this member's claims of ``handles``; how many there are.

        Only the jobs the member holds are renewed: a row it claimed without
        knowing (the reply to a claim was lost with the connection), or whose
        job ended but whose deletion is not committed yet, lapses.

        Raises:
            StoreError: the leases were not renewed.
        """
        table = self._store.names()[0]
        query = self._db.compose(
            "UPDATE {} SET lease_until = now() + %s * interval '1 second'"
            " WHERE claimed_by = %s AND handle = ANY(%s)",
            table,
        )

        def work(conn: psycopg.Connection[TupleRow]) -> int:
            return conn.execute(query, (self._lease, self._member, list(handles))).rowcount

        return self._db.transaction(work, "cannot renew the leases in")

    def release(self, handles: Sequence[bytes] | None) -> int:
        """Give back claims (``None``: all of this member's) and notify the members.

        Returns:
            How many claims were given back.

        Raises:
            StoreError: nothing was given back.
        """
        table = self._store.names()[0]
        query = self._db.compose(
            "UPDATE {} SET claimed_by = NULL, lease_until = NULL WHERE claimed_by = %s"
            + ("" if handles is None else " AND handle = ANY(%s)"),
            table,
        )
        params: tuple[object, ...] = (
            (self._member,) if handles is None else (self._member, list(handles))
        )

        def work(conn: psycopg.Connection[TupleRow]) -> int:
            count = conn.execute(query, params).rowcount
            if count:
                conn.execute(self._db.compose("NOTIFY {}", table))
            return count

        return self._db.transaction(work, "cannot release claims in")

    def close(self) -> None:
        """Close the connection (never raises)."""
        self._db.close()


class ClusterListener:
    """A connection that waits for the cluster's notifications (one thread at a time).

    Args:
        dsn: the connection string.
        channel: the channel (the jobs table's name).
        location: the database, for messages.
        connect_timeout: seconds one attempt to connect may take.
    """

    def __init__(self, dsn: str, channel: str, location: str, connect_timeout: float) -> None:
        self._dsn = dsn
        self._channel = channel
        self._where = location
        self._timeout = max(1, math.ceil(connect_timeout))
        self._conn: psycopg.Connection[TupleRow] | None = None

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a notification.

        Returns:
            Whether one came, or the connection was (re)made: notifications may
            have been missed meanwhile, so the member should look for jobs.

        Raises:
            StoreError: PostgreSQL cannot be reached (the next call tries again).
        """
        import psycopg
        from psycopg import sql

        fresh = False
        try:
            if self._conn is None:
                conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                self._conn = conn
                fresh = True
            for _ in self._conn.notifies(timeout=timeout, stop_after=1):
                return True
        except psycopg.Error as exc:
            self.close()
            raise StoreError(f"cannot listen to PostgreSQL at {self._where}: {exc}") from None
        return fresh

    def close(self) -> None:
        """Close the connection (never raises)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                logger.debug("Closing the listening connection failed", exc_info=True)
