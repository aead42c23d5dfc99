"""The job server state's invariants, as checks any test can run after any step.

The stateful machine (``test_server_stateful.py``) runs them after every rule, and so
does the fuzz target (``tests/fuzz/test_fuzz_state.py``):

* every job is in exactly one place: queued once in its function's queue, held by
  exactly one worker, or waiting in the timer heap (HELD and PENDING jobs are in none
  of them); gone jobs are nowhere;
* the per-function and global counters, and the admin ``status`` listing, equal
  the numbers recounted from the jobs themselves;
* the unique-key index holds exactly the live, uncancelled jobs with a unique;
* foreground jobs and the connections waiting for them point at each other;
* no queued job waits while a sleeping worker that can run it has had no NOOP
  (with ``worker_wakeup`` N: while no worker that can run it is awake or woken).
"""

from __future__ import annotations

from collections import Counter

from trio_gearman._proto.server.model import FUTURE, HELD, PENDING, QUEUED, RUNNING, Job
from trio_gearman._proto.server.state import ServerState

from .test_server_state_harness import Peer

__all__ = [
    "check_attachments",
    "check_counters",
    "check_job_places",
    "check_sleepers",
    "check_state",
    "check_unique_index",
]


def check_state(state: ServerState, admin: Peer, worker_wakeup: int = 0) -> None:
    """Every invariant below; ``admin`` is a connection that only sends admin lines."""
    check_job_places(state)
    check_counters(state, admin)
    check_unique_index(state)
    check_attachments(state)
    check_sleepers(state, worker_wakeup)


def check_job_places(state: ServerState) -> None:
    """Every job is in exactly one place, and the places hold only live jobs."""
    jobs = {job.handle: job for job in state.jobs}
    queued: Counter[int] = Counter()
    for function in state.functions:
        for priority, queue in enumerate(function.queues):
            for job in queue or ():
                if job.state == QUEUED:
                    assert job.priority == priority
                    assert job.function is function
                    queued[id(job)] += 1
    running: Counter[int] = Counter()
    for conn in state.connections:
        assert not conn.closed
        for handle, job in conn.running.items():
            assert job.handle == handle
            assert job.worker is conn
            running[id(job)] += 1
    timers = {id(job) for _, seq, job in state._timers if job.timer == seq}
    for job in jobs.values():
        places = (queued[id(job)], running[id(job)], id(job) in timers and job.state == FUTURE)
        if job.state == QUEUED:
            assert places == (1, 0, False)
        elif job.state == RUNNING:
            assert places[:2] == (0, 1)
        elif job.state in (HELD, PENDING):
            assert places == (0, 0, False), job
        else:
            assert job.state == FUTURE, job
            assert places == (0, 0, True)
    assert sum(queued.values()) + sum(running.values()) <= len(jobs)
    assert set(queued) | set(running) <= {id(job) for job in jobs.values()}


def check_counters(state: ServerState, admin: Peer) -> None:
    """The counts (per function, per state, per priority) and ``status`` match the jobs."""
    jobs = list(state.jobs)
    per_function: dict[bytes, list[Job]] = {f.name: [] for f in state.functions}
    for job in jobs:
        per_function[job.function.name].append(job)
    for function in state.functions:
        mine = per_function[function.name]
        for priority in range(3):
            count = sum(1 for j in mine if j.state == QUEUED and j.priority == priority)
            assert function.counts[priority] == count
            assert (function in state._ready[priority]) == (count > 0)
            held = sum(1 for j in mine if j.state == HELD and j.priority == priority)
            assert function.held[priority] == held
        assert function.running == sum(1 for j in mine if j.state == RUNNING)
        assert function.future == sum(1 for j in mine if j.state == FUTURE)
        assert function.pending == sum(1 for j in mine if j.state == PENDING)
        assert set(function.workers) == {c for c in state.connections if function in c.abilities}
    assert state.jobs_running == sum(1 for j in jobs if j.state == RUNNING)
    waiting = (QUEUED, FUTURE, HELD, PENDING)
    assert state.jobs_queued == sum(1 for j in jobs if j.state in waiting)
    expected = b"".join(
        b"%s\t%d\t%d\t%d\n"
        % (
            function.name,
            len(per_function[function.name]),
            sum(1 for j in per_function[function.name] if j.state == RUNNING),
            sum(1 for c in state.connections if function in c.abilities),
        )
        for function in state.functions
    )
    assert admin.admin(b"status") == expected + b".\n"


def check_unique_index(state: ServerState) -> None:
    """The unique-key indexes hold exactly the live, uncancelled jobs with a unique."""
    live = {id(job) for job in state.jobs}
    indexed = []
    for function in state.functions:
        for key, job in function.uniques.items():
            assert id(job) in live
            assert not job.cancelled
            assert job.function is function
            assert job.unique == key
            indexed.append(job)
        for key, job in function.by_data.items():
            assert id(job) in live
            assert not job.cancelled
            assert job.function is function
            assert job.unique == b"-"
            assert job.data == key
            indexed.append(job)
    expected = [job for job in state.jobs if job.unique and not job.cancelled]
    assert sorted(id(j) for j in indexed) == sorted(id(j) for j in expected)


def check_attachments(state: ServerState) -> None:
    """Foreground jobs and the open connections waiting for them agree."""
    for job in state.jobs:
        for client in job.clients or ():
            assert not client.closed
            assert job in client.attached
        if job.state == QUEUED and not job.background:
            assert job.clients, "an abandoned foreground job is still queued"
    for conn in state.connections:
        for job in conn.attached:
            assert state.get_job(job.handle) is job
            assert job.clients is not None
            assert conn in job.clients


def check_sleepers(state: ServerState, worker_wakeup: int = 0) -> None:
    """No queued job waits while a capable sleeping worker has had no NOOP."""
    for function in state.functions:
        if not any(function.counts):
            continue
        capable = list(function.workers)
        if worker_wakeup == 0:
            for conn in capable:
                assert not (conn.sleeping and not conn.noop_sent), (conn, function)
        elif capable:
            assert any(not c.sleeping or c.noop_sent for c in capable), function
