"""PacketStream: framing over any anyio ByteStream, batching, errors; address parsing.

Also home of the in-memory ByteStream pair and the scripted fake server that the
client and worker tests use where a real server cannot make an event happen on cue.
"""

from __future__ import annotations

import errno
import math
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest
import trio
import trio.testing
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from trio_gearman._address import format_address, parse_address
from trio_gearman._exceptions import ConnectFailed, ConnectionLost, ProtocolError
from trio_gearman._net.stream import PacketStream, broken_reason, connect, os_reason
from trio_gearman._proto import (
    Decoder,
    EchoReq,
    EchoRes,
    Event,
    GrabJobUniq,
    JobCreated,
    Magic,
    Message,
    Noop,
    WorkComplete,
    encode,
)

from .gearmand_peer import free_port

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

# --- in-memory transports ----------------------------------------------------------------


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe; counts the sends it makes."""

    def __init__(
        self,
        send: MemoryObjectSendStream[bytes],
        receive: MemoryObjectReceiveStream[bytes],
    ) -> None:
        self._send = send
        self._receive = receive
        self._rest = b""
        self.sends = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = self._rest or await self._receive.receive()
        self._rest = data[max_bytes:]
        return data[:max_bytes]

    async def send(self, item: bytes) -> None:
        self.sends += 1
        await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._send.close()
        self._receive.close()


def memory_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected in-memory byte streams."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](math.inf)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](math.inf)
    return MemoryByteStream(a_send, a_receive), MemoryByteStream(b_send, b_receive)


class FakeServer:
    """The server end of an in-memory connection, scripted by a test.

    ``await server.receive(n)`` returns the next ``n`` packets the peer sent (with
    their magic checked); ``server.send(message)`` sends one with RES magic.
    """

    def __init__(self, stream: MemoryByteStream) -> None:
        self.stream = stream
        self._decoder = Decoder(expect=Magic.REQ)
        self._ready: list[Event] = []

    async def receive(self, count: int = 1) -> list[Event]:
        while len(self._ready) < count:
            self._decoder.feed(await self.stream.receive())
            self._ready.extend(self._decoder)
        got, self._ready = self._ready[:count], self._ready[count:]
        return got

    async def receive_until(self, kind: type[Any]) -> list[Event]:
        """Every packet up to and including the next one of type ``kind``."""
        got: list[Event] = []
        while not got or not isinstance(got[-1], kind):
            got += await self.receive()
        return got

    def pending(self) -> list[Event]:
        """Packets already received but not yet returned (without waiting)."""
        return list(self._ready)

    async def send(self, *messages: Message) -> None:
        await self.stream.send(b"".join(encode(m, Magic.RES) for m in messages))

    async def close(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def fake_connection(
    expect: Magic = Magic.RES,
) -> AsyncIterator[tuple[PacketStream, FakeServer]]:
    """A PacketStream on one end of a memory pair and a FakeServer on the other."""
    ours, theirs = memory_pair()
    try:
        yield PacketStream(ours, peer="memory:1", expect=expect), FakeServer(theirs)
    finally:
        ours.close()
        theirs.close()


class FakeServers:
    """A connector for Client/Worker that hands out in-memory connections.

    Each connection made appends its :class:`FakeServer` to :attr:`servers`, and
    sets :attr:`connected`; :meth:`close` closes them all.
    """

    def __init__(self) -> None:
        self.servers: list[FakeServer] = []
        self._streams: list[MemoryByteStream] = []
        self.connected = trio.Event()

    async def __call__(self, address: str) -> PacketStream:
        ours, theirs = memory_pair()
        self._streams += [ours, theirs]
        self.servers.append(FakeServer(theirs))
        self.connected.set()
        return PacketStream(ours, peer=address)

    async def next_server(self) -> FakeServer:
        """The first connection made (waiting for it)."""
        await self.connected.wait()
        return self.servers[0]

    def close(self) -> None:
        for stream in self._streams:
            stream.close()


@asynccontextmanager
async def fake_servers() -> AsyncIterator[FakeServers]:
    """A :class:`FakeServers` connector, closed at the end."""
    servers = FakeServers()
    try:
        yield servers
    finally:
        servers.close()


# --- PacketStream ------------------------------------------------------------------------


async def test_packets_queued_together_leave_in_one_send() -> None:
    async with fake_connection() as (stream, server), trio.open_nursery() as nursery:
        await nursery.start(stream.serve, lambda event: None)
        for n in range(50):
            stream.send_nowait(EchoReq(b"%d" % n))
        with trio.fail_after(5):
            got = await server.receive(50)
        assert got == [EchoReq(b"%d" % n) for n in range(50)]
        assert stream._stream.sends == 1  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_events_are_decoded_whatever_the_split() -> None:
    seen: list[Event] = []
    wire = encode(JobCreated(b"H:1"), Magic.RES) + encode(WorkComplete(b"H:1", b"ok"), Magic.RES)
    async with fake_connection() as (stream, server), trio.open_nursery() as nursery:
        await nursery.start(stream.serve, seen.append)
        for byte in wire:  # one byte per transport chunk
            await server.stream.send(bytes([byte]))
        with trio.fail_after(5):
            while len(seen) < 2:
                await trio.testing.wait_all_tasks_blocked()
        assert seen == [JobCreated(b"H:1"), WorkComplete(b"H:1", b"ok")]
        nursery.cancel_scope.cancel()


async def test_peer_closing_ends_serve_with_connection_lost_naming_the_peer() -> None:
    async with fake_connection() as (stream, server):
        await server.close()
        with trio.fail_after(5), pytest.raises(ConnectionLost, match=r"memory:1: .*closed"):
            await stream.serve(lambda event: None)
        assert stream.error is not None
        with pytest.raises(ConnectionLost):
            stream.send_nowait(EchoReq(b"late"))


async def test_garbage_from_the_peer_is_a_connection_lost_caused_by_the_protocol_error() -> None:
    async with fake_connection() as (stream, server):
        await server.stream.send(b"\0XYZ\0\0\0\1\0\0\0\0")
        with trio.fail_after(5), pytest.raises(ConnectionLost) as info:
            await stream.serve(lambda event: None)
        assert isinstance(info.value.__cause__, ProtocolError)


async def test_events_before_a_protocol_error_are_still_delivered() -> None:
    seen: list[Event] = []
    async with fake_connection() as (stream, server):
        await server.stream.send(encode(Noop(), Magic.RES) + b"garbage!")
        with trio.fail_after(5), pytest.raises(ConnectionLost):
            await stream.serve(seen.append)
    assert seen == [Noop()]


async def test_drain_waits_until_the_transport_has_everything() -> None:
    async with fake_connection() as (stream, server), trio.open_nursery() as nursery:
        await nursery.start(stream.serve, lambda event: None)
        stream.send_nowait(GrabJobUniq())
        assert stream.buffered > 0
        with trio.fail_after(5):
            await stream.drain()
        assert stream.buffered == 0
        assert await server.receive() == [GrabJobUniq()]
        nursery.cancel_scope.cancel()


async def test_send_waits_for_the_transport_when_much_is_queued() -> None:
    async with fake_connection() as (stream, server), trio.open_nursery() as nursery:
        await nursery.start(stream.serve, lambda event: None)
        big = b"x" * (2 * 1024 * 1024)
        with trio.fail_after(5):
            await stream.send(EchoReq(big))
        assert stream.buffered == 0  # send() returned only once it was handed over
        assert await server.receive() == [EchoReq(big)]
        nursery.cancel_scope.cancel()


async def test_drain_raises_once_the_connection_is_gone() -> None:
    async with fake_connection() as (stream, server):
        await server.close()
        with pytest.raises(ConnectionLost):
            await stream.serve(lambda event: None)
        with pytest.raises(ConnectionLost):
            await stream.drain()


async def test_a_peer_that_stops_reading_breaks_the_writer() -> None:
    async with fake_connection() as (stream, server):
        await server.stream._receive.aclose()  # the peer's reading end goes away
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                with pytest.raises(ConnectionLost, match="broke"):
                    await stream.serve(lambda event: None)

            nursery.start_soon(serve)
            stream.send_nowait(EchoReq(b"x"))
        assert stream.error is not None


async def test_request_and_reply_round_trip() -> None:
    replies: list[Event] = []
    async with fake_connection() as (stream, server), trio.open_nursery() as nursery:
        await nursery.start(stream.serve, replies.append)
        stream.send_nowait(EchoReq(b"ping"))
        with trio.fail_after(5):
            assert await server.receive() == [EchoReq(b"ping")]
            await server.send(EchoRes(b"ping"))
            while not replies:
                await trio.testing.wait_all_tasks_blocked()
        assert replies == [EchoRes(b"ping")]
        nursery.cancel_scope.cancel()


# --- connecting --------------------------------------------------------------------------


async def test_connect_refused_is_connect_failed_naming_the_server() -> None:
    with socket_bound_but_not_listening() as port, pytest.raises(ConnectFailed) as info:
        await connect(f"127.0.0.1:{port}")
    assert str(info.value).startswith(f"127.0.0.1:{port}: cannot connect")


async def test_connect_timeout_is_connect_failed(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    async def never(host: str, port: int) -> anyio.abc.SocketStream:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(anyio, "connect_tcp", never)
    with pytest.raises(ConnectFailed, match=r"no connection within 2 s"):
        await connect("127.0.0.1:1", connect_timeout=2)
    assert trio.current_time() == pytest.approx(2)


async def test_connect_gives_a_working_stream() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, trio.open_nursery() as nursery:

        async def serve_one(conn: anyio.abc.SocketStream) -> None:
            async with conn:
                data = await conn.receive()
                await conn.send(encode(EchoRes(data[12:]), Magic.RES))
                await trio.sleep_forever()

        nursery.start_soon(listener.serve, serve_one)
        stream = await connect(f"127.0.0.1:{port}")
        assert stream.peer == f"127.0.0.1:{port}"
        got: list[Event] = []
        arrived = trio.Event()

        def on_event(event: Event) -> None:
            got.append(event)
            arrived.set()

        async with trio.open_nursery() as inner:
            await inner.start(stream.serve, on_event)
            stream.send_nowait(EchoReq(b"hi"))
            with trio.fail_after(5):
                await arrived.wait()
            inner.cancel_scope.cancel()
        assert got == [EchoRes(b"hi")]
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("gm.example", ("gm.example", 4730)),
        ("127.0.0.1:4731", ("127.0.0.1", 4731)),
        ("[::1]:4732", ("::1", 4732)),
        ("[::1]", ("::1", 4730)),
        ("::1", ("::1", 4730)),
        (("10.0.0.1", 1), ("10.0.0.1", 1)),
    ],
)
def test_parse_address(address: str | tuple[str, int], expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address", ["", ":4730", "host:", "host:x", "host:70000", "[::1", "[::1]x", "a:b:c", "::g"]
)
def test_parse_address_refuses_malformed(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_address(address)


def test_format_address_brackets_ipv6() -> None:
    assert format_address("::1", 4730) == "[::1]:4730"
    assert format_address("127.0.0.1", 1) == "127.0.0.1:1"


# --- helpers -----------------------------------------------------------------------------


class socket_bound_but_not_listening:
    """A loopback port that is bound (so nothing else takes it) but refuses connections."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()


