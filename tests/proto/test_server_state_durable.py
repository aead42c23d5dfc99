"""A durable job server's state: background jobs wait for the store's commit.

The store is played by the test: it takes each transaction with
``take_store_write`` and reports it written or failed, as the I/O layer's
writer does from its thread.
"""

from __future__ import annotations

from typing import Any

import pytest

from trio_gearman import BadMagic, UnknownPacketType
from trio_gearman._proto._codec import TextLine, encode
from trio_gearman._proto._packets import (
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    GrabJob,
    JobAssign,
    JobCreated,
    NoJob,
    Priority,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
    WorkFail,
)
from trio_gearman._proto.server.listing import SLICE_ROWS
from trio_gearman._proto.server.model import PENDING, Job, JobOutcome, StoredJob, StoreWrite

from .test_server_state_harness import Harness, handle

RESERVE = 1_000_000


def durable(**config: Any) -> Harness:
    harness = Harness(durable=True, **config)
    # the first transaction of a durable server reserves handle numbers
    reservation = harness.state.take_store_write()
    assert reservation is not None
    assert (reservation.added, reservation.removed) == ([], [])
    assert reservation.handle_limit == RESERVE + 1
    harness.state.store_written(reservation, harness.now)
    return harness


def take(harness: Harness) -> StoreWrite:
    write = harness.state.take_store_write()
    assert write is not None
    return write


def commit(harness: Harness) -> StoreWrite:
    write = take(harness)
    harness.state.store_written(write, harness.now)
    return write


def fail(harness: Harness, reason: bytes = b"disk full") -> StoreWrite:
    write = take(harness)
    harness.state.store_failed(write, reason, harness.now)
    return write


def bg(data: bytes, unique: bytes = b"", function: bytes = b"f") -> SubmitJob:
    return SubmitJob(function, unique, data, background=True)


# --- acknowledgement after the commit ------------------------------------------------------


def test_a_background_job_is_acknowledged_and_handed_out_only_after_its_commit() -> None:
    harness = durable()
    client = harness.connect()
    worker = harness.worker(b"f")
    assert client.request(bg(b"payload", b"key")) == []
    assert worker.request(GrabJob()) == [NoJob()]
    assert harness.state.jobs_queued == 1  # it counts as queued meanwhile
    assert harness.connect().admin(b"status") == b"f\t1\t0\t1\n.\n"
    job = harness.state.get_job(handle(1))
    assert job is not None
    assert job.state == PENDING
    write = commit(harness)
    assert write.added == [StoredJob(handle(1), b"f", b"key", b"payload", 1, b"", None)]
    assert client.received() == [JobCreated(handle(1))]
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"payload")]


def test_submissions_during_a_commit_share_the_next_one() -> None:
    harness = durable()
    a, b, c = harness.connect(), harness.connect(), harness.connect()
    a.send(bg(b"a1"))
    first = take(harness)  # being written...
    b.send(bg(b"b1"))
    c.send(SubmitReduceJob(b"f", b"", b"reducer", b"", b"c1", background=True))
    a.send(bg(b"a2", function=b"g"))
    assert [job.data for job in first.added] == [b"a1"]
    harness.state.store_written(first, harness.now)
    assert a.received() == [JobCreated(handle(1))]
    second = commit(harness)
    assert [job.data for job in second.added] == [b"b1", b"c1", b"a2"]
    assert second.added[1].reducer == b"reducer"
    assert b.received() == [JobCreated(handle(2))]
    assert c.received() == [JobCreated(handle(3))]
    assert a.received() == [JobCreated(handle(4))]


def test_one_connections_submissions_share_a_commit_and_keep_their_order() -> None:
    harness = durable()
    client = harness.connect()
    client.send(
        bg(b"1"),
        bg(b"2", function=b"g"),
        SubmitJob(b"f", b"", b"3", priority=Priority.HIGH, background=True),
    )
    write = commit(harness)
    assert [job.handle for job in write.added] == [handle(1), handle(2), handle(3)]
    assert [job.priority for job in write.added] == [1, 1, 0]
    assert client.received() == [JobCreated(handle(n)) for n in (1, 2, 3)]


