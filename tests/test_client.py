"""The Client against the real gearmand 1.1.20 (jobs run by our Worker unless noted).

Every async test runs under each AnyIO backend, Trio and asyncio (``test_x[asyncio]``).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import pytest
import trio

from trio_gearman._client.client import Client
from trio_gearman._client.job import JobHandle
from trio_gearman._exceptions import (
    ConnectFailed,
    ConnectionLost,
    InvalidArgument,
    JobError,
    JobException,
    JobFailed,
    NoServersAvailable,
    ServerLost,
    UniqueTooLong,
)
from trio_gearman._failover import Backoff, LinkState
from trio_gearman._payload import JsonCodec
from trio_gearman._proto import Priority, WorkData, WorkStatus, WorkWarning
from trio_gearman._worker.job import Handler, Job
from trio_gearman._worker.worker import Worker
from trio_gearman.testing import open_test_server

from .gearmand_peer import GearmandProcess, free_port, run_gearmand

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

pytestmark = [pytest.mark.gearmand, pytest.mark.anyio]

# --- helpers shared with the worker tests ------------------------------------------------


def running_backend() -> str:
    """The event loop the calling task runs on: ``"trio"`` or ``"asyncio"``."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        asyncio.get_running_loop()  # RuntimeError outside any event loop
        return "asyncio"
    return "trio"


async def admin(address: str, command: str) -> str:
    """Send one admin text command to the server; return its reply (up to ``.``)."""
    host, port = address.rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as sock:
        await sock.send(command.encode() + b"\n")
        reply = b""
        while not (
            reply.endswith(b".\n") or (reply.endswith(b"\n") and reply[:2] in (b"OK", b"ER"))
        ):
            reply += await sock.receive()
    return reply.decode()


async def status_of(address: str, function: str) -> tuple[int, int, int]:
    """``(total, running, workers)`` of one function from the admin ``status``."""
    for line in (await admin(address, "status")).splitlines():
        fields = line.split("\t")
        if fields[0] == function:
            return int(fields[1]), int(fields[2]), int(fields[3])
    return 0, 0, 0


@asynccontextmanager
async def running_worker(
    address: str, functions: dict[str, Handler], **options: Any
) -> AsyncIterator[Worker]:
    """Our Worker serving ``functions`` for the duration of the block."""
    worker = Worker([address], **options)
    for name, handler in functions.items():
        worker.register(name, handler)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        yield worker
        worker.stop(0)


async def reverse(job: Job) -> bytes:
    return job.data[::-1]


async def echo(job: Job) -> bytes:
    return job.data


# --- submitting --------------------------------------------------------------------------


async def test_each_variant_runs_on_the_backend_in_its_id(anyio_backend: str) -> None:
    # trio_mode claims every async test; test_x[asyncio] must not quietly run on Trio
    assert running_backend() == anyio_backend


async def test_submit_returns_the_workers_result(gearmand: GearmandProcess) -> None:
    async with (
        running_worker(gearmand.address, {"reverse": reverse}),
        Client([gearmand.address], client_id="web-1") as client,
    ):
        with anyio.fail_after(10):
            assert await client.submit("reverse", b"hello") == b"olleh"
            assert await client.submit(b"reverse", bytearray(b"abc")) == b"cba"


async def test_str_data_is_sent_as_utf8(gearmand: GearmandProcess) -> None:
    async with running_worker(gearmand.address, {"echo": echo}), Client(gearmand.address) as client:
        with anyio.fail_after(10):
            assert await client.submit("echo", "héllo ☃") == "héllo ☃".encode()


async def test_data_of_another_type_needs_a_codec(gearmand: GearmandProcess) -> None:
    async with Client(gearmand.address) as client:
        with pytest.raises(TypeError, match="codec"):
            await client.submit("echo", {"a": 1})


async def test_json_codec_per_client_and_per_call(gearmand: GearmandProcess) -> None:
    async def add(job: Job) -> bytes:
        numbers = JsonCodec().decode(job.data)
        return JsonCodec().encode({"sum": sum(numbers)})

    async with running_worker(gearmand.address, {"add": add}):
        async with Client([gearmand.address], codec=JsonCodec()) as client:
            with anyio.fail_after(10):
                assert await client.submit("add", [1, 2, 3]) == {"sum": 6}
                assert await client.map("add", [[1], [2, 2]]) == [{"sum": 1}, {"sum": 4}]
        async with Client([gearmand.address]) as raw:
            with anyio.fail_after(10):
                assert await raw.submit("add", [4, 5], codec=JsonCodec()) == {"sum": 9}
                assert await raw.submit("add", b"[4]") == b'{"sum":4}'


