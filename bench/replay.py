"""How long a restarted server takes to replay its persistent queue.

Fills a queue with ``--jobs`` background jobs (SQLite file, or PostgreSQL on a
throw-away cluster with ``--postgres``), then times ``GearmanServer.run`` from its
start until it listens, the stored jobs queued again. Usage (from the repository
root)::

    python bench/replay.py --jobs 1000000
    python bench/replay.py --jobs 1000000 --postgres
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trio_gearman._proto.server.model import StoredJob
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer
from trio_gearman._server.store import QueueStore, SqliteStore

BATCH = 50_000


@contextlib.contextmanager
def make_store(postgres: bool) -> Iterator[QueueStore]:
    """A new, empty store of the chosen kind."""
    if postgres:
        from tests.postgres_peer import running_cluster
        from trio_gearman._server.store.postgres import PostgresStore

        with running_cluster() as cluster:
            yield PostgresStore(cluster.dsn, "replay_bench")
        return
    with tempfile.TemporaryDirectory() as directory:
        yield SqliteStore(Path(directory) / "queue.db")


def fill(store: QueueStore, jobs: int) -> float:
    """Commit ``jobs`` jobs in batches; return the seconds it took."""
    store.open()
    started = time.perf_counter()
    for first in range(0, jobs, BATCH):
        batch = [
            StoredJob(b"H:bench:%d" % n, b"f%d" % (n % 100), b"u%d" % n, b"x" * 16, n % 3)
            for n in range(first, min(first + BATCH, jobs))
        ]
        store.commit(batch, [], None)
    store.close()
    return time.perf_counter() - started


async def replay(store: QueueStore) -> tuple[float, int]:
    """Seconds from the server's start until it listens, and the jobs replayed."""
    server = GearmanServer(ServerConfig(), [("127.0.0.1", 0)], store=store)
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        await nursery.start(server.run)
        elapsed = time.perf_counter() - started
        queued = server.state.jobs_queued
        await server.aclose()
    return elapsed, queued


def main() -> int:
    """Fill, replay, print one line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with make_store(args.postgres) as store:
        filled = fill(store, args.jobs)
        gc.collect()
        seconds, queued = trio.run(replay, store)
    kind = "postgres" if args.postgres else "sqlite"
    print(
        f"{kind}: {args.jobs:,} jobs stored in {filled:.1f} s; replayed {queued:,} in "
        f"{seconds:.2f} s ({queued / seconds:,.0f} jobs/s) before listening"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
