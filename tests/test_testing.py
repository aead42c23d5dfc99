"""trio_gearman.testing: the embedded job server for tests, and how to steer and break it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import anyio
import anyio.abc
import pytest
import trio
import trio.testing

from trio_gearman import Priority
from trio_gearman._client.client import Client
from trio_gearman._proto import Decoder, Event, Magic, Message, TextLine, encode
from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    EchoReq,
    EchoRes,
    GrabJob,
    JobAssign,
    JobCreated,
    NoJob,
    Noop,
    PreSleep,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
    WorkException,
    WorkFail,
)
from trio_gearman._worker.job import Job
from trio_gearman._worker.worker import Worker
from trio_gearman.testing import (
    EmbeddedServer,
    JobOutcome,
    MemoryByteStream,
    memory_stream_pair,
    open_test_server,
)


class Peer:
    """A raw Gearman connection: send packets or admin lines, read what comes back."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._decoder = Decoder(expect=Magic.RES, allow_text=True)

    async def send(self, *messages: Message) -> None:
        await self.stream.send(b"".join(encode(message) for message in messages))

    async def receive(self, within: float = 5) -> Event:
        with trio.fail_after(within):
            while True:
                for event in self._decoder:
                    return event
                self._decoder.feed(await self.stream.receive())

    async def request(self, *messages: Message) -> Event:
        await self.send(*messages)
        return await self.receive()

    async def admin(self, line: bytes) -> bytes:
        await self.stream.send(line + b"\n")
        event = await self.receive()
        assert isinstance(event, TextLine)
        return event.line


class Peers:
    """Opens raw connections to a test server; the ``peers`` fixture closes them."""

    def __init__(self) -> None:
        self.opened: list[Peer] = []

    async def tcp(self, server: EmbeddedServer) -> Peer:
        return self._add(await anyio.connect_tcp(server.host, server.port))

    async def memory(self, server: EmbeddedServer) -> Peer:
        return self._add(await server.connect_memory())

    def _add(self, stream: anyio.abc.ByteStream) -> Peer:
        peer = Peer(stream)
        self.opened.append(peer)
        return peer


@pytest.fixture
async def peers() -> AsyncIterator[Peers]:
    opened = Peers()
    yield opened
    for peer in opened.opened:
        await anyio.aclose_forcefully(peer.stream)


def handle(n: int) -> bytes:
    return b"H:localhost:%d" % n


async def _reverse(job: Job) -> bytes:
    return job.data[::-1]


# --- serving -------------------------------------------------------------------------------


async def test_serves_a_client_and_a_worker_and_records_the_job() -> None:
    async with open_test_server() as server:
        host, _, port = server.address.rpartition(":")
        assert host == "127.0.0.1"
        assert int(port) == server.port > 0
        worker = Worker(server.address)
        worker.register("reverse", _reverse)
        async with anyio.create_task_group() as tg, Client(server.address) as client:
            await tg.start(worker.run)
            with trio.fail_after(5):
                assert await client.submit("reverse", b"abc", priority=Priority.HIGH) == b"cba"
            tg.cancel_scope.cancel()
        (record,) = server.history
        assert (record.handle, record.function, record.data) == ("H:localhost:1", "reverse", b"abc")
        assert (record.priority, record.background, record.unique) == (Priority.HIGH, False, b"")
        assert (record.outcome, record.result, record.done) == (JobOutcome.COMPLETED, b"cba", True)


@pytest.mark.parametrize("kind", ["tcp", "memory"])
async def test_tcp_and_memory_connections_speak_the_protocol(peers: Peers, kind: str) -> None:
    async with open_test_server(job_handle_prefix="H:mine") as server:
        peer = await (peers.tcp(server) if kind == "tcp" else peers.memory(server))
        assert await peer.request(EchoReq(b"ping")) == EchoRes(b"ping")
        created = await peer.request(SubmitJob(b"f", b"", b"x", background=True))
        assert created == JobCreated(b"H:mine:1")
        assert await peer.admin(b"status") == b"f\t1\t0\t0"
        assert server.queued("f") == 1


async def test_memory_connection_is_listed_and_forgotten_when_closed(peers: Peers) -> None:
    async with open_test_server() as server:
        peer = await peers.memory(server)
        await peer.send(CanDo(b"f"))
        assert await peer.request(EchoReq(b"")) == EchoRes(b"")
        assert [(c.address, c.fd > 2) for c in server.state.connections] == [(b"memory", True)]
        assert server.workers("f") == 1
        await peer.stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert list(server.state.connections) == []
        assert server.workers("f") == 0


