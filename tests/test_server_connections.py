"""One connection path: every connection is adopted by the hub, and ends exactly once.

The same :class:`~trio_gearman._server.connection.ServerConnection` serves
``trio-gearmand``, :class:`GearmanServer` and the embedded test server, whether its
socket came from a listener or a socket pair, and whether the poller or a task of
its own reads it. Each way a connection ends tells the state once.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import trio

from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJob,
    JobAssign,
    JobCreated,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._proto.server.model import ConnectionState
from trio_gearman._server.connection import HAVE_EPOLL
from trio_gearman._server.server import GearmanServer
from trio_gearman.testing import open_test_server

from .test_server_io import Peer, StateSpy, running_server, settle
from .test_server_poller import _count_tasks, serving_mode

__all__ = ["serving_mode"]  # the fixture, imported for the tests below


class DisconnectCounter:
    """Counts how often the state is told that each connection is gone."""

    def __init__(self, server: GearmanServer) -> None:
        self.counts: Counter[int] = Counter()
        disconnect = server.state.disconnect

        def counting(conn: ConnectionState, now: float) -> None:
            self.counts[conn.id] += 1
            disconnect(conn, now)

        StateSpy(server, disconnect=counting)


@pytest.fixture
async def counted() -> AsyncIterator[tuple[GearmanServer, DisconnectCounter]]:
    async with running_server() as server:
        yield server, DisconnectCounter(server)


async def _peer_closes(server: GearmanServer, peer: Peer) -> None:
    await peer.stream.aclose()


async def _peer_resets(server: GearmanServer, peer: Peer) -> None:
    raw = peer.stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await peer.stream.aclose()


async def _protocol_error(server: GearmanServer, peer: Peer) -> None:
    await peer.stream.send(b"\0REQ\xff\xff\xff\xff\0\0\0\0")  # no such packet type
    assert await peer.closed_by_server()  # after the ERROR reply


async def _server_drops(server: GearmanServer, peer: Peer) -> None:
    (connection,) = (c for c in server.connections if c.conn.ability_list)
    await server.close_connections([connection], "test")
    assert await peer.closed_by_server()


async def _peer_sends_eof(server: GearmanServer, peer: Peer) -> None:
    await peer.send(EchoReq(b"last"))
    await peer.stream.send_eof()
    assert await peer.packet() == EchoRes(b"last")  # the last reply still arrives


CLOSE_PATHS: dict[str, Callable[[GearmanServer, Peer], Awaitable[None]]] = {
    "peer closes": _peer_closes,
    "peer resets": _peer_resets,
    "protocol error": _protocol_error,
    "server drops": _server_drops,
    "peer sends EOF": _peer_sends_eof,
}


@pytest.mark.parametrize("path", sorted(CLOSE_PATHS))
async def test_every_close_path_ends_the_connection_once(
    serving_mode: str, counted: tuple[GearmanServer, DisconnectCounter], path: str
) -> None:
    server, counter = counted
    peer = await Peer.connect(server)
    bystander = await Peer.connect(server)
    await peer.send(CanDo(b"f"), EchoReq(b"up"))
    assert await peer.packet() == EchoRes(b"up")
    (connection, other) = sorted(server.connections, key=lambda c: c.conn.id)
    await CLOSE_PATHS[path](server, peer)
    with trio.fail_after(5):
        await connection.wait_closed()
    await settle(lambda: server.statistics().connections == 1)
    assert connection.closed
    assert counter.counts == {connection.conn.id: 1}
    function = server.state.get_function(b"f")
    assert function is None or not function.workers  # its registration went with it
    # The other connection is served on, and the server still answers.
    await bystander.send(EchoReq(b"still"))
    assert await bystander.packet() == EchoRes(b"still")
    assert not other.closed


async def test_stopping_the_server_ends_every_connection_once(serving_mode: str) -> None:
    async with running_server() as server:
        counter = DisconnectCounter(server)
        peers = [await Peer.connect(server) for _ in range(3)]
        await settle(lambda: server.statistics().connections == 3)
        connections = server.connections
        await server.aclose()
        assert all(connection.closed for connection in connections)
        assert sorted(counter.counts.values()) == [1, 1, 1]
        for peer in peers:
            assert await peer.closed_by_server()


async def test_adopting_needs_a_running_server() -> None:
    server = GearmanServer(listen=())
    ours, theirs = socket.socketpair()
    with theirs, pytest.raises(RuntimeError, match="not running"):
        server.adopt(ours, "memory")
    assert ours.fileno() == -1  # the server took it, and closed it


@pytest.mark.skipif(not HAVE_EPOLL, reason="no epoll on this system")
async def test_the_test_server_serves_through_the_poller() -> None:
    async with open_test_server() as embedded:
        first = await anyio.connect_tcp(embedded.host, embedded.port)
        await settle(lambda: embedded.server.statistics().connections == 1)
        before = _count_tasks()
        streams = [await anyio.connect_tcp(embedded.host, embedded.port) for _ in range(5)]
        streams += [await embedded.connect_memory() for _ in range(5)]
        await settle(lambda: embedded.server.statistics().connections == 11)
        assert _count_tasks() == before  # no task per connection: the poller reads them
        for stream in [first, *streams]:
            await stream.aclose()


async def test_memory_and_tcp_connections_share_one_server() -> None:
    async with open_test_server() as embedded:
        client = Peer(await embedded.connect_memory())
        worker = Peer(await anyio.connect_tcp(embedded.host, embedded.port))
        await client.send(SubmitJob(b"reverse", b"", b"abc"))
        created = await client.packet()
        assert isinstance(created, JobCreated)
        assert embedded.queued("reverse") == 1
        await worker.send(CanDo(b"reverse"), GrabJob())
        assigned = await worker.packet()
        assert assigned == JobAssign(created.handle, b"reverse", b"abc")
        await worker.send(WorkComplete(created.handle, b"cba"))
        assert await client.packet() == WorkComplete(created.handle, b"cba")
        peers = {c.address for c in embedded.state.connections}
        assert peers == {b"memory", b"127.0.0.1"}
