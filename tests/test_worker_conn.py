"""The worker's grab cycle, slots and shutdown against a scripted in-memory server.

Time-outs here run on Trio's MockClock (autojump), so waiting ten "seconds" for a
re-grab costs nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from trio_gearman._exceptions import ConnectFailed, JobException, JobFailed
from trio_gearman._net.stream import PacketStream
from trio_gearman._proto import (
    CanDo,
    CanDoTimeout,
    CantDo,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    NoJob,
    Noop,
    PreSleep,
    SetClientId,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)
from trio_gearman._worker.job import Job
from trio_gearman._worker.worker import Worker

from .test_stream import FakeServer, FakeServers, fake_servers


@asynccontextmanager
async def serving(worker: Worker) -> AsyncIterator[FakeServers]:
    """Run ``worker`` against in-memory servers; stop it (at once) at the end."""
    async with fake_servers() as servers, trio.open_nursery() as nursery:
        worker._connector = servers
        await nursery.start(worker.run)
        yield servers
        worker.stop(0)


def make_worker(**options: object) -> Worker:
    return Worker("memory:1", **options)  # type: ignore[arg-type]


async def grabs(server: FakeServer, count: int) -> None:
    assert await server.receive(count) == [GrabJobUniq()] * count


# --- registration and the grab cycle ---------------------------------------------------


async def test_connecting_registers_then_grabs_as_many_as_slots_allow() -> None:
    worker = make_worker(client_id="resizer-1", concurrency=3)

    @worker.function("reverse")
    async def reverse(job: Job) -> bytes:
        return job.data[::-1]

    worker.register("slow", lambda job: b"", timeout=0.5)
    async with serving(worker) as servers:
        server = servers.servers[0]
        assert await server.receive(3) == [
            SetClientId(b"resizer-1"),
            CanDo(b"reverse"),
            CanDoTimeout(b"slow", 1500),  # 0.5 s plus the 1 s grace, in ms
        ]
        await grabs(server, 3)
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []


async def test_grabs_in_flight_are_capped_by_max_grabs() -> None:
    worker = make_worker(concurrency=100, max_grabs=4)
    worker.register("f", lambda job: b"")
    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(CanDo)
        await grabs(server, 4)
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []


async def test_no_job_leads_to_pre_sleep_and_noop_to_grabbing_again() -> None:
    worker = make_worker(concurrency=2)
    worker.register("f", lambda job: b"")
    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(CanDo)
        await grabs(server, 2)
        await server.send(NoJob())
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []  # one GRAB is still unanswered: no PRE_SLEEP yet
        await server.send(NoJob())
        assert await server.receive() == [PreSleep()]
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []  # asleep
        await server.send(Noop())
        await grabs(server, 2)


async def test_a_sleeping_worker_grabs_again_after_regrab_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = make_worker(regrab_interval=7.0)
    worker.register("f", lambda job: b"")
    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(NoJob())
        assert await server.receive() == [PreSleep()]
        asleep_at = trio.current_time()
        await grabs(server, 1)  # no NOOP ever came
        assert trio.current_time() - asleep_at == pytest.approx(7.0)


async def test_a_job_runs_and_its_result_is_followed_by_the_next_grab() -> None:
    worker = make_worker()

    @worker.function("reverse")
    async def reverse(job: Job) -> bytes:
        assert (job.handle, job.function, job.unique) == (b"H:1", "reverse", b"u-1")
        await job.send_status(1, 2)
        await job.send_data("partial")
        await job.send_warning(b"careful")
        return job.data[::-1]

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"reverse", b"u-1", b"abc"))
        assert await server.receive(5) == [
            WorkStatus(b"H:1", 1, 2),
            WorkData(b"H:1", b"partial"),
            WorkWarning(b"H:1", b"careful"),
            WorkComplete(b"H:1", b"cba"),
            GrabJobUniq(),
        ]


async def test_other_assignment_packets_are_served_too() -> None:
    seen: list[tuple[bytes, bytes | None]] = []
    worker = make_worker(concurrency=2)

    @worker.function("f")
    async def f(job: Job) -> None:
        seen.append((job.unique, job.reducer))

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(CanDo)
        await grabs(server, 2)
        await server.send(JobAssign(b"H:1", b"f", b""), JobAssignAll(b"H:2", b"f", b"u", b"r", b""))
        got = await server.receive(4)
    assert sorted(seen) == [(b"", None), (b"u", b"r")]
    assert WorkComplete(b"H:1", b"") in got
    assert WorkComplete(b"H:2", b"") in got


async def test_a_job_of_an_unknown_function_is_failed() -> None:
    worker = make_worker()
    worker.register("f", lambda job: b"")
    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"other", b"", b""))
        assert await server.receive(2) == [WorkFail(b"H:1"), GrabJobUniq()]


async def test_a_job_grabbed_before_its_function_was_unregistered_still_runs() -> None:
    worker = make_worker()

    @worker.function("f")
    async def f(job: Job) -> bytes:
        return b"ran"

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        worker.unregister("f")
        assert await server.receive() == [CantDo(b"f")]
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))  # answers the earlier GRAB
        assert await server.receive() == [WorkComplete(b"H:1", b"ran")]
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []  # no function left: no GRAB


# --- concurrency -----------------------------------------------------------------------


async def test_concurrency_is_a_hard_limit_on_grabs_and_jobs() -> None:
    release = trio.Event()
    running = 0
    peak = 0
    worker = make_worker(concurrency=2)

    @worker.function("f")
    async def f(job: Job) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1
        return job.handle

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(CanDo)
        await grabs(server, 2)
        await server.send(
            JobAssignUniq(b"H:1", b"f", b"", b""), JobAssignUniq(b"H:2", b"f", b"", b"")
        )
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []  # both slots busy: no GRAB
        assert worker.running_jobs == 2
        release.set()
        got = await server.receive(4)
    assert sorted(got, key=repr) == sorted(
        [WorkComplete(b"H:1", b"H:1"), WorkComplete(b"H:2", b"H:2"), GrabJobUniq(), GrabJobUniq()],
        key=repr,
    )
    assert peak == 2


async def test_a_function_with_its_own_limit_gets_its_own_connection() -> None:
    release = trio.Event()
    worker = make_worker(concurrency=4)

    async def wait(job: Job) -> None:
        await release.wait()

    worker.register("limited", wait, concurrency=1)
    worker.register("free", wait)
    async with serving(worker) as servers:
        main, limited = servers.servers
        assert await main.receive(1) == [CanDo(b"free")]
        await grabs(main, 4)  # connected first, it took every free slot for GRABs
        assert await limited.receive(1) == [CanDo(b"limited")]
        await main.send(NoJob(), NoJob())
        await grabs(limited, 1)  # a freed slot; one GRAB is this connection's limit
        await limited.send(JobAssignUniq(b"H:1", b"limited", b"", b""))
        await trio.testing.wait_all_tasks_blocked()
        assert limited.pending() == []  # full: its one job runs
        await main.send(NoJob(), NoJob())
        assert await main.receive() == [PreSleep()]
        release.set()
        assert await limited.receive(2) == [WorkComplete(b"H:1", b""), GrabJobUniq()]


async def test_register_and_unregister_while_running_go_out_at_once() -> None:
    worker = make_worker()
    async with serving(worker) as servers:
        server = servers.servers[0]
        await trio.testing.wait_all_tasks_blocked()
        assert server.pending() == []  # nothing to do: no GRAB

        @worker.function("late")
        async def late(job: Job) -> bytes:
            return b"ok"

        assert await server.receive(2) == [CanDo(b"late"), GrabJobUniq()]
        await server.send(NoJob())
        assert await server.receive() == [PreSleep()]
        worker.register("later", lambda job: b"", timeout=2)
        # a new ability wakes a sleeping connection: queued jobs may be waiting for it
        assert await server.receive(2) == [CanDoTimeout(b"later", 3000), GrabJobUniq()]
        worker.unregister("late")
        assert await server.receive() == [CantDo(b"late")]
        assert worker.functions == ["later"]
        with pytest.raises(ValueError, match="already registered"):
            worker.register("later", lambda job: b"")
        with pytest.raises(KeyError):
            worker.unregister("never")


# --- failures --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("send_exceptions", "expected"),
    [
        (True, [WorkException(b"H:1", b"ValueError: bad")]),
        (False, [WorkWarning(b"H:1", b"ValueError: bad"), WorkFail(b"H:1")]),
    ],
)
async def test_an_exception_fails_the_job_with_its_text_and_is_logged(
    send_exceptions: bool, expected: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker(send_exceptions=send_exceptions)

    @worker.function("f")
    async def f(job: Job) -> bytes:
        raise ValueError("bad")

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
        got = await server.receive(len(expected) + 1)
    assert got == [*expected, GrabJobUniq()]  # and the worker goes on
    assert "Traceback" in caplog.text
    assert 'raise ValueError("bad")' in caplog.text


async def test_job_failed_sends_work_fail_and_job_exception_its_text() -> None:
    worker = make_worker(concurrency=2)

    @worker.function("f")
    async def f(job: Job) -> bytes:
        if job.data == b"fail":
            raise JobFailed("no way")
        raise JobException("explained")

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(CanDo)
        await grabs(server, 2)
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b"fail"))
        assert await server.receive(2) == [WorkFail(b"H:1"), GrabJobUniq()]
        await server.send(JobAssignUniq(b"H:2", b"f", b"", b"explain"))
        assert await server.receive(2) == [WorkException(b"H:2", b"explained"), GrabJobUniq()]


async def test_a_result_of_the_wrong_type_fails_the_job() -> None:
    worker = make_worker()

    @worker.function("f")
    async def f(job: Job) -> object:
        return 42

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
        (failure,) = await server.receive()
        assert isinstance(failure, WorkException)
        assert failure.data.startswith(b"TypeError: job data must be bytes or str")


async def test_a_job_over_its_timeout_is_cancelled_and_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cancelled = trio.Event()
    worker = make_worker()

    @worker.function("slow", timeout=30)
    async def slow(job: Job) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"slow", b"", b""))
        start = trio.current_time()
        assert await server.receive(2) == [
            WorkException(b"H:1", b"timed out after 30 s"),
            GrabJobUniq(),
        ]
        assert trio.current_time() - start == pytest.approx(30)
        assert cancelled.is_set()


async def test_sending_after_the_end_of_the_job_is_an_error() -> None:
    kept: list[Job] = []
    worker = make_worker()

    @worker.function("f")
    async def f(job: Job) -> None:
        kept.append(job)

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
        await server.receive(2)
        with pytest.raises(RuntimeError, match="already finished"):
            await kept[0].send_data(b"late")


# --- stopping --------------------------------------------------------------------------


async def test_stop_grabs_no_more_and_lets_the_running_job_finish() -> None:
    release = trio.Event()
    worker = make_worker(concurrency=2)

    @worker.function("f")
    async def f(job: Job) -> bytes:
        await release.wait()
        return b"finished"

    async with fake_servers() as servers:
        worker._connector = servers
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            server = servers.servers[0]
            await server.receive_until(CanDo)
            await grabs(server, 2)
            await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
            await trio.testing.wait_all_tasks_blocked()
            worker.stop(timeout=None)
            await server.send(NoJob())  # the other GRAB's answer
            await trio.testing.wait_all_tasks_blocked()
            assert worker.running_jobs == 1
            release.set()
        # run() returned once the job was done: its result went out, no GRAB after it
        assert await server.receive() == [WorkComplete(b"H:1", b"finished")]
        assert server.pending() == []


async def test_stop_deadline_cancels_running_jobs_which_send_work_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = make_worker()

    @worker.function("f")
    async def f(job: Job) -> bytes:
        await trio.sleep_forever()
        raise AssertionError

    async with fake_servers() as servers:
        worker._connector = servers
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            server = servers.servers[0]
            await server.receive_until(GrabJobUniq)
            await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            worker.stop(timeout=5)
        assert trio.current_time() - start == pytest.approx(5)
        assert await server.receive() == [WorkFail(b"H:1")]


async def test_cancelling_run_fails_the_running_jobs_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = make_worker(concurrency=2)
    cancelled: list[bytes] = []

    @worker.function("f")
    async def f(job: Job) -> bytes:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.append(job.handle)
        raise AssertionError

    async with fake_servers() as servers:
        worker._connector = servers
        run_scope = trio.CancelScope()

        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            with run_scope:
                await worker.run(task_status=task_status)

        async with trio.open_nursery() as nursery:
            await nursery.start(run)
            server = servers.servers[0]
            await server.receive_until(CanDo)
            await grabs(server, 2)
            await server.send(
                JobAssignUniq(b"H:1", b"f", b"", b""), JobAssignUniq(b"H:2", b"f", b"", b"")
            )
            await trio.testing.wait_all_tasks_blocked()
            assert worker.running_jobs == 2
            start = trio.current_time()
            run_scope.cancel()
        # no time passed: cancellation is prompt, and the server heard of both jobs
        assert trio.current_time() == start
        assert sorted(cancelled) == [b"H:1", b"H:2"]
        assert sorted(await server.receive(2), key=repr) == [WorkFail(b"H:1"), WorkFail(b"H:2")]
        assert server.pending() == []
        assert worker.running_jobs == 0


async def test_stop_drains_while_cancel_does_not(autojump_clock: trio.testing.MockClock) -> None:
    """stop(grace) lets a running job finish (cancelling does not: see above), grabbing none."""
    release = trio.Event()
    worker = make_worker()

    @worker.function("f")
    async def f(job: Job) -> bytes:
        await release.wait()
        return b"drained"

    async with serving(worker) as servers:
        server = servers.servers[0]
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
        await trio.testing.wait_all_tasks_blocked()
        worker.stop(60)
        await trio.sleep(30)  # half the grace: the job still runs, nothing is grabbed
        assert worker.running_jobs == 1
        assert server.pending() == []
        release.set()
        assert await server.receive() == [WorkComplete(b"H:1", b"drained")]


async def test_a_lost_connection_lets_the_job_finish_and_the_worker_reconnects(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_gearman")
    release = trio.Event()
    worker = make_worker()

    @worker.function("f")
    async def f(job: Job) -> bytes:
        await release.wait()
        return b"late"

    async with serving(worker) as servers:
        server = await servers.next_server()
        await server.receive_until(GrabJobUniq)
        await server.send(JobAssignUniq(b"H:1", b"f", b"", b""))
        await trio.testing.wait_all_tasks_blocked()
        await server.close()
        # the worker does not stop: its link reconnects after a back-off...
        with trio.fail_after(60):
            while len(servers.servers) < 2:
                await worker.wait_servers_changed()
        second = servers.servers[1]
        # ...and registers again; the running job still holds the only slot
        assert await second.receive() == [CanDo(b"f")]
        await trio.testing.wait_all_tasks_blocked()
        assert second.pending() == []
        assert worker.running_jobs == 1
        release.set()
        # the job ends: its result has nowhere to go, and its slot grabs anew
        assert await second.receive() == [GrabJobUniq()]
        assert worker.running_jobs == 0
    assert "dropping the WorkComplete of <Job H:1 of 'f'" in caplog.text


async def test_run_keeps_trying_until_a_server_answers(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    refusals = 3
    attempts = 0

    async with fake_servers() as servers:

        async def connect(address: str) -> PacketStream:
            nonlocal attempts
            attempts += 1
            if attempts <= refusals:
                raise ConnectFailed("refused", server=address)
            return await servers(address)

        worker = make_worker()
        worker.register("f", lambda job: b"")
        worker._connector = connect
        async with trio.open_nursery() as nursery:
            # started once the first attempt failed: the server is not up yet
            await nursery.start(worker.run)
            (health,) = worker.servers()
            assert not health.up
            assert isinstance(health.last_error, ConnectFailed)
            assert "no server is up yet (memory:1); retrying until one is" in caplog.text
            # the link keeps trying; the fourth attempt reaches the server
            server = await servers.next_server()
            assert await server.receive_until(CanDo) == [CanDo(b"f")]
            assert attempts == refusals + 1
            worker.stop(0)
    # and the worker can run again later
    attempts = 0
    async with fake_servers() as servers:
        worker._connector = connect
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            worker.stop(0)


async def hang(address: str) -> PacketStream:
    """A connector whose connection attempts never end."""
    await trio.sleep_forever()
    raise AssertionError


async def test_stop_before_any_server_answered_returns_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = make_worker()
    worker._connector = hang
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        worker.stop()
    assert trio.current_time() == start


async def test_cancelling_run_while_connecting_is_prompt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    worker = make_worker()
    worker._connector = hang
    with trio.move_on_after(1):
        await worker.run()
    assert trio.current_time() == pytest.approx(1)


async def test_run_twice_at_once_is_refused() -> None:
    worker = make_worker()
    async with serving(worker):
        with pytest.raises(RuntimeError, match="already running"):
            await worker.run()