async def test_memory_connection_ends_when_the_server_closes_it(peers: Peers) -> None:
    async with open_test_server() as server:
        peer = await peers.memory(server)
        await peer.stream.send(b"\0REQ\xff\xff\xff\xff\0\0\0\0")  # no such packet type
        event = await peer.receive()
        assert type(event).__name__ == "Error"
        with trio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await peer.stream.receive()


async def test_counts_of_an_unknown_function_are_zero() -> None:
    async with open_test_server() as server:
        assert (server.queued("nope"), server.running(b"nope"), server.workers("nope")) == (0, 0, 0)


async def test_runs_once_and_needs_to_run() -> None:
    server = EmbeddedServer()
    with pytest.raises(RuntimeError, match="not running"):
        server.state  # noqa: B018
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        with pytest.raises(RuntimeError, match="runs once"):
            await server.run()
        await server.aclose()
    with pytest.raises(RuntimeError, match="not running"):
        await server.connect_memory()


def test_works_under_asyncio() -> None:
    async def main() -> bytes:
        async with open_test_server() as server:
            worker = Worker(server.address)
            worker.register("reverse", _reverse)
            async with anyio.create_task_group() as tg, Client(server.address) as client:
                await tg.start(worker.run)
                with anyio.fail_after(5):
                    result = await client.submit("reverse", b"abc")
                    await server.wait_idle()
                tg.cancel_scope.cancel()
            return result

    assert anyio.run(main, backend="asyncio") == b"cba"


# --- history and introspection ---------------------------------------------------------------


async def test_history_records_every_outcome(peers: Peers) -> None:
    async with open_test_server(job_retries=1) as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        admin = await peers.memory(server)
        await client.send(*(SubmitJob(b"f", b"", b"%d" % i) for i in range(5)))
        for i in range(1, 6):
            assert await client.receive() == JobCreated(handle(i))
        await worker.send(CanDo(b"f"))
        assert await worker.request(GrabJob()) == JobAssign(handle(1), b"f", b"0")
        await worker.send(WorkComplete(handle(1), b"ok"))
        assert await worker.request(GrabJob()) == JobAssign(handle(2), b"f", b"1")
        await worker.send(WorkFail(handle(2)))
        assert await worker.request(GrabJob()) == JobAssign(handle(3), b"f", b"2")
        await worker.send(WorkException(handle(3), b"boom"))
        assert await admin.admin(b"cancel job " + handle(5)) == b"OK"
        assert await worker.request(GrabJob()) == JobAssign(handle(4), b"f", b"3")
        assert (server.running("f"), server.queued("f")) == (1, 0)
        assert server.history[3].outcome is None
        assert await server.drop_connections(workers=True) == 1
        outcomes = [(record.outcome, record.result) for record in server.history]
        assert outcomes == [
            (JobOutcome.COMPLETED, b"ok"),
            (JobOutcome.FAILED, b""),
            (JobOutcome.EXCEPTION, b"boom"),
            (JobOutcome.LOST, b""),
            (JobOutcome.CANCELLED, b""),
        ]
        assert server.history[3].retries == 1


@pytest.mark.parametrize("exceptions", [False, True])
async def test_the_exceptions_option_reaches_the_server(peers: Peers, exceptions: bool) -> None:
    async with open_test_server(exceptions=exceptions) as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        await client.request(SubmitJob(b"f", b"", b"x"))
        await worker.send(CanDo(b"f"))
        await worker.request(GrabJob())
        await worker.send(WorkException(handle(1), b"boom"))
        expected = WorkException(handle(1), b"boom") if exceptions else WorkFail(handle(1))
        assert await client.receive() == expected


async def test_queued_and_running_follow_the_jobs(peers: Peers) -> None:
    async with open_test_server() as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        for data in (b"a", b"b"):
            await client.request(SubmitJob(b"f", b"", data, background=True))
        assert (server.queued("f"), server.running("f")) == (2, 0)
        await worker.send(CanDo(b"f"))
        await worker.request(GrabJob())
        assert (server.queued(b"f"), server.running(b"f")) == (1, 1)


# --- waiting until idle ------------------------------------------------------------------------


async def test_wait_idle_returns_at_once_when_nothing_is_queued() -> None:
    async with open_test_server() as server:
        with trio.fail_after(5):
            await server.wait_idle()


async def test_wait_idle_waits_for_the_last_job(peers: Peers) -> None:
    async with open_test_server() as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        await client.request(SubmitJob(b"f", b"", b"a", background=True))
        await client.request(SubmitJob(b"f", b"", b"b", background=True))
        idle = trio.Event()

        async def wait() -> None:
            await server.wait_idle()
            idle.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await worker.send(CanDo(b"f"))
            assert await worker.request(GrabJob()) == JobAssign(handle(1), b"f", b"a")
            await worker.send(WorkComplete(handle(1), b""))
            assert await worker.request(GrabJob()) == JobAssign(handle(2), b"f", b"b")
            await trio.testing.wait_all_tasks_blocked()
            assert not idle.is_set()  # one still runs
            await worker.send(WorkComplete(handle(2), b""))
            with trio.fail_after(5):
                await idle.wait()
        assert server.state.jobs_running == server.state.jobs_queued == 0


