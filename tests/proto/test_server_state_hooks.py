"""The state machine's test hooks: the job observer, holding functions, restoring jobs."""

from __future__ import annotations

import pytest

from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    GetStatus,
    GrabJob,
    JobAssign,
    JobCreated,
    NoJob,
    Noop,
    PreSleep,
    Priority,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
    WorkException,
    WorkFail,
)
from trio_gearman._proto.server.model import FUTURE, HELD, QUEUED, Job, JobOutcome

from .test_server_state_harness import Harness, Peer, handle


class Recorder:
    """A JobObserver that writes down what it is told."""

    def __init__(self) -> None:
        self.created: list[bytes] = []
        self.ended: list[tuple[bytes, JobOutcome, bytes]] = []

    def job_created(self, job: Job) -> None:
        self.created.append(job.handle)

    def job_ended(self, job: Job, outcome: JobOutcome, result: bytes) -> None:
        self.ended.append((job.handle, outcome, result))


def _observed(**config: object) -> tuple[Harness, Recorder]:
    harness = Harness(**config)
    recorder = Recorder()
    harness.state.observer = recorder
    return harness, recorder


def _grab(worker: Peer) -> object:
    (reply,) = worker.request(GrabJob())
    return reply


# --- the observer ------------------------------------------------------------------------


def test_observer_is_told_of_each_result() -> None:
    harness, seen = _observed()
    client = harness.connect()
    for data in (b"a", b"b", b"c"):
        client.send(SubmitJob(b"f", b"", data))
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b"done"))
    worker.send(GrabJob(), WorkFail(handle(2)))
    worker.send(GrabJob(), WorkException(handle(3), b"boom"))
    assert seen.created == [handle(1), handle(2), handle(3)]
    assert seen.ended == [
        (handle(1), JobOutcome.COMPLETED, b"done"),
        (handle(2), JobOutcome.FAILED, b""),
        (handle(3), JobOutcome.EXCEPTION, b"boom"),
    ]


def test_coalesced_submission_creates_no_job() -> None:
    harness, seen = _observed()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"key", b"x"), SubmitJob(b"f", b"key", b"x"))
    assert seen.created == [handle(1)]


def test_cancel_of_queued_future_and_running_jobs() -> None:
    harness, seen = _observed()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"queued", background=True))
    client.send(SubmitJobEpoch(b"f", b"", 10**10, b"future"))
    client.send(SubmitJob(b"f", b"", b"running", background=True))
    worker = harness.worker(b"f")
    admin = harness.connect()
    admin.admin(b"cancel job " + handle(1))
    assert _grab(worker) == JobAssign(handle(3), b"f", b"running")
    admin.admin(b"cancel job " + handle(2))
    admin.admin(b"cancel job " + handle(3))
    assert seen.ended == [
        (handle(1), JobOutcome.CANCELLED, b""),
        (handle(2), JobOutcome.CANCELLED, b""),
    ]
    # A running job leaves when its worker is done; it stays cancelled.
    worker.send(WorkComplete(handle(3), b"late"))
    assert seen.ended[-1] == (handle(3), JobOutcome.CANCELLED, b"late")
    assert harness.state.jobs_running == harness.state.jobs_queued == 0


def test_lost_at_the_retry_limit_and_when_abandoned() -> None:
    harness, seen = _observed(job_retries=1)
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"retried"))
    worker = harness.worker(b"f")
    assert _grab(worker) == JobAssign(handle(1), b"f", b"retried")
    worker.close()
    leaving = harness.connect()
    leaving.send(SubmitJob(b"g", b"", b"abandoned"))
    leaving.close()
    assert seen.ended == [(handle(1), JobOutcome.LOST, b""), (handle(2), JobOutcome.LOST, b"")]


def test_no_observer_no_calls() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"))
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b""))
    assert harness.state.observer is None
    assert client.received() == [JobCreated(handle(1)), WorkComplete(handle(1), b"")]


# --- holding functions -------------------------------------------------------------------


def test_held_jobs_count_as_queued_but_no_worker_gets_them() -> None:
    harness = Harness()
    harness.state.set_hold(lambda name: name == b"f")
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"), SubmitJob(b"g", b"", b"y"))
    worker = harness.worker(b"f", b"g")
    assert _grab(worker) == JobAssign(handle(2), b"g", b"y")
    assert _grab(worker) == NoJob()
    job = harness.state.get_job(handle(1))
    assert job is not None
    assert job.state == HELD
    assert harness.state.jobs_queued == 1
    assert client.request(GetStatus(handle(1)))[-1] == StatusRes(handle(1), True, False, 0, 0)
    assert harness.connect().admin(b"status").startswith(b"f\t1\t0\t1\n")


