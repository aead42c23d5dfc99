"""The server's I/O with the state's limits: shared results, and long admin listings."""

from __future__ import annotations

import trio

from trio_gearman._proto._packets import (
    CanDo,
    GrabJob,
    JobAssign,
    JobCreated,
    SubmitJob,
    WorkComplete,
    WorkData,
)

from .test_server_io import Peer, running_server, settle


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
