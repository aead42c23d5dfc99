"""The job server's I/O layer over real loopback sockets: framing, isolation, limits, drain."""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import trio
import trio.testing
from anyio.abc import SocketStream

from trio_gearman._proto._codec import Decoder, Event, encode
from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    EchoReq,
    EchoRes,
    Error,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    NoJob,
    Noop,
    PreSleep,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer, serve
from trio_gearman._server.sockets import KeepAlive, configure_accepted, raise_fd_limit

PREFIX = b"H:io"
OPEN_PEERS: list[Peer] = []
"""Peers to close when the server of the test stops."""


class StateSpy:
    """The state as a server's connections see it, with some of its methods replaced.

    Tests wrap a method of the state this way rather than by assigning to it: compiled
    (mypyc), the state's methods are read-only. Every other attribute is the state's.

    Args:
        server: the server whose connections are to use the spy from now on.
        methods: the replacements, by name.
    """

    def __init__(self, server: GearmanServer, **methods: Callable[..., None]) -> None:
        self.state = server.state
        vars(self).update(methods)
        server._hub.state = self  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.state, name)


def ipv6_available() -> bool:
    """Whether this machine can listen on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@asynccontextmanager
async def running_server(
    listen: list[tuple[str | None, int]] | None = None,
    config: ServerConfig | None = None,
    **options: Any,
) -> AsyncIterator[GearmanServer]:
    """A server on a free loopback port, closed when the block exits."""
    config = config or ServerConfig(job_handle_prefix=PREFIX)
    async with anyio.create_task_group() as tg:
        server: GearmanServer = await tg.start(
            lambda task_status: serve(
                config, listen or [("127.0.0.1", 0)], task_status=task_status, **options
            )
        )
        try:
            yield server
        finally:
            while OPEN_PEERS:
                await OPEN_PEERS.pop().aclose()
            await server.aclose()


class Peer:
    """A raw client, worker or admin connection: bytes out, packets and lines in."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        OPEN_PEERS.append(self)

    @classmethod
    async def connect(cls, server: GearmanServer, host: str = "127.0.0.1") -> Peer:
        port = next(port for address, port in server.addresses if ":" not in address)
        return cls(await anyio.connect_tcp(host, port))

    async def send(self, *items: Message | bytes) -> None:
        await self.stream.send(
            b"".join(item if isinstance(item, bytes) else encode(item) for item in items)
        )

    async def _fill(self) -> None:
        self.buffer += await self.stream.receive()

    async def packet(self) -> Event:
        """The next binary packet the server sent."""
        while len(self.buffer) < 12:
            await self._fill()
        size = struct.unpack_from(">I", self.buffer, 8)[0]
        while len(self.buffer) < 12 + size:
            await self._fill()
        decoder = Decoder(expect=Magic.RES)
        decoder.feed(bytes(self.buffer[: 12 + size]))
        del self.buffer[: 12 + size]
        [event] = list(decoder)
        return event

    async def line(self) -> bytes:
        """The next admin text line the server sent, with its terminator."""
        while b"\n" not in self.buffer:
            await self._fill()
        end = self.buffer.index(b"\n") + 1
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    async def closed_by_server(self) -> bool:
        """Read until the server closes the connection; True if it did."""
        try:
            while True:
                await self._fill()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True

    async def aclose(self) -> None:
        await self.stream.aclose()


async def settle(predicate: Callable[[], bool]) -> None:
    """Let every task run until ``predicate`` holds (loopback I/O included)."""
    with trio.fail_after(10):
        while not predicate():
            await trio.testing.wait_all_tasks_blocked()


async def round_trip(server: GearmanServer, data: bytes) -> bytes:
    """Submit a job, run it on a raw worker and return what the client received."""
    client = await Peer.connect(server)
    worker = await Peer.connect(server)
    await client.send(SubmitJob(b"reverse", b"", data))
    created = await client.packet()
    assert isinstance(created, JobCreated)
    await worker.send(CanDo(b"reverse"), GrabJobUniq())
    assigned = await worker.packet()
    assert assigned == JobAssignUniq(created.handle, b"reverse", b"", data)
    await worker.send(WorkComplete(created.handle, data[::-1]))
    done = await client.packet()
    assert done == WorkComplete(created.handle, data[::-1])
    await client.aclose()
    await worker.aclose()
    return done.data


# --- listening -----------------------------------------------------------------------------------