async def test_a_thousand_concurrent_submissions_each_get_their_own_result(
    gearmand: GearmandProcess,
) -> None:
    results: dict[int, bytes] = {}
    async with (
        running_worker(gearmand.address, {"reverse": reverse}, concurrency=64),
        Client(gearmand.address) as client,
    ):

        async def one(n: int) -> None:
            results[n] = await client.submit("reverse", b"job-%d" % n)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for n in range(1000):
                    tg.start_soon(one, n)
    assert results == {n: (b"job-%d" % n)[::-1] for n in range(1000)}


async def test_map_returns_results_in_input_order(gearmand: GearmandProcess) -> None:
    async def slow_for_small(job: Job) -> bytes:
        # later items finish first: the order must come from the input, not completion
        await anyio.sleep(0.001 * (20 - int(job.data)))
        return job.data

    async with (
        running_worker(gearmand.address, {"f": slow_for_small}, concurrency=20),
        Client(gearmand.address) as client,
    ):
        items = [b"%d" % n for n in range(20)]
        with anyio.fail_after(10):
            assert await client.map("f", items, concurrency=100) == items
            assert await client.map("f", []) == []


async def test_map_raises_the_first_failure(gearmand: GearmandProcess) -> None:
    async def picky(job: Job) -> bytes:
        if job.data == b"bad":
            raise JobFailed()
        return job.data

    async with (
        running_worker(gearmand.address, {"picky": picky}, concurrency=4),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10), pytest.raises(JobFailed, match="picky"):
            await client.map("picky", [b"a", b"bad", b"c"])


async def test_echo(gearmand: GearmandProcess) -> None:
    async with Client(gearmand.address) as client:
        with anyio.fail_after(5):
            assert await client.echo(b"ping") == b"ping"
            assert await client.echo(b"x" * 100_000) == b"x" * 100_000


# --- priorities, uniques, background, status -----------------------------------------------


async def test_foreground_priorities_order_the_queue(gearmand: GearmandProcess) -> None:
    order: list[bytes] = []

    async def record(job: Job) -> bytes:
        order.append(job.data)
        return b""

    async with Client(gearmand.address) as client, AsyncExitStack() as stack:
        jobs = [
            # entering waits for the handle: the job is queued on the server
            await stack.enter_async_context(client.submit_job("ordered", name, priority=priority))
            for name, priority in [
                (b"low", Priority.LOW),
                (b"normal", Priority.NORMAL),
                (b"high", Priority.HIGH),
            ]
        ]
        async with running_worker(gearmand.address, {"ordered": record}):
            with anyio.fail_after(10):
                for job in jobs:
                    await job.wait()
    assert order == [b"high", b"normal", b"low"]


async def test_background_priorities_and_status(gearmand: GearmandProcess) -> None:
    order: list[bytes] = []
    done = anyio.Event()

    async def record(job: Job) -> None:
        order.append(job.data)
        if len(order) == 3:
            done.set()

    async with Client(gearmand.address) as client:
        handles = [
            await client.submit_background("bg", name, priority=priority)
            for name, priority in [
                (b"low", Priority.LOW),
                (b"high", Priority.HIGH),
                (b"normal", Priority.NORMAL),
            ]
        ]
        assert all(h.server == gearmand.address for h in handles)
        status = await client.get_status(handles[0])
        assert (status.known, status.running) == (True, False)
        async with running_worker(gearmand.address, {"bg": record}):
            with anyio.fail_after(10):
                await done.wait()
        assert order == [b"high", b"normal", b"low"]
        status = await client.get_status(str(handles[0]))
        assert not status.known


