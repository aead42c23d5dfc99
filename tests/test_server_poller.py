"""The job server's connection poller and its task-per-connection fallback."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
import trio

import trio_gearman._server.server as server_module
from trio_gearman._proto._codec import Decoder, encode
from trio_gearman._proto._packets import EchoReq, EchoRes, Magic, Noop
from trio_gearman._server.connection import HAVE_EPOLL, ServerConnection

from .test_server_io import Peer, running_server, settle

requires_epoll = pytest.mark.skipif(not HAVE_EPOLL, reason="no epoll on this system")


@pytest.fixture(params=["poller", "task per connection"])
def serving_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the epoll poller and again with one task per connection."""
    mode: str = request.param
    if mode == "poller" and not HAVE_EPOLL:
        pytest.skip("no epoll on this system")
    if mode != "poller":
        monkeypatch.setattr(server_module, "HAVE_EPOLL", False)
    return mode


def _count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return sum(1 for _ in walk(root))


@requires_epoll
async def test_idle_connections_have_no_task_of_their_own() -> None:
    async with running_server() as server:
        await Peer.connect(server)  # the first one: any lazily started task runs now
        await settle(lambda: server.statistics().connections == 1)
        before = _count_tasks()
        peers = [await Peer.connect(server) for _ in range(20)]
        await settle(lambda: server.statistics().connections == 21)
        assert _count_tasks() == before
        # ...and every one of them is served.
        for i, peer in enumerate(peers):
            await peer.send(EchoReq(b"%d" % i))
        for i, peer in enumerate(peers):
            assert await peer.packet() == EchoRes(b"%d" % i)


async def test_replies_reach_every_connection(serving_mode: str) -> None:
    async with running_server() as server:
        peers = [await Peer.connect(server) for _ in range(5)]
        for i, peer in enumerate(peers):
            await peer.send(EchoReq(b"%d" % i), EchoReq(b"x%d" % i))
        for i, peer in enumerate(peers):
            assert await peer.packet() == EchoRes(b"%d" % i)
            assert await peer.packet() == EchoRes(b"x%d" % i)
        assert all(isinstance(c, ServerConnection) for c in server.connections)


async def test_a_peer_that_stops_sending_still_gets_a_blocked_reply(serving_mode: str) -> None:
    async with running_server() as server:
        port = server.addresses[0][1]
        big = bytes(range(256)) * 16384  # 4 MiB: more than the socket takes at once
        with trio.fail_after(20):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            await stream.send_all(encode(EchoReq(big)) + encode(EchoReq(b"last")))
            await settle(lambda: any(c.blocked for c in server.connections))
            await stream.send_eof()  # the server sees the end of the stream now
            received = bytearray()
            while chunk := await stream.receive_some(1 << 20):
                received += chunk
            # Everything arrived, then the server closed the connection.
            decoder = Decoder(expect=Magic.RES)
            decoder.feed(bytes(received))
            assert list(decoder) == [EchoRes(big), EchoRes(b"last")]
            await settle(lambda: server.statistics().connections == 0)
            await stream.aclose()


async def test_a_peer_that_resets_is_forgotten(serving_mode: str) -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        await peer.send(EchoReq(b"hi"))
        assert await peer.packet() == EchoRes(b"hi")
        await peer.aclose()
        await settle(lambda: server.statistics().connections == 0)


def test_poller_round_trip_under_asyncio() -> None:
    async def main() -> list[object]:
        async with running_server() as server:
            peers = [await Peer.connect(server) for _ in range(3)]
            for peer in peers:
                await peer.send(EchoReq(b"a"), Noop())
            return [await peer.packet() for peer in peers]

    assert anyio.run(main, backend="asyncio") == [EchoRes(b"a")] * 3


def test_an_idle_decoder_holds_no_event_queue() -> None:
    decoder = Decoder(expect=Magic.REQ)
    assert decoder._ready is None
    decoder.feed(encode(EchoReq(b"1")) + encode(EchoReq(b"2")))
    events = iter(decoder)
    assert next(events) == EchoReq(b"1")
    del events
    # Stopping early keeps the rest for the next iteration...
    assert list(decoder) == [EchoReq(b"2")]
    # ...and once drained nothing is kept.
    assert decoder._ready is None
