"""Client request/reply matching against a scripted in-memory server.

These cover orderings a real server cannot be made to produce on cue: replies
racing a cancellation, ERRORs in the middle of a FIFO, a WORK_FAIL with a
trailing NUL, a connection that ends with requests in every state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_gearman._address import server_list
from trio_gearman._client.client import Client
from trio_gearman._client.job import JobStatus
from trio_gearman._exceptions import (
    ConnectionLost,
    InvalidArgument,
    JobError,
    JobException,
    JobFailed,
    UniqueTooLong,
)
from trio_gearman._payload import JsonCodec, function_name, payload, unique_key
from trio_gearman._proto import (
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    JobCreated,
    Noop,
    OptionReq,
    OptionRes,
    SetClientId,
    StatusRes,
    SubmitJob,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
)

from .test_stream import FakeServer, FakeServers, fake_servers


@asynccontextmanager
async def client_and_server(
    **options: object,
) -> AsyncIterator[tuple[Client[bytes], FakeServer, FakeServers]]:
    async with fake_servers() as servers:
        client = Client("memory:1", **options)  # type: ignore[call-overload]
        client._connector = servers
        async with client:
            server = servers.servers[0]
            # the connection opens with the options the client asked for
            hello = await server.receive_until(OptionReq)
            assert hello[-1] == OptionReq(b"exceptions")
            yield client, server, servers


async def test_the_connection_opens_with_client_id_then_the_exceptions_option() -> None:
    async with fake_servers() as servers:
        client = Client("memory:1", client_id="web-1")
        client._connector = servers
        async with client:
            got = await servers.servers[0].receive(2)
    assert got == [SetClientId(b"web-1"), OptionReq(b"exceptions")]


async def test_submit_is_matched_by_handle_and_returns_work_complete() -> None:
    async with client_and_server() as (client, server, _), trio.open_nursery() as nursery:
        result: list[bytes] = []

        async def submit() -> None:
            result.append(await client.submit("reverse", b"abc"))

        nursery.start_soon(submit)
        assert await server.receive() == [SubmitJob(b"reverse", b"", b"abc")]
        await server.send(OptionRes(b"exceptions"), JobCreated(b"H:1"))
        await server.send(WorkData(b"H:1", b"ignored by submit()"), WorkComplete(b"H:1", b"cba"))
    assert result == [b"cba"]


async def test_an_error_fails_the_oldest_request_and_the_next_reply_the_next() -> None:
    async with client_and_server() as (client, server, _):
        outcomes: dict[str, object] = {}

        async def submit(function: str) -> None:
            try:
                outcomes[function] = await client.submit_background(function, b"")
            except JobError as exc:
                outcomes[function] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(submit, "second")
            await server.receive(2)
            await server.send(OptionRes(b"exceptions"))
            await server.send(Error(b"QUEUE_ERROR", b"Job queue is full"), JobCreated(b"H:2"))
    error = outcomes["first"]
    assert isinstance(error, JobError)
    assert (error.code, error.text, error.function, error.server) == (
        "QUEUE_ERROR",
        "Job queue is full",
        "first",
        "memory:1",
    )
    handle = outcomes["second"]
    assert not isinstance(handle, JobError)
    assert handle.handle == b"H:2"  # type: ignore[attr-defined]


async def test_a_submit_cancelled_before_its_job_created_still_consumes_its_slot() -> None:
    async with client_and_server() as (client, server, _):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.submit, "f", b"abandoned")
                assert await server.receive() == [SubmitJob(b"f", b"", b"abandoned")]
                scope.cancel()
        result: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def submit() -> None:
                result.append(await client.submit("f", b"fresh"))

            nursery.start_soon(submit)
            assert await server.receive() == [SubmitJob(b"f", b"", b"fresh")]
            await server.send(OptionRes(b"exceptions"), JobCreated(b"H:1"), JobCreated(b"H:2"))
            # the abandoned job's packets arrive and are dropped
            await server.send(WorkData(b"H:1", b"late"), WorkComplete(b"H:1", b"wrong"))
            await server.send(WorkComplete(b"H:2", b"right"))
        assert result == [b"right"]


async def test_packets_for_a_job_abandoned_after_job_created_are_dropped() -> None:
    async with client_and_server() as (client, server, _):
        jobs = []
        async with trio.open_nursery() as nursery:

            async def follow_briefly() -> None:
                async with client.submit_job("f", b"x") as job:
                    jobs.append(job)  # entered: the handle is known; then leave

            nursery.start_soon(follow_briefly)
            assert await server.receive() == [SubmitJob(b"f", b"", b"x")]
            await server.send(OptionRes(b"exceptions"), JobCreated(b"H:1"))
        with pytest.raises(RuntimeError, match="has not finished"):
            _ = jobs[0].result
        await server.send(WorkData(b"H:1", b"late"), WorkComplete(b"H:1", b"done"))
        async with trio.open_nursery() as nursery:

            async def echo() -> None:
                assert await client.echo(b"still fine") == b"still fine"

            nursery.start_soon(echo)
            assert await server.receive() == [EchoReq(b"still fine")]
            await server.send(EchoRes(b"still fine"))
        assert not jobs[0].done  # the late WORK_COMPLETE went nowhere


async def test_work_fail_with_a_trailing_nul_is_matched() -> None:
    async with fake_servers() as servers:
        client = Client("memory:1", exceptions=False)
        client._connector = servers
        async with client, trio.open_nursery() as nursery:
            server = servers.servers[0]

            async def submit() -> None:
                with pytest.raises(JobFailed, match="H:9"):
                    await client.submit("f", b"")

            nursery.start_soon(submit)
            assert await server.receive() == [SubmitJob(b"f", b"", b"")]  # no OPTION_REQ
            await server.send(JobCreated(b"H:9"), WorkFail(b"H:9\0"))


async def test_work_exception_carries_the_text() -> None:
    async with client_and_server() as (client, server, _), trio.open_nursery() as nursery:

        async def submit() -> None:
            with pytest.raises(JobException) as info:
                await client.submit("f", b"")
            assert info.value.data == b"Traceback: boom"
            assert info.value.handle == "H:3"

        nursery.start_soon(submit)
        await server.receive()
        await server.send(OptionRes(b"exceptions"), JobCreated(b"H:3"))
        await server.send(WorkException(b"H:3", b"Traceback: boom"))


async def test_two_submissions_coalesced_on_one_handle_both_get_the_result() -> None:
    async with client_and_server() as (client, server, _):
        results: list[bytes] = []

        async def submit() -> None:
            results.append(await client.submit("f", b"", unique="same"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit)
            nursery.start_soon(submit)
            await server.receive(2)
            await server.send(OptionRes(b"exceptions"), JobCreated(b"H:1"), JobCreated(b"H:1"))
            await server.send(WorkComplete(b"H:1", b"r"))
        assert results == [b"r", b"r"]


async def test_a_lost_connection_fails_every_request_at_once_and_the_next_call_reconnects() -> None:
    async with client_and_server() as (client, server, servers):
        errors: dict[str, ConnectionLost] = {}

        async def call(name: str, coro: object) -> None:
            try:
                await coro  # type: ignore[misc]
            except ConnectionLost as exc:
                errors[name] = exc

        async with trio.open_nursery() as nursery:
            for name, coro in [
                ("running", client.submit("running", b"")),
                ("queued", client.submit("queued", b"")),
                ("status", client.get_status(b"H:7")),
            ]:
                nursery.start_soon(call, name, coro)
                await trio.testing.wait_all_tasks_blocked()  # sent in this order
            await server.receive(3)
            await server.send(OptionRes(b"exceptions"), JobCreated(b"H:1"))
            await trio.testing.wait_all_tasks_blocked()
            await server.close()
        assert errors["running"].handle == "H:1"
        assert errors["running"].function == "running"
        assert errors["queued"].handle is None
        assert errors["queued"].function == "queued"
        assert "memory:1" in str(errors["status"])
        # the link reconnects by itself after its back-off; the next call waits for it
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.echo, b"again")
            with trio.fail_after(5):
                while len(servers.servers) < 2:
                    await client.wait_servers_changed()
            second = servers.servers[1]
            got = await second.receive_until(EchoReq)
            assert got[-1] == EchoReq(b"again")
            await second.send(OptionRes(b"exceptions"), EchoRes(b"again"))


async def test_status_replies_are_matched_in_order() -> None:
    async with client_and_server() as (client, server, _):
        statuses = {}

        async def status(handle: bytes) -> None:
            statuses[handle] = await client.get_status(handle)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(status, b"H:1")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(status, b"H:2")
            assert await server.receive(2) == [GetStatus(b"H:1"), GetStatus(b"H:2")]
            await server.send(
                OptionRes(b"exceptions"),
                StatusRes(b"H:1", True, True, 1, 2),
                StatusRes(b"H:2", False, False, 0, 0),
            )
    assert statuses[b"H:1"].progress == 0.5
    assert not statuses[b"H:2"].known


async def test_stray_packets_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    async with client_and_server() as (client, server, _):
        await server.send(OptionRes(b"exceptions"), Noop(), Error(b"X", b"no request"))
        await server.send(WorkComplete(b"H:unknown", b""))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.echo, b"x")
            await server.receive()
            await server.send(EchoRes(b"x"))
    assert "unexpected Noop()" in caplog.text
    assert "ERROR X (no request) with no request waiting" in caplog.text


# --- arguments ---------------------------------------------------------------------------


def test_server_lists() -> None:
    assert server_list("a:1, b") == ["a:1", "b:4730"]
    assert server_list(("::1", 7003)) == ["[::1]:7003"]
    assert server_list(["h", ("h2", 5)]) == ["h:4730", "h2:5"]
    with pytest.raises(ValueError, match="no Gearman server"):
        server_list(" , ")


def test_payloads_function_names_and_unique_keys() -> None:
    assert payload(b"x") == b"x"
    assert payload("é") == "é".encode()
    assert payload(memoryview(b"mv")) == b"mv"
    with pytest.raises(TypeError, match="codec"):
        payload(3)
    assert function_name("f") == b"f"
    for bad in ("", "a\0b"):
        with pytest.raises(InvalidArgument):
            function_name(bad)
    assert unique_key(None) == b""
    assert unique_key("k" * 64) == b"k" * 64
    with pytest.raises(UniqueTooLong):
        unique_key("k" * 65)
    assert JsonCodec().decode(JsonCodec().encode({"é": [1]})) == {"é": [1]}


def test_job_status_progress() -> None:
    assert JobStatus(True, True, 1, 4).progress == 0.25
    assert JobStatus(True, False, 0, 0).progress is None


async def test_a_refused_follower_has_no_handle() -> None:
    async with client_and_server() as (client, server, _):
        job = client.submit_job("f", b"")
        async with trio.open_nursery() as nursery:

            async def enter() -> None:
                with pytest.raises(JobError):
                    await job.__aenter__()

            nursery.start_soon(enter)
            await server.receive()
            await server.send(OptionRes(b"exceptions"), Error(b"QUEUE_ERROR", b"full"))
        with pytest.raises(RuntimeError, match="no handle"):
            _ = job.handle