async def test_status_reports_progress_of_a_running_background_job(
    gearmand: GearmandProcess,
) -> None:
    reported = anyio.Event()
    release = anyio.Event()

    async def progress(job: Job) -> None:
        await job.send_status(7, 9)
        reported.set()
        await release.wait()

    async with Client(gearmand.address) as client:
        handle = await client.submit_background("progress", b"", unique="p-1")
        async with running_worker(gearmand.address, {"progress": progress}):
            with anyio.fail_after(10):
                await reported.wait()
                # the status travels on the worker's connection: ask until it shows
                while (status := await client.get_status(handle)).numerator != 7:
                    pass
            assert status.known
            assert status.running
            assert (status.numerator, status.denominator, status.progress) == (7, 9, 7 / 9)
            by_unique = await client.get_status_unique("p-1")
            assert by_unique.known
            assert by_unique.running
            assert by_unique.clients == 0
            release.set()


async def test_status_by_unique_counts_waiting_foreground_clients(
    gearmand: GearmandProcess,
) -> None:
    async with Client(gearmand.address) as client:
        async with client.submit_job("nobody", b"x", unique="u-7"):
            status = await client.get_status_unique(b"u-7")
            assert (status.known, status.running, status.clients) == (True, False, 1)
        unknown = await client.get_status_unique("no-such-unique")
        assert not unknown.known


async def test_same_unique_runs_once_for_every_submitter(gearmand: GearmandProcess) -> None:
    calls: list[bytes] = []
    release = anyio.Event()

    async def once(job: Job) -> bytes:
        calls.append(job.data)
        await release.wait()
        return b"shared"

    results: list[bytes] = []
    async with (
        Client(gearmand.address) as first,
        Client(gearmand.address) as second,
        first.submit_job("once", b"a", unique="same") as job_a,
        second.submit_job("once", b"b", unique="same") as job_b,
    ):
        assert job_a.handle.handle == job_b.handle.handle
        async with running_worker(gearmand.address, {"once": once}):
            release.set()
            with anyio.fail_after(10):
                results = [await job_a.wait(), await job_b.wait()]
    assert calls == [b"a"]
    assert results == [b"shared", b"shared"]


async def test_unique_longer_than_64_bytes_is_refused_before_sending(
    gearmand: GearmandProcess,
) -> None:
    async with Client(gearmand.address) as client:
        with pytest.raises(UniqueTooLong, match="65 bytes"):
            await client.submit("f", b"", unique="u" * 65)
        with pytest.raises(UniqueTooLong):
            await client.submit_background("f", b"", unique=b"u" * 65)
        with pytest.raises(InvalidArgument, match="NUL"):
            await client.submit_background("f", b"", unique=b"a\0b")
        handle = await client.submit_background("f", b"", unique="u" * 64)  # the limit is fine
        assert (await client.get_status(handle)).known
    assert await status_of(gearmand.address, "f") == (1, 0, 0)  # only the 64-byte one


async def test_at_submits_an_epoch_job_that_waits_for_its_time(
    gearmand: GearmandProcess,
) -> None:
    ran = anyio.Event()

    async def later(job: Job) -> None:
        ran.set()

    async with Client(gearmand.address) as client:
        future = datetime.now() + timedelta(hours=1)
        handle = await client.submit_background("later", b"", at=future)
        async with running_worker(gearmand.address, {"later": later}):
            status = await client.get_status(handle)
            assert (status.known, status.running) == (True, False)
            past = await client.submit_background("later", b"", at=datetime(2000, 1, 1))
            with anyio.fail_after(10):
                await ran.wait()  # a past time runs at once
            assert not (await client.get_status(past)).known
            assert (await client.get_status(handle)).known
        with pytest.raises(InvalidArgument, match="NORMAL"):
            await client.submit_background("later", b"", at=future, priority=Priority.HIGH)


async def test_long_handles_and_unique_keys_are_refused_before_a_status_query(
    gearmand: GearmandProcess,
) -> None:
    async with Client(gearmand.address) as client:
        with pytest.raises(InvalidArgument):
            await client.get_status(b"H" * 64)  # gearmand would drop the connection
        with pytest.raises(InvalidArgument):
            await client.get_status_unique("u" * 64)
        assert await client.echo(b"still connected") == b"still connected"


# --- following a job --------------------------------------------------------------------