# --- holding jobs back ------------------------------------------------------------------------


async def test_hold_keeps_matching_jobs_from_workers_until_released(peers: Peers) -> None:
    async with open_test_server() as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        await client.request(SubmitJob(b"resize_small", b"", b"queued before", background=True))
        server.hold("resize_*")
        await client.request(SubmitJob(b"resize_big", b"", b"queued after", background=True))
        await client.request(SubmitJob(b"other", b"", b"free", background=True))
        await worker.send(CanDo(b"resize_small"), CanDo(b"resize_big"), CanDo(b"other"))
        assert await worker.request(GrabJob()) == JobAssign(handle(3), b"other", b"free")
        assert await worker.request(GrabJob()) == NoJob()
        assert server.queued("resize_small") == server.queued("resize_big") == 1
        await worker.send(PreSleep())
        server.release("resize_*")
        assert await worker.receive() == Noop()
        assert await worker.request(GrabJob()) == JobAssign(
            handle(1), b"resize_small", b"queued before"
        )
        assert await worker.request(GrabJob()) == JobAssign(
            handle(2), b"resize_big", b"queued after"
        )


async def test_hold_matches_like_fnmatchcase_and_release_needs_a_held_pattern(peers: Peers) -> None:
    async with open_test_server() as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        server.hold("job?")
        server.hold("[ab]")
        for name in (b"job1", b"JOB2", b"a", b"c", b"job10"):
            await client.request(SubmitJob(name, b"", b"", background=True))
            await worker.send(CanDo(name))
        grabbed = []
        while (event := await worker.request(GrabJob())) != NoJob():
            assert isinstance(event, JobAssign)
            grabbed.append(event.function)
        assert sorted(grabbed) == [b"JOB2", b"c", b"job10"]
        with pytest.raises(ValueError, match="'job' is not held"):
            server.release("job")
        server.release()
        assert await worker.request(GrabJob()) != NoJob()
        assert await worker.request(GrabJob()) != NoJob()
        assert await worker.request(GrabJob()) == NoJob()


# --- faults ------------------------------------------------------------------------------------


async def test_drop_connections_by_kind(peers: Peers) -> None:
    async with open_test_server() as server:
        client = await peers.tcp(server)
        worker = await peers.memory(server)
        await client.request(SubmitJob(b"f", b"", b"x", background=True))
        await worker.send(CanDo(b"f"))
        assert await worker.request(GrabJob()) == JobAssign(handle(1), b"f", b"x")
        with pytest.raises(ValueError, match="which connections"):
            await server.drop_connections()
        assert await server.drop_connections(workers=True) == 1
        with trio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await worker.stream.receive()
        assert (server.queued("f"), server.running("f")) == (1, 0)
        assert await client.request(EchoReq(b"still here")) == EchoRes(b"still here")
        assert await server.drop_connections(clients=True) == 1
        with trio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await client.stream.receive()
        assert list(server.state.connections) == []


async def test_pause_accepting_refuses_connections_and_keeps_the_open_ones(peers: Peers) -> None:
    async with open_test_server() as server:
        port = server.port
        open_peer = await peers.tcp(server)
        await server.pause_accepting()
        paused = not server.accepting
        assert paused
        with pytest.raises(OSError, match=r"refused|connect"):
            await anyio.connect_tcp(server.host, port)
        assert await open_peer.request(EchoReq(b"a")) == EchoRes(b"a")
        await server.pause_accepting()  # again: nothing happens
        await server.resume_accepting()
        await server.resume_accepting()
        assert server.accepting
        assert server.port == port
        late = await peers.tcp(server)
        assert await late.request(EchoReq(b"b")) == EchoRes(b"b")


async def test_restart_drops_everything_and_keeps_the_port(peers: Peers) -> None:
    async with open_test_server() as server:
        port = server.port
        client = await peers.tcp(server)
        await client.request(SubmitJob(b"f", b"", b"x", background=True))
        old = server.server
        await server.restart()
        assert server.server is not old
        assert server.port == port
        with trio.fail_after(5), pytest.raises(anyio.EndOfStream):
            await client.stream.receive()
        assert server.queued("f") == 0
        assert server.history[0].outcome is JobOutcome.LOST
        again = await peers.tcp(server)
        assert await again.request(SubmitJob(b"f", b"", b"y")) == JobCreated(handle(2))