def test_every_other_reply_waits_behind_the_pending_ones_in_request_order() -> None:
    harness = durable()
    client = harness.connect()
    client.send(
        bg(b"1"),
        EchoReq(b"ping"),
        SubmitJob(b"f", b"", b"fg"),  # foreground: not stored, but answered in order
        bg(b"3"),
    )
    assert client.received() == []
    first = commit(harness)
    assert [job.handle for job in first.added] == [handle(1)]
    assert client.received() == [JobCreated(handle(1)), EchoRes(b"ping"), JobCreated(handle(2))]
    second = commit(harness)
    assert [job.handle for job in second.added] == [handle(3)]
    assert client.received() == [JobCreated(handle(3))]
    assert harness.state.take_store_write() is None


def test_an_error_for_a_durable_submission_waits_its_turn_too() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"1"), bg(b"2", unique=b"u" * 65))
    assert client.received() == []
    commit(harness)
    assert client.received() == [
        JobCreated(handle(1)),
        Error(b"ARGUMENT_TOO_LARGE", b"Unique value too large"),
    ]


def test_replies_resolve_in_the_connections_order_whatever_the_commit_order() -> None:
    harness = durable()
    other, client = harness.connect(), harness.connect()
    other.send(bg(b"x", b"shared"))
    first = take(harness)  # holds job 1
    client.send(bg(b"mine"), bg(b"x", b"shared"))  # job 2 (next commit), then joins job 1
    harness.state.store_written(first, harness.now)
    assert other.received() == [JobCreated(handle(1))]
    assert client.received() == []  # its first reply (job 2) is still pending
    commit(harness)
    assert client.received() == [JobCreated(handle(2)), JobCreated(handle(1))]


# --- coalescing --------------------------------------------------------------------------------


def test_submissions_joining_a_pending_job_are_answered_with_it() -> None:
    harness = durable()
    first, second, waiter = harness.connect(), harness.connect(), harness.connect()
    first.send(bg(b"x", b"key"))
    second.send(bg(b"x", b"key"))
    waiter.send(SubmitJob(b"f", b"key", b"x"))
    write = commit(harness)
    assert len(write.added) == 1
    for peer in (first, second, waiter):
        assert peer.received() == [JobCreated(handle(1))]
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    worker.send(WorkComplete(handle(1), b"done"))
    assert waiter.received() == [WorkComplete(handle(1), b"done")]
    assert commit(harness).removed == [handle(1)]


def test_a_background_submission_makes_a_foreground_job_durable() -> None:
    harness = durable()
    waiter, submitter = harness.connect(), harness.connect()
    assert waiter.request(SubmitJob(b"f", b"u", b"x")) == [JobCreated(handle(1))]
    assert harness.state.take_store_write() is None  # foreground jobs are not stored
    assert submitter.request(bg(b"x", b"u")) == []
    waiter.close()  # the job is background now: it stays
    write = commit(harness)
    assert [job.handle for job in write.added] == [handle(1)]
    assert submitter.received() == [JobCreated(handle(1))]
    assert harness.state.jobs_queued == 1


def test_a_failed_commit_leaves_a_joined_foreground_job_foreground() -> None:
    harness = durable()
    waiter, submitter = harness.connect(), harness.connect()
    waiter.send(SubmitJob(b"f", b"u", b"x"))
    waiter.received()
    submitter.send(bg(b"x", b"u"))
    fail(harness, b"disk full")
    assert submitter.received() == [Error(b"QUEUE_ERROR", b"disk full")]
    job = harness.state.get_job(handle(1))
    assert job is not None
    assert not job.background
    waiter.close()  # nobody waits for it any more: it goes, as a foreground job does
    assert harness.state.get_job(handle(1)) is None
    assert harness.state.jobs_queued == 0


def test_a_failed_commit_drops_a_joined_job_whose_waiter_left_meanwhile() -> None:
    harness = durable()
    waiter, submitter = harness.connect(), harness.connect()
    waiter.send(SubmitJob(b"f", b"u", b"x"))
    submitter.send(bg(b"x", b"u"))
    waiter.close()
    fail(harness)
    assert harness.state.get_job(handle(1)) is None
    assert harness.state.jobs_queued == 0


# --- a failing store ---------------------------------------------------------------------------


def test_a_failed_commit_refuses_its_jobs_with_queue_error_and_forgets_them() -> None:
    harness = durable()
    client, other = harness.connect(), harness.connect()
    client.send(bg(b"1", b"key"), EchoReq(b"after"))
    other.send(bg(b"2"))
    fail(harness, b"cannot write the queue database q.db: disk I/O error")
    error = Error(b"QUEUE_ERROR", b"cannot write the queue database q.db: disk I/O error")
    assert client.received() == [error, EchoRes(b"after")]
    assert other.received() == [error]
    assert harness.state.jobs_queued == 0
    assert client.request(GetStatus(handle(1))) == [StatusRes(handle(1), False, False, 0, 0)]
    # the server goes on: the next submission with the same key is a new job
    client.send(bg(b"1", b"key"))
    assert [job.handle for job in commit(harness).added] == [handle(3)]
    assert client.received() == [JobCreated(handle(3))]


