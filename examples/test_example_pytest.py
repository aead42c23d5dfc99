"""Testing Gearman code with the pytest fixtures of trio_gearman.

With trio_gearman installed, its pytest plugin is loaded: each test gets a fresh
embedded job server (``gearman_server``), a connected client (``gearman_client``)
and a running worker (``gearman_worker``) without any setup. The tests below are
what a user of the package would write; run them with pytest and pytest-trio::

    pytest examples/test_example_pytest.py
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import trio
import trio.testing

import trio_gearman
from trio_gearman.pytest_plugin import GearmanServers
from trio_gearman.testing import EmbeddedServer, JobOutcome

pytestmark = pytest.mark.trio


async def reverse(job: trio_gearman.Job) -> bytes:
    """The worker function under test."""
    return job.data[::-1]


async def test_reverse(
    gearman_server: EmbeddedServer,
    gearman_worker: trio_gearman.Worker,
    gearman_client: trio_gearman.Client[bytes],
) -> None:
    gearman_worker.register("reverse", reverse)
    assert await gearman_client.submit("reverse", b"hello") == b"olleh"
    (record,) = gearman_server.history
    assert (record.function, record.outcome, record.result) == (
        "reverse",
        JobOutcome.COMPLETED,
        b"olleh",
    )


async def test_background_job_waits_for_a_worker(
    gearman_server: EmbeddedServer, gearman_client: trio_gearman.Client[bytes]
) -> None:
    handle = await gearman_client.submit_background("resize", b"img-1")
    assert gearman_server.queued("resize") == 1
    status = await gearman_client.get_status(handle)
    assert status.known
    assert not status.running


async def test_a_failing_job_raises_with_the_error_text(
    gearman_worker: trio_gearman.Worker, gearman_client: trio_gearman.Client[bytes]
) -> None:
    async def resize(job: trio_gearman.Job) -> bytes:
        raise ValueError(f"cannot decode {job.data!r}")

    gearman_worker.register("resize", resize)
    with pytest.raises(trio_gearman.JobException, match="cannot decode b'img-1'"):
        await gearman_client.submit("resize", b"img-1")


async def test_held_jobs_run_on_release(
    gearman_server: EmbeddedServer,
    gearman_worker: trio_gearman.Worker,
    gearman_client: trio_gearman.Client[bytes],
) -> None:
    gearman_worker.register("reverse", reverse)
    gearman_server.hold("rev*")
    await gearman_client.submit_background("reverse", b"abc")
    await gearman_client.submit_background("reverse", b"def")
    assert gearman_server.queued("reverse") == 2
    gearman_server.release("rev*")
    with trio.fail_after(5):
        await gearman_server.wait_idle()
    assert [record.result for record in gearman_server.history] == [b"cba", b"fed"]


@pytest.mark.gearman_server(job_retries=1)
async def test_a_job_whose_worker_vanishes_fails_at_the_retry_limit(
    gearman_server: EmbeddedServer,
    gearman_worker: trio_gearman.Worker,
    gearman_client: trio_gearman.Client[bytes],
) -> None:
    started = trio.Event()

    async def hang(job: trio_gearman.Job) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def submit() -> None:
        with pytest.raises(trio_gearman.JobFailed):
            await gearman_client.submit("hang", b"")

    gearman_worker.register("hang", hang)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(submit)
        await started.wait()
        await gearman_server.drop_connections(workers=True)
    assert gearman_server.history[0].outcome is JobOutcome.LOST


async def test_a_job_scheduled_an_hour_ahead(
    gearman_server: EmbeddedServer,
    gearman_worker: trio_gearman.Worker,
    gearman_client: trio_gearman.Client[bytes],
    autojump_clock: trio.testing.MockClock,
) -> None:
    gearman_worker.register("reverse", reverse)
    start = trio.current_time()
    await gearman_client.submit_background(
        "reverse", b"abc", at=datetime.now() + timedelta(hours=1)
    )
    with trio.fail_after(2 * 3600):
        await gearman_server.wait_idle()
    assert trio.current_time() - start >= 3599  # virtual time: the test took milliseconds


async def test_a_client_moves_on_when_its_server_goes(gearman_servers: GearmanServers) -> None:
    first, second = await gearman_servers(2)
    async with trio_gearman.Client([first.address, second.address]) as client:
        await client.submit_background("resize", b"img-1")
        assert first.queued("resize") == 1
        await first.pause_accepting()
        await first.drop_connections(clients=True)
        await trio.testing.wait_all_tasks_blocked()  # the client has seen it
        await client.submit_background("resize", b"img-2")
        assert second.queued("resize") == 1