async def test_submit_job_streams_updates_then_the_result(gearmand: GearmandProcess) -> None:
    async def count(job: Job) -> bytes:
        n = int(job.data)
        for i in range(1, n + 1):
            await job.send_status(i, n)
            await job.send_data(b"%d" % i)
        await job.send_warning(b"almost")
        return b"done"

    async with (
        running_worker(gearmand.address, {"count": count}),
        Client(gearmand.address) as client,
    ):
        updates: list[Any] = []
        with anyio.fail_after(10):
            async with client.submit_job("count", b"2") as job:
                assert job.handle.server == gearmand.address
                done_at_start = job.done
                async for update in job:
                    updates.append(update)
        assert not done_at_start
        assert job.done
        assert job.result == b"done"
        handle = job.handle.handle
        assert updates == [
            WorkStatus(handle, 1, 2),
            WorkData(handle, b"1"),
            WorkStatus(handle, 2, 2),
            WorkData(handle, b"2"),
            WorkWarning(handle, b"almost"),
        ]


async def test_submit_job_result_before_the_end_is_an_error(gearmand: GearmandProcess) -> None:
    async with Client(gearmand.address) as client:
        job = client.submit_job("nobody", b"")
        with pytest.raises(RuntimeError, match="enter the job first"):
            _ = job.result
        async with job:
            with pytest.raises(RuntimeError, match="has not finished"):
                _ = job.result


# --- failures ----------------------------------------------------------------------------


async def test_work_fail_raises_job_failed_naming_server_function_and_handle(
    gearmand: GearmandProcess,
) -> None:
    async def refuse(job: Job) -> bytes:
        raise JobFailed()

    async with (
        running_worker(gearmand.address, {"refuse": refuse}),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10), pytest.raises(JobFailed) as info:
            await client.submit("refuse", b"x")
    error = info.value
    assert type(error) is JobFailed
    assert (error.server, error.function) == (gearmand.address, "refuse")
    assert error.handle is not None
    assert error.handle.startswith("H:")
    assert gearmand.address in str(error)
    assert error.handle in str(error)


async def test_work_exception_raises_job_exception_with_the_workers_text(
    gearmand: GearmandProcess,
) -> None:
    async def broken(job: Job) -> bytes:
        raise ValueError("bad input 42")

    async with (
        running_worker(gearmand.address, {"broken": broken}),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10), pytest.raises(JobException) as info:
            await client.submit("broken", b"x")
        assert info.value.data == b"ValueError: bad input 42"
        assert info.value.function == "broken"
        # the failure of one job leaves the connection (and the worker) usable
        assert await client.echo(b"ok") == b"ok"


async def test_without_the_exceptions_option_an_exception_is_a_failure(
    gearmand: GearmandProcess,
) -> None:
    async def broken(job: Job) -> bytes:
        raise ValueError("hidden")

    async with (
        running_worker(gearmand.address, {"broken": broken}),
        Client(gearmand.address, exceptions=False) as client,
    ):
        # gearmand sends "WORK_FAIL handle\0" to such clients; it still matches
        with anyio.fail_after(10), pytest.raises(JobFailed) as info:
            await client.submit("broken", b"x")
        assert type(info.value) is JobFailed


async def test_server_errors_are_matched_to_their_requests_in_order(
    gearmand: GearmandProcess,
) -> None:
    async with Client(gearmand.address) as client:
        await client.submit_background("full", b"first")
        assert (await admin(gearmand.address, "maxqueue full 1")).startswith("OK")
        outcomes: dict[int, object] = {}

        async def one(n: int) -> None:
            function = "full" if n % 2 else "roomy"
            try:
                outcomes[n] = await client.submit_background(function, b"%d" % n)
            except JobError as exc:
                outcomes[n] = exc

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(40):
                    tg.start_soon(one, n)
    for n, outcome in outcomes.items():
        if n % 2:
            assert isinstance(outcome, JobError), n
            assert (outcome.code, outcome.function) == ("QUEUE_ERROR", "full")
            assert outcome.server == gearmand.address
            assert "Job queue is full" in str(outcome)
        else:
            assert not isinstance(outcome, JobError), n
    assert await status_of(gearmand.address, "roomy") == (20, 0, 0)


async def test_lost_connection_fails_a_waiting_job_promptly() -> None:
    started = anyio.Event()

    async def hang(job: Job) -> bytes:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError

    with run_gearmand() as server:

        async def kill_when_running() -> None:
            await started.wait()
            server.process.kill()

        async with Client(server.address) as client, anyio.create_task_group() as tg:
            functions: dict[str, Handler] = {"hang": hang}
            tg.start_soon(_serve, server.address, functions)
            tg.start_soon(kill_when_running)
            with anyio.fail_after(10), pytest.raises(ServerLost) as info:
                await client.submit("hang", b"x")
            tg.cancel_scope.cancel()  # the worker would wait for the server forever
        error = info.value
        assert error.server == server.address
        assert error.function == "hang"
        assert error.handle is not None
        assert error.handle.startswith("H:")