def test_deletions_of_a_failed_commit_are_retried_in_the_next() -> None:
    harness = durable()
    harness.connect().send(bg(b"1"))
    commit(harness)
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b""))
    harness.connect().send(bg(b"2"))
    failed = fail(harness)
    assert failed.removed == [handle(1)]
    retried = commit(harness)
    assert (retried.added, retried.removed) == ([], [handle(1)])


def test_foreground_work_goes_on_while_a_commit_is_pending() -> None:
    harness = durable()
    harness.connect().send(bg(b"durable"))
    take(harness)  # the store is slow
    client = harness.connect()
    worker = harness.worker(b"f")
    assert client.request(SubmitJob(b"f", b"", b"fg")) == [JobCreated(handle(2))]
    assert worker.request(GrabJob()) == [JobAssign(handle(2), b"f", b"fg")]
    worker.send(WorkComplete(handle(2), b"ok"))
    assert client.received() == [WorkComplete(handle(2), b"ok")]


# --- deletions ---------------------------------------------------------------------------------


def test_every_end_of_a_stored_job_deletes_it_once() -> None:
    harness = durable(job_retries=1)
    client = harness.connect()
    client.send(*(bg(b"%d" % n) for n in range(1, 5)))
    commit(harness)
    worker = harness.worker(b"f")
    worker.send(GrabJob(), GrabJob())
    worker.send(WorkComplete(handle(1), b""), WorkFail(handle(2)))
    assert harness.connect().admin(b"cancel job " + handle(3)) == b"OK\r\n"
    retried = harness.worker(b"f")
    retried.send(GrabJob())
    retried.close()  # job 4 lost its only attempt
    assert commit(harness).removed == [handle(n) for n in (1, 2, 3, 4)]
    assert harness.state.take_store_write() is None


def test_cancelling_a_running_stored_job_deletes_it_at_once_and_once() -> None:
    harness = durable()
    harness.connect().send(bg(b"x"))
    commit(harness)
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    assert harness.state.cancel_job(handle(1))
    assert harness.state.cancel_job(handle(1))
    worker.send(WorkComplete(handle(1), b""))
    assert commit(harness).removed == [handle(1)]


def test_cancelling_a_pending_job_deletes_it_after_it_is_written() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x"))
    assert harness.connect().admin(b"cancel job " + handle(1)) == b"OK\r\n"
    write = commit(harness)
    # it was never written: neither its row nor its deletion goes to the store
    assert (write.added, write.removed) == ([], [])
    assert client.received() == [JobCreated(handle(1))]  # it was accepted, then cancelled
    assert harness.state.jobs_queued == 0


def test_a_connection_that_leaves_before_its_reply_loses_nothing() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x"), EchoReq(b"never answered"))
    client.close()
    commit(harness)
    assert client.raw() == b""
    assert harness.state.jobs_queued == 1  # the job was accepted: it runs
    worker = harness.worker(b"f")
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"x")]


# --- epochs, replay, handles -----------------------------------------------------------------


def test_an_epoch_job_is_stored_with_its_wall_time_and_waits_for_it_after_the_commit() -> None:
    harness = durable()
    harness.state.wall_offset = 1_700_000_000.0 - harness.now
    client = harness.connect()
    client.send(
        SubmitJobEpoch(b"f", b"", 1_700_000_060, b"later"),
        SubmitJobEpoch(b"f", b"", 1_600_000_000, b"past"),
    )
    write = commit(harness)
    assert [job.epoch for job in write.added] == [1_700_000_060, None]
    assert client.received() == [JobCreated(handle(1)), JobCreated(handle(2))]
    worker = harness.worker(b"f")
    assert worker.request(GrabJob()) == [JobAssign(handle(2), b"f", b"past")]
    assert worker.request(GrabJob()) == [NoJob()]
    harness.advance(60)
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"later")]


def test_restored_jobs_are_stored_already_and_deleted_when_done() -> None:
    harness = Harness(durable=True)
    harness.state.reserve_handles(5_000)
    harness.state.restore_job(handle(7), b"f", b"", b"old")
    write = commit(harness)
    assert (write.added, write.removed) == ([], [])
    assert write.handle_limit == 5_001 + RESERVE
    client = harness.connect()
    client.send(bg(b"new"))
    assert [job.handle for job in commit(harness).added] == [handle(5_001)]
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(7), b""))
    assert commit(harness).removed == [handle(7)]


