"""The Worker against the real gearmand 1.1.20, with our client and the gearman tool.

Every async test runs under each AnyIO backend, Trio and asyncio (``test_x[asyncio]``).
"""

from __future__ import annotations

import logging
import threading

import anyio
import anyio.abc
import pytest

from trio_gearman._client.client import Client
from trio_gearman._exceptions import JobException, JobFailed
from trio_gearman._failover import Backoff, LinkState
from trio_gearman._worker.job import Job
from trio_gearman._worker.worker import Worker

from .gearmand_peer import GearmandProcess, free_port, run_gearmand
from .test_client import admin, running_backend, running_worker, status_of

pytestmark = [pytest.mark.gearmand, pytest.mark.anyio]


async def reverse(job: Job) -> bytes:
    return job.data[::-1]


async def wait_for_status(address: str, function: str, expected: tuple[int, int, int]) -> None:
    """Ask the server until the function's (total, running, workers) is ``expected``.

    The worker's packets travel on its own connection, so the admin connection may
    see them a moment later; each question is a round trip, not a sleep.
    """
    with anyio.fail_after(10):
        while await status_of(address, function) != expected:
            pass


async def test_each_variant_runs_on_the_backend_in_its_id(anyio_backend: str) -> None:
    # trio_mode claims every async test; test_x[asyncio] must not quietly run on Trio
    assert running_backend() == anyio_backend


# --- with the gearman tool ---------------------------------------------------------------


async def test_serves_a_job_submitted_by_the_gearman_tool(
    gearmand: GearmandProcess, gearman_cli: str
) -> None:
    async with running_worker(gearmand.address, {"reverse": reverse}):
        with anyio.fail_after(15):
            result = await anyio.run_process(
                [
                    gearman_cli,
                    "-h",
                    gearmand.host,
                    "-p",
                    str(gearmand.port),
                    "-f",
                    "reverse",
                    "hello",
                ]
            )
    assert result.stdout == b"olleh"


async def test_the_gearman_tool_sees_status_data_and_a_failure(
    gearmand: GearmandProcess, gearman_cli: str
) -> None:
    async def chatty(job: Job) -> bytes:
        await job.send_status(1, 4)
        await job.send_data(b"partial ")
        raise RuntimeError("disk full")

    # libgearman 1.1.20 clients without the exceptions option never match the
    # "WORK_FAIL handle\0" that gearmand 1.1.20 makes of a WORK_EXCEPTION; with
    # send_exceptions=False they get a WORK_WARNING with the text and a WORK_FAIL.
    async with running_worker(gearmand.address, {"chatty": chatty}, send_exceptions=False):
        with anyio.fail_after(15):
            result = await anyio.run_process(
                [gearman_cli, "-h", gearmand.host, "-p", str(gearmand.port), "-f", "chatty", "x"],
                check=False,
            )
    assert result.returncode == 1
    # (the tool prints status with stdio and data with write(): their order varies)
    assert b"25% Complete\n" in result.stdout
    assert result.stdout.replace(b"25% Complete\n", b"") == b"partial "
    assert result.stderr == b"RuntimeError: disk fullJob failed\n"


# --- registration ------------------------------------------------------------------------


async def test_functions_registered_and_unregistered_while_running(
    gearmand: GearmandProcess,
) -> None:
    async with running_worker(gearmand.address, {}, client_id="resizer-1") as worker:
        worker.register("late", reverse)
        await wait_for_status(gearmand.address, "late", (0, 0, 1))
        assert "resizer-1 : late" in await admin(gearmand.address, "workers")
        async with Client(gearmand.address) as client:
            with anyio.fail_after(10):
                assert await client.submit("late", b"abc") == b"cba"
            worker.unregister("late")
            await wait_for_status(gearmand.address, "late", (0, 0, 0))
            handle = await client.submit_background("late", b"")
            status = await client.get_status(handle)
            assert (status.known, status.running) == (True, False)


async def test_the_timeout_is_sent_in_milliseconds_and_enforced_locally(
    gearmand: GearmandProcess,
) -> None:
    async def hang(job: Job) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError

    async with running_worker(gearmand.address, {}) as worker, Client(gearmand.address) as client:
        worker.register("hang", hang, timeout=0.2)
        worker.register("quick", reverse, timeout=0.2)
        with anyio.fail_after(10), pytest.raises(JobException, match=r"timed out after 0\.2 s"):
            await client.submit("hang", b"")
        # the job failed at 0.2 s, before gearmand's limit (0.2 s + the 1 s grace)
        # could re-queue it; the worker goes on
        assert await client.submit("quick", b"ok") == b"ko"
        assert await status_of(gearmand.address, "hang") == (0, 0, 1)


