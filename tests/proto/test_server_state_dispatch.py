"""The job server state machine: which worker gets which job, and waking sleepers."""

from __future__ import annotations

import pytest

from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    CantDo,
    Error,
    GrabJob,
    GrabJobUniq,
    JobAssign,
    JobCreated,
    Message,
    NoJob,
    Noop,
    PreSleep,
    Priority,
    ResetAbilities,
    SubmitJob,
    WorkComplete,
)

from .test_server_state_harness import Harness, Peer, handle

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


def _grab_all(worker: Peer, *, limit: int = 10_000) -> list[bytes]:
    """Grab and complete jobs until NO_JOB; the payloads in the order received."""
    payloads: list[bytes] = []
    for _ in range(limit):
        (reply,) = worker.request(GrabJob())
        if isinstance(reply, NoJob):
            return payloads
        assert isinstance(reply, JobAssign)
        payloads.append(reply.data)
        worker.send(WorkComplete(reply.handle, b""))
    raise AssertionError("more jobs than expected")


def _submit(peer: Peer, function: bytes, data: bytes, priority: Priority = NORMAL) -> None:
    peer.send(SubmitJob(function, b"", data, priority, background=True))


# --- priorities and fairness ------------------------------------------------------------


def test_priorities_high_normal_low_fifo_within_each() -> None:
    harness = Harness()
    client = harness.connect()
    order = [(LOW, b"l1"), (NORMAL, b"n1"), (HIGH, b"h1"), (LOW, b"l2"), (HIGH, b"h2")]
    order += [(NORMAL, b"n2")]
    for priority, data in order:
        _submit(client, b"f", data, priority)
    assert _grab_all(harness.worker(b"f")) == [b"h1", b"h2", b"n1", b"n2", b"l1", b"l2"]


def test_priority_applies_across_a_workers_functions() -> None:
    harness = Harness()
    client = harness.connect()
    _submit(client, b"a", b"a-low", LOW)
    _submit(client, b"b", b"b-normal", NORMAL)
    _submit(client, b"c", b"c-high", HIGH)
    worker = harness.worker(b"a", b"b", b"c")
    assert _grab_all(worker) == [b"c-high", b"b-normal", b"a-low"]


@pytest.mark.parametrize("others", [0, 10])
def test_round_robin_between_a_workers_functions(others: int) -> None:
    # `others` busy functions the worker cannot do make the set of non-empty
    # functions larger than the worker's abilities (the other search path).
    harness = Harness()
    client = harness.connect()
    for i in range(others):
        _submit(client, b"other-%d" % i, b"x")
    for i in range(3):
        _submit(client, b"a", b"a%d" % i)
    for i in range(3):
        _submit(client, b"b", b"b%d" % i)
    worker = harness.worker(b"a", b"b")
    assert _grab_all(worker) == [b"a0", b"b0", b"a1", b"b1", b"a2", b"b2"]


def test_a_busy_function_does_not_starve_another_under_load() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"busy", b"rare")
    _submit(client, b"rare", b"rare")
    got = []
    for i in range(5):
        _submit(client, b"busy", b"busy%d" % i)
        _submit(client, b"busy", b"more%d" % i)
        (reply,) = worker.request(GrabJob())
        assert isinstance(reply, JobAssign)
        got.append(reply.data)
        worker.send(WorkComplete(reply.handle, b""))
    assert b"rare" in got[:2]


def test_workers_only_get_jobs_of_their_functions() -> None:
    harness = Harness()
    client = harness.connect()
    _submit(client, b"f", b"f-job")
    _submit(client, b"g", b"g-job")
    assert _grab_all(harness.worker(b"g")) == [b"g-job"]
    assert _grab_all(harness.worker(b"h")) == []
    assert _grab_all(harness.connect()) == []
    assert _grab_all(harness.worker(b"f")) == [b"f-job"]


def test_many_functions_with_most_empty() -> None:
    harness = Harness()
    client = harness.connect()
    names = [b"fn-%d" % i for i in range(3000)]
    big = harness.worker(*names)
    small = harness.worker(names[1234])
    for name in (names[2999], names[0], names[1234]):
        _submit(client, name, name)
    assert _grab_all(small) == [names[1234]]
    assert sorted(_grab_all(big)) == sorted([names[2999], names[0]])


