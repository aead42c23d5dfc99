"""``trio-gearmand -q sqlite``: background jobs survive a killed or stopped server."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import trio
from anyio.abc import SocketStream

from trio_gearman._proto import Event
from trio_gearman._proto._codec import Decoder, encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    GetStatus,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    NoJob,
    Priority,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
)

from .gearmand_peer import free_port
from .test_cli_server import ServerProcess, expect_exit, trio_gearmand

PREFIX = b"H:persist"
RESERVE = 1_000_000  # handle numbers a durable server reserves at a time


class Connection:
    """A raw connection that sends requests and reads the replies."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.decoder = Decoder(expect=Magic.RES)
        self.pending: list[Event] = []

    async def request(self, *messages: Message, replies: int | None = None) -> list[Event]:
        """Send ``messages``; return ``replies`` replies (default: one per message)."""
        await self.stream.send(b"".join(encode(message) for message in messages))
        wanted = len(messages) if replies is None else replies
        with trio.fail_after(5):
            while len(self.pending) < wanted:
                self.decoder.feed(await self.stream.receive())
                self.pending.extend(self.decoder)
        got, self.pending = self.pending[:wanted], self.pending[wanted:]
        return got


Connect = Callable[[ServerProcess], Awaitable[Connection]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Opens connections to a server; closes them all at the end of the test."""
    opened: list[Connection] = []

    async def open_connection(server: ServerProcess) -> Connection:
        connection = Connection(await anyio.connect_tcp("127.0.0.1", server.port))
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        await connection.stream.aclose()


def arguments(db: Path, port: int) -> list[str]:
    return [
        "-L", "127.0.0.1", "-p", str(port), "--job-handle-prefix", PREFIX.decode(),
        "-q", "libsqlite3", "--libsqlite3-db", str(db),
    ]  # fmt: skip


def handle(n: int) -> bytes:
    return PREFIX + b":%d" % n


async def grab_all(worker: Connection) -> list[JobAssignUniq]:
    """Grab until NO_JOB; return the assignments."""
    assigned: list[JobAssignUniq] = []
    while True:
        (reply,) = await worker.request(GrabJobUniq())
        if isinstance(reply, NoJob):
            return assigned
        assert isinstance(reply, JobAssignUniq), reply
        assigned.append(reply)


async def stop(server: ServerProcess, how: signal.Signals) -> None:
    server.process.send_signal(how)
    with trio.fail_after(10):
        await server.process.wait()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_background_jobs_survive_a_restart(
    tmp_path: Path, how: signal.Signals, connect: Connect
) -> None:
    db, port = tmp_path / "queue.db", free_port()
    async with trio_gearmand(arguments(db, port)) as server:
        client = await connect(server)
        submitted = await client.request(
            *(SubmitJob(b"f", b"", b"job %d" % i, background=True) for i in range(4)),
            SubmitJobEpoch(b"f", b"", 1, b"past epoch"),
            SubmitJob(b"f", b"", b"foreground"),
        )
        assert submitted == [JobCreated(handle(n)) for n in range(1, 7)]
        # A finished job does not come back.
        worker = await connect(server)
        await worker.request(CanDo(b"f"), replies=0)
        (first,) = await worker.request(GrabJobUniq())
        assert first == JobAssignUniq(handle(1), b"f", b"", b"job 0")
        await worker.stream.send(encode(WorkComplete(handle(1), b"done")))
        # The job that runs when the server dies comes back too.
        (second,) = await worker.request(GrabJobUniq())
        assert isinstance(second, JobAssignUniq)
        assert second.handle == handle(2)
        assert await client.request(GetStatus(handle(2))) == [
            StatusRes(handle(2), True, True, 0, 0)
        ]
        # A durable submission is acknowledged once everything before it is
        # committed, job 1's deletion included (group commits are in order).
        barrier = SubmitJob(b"f", b"", b"barrier", background=True)
        assert await client.request(barrier) == [JobCreated(handle(7))]
        await stop(server, how)
        log = await server.rest_of_log()
        if how == signal.SIGTERM:
            assert b"Shutdown complete" in log, log

    async with trio_gearmand(arguments(db, port)) as server:
        assert server.port == port
        await server.wait_for_line(b"(5 background jobs replayed)")
        client = await connect(server)
        assert await client.request(GetStatus(handle(3))) == [
            StatusRes(handle(3), True, False, 0, 0)
        ]
        assert await client.request(GetStatus(handle(1))) == [
            StatusRes(handle(1), False, False, 0, 0)
        ]
        # Handles are reserved in blocks: a restarted server, killed or not, issues
        # none that its predecessor could have issued (the foreground job 6 too).
        new = 1 + RESERVE + 1
        (created,) = await client.request(SubmitJob(b"f", b"", b"new", background=True))
        assert created == JobCreated(handle(new))
        worker = await connect(server)
        await worker.request(CanDo(b"f"), replies=0)
        assigned = await grab_all(worker)
        assert [(job.handle, job.data) for job in assigned] == [
            (handle(2), b"job 1"),
            (handle(3), b"job 2"),
            (handle(4), b"job 3"),
            (handle(5), b"past epoch"),
            (handle(7), b"barrier"),
            (handle(new), b"new"),
        ]
        results = [WorkComplete(job.handle, b"") for job in assigned]
        assert await worker.request(*results, EchoReq(b"sync"), replies=1) == [EchoRes(b"sync")]
        # Every job is answered: none is left.
        assert await client.request(GetStatus(handle(new))) == [
            StatusRes(handle(new), False, False, 0, 0)
        ]
        server.process.terminate()
        await expect_exit(server)

    async with trio_gearmand(arguments(db, port)) as server:
        await server.wait_for_line(b"(0 background jobs replayed)")
        client = await connect(server)
        assert await client.request(SubmitJob(b"f", b"", b"x", background=True)) == [
            JobCreated(handle(new + RESERVE + 1))
        ]
        server.process.terminate()
        await expect_exit(server)


async def test_an_epoch_job_keeps_its_time_across_a_restart(
    tmp_path: Path, connect: Connect
) -> None:
    db, port = tmp_path / "queue.db", free_port()
    async with trio_gearmand(arguments(db, port)) as server:
        client = await connect(server)
        far = 4_000_000_000
        assert await client.request(SubmitJobEpoch(b"f", b"", far, b"later")) == [
            JobCreated(handle(1))
        ]
        await stop(server, signal.SIGKILL)

    async with trio_gearmand(arguments(db, port)) as server:
        await server.wait_for_line(b"(1 background jobs replayed)")
        worker = await connect(server)
        await worker.request(CanDo(b"f"), replies=0)
        assert await grab_all(worker) == []
        client = await connect(server)
        assert await client.request(GetStatus(handle(1))) == [
            StatusRes(handle(1), True, False, 0, 0)
        ]
        server.process.terminate()
        await expect_exit(server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-q", "libsqlite3"], "--queue-type sqlite needs --sqlite-db PATH"),
        (["-q", "builtin", "--libsqlite3-db", "{db}"], "--sqlite-db needs --queue-type sqlite"),
        (["--sqlite-db", "{db}", "--postgres-dsn", "x"], "choose one with --queue-type"),
        (
            ["-q", "sqlite", "--sqlite-db", "{db}", "--postgres-dsn", "x"],
            "--postgres-dsn needs --queue-type postgres",
        ),
        (["-q", "Postgres"], "--queue-type postgres needs --postgres-dsn DSN"),
        (["--store-queue-on-shutdown"], "--store-queue-on-shutdown needs --queue-type"),
        (["-q", "sqlite", "--libsqlite3-db", "{db}", "--libsqlite3-table", "a b"], "not a table"),
        (["-q", "redis"], "queue type 'redis' is not supported"),
    ],
)
async def test_bad_queue_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    args = [arg.format(db=tmp_path / "q.db") for arg in args]
    async with trio_gearmand(args, wait_listening=False) as server:
        log = await expect_exit(server, 2)
    assert message.encode() in log


async def test_an_unusable_database_exits_1(tmp_path: Path) -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "-q", "libsqlite3", "--libsqlite3-db", str(tmp_path)]
    async with trio_gearmand(args, wait_listening=False) as server:
        log = await expect_exit(server, 1)
    assert b"cannot use the queue database" in log


def without_file_override() -> list[str]:
    """A command prefix under which file permissions hold for this process's user.

    Root passes them by its capability to override them: ``setpriv`` (util-linux) runs
    the server without it, as a service with a read-only file would be.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (Debian's util-linux) is needed to drop root's override"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


async def test_a_read_only_database_stops_the_start_clearly_and_loses_nothing(
    tmp_path: Path, connect: Connect
) -> None:
    db, port = tmp_path / "queue.db", free_port()
    async with trio_gearmand(arguments(db, port)) as server:
        client = await connect(server)
        jobs = [SubmitJob(b"f", b"", b"job %d" % i, background=True) for i in range(3)]
        assert await client.request(*jobs) == [JobCreated(handle(n)) for n in range(1, 4)]
        await stop(server, signal.SIGTERM)
    db.chmod(0o444)
    async with trio_gearmand(
        arguments(db, port), wait_listening=False, wrapper=without_file_override()
    ) as server:
        log = await expect_exit(server, 1)
    assert (
        f"cannot use the queue database {db}: attempt to write a readonly database".encode() in log
    )
    assert b"Listening" not in log  # it never served with a queue it cannot write
    db.chmod(0o644)
    async with trio_gearmand(arguments(db, port)) as server:
        await server.wait_for_line(b"(3 background jobs replayed)")


async def test_store_queue_on_shutdown_is_accepted(tmp_path: Path) -> None:
    args = [*arguments(tmp_path / "q.db", 0), "--store-queue-on-shutdown"]
    async with trio_gearmand(args) as server:
        line = await server.wait_for_line(b"--store-queue-on-shutdown")
        assert b"every background job is stored when it is submitted" in line
        server.process.terminate()
        await expect_exit(server)


# --- a crash under load, for each store --------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def queue_args(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """The ``-q`` options of a fresh queue of each persistent kind."""
    if request.param == "sqlite":
        return ["-q", "sqlite", "--sqlite-db", str(tmp_path / "queue.db")]
    dsn = request.getfixturevalue("postgres_dsn")
    table = f"crash_{tmp_path.name.replace('-', '_')[-40:]}"
    return ["-q", "postgres", "--postgres-dsn", dsn, "--postgres-table", table]


async def test_kill_9_under_load_loses_no_acknowledged_job_and_duplicates_none(
    queue_args: list[str],
) -> None:
    port = free_port()
    args = ["-L", "127.0.0.1", "-p", str(port), "--job-handle-prefix", PREFIX.decode()]
    acknowledged: list[bytes] = []
    sent = 0
    connections, rounds, per_round = 10, 40, 500
    async with trio_gearmand([*args, *queue_args]) as server:
        enough = trio.Event()

        async def submit(n: int) -> None:
            # Rounds of pipelined submissions, until the server dies under them.
            nonlocal sent
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            decoder = Decoder(expect=Magic.RES)
            try:
                for round_ in range(rounds):
                    requests = [
                        SubmitJob(b"f", b"", b"%d-%d-%d" % (n, round_, i), background=True)
                        for i in range(per_round)
                    ]
                    sent += per_round
                    await stream.send(b"".join(encode(request) for request in requests))
                    answered = 0
                    while answered < per_round:
                        decoder.feed(await stream.receive())
                        for event in decoder:
                            assert isinstance(event, JobCreated), event
                            acknowledged.append(event.handle)
                            answered += 1
                    if len(acknowledged) >= 2_000:
                        enough.set()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass  # the server was killed
            finally:
                await stream.aclose()

        async with trio.open_nursery() as nursery:
            for n in range(connections):
                nursery.start_soon(submit, n)
            with trio.fail_after(30):
                await enough.wait()
            await stop(server, signal.SIGKILL)
    assert len(acknowledged) < sent  # killed with submissions in flight
    assert len(set(acknowledged)) == len(acknowledged)

    async with trio_gearmand([*args, *queue_args]) as server:
        line = await server.wait_for_line(b"background jobs replayed)")
        replayed = int(line.rsplit(b"(", 1)[1].split()[0])
        assert replayed >= len(acknowledged)  # unacknowledged ones may be there too
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        worker = Connection(stream)
        await worker.request(CanDo(b"f"), replies=0)
        assigned = await grab_all(worker)
        handles = [job.handle for job in assigned]
        assert len(handles) == replayed
        assert len(set(handles)) == len(handles)  # each runs once
        assert set(acknowledged) <= set(handles)  # none acknowledged is lost
        await worker.stream.send(b"".join(encode(WorkComplete(h, b"")) for h in handles))
        assert await worker.request(EchoReq(b"sync")) == [EchoRes(b"sync")]
        await stream.aclose()
        server.process.terminate()
        await expect_exit(server)


async def test_a_restart_keeps_priorities_order_epochs_and_coalescing(
    queue_args: list[str], connect: Connect
) -> None:
    port = free_port()
    args = ["-L", "127.0.0.1", "-p", str(port), "--job-handle-prefix", PREFIX.decode(), *queue_args]
    far = 4_000_000_000
    async with trio_gearmand(args) as server:
        client = await connect(server)
        created = await client.request(
            SubmitJob(b"f", b"", b"low", priority=Priority.LOW, background=True),
            SubmitJob(b"f", b"u1", b"normal 1", background=True),
            SubmitJob(b"f", b"", b"high 1", priority=Priority.HIGH, background=True),
            SubmitJobEpoch(b"f", b"", far, b"later"),
            SubmitJob(b"f", b"", b"normal 2", background=True),
            SubmitJob(b"f", b"", b"high 2", priority=Priority.HIGH, background=True),
            SubmitJob(b"f", b"u1", b"normal 1", background=True),  # coalesces
        )
        assert created == [JobCreated(handle(n)) for n in (1, 2, 3, 4, 5, 6, 2)]
        await stop(server, signal.SIGKILL)

    async with trio_gearmand(args) as server:
        await server.wait_for_line(b"(6 background jobs replayed)")
        client = await connect(server)
        # the unique key still coalesces onto the replayed job
        again = SubmitJob(b"f", b"u1", b"normal 1", background=True)
        assert await client.request(again) == [JobCreated(handle(2))]
        assert await client.request(GetStatus(handle(4))) == [
            StatusRes(handle(4), True, False, 0, 0)
        ]
        worker = await connect(server)
        await worker.request(CanDo(b"f"), replies=0)
        assigned = await grab_all(worker)
        assert [job.data for job in assigned] == [
            b"high 1",
            b"high 2",
            b"normal 1",
            b"normal 2",
            b"low",
        ]
        assert assigned[2].unique == b"u1"
        server.process.terminate()
        await expect_exit(server)


async def test_the_database_option_alone_selects_the_queue(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    args = ["-L", "127.0.0.1", "-p", "0", "--sqlite-db", str(db)]
    async with trio_gearmand(args) as server:
        line = await server.wait_for_line(b"Queue: ")
        assert f"Queue: sqlite {db} (0 background jobs replayed)".encode() in line
        server.process.terminate()
        await expect_exit(server)
    assert db.exists()
