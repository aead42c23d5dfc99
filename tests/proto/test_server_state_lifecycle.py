"""The job server state machine: disconnects, retries and timers."""

from __future__ import annotations

import pytest

from trio_gearman._proto._packets import (
    CanDoTimeout,
    Error,
    GetStatus,
    GrabJob,
    JobAssign,
    JobCreated,
    Message,
    NoJob,
    Noop,
    PreSleep,
    Priority,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
    WorkFail,
    WorkStatus,
)

from .test_server_state_harness import Harness, Peer, handle

NOT_FOUND = Error(b"JOB_NOT_FOUND", b"Job given in work result not found")


def _grab(worker: Peer) -> Message:
    (reply,) = worker.request(GrabJob())
    return reply


def _status(peer: Peer, n: int) -> Message:
    (reply,) = peer.request(GetStatus(handle(n)))
    return reply


# --- worker disconnect and retries ---------------------------------------------------------


def test_worker_loss_requeues_at_the_tail_and_resets_progress() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"first", background=True))
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkStatus(handle(1), 3, 4))
    client.send(SubmitJob(b"f", b"", b"second", background=True))
    worker.close()
    job = harness.state.get_job(handle(1))
    assert job is not None
    assert (job.retries, job.numerator, job.denominator) == (1, 0, 0)
    assert harness.state.jobs_running == 0
    other = harness.worker(b"f")
    assert _grab(other) == JobAssign(handle(2), b"f", b"second")
    assert _grab(other) == JobAssign(handle(1), b"f", b"first")


@pytest.mark.parametrize("retries", [1, 2, 3])
def test_job_retries_is_the_total_number_of_attempts(retries: int) -> None:
    harness = Harness(job_retries=retries)
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"))
    assert client.received() == [JobCreated(handle(1))]
    for _ in range(retries):
        worker = harness.worker(b"f")
        assert _grab(worker) == JobAssign(handle(1), b"f", b"x")
        worker.close()
    assert client.received() == [WorkFail(handle(1))]
    assert _status(client, 1) == StatusRes(handle(1), False, False, 0, 0)
    assert _grab(harness.worker(b"f")) == NoJob()


def test_unlimited_retries_by_default() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    for _ in range(300):
        worker = harness.worker(b"f")
        assert isinstance(_grab(worker), JobAssign)
        worker.close()
    job = harness.state.get_job(handle(1))
    assert job is not None
    assert job.retries == 300


# --- client disconnect ----------------------------------------------------------------------


def test_abandoned_queued_foreground_job_leaves_at_once() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"u", b"x", Priority.LOW))
    client.close()
    assert harness.state.jobs_queued == 0
    observer = harness.connect()
    assert observer.admin(b"status") == b".\n"
    assert _status(observer, 1) == StatusRes(handle(1), False, False, 0, 0)
    assert _grab(harness.worker(b"f")) == NoJob()
    # The unique is free again.
    assert observer.request(SubmitJob(b"f", b"u", b"x")) == [JobCreated(handle(2))]


def test_abandoned_job_with_another_attachment_stays() -> None:
    harness = Harness()
    leaver, stayer = harness.connect(), harness.connect()
    leaver.send(SubmitJob(b"f", b"u", b"x"))
    stayer.send(SubmitJob(b"f", b"u", b"x"))
    stayer.received()
    leaver.close()
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b"r"))
    assert stayer.received() == [WorkComplete(handle(1), b"r")]


def test_abandoned_running_foreground_job_keeps_running() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"))
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    worker.received()
    client.close()
    assert harness.state.jobs_running == 1
    assert worker.request(WorkStatus(handle(1), 1, 2), WorkComplete(handle(1), b"r")) == []
    assert harness.state.jobs_running == 0
    assert list(harness.state.jobs) == []


def test_abandoned_running_job_is_not_requeued_when_its_worker_leaves() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"))
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    client.close()
    worker.close()
    assert harness.state.jobs_queued == harness.state.jobs_running == 0
    assert list(harness.state.jobs) == []