async def test_port_zero_reports_the_bound_port() -> None:
    async with running_server() as server:
        [(host, port)] = server.addresses
        assert host == "127.0.0.1"
        assert port > 0
        assert server.port == port
        assert await round_trip(server, b"abc") == b"cba"


async def test_no_host_listens_on_every_address_with_one_port() -> None:
    async with running_server([(None, 0)]) as server:
        hosts = {host for host, _ in server.addresses}
        ports = {port for _, port in server.addresses}
        assert "0.0.0.0" in hosts
        assert len(ports) == 1
        assert await round_trip(server, b"v4") == b"4v"
        if ipv6_available():
            assert "::" in hosts
            peer = await Peer.connect(server, "::1")
            await peer.send(EchoReq(b"v6"))
            assert await peer.packet() == EchoRes(b"v6")
            await peer.aclose()


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 on this machine")
async def test_several_addresses_ipv4_and_ipv6() -> None:
    async with running_server([("127.0.0.1", 0), ("::1", 0)]) as server:
        assert [host for host, _ in server.addresses] == ["127.0.0.1", "::1"]
        for host, port in server.addresses:
            stream = await anyio.connect_tcp(host, port)
            peer = Peer(stream)
            await peer.send(EchoReq(host.encode()))
            assert await peer.packet() == EchoRes(host.encode())
            await peer.aclose()


async def test_address_in_use_is_reported() -> None:
    async with running_server() as first:
        config = ServerConfig()
        with pytest.raises(OSError, match="in use") as caught:
            await GearmanServer(config, [("127.0.0.1", first.port)]).run()
        assert caught.value.errno == errno.EADDRINUSE


async def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        async with running_server():
            now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
        assert now == expected
        assert raise_fd_limit(min(512, hard)) == min(512, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_accepted_sockets_get_nodelay_and_keepalive() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()),
    ):
        accepted, _ = listener.accept()
        with accepted:
            configure_accepted(accepted, KeepAlive(idle=30, interval=5, count=3))
            assert accepted.getblocking() is False
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


# --- framing -------------------------------------------------------------------------------------


async def test_submit_grab_complete_round_trip() -> None:
    async with running_server() as server:
        assert await round_trip(server, b"hello") == b"olleh"
        assert server.statistics().jobs_running == 0


async def test_pipelined_packets_in_one_send() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        echoes = [EchoReq(b"%d" % i) for i in range(200)]
        submits = [SubmitJob(b"f", b"", b"%d" % i, background=True) for i in range(200)]
        await peer.send(*echoes, *submits)
        for i in range(200):
            assert await peer.packet() == EchoRes(b"%d" % i)
        for i in range(200):
            assert await peer.packet() == JobCreated(PREFIX + b":%d" % (i + 1))
        assert server.statistics().jobs_queued == 200


