"""The rare turns of a job's life that the state reports for the log (JobNotice)."""

from __future__ import annotations

from trio_gearman._proto._packets import (
    CanDoTimeout,
    CantDo,
    GrabJob,
    JobAssign,
    ResetAbilities,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._proto.server.model import JobNotice

from .test_server_state_harness import Harness, Peer, handle


def running(
    harness: Harness, background: bool = True, address: bytes = b"10.0.0.7:4000"
) -> tuple[Peer, Peer]:
    client = harness.connect(b"10.0.0.1:1234")
    client.send(SubmitJob(b"f", b"", b"x", background=background))
    worker = harness.connect(address)
    worker.send(CanDoTimeout(b"f", 1000))
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"x")]
    return client, worker


def test_a_job_that_ends_normally_leaves_no_notice() -> None:
    harness = Harness()
    _, worker = running(harness)
    worker.send(WorkComplete(handle(1), b"done"))
    assert harness.state.take_job_notices() == []


def test_a_worker_that_goes_away_requeues_its_job_and_says_so_with_its_address() -> None:
    harness = Harness()
    _, worker = running(harness)
    worker.close()
    assert harness.state.take_job_notices() == [
        JobNotice(
            handle(1), b"f", b"10.0.0.7:4000", "its worker went away; queued again (attempt 2)"
        )
    ]
    assert harness.state.take_job_notices() == []  # each is taken once


def test_the_last_attempt_is_a_serious_notice() -> None:
    harness = Harness(job_retries=1)
    _, worker = running(harness)
    worker.close()
    (notice,) = harness.state.take_job_notices()
    assert notice.text == "its worker went away; failed after 1 attempts (the retry limit)"
    assert notice.serious


def test_a_timeout_cant_do_reset_and_a_client_gone_are_said_too() -> None:
    harness = Harness()
    _, worker = running(harness)
    harness.advance(1.5)
    (notice,) = harness.state.take_job_notices()
    assert notice.text == "its worker took longer than its CAN_DO_TIMEOUT; queued again (attempt 2)"
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"x")]
    worker.send(CantDo(b"f"))
    (notice,) = harness.state.take_job_notices()
    assert notice.text == "its worker sent CANT_DO while running it; queued again (attempt 3)"
    worker.send(CanDoTimeout(b"f", 1000))
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"x")]
    worker.send(ResetAbilities())
    (notice,) = harness.state.take_job_notices()
    assert notice.text.startswith("its worker sent RESET_ABILITIES while running it; queued")

    other = Harness()
    client, worker = running(other, background=False)
    client.close()  # a foreground job nobody waits for is dropped when its worker goes
    worker.close()
    (notice,) = other.state.take_job_notices()
    assert notice.text == "its worker went away; dropped, as nobody waits for it any more"


def test_an_admin_cancel_is_said_for_a_queued_and_for_a_running_job() -> None:
    harness = Harness()
    running(harness)
    harness.connect().send(SubmitJob(b"f", b"", b"queued", background=True))
    admin = harness.connect()
    assert admin.admin(b"cancel job " + handle(2)) == b"OK\r\n"
    assert admin.admin(b"cancel job " + handle(1)) == b"OK\r\n"
    assert admin.admin(b"cancel job " + handle(1)) == b"OK\r\n"  # said once
    assert [(n.handle, n.peer, n.text) for n in harness.state.take_job_notices()] == [
        (handle(2), b"", "cancelled by an admin command"),
        (handle(1), b"", "cancelled by an admin command while it runs"),
    ]
