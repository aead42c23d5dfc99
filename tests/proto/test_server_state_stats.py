"""The job server state's counters for metrics (``ServerConfig(metrics=True)``)."""

from __future__ import annotations

from bisect import bisect_left

import pytest

from trio_gearman._proto._packets import (
    GrabJob,
    Priority,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
    WorkException,
    WorkFail,
)
from trio_gearman._proto.server.model import DURATION_BUCKETS, OUTCOMES, FunctionStats

from .test_server_state_harness import Harness, handle


def stats_of(harness: Harness, name: bytes = b"f") -> FunctionStats:
    function = harness.state.get_function(name)
    assert function is not None
    assert function.stats is not None
    return function.stats


def bucket(seconds: float) -> int:
    return bisect_left(DURATION_BUCKETS, seconds)


def ended(stats: FunctionStats) -> dict[str, int]:
    return {name: count for name, count in zip(OUTCOMES, stats.ended, strict=True) if count}


@pytest.mark.parametrize(
    "seconds", [0.0, DURATION_BUCKETS[0], DURATION_BUCKETS[0] + 1e-9, *DURATION_BUCKETS[1:], 1e6]
)
def test_every_duration_lands_in_the_bucket_whose_bound_it_does_not_exceed(seconds: float) -> None:
    # The first bucket is found by one comparison, the others by bisection: both
    # must agree with Prometheus' "le" (less than or equal) bounds.
    harness = Harness(metrics=True)
    harness.now = 0.0  # so that each difference below is exactly ``seconds``
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    harness.now += seconds
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    harness.now += seconds
    worker.send(WorkComplete(handle(1), b""))
    stats = stats_of(harness)
    expected = [0] * (len(DURATION_BUCKETS) + 1)
    expected[next((i for i, le in enumerate(DURATION_BUCKETS) if seconds <= le), -1)] = 1
    assert (stats.wait, stats.run) == (expected, expected)


def test_without_metrics_nothing_is_kept() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    function = harness.state.get_function(b"f")
    assert function is not None
    assert function.stats is None


def test_submissions_are_counted_by_kind_and_priority_and_coalescing() -> None:
    harness = Harness(metrics=True)
    client = harness.connect()
    client.send(
        SubmitJob(b"f", b"", b"1", priority=Priority.HIGH),
        SubmitJob(b"f", b"", b"2", priority=Priority.LOW, background=True),
        SubmitJob(b"f", b"", b"3", background=True),
        SubmitJob(b"f", b"u", b"4", background=True),
        SubmitJob(b"f", b"u", b"4", background=True),  # joins job 4
    )
    stats = stats_of(harness)
    assert stats.submitted == [1, 0, 0, 0, 2, 1]
    assert stats.coalesced == 1


def test_queue_wait_and_run_time_land_in_their_buckets() -> None:
    harness = Harness(metrics=True)
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    harness.now += 0.03
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    harness.now += 2.0
    worker.send(WorkComplete(handle(1), b""))
    stats = stats_of(harness)
    assert stats.wait[bucket(0.03)] == 1
    assert sum(stats.wait) == 1
    assert abs(stats.wait_sum - 0.03) < 1e-9
    assert stats.run[bucket(2.0)] == 1
    assert abs(stats.run_sum - 2.0) < 1e-9
    assert ended(stats) == {"completed": 1}


def test_every_outcome_and_retries_are_counted() -> None:
    harness = Harness(metrics=True, job_retries=2)
    client = harness.connect()
    client.send(*(SubmitJob(b"f", b"", b"%d" % n, background=True) for n in range(1, 5)))
    waiter = harness.connect()
    waiter.send(SubmitJob(b"f", b"", b"foreground"))  # job 5
    worker = harness.worker(b"f")
    worker.send(GrabJob(), GrabJob(), GrabJob())
    worker.send(WorkComplete(handle(1), b""), WorkFail(handle(2)), WorkException(handle(3), b"e"))
    assert harness.connect().admin(b"cancel job " + handle(4)) == b"OK\r\n"
    waiter.close()  # nobody waits for job 5 any more: lost
    stats = stats_of(harness)
    assert ended(stats) == {"completed": 1, "failed": 1, "exception": 1, "cancelled": 1, "lost": 1}
    assert sum(stats.run) == 3  # the jobs that ran to a result

    client.send(SubmitJob(b"f", b"", b"retried", background=True))  # job 6
    first = harness.worker(b"f")
    first.send(GrabJob())
    first.close()  # attempt 1 of 2: queued again
    assert stats.retried == 1
    second = harness.worker(b"f")
    second.send(GrabJob())
    second.close()  # attempt 2 of 2: given up
    assert stats.retried == 1
    assert ended(stats)["lost"] == 2


def test_an_epoch_jobs_wait_counts_from_when_it_came_due() -> None:
    harness = Harness(metrics=True)
    harness.state.wall_offset = 1_700_000_000.0 - harness.now
    harness.connect().send(SubmitJobEpoch(b"f", b"", 1_700_000_100, b"later"))
    harness.advance(100)
    harness.now += 0.2
    harness.worker(b"f").send(GrabJob())
    stats = stats_of(harness)
    assert stats.wait[bucket(0.2)] == 1


def test_an_admin_connection_is_marked() -> None:
    harness = Harness(metrics=True)
    admin = harness.connect()
    client = harness.connect()
    admin.admin(b"status")
    client.send(SubmitJob(b"f", b"", b"x"))
    assert (admin.conn.admin, client.conn.admin) == (True, False)
