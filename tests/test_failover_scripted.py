"""Failover against scripted in-memory servers: orderings a real server cannot produce on cue.

A connection that breaks between SUBMIT_JOB and JOB_CREATED, a server that
accepts a job and then falls silent, a worker's registration on a server that
comes back: each server address gets :class:`~tests.test_stream.FakeServer`
connections that the test drives packet by packet.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_gearman._client.client import Client
from trio_gearman._exceptions import ConnectFailed, ConnectionLost, NoServersAvailable, ServerLost
from trio_gearman._failover import Backoff, LinkState, rendezvous_order
from trio_gearman._net.stream import PacketStream
from trio_gearman._proto import (
    CanDo,
    CanDoTimeout,
    EchoReq,
    EchoRes,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    NoJob,
    OptionReq,
    OptionRes,
    SetClientId,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._worker.job import Job
from trio_gearman._worker.worker import Worker

from .test_stream import FakeServer, MemoryByteStream, memory_pair

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

BACKOFF = Backoff(initial=0.5, maximum=0.5, jitter=0.0)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Scripted:
    """A connector for several addresses: each connection made gets a FakeServer."""

    def __init__(self) -> None:
        self.connections: dict[str, list[FakeServer]] = defaultdict(list)
        self.refused: set[str] = set()
        self._streams: list[MemoryByteStream] = []
        self._changed = trio.Event()

    async def __call__(self, address: str) -> PacketStream:
        if address in self.refused:
            raise ConnectFailed("refused", server=address)
        ours, theirs = memory_pair()
        self._streams += [ours, theirs]
        self.connections[address].append(FakeServer(theirs))
        self._changed.set()
        self._changed = trio.Event()
        return PacketStream(ours, peer=address)

    async def connection(self, address: str, index: int = 0) -> FakeServer:
        """The ``index``-th connection made to ``address`` (waiting for it)."""
        while len(self.connections[address]) <= index:
            await self._changed.wait()
        return self.connections[address][index]

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


@asynccontextmanager
async def scripted() -> AsyncIterator[Scripted]:
    servers = Scripted()
    try:
        yield servers
    finally:
        servers.close()


async def answer_handshake(servers: Scripted, address: str, index: int = 0) -> None:
    """Answer the ECHO_REQ a connection to one of several servers opens with."""
    server = await servers.connection(address, index)
    (*_, echo) = await server.receive_until(EchoReq)
    assert isinstance(echo, EchoReq)
    await server.send(EchoRes(echo.data))


# --- the client ------------------------------------------------------------------------


async def test_a_submission_broken_before_job_created_goes_to_the_next_server() -> None:
    async with scripted() as servers, trio.open_nursery() as nursery:
        for address in ("m:1", "m:2"):
            nursery.start_soon(answer_handshake, servers, address)
        client = Client(["m:1", "m:2"], exceptions=False, backoff=BACKOFF)
        client._connector = servers
        async with client:
            # with several servers each connection opens with an ECHO round trip
            assert [h.answered for h in client.servers()] == [True, True]
            results: list[bytes] = []

            async def submit() -> None:
                results.append(await client.submit("f", b"x"))

            nursery.start_soon(submit)
            first = await servers.connection("m:1")
            assert await first.receive() == [SubmitJob(b"f", b"", b"x")]
            await first.close()  # before its JOB_CREATED
            second = await servers.connection("m:2")
            assert await second.receive() == [SubmitJob(b"f", b"", b"x")]
            await second.send(JobCreated(b"H:2"), WorkComplete(b"H:2", b"ok"))
            with trio.fail_after(5):
                while not results:
                    await trio.testing.wait_all_tasks_blocked()
            assert results == [b"ok"]


async def test_a_submission_is_sent_to_each_server_at_most_once() -> None:
    async with scripted() as servers, trio.open_nursery() as nursery:
        for address in ("m:1", "m:2"):
            nursery.start_soon(answer_handshake, servers, address)
        client = Client(["m:1", "m:2"], exceptions=False, backoff=BACKOFF)
        client._connector = servers
        async with client:
            errors: list[BaseException] = []

            async def submit() -> None:
                try:
                    await client.submit_background("f", b"x", unique="k")
                except NoServersAvailable as exc:
                    errors.append(exc)

            nursery.start_soon(submit)
            # the key's first server, then the other: both break before JOB_CREATED
            for address in rendezvous_order(b"k", ["m:1", "m:2"]):
                server = await servers.connection(address)
                assert await server.receive() == [SubmitJob(b"f", b"k", b"x", background=True)]
                await server.close()
            with trio.fail_after(5):
                while not errors:
                    await trio.testing.wait_all_tasks_blocked()
        (error,) = errors
        group = error.__cause__
        assert isinstance(group, ExceptionGroup)
        assert sorted(e.server for e in group.exceptions) == ["m:1", "m:2"]
        assert all(isinstance(e, ConnectionLost) for e in group.exceptions)


@pytest.mark.parametrize("answers", [True, False])
async def test_a_server_silent_while_a_job_runs_is_probed_with_echo(
    autojump_clock: trio.testing.MockClock, answers: bool
) -> None:
    async with scripted() as servers, trio.open_nursery() as nursery:
        client = Client("m:1", heartbeat_interval=10, heartbeat_timeout=5, backoff=BACKOFF)
        client._connector = servers
        async with client:
            outcome: list[bytes | BaseException] = []

            async def submit() -> None:
                try:
                    outcome.append(await client.submit("f", b"x"))
                except ServerLost as exc:
                    outcome.append(exc)

            nursery.start_soon(submit)
            server = await servers.connection("m:1")
            assert await server.receive(2) == [OptionReq(b"exceptions"), SubmitJob(b"f", b"", b"x")]
            await server.send(OptionRes(b"exceptions"), JobCreated(b"H:1"))
            # the job runs long and the server says nothing: the first check finds it
            # owing an answer and silent, so an ECHO_REQ goes out
            accepted = trio.current_time()
            assert await server.receive() == [EchoReq(b"heartbeat")]
            assert trio.current_time() - accepted == pytest.approx(14)  # 4 s, then 10 s
            if answers:
                await server.send(EchoRes(b"heartbeat"))
                assert await server.receive() == [EchoReq(b"heartbeat")]  # 15 s later
                await server.send(EchoRes(b"heartbeat"), WorkComplete(b"H:1", b"done"))
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == [b"done"]
                assert client.servers()[0].state is LinkState.UP
            else:
                probed = trio.current_time()
                with trio.fail_after(60):
                    while not outcome:
                        await client.wait_servers_changed()
                (error,) = outcome
                assert isinstance(error, ServerLost)
                assert "no answer to ECHO within 5 s" in str(error)
                assert trio.current_time() - probed == pytest.approx(5)


# --- the worker ---------------------------------------------------------------------------


async def test_a_worker_registers_again_on_a_server_that_comes_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = Worker(["m:1", "m:2"], client_id="w-1", concurrency=2, backoff=BACKOFF)

    @worker.function("f")
    async def f(job: Job) -> bytes:
        return job.data

    worker.register("slow", f, timeout=2)
    opening = [SetClientId(b"w-1"), CanDo(b"f"), CanDoTimeout(b"slow", 3000), EchoReq(b"heartbeat")]
    async with scripted() as servers, trio.open_nursery() as nursery:
        worker._connector = servers
        servers.refused.add("m:2")  # one server is down from the start
        await nursery.start(worker.run)
        first = await servers.connection("m:1")
        assert await first.receive(4) == opening
        await trio.testing.wait_all_tasks_blocked()
        assert first.pending() == []  # no GRAB before the server has answered
        await first.send(EchoRes(b"heartbeat"))
        assert await first.receive(2) == [GrabJobUniq(), GrabJobUniq()]
        await first.send(JobAssignUniq(b"H:1", b"f", b"", b"a"))
        assert await first.receive(2) == [WorkComplete(b"H:1", b"a"), GrabJobUniq()]

        # m:1 goes away with a GRAB unanswered; m:2 comes up
        servers.refused = set()
        await first.close()
        while worker.servers()[0].state is LinkState.UP:
            await worker.wait_servers_changed()
        lost_at = trio.current_time()
        # both reconnect after the back-off and register everything again
        again = await servers.connection("m:1", 1)
        other = await servers.connection("m:2", 0)
        assert await again.receive(4) == opening
        assert await other.receive(4) == opening
        assert trio.current_time() - lost_at == pytest.approx(BACKOFF.initial)
        # the two job slots the lost GRABs held go to the first server that answers
        await again.send(EchoRes(b"heartbeat"))
        assert await again.receive(2) == [GrabJobUniq(), GrabJobUniq()]
        await other.send(EchoRes(b"heartbeat"))
        # a slot freed on one server goes to the other first: both are served
        await again.send(NoJob())
        assert await other.receive() == [GrabJobUniq()]
        assert [h.state for h in worker.servers()] == [LinkState.UP, LinkState.UP]
        worker.stop(0)