async def test_replies_to_one_read_leave_in_one_send(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_server() as server:
        sends: list[int] = []
        original = socket.socket.send

        def counting_send(sock: socket.socket, data: Any, *args: Any) -> int:
            if sock.family == socket.AF_INET and sock.getsockname()[1] == server.port:
                sends.append(len(data))  # sent by the server
            return original(sock, data, *args)

        monkeypatch.setattr(socket.socket, "send", counting_send)
        peer = await Peer.connect(server)
        await peer.send(*[EchoReq(b"%02d" % i) for i in range(50)])
        replies = [await peer.packet() for _ in range(50)]
        assert replies == [EchoRes(b"%02d" % i) for i in range(50)]
        assert sends == [50 * len(encode(EchoRes(b"00")))]


async def test_packets_split_byte_by_byte() -> None:
    async with running_server() as server:
        client = await Peer.connect(server)
        wire = encode(SubmitJob(b"split", b"u-1", b"payload")) + encode(EchoReq(b"x" * 20))
        for i in range(len(wire)):
            await client.send(wire[i : i + 1])
            await trio.testing.wait_all_tasks_blocked()
        assert await client.packet() == JobCreated(PREFIX + b":1")
        assert await client.packet() == EchoRes(b"x" * 20)


async def test_admin_text_and_binary_mixed_on_one_connection() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        await peer.send(
            b"version\n",
            EchoReq(b"one"),
            b"status\r\n",
            SubmitJob(b"mixed", b"", b"", background=True),
            b"status\n",
        )
        assert (await peer.line()).startswith(b"OK ")
        assert await peer.packet() == EchoRes(b"one")
        assert await peer.line() == b".\n"
        assert await peer.packet() == JobCreated(PREFIX + b":1")
        assert await peer.line() == b"mixed\t1\t0\t0\n"
        assert await peer.line() == b".\n"


# --- isolation -----------------------------------------------------------------------------------


async def test_garbage_closes_only_its_own_connection() -> None:
    async with running_server() as server:
        other = await Peer.connect(server)
        await other.send(SubmitJob(b"safe", b"", b"keep", background=True))
        assert await other.packet() == JobCreated(PREFIX + b":1")

        bad = await Peer.connect(server)
        await bad.send(SubmitJob(b"f", b"", b"before", background=True), b"\0XYZ garbage bytes!")
        assert await bad.packet() == JobCreated(PREFIX + b":2")
        assert await bad.closed_by_server()

        await other.send(EchoReq(b"still here"))
        assert await other.packet() == EchoRes(b"still here")
        await settle(lambda: server.statistics().connections == 1)
        assert server.statistics().jobs_queued == 2


async def test_unknown_packet_type_gets_an_error_then_close() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        await peer.send(struct.pack(">4sII", b"\0REQ", 99, 0))
        error = await peer.packet()
        assert isinstance(error, Error)
        assert error.code == b"INVALID_COMMAND"
        assert await peer.closed_by_server()


async def test_internal_error_closes_that_connection_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server() as server:
        receive = server.state.receive

        def faulty(conn: Any, event: Event, now: float) -> None:
            if event == EchoReq(b"boom"):
                raise RuntimeError("bug")
            receive(conn, event, now)

        StateSpy(server, receive=faulty)
        bad = await Peer.connect(server)
        await bad.send(EchoReq(b"boom"))
        assert await bad.closed_by_server()
        assert "Internal error serving 127.0.0.1" in caplog.text
        assert await round_trip(server, b"ok") == b"ko"


async def test_worker_disconnect_requeues_its_job_and_wakes_a_sleeper() -> None:
    async with running_server() as server:
        client = await Peer.connect(server)
        await client.send(SubmitJob(b"f", b"", b"data"))
        created = await client.packet()
        assert isinstance(created, JobCreated)
        first = await Peer.connect(server)
        await first.send(CanDo(b"f"), GrabJobUniq())
        assert isinstance(await first.packet(), JobAssignUniq)
        second = await Peer.connect(server)
        await second.send(CanDo(b"f"), PreSleep())
        await settle(lambda: server.statistics().connections == 3)
        await first.aclose()
        assert await second.packet() == Noop()
        await second.send(GrabJobUniq())
        assert await second.packet() == JobAssignUniq(created.handle, b"f", b"", b"data")


async def test_client_that_never_reads_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    limit = 256 * 1024
    async with running_server(max_output_bytes=limit) as server:
        hog = await Peer.connect(server)
        payload = EchoReq(b"x" * 65536)
        sent = 0
        with trio.fail_after(20):
            try:
                while True:
                    await hog.send(payload)
                    sent += 65536
            except (anyio.BrokenResourceError, OSError):
                pass
        # Bounded: the limit plus what the kernel buffers on both sides, never more.
        assert sent < limit + 64 * 1024 * 1024
        assert "Dropping connection" in caplog.text
        await settle(lambda: server.statistics().connections == 0)
        assert await round_trip(server, b"fine") == b"enif"


async def test_the_replies_of_one_read_are_held_to_the_limit_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    limit = 256 * 1024
    async with running_server(max_output_bytes=limit) as server:
        hog = await Peer.connect(server)
        # One request whose reply alone is far over the limit, and the peer never reads.
        await hog.send(EchoReq(b"x" * (16 << 20)))
        await settle(lambda: server.statistics().connections == 0)
        assert "more than 262144 bytes of replies wait while it does not read" in caplog.text
        assert await round_trip(server, b"fine") == b"enif"


async def test_replies_larger_than_the_socket_buffers_arrive_whole_and_in_order() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        big = bytes(range(256)) * 32768  # 8 MiB: the socket takes only part at once
        await peer.send(EchoReq(big), EchoReq(b"after"))
        # Nothing is read until both requests are handled: the rest of the big reply
        # waits in the server for the socket to drain.
        await settle(lambda: any(c.blocked for c in server.connections))
        assert await peer.packet() == EchoRes(big)
        assert await peer.packet() == EchoRes(b"after")
        await peer.send(EchoReq(b"again"))
        assert await peer.packet() == EchoRes(b"again")
        assert not any(c.blocked for c in server.connections)


def test_blocked_connections_close_cleanly_under_asyncio() -> None:
    async def main() -> None:
        async with running_server(max_output_bytes=1 << 30) as server:
            peer = await Peer.connect(server)
            await peer.send(EchoReq(b"x" * (8 << 20)))
            # Once the reply starts arriving, the rest waits in the server.
            await peer._fill()
            assert any(c.blocked for c in server.connections)
            await server.aclose()
            assert await peer.closed_by_server()

    anyio.run(main, backend="asyncio")


async def test_many_connections() -> None:
    resource = pytest.importorskip("resource")
    count = 2000
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 2 * count + 100:
        pytest.skip(f"the open-file hard limit ({hard}) is too low for {count} connections")
    async with running_server(backlog=1024) as server:
        peers = []
        with trio.fail_after(30):
            for _ in range(count):
                peers.append(await Peer.connect(server))
            for i, peer in enumerate(peers):
                await peer.send(EchoReq(b"%d" % i))
            for i, peer in enumerate(peers):
                assert await peer.packet() == EchoRes(b"%d" % i)
            assert server.statistics().connections == count
            for peer in peers:
                await peer.aclose()
            await settle(lambda: server.statistics().connections == 0)


# --- timer, drain, shutdown ----------------------------------------------------------------------


async def test_timer_requeues_a_timed_out_job(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as server:
        client = await Peer.connect(server)
        await client.send(SubmitJob(b"slow", b"", b"data"))
        created = await client.packet()
        assert isinstance(created, JobCreated)
        stuck = await Peer.connect(server)
        await stuck.send(CanDoTimeout(b"slow", 5000), GrabJobUniq())
        assert isinstance(await stuck.packet(), JobAssignUniq)
        started = trio.current_time()
        sleeper = await Peer.connect(server)
        await sleeper.send(CanDo(b"slow"), PreSleep())
        assert await sleeper.packet() == Noop()
        assert trio.current_time() - started >= 5.0
        await sleeper.send(GrabJobUniq())
        assert await sleeper.packet() == JobAssignUniq(created.handle, b"slow", b"", b"data")


async def test_drain_refuses_new_connections_and_waits_for_running_jobs() -> None:
    async with running_server() as server:
        client = await Peer.connect(server)
        await client.send(SubmitJob(b"f", b"", b"work"))
        created = await client.packet()
        assert isinstance(created, JobCreated)
        worker = await Peer.connect(server)
        await worker.send(CanDo(b"f"), GrabJobUniq())
        assert isinstance(await worker.packet(), JobAssignUniq)

        result: list[bool] = []
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                result.append(await server.drain(timeout=None))

            tg.start_soon(drain)
            await settle(lambda: not server.statistics().listening)
            with pytest.raises(OSError, match="All connection attempts failed"):
                await anyio.connect_tcp("127.0.0.1", server.port)
            assert result == []
            # Existing connections are still served.
            await worker.send(WorkComplete(created.handle, b"done"), GrabJobUniq())
            assert await client.packet() == WorkComplete(created.handle, b"done")
            assert await worker.packet() == NoJob()
        assert result == [True]


async def test_drain_gives_up_after_its_timeout(autojump_clock: trio.testing.MockClock) -> None:
    async with running_server() as server:
        client = await Peer.connect(server)
        await client.send(SubmitJob(b"f", b"", b"work"))
        await client.packet()
        worker = await Peer.connect(server)
        await worker.send(CanDo(b"f"), GrabJobUniq())
        await worker.packet()
        started = trio.current_time()
        assert await server.drain(timeout=30) is False
        assert trio.current_time() - started == pytest.approx(30)
        assert server.statistics().jobs_running == 1


async def test_drain_without_running_jobs_returns_at_once() -> None:
    async with running_server() as server:
        assert await server.drain(timeout=0) is True
        assert not server.statistics().listening


async def test_aclose_closes_every_connection() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        await peer.send(EchoReq(b"x"))
        assert await peer.packet() == EchoRes(b"x")
        await server.aclose()
        assert await peer.closed_by_server()
        with pytest.raises(RuntimeError):
            await server.run()


async def test_listening_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="trio_gearman.server")
    async with running_server() as server:
        assert f"Listening on 127.0.0.1:{server.port}" in caplog.text


def test_round_trip_under_asyncio() -> None:
    async def main() -> bytes:
        async with running_server() as server:
            return await round_trip(server, b"asyncio")

    assert anyio.run(main, backend="asyncio") == b"oicnysa"