def test_several_grabs_in_flight() -> None:
    harness = Harness()
    client = harness.connect()
    for i in range(3):
        _submit(client, b"f", b"%d" % i)
    worker = harness.worker(b"f")
    replies = worker.request(GrabJob(), GrabJob(), GrabJob(), GrabJob())
    assert [type(r) for r in replies] == [JobAssign, JobAssign, JobAssign, NoJob]
    assert [r.data for r in replies[:3]] == [b"0", b"1", b"2"]  # type: ignore[union-attr]
    assert harness.state.jobs_running == 3
    assert worker.request(*(WorkComplete(r.handle, b"") for r in replies[:3])) == []  # type: ignore[union-attr]
    assert harness.state.jobs_running == 0


def test_can_do_is_deduplicated() -> None:
    harness = Harness()
    worker = harness.worker(b"f", b"f", b"f")
    worker.send(CanDoTimeout(b"f", 5000))
    assert worker.conn.ability_list == [next(iter(harness.state.functions))]
    assert harness.connect().admin(b"status") == b"f\t0\t0\t1\n.\n"
    worker.send(CantDo(b"f"))
    assert harness.connect().admin(b"status") == b".\n"


# --- CANT_DO and RESET_ABILITIES ------------------------------------------------------------


def test_cant_do_requeues_that_functions_running_jobs() -> None:
    harness = Harness()
    client = harness.connect()
    _submit(client, b"f", b"f-job")
    _submit(client, b"g", b"g-job")
    worker = harness.worker(b"f", b"g")
    worker.send(GrabJob(), GrabJob())
    worker.received()
    assert worker.request(CantDo(b"f"), CantDo(b"unknown")) == []
    assert harness.state.jobs_running == 1
    assert harness.state.jobs_queued == 1
    (job,) = (j for j in harness.state.jobs if j.function.name == b"f")
    assert job.retries == 1
    # The worker no longer holds the f job: its late result is refused.
    assert worker.request(WorkComplete(handle(1), b"")) == [
        Error(b"JOB_NOT_FOUND", b"Job given in work result not found")
    ]
    assert _grab_all(harness.worker(b"f")) == [b"f-job"]
    assert worker.request(WorkComplete(handle(2), b"")) == []


def test_reset_abilities_requeues_every_running_job() -> None:
    harness = Harness()
    client = harness.connect()
    _submit(client, b"f", b"f-job")
    _submit(client, b"g", b"g-job")
    worker = harness.worker(b"f", b"g")
    worker.send(GrabJob(), GrabJob(), ResetAbilities())
    assert harness.state.jobs_running == 0
    assert harness.state.jobs_queued == 2
    assert worker.conn.abilities == {}
    assert worker.request(GrabJob())[-1] == NoJob()
    assert sorted(_grab_all(harness.worker(b"f", b"g"))) == [b"f-job", b"g-job"]


# --- sleeping and waking ------------------------------------------------------------------------


def test_pre_sleep_with_a_runnable_job_gets_noop_at_once() -> None:
    harness = Harness()
    _submit(harness.connect(), b"f", b"x")
    worker = harness.worker(b"f")
    assert worker.request(PreSleep()) == [Noop()]


def test_one_noop_per_sleep_until_the_worker_grabs() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"f")
    assert worker.request(PreSleep()) == []
    _submit(client, b"f", b"1")
    assert worker.received() == [Noop()]
    _submit(client, b"f", b"2")
    assert worker.received() == []
    assert [type(m) for m in worker.request(GrabJob(), GrabJob(), GrabJob())] == [
        JobAssign,
        JobAssign,
        NoJob,
    ]
    worker.send(PreSleep())
    _submit(client, b"f", b"3")
    assert worker.received() == [Noop()]


def test_pre_sleep_again_after_a_noop_starts_a_new_sleep() -> None:
    # gearmand never wakes such a worker again; we wake it for the next job.
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"f")
    worker.send(PreSleep())
    _submit(client, b"f", b"1")
    assert worker.received() == [Noop()]
    other = harness.worker(b"f")
    other.send(GrabJob())
    assert worker.request(PreSleep()) == []
    _submit(client, b"f", b"2")
    assert worker.received() == [Noop()]


def test_no_noop_for_work_the_worker_cannot_get() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"f")
    idle = harness.connect()
    worker.send(PreSleep())
    idle.send(PreSleep())
    _submit(client, b"g", b"x")
    assert worker.received() == []
    assert idle.received() == []