def test_handles_are_reserved_a_block_ahead_and_again_at_half() -> None:
    harness = durable()
    state = harness.state
    assert state.take_store_write() is None
    state.reserve_handles(RESERVE // 2)  # as if half the block were used
    assert state.take_store_write() is None
    state.reserve_handles(RESERVE // 2 + 1)  # one more: past half
    write = take(harness)
    assert write.handle_limit == RESERVE // 2 + 2 + RESERVE
    # while the reservation is written, no second one is asked for
    state.reserve_handles(RESERVE)
    assert state.take_store_write() is None
    state.store_failed(write, b"down", harness.now)
    # a failed reservation is asked for again
    assert take(harness).handle_limit == RESERVE + 1 + RESERVE


def test_a_memory_server_never_asks_the_store_for_anything() -> None:
    harness = Harness()
    client = harness.connect()
    assert client.request(bg(b"x")) == [JobCreated(handle(1))]
    assert harness.state.take_store_write() is None
    assert not harness.state.store_work


@pytest.mark.parametrize("count", [1, 50])
def test_store_work_says_when_there_is_a_transaction_to_take(count: int) -> None:
    harness = durable()

    def work() -> bool:  # a call: mypy would narrow the property
        return harness.state.store_work

    assert not work()
    harness.connect().send(*(bg(b"%d" % n) for n in range(count)))
    assert work()
    assert len(commit(harness).added) == count
    assert harness.state.take_store_write() is None


def test_a_cancelled_pending_job_whose_commit_fails_is_gone_once() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x"))
    assert harness.state.cancel_job(handle(1))
    failed = fail(harness, b"down")
    assert (failed.added, failed.removed) == ([], [])  # never written: nothing to delete
    assert client.received() == [Error(b"QUEUE_ERROR", b"down")]
    assert harness.state.jobs_queued == 0
    assert harness.state.take_store_write() is None


class _Observer:
    def __init__(self) -> None:
        self.created: list[bytes] = []
        self.ended: list[tuple[bytes, str]] = []

    def job_created(self, job: Job) -> None:
        self.created.append(job.handle)

    def job_ended(self, job: Job, outcome: JobOutcome, result: bytes) -> None:
        self.ended.append((job.handle, outcome.value))


def test_the_observer_sees_durable_jobs_created_and_refused_ones_lost() -> None:
    harness = durable()
    observer = harness.state.observer = _Observer()
    harness.connect().send(bg(b"kept"), bg(b"refused", function=b"g"))
    write = take(harness)
    assert observer.created == [handle(1), handle(2)]
    harness.state.store_failed(write, b"down", harness.now)
    assert observer.ended == [(handle(1), "lost"), (handle(2), "lost")]


def test_a_transaction_adds_at_most_a_thousand_jobs_and_the_rest_follow_in_order() -> None:
    harness = durable()
    client = harness.connect()
    client.send(*(bg(b"%d" % n) for n in range(2_500)))
    # a job of the third batch is cancelled: its deletion must not go before its row
    assert harness.state.cancel_job(handle(2_400))
    first, second, third = commit(harness), commit(harness), commit(harness)
    assert [len(write.added) for write in (first, second)] == [1_000, 1_000]
    assert [job.handle for job in first.added][:2] == [handle(1), handle(2)]
    assert second.added[0].handle == handle(1_001)
    assert (first.removed, second.removed) == ([], [])
    # in the last one it was never written: neither its row nor its deletion
    assert len(third.added) == 499
    assert third.removed == []
    assert harness.state.take_store_write() is None
    replies = client.received()
    assert replies == [JobCreated(handle(n)) for n in range(1, 2_501)]


def test_a_commit_acknowledged_in_parts_answers_each_part_in_order() -> None:
    harness = durable()
    client, other = harness.connect(), harness.connect()
    worker = harness.worker(b"f")
    client.send(*(bg(b"%d" % n) for n in range(1, 501)))
    harness.state.cancel_job(handle(1))  # acknowledged, never written
    client.send(EchoReq(b"after"))  # waits behind every acknowledgement
    write = take(harness)
    parts = write.parts(200)
    assert [len(part.jobs) for part in parts] == [200, 200, 100]
    assert [part.jobs for part in parts] == [
        write.jobs[:200],
        write.jobs[200:400],
        write.jobs[400:],
    ]
    assert [part.added for part in parts] == [write.added, [], []]
    assert [part.handle_limit for part in parts] == [write.handle_limit, None, None]
    assert write.parts(500) == [write]
    harness.state.store_written(parts[0], harness.now)
    assert client.received() == [JobCreated(handle(n)) for n in range(1, 201)]
    # between parts, other connections are served and the first part's jobs run
    assert other.request(EchoReq(b"x")) == [EchoRes(b"x")]
    assert worker.request(GrabJob())[0] == JobAssign(handle(2), b"f", b"2")
    assert worker.request(GrabJob())[0] == JobAssign(handle(3), b"f", b"3")
    for part in parts[1:]:
        harness.state.store_written(part, harness.now)
    assert client.received() == [
        *(JobCreated(handle(n)) for n in range(201, 501)),
        EchoRes(b"after"),
    ]


# --- a broken stream behind pending replies -------------------------------------------------


def test_a_protocol_error_behind_a_commit_comes_after_its_reply_and_then_closes() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x"), EchoReq(b"before"))  # the echo waits behind the commit too
    error = UnknownPacketType("unknown packet type 99 (size 0)", offset=20)
    harness.state.protocol_error(client.conn, error, harness.now)
    assert (client.conn.broken, client.conn.closing) == (True, False)
    harness.state.protocol_error(client.conn, error, harness.now)  # told once is enough
    client.send(EchoReq(b"ignored"))  # (the I/O layer reads nothing more anyway)
    assert client.received() == []
    harness.state.dirty.clear()
    commit(harness)
    assert client.conn in harness.state.dirty  # the I/O layer must look: it closes
    assert client.received() == [
        JobCreated(handle(1)),
        EchoRes(b"before"),
        Error(b"INVALID_COMMAND", str(error).encode()),
    ]
    assert client.conn.closing


def test_a_bad_magic_behind_a_commit_closes_after_it_without_an_answer() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x"))
    harness.state.protocol_error(client.conn, BadMagic("expected REQ", offset=28), harness.now)
    harness.state.dirty.clear()
    commit(harness)
    assert client.conn in harness.state.dirty
    assert client.received() == [JobCreated(handle(1))]
    assert client.conn.closing


def test_a_protocol_error_behind_a_commit_is_dropped_when_what_came_before_closed() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x"), TextLine(b"a b c d e f"))  # too many words: that line closes
    error = UnknownPacketType("unknown packet type 99 (size 0)", offset=20)
    harness.state.protocol_error(client.conn, error, harness.now)
    commit(harness)
    assert client.conn.closing
    # The job's handle, the admin line's ERR, and no ERROR for the later packet.
    assert (
        client.raw() == encode(JobCreated(handle(1))) + b"ERR TOO_MANY_ARGS Too+many+arguments\r\n"
    )


def test_a_protocol_error_behind_a_listing_waits_for_its_end() -> None:
    harness = durable()
    client = harness.connect()
    client.send(*(bg(b"%d" % n, b"u%d" % n) for n in range(SLICE_ROWS + 1)))
    commit(harness)
    client.received()
    admin = harness.connect()
    admin.admin(b"show jobs")
    assert admin.conn.listing is not None
    error = UnknownPacketType("unknown packet type 99 (size 0)", offset=10)
    harness.state.protocol_error(admin.conn, error, harness.now)
    assert (admin.conn.broken, admin.conn.closing) == (True, False)
    harness.state.continue_listing(admin.conn, harness.now)  # the last slice
    assert admin.conn.closing
    assert admin.raw().endswith(b".\n" + encode(Error(b"INVALID_COMMAND", str(error).encode())))


def test_a_job_and_a_store_write_show_their_fields() -> None:
    harness = durable()
    client = harness.connect()
    client.send(bg(b"x", b"u"))
    write = take(harness)
    (job,) = write.jobs
    assert repr(job).startswith(
        f"Job(handle={handle(1)!r}, function={job.function!r}, unique=b'u', data=b'x', "
        f"priority={job.priority!r}, background=True, reducer=b'', state={PENDING!r}, "
        "retries=0, numerator=0, denominator=0, clients=None, worker=None, timer=0, "
        "cancelled=False, stored=True, acks=["
    )
    assert repr(job).endswith(f"], queued_at={job.queued_at!r}, assigned_at=0.0)")
    assert repr(write) == (
        f"StoreWrite(added={write.added!r}, removed=[], handle_limit=None, "
        f"jobs={write.jobs!r}, due=[0.0])"
    )