async def test_a_plain_function_runs_in_a_thread(gearmand: GearmandProcess) -> None:
    main_thread = threading.get_ident()

    def where(job: Job) -> str:
        return "thread" if threading.get_ident() != main_thread else "loop"

    async with running_worker(gearmand.address, {}) as worker, Client(gearmand.address) as client:
        worker.register("where", where, timeout=30)
        with anyio.fail_after(10):
            assert await client.submit("where", b"") == b"thread"


async def test_a_plain_function_over_its_timeout_fails_at_once(gearmand: GearmandProcess) -> None:
    unblock = threading.Event()

    def stuck(job: Job) -> bytes:
        unblock.wait(30)
        return b"too late"

    try:
        async with (
            running_worker(gearmand.address, {}) as worker,
            Client(gearmand.address) as client,
        ):
            worker.register("stuck", stuck, timeout=0.2)
            with anyio.fail_after(10), pytest.raises(JobException, match="timed out"):
                await client.submit("stuck", b"")
    finally:
        unblock.set()  # let the abandoned thread end


# --- concurrency -------------------------------------------------------------------------


async def test_concurrency_is_a_hard_limit(gearmand: GearmandProcess) -> None:
    release = anyio.Event()
    three_running = anyio.Event()
    running = 0
    peak = 0

    async def hold(job: Job) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        await release.wait()
        running -= 1
        return job.data

    async with (
        running_worker(gearmand.address, {"hold": hold}, concurrency=3),
        Client(gearmand.address) as client,
        anyio.create_task_group() as tg,
    ):
        results: list[bytes] = []

        async def submit(n: int) -> None:
            results.append(await client.submit("hold", b"%d" % n))

        for n in range(7):
            tg.start_soon(submit, n)
        # three run at once (several GRABs were in flight); four wait on the server
        await wait_for_status(gearmand.address, "hold", (7, 3, 1))
        # gearmand counts a job as running once it has sent JOB_ASSIGN; the worker
        # may not have read it yet
        with anyio.fail_after(10):
            await three_running.wait()
        assert running == 3
        release.set()
    assert sorted(results) == [b"%d" % n for n in range(7)]
    assert peak == 3


async def test_a_per_function_limit_within_the_worker_limit(gearmand: GearmandProcess) -> None:
    release = anyio.Event()
    running = {"limited": 0, "free": 0}
    peak = {"limited": 0, "free": 0}

    async def hold(job: Job) -> bytes:
        running[job.function] += 1
        peak[job.function] = max(peak[job.function], running[job.function])
        await release.wait()
        running[job.function] -= 1
        return b""

    async with running_worker(gearmand.address, {"free": hold}, concurrency=4) as worker:
        worker.register("limited", hold, concurrency=1)
        async with Client(gearmand.address) as client, anyio.create_task_group() as tg:
            for function in ["limited"] * 3 + ["free"] * 3:
                tg.start_soon(client.submit, function, b"")
            await wait_for_status(gearmand.address, "limited", (3, 1, 1))
            await wait_for_status(gearmand.address, "free", (3, 3, 1))
            release.set()
    assert peak == {"limited": 1, "free": 3}


# --- failures ----------------------------------------------------------------------------


async def test_an_exception_is_logged_and_the_worker_goes_on(
    gearmand: GearmandProcess, caplog: pytest.LogCaptureFixture
) -> None:
    async def moody(job: Job) -> bytes:
        if job.data == b"bad":
            raise KeyError("missing")
        if job.data == b"refuse":
            raise JobFailed()
        return b"fine"

    async with (
        running_worker(gearmand.address, {"moody": moody}),
        Client(gearmand.address) as client,
    ):
        with anyio.fail_after(10):
            with pytest.raises(JobException) as info:
                await client.submit("moody", b"bad")
            assert info.value.data == b"KeyError: 'missing'"
            with pytest.raises(JobFailed) as failed:
                await client.submit("moody", b"refuse")
            assert type(failed.value) is JobFailed
            assert await client.submit("moody", b"ok") == b"fine"
    assert "KeyError: 'missing'" in caplog.text
    assert "Traceback" in caplog.text