def test_every_sleeper_is_woken_by_default() -> None:
    harness = Harness()
    client = harness.connect()
    workers = [harness.worker(b"f") for _ in range(5)]
    busy = harness.worker(b"f")
    for worker in workers:
        worker.send(PreSleep())
    _submit(client, b"f", b"x")
    assert [w.received() for w in workers] == [[Noop()]] * 5
    assert busy.received() == []


def test_a_sleeper_that_woke_by_itself_gets_no_noop() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"f")
    worker.send(PreSleep())
    assert worker.request(GrabJob()) == [NoJob()]  # awake again, still among the sleepers
    _submit(client, b"f", b"x")
    assert worker.received() == []


def test_worker_wakeup_limits_noops_and_rotates_over_sleepers() -> None:
    harness = Harness(worker_wakeup=2)
    client = harness.connect()
    workers = [harness.worker(b"f") for _ in range(5)]
    for worker in workers:
        worker.send(PreSleep())

    def woken() -> list[int]:
        return [i for i, w in enumerate(workers) if w.received() == [Noop()]]

    _submit(client, b"f", b"1")
    assert woken() == [0, 1]
    _submit(client, b"f", b"2")
    assert woken() == [2, 3]
    _submit(client, b"f", b"3")
    assert woken() == [4]
    _submit(client, b"f", b"4")
    assert woken() == []


def test_a_worker_woken_for_one_function_is_skipped_for_another() -> None:
    harness = Harness(worker_wakeup=1)
    client = harness.connect()
    first, second = harness.worker(b"f", b"g"), harness.worker(b"g")
    first.send(PreSleep())
    second.send(PreSleep())
    _submit(client, b"f", b"1")
    _submit(client, b"g", b"2")  # the first sleeper of g already has its NOOP
    assert first.received() == [Noop()]
    assert second.received() == [Noop()]


def test_a_woken_worker_leaving_wakes_another() -> None:
    harness = Harness(worker_wakeup=1)
    client = harness.connect()
    first, second = harness.worker(b"f"), harness.worker(b"f")
    first.send(PreSleep())
    second.send(PreSleep())
    _submit(client, b"f", b"x")
    assert first.received() == [Noop()]
    assert second.received() == []
    first.close()
    assert second.received() == [Noop()]


def test_a_woken_worker_dropping_the_function_wakes_another() -> None:
    harness = Harness(worker_wakeup=1)
    client = harness.connect()
    first, second = harness.worker(b"f"), harness.worker(b"f")
    first.send(PreSleep())
    second.send(PreSleep())
    _submit(client, b"f", b"x")
    assert first.received() == [Noop()]
    first.send(CantDo(b"f"))
    assert second.received() == [Noop()]


def test_sleeping_worker_registering_a_function_with_jobs_is_woken() -> None:
    harness = Harness()
    client = harness.connect()
    _submit(client, b"g", b"x")
    worker = harness.worker(b"f")
    worker.send(PreSleep())
    assert worker.received() == []
    assert worker.request(CanDo(b"h")) == []
    assert worker.request(CanDo(b"g")) == [Noop()]


def test_sleeping_worker_woken_for_a_function_registered_while_asleep() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"f")
    worker.send(PreSleep(), CanDo(b"g"))
    _submit(client, b"g", b"x")
    assert worker.received() == [Noop()]


def test_requeued_jobs_wake_sleepers() -> None:
    harness = Harness()
    client = harness.connect()
    _submit(client, b"f", b"x")
    holder = harness.worker(b"f")
    holder.send(GrabJob())
    sleeper = harness.worker(b"f")
    assert sleeper.request(PreSleep()) == []
    holder.close()
    assert sleeper.received() == [Noop()]
    assert _grab_all(sleeper) == [b"x"]


def test_foreground_and_background_jobs_share_the_queue() -> None:
    harness = Harness()
    client = harness.connect()
    replies: list[Message] = client.request(
        SubmitJob(b"f", b"", b"fg"), SubmitJob(b"f", b"", b"bg", background=True)
    )
    assert replies == [JobCreated(handle(1)), JobCreated(handle(2))]
    assert _grab_all(harness.worker(b"f")) == [b"fg", b"bg"]


def test_grab_job_uniq_clears_sleep_like_grab_job() -> None:
    harness = Harness()
    client = harness.connect()
    worker = harness.worker(b"f")
    worker.send(PreSleep())
    _submit(client, b"f", b"1")
    assert worker.received() == [Noop()]
    worker.send(GrabJobUniq(), GrabJobUniq(), PreSleep())
    worker.received()
    _submit(client, b"f", b"2")
    assert worker.received() == [Noop()]