@pytest.mark.parametrize("background_first", [True, False])
def test_background_job_survives_its_foreground_clients(background_first: bool) -> None:
    harness = Harness()
    submitter, waiter = harness.connect(), harness.connect()
    if background_first:
        submitter.send(SubmitJob(b"f", b"u", b"x", background=True))
        waiter.send(SubmitJob(b"f", b"u", b"x"))
    else:
        waiter.send(SubmitJob(b"f", b"u", b"x"))
        submitter.send(SubmitJob(b"f", b"u", b"x", background=True))
    waiter.close()
    assert harness.state.jobs_queued == 1
    assert _grab(harness.worker(b"f")) == JobAssign(handle(1), b"f", b"x")


def test_client_and_worker_on_one_connection() -> None:
    harness = Harness()
    both = harness.worker(b"f")
    both.send(SubmitJob(b"f", b"", b"x"), GrabJob(), WorkComplete(handle(1), b"r"))
    assert both.received() == [
        JobCreated(handle(1)),
        JobAssign(handle(1), b"f", b"x"),
        WorkComplete(handle(1), b"r"),
    ]
    both.close()
    assert list(harness.state.connections) == []


def test_disconnect_twice_is_harmless() -> None:
    harness = Harness()
    worker = harness.worker(b"f")
    worker.close()
    worker.close()
    assert harness.connect().admin(b"status") == b".\n"


# --- SUBMIT_JOB_EPOCH -------------------------------------------------------------------------


def test_future_epoch_job_waits_for_its_time_then_wakes_sleepers() -> None:
    harness = Harness()
    harness.state.wall_offset = 1_700_000_000.0 - harness.now  # wall clock = 1.7e9 now
    client = harness.connect()
    worker = harness.worker(b"f")
    worker.send(PreSleep())
    epoch = 1_700_000_060
    assert client.request(SubmitJobEpoch(b"f", b"u", epoch, b"later")) == [JobCreated(handle(1))]
    assert worker.received() == []
    assert harness.state.next_deadline() == pytest.approx(harness.now + 60)
    assert harness.state.jobs_queued == 1
    assert client.admin(b"status") == b"f\t1\t0\t1\n.\n"
    assert client.admin(b"prioritystatus") == b"f\t0\t1\t0\t1\n.\n"
    assert _status(client, 1) == StatusRes(handle(1), True, False, 0, 0)
    harness.advance(59.9)
    assert worker.received() == []
    harness.advance(0.1)
    assert worker.received() == [Noop()]
    assert harness.state.next_deadline() is None
    assert _grab(worker) == JobAssign(handle(1), b"f", b"later")


def test_future_epoch_job_blocks_nothing() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(
        SubmitJobEpoch(b"f", b"", int(harness.now + 3600), b"future"),
        SubmitJob(b"f", b"", b"low", Priority.LOW, background=True),
    )
    worker = harness.worker(b"f")
    assert worker.request(PreSleep()) == [Noop()]
    assert _grab(worker) == JobAssign(handle(2), b"f", b"low")
    assert _grab(worker) == NoJob()
    assert worker.request(PreSleep()) == []


@pytest.mark.parametrize("epoch", [0, -5, 1, 999])
def test_past_or_zero_epoch_runs_now(epoch: int) -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJobEpoch(b"f", b"", epoch, b"now"))
    assert harness.state.next_deadline() is None
    assert _grab(harness.worker(b"f")) == JobAssign(handle(1), b"f", b"now")


def test_epoch_jobs_coalesce_and_count_against_maxqueue() -> None:
    harness = Harness()
    client = harness.connect()
    client.admin(b"create function f")
    client.admin(b"maxqueue f 1")
    later = int(harness.now + 100)
    assert client.request(
        SubmitJobEpoch(b"f", b"u", later, b"a"),
        SubmitJobEpoch(b"f", b"u", later, b"b"),
        SubmitJobEpoch(b"f", b"v", later, b"c"),
    ) == [
        JobCreated(handle(1)),
        JobCreated(handle(1)),
        Error(b"QUEUE_ERROR", b"Job queue is full"),
    ]