async def _serve(address: str, functions: dict[str, Handler]) -> None:
    worker = Worker([address])
    for name, handler in functions.items():
        worker.register(name, handler)
    await worker.run()


async def test_the_client_reconnects_after_the_server_came_back() -> None:
    port = free_port()
    with ExitStack() as servers:
        server = servers.enter_context(run_gearmand(port=port))
        async with Client(server.address) as client:
            assert await client.echo(b"1") == b"1"
            server.process.kill()
            server.process.wait()
            with anyio.fail_after(5), pytest.raises((ConnectionLost, NoServersAvailable)):
                await client.echo(b"2")
            servers.enter_context(run_gearmand(port=port))
            with anyio.fail_after(5):
                assert await client.echo(b"3") == b"3"


# --- cancellation and lifetime ----------------------------------------------------------


async def test_a_cancelled_submit_detaches_and_the_connection_goes_on(
    gearmand: GearmandProcess,
) -> None:
    async with Client(gearmand.address) as client:
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled before its JOB_CREATED can arrive
            await client.submit("reverse", b"abandoned")
        assert scope.cancelled_caught
        async with running_worker(gearmand.address, {"reverse": reverse}):
            with anyio.fail_after(10):
                # had the abandoned job's FIFO slot not been consumed, this call would
                # take its handle and get b"denodnaba"
                assert await client.submit("reverse", b"fresh") == b"hserf"
                assert await client.echo(b"ok") == b"ok"
        assert await status_of(gearmand.address, "reverse") == (0, 0, 0)


async def test_timeouts_are_cancel_scopes(gearmand: GearmandProcess) -> None:
    async with Client(gearmand.address) as client:
        with anyio.move_on_after(0.1) as scope:
            await client.submit("nobody-serves-this", b"")
        assert scope.cancelled_caught
        assert await client.echo(b"ok") == b"ok"


async def test_closing_the_client_fails_calls_in_other_tasks_and_stops_everything(
    gearmand: GearmandProcess,
) -> None:
    async with anyio.create_task_group() as tg:
        async with Client(gearmand.address) as client:
            failed = anyio.Event()

            async def waiter() -> None:
                with pytest.raises(ConnectionLost, match="closed"):
                    await client.submit("nobody", b"")
                failed.set()

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5):
            await failed.wait()
    with pytest.raises(RuntimeError, match="closed"):
        await client.submit("nobody", b"")


async def test_client_id_is_shown_by_the_server(gearmand: GearmandProcess) -> None:
    async with Client(gearmand.address, client_id="web-1") as client:
        await client.echo(b"")  # SET_CLIENT_ID went out before this
        assert " web-1 :" in await admin(gearmand.address, "workers")


# --- servers -----------------------------------------------------------------------------


async def test_the_first_reachable_server_is_used(gearmand: GearmandProcess) -> None:
    dead = f"127.0.0.1:{free_port()}"
    async with Client([dead, gearmand.address]) as client:
        assert client.server == gearmand.address
        assert await client.echo(b"x") == b"x"
    async with Client(f"{dead},{gearmand.address}") as client:
        assert client.server == gearmand.address


async def test_no_reachable_server_keeps_every_error() -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    async with Client(dead, wait_for_server=0.2) as client:  # enters: the links keep trying
        with pytest.raises(NoServersAvailable) as info:
            await client.submit("reverse", b"x")
    assert info.value.servers == tuple(dead)
    group = info.value.__cause__
    assert isinstance(group, ExceptionGroup)
    assert [type(e) for e in group.exceptions] == [ConnectFailed, ConnectFailed]
    assert [e.server for e in group.exceptions] == dead


def test_no_servers_available_names_each_server_with_its_reason() -> None:
    error = NoServersAvailable(
        ("a:1", "b:2", "c:3"),
        [
            ConnectFailed("cannot connect: Connection refused", server="a:1"),
            ConnectionResetError("b:2: connection closed by the server"),
            TimeoutError(),
        ],
    )
    assert str(error) == (
        "no job server available: a:1 (cannot connect: Connection refused), "
        "b:2 (connection closed by the server), c:3 (TimeoutError)"
    )
    assert error.servers == ("a:1", "b:2", "c:3")
    assert str(NoServersAvailable(("a:1",))) == "no Gearman server could be reached (tried a:1)"


