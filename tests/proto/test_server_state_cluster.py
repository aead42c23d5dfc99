"""A cluster member's state: committed background jobs are left to the shared store.

The store is played by the test, as in ``test_server_state_durable.py``; the
member's claims are ``restore_job`` calls, as the I/O layer makes them.
"""

from __future__ import annotations

import itertools

import pytest

from trio_gearman._proto import TextLine
from trio_gearman._proto._packets import (
    CantDo,
    GrabJob,
    JobAssign,
    JobCreated,
    NoJob,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._proto.server.cluster import ClaimPacer, ClusterCounts, ClusterView, claim_demand
from trio_gearman._proto.server.listing import SLICE_ROWS

from .test_server_state_durable import bg, commit, take
from .test_server_state_harness import Harness, Peer


def member() -> Harness:
    harness = Harness(durable=True, cluster=True)
    commit(harness)  # the handle reservation
    return harness


def test_a_committed_background_job_is_acknowledged_then_left_to_the_store() -> None:
    harness = member()
    client = harness.connect()
    worker = harness.worker(b"f")
    assert client.request(bg(b"payload")) == []
    write = commit(harness)
    assert [job.data for job in write.added] == [b"payload"]
    assert client.received() == [JobCreated(write.added[0].handle)]
    # Not queued here: any member may claim it.
    assert worker.request(GrabJob()) == [NoJob()]
    assert harness.state.jobs_queued == 0
    assert harness.state.get_job(write.added[0].handle) is None
    # Nor deleted from the store.
    assert harness.state.take_store_write() is None


def test_background_submissions_do_not_coalesce_here() -> None:
    harness = member()
    client = harness.connect()
    assert client.request(bg(b"one", b"key"), bg(b"two", b"key")) == []
    write = commit(harness)
    assert [job.data for job in write.added] == [b"one", b"two"]
    assert len(client.received()) == 2


def test_submissions_the_store_coalesced_get_the_existing_jobs_handle() -> None:
    harness = Harness(durable=True, cluster=True, metrics=True)
    commit(harness)
    first, second = harness.connect(), harness.connect()
    assert first.request(bg(b"one", b"key"), bg(b"new")) == []
    assert second.request(bg(b"two", b"key")) == []
    write = take(harness)
    one, new, two = (job.handle for job in write.added)
    # The store found a live job of the cluster for "one", and "two" joined "one".
    harness.state.store_written(write, harness.now, {one: b"H:other:m2:9", two: b"H:other:m2:9"})
    assert first.received() == [JobCreated(b"H:other:m2:9"), JobCreated(new)]
    assert second.received() == [JobCreated(b"H:other:m2:9")]
    # Nothing of them stays here, nor is deleted.
    assert harness.state.get_job(one) is None
    assert harness.state.take_store_write() is None
    function = harness.state.get_function(b"f")
    assert function is None  # no job, no worker: forgotten
    # A metrics server counts them as coalesced, not as new jobs.
    harness.worker(b"f")
    client = harness.connect()
    client.request(bg(b"three", b"k"), bg(b"four"))
    write = take(harness)
    harness.state.store_written(write, harness.now, {write.added[0].handle: b"H:x:1"})
    stats = harness.state.get_function(b"f")
    assert stats is not None
    assert stats.stats is not None
    assert (stats.stats.coalesced, stats.stats.submitted[4]) == (1, 1)


def test_foreground_jobs_stay_here_and_coalesce() -> None:
    harness = member()
    first, second = harness.connect(), harness.connect()
    (created,) = first.request(SubmitJob(b"f", b"key", b"data"))
    assert isinstance(created, JobCreated)
    assert second.request(SubmitJob(b"f", b"key", b"data")) == [created]
    assert harness.state.take_store_write() is None
    assert harness.state.jobs_queued == 1


def test_a_claimed_job_runs_here_and_its_end_deletes_its_row() -> None:
    harness = member()
    worker = harness.worker(b"f")
    harness.state.restore_job(b"H:other:m2:5", b"f", b"", b"claimed", now=harness.now)
    assert worker.request(GrabJob()) == [JobAssign(b"H:other:m2:5", b"f", b"claimed")]
    worker.send(WorkComplete(b"H:other:m2:5", b"done"))
    assert harness.state.removals_pending() == [b"H:other:m2:5"]
    assert take(harness).removed == [b"H:other:m2:5"]
    assert harness.state.removals_pending() == []


def test_the_handle_prefix_can_be_set_before_serving() -> None:
    harness = member()
    harness.state.set_handle_prefix(b"H:host:m7")
    client = harness.connect()
    client.request(bg(b"x"))
    assert commit(harness).added[0].handle == b"H:host:m7:1"


def test_claim_demand_counts_what_the_workers_here_have() -> None:
    harness = member()
    state = harness.state
    assert claim_demand(state.functions, 2) == []
    harness.worker(b"f")
    harness.worker(b"f", b"g")
    state.create_function(b"idle")  # no workers: no demand
    assert claim_demand(state.functions, 2) == [(b"f", 4), (b"g", 2)]
    for n in range(3):
        state.restore_job(b"H:o:%d" % n, b"f", b"", b"", now=harness.now)
    assert claim_demand(state.functions, 2) == [(b"f", 1), (b"g", 2)]
    state.restore_job(b"H:o:9", b"f", b"", b"", now=harness.now)
    assert claim_demand(state.functions, 2) == [(b"g", 2)]
    assert claim_demand(state.functions, 1) == [(b"g", 1)]
    # A running job makes room for another.
    worker = harness.worker(b"h")
    state.restore_job(b"H:o:10", b"h", b"", b"", now=harness.now)
    assert claim_demand(state.functions, 1) == [(b"g", 1)]
    assert worker.request(GrabJob()) == [JobAssign(b"H:o:10", b"h", b"")]
    assert claim_demand(state.functions, 1) == [(b"g", 1), (b"h", 1)]


def test_claimed_jobs_whose_workers_left_are_given_up() -> None:
    harness = member()
    worker = harness.worker(b"f", b"g")
    other = harness.worker(b"g")
    state = harness.state
    assert state.release_unserved() == []
    state.restore_job(b"H:o:1", b"f", b"", b"one", now=harness.now)
    state.restore_job(b"H:o:2", b"f", b"", b"two", priority=0, now=harness.now)
    state.restore_job(b"H:o:3", b"g", b"", b"three", now=harness.now)
    waited = state.restore_job(b"H:o:4", b"f", b"key", b"four", now=harness.now)
    client = harness.connect()
    client.request(SubmitJob(b"f", b"key", b"four"))  # a client waits for it: kept
    assert waited.clients is not None
    assert state.release_unserved() == []  # the worker is still here
    worker.send(CantDo(b"f"))
    assert sorted(state.release_unserved()) == [b"H:o:1", b"H:o:2"]
    assert state.get_job(b"H:o:1") is None
    # Given up without a deletion: the store keeps the rows for other members.
    assert harness.state.take_store_write() is None
    assert state.get_job(b"H:o:4") is waited
    assert other.request(GrabJob()) == [JobAssign(b"H:o:3", b"g", b"three")]


def test_every_queued_claimed_job_can_be_given_up() -> None:
    harness = member()
    worker = harness.worker(b"f")
    state = harness.state
    state.restore_job(b"H:o:1", b"f", b"", b"runs", now=harness.now)
    state.restore_job(b"H:o:2", b"f", b"", b"waits", now=harness.now)
    assert worker.request(GrabJob()) == [JobAssign(b"H:o:1", b"f", b"runs")]
    assert state.release_unserved() == []
    assert state.release_unserved(served_too=True) == [b"H:o:2"]
    assert state.get_job(b"H:o:1") is not None  # a running job stays
    assert worker.request(GrabJob()) == [NoJob()]


def test_the_admin_listings_add_the_clusters_view_to_this_members_jobs() -> None:
    harness = member()
    state = harness.state
    admin = harness.connect()
    harness.worker(b"f")
    state.restore_job(b"H:o:1", b"f", b"", b"claimed here", priority=0, now=harness.now)
    client = harness.connect()
    (fg,) = client.request(SubmitJob(b"local", b"", b"waits here"))
    assert isinstance(fg, JobCreated)
    view = ClusterView(
        {
            b"f": ClusterCounts((1, 2, 3), 4),
            b"elsewhere": ClusterCounts((0, 5, 0), 1),
        },
        [b"H:o:1", b"H:o:2", b"H:o:3"],
    )
    state.set_cluster_view(view)
    # f: one queued here + 6 waiting + 4 held by other members (running).
    assert admin.admin(b"status") == (b"f\t11\t4\t1\nlocal\t1\t0\t0\nelsewhere\t6\t1\t0\n.\n")
    assert admin.admin(b"prioritystatus") == (
        b"f\t2\t2\t3\t1\nlocal\t0\t1\t0\t0\nelsewhere\t0\t5\t0\t0\n.\n"
    )
    # The job claimed here is listed once, as this member's.
    assert admin.admin(b"show jobs") == (
        b"H:o:1\t0\t0\t1\n" + fg.handle + b"\t0\t0\t0\nH:o:2\t0\t0\t1\nH:o:3\t0\t0\t1\n.\n"
    )
    assert admin.admin(b"show unique jobs") == b"\n\n.\n"  # this member's alone
    state.set_cluster_view(None)
    assert admin.admin(b"status") == b"f\t1\t0\t1\nlocal\t1\t0\t0\n.\n"


def test_a_function_of_the_view_that_comes_here_while_listed_is_listed_once() -> None:
    harness = member()
    state = harness.state
    admin = harness.connect()
    names = [b"v%04d" % n for n in range(SLICE_ROWS + 10)]
    state.set_cluster_view(ClusterView({name: ClusterCounts((1, 0, 0), 0) for name in names}))
    for command in (b"status", b"prioritystatus"):
        admin.send(TextLine(command))
        first = admin.raw()
        assert first.count(b"\n") == SLICE_ROWS
        # A job of the last function is claimed here before the last slice is made.
        job = state.restore_job(b"H:o:" + command, names[-1], b"", b"", now=harness.now)
        state.continue_listing(admin.conn, harness.now)
        rest = admin.raw()
        assert rest.count(b"\n") == 11
        if command == b"status":
            assert rest.endswith(names[-1] + b"\t2\t0\t0\n.\n")
        else:
            assert rest.endswith(names[-1] + b"\t1\t1\t0\t0\n.\n")
        state.cancel_job(job.handle)


_HANDLES = itertools.count(1000)


def _drain(worker: Peer) -> None:
    """``worker`` runs every job queued for it, at once."""
    while True:
        reply = worker.request(GrabJob())[0]
        if not isinstance(reply, JobAssign):
            return
        worker.send(WorkComplete(reply.handle, b""))


def _claim(harness: Harness, pacer: ClaimPacer, now: float) -> int:
    """One claim round with a table that holds plenty: the jobs claimed for ``f``."""
    wanted = dict(pacer.demand(harness.state.functions, now))
    count = wanted.get(b"f", 0)
    for _ in range(count):
        harness.state.restore_job(b"H:o:%d" % next(_HANDLES), b"f", b"", b"", now=now)
    pacer.got(b"f", count)
    return count


def test_the_pacer_starts_low_and_follows_fast_workers_up_to_its_maximum() -> None:
    harness = member()
    worker = harness.worker(b"f")
    harness.worker(b"f")
    pacer = ClaimPacer(low=2, high=16, horizon=0.05, smoothing=0.25)
    now = 0.0
    counts = []
    for _ in range(400):  # workers that take every job at once, a round every 4 ms
        counts.append(_claim(harness, pacer, now))
        _drain(worker)
        now += 0.004
    assert counts[0] == 4  # 2 per worker
    assert counts == sorted(counts)  # only up while the workers keep up
    assert counts[-1] == 32  # 16 per worker, the maximum
    assert pacer.rate(b"f") > 16 * 2 / 0.05


def test_the_pacer_keeps_few_jobs_here_for_slow_workers() -> None:
    harness = member()
    worker = harness.worker(b"f")
    pacer = ClaimPacer(low=2, high=64)
    now = 0.0
    counts = []
    for round_ in range(200):  # one job taken a second: the rest waits here
        counts.append(_claim(harness, pacer, now))
        if round_ % 250 == 0:
            assert isinstance(worker.request(GrabJob())[0], JobAssign)
        now += 0.004
    assert sum(counts) == 3  # the two of the start, then one for the job taken
    assert pacer.rate(b"f") < 20


def test_the_pacer_forgets_functions_without_workers_here() -> None:
    harness = member()
    worker = harness.worker(b"f")
    pacer = ClaimPacer(low=1, high=8)
    now = 0.0
    for _ in range(100):
        _claim(harness, pacer, now)
        _drain(worker)
        now += 0.004
    harness.state.create_function(b"idle")  # no workers: no demand, no estimate
    assert pacer.demand(harness.state.functions, now) == [(b"f", 8)]
    assert pacer.demand(harness.state.functions, now) == [(b"f", 8)]  # no time passed
    assert pacer.rate(b"idle") == 0.0
    worker.send(CantDo(b"f"))
    assert pacer.demand(harness.state.functions, now) == []
    assert pacer.rate(b"f") == 0.0
    pacer.got(b"f", 3)  # a claim that comes back after the worker left: ignored
    harness.worker(b"f")
    assert pacer.demand(harness.state.functions, now + 1) == [(b"f", 1)]


def test_the_pacer_checks_its_bounds() -> None:
    for low, high in ((0, 4), (5, 4)):
        with pytest.raises(ValueError, match="low <= high"):
            ClaimPacer(low=low, high=high)
    with pytest.raises(ValueError, match="positive"):
        ClaimPacer(horizon=0.0)


def test_a_job_claimed_here_before_its_commit_was_answered_runs_here() -> None:
    harness = member()
    state = harness.state
    client = harness.connect()
    worker = harness.worker(b"f")
    assert client.request(bg(b"mine"), bg(b"theirs")) == []
    write = take(harness)
    mine, theirs = (job.handle for job in write.added)
    # The claim round's answer comes back first: "mine" was claimed by this member.
    assert state.claimed_early(mine)
    assert not state.claimed_early(b"H:o:unknown")
    state.store_written(write, harness.now)
    assert client.received() == [JobCreated(mine), JobCreated(theirs)]
    assert state.get_job(theirs) is None  # left to the store, as usual
    assert worker.request(GrabJob()) == [JobAssign(mine, b"f", b"mine")]
    assert state.claimed_early(mine)  # running here: nothing changes
    worker.send(WorkComplete(mine, b""))
    assert take(harness).removed == [mine]


def test_a_failed_commit_forgets_its_early_claims() -> None:
    harness = member()
    state = harness.state
    client = harness.connect()
    client.request(bg(b"one"))
    write = take(harness)
    handle = write.added[0].handle
    assert state.claimed_early(handle)
    state.store_failed(write, b"gone", harness.now)
    assert state.get_job(handle) is None
    # A later job is left to the store as usual.
    client.received()
    client.request(bg(b"two"))
    later = commit(harness)
    assert state.get_job(later.added[0].handle) is None