def test_cancelled_epoch_job_never_fires() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJobEpoch(b"f", b"", int(harness.now + 10), b"x"))
    assert harness.connect().admin(b"cancel job " + handle(1)) == b"OK\r\n"
    assert harness.state.jobs_queued == 0
    assert harness.state.next_deadline() is None
    harness.advance(20)
    assert _grab(harness.worker(b"f")) == NoJob()


# --- CAN_DO_TIMEOUT -----------------------------------------------------------------------------


@pytest.mark.parametrize(("timeout_ms", "seconds"), [(1, 1.0), (999, 1.0), (2500, 2.5)])
def test_can_do_timeout_in_ms_clamped_to_one_second(timeout_ms: int, seconds: float) -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", timeout_ms), GrabJob())
    assert harness.state.next_deadline() == pytest.approx(harness.now + seconds)


@pytest.mark.parametrize("timeout_ms", [0, -1, -5000])
def test_zero_or_negative_timeout_means_none(timeout_ms: int) -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", timeout_ms), GrabJob())
    assert harness.state.jobs_running == 1
    assert harness.state.next_deadline() is None


def test_timed_out_job_is_requeued_and_the_late_result_refused() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"))
    client.received()
    slow = harness.connect()
    slow.send(CanDoTimeout(b"f", 2000), GrabJob())
    slow.received()
    sleeper = harness.worker(b"f")
    sleeper.send(PreSleep())
    harness.advance(1.999)
    assert harness.state.jobs_running == 1
    harness.advance(0.001)
    assert harness.state.jobs_running == 0
    assert sleeper.received() == [Noop()]
    assert slow.request(WorkComplete(handle(1), b"late")) == [NOT_FOUND]
    assert client.received() == []
    assert _grab(sleeper) == JobAssign(handle(1), b"f", b"x")
    job = harness.state.get_job(handle(1))
    assert job is not None
    assert job.retries == 1


def test_timeout_with_retries_exhausted_fails_the_job() -> None:
    harness = Harness(job_retries=2)
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"))
    client.received()
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", 1000), GrabJob())
    harness.advance(1)
    worker.send(GrabJob())
    assert client.received() == []
    harness.advance(1)
    assert client.received() == [WorkFail(handle(1))]
    assert list(harness.state.jobs) == []


def test_one_deadline_per_running_job() -> None:
    harness = Harness()
    client = harness.connect()
    for data in (b"a", b"b"):
        client.send(SubmitJob(b"f", b"", data, background=True))
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", 1000), GrabJob())
    harness.advance(0.5)
    worker.send(GrabJob())
    worker.received()
    assert harness.state.next_deadline() == pytest.approx(harness.now + 0.5)
    worker.send(WorkComplete(handle(1), b""))
    # The first job's deadline is gone; the second one's stays.
    assert harness.state.next_deadline() == pytest.approx(harness.now + 1.0)
    harness.advance(1.0)
    assert harness.state.jobs_running == 0
    assert harness.state.jobs_queued == 1
    assert worker.request(WorkComplete(handle(2), b"")) == [NOT_FOUND]


def test_completed_jobs_leave_no_timer_behind() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", 60_000))
    for _ in range(5000):
        client.send(SubmitJob(b"f", b"", b"x", background=True))
        worker.send(GrabJob())
        job = next(iter(worker.conn.running.values()))
        worker.send(WorkComplete(job.handle, b""))
    worker.received()
    assert harness.state.next_deadline() is None
    assert len(harness.state._timers) < 2100


def test_can_do_again_without_timeout_drops_it_for_the_next_job() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(*(SubmitJob(b"f", b"", b"x", background=True) for _ in range(2)))
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", 1000), GrabJob())
    assert harness.state.next_deadline() is not None
    worker.send(WorkComplete(handle(1), b""))
    worker.send(CanDoTimeout(b"f", 0), GrabJob())
    assert harness.state.next_deadline() is None


def test_advance_with_nothing_due_does_nothing() -> None:
    harness = Harness()
    assert harness.state.next_deadline() is None
    harness.advance(100)
    assert harness.state.jobs_queued == 0
