"""The server's bounds, each against a real misbehaving peer over loopback sockets.

Every test also checks that a well-behaved client keeps getting its results while
(or right after) the bad peer is dealt with.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import struct
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import anyio
import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_gearman._cli.server import main, parse_options
from trio_gearman._cli.server_limits import limit_arguments
from trio_gearman._proto._codec import encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJob,
    JobAssign,
    JobCreated,
    Noop,
    PacketType,
    PreSleep,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._server.limits import Limits
from trio_gearman._server.server import GearmanServer

from .test_cli_server import LISTENING, ServerProcess
from .test_server_io import PREFIX, Peer, round_trip, running_server, settle
from .test_server_poller import serving_mode

__all__ = ["serving_mode"]  # the fixture: the tests below run with the poller and without

SERVER_LOG = "trio_gearman.server"


def _echo_header(size: int) -> bytes:
    """The 12-byte header of an ECHO_REQ with a ``size``-byte body."""
    return struct.pack(">4sII", b"\0REQ", PacketType.ECHO_REQ, size)


async def _echo(peer: Peer, data: bytes = b"ping") -> None:
    await peer.send(EchoReq(data))
    assert await peer.packet() == EchoRes(data)


async def _reset(peer: Peer) -> None:
    """Close ``peer`` with a TCP reset (SO_LINGER 0), as a crashed process does."""
    raw = peer.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await peer.stream.aclose()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(SERVER_LOG) and r.levelno >= logging.WARNING
    ]


# --- connections that end badly ------------------------------------------------------------


async def test_a_peer_resetting_its_connection_is_logged_at_debug_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, SERVER_LOG)
    async with running_server() as server:
        for _ in range(30):
            peer = await Peer.connect(server)
            # A request whose reply finds the connection reset.
            await peer.send(EchoReq(b"x" * 65536))
            await _reset(peer)
        await settle(lambda: server.statistics().connections == 0)
        assert await round_trip(server, b"fine") == b"enif"
    assert _warnings(caplog) == []


# --- file descriptors and connection counts --------------------------------------------------


@asynccontextmanager
async def trio_gearmand_process(
    args: Sequence[str], prelude: str = ""
) -> AsyncIterator[ServerProcess]:
    """A ``trio-gearmand`` on a free loopback port; ``prelude`` runs first in the child."""
    code = f"{prelude}\nimport sys\nfrom trio_gearman._cli.server import main\nsys.exit(main())"
    process = await anyio.open_process(
        [sys.executable, "-c", code, "--verbose", "INFO", "-L", "127.0.0.1", "-p", "0", *args],
        stdin=None,
        stdout=None,
    )
    assert process.stderr is not None
    server = ServerProcess(process, process.stderr)
    try:
        match = LISTENING.search(await server.wait_for_line(b"Listening on"))
        assert match
        server.port = int(match.group(1))
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()


async def _connect(port: int) -> Peer:
    return Peer(await anyio.connect_tcp("127.0.0.1", port))


async def _served_or_refused(peer: Peer) -> bool:
    """``True`` if the server answers an ECHO, ``False`` if it closed the connection."""
    try:
        await peer.send(EchoReq(b"ping"))
        return await peer.packet() == EchoRes(b"ping")
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return False


async def test_out_of_file_descriptors_new_clients_are_refused_not_left_hanging() -> None:
    async with trio_gearmand_process(["--file-descriptors", "40"]) as server:
        peers = [await _connect(server.port) for _ in range(60)]
        with trio.fail_after(5):
            served = [await _served_or_refused(peer) for peer in peers]
        # Some were served; every other one was closed at once instead of hanging.
        assert 10 < served.count(True) < 40
        assert served[-1] is False
        await server.wait_for_line(b"Cannot accept connections")
        for peer in peers:
            await peer.aclose()
        # Once descriptors are free again, a client is served.
        with trio.fail_after(5):
            while not await _served_or_refused(await _connect(server.port)):
                pass
        await server.wait_for_line(b"Accepting connections again")
        server.process.terminate()
        log = await server.rest_of_log()
    # Logged once per episode (a descriptor freed for a moment ends one), not per refusal.
    refused = sum(map(int, re.findall(rb"Accepting connections again \((\d+) refused", log)))
    assert refused >= served.count(False)
    assert 1 <= log.count(b"Cannot accept connections") <= 3, log


async def test_max_connections_refuses_politely_and_logs_once_per_episode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(max_connections=3) as server:
        peers = [await Peer.connect(server) for _ in range(3)]
        for peer in peers:
            await _echo(peer)
        for _ in range(5):
            assert await (await Peer.connect(server)).closed_by_server()
        assert server.statistics().refused == 5
        refusals = [m for m in _warnings(caplog) if m.startswith("Refusing new connections")]
        assert refusals == [
            "Refusing new connections: 3 connections are open (the maximum) "
            "(logged once until one is accepted again)"
        ]
        await peers.pop().aclose()
        await settle(lambda: server.statistics().connections == 2)
        await _echo(await Peer.connect(server))
        assert "Accepting connections again (5 refused)" in caplog.text


async def test_max_connections_per_address_leaves_other_addresses_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(max_connections_per_address=2) as server:
        port = server.port
        first = [Peer(await anyio.connect_tcp("127.0.0.1", port)) for _ in range(2)]
        for peer in first:
            await _echo(peer)
        extra = Peer(await anyio.connect_tcp("127.0.0.1", port))
        assert await extra.closed_by_server()
        assert "2 connections from 127.0.0.1 are open" in caplog.text
        # Another address is served.
        other = Peer(await anyio.connect_tcp("127.0.0.1", port, local_host="127.0.0.2"))
        await _echo(other)
        await first.pop().aclose()
        await settle(lambda: server.statistics().connections == 2)
        await _echo(Peer(await anyio.connect_tcp("127.0.0.1", port)))


# --- timeouts ------------------------------------------------------------------------------


async def test_a_packet_left_incomplete_is_dropped_after_the_packet_timeout(
    caplog: pytest.LogCaptureFixture, serving_mode: str
) -> None:
    async with running_server(packet_timeout=0.5) as server:
        loris = [await Peer.connect(server) for _ in range(20)]
        for peer in loris:
            await peer.send(_echo_header(100) + b"abc")  # and never the rest
        header_only = await Peer.connect(server)
        await header_only.send(b"\0RE")
        normal = await Peer.connect(server)
        with trio.fail_after(4):
            for peer in [*loris, header_only]:
                await _echo(normal)
                assert await peer.closed_by_server()
        assert "incomplete after 0.5 s" in caplog.text
        assert server.statistics().bytes_buffered == 0
        await _echo(normal)


async def test_a_packet_sent_in_pieces_within_the_packet_timeout_is_served() -> None:
    async with running_server(packet_timeout=1.5) as server:
        peer = await Peer.connect(server)
        data = b"x" * 30
        await peer.send(_echo_header(len(data)))
        # Incomplete across two sweeps of the server, complete within the timeout.
        for index in range(0, len(data), 10):
            await anyio.sleep(0.4)
            await peer.send(data[index : index + 10])
        assert await peer.packet() == EchoRes(data)


async def test_a_peer_that_does_not_read_is_dropped_after_the_write_timeout(
    caplog: pytest.LogCaptureFixture, serving_mode: str
) -> None:
    async with running_server(write_timeout=0.5) as server:
        hog = await Peer.connect(server)
        await hog.send(EchoReq(bytes(8 << 20)))  # far more than the socket buffers take
        normal = await Peer.connect(server)
        await settle(lambda: server.statistics().bytes_buffered > 0)
        with trio.fail_after(4):
            while server.statistics().connections == 2:
                await _echo(normal)
                await anyio.sleep(0.1)
        assert "(the write timeout)" in caplog.text
        assert server.statistics().bytes_buffered == 0
        await _echo(normal)


async def test_with_the_defaults_a_worker_may_sleep_for_hours(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running_server() as server:
        worker = await Peer.connect(server)
        await worker.send(CanDo(b"f"), PreSleep())
        await settle(lambda: any(c.conn.sleeping for c in server.connections))
        await trio.sleep(8 * 3600)  # the mock clock's hours
        client = await Peer.connect(server)
        await client.send(SubmitJob(b"f", b"", b"x"))
        assert isinstance(await client.packet(), JobCreated)
        assert await worker.packet() == Noop()


async def test_no_idle_timeout_by_default_and_one_when_asked() -> None:
    assert GearmanServer().limits.idle_timeout is None
    async with running_server(idle_timeout=0.5) as server:
        quiet = await Peer.connect(server)
        busy = await Peer.connect(server)
        with trio.fail_after(4):
            while server.statistics().connections == 2:
                await _echo(busy)
                await anyio.sleep(0.1)
        assert await quiet.closed_by_server()
        await _echo(busy)


# --- memory -----------------------------------------------------------------------------------


async def test_over_the_buffer_budget_the_heaviest_connections_are_dropped(
    caplog: pytest.LogCaptureFixture, serving_mode: str
) -> None:
    budget = 4 << 20
    async with running_server(max_buffered_bytes=budget) as server:
        normal = await Peer.connect(server)

        async def partial(size: int) -> Peer:
            """A peer that sends all of a packet but its last byte."""
            peer = await Peer.connect(server)
            await peer.send(_echo_header(size + 1) + bytes(size))
            return peer

        small = await partial(1 << 20)
        await settle(lambda: server.statistics().bytes_buffered == (1 << 20) + 12)
        # 3 MiB more: the budget is exceeded once most of it is in, and it holds the most.
        big = await partial(3 << 20)
        with trio.fail_after(4):
            assert await big.closed_by_server()
        middle = await partial(2 << 20)  # within the budget again
        await _echo(normal)
        assert server.statistics().bytes_buffered <= budget
        assert "over the budget of 4194304" in caplog.text
        # The others keep their connections and their packets complete.
        await small.send(b"\0")
        assert await small.packet() == EchoRes(bytes(1 << 20) + b"\0")
        await middle.send(b"\0")
        assert await middle.packet() == EchoRes(bytes(2 << 20) + b"\0")


async def test_the_bytes_of_a_partial_packet_are_given_back_when_its_peer_leaves(
    serving_mode: str,
) -> None:
    async with running_server() as server:
        peers = []
        for _ in range(4):
            peer = await Peer.connect(server)
            await peer.send(_echo_header(4 << 20) + bytes((4 << 20) - 1))
            peers.append(peer)
        await settle(lambda: server.statistics().bytes_buffered >= 4 * ((4 << 20) - 1))
        connections = server.connections
        for peer in peers:
            await peer.aclose()
        await settle(lambda: server.statistics().connections == 0)
        assert server.statistics().bytes_buffered == 0
        # Nothing keeps the ended connections' buffers.
        assert all(connection.held_in == 0 for connection in connections)
        assert all(connection.closed for connection in connections)
        assert await round_trip(server, b"fine") == b"enif"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, RLIMIT_AS")
async def test_running_out_of_memory_costs_a_connection_never_the_server() -> None:
    # The child's address space as it starts, plus 300 MiB.
    prelude = (
        "import resource\n"
        "size = next(int(l.split()[1]) for l in open('/proc/self/status') if l[:7] == 'VmSize:')\n"
        "limit = size * 1024 + (300 << 20)\n"
        "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))"
    )
    args = ["--max-buffered-bytes", "0", "--max-output-bytes", "1G"]
    async with trio_gearmand_process(args, prelude) as server:
        normal = await _connect(server.port)
        await _echo(normal)
        # 192 MiB of replies pile up for a peer that does not read; once it reads,
        # the output buffer shrinks by copying what is left, past the memory limit.
        hog = await _connect(server.port)
        size = 16 << 20
        packet = _echo_header(size) + bytes(size)
        with trio.fail_after(5):
            for _ in range(12):
                await hog.stream.send(packet)
            assert await hog.closed_by_server()
            await server.wait_for_line(b"MEMORY_ALLOCATION_FAILURE")
            await _echo(normal)
            await _echo(await _connect(server.port))
        assert server.process.returncode is None
        server.process.terminate()
        log = await server.rest_of_log()
        assert await server.process.wait() == 0, log
    assert b"Traceback" not in log, log


# --- the options ---------------------------------------------------------------------------


def test_the_limit_options_reach_the_server_with_their_defaults() -> None:
    defaults = limit_arguments(parse_options([]))
    assert defaults == {
        "max_connections": None,
        "max_connections_per_address": None,
        "max_output_bytes": 32 << 20,
        "max_buffered_bytes": 1 << 30,
        "max_packet_size": 64 << 20,
        "packet_timeout": 60.0,
        "write_timeout": 60.0,
        "idle_timeout": None,
    }
    assert GearmanServer(**defaults).limits == GearmanServer().limits
    options = parse_options(
        [
            "--max-connections=1000",
            "--max-connections-per-address=50",
            "--max-output-bytes=8M",
            "--max-buffered-bytes=0",
            "--max-packet-size=1MiB",
            "--packet-timeout=5",
            "--write-timeout=0",
            "--idle-timeout=3600",
        ]
    )
    limits = GearmanServer(**limit_arguments(options)).limits
    assert limits == Limits(
        max_connections=1000,
        max_connections_per_address=50,
        max_output_bytes=8 << 20,
        max_buffered_bytes=None,
        max_packet_size=1 << 20,
        packet_timeout=5.0,
        write_timeout=None,
        idle_timeout=3600.0,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-output-bytes", "lots"], "'lots' is not a byte count"),
        (["--max-packet-size", "0"], "0 is not a positive byte count"),
        (["--max-connections", "-3"], "-3 is less than 0"),
        (["--idle-timeout", "soon"], "not a number of seconds"),
    ],
)
def test_bad_limit_values_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


async def test_trio_gearmand_applies_its_limit_options() -> None:
    async with trio_gearmand_process(["--max-connections", "1"]) as server:
        first = await _connect(server.port)
        await _echo(first)
        assert await (await _connect(server.port)).closed_by_server()
        await server.wait_for_line(b"Refusing new connections: 1 connections are open")


# --- the cost of large packets ----------------------------------------------------------------


async def _pump(out: socket.socket, data: bytes, into: socket.socket, buffer: bytearray) -> None:
    """Send ``data`` on ``out`` while filling ``buffer`` from ``into`` (no other allocation)."""
    view = memoryview(data)
    target = memoryview(buffer)
    have = 0
    with trio.fail_after(5):
        while view or have < len(buffer):
            if view:
                with contextlib.suppress(BlockingIOError):
                    view = view[out.send(view[: 1 << 20]) :]
            if have < len(buffer):
                with contextlib.suppress(BlockingIOError):
                    have += into.recv_into(target[have:], min(1 << 20, len(buffer) - have))
            await trio.lowlevel.checkpoint()


def _raw(server: GearmanServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setblocking(False)
    return sock


async def test_a_large_packet_costs_about_twice_its_size_on_its_way_through() -> None:
    size = 16 << 20
    data = bytes(size)
    async with running_server(max_output_bytes=64 << 20) as server:
        with _raw(server) as client, _raw(server) as worker:
            # ECHO: decoded, answered, sent.
            echo = encode(EchoReq(data))
            reply = bytearray(len(echo))
            expected = encode(EchoRes(data))
            tracemalloc.start()
            try:
                await _pump(client, echo, client, reply)
                echo_peak = tracemalloc.get_traced_memory()[1] / size
                assert reply == expected
                # A job's result: decoded from the worker, relayed to the client.
                created = bytearray(len(encode(JobCreated(PREFIX + b":1"))))
                await _pump(client, encode(SubmitJob(b"f", b"", b"")), client, created)
                assigned = bytearray(len(encode(JobAssign(PREFIX + b":1", b"f", b""))))
                await _pump(worker, encode(CanDo(b"f")) + encode(GrabJob()), worker, assigned)
                complete = encode(WorkComplete(PREFIX + b":1", data))
                result = bytearray(len(complete))
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]  # the two buffers above
                await _pump(worker, complete, client, result)
                relay_peak = (tracemalloc.get_traced_memory()[1] - base) / size
            finally:
                tracemalloc.stop()
            assert result == complete.replace(b"\0REQ", b"\0RES", 1)
    # Received in one buffer, copied out once into the message, once into the reply.
    assert echo_peak < 2.5, echo_peak
    assert relay_peak < 2.5, relay_peak


def _rss(pid: int) -> int:
    """The resident memory of process ``pid``, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


async def _until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate`` (about another process, which sends no event) holds."""
    while True:
        if predicate():
            return
        await anyio.sleep(0.05)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_the_memory_of_partial_packets_goes_back_to_the_system_when_peers_leave() -> None:
    async with trio_gearmand_process([]) as server:
        pid = server.process.pid
        start = _rss(pid)
        size = 20 << 20
        packet = _echo_header(size) + bytes(size - 1)  # all but the last byte
        peers = [await _connect(server.port) for _ in range(8)]
        for peer in peers:
            await peer.stream.send(packet)
        with trio.fail_after(4):
            await _until(lambda: _rss(pid) > start + 6 * size)
            for peer in peers:
                await peer.aclose()
            # Freed, and given back to the system (not kept by the C allocator).
            await _until(lambda: _rss(pid) < start + size)
        normal = await _connect(server.port)
        await _echo(normal)
