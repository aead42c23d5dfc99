"""Jobs, queues and timers of the job server, apart from the wire protocol.

:class:`JobTable` holds the functions with their priority queues, every job by
handle, the unique-key indexes, the timer heap (epoch jobs, CAN_DO_TIMEOUT
deadlines) and the sleeping workers, and moves jobs between queued, running,
future and gone. :class:`~._server_state.ServerState` extends it with the
protocol: it turns requests into these moves and their replies.

Costs, for many functions and workers (gearmand issue #393):

* queueing, taking and finishing a job are dictionary and deque operations;
* a queued job leaves its deque lazily (a tombstone skipped when popped), so
  cancelling or abandoning one never scans a queue;
* finding a job for a worker probes ``min(its functions, non-empty functions)``
  functions per priority: thousands of empty functions cost nothing;
* a timer that is no longer needed stays in the heap until it surfaces, and the
  heap is compacted when stale entries outnumber live ones.

Two seams serve test tools (:mod:`trio_gearman.testing`) and cost one attribute
check each while unused: :attr:`JobTable.observer` is told of every job's start
and end, and :meth:`JobTable.set_hold` keeps the jobs of chosen functions away
from workers.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from .._codec import LARGE_PART, append_packet, pack_header
from .._packets import Error, Magic, Message, PacketType, WorkFail
from .cluster import ClusterView
from .model import (
    DURATION_BUCKETS,
    FUTURE,
    GONE,
    HELD,
    OUTCOMES,
    PENDING,
    QUEUED,
    RUNNING,
    ConnectionState,
    Function,
    FunctionStats,
    Job,
    JobNotice,
    JobObserver,
    JobOutcome,
    JobState,
    ServerConfig,
    StoreWrite,
)
from .names import MAX_REFUSALS_KEPT, Refusal

__all__ = ["JobTable"]

_RES_BYTES: Final = Magic.RES.value
_pack: Final = pack_header
_NOOP: Final = _pack(_RES_BYTES, PacketType.NOOP, 0)
_COMPACT_TIMERS_AT: Final = 1024
_COMPLETED: Final = JobOutcome.COMPLETED
_FAILED: Final = JobOutcome.FAILED
_EXCEPTION: Final = JobOutcome.EXCEPTION
_CANCELLED: Final = JobOutcome.CANCELLED
_FIRST_BOUND: Final = DURATION_BUCKETS[0]
assert [o.value for o in (_COMPLETED, _FAILED, _EXCEPTION, _CANCELLED)] == list(OUTCOMES[:4])


class JobTable:
    """The job server's functions, queues, jobs, timers and sleeping workers.

    Args:
        config: the server settings (read once, here).

    Attributes:
        config: the settings given.
        dirty: connections whose ``outgoing`` buffer gained bytes. The I/O layer
            takes them out and sends.
        observer: told of every job's start and end (a test hook), or ``None``.
        cluster_view: a cluster member's latest look at the shared queue beyond
            it (:meth:`set_cluster_view`), or ``None``.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.dirty: set[ConnectionState] = set()
        self.observer: JobObserver | None = None
        self.cluster_view: ClusterView | None = None
        # The test hook of set_hold(): which functions are held, and their jobs (in
        # the order they were held; entries no longer HELD are skipped).
        self._hold: Callable[[bytes], bool] | None = None
        self._held: list[Job] = []
        self._retries = max(config.job_retries, 0)
        self._wakeup = max(config.worker_wakeup, 0)
        self._durable = config.durable
        self._metrics = config.metrics
        # The store's next transaction: durable jobs to add, handles to delete.
        self._write = StoreWrite()
        self._notices: list[JobNotice] = []
        # Names refused since the I/O layer last took them (for its log), and how
        # many more were not kept.
        self._refusals: list[Refusal] = []
        self._refusals_dropped = 0
        self._functions: dict[bytes, Function] = {}
        self._jobs: dict[bytes, Job] = {}
        # Per priority: the functions with at least one QUEUED job of that priority,
        # in round-robin order.
        self._ready: tuple[dict[Function, None], dict[Function, None], dict[Function, None]] = (
            {},
            {},
            {},
        )
        # (when, seq, job): epoch jobs due at `when`, running jobs timing out at `when`.
        # An entry is live while job.timer == seq.
        self._timers: list[tuple[float, int, Job]] = []
        self._stale_timers = 0
        self._seq = 0
        self._queued = 0
        self._future = 0
        self._running = 0

    # --- timers and introspection ---------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The loop time of the earliest timer (an epoch job due, a job timing out).

        Returns:
            The time at which :meth:`advance` has work to do, or ``None``.
        """
        timers = self._timers
        while timers:
            when, seq, job = timers[0]
            if job.timer == seq:
                return when
            heapq.heappop(timers)
            self._stale_timers -= 1
        return None

    def advance(self, now: float) -> None:
        """Fire every timer due at ``now``.

        Due epoch jobs enter their queue (and wake sleeping workers); running jobs
        past their CAN_DO_TIMEOUT are re-queued, or fail once the retry limit is
        reached.

        Args:
            now: the event loop's time, in seconds.
        """
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, seq, job = heapq.heappop(timers)
            if job.timer != seq:
                self._stale_timers -= 1
                continue
            job.timer = 0
            if job.state == FUTURE:
                job.queued_at = now
                self._enqueue(job)
            else:
                self._requeue(job, "its worker took longer than its CAN_DO_TIMEOUT")

    @property
    def jobs_queued(self) -> int:
        """Jobs waiting for a worker: queued, epoch jobs not due yet, held, being stored."""
        return self._queued + self._future

    @property
    def jobs_running(self) -> int:
        """Jobs that workers hold."""
        return self._running

    @property
    def functions(self) -> Iterable[Function]:
        """Every function, in the order they were created."""
        return self._functions.values()

    @property
    def jobs(self) -> Iterable[Job]:
        """Every job the server knows (queued, future, running), oldest first."""
        return self._jobs.values()

    def get_job(self, handle: bytes) -> Job | None:
        """The job with this handle, or ``None``."""
        return self._jobs.get(handle)

    def get_function(self, name: bytes) -> Function | None:
        """The function with this name, or ``None``."""
        return self._functions.get(name)

    def scheduled_jobs(self) -> list[tuple[Job, float]]:
        """The epoch jobs that are not due yet, with the loop time each is due at."""
        return [
            (job, when)
            for when, seq, job in sorted(self._timers)
            if job.timer == seq and job.state == FUTURE
        ]

    # --- test hooks -----------------------------------------------------------------------

    def set_hold(self, held: Callable[[bytes], bool] | None) -> None:
        """Keep the jobs of some functions away from workers (a test hook).

        A job of a held function that is queued now, or would be queued later
        (submitted, re-queued after its worker left, or an epoch job coming due),
        waits apart instead (:data:`HELD`): it counts as queued (``status``,
        :attr:`jobs_queued`), GET_STATUS knows it, ``cancel job`` removes it, but no
        worker is given it or woken for it. Held jobs of functions that are no
        longer held go back to the tail of their queues, in the order they were
        held, and sleeping workers are woken for them.

        Args:
            held: tells from a function name whether its jobs are held; ``None``
                holds nothing.
        """
        self._hold = held
        if self._held:
            still: list[Job] = []
            for job in self._held:
                if job.state != HELD:
                    continue
                if held is not None and held(job.function.name):
                    still.append(job)
                    continue
                self._enqueue(job)
            self._held = still
        if held is None:
            return
        for function in self._functions.values():
            if not any(function.counts) or not held(function.name):
                continue
            for queue in function.queues:
                if queue:
                    for job in [job for job in queue if job.state == QUEUED]:
                        self._move(job, HELD)  # its queue entry becomes a tombstone
                        self._held.append(job)

    def _move(self, job: Job, to: JobState) -> None:
        """Move ``job`` to state ``to``: the one place where a job's state changes.

        It keeps every count: the server's and the function's per state (and per
        priority for QUEUED and HELD), and, for QUEUED, the round-robin sets of
        functions with work (a queue left with no live job is cleared of its
        tombstones). The tables that hold the job itself (its queue, its worker's
        running table, the timer heap, the handle table) are the caller's.
        """
        was = job.state
        function = job.function
        priority = job.priority
        if was == QUEUED:
            self._queued -= 1
            counts = function.counts
            left = counts[priority] - 1
            counts[priority] = left
            if left == 0:
                del self._ready[priority][function]
                queue = function.queues[priority]
                assert queue is not None
                queue.clear()
        elif was == RUNNING:
            function.running -= 1
            self._running -= 1
        elif was == FUTURE:
            function.future -= 1
            self._future -= 1
        elif was == HELD:
            function.held[priority] -= 1
            self._future -= 1
        elif was == PENDING:
            function.pending -= 1
            self._future -= 1
        job.state = to
        if to == QUEUED:
            self._queued += 1
            counts = function.counts
            counts[priority] += 1
            if counts[priority] == 1:
                self._ready[priority][function] = None
        elif to == RUNNING:
            function.running += 1
            self._running += 1
        elif to == FUTURE:
            function.future += 1
            self._future += 1
        elif to == HELD:
            function.held[priority] += 1
            self._future += 1
        elif to == PENDING:
            function.pending += 1
            self._future += 1

    def _ended(
        self, job: Job, outcome: JobOutcome, result: bytes = b"", now: float | None = None
    ) -> None:
        """``job`` is gone: count it, time its run (given ``now``), tell the observer."""
        stats = job.function.stats
        if stats is not None:
            # Identity tests: hashing an enum member runs Python code.
            if outcome is _COMPLETED:
                index = 0
            elif outcome is _FAILED:
                index = 1
            elif outcome is _EXCEPTION:
                index = 2
            else:
                index = 3 if outcome is _CANCELLED else 4
            stats.ended[index] += 1
            if now is not None:
                run = now - job.assigned_at
                # Most runs fall in the first bucket: one comparison, not a bisect.
                stats.run[0 if run <= _FIRST_BOUND else bisect_left(DURATION_BUCKETS, run)] += 1
                stats.run_sum += run
        observer = self.observer
        if observer is not None:
            observer.job_ended(job, outcome, result)

    def _new_function(self, name: bytes) -> Function:
        """Create the function ``name`` (it does not exist)."""
        function = self._functions[name] = Function(name)
        if self._metrics:
            function.stats = FunctionStats()
        return function

    def _function(self, name: bytes) -> Function:
        """The function ``name``, created if it does not exist."""
        function = self._functions.get(name)
        if function is None:
            function = self._new_function(name)
        return function

    def _release(self, function: Function) -> None:
        """Forget ``function`` if nothing needs it: no job, worker, limit or pin.

        So the table of functions holds what is in use, not every name ever
        seen. Its counters for metrics go with it.
        """
        if (
            function.workers
            or function.total
            or function.max_queue is not None
            or function.pinned
            or function.sleepers
        ):
            return
        if self._functions.get(function.name) is function:
            del self._functions[function.name]

    # --- admin operations -----------------------------------------------------------------

    def cancel_job(self, handle: bytes) -> bool:
        """Cancel a job (admin ``cancel job``).

        Attached clients get WORK_FAIL and are detached. A queued or future job
        is gone at once. A running job keeps its worker (whose result is then
        dropped) but no longer coalesces new submissions.

        Returns:
            Whether a job with this handle existed.
        """
        job = self._jobs.get(handle)
        if job is None:
            return False
        if job.clients is not None:
            for client in job.clients:
                self._send(client, WorkFail(handle))
                client.attached.pop(job, None)
            job.clients = None
        if job.state == RUNNING:
            if not job.cancelled:
                job.cancelled = True
                self._unindex(job)
                self._unstore(job)
                self._notice(job, None, "cancelled by an admin command while it runs")
            return True
        self._forget(job)  # QUEUED, FUTURE, HELD or PENDING
        self._ended(job, JobOutcome.CANCELLED)
        self._notice(job, None, "cancelled by an admin command")
        return True

    def set_cluster_view(self, view: ClusterView | None) -> None:
        """What a cluster member's I/O layer last read of the shared queue.

        The admin ``status``, ``prioritystatus`` and ``show jobs`` then list the
        cluster's background jobs (those this member does not hold, from
        ``view``) with this member's own jobs and workers; ``None`` lists this
        member's alone.
        """
        self.cluster_view = view

    def removals_pending(self) -> list[bytes]:
        """The handles of stored jobs that ended, whose rows the store's next
        transaction deletes (those of a transaction being written are not included)."""
        return list(self._write.removed)

    def release_unserved(self, *, served_too: bool = False) -> list[bytes]:
        """Give up the queued stored jobs that no worker here can run any more.

        For a cluster member (``ServerConfig.cluster``): a claimed job whose
        function lost all its workers here would wait while other members'
        workers could run it. Each such job (with no foreground client waiting
        for it) is forgotten here without deleting its row; the I/O layer then
        gives its claim back to the store. It costs a look at each function.

        Args:
            served_too: give up the queued stored jobs of every function (the
                member's claims may have lapsed: other members may run them).

        Returns:
            The handles given up.
        """
        released: list[bytes] = []
        for function in self._functions.values():
            if (function.workers and not served_too) or not any(function.counts):
                continue
            for queue in function.queues:
                if not queue:
                    continue
                for job in [j for j in queue if j.state == QUEUED and j.stored]:
                    if job.clients is None:
                        job.stored = False
                        self._forget(job)
                        released.append(job.handle)
        return released

    def create_function(self, name: bytes) -> Function:
        """The function with this name, created if it does not exist (admin ``create
        function``). It stays, even unused, until :meth:`drop_function`."""
        function = self._function(name)
        function.pinned = True
        return function

    def drop_function(self, name: bytes) -> bool | None:
        """Remove a function (admin ``drop function``).

        The name is matched exactly, else case-insensitively (as gearmand
        matches it). A function is refused while workers are registered for it or
        while it has jobs (queued, future or running): gearmand would orphan
        queued jobs, we keep them.

        Returns:
            ``True`` when dropped, ``False`` when refused, ``None`` when no
            function has this name.
        """
        function = self._functions.get(name)
        if function is None:
            lowered = name.lower()
            function = next(
                (f for f in self._functions.values() if f.name.lower() == lowered), None
            )
            if function is None:
                return None
        if function.workers or function.total:
            return False
        del self._functions[function.name]
        return True

    def set_max_queue(self, name: bytes, sizes: tuple[int, int, int] | None) -> None:
        """Set the queue limits of an existing function (admin ``maxqueue``).

        Args:
            name: the function; an unknown name is ignored, as gearmand does.
            sizes: the HIGH, NORMAL and LOW limits (0 or less: unlimited), or
                ``None`` for no limit. A submission is refused with ``QUEUE_ERROR``
                when the function's queued plus running jobs reach the limit of its
                priority.
        """
        function = self._functions.get(name)
        if function is None:
            return
        if sizes is not None:
            sizes = (max(sizes[0], 0), max(sizes[1], 0), max(sizes[2], 0))
        function.max_queue = sizes if sizes and any(sizes) else None
        self._release(function)

    # --- sending ----------------------------------------------------------------------------

    def _send(self, conn: ConnectionState, message: Message) -> None:
        body = b"\0".join(message.wire_parts())
        out = conn.outgoing
        out += _pack(_RES_BYTES, message.packet_type, len(body))
        out += body
        self.dirty.add(conn)

    def _send_job(self, conn: ConnectionState, message: Message, data: bytes) -> None:
        """:meth:`_send` a packet whose last argument is ``data``, copying large data once."""
        if len(data) >= LARGE_PART:
            append_packet(conn.outgoing, _RES_BYTES, message.packet_type, message.wire_parts())
            self.dirty.add(conn)
        else:
            self._send(conn, message)

    def _error(self, conn: ConnectionState, code: bytes, text: bytes) -> None:
        self._send(conn, Error(code, text))

    # --- queues -------------------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        """Put a job at the tail of its queue and wake sleepers that can run it.

        The job is NEW, FUTURE, HELD or RUNNING (its worker left). While its
        function is held it waits apart (:data:`HELD`) instead.
        """
        function = job.function
        if self._hold is not None and self._hold(function.name):
            self._move(job, HELD)
            self._held.append(job)
            return
        priority = job.priority
        queue = function.queues[priority]
        if queue is None:
            queue = function.queues[priority] = deque()
        queue.append(job)
        self._move(job, QUEUED)
        if function.sleepers:
            self._wake(function)

    def _schedule(self, job: Job, due: float) -> None:
        """A NEW epoch job waits in the timer heap until ``due`` (a loop time)."""
        self._move(job, FUTURE)
        self._arm(job, due)

    def _find(self, conn: ConnectionState, rotate: bool) -> tuple[Function, int] | None:
        """The function and priority of the job ``conn`` would get now, if any."""
        abilities = conn.abilities
        if not abilities:
            return None
        for priority, ready in enumerate(self._ready):
            if not ready:
                continue
            if len(ready) <= len(abilities):
                for function in ready:
                    if function in abilities:
                        return function, priority
            else:
                functions = conn.ability_list
                n = len(functions)
                start = conn.rr
                for i in range(start, start + n):
                    function = functions[i % n]
                    if function.counts[priority]:
                        if rotate:
                            conn.rr = (i + 1) % n
                        return function, priority
        return None

    def _take(self, function: Function, priority: int) -> Job:
        """Pop the oldest live job of ``function`` at ``priority`` (one must exist).

        The function goes to the back of the round-robin of its priority; the
        job stays QUEUED until :meth:`_assign` moves it.
        """
        queue = function.queues[priority]
        assert queue is not None
        job = queue.popleft()
        while job.state != QUEUED:
            job = queue.popleft()
        ready = self._ready[priority]
        if len(ready) > 1 and function.counts[priority] > 1:
            del ready[function]
            ready[function] = None
        return job

    def _assign(self, conn: ConnectionState, job: Job, now: float) -> None:
        """A worker takes a QUEUED job that :meth:`_take` popped."""
        self._move(job, RUNNING)
        job.worker = conn
        job.assigned_at = now
        conn.running[job.handle] = job
        function = job.function
        stats = function.stats
        if stats is not None:
            wait = now - job.queued_at
            stats.wait[0 if wait <= _FIRST_BOUND else bisect_left(DURATION_BUCKETS, wait)] += 1
            stats.wait_sum += wait
        timeout = conn.abilities[function]
        if timeout:
            self._arm(job, now + timeout / 1000)

    def _requeue(self, job: Job, why: str) -> None:
        """A running job lost its worker (``why``): queue it again, or fail or drop it."""
        worker = job.worker
        assert worker is not None
        del worker.running[job.handle]
        job.worker = None
        self._disarm(job)
        job.numerator = job.denominator = 0
        if job.cancelled or (not job.background and job.clients is None):
            self._forget(job)
            self._ended(job, JobOutcome.CANCELLED if job.cancelled else JobOutcome.LOST)
            self._notice(job, worker, f"{why}; dropped, as nobody waits for it any more")
            return
        job.retries += 1
        if self._retries and job.retries >= self._retries:
            if job.clients is not None:
                fail = WorkFail(job.handle)
                for client in job.clients:
                    self._send(client, fail)
            self._forget(job)
            self._ended(job, JobOutcome.LOST)
            self._notice(
                job, worker, f"{why}; failed after {job.retries} attempts (the retry limit)", True
            )
            return
        if job.function.stats is not None:
            job.function.stats.retried += 1
        self._enqueue(job)
        self._notice(job, worker, f"{why}; queued again (attempt {job.retries + 1})")

    def _notice(
        self, job: Job, conn: ConnectionState | None, text: str, serious: bool = False
    ) -> None:
        address = conn.address if conn is not None else b""
        self._notices.append(JobNotice(job.handle, job.function.name, address, text, serious))

    def _note_refusal(self, conn: ConnectionState, text: str) -> None:
        if len(self._refusals) < MAX_REFUSALS_KEPT:
            self._refusals.append(Refusal(conn.address, text))
        else:
            self._refusals_dropped += 1

    def take_refusals(self) -> tuple[list[Refusal], int]:
        """The names refused since the last call (bad function names, client ids),
        and how many more were refused but not kept, for the log."""
        refusals, dropped = self._refusals, self._refusals_dropped
        if refusals:
            self._refusals = []
            self._refusals_dropped = 0
        return refusals, dropped

    def take_job_notices(self) -> list[JobNotice]:
        """What happened to jobs since the last call that the log should say (rare)."""
        notices = self._notices
        if notices:
            self._notices = []
        return notices

    def _finish(self, conn: ConnectionState, job: Job) -> None:
        """The worker reported a terminal result; the job is gone."""
        del conn.running[job.handle]
        job.worker = None
        self._forget(job)

    def _forget(self, job: Job) -> None:
        """The job is gone: remove it from every table (a queue keeps a tombstone)."""
        self._move(job, GONE)
        if job.timer:
            self._disarm(job)
        del self._jobs[job.handle]
        if job.unique:
            self._unindex(job)
        if job.clients is not None:
            for client in job.clients:
                client.attached.pop(job, None)
            job.clients = None
        if job.stored:
            self._unstore(job)
        function = job.function
        if not function.workers and not function.total:  # a worker: the usual case
            self._release(function)

    def _unstore(self, job: Job) -> None:
        """The job's row goes in the store's next transaction."""
        if job.stored:
            job.stored = False
            self._write.removed.append(job.handle)

    def _unindex(self, job: Job) -> None:
        function = job.function
        if job.unique == b"-":
            if function.by_data.get(job.data) is job:
                del function.by_data[job.data]
        elif function.uniques.get(job.unique) is job:
            del function.uniques[job.unique]

    def _detach(self, conn: ConnectionState, job: Job) -> None:
        """``conn`` no longer waits for ``job`` (it disconnected)."""
        clients = job.clients
        assert clients is not None
        left = [client for client in clients if client is not conn]
        job.clients = left or None
        # A running job keeps running; its result goes nowhere.
        if left or job.background or job.state not in (QUEUED, HELD):
            return
        self._forget(job)
        self._ended(job, JobOutcome.LOST)

    # --- timer heap ---------------------------------------------------------------------------

    def _arm(self, job: Job, when: float) -> None:
        self._seq += 1
        job.timer = self._seq
        heapq.heappush(self._timers, (when, self._seq, job))

    def _disarm(self, job: Job) -> None:
        if not job.timer:
            return
        job.timer = 0
        self._stale_timers += 1
        timers = self._timers
        if self._stale_timers > _COMPACT_TIMERS_AT and self._stale_timers * 2 > len(timers):
            timers[:] = [entry for entry in timers if entry[2].timer == entry[1]]
            heapq.heapify(timers)
            self._stale_timers = 0

    # --- sleeping workers ---------------------------------------------------------------------

    def _wake(self, function: Function) -> None:
        """Send NOOP to sleeping workers of ``function`` (all, or ``worker_wakeup``)."""
        sleepers = function.sleepers
        if not self._wakeup:
            for conn in sleepers:
                if conn.sleeping and not conn.noop_sent:
                    conn.noop_sent = True
                    conn.outgoing += _NOOP
                    self.dirty.add(conn)
            sleepers.clear()
            return
        sent = 0
        while sleepers and sent < self._wakeup:
            conn = next(iter(sleepers))
            del sleepers[conn]
            if conn.sleeping and not conn.noop_sent:
                conn.noop_sent = True
                conn.outgoing += _NOOP
                self.dirty.add(conn)
                sent += 1

    def _rewake(self, functions: Iterable[Function]) -> None:
        """Workers of these functions went away: wake others for their queued jobs."""
        for function in functions:
            if function.sleepers and any(function.counts):
                self._wake(function)