def test_holding_takes_back_queued_jobs_and_release_restores_their_order() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(
        SubmitJob(b"f", b"", b"1"),
        SubmitJob(b"f", b"", b"2", priority=Priority.HIGH),
        SubmitJob(b"f", b"", b"3"),
    )
    harness.state.set_hold(lambda name: name == b"f")
    worker = harness.worker(b"f")
    assert _grab(worker) == NoJob()
    harness.state.set_hold(None)
    assert [_grab(worker) for _ in range(4)] == [
        JobAssign(handle(2), b"f", b"2"),
        JobAssign(handle(1), b"f", b"1"),
        JobAssign(handle(3), b"f", b"3"),
        NoJob(),
    ]


def test_release_wakes_sleeping_workers() -> None:
    harness = Harness()
    harness.state.set_hold(lambda name: name == b"f")
    worker = harness.worker(b"f")
    worker.send(PreSleep())
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    assert worker.received() == []
    harness.state.set_hold(None)
    assert worker.received() == [Noop()]
    assert _grab(worker) == JobAssign(handle(1), b"f", b"x")


def test_partial_release_keeps_the_rest_held() -> None:
    harness = Harness()
    harness.state.set_hold(lambda name: name in (b"f", b"g"))
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x"), SubmitJob(b"g", b"", b"y"))
    harness.state.set_hold(lambda name: name == b"g")
    worker = harness.worker(b"f", b"g")
    assert _grab(worker) == JobAssign(handle(1), b"f", b"x")
    assert _grab(worker) == NoJob()
    job = harness.state.get_job(handle(2))
    assert job is not None
    assert job.state == HELD


def test_held_jobs_can_be_cancelled_and_abandoned() -> None:
    harness, seen = _observed()
    harness.state.set_hold(lambda name: True)
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    leaving = harness.connect()
    leaving.send(SubmitJob(b"f", b"", b"y"))
    harness.connect().admin(b"cancel job " + handle(1))
    leaving.close()
    assert seen.ended == [
        (handle(1), JobOutcome.CANCELLED, b""),
        (handle(2), JobOutcome.LOST, b""),
    ]
    assert harness.state.jobs_queued == 0
    harness.state.set_hold(None)
    assert _grab(harness.worker(b"f")) == NoJob()


def test_requeued_and_due_jobs_of_a_held_function_are_held() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    client.send(SubmitJobEpoch(b"f", b"", 1010, b"later"))
    worker = harness.worker(b"f")
    assert _grab(worker) == JobAssign(handle(1), b"f", b"x")
    harness.state.set_hold(lambda name: True)
    worker.close()
    harness.advance(20)
    states = [job.state for job in harness.state.jobs]
    assert states == [HELD, HELD]
    assert harness.state.jobs_queued == 2


# --- restoring jobs ----------------------------------------------------------------------


def test_restore_keeps_handles_and_never_reuses_them() -> None:
    harness, seen = _observed()
    state = harness.state
    state.reserve_handles(5)
    state.restore_job(handle(3), b"f", b"key", b"data", Priority.LOW)
    state.restore_job(b"elsewhere:9", b"f", b"", b"other")
    client = harness.connect()
    assert client.request(SubmitJob(b"f", b"", b"new")) == [JobCreated(handle(6))]
    assert client.request(SubmitJob(b"f", b"key", b"dup", background=True)) == [
        JobCreated(handle(3))
    ]
    assert seen.created == [handle(6)]
    assert state.handles_issued == 6
    worker = harness.worker(b"f")
    assert [_grab(worker) for _ in range(3)] == [
        JobAssign(b"elsewhere:9", b"f", b"other"),
        JobAssign(handle(6), b"f", b"new"),
        JobAssign(handle(3), b"f", b"data"),
    ]
    with pytest.raises(ValueError, match="exists"):
        state.restore_job(handle(3), b"f", b"", b"")


def test_restored_epoch_job_waits_for_its_time() -> None:
    harness = Harness()
    state = harness.state
    job = state.restore_job(handle(1), b"f", b"", b"later", due=harness.now + 60)
    assert [job.state] == [FUTURE]  # (a list: no narrowing, the state changes below)
    assert state.scheduled_jobs() == [(job, harness.now + 60)]
    worker = harness.worker(b"f")
    assert _grab(worker) == NoJob()
    harness.advance(60)
    assert job.state == QUEUED
    assert state.scheduled_jobs() == []
    assert _grab(worker) == JobAssign(handle(1), b"f", b"later")


def test_timeouts_are_not_scheduled_jobs() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    worker = harness.connect()
    worker.send(CanDoTimeout(b"f", 5000), GrabJob())
    assert harness.state.next_deadline() is not None
    assert harness.state.scheduled_jobs() == []


def test_show_jobs_lists_held_jobs() -> None:
    harness = Harness()
    harness.state.set_hold(lambda name: True)
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True), CanDo(b"f"))
    reply = harness.connect().admin(b"show jobs")
    assert reply.startswith(handle(1) + b"\t0\t0\t1\n")
