"""The server's I/O with the state's limits: shared results, and long admin listings."""

from __future__ import annotations

import logging

import anyio
import pytest
import trio
import trio.testing

from trio_gearman._proto._codec import encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    Error,
    GrabJob,
    JobAssign,
    JobCreated,
    SubmitJob,
    WorkComplete,
    WorkData,
)
from trio_gearman._proto.server.state import ServerConfig

from .test_server_io import Peer, running_server, settle
from .test_server_poller import serving_mode

__all__ = ["serving_mode"]  # the fixture, used by name


async def test_a_large_shared_result_reaches_every_waiter_whole_and_in_order() -> None:
    async with running_server() as server:
        clients = [await Peer.connect(server) for _ in range(3)]
        handles = set()
        for client in clients:
            await client.send(SubmitJob(b"f", b"same", b"x"))
            created = await client.packet()
            assert isinstance(created, JobCreated)
            handles.add(created.handle)
        [handle] = handles
        await clients[0].send(SubmitJob(b"f", b"same", b"x"))  # waits twice
        assert await clients[0].packet() == JobCreated(handle)
        worker = await Peer.connect(server)
        await worker.send(CanDo(b"f"), GrabJob())
        assert await worker.packet() == JobAssign(handle, b"f", b"x")
        big = bytes(range(256)) * 32768  # 8 MiB: more than the sockets take at once
        await worker.send(WorkData(handle, b"first"), WorkComplete(handle, big))
        # Nobody reads yet: the rest of the shared payload waits in the server.
        await settle(lambda: sum(c.blocked for c in server.connections) == 3)
        with trio.fail_after(20):
            for client, times in zip(clients, (2, 1, 1), strict=True):
                assert [await client.packet() for _ in range(times)] == [
                    WorkData(handle, b"first")
                ] * times
                assert [await client.packet() for _ in range(times)] == [
                    WorkComplete(handle, big)
                ] * times
        await settle(lambda: not any(c.blocked for c in server.connections))


async def test_a_long_listing_to_a_slow_reader_does_not_hold_up_others() -> None:
    jobs = 200_000
    prefix = b"H:" + b"p" * 40  # ~55-byte lines: 11 MB, more than the sockets hold
    async with running_server(config=ServerConfig(job_handle_prefix=prefix)) as server:
        client = await Peer.connect(server)
        batch = b"".join(
            encode(SubmitJob(b"f", b"", b"%d" % i, background=True)) for i in range(10_000)
        )
        for _ in range(jobs // 10_000):
            await client.send(batch)
        await settle(lambda: server.state.jobs_queued == jobs)
        admin, other = await Peer.connect(server), await Peer.connect(server)
        await admin.send(b"show jobs\n")
        # The admin peer reads nothing yet: the listing waits for it, slice by slice.
        await settle(lambda: any(c.blocked and c.conn.listing for c in server.connections))
        for _ in range(5):
            started = trio.current_time()
            await other.send(EchoReq(b"ping"))
            with trio.fail_after(5):
                assert await other.packet() == EchoRes(b"ping")
            assert trio.current_time() - started < 0.1
            assert any(c.conn.listing is not None for c in server.connections)
        # Read slowly: every job is listed exactly once.
        lines: list[bytes] = []
        with trio.fail_after(60):
            while not lines or lines[-1] != b".\n":
                lines.append(await admin.line())
                if len(lines) % 20_000 == 0:
                    await trio.sleep(0.01)  # a slow reader
        handles = [line.split(b"\t")[0] for line in lines[:-1]]
        assert len(handles) == jobs
        assert set(handles) == {prefix + b":%d" % i for i in range(1, jobs + 1)}
        assert lines[0] == prefix + b":1\t0\t0\t1\n"
        await other.send(EchoReq(b"done"))
        assert await other.packet() == EchoRes(b"done")


async def test_a_listing_to_a_peer_that_stopped_sending_arrives_whole(serving_mode: str) -> None:
    jobs = 100_000
    prefix = b"H:" + b"p" * 40
    async with running_server(config=ServerConfig(job_handle_prefix=prefix)) as server:
        client = await Peer.connect(server)
        batch = b"".join(
            encode(SubmitJob(b"f", b"", b"%d" % i, background=True)) for i in range(10_000)
        )
        for _ in range(jobs // 10_000):
            await client.send(batch)
        await settle(lambda: server.state.jobs_queued == jobs)
        port = next(port for address, port in server.addresses if ":" not in address)
        with trio.fail_after(30):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(b"show jobs\n")
            await stream.send_eof()  # the server sees the end of the stream
            await settle(lambda: any(c.blocked and c.conn.listing for c in server.connections))
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
            await stream.aclose()
        lines = bytes(received).split(b"\n")
        assert lines[-2:] == [b".", b""]
        assert len(lines) == jobs + 2
        assert lines[-3] == prefix + b":%d\t0\t0\t1" % jobs


async def test_a_refused_name_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_gearman.server")
    async with running_server() as server:
        worker = await Peer.connect(server)
        await worker.send(CanDo(b"f\n1 2.3.4.5 fake :"), EchoReq(b"sync"))
        error = await worker.packet()
        assert isinstance(error, Error)
        assert error.code == b"INVALID_FUNCTION_NAME"
        assert await worker.packet() == EchoRes(b"sync")
    assert "From 127.0.0.1: function name 'f\\n1 2.3.4.5 fake :' (18 bytes) refused" in caplog.text


async def test_a_peer_that_sends_without_reading_its_listing_is_held_back(
    serving_mode: str,
) -> None:
    jobs = 100_000
    prefix = b"H:" + b"p" * 40
    async with running_server(config=ServerConfig(job_handle_prefix=prefix)) as server:
        client = await Peer.connect(server)
        batch = b"".join(
            encode(SubmitJob(b"f", b"", b"%d" % i, background=True)) for i in range(10_000)
        )
        for _ in range(jobs // 10_000):
            await client.send(batch)
        await settle(lambda: server.state.jobs_queued == jobs)
        admin = await Peer.connect(server)
        await admin.send(b"show jobs\n")
        await settle(lambda: any(c.blocked and c.conn.listing for c in server.connections))
        [connection] = [c for c in server.connections if c.conn.listing is not None]
        echo = EchoReq(b"e" * 4096)
        count = 2000  # 8 MiB: more than the sockets hold
        async with anyio.create_task_group() as tg:
            tg.start_soon(admin.send, encode(echo) * count)
            # While the listing waits for the peer, the server reads no more of it:
            # what it sent waits in the sockets, not in the server.
            await trio.testing.wait_all_tasks_blocked()
            assert len(connection.conn.paused or ()) <= 65536 // len(encode(echo)) + 1
            with trio.fail_after(60):
                lines = 0
                while await admin.line() != b".\n":
                    lines += 1
                assert lines == jobs
                for _ in range(count):
                    assert await admin.packet() == EchoRes(echo.data)