@pytest.mark.parametrize("call", ["submit", "submit_background", "echo", "get_status"])
async def test_with_no_server_up_each_call_waits_then_names_every_reason(call: str) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    async with Client(dead, wait_for_server=0.3) as client:
        assert client.server is None
        assert all(h.state is not LinkState.UP for h in client.servers())
        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "submit": lambda: client.submit("reverse", b"x"),
            "submit_background": lambda: client.submit_background("reverse", b"x"),
            "echo": lambda: client.echo(b"x"),
            "get_status": lambda: client.get_status(b"H:1"),
        }
        start = anyio.current_time()
        with anyio.fail_after(10), pytest.raises(NoServersAvailable) as info:
            await calls[call]()
        assert anyio.current_time() - start >= 0.3
    message = str(info.value)
    assert message == (
        f"no job server available: {dead[0]} (cannot connect: Connection refused), "
        f"{dead[1]} (cannot connect: Connection refused)"
    )
    group = info.value.__cause__
    assert isinstance(group, ExceptionGroup)
    assert [type(e) for e in group.exceptions] == [ConnectFailed, ConnectFailed]
    assert [e.server for e in group.exceptions] == dead


async def test_a_server_that_starts_after_the_client_entered_takes_the_waiting_call() -> None:
    async with open_test_server() as server:
        await server.pause_accepting()  # its port is reserved, and refuses connections
        backoff = Backoff(initial=0.05, maximum=0.05, jitter=0.0)
        async with Client(server.address, wait_for_server=30, backoff=backoff) as client:
            assert [client.server] == [None]  # (a list: no narrowing, it changes below)
            handles: list[JobHandle] = []
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:

                    async def submit() -> None:
                        handles.append(await client.submit_background("resize", b"img-1"))

                    tg.start_soon(submit)
                    await anyio.wait_all_tasks_blocked()
                    assert not handles  # it waits for a server
                    await server.resume_accepting()
            assert client.server == server.address
            assert [h.server for h in handles] == [server.address]
            assert await client.echo(b"up") == b"up"
        assert server.queued("resize") == 1


# --- interoperability with the gearman tool's worker -------------------------------------


@asynccontextmanager
async def cli_worker(gearman_cli: str, address: str, *args: str) -> AsyncIterator[None]:
    host, port = address.rsplit(":", 1)
    # No need to wait for it to register: jobs submitted before that wait in the queue.
    async with await anyio.open_process([gearman_cli, "-h", host, "-p", port, "-w", *args]) as proc:
        try:
            yield
        finally:
            proc.kill()


async def test_results_from_the_gearman_tools_worker(
    gearmand: GearmandProcess, gearman_cli: str
) -> None:
    async with (
        cli_worker(gearman_cli, gearmand.address, "-f", "rev", "--", "rev"),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10):
            assert await client.submit("rev", b"hello\n") == b"olleh\n"


async def test_the_gearman_tools_line_mode_streams_work_data(
    gearmand: GearmandProcess, gearman_cli: str
) -> None:
    # `gearman -w -n` sends WORK_DATA per output line (its buffer is not cleared
    # between lines, so each chunk repeats the previous ones) and an empty result.
    async with (
        cli_worker(gearman_cli, gearmand.address, "-n", "-f", "lines", "--", "printf", "a\\nb\\n"),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10):
            async with client.submit_job("lines", b"") as job:
                chunks = [update.data async for update in job if isinstance(update, WorkData)]
        assert chunks == [b"a\n", b"a\nb\n"]
        assert job.result == b""


async def test_a_failing_program_under_the_gearman_tool_fails_the_job(
    gearmand: GearmandProcess, gearman_cli: str
) -> None:
    async with (
        cli_worker(
            gearman_cli, gearmand.address, "-f", "fail", "--", "sh", "-c", "echo oops; exit 3"
        ),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10):
            async with client.submit_job("fail", b"") as job:
                # its output comes as WORK_DATA, then WORK_FAIL
                assert await job.__anext__() == WorkData(job.handle.handle, b"oops\n")
                with pytest.raises(JobFailed):
                    await job.__anext__()
