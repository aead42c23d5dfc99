"""AdminClient against the real gearmand 1.1.20, and against small fake servers for
the failure cases (a server that hangs up, answers garbage, or answers late)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest

from trio_gearman._client.admin import AdminClient
from trio_gearman._exceptions import (
    AdminError,
    BadAdminReply,
    ConnectFailed,
    ConnectionLost,
    GearmanError,
    InvalidArgument,
)
from trio_gearman._proto import (
    CanDo,
    EchoReq,
    GrabJob,
    Message,
    Priority,
    SetClientId,
    SubmitJob,
    encode,
)
from trio_gearman._proto._admin import (
    FunctionPriorityStatus,
    FunctionStatus,
    JobInfo,
)

from .gearmand_peer import GearmandProcess, free_port


@pytest.fixture
def server(gearmand: GearmandProcess) -> Iterator[GearmandProcess]:
    """The ``gearmand`` fixture; its log pipe is closed afterwards (it is drained by a
    separate process, and an open pipe would be reported as a ResourceWarning)."""
    yield gearmand
    if gearmand.process.stderr is not None:
        gearmand.process.stderr.close()


class Peer:
    """A raw binary-protocol connection, to set up workers and jobs."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream

    async def sync(self, *messages: Message) -> bytes:
        """Send packets and wait until gearmand has handled them (an echo comes back)."""
        await self.stream.send(b"".join(encode(m) for m in messages) + encode(EchoReq(b"sync")))
        data = b""
        with anyio.fail_after(5):
            while not data.endswith(b"sync"):
                data += await self.stream.receive()
        return data


@pytest.fixture
async def scene(server: GearmandProcess) -> AsyncIterator[GearmandProcess]:
    """gearmand with two workers, four jobs (one running) and a foreground client."""
    streams = [await anyio.connect_tcp(server.host, server.port) for _ in range(3)]
    try:
        worker_a, worker_b, client = (Peer(s) for s in streams)
        await worker_a.sync(SetClientId(b"resizer 1"), CanDo(b"resize"), CanDo(b"thumb"))
        await worker_b.sync(CanDo(b"email"))
        created = await client.sync(
            SubmitJob(b"resize", b"img-1", b"x", background=True),
            SubmitJob(b"thumb", b"img-2", b"x", Priority.HIGH, background=True),
            SubmitJob(b"resize", b"", b"y", Priority.LOW, background=True),
            SubmitJob(b"newfn", b"m-1", b"z"),
        )
        assert created.count(b"H:") == 4
        assert b"\0thumb\0" in await worker_a.sync(GrabJob())
        yield server
    finally:
        for stream in streams:
            await stream.aclose()


async def test_listings(scene: GearmandProcess) -> None:
    async with AdminClient(scene.address) as admin:
        assert admin.server == scene.address
        assert Counter(await admin.status()) == Counter(
            [
                FunctionStatus(b"resize", 2, 0, 1),
                FunctionStatus(b"thumb", 1, 1, 1),
                FunctionStatus(b"email", 0, 0, 1),
                FunctionStatus(b"newfn", 1, 0, 0),
            ]
        )
        assert Counter(await admin.priority_status()) == Counter(
            [
                FunctionPriorityStatus(b"resize", 0, 1, 1, 1),
                FunctionPriorityStatus(b"thumb", 0, 0, 0, 1),
                FunctionPriorityStatus(b"email", 0, 0, 0, 1),
                FunctionPriorityStatus(b"newfn", 0, 1, 0, 0),
            ]
        )
        workers = await admin.workers()
        assert Counter((w.client_id, w.functions) for w in workers) == Counter(
            [
                (b"resizer 1", (b"thumb", b"resize")),
                (b"-", (b"email",)),
                (b"-", ()),  # the client
                (b"-", ()),  # this admin connection
            ]
        )
        jobs = await admin.show_jobs()
        assert len(jobs) == 4
        assert all(isinstance(job, JobInfo) and job.retries == 0 for job in jobs)
        assert sorted(job.queued for job in jobs) == [False, True, True, True]
        assert sorted(await admin.show_unique_jobs()) == [b"", b"img-1", b"img-2", b"m-1"]