async def test_restart_keeps_background_jobs_when_asked(peers: Peers) -> None:
    async with open_test_server() as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        await client.request(SubmitJob(b"f", b"", b"running", background=True))
        await client.request(SubmitJob(b"f", b"u", b"queued", background=True))
        await client.request(SubmitJob(b"f", b"", b"foreground"))
        await client.request(SubmitJobEpoch(b"f", b"", int(time.time()) + 3600, b"later"))
        ((_, due),) = server.state.scheduled_jobs()
        await worker.send(CanDo(b"f"))
        assert await worker.request(GrabJob()) == JobAssign(handle(1), b"f", b"running")
        server.hold("f")
        await server.restart(keep_jobs=True)
        outcomes = [record.outcome for record in server.history]
        assert outcomes == [None, None, JobOutcome.LOST, None]
        [(later, kept_due)] = server.state.scheduled_jobs()
        assert (later.handle, kept_due) == (handle(4), due)
        worker = await peers.memory(server)
        client = await peers.memory(server)
        await worker.send(CanDo(b"f"))
        assert await worker.request(GrabJob()) == NoJob()  # the hold survived
        server.release("f")
        assert await client.request(SubmitJob(b"f", b"u", b"again", background=True)) == (
            JobCreated(handle(2))
        )
        assert await worker.request(GrabJob()) == JobAssign(handle(1), b"f", b"running")
        assert await worker.request(GrabJob()) == JobAssign(handle(2), b"f", b"queued")
        await worker.send(WorkComplete(handle(1), b"one"), WorkComplete(handle(2), b"two"))
        new = await client.request(SubmitJob(b"f", b"", b"new", background=True))
        assert new == JobCreated(handle(5))
        outcomes = [record.outcome for record in server.history]
        assert outcomes == [JobOutcome.COMPLETED] * 2 + [JobOutcome.LOST, None, None]


# --- time under Trio's MockClock -----------------------------------------------------------------


async def test_an_epoch_job_an_hour_ahead_runs_under_autojump(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server() as server:
        worker = Worker(server.address)
        worker.register("later", _reverse)
        async with anyio.create_task_group() as tg, Client(server.address) as client:
            await tg.start(worker.run)
            start, wall = trio.current_time(), time.monotonic()
            await client.submit_background("later", b"abc", at=datetime.now() + timedelta(hours=1))
            assert server.queued("later") == 1
            with trio.fail_after(4000):
                await server.wait_idle()
            assert trio.current_time() - start >= 3599
            assert time.monotonic() - wall < 30
            tg.cancel_scope.cancel()
        assert server.history[0].result == b"cba"


async def test_can_do_timeout_expires_under_autojump(
    peers: Peers,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_server(job_retries=1) as server:
        client = await peers.memory(server)
        worker = await peers.memory(server)
        await worker.send(CanDoTimeout(b"slow", 30_000))
        start = trio.current_time()
        assert await client.request(SubmitJob(b"slow", b"", b"x")) == JobCreated(handle(1))
        assert await worker.request(GrabJob()) == JobAssign(handle(1), b"slow", b"x")
        assert await client.receive(within=60) == WorkFail(handle(1))
        assert 30 <= trio.current_time() - start < 31
        assert server.history[0].outcome is JobOutcome.LOST


# --- in-memory byte streams --------------------------------------------------------------------


async def test_memory_stream_pair_behaves_like_a_connection() -> None:
    left, right = memory_stream_pair()
    await left.send(b"hello world")
    await left.send(b"")
    assert await right.receive(5) == b"hello"
    assert await right.receive() == b" world"
    await right.send_eof()
    with pytest.raises(anyio.EndOfStream):
        await left.receive()
    await left.send(b"after eof")  # the other direction still works
    assert await right.receive() == b"after eof"
    with pytest.raises(anyio.ClosedResourceError):
        await right.send(b"after my eof")
    await left.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await left.receive()
    with pytest.raises(anyio.ClosedResourceError):
        await left.send(b"x")


async def test_sending_to_a_closed_memory_stream_breaks() -> None:
    left, right = memory_stream_pair()
    await right.send(b"unread")
    await left.aclose()
    with pytest.raises(anyio.BrokenResourceError):
        await right.send(b"x")
    with pytest.raises(anyio.EndOfStream):
        await right.receive()


async def test_a_memory_stream_closed_while_read_wakes_its_reader() -> None:
    left, right = memory_stream_pair()
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            with pytest.raises(anyio.ClosedResourceError):
                await left.receive()

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await left.aclose()
    assert isinstance(right, MemoryByteStream)
