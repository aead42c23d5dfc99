"""How fast the PostgreSQL queue commits and reads: ``PYTHONPATH=. python bench/store_postgres.py``.

Measures :class:`~trio_gearman._server.store.postgres.PostgresStore` alone (no job
server): the group commit of 1, 100 and 10,000 new background jobs (jobs/s, the
median of several commits), and ``open()`` of a table holding 1,000,000 jobs
(seconds). Jobs are like the server benchmark's: 36-byte uniques, 16-byte payloads.

By default it runs on the database named by ``$BENCH_POSTGRES_DSN`` or else on a
throw-away cluster of its own (``tests/postgres_peer.py``: initdb + pg_ctl on a free
loopback port, PostgreSQL's defaults, fsync on); ``--dsn`` points it at another
database instead. It uses a table of its own and drops it afterwards. A measurement,
not a test: the test suite never runs it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

from _loadgen_servers import drop_tables, postgres_database

from trio_gearman._server.store.base import StoredJob
from trio_gearman._server.store.postgres import PostgresStore

BATCHES = ((1, 50), (100, 20), (10_000, 5))  # (jobs per commit, commits)


def jobs(first: int, count: int) -> list[StoredJob]:
    """``count`` background jobs with handles from ``H:bench:<first>`` on."""
    return [
        StoredJob(b"H:bench:%d" % n, b"bench", b"%036d" % n, b"x" * 16, 1)
        for n in range(first, first + count)
    ]


@contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """The DSN to measure on: ``dsn``, or else :func:`postgres_database`'s."""
    if dsn is not None:
        yield dsn
        return
    with postgres_database() as db:
        yield db.dsn


def main() -> None:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="measure on this database (default: a throw-away cluster)")
    parser.add_argument("--open-jobs", type=int, default=1_000_000, help="jobs stored for open()")
    args = parser.parse_args()
    table = f"bench_queue_{os.getpid()}"
    with database(args.dsn) as dsn:
        store = PostgresStore(dsn, table)
        try:
            store.open()
            fsync = store_setting(dsn, "fsync")
            print(f"{store.description}, fsync={fsync}")
            number = 1
            for size, commits in BATCHES:
                rates = []
                for _ in range(commits):
                    batch = jobs(number, size)
                    number += size
                    start = time.perf_counter()
                    store.commit(batch, [], number - 1)
                    rates.append(size / (time.perf_counter() - start))
                print(
                    f"commit of {size:>6,} jobs: {statistics.median(rates):>9,.0f} jobs/s"
                    f" (median of {commits}; min {min(rates):,.0f}, max {max(rates):,.0f})"
                )
            store.commit([], [b"H:bench:%d" % n for n in range(1, number)], None)
            for first in range(1, args.open_jobs + 1, 10_000):
                store.commit(jobs(first, min(10_000, args.open_jobs + 1 - first)), [], None)
            reader = PostgresStore(dsn, table)
            try:
                start = time.perf_counter()
                contents = reader.open()
                took = time.perf_counter() - start
            finally:
                reader.close()
            assert len(contents.jobs) == args.open_jobs
            print(f"open() of {args.open_jobs:,} stored jobs: {took:.2f} s")
        finally:
            store.close()
            drop_tables(dsn, table)


def store_setting(dsn: str, name: str) -> str:
    """A server setting (``SHOW name``)."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SHOW {name}".encode()).fetchone()
    assert row is not None
    return str(row[0])


if __name__ == "__main__":
    main()