async def test_single_values(server: GearmandProcess) -> None:
    async with AdminClient(("127.0.0.1", server.port)) as admin:
        assert await admin.version() == "1.1.20+ds"
        assert await admin.getpid() == server.process.pid
        assert await admin.verbose() == "INFO"


async def test_cancel_create_drop(scene: GearmandProcess) -> None:
    async with AdminClient(scene.address) as admin:
        handle = next(job.handle for job in await admin.show_jobs() if not job.queued)
        await admin.cancel_job(handle.decode())
        assert [job.ignore for job in await admin.show_jobs() if job.handle == handle] == [True]

        await admin.create_function("made")
        assert FunctionStatus(b"made", 0, 0, 0) in await admin.status()
        await admin.drop_function(b"made")
        assert all(row.function != b"made" for row in await admin.status())


async def test_err_replies_raise_admin_error(scene: GearmandProcess) -> None:
    async with AdminClient(scene.address) as admin:
        with pytest.raises(AdminError) as info:
            await admin.cancel_job("H:nosuch:1")
        assert (info.value.code, info.value.text, info.value.server) == (
            "UNKNOWN_JOB",
            "",
            scene.address,
        )
        assert str(info.value) == f"{scene.address}: ERR UNKNOWN_JOB"

        with pytest.raises(AdminError) as info:
            await admin.drop_function("nosuch")
        assert (info.value.code, info.value.text) == ("", "function not found")

        with pytest.raises(AdminError) as info:
            await admin.drop_function("resize")
        assert info.value.text == "there are still connected workers or executing clients"

        # The connection stays usable after ERR replies.
        assert await admin.version() == "1.1.20+ds"


async def test_maxqueue(scene: GearmandProcess) -> None:
    async with AdminClient(scene.address) as admin:
        await admin.maxqueue("resize", 2)  # two resize jobs exist already
        await admin.maxqueue("nosuch", (1, 2, 3))  # ignored by the server
        async with await anyio.connect_tcp(scene.host, scene.port) as stream:
            reply = await Peer(stream).sync(SubmitJob(b"resize", b"", b"x", background=True))
            assert b"QUEUE_ERROR\0Job queue is full" in reply
            await admin.maxqueue("resize")  # unlimited again
            reply = await Peer(stream).sync(SubmitJob(b"resize", b"", b"x", background=True))
            assert b"QUEUE_ERROR" not in reply
        with pytest.raises(InvalidArgument, match=">= 0"):
            await admin.maxqueue("resize", -1)


async def test_arguments_the_protocol_cannot_carry(server: GearmandProcess) -> None:
    async with AdminClient(server.address) as admin:
        with pytest.raises(InvalidArgument, match="space, newline or NUL"):
            await admin.create_function("two words")
        with pytest.raises(ValueError, match="space, newline or NUL"):
            await admin.cancel_job(b"H:1\nshutdown")
        assert await admin.getpid() == server.process.pid


async def test_concurrent_requests_get_their_own_replies(scene: GearmandProcess) -> None:
    results: dict[int, object] = {}
    async with AdminClient(scene.address) as admin:
        calls: list[Callable[[], Awaitable[object]]] = [
            admin.getpid,
            admin.version,
            admin.status,
            admin.show_unique_jobs,
        ]

        async def call(i: int) -> None:
            results[i] = await calls[i % len(calls)]()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(40):
                    tg.start_soon(call, i)
    for i, result in results.items():
        kind = i % len(calls)
        if kind == 0:
            assert result == scene.process.pid
        elif kind == 1:
            assert result == "1.1.20+ds"
        elif kind == 2:
            assert isinstance(result, list)
            assert {row.function for row in result} == {b"resize", b"thumb", b"email", b"newfn"}
        else:
            assert isinstance(result, list)
            assert sorted(result) == [b"", b"img-1", b"img-2", b"m-1"]
    assert len(results) == 40