async def test_a_refused_connect_names_the_os_reason() -> None:
    port = free_port()
    with pytest.raises(ConnectFailed) as info:
        await connect(f"127.0.0.1:{port}")
    assert str(info.value) == (
        f"127.0.0.1:{port}: cannot connect: {os.strerror(errno.ECONNREFUSED)}"
    )


def test_os_reason_digs_through_causes_and_groups() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "refused")
    wrapper = OSError("All connection attempts failed")
    wrapper.__cause__ = ExceptionGroup("attempts", [ValueError("noise"), refused])
    assert os_reason(wrapper) == os.strerror(errno.ECONNREFUSED)
    assert os_reason(OSError("no errno anywhere")) == "no errno anywhere"


def _with_cause(error: BaseException, cause: BaseException) -> BaseException:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (anyio.BrokenResourceError(), "the peer reset or abandoned it"),
        (anyio.ClosedResourceError(), "it was closed on this side"),
        (ConnectionResetError(errno.ECONNRESET, "x"), os.strerror(errno.ECONNRESET)),
        (
            _with_cause(anyio.BrokenResourceError(), BrokenPipeError(errno.EPIPE, "y")),
            "Broken pipe",
        ),
        (OSError("bad things"), "bad things"),
    ],
)
def test_a_broken_connection_always_says_why(error: BaseException, reason: str) -> None:
    assert broken_reason(error) == reason


async def test_a_reset_by_the_server_is_named_in_the_failure() -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:

        async def reset_at_once(stream: anyio.abc.SocketStream) -> None:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.receive()
            await stream.aclose()

        tg.start_soon(listener.serve, reset_at_once)
        stream = await connect(f"127.0.0.1:{port}")
        stream.send_nowait(EchoReq(b"hi"))
        with trio.fail_after(5), pytest.raises(ConnectionLost) as info:
            await stream.serve(lambda event: None)
        assert str(info.value).endswith(
            ("Connection reset by peer", "the peer reset or abandoned it")
        ), str(info.value)
        tg.cancel_scope.cancel()