async def test_a_lost_server_is_reconnected_and_its_running_job_finishes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "trio_gearman")
    started = anyio.Event()
    release = anyio.Event()

    async def hang(job: Job) -> bytes:
        started.set()
        await release.wait()
        return b"late"

    port = free_port()
    worker = Worker(f"127.0.0.1:{port}", backoff=Backoff(initial=0.05, maximum=0.2))
    worker.register("hang", hang)
    worker.register("reverse", reverse)
    async with anyio.create_task_group() as tg:
        with run_gearmand(port=port) as server:
            await tg.start(worker.run)
            async with Client(server.address) as client:
                await client.submit_background("hang", b"")
            with anyio.fail_after(10):
                await started.wait()
        # gearmand was killed with the job running: the worker goes on; the job ends
        # and its result is dropped
        with anyio.fail_after(10):
            while worker.servers()[0].state is LinkState.UP:
                await worker.wait_servers_changed()
        release.set()
        await anyio.wait_all_tasks_blocked()
        assert worker.running_jobs == 0
        assert "dropping the WorkComplete of <Job H:" in caplog.text
        # gearmand comes back on the same port: the worker registers there again
        with run_gearmand(port=port) as server:
            async with Client(server.address) as client:
                with anyio.fail_after(10):
                    assert await client.submit("reverse", b"abc") == b"cba"
        worker.stop(0)


async def test_a_worker_started_before_its_server_registers_when_it_comes_up() -> None:
    port = free_port()
    worker = Worker(f"127.0.0.1:{port}", backoff=Backoff(initial=0.05, maximum=0.2))
    worker.register("reverse", reverse)
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(10):
            await tg.start(worker.run)  # nothing listens on the port yet
        (health,) = worker.servers()
        assert not health.up
        with run_gearmand(port=port) as server:
            async with Client(server.address) as client:
                with anyio.fail_after(10):
                    assert await client.submit("reverse", b"abc") == b"cba"
            worker.stop(0)


# --- stopping ------------------------------------------------------------------------------


async def test_stop_finishes_running_jobs_and_grabs_no_more(gearmand: GearmandProcess) -> None:
    started = anyio.Event()
    release = anyio.Event()

    async def hold(job: Job) -> bytes:
        started.set()
        await release.wait()
        return b"finished"

    worker = Worker(gearmand.address, concurrency=2)
    worker.register("hold", hold)
    async with Client(gearmand.address) as client, anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with client.submit_job("hold", b"") as job:
            with anyio.fail_after(10):
                await started.wait()
            worker.stop()
            later = await client.submit_background("hold", b"not grabbed")
            release.set()
            with anyio.fail_after(10):
                assert await job.wait() == b"finished"
    # run() has returned; the job submitted after stop() is still queued
    async with Client(gearmand.address) as client:
        status = await client.get_status(later)
    assert (status.known, status.running) == (True, False)


async def test_stop_deadline_fails_the_jobs_still_running(gearmand: GearmandProcess) -> None:
    started = anyio.Event()

    async def hang(job: Job) -> bytes:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError

    worker = Worker(gearmand.address)
    worker.register("hang", hang)
    async with Client(gearmand.address) as client, anyio.create_task_group() as tg:
        await tg.start(worker.run)

        async def stop_when_running() -> None:
            await started.wait()
            worker.stop(0.1)

        tg.start_soon(stop_when_running)
        with anyio.fail_after(10), pytest.raises(JobFailed) as info:
            await client.submit("hang", b"")
        assert type(info.value) is JobFailed  # WORK_FAIL: no error text


async def test_cancelling_run_fails_the_running_job_at_once(gearmand: GearmandProcess) -> None:
    started = anyio.Event()

    async def hold(job: Job) -> bytes:
        started.set()
        await anyio.sleep_forever()
        raise AssertionError

    worker = Worker(gearmand.address)
    worker.register("hold", hold)
    async with Client(gearmand.address) as client, anyio.create_task_group() as tg:
        run_scope = anyio.CancelScope()

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            with run_scope:
                await worker.run(task_status=task_status)
            returned.set()

        returned = anyio.Event()
        await tg.start(run)
        async with client.submit_job("hold", b"") as job:
            with anyio.fail_after(10):
                await started.wait()
            run_scope.cancel()
            # the server hears of it at once: the client's job fails (WORK_FAIL)
            with anyio.fail_after(2), pytest.raises(JobFailed):
                await job.wait()
            with anyio.fail_after(2):
                await returned.wait()