async def test_connection_refused_names_the_server() -> None:
    port = free_port()
    with pytest.raises(ConnectFailed, match=f"127.0.0.1:{port}") as info:
        async with AdminClient(f"127.0.0.1:{port}"):
            pass  # pragma: no cover
    assert info.value.server == f"127.0.0.1:{port}"
    assert isinstance(info.value, GearmanError)


async def test_use_outside_async_with() -> None:
    admin = AdminClient("127.0.0.1:1")
    with pytest.raises(RuntimeError, match="async with"):
        await admin.status()


async def test_closed_client(server: GearmandProcess) -> None:
    async with AdminClient(server.address) as admin:
        assert await admin.getpid() == server.process.pid
    with pytest.raises(ConnectionLost, match="closed"):
        await admin.getpid()
    with pytest.raises(RuntimeError, match="connects once"):
        async with admin:
            pass  # pragma: no cover


# --- fake servers ------------------------------------------------------------------------

Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A server on a free loopback port that runs ``handler`` on each connection."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await handler(stream)

    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield f"127.0.0.1:{port}"
        tg.cancel_scope.cancel()


async def _read_line(stream: anyio.abc.SocketStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        buffer += await stream.receive()
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line


async def _until_closed(stream: anyio.abc.SocketStream) -> None:
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


async def test_server_hangs_up_before_answering() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        assert await _read_line(stream, bytearray()) == b"status\r"

    with anyio.fail_after(5):
        async with fake_server(handler) as address, AdminClient(address) as admin:
            with pytest.raises(ConnectionLost, match=f"{address}: .*closed") as info:
                await admin.status()
            assert info.value.server == address
            # The connection is gone for good; later calls say so at once.
            with pytest.raises(ConnectionLost, match="Status"):
                await admin.version()


async def test_unreadable_reply() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _read_line(stream, bytearray())
        await stream.send(b"resize\tmany\t0\t0\n.\n")
        await _until_closed(stream)

    with anyio.fail_after(5):
        async with fake_server(handler) as address, AdminClient(address) as admin:
            with pytest.raises(BadAdminReply, match=f"{address}: status reply line"):
                await admin.status()
            with pytest.raises(ConnectionLost, match="unreadable reply"):
                await admin.status()


async def test_overlong_reply_line() -> None:
    async def handler(stream: anyio.abc.SocketStream) -> None:
        await _read_line(stream, bytearray())
        await stream.send(b"x" * 200)
        await _until_closed(stream)

    with anyio.fail_after(5):
        async with (
            fake_server(handler) as address,
            AdminClient(address, max_line_length=100) as admin,
        ):
            with pytest.raises(GearmanError, match="longer than 100"):
                await admin.version()


async def test_cancelled_request_leaves_the_connection_usable() -> None:
    status_seen = anyio.Event()

    async def handler(stream: anyio.abc.SocketStream) -> None:
        buffer = bytearray()
        assert await _read_line(stream, buffer) == b"status\r"
        status_seen.set()
        # Answer only once the next request has come: its reply follows the late one.
        assert await _read_line(stream, buffer) == b"version\r"
        await stream.send(b"late\t1\t0\t0\n")
        await stream.send(b".\nOK 9.9\n")
        assert await _read_line(stream, buffer) == b"getpid\r"
        await stream.send(b"OK 42\n")

    with anyio.fail_after(5):
        async with fake_server(handler) as address, AdminClient(address) as admin:
            async with anyio.create_task_group() as inner:
                inner.start_soon(admin.status)
                await status_seen.wait()
                inner.cancel_scope.cancel()
            assert await admin.version() == "9.9"
            assert await admin.getpid() == 42
