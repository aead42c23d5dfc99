"""The SQLite store alone, and the stores driving a real GearmanServer (group commit, failure)."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trio

from trio_gearman import Client, JobFailed, Worker
from trio_gearman._exceptions import GearmanError
from trio_gearman._proto._codec import encode
from trio_gearman._proto._packets import JobCreated, SubmitJob
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server import server as server_module
from trio_gearman._server.connection import HAVE_EPOLL
from trio_gearman._server.server import GearmanServer
from trio_gearman._server.store import QueueStore, SqliteStore, StoredJob, StoreError
from trio_gearman._server.store.postgres import PostgresStore
from trio_gearman._worker.job import Job

from .postgres_peer import PostgresCluster

RESERVE = 1_000_000


def job(n: int, **fields: object) -> StoredJob:
    values: dict[str, object] = {
        "handle": b"H:t:%d" % n,
        "function": b"f",
        "unique": b"",
        "data": b"data %d" % n,
        "priority": 1,
    }
    values.update(fields)
    return StoredJob(**values)  # type: ignore[arg-type]


# --- the store alone ---------------------------------------------------------------------------


def test_commit_then_open_returns_every_field_in_submission_order(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    assert (list(store.open().jobs), store.open().handle_limit) == ([], 0)
    jobs = [
        job(3, data=b"\0\xff binary", priority=0, unique=b"key"),
        job(1, reducer=b"sum", priority=2),
        job(2, epoch=4_000_000_000, unique=b"-"),
    ]
    store.commit(jobs[:2], [], 100)
    store.commit(jobs[2:], [b"H:t:unknown"], None)
    store.close()
    again = SqliteStore(path)
    contents = again.open()
    assert list(contents.jobs) == jobs
    assert contents.handle_limit == 100
    again.commit([], [b"H:t:3"], 50)  # the limit only grows
    assert [j.handle for j in again.open().jobs] == [b"H:t:1", b"H:t:2"]
    assert again.open().handle_limit == 100
    again.close()


def test_a_big_batch_is_one_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    store.open()
    store.commit([job(n) for n in range(10_000)], [], None)
    with pytest.raises(StoreError, match="UNIQUE constraint failed"):
        store.commit([job(10_000), job(0)], [], None)  # job 0 exists: nothing is written
    assert len(store.open().jobs) == 10_000
    store.close()


def test_a_full_database_refuses_commits_until_jobs_free_room(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db", max_size=64 * 1024)
    store.open()
    big = b"x" * 2000
    added = 0
    while True:
        try:
            store.commit([job(added, data=big)], [], None)
        except StoreError as exc:
            error = str(exc)
            break
        added += 1
    assert "database or disk is full" in error
    assert added > 5
    assert len(store.open().jobs) == added  # nothing acknowledged is lost
    store.commit([], [job(n).handle for n in range(added)], None)
    store.commit([job(added, data=big)], [], None)
    store.close()


def test_a_table_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE gearman_queue (unique_key TEXT, function_name TEXT)")
    with pytest.raises(StoreError, match="is not a trio-gearmand queue"):
        SqliteStore(path).open()
    SqliteStore(path, "other").open()  # another table is fine


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="not a table name"):
        SqliteStore("q.db", "a; DROP TABLE x")
    with pytest.raises(ValueError, match="synchronous"):
        SqliteStore("q.db", synchronous="SOMETIMES")


def test_an_unreadable_path_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot use the queue database"):
        SqliteStore(tmp_path).open()  # a directory


def test_wal_mode_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    store.open()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    store.close()
    assert store.description == f"sqlite {path}"


def test_a_queue_of_the_earlier_layout_keeps_its_handle_counter(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    store = SqliteStore(path)
    store.open()
    store.close()
    with sqlite3.connect(path) as db:  # as the earlier version left it
        db.execute("DELETE FROM gearman_queue_meta")
        db.execute("INSERT INTO gearman_queue_meta VALUES ('handles_issued', 41)")
    assert SqliteStore(path).open().handle_limit == 41


# --- driving a server --------------------------------------------------------------------------


@asynccontextmanager
async def durable_server(store: QueueStore) -> AsyncIterator[GearmanServer]:
    server = GearmanServer(ServerConfig(job_handle_prefix=b"H:t"), [("127.0.0.1", 0)], store=store)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        yield server
        await server.aclose()


def address(server: GearmanServer) -> str:
    return f"127.0.0.1:{server.port}"


async def test_concurrent_submissions_share_commits_and_survive_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    submitted: list[bytes] = []
    async with durable_server(SqliteStore(path)) as server:

        async def submit_many(n: int) -> None:
            async with Client(address(server)) as client, trio.open_nursery() as inner:
                for i in range(100):

                    async def one(i: int = i) -> None:
                        job = await client.submit_background("f", b"%d-%d" % (n, i))
                        submitted.append(job.handle)

                    inner.start_soon(one)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(submit_many, n)
        statistics = server.store_statistics()
        assert statistics is not None
        assert statistics.jobs == 1000
        assert statistics.commits < 500  # group commit: many jobs per transaction
        assert sum(statistics.batch) == sum(statistics.latency) == statistics.commits
    # every acknowledged job is on disk, once
    async with durable_server(SqliteStore(path)) as server:
        assert server.replayed == 1000
        assert sorted(job.handle for job in server.state.jobs) == sorted(submitted)
        async with Client(address(server)) as client:
            # no handle of the first run is issued again
            new = await client.submit_background("f", b"new")
        assert int(new.handle.rsplit(b":", 1)[1]) > RESERVE


async def test_a_full_store_refuses_background_jobs_and_recovers_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_gearman.server.store")
    store = SqliteStore(tmp_path / "q.db", max_size=64 * 1024)
    async with durable_server(store) as server, Client(address(server)) as client:
        accepted: list[object] = []
        with trio.fail_after(30):
            while True:
                try:
                    accepted.append(await client.submit_background("f", b"x" * 2000))
                except GearmanError as exc:
                    refusal = str(exc)
                    break
        assert "QUEUE_ERROR" in refusal
        assert "database or disk is full" in refusal
        assert len(accepted) > 5
        assert "database or disk is full" in caplog.text
        # foreground work goes on meanwhile
        worker = Worker(address(server))

        async def reverse(job: object) -> bytes:
            return b"fg ok"

        worker.register("fg", reverse)
        ran: list[bytes] = []
        all_ran = trio.Event()

        async def drain(job: object) -> bytes:
            ran.append(b"")
            if len(ran) == len(accepted):
                all_ran.set()
            return b""

        worker.register("f", drain)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            with trio.fail_after(10):
                assert await client.submit("fg", b"") == b"fg ok"
            # the worker runs the stored jobs; their deletions free room
            with trio.fail_after(30):
                await all_ran.wait()
            with trio.fail_after(10):
                await client.submit_background("f", b"after")
            worker.stop(0)
        assert len(ran) >= len(accepted)
        said = [r.getMessage() for r in caplog.records if r.name == "trio_gearman.server.store"]
        failures = [line for line in said if "failed" in line]
        recoveries = [line for line in said if line.endswith("works again")]
        assert (len(failures), len(recoveries)) == (1, 1), said


async def test_a_refused_foreground_job_is_unaffected_by_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db", max_size=64 * 1024)
    async with durable_server(store) as server, Client(address(server)) as client:
        worker = Worker(address(server))

        async def fail(job: object) -> bytes:
            raise JobFailed()

        worker.register("g", fail)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            with trio.fail_after(10), pytest.raises(JobFailed):
                await client.submit("g", b"x" * 100_000)
            worker.stop(0)


# --- PostgreSQL going away under a running server --------------------------------------------


async def test_postgres_going_away_refuses_background_jobs_then_recovers_by_itself(
    postgres_cluster: PostgresCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_gearman.server.store")
    table = f"away_{id(caplog)}"
    async with durable_server(PostgresStore(postgres_cluster.dsn, table)) as server:
        worker = Worker(address(server))

        async def reverse(job: Job) -> bytes:
            return job.data[::-1]

        worker.register("fg", reverse)
        async with Client(address(server)) as client, trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            before = await client.submit_background("f", b"before")
            await trio.to_thread.run_sync(postgres_cluster.stop)
            try:
                with trio.fail_after(20), pytest.raises(GearmanError) as info:
                    await client.submit_background("f", b"during")
                assert "QUEUE_ERROR" in str(info.value)
                assert "cannot reach PostgreSQL" in str(info.value)
                # foreground work and other connections go on
                with trio.fail_after(10):
                    assert await client.submit("fg", b"abc") == b"cba"
            finally:
                await trio.to_thread.run_sync(postgres_cluster.start)
            with trio.fail_after(20):
                after = await client.submit_background("f", b"after")
            worker.stop(0)
    said = [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_gearman.server.store" and r.levelno >= logging.WARNING
    ]
    assert len([line for line in said if " failed: cannot reach PostgreSQL" in line]) == 1, said
    assert len([line for line in said if line.endswith("works again")]) == 1, said
    # nothing acknowledged is lost; the refused job does not exist
    async with durable_server(PostgresStore(postgres_cluster.dsn, table)) as server:
        kept = sorted((job.handle, job.data) for job in server.state.jobs)
    assert kept == sorted([(before.handle, b"before"), (after.handle, b"after")])


@pytest.fixture(params=["poller", "task per connection"])
def serving_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Serve with the epoll poller, and again with one task per connection."""
    mode: str = request.param
    if mode == "poller" and not HAVE_EPOLL:
        pytest.skip("no epoll on this system")
    if mode != "poller":
        monkeypatch.setattr(server_module, "HAVE_EPOLL", False)
    return mode


@pytest.mark.parametrize(
    ("after", "last"),
    [
        (struct.pack(">4sII", b"\0REQ", 99, 0), b"unknown packet type 99"),
        (b"status a b c d e f\n", b"ERR TOO_MANY_ARGS Too+many+arguments\r\n"),
    ],
    ids=["broken packet", "admin line of too many words"],
)
async def test_a_request_that_ends_the_connection_behind_a_commit_ends_it_after_its_reply(
    tmp_path: Path, serving_mode: str, after: bytes, last: bytes
) -> None:
    async with durable_server(SqliteStore(tmp_path / "q.db")) as server:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        async with stream:
            await stream.send(encode(SubmitJob(b"f", b"", b"x", background=True)) + after)
            received = b""
            with trio.fail_after(5):  # the server closes: the stream ends
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        received += await stream.receive()
        # the JOB_CREATED first (the job is on disk: its handle is the client's), then
        # the error, then the end
        assert received.startswith(encode(JobCreated(b"H:t:1")))
        assert last in received
        assert server.statistics().connections == 0
