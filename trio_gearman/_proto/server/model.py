"""The job server's records (jobs, functions, connections) and its settings.

These are plain slotted records, shared by the job table (:mod:`._server_jobs`),
the state machine (:mod:`._server_state`) and its admin commands
(:mod:`._server_admin`). They hold data and do no bookkeeping of their own; every
rule lives in the state machine. :class:`JobStore` is the seam for persistence;
:class:`JobObserver` the seam for test tools (every job's start and end).

A million queued jobs must fit in memory, so :class:`Job` carries only what the
protocol needs and no ``__weakref__`` slot, and a function's three priority queues
are created on first use.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import Final, Protocol

import attrs

from ..._version import __version__

__all__ = [
    "FUTURE",
    "GONE",
    "HELD",
    "NEW",
    "QUEUED",
    "RUNNING",
    "ConnectionState",
    "Function",
    "Job",
    "JobObserver",
    "JobOutcome",
    "JobState",
    "JobStore",
    "ServerConfig",
]


class JobState(enum.IntEnum):
    """Where a job is. The job table moves jobs between states and keeps the counts.

    A NEW job becomes QUEUED (or FUTURE, for an epoch job not due yet, or HELD
    while its function is held); QUEUED goes to RUNNING when a worker grabs it, or
    to HELD when its function becomes held; FUTURE and HELD go to QUEUED; RUNNING
    goes back to QUEUED (or HELD) when its worker leaves; every state ends in GONE.
    Every move is one call of the job table's ``_move``, which keeps every count.
    """

    QUEUED = 0
    """The job waits in its function's queue for its priority."""
    RUNNING = 1
    """A worker holds the job."""
    FUTURE = 2
    """A SUBMIT_JOB_EPOCH job waits in the timer heap for its time."""
    GONE = 3
    """The job is finished, cancelled or dropped. A queue may still hold it as a tombstone."""
    HELD = 4
    """The job's function is held (a test hook): the job waits apart, away from workers."""
    NEW = 5
    """The job is made but not placed yet (it is in no count)."""


QUEUED: Final = JobState.QUEUED
RUNNING: Final = JobState.RUNNING
FUTURE: Final = JobState.FUTURE
GONE: Final = JobState.GONE
HELD: Final = JobState.HELD
NEW: Final = JobState.NEW


@attrs.define(slots=True, eq=False, weakref_slot=False)
class Job:
    """One job, from submission until it is finished.

    Jobs compare and hash by identity. The unique-key index, the handle table and a
    worker's running table refer to the same object.

    Attributes:
        handle: the job handle (``prefix:counter``).
        function: the function the job belongs to.
        unique: the unique key as submitted (empty: none; ``-``: coalesced by data).
        data: the payload.
        priority: 0 (HIGH), 1 (NORMAL) or 2 (LOW).
        background: no client waits for the result; never dropped because a client left.
        reducer: the reducer of a SUBMIT_REDUCE_JOB, else empty.
        state: :data:`NEW`, :data:`QUEUED`, :data:`RUNNING`, :data:`FUTURE`,
            :data:`HELD` or :data:`GONE`.
        retries: how many times the job was re-queued after losing its worker.
        numerator: the last WORK_STATUS numerator (reset on re-queue).
        denominator: the last WORK_STATUS denominator (reset on re-queue).
        clients: the attached foreground connections, one entry per attachment
            (the same connection may appear more than once), or ``None``.
        worker: the connection running the job, or ``None``.
        timer: the sequence number of the job's live timer-heap entry (its epoch or
            its CAN_DO_TIMEOUT deadline), or 0 for none.
        cancelled: the admin ``cancel job`` command hit the job while it ran.
    """

    handle: bytes
    function: Function
    unique: bytes
    data: bytes
    priority: int
    background: bool
    reducer: bytes = b""
    state: JobState = NEW
    retries: int = 0
    numerator: int = 0
    denominator: int = 0
    clients: list[ConnectionState] | None = None
    worker: ConnectionState | None = None
    timer: int = 0
    cancelled: bool = False


class Function:
    """A function name with its queues, workers and unique-key index.

    Attributes:
        name: the function name.
        queues: one FIFO per priority (HIGH, NORMAL, LOW), created on first use. A
            queue may hold tombstones (jobs whose state is no longer QUEUED); they
            are skipped when popped.
        counts: the number of live QUEUED jobs per priority.
        future: the number of epoch jobs of this function that are not due yet.
        held: the number of its held jobs (:data:`HELD`) per priority.
        running: the number of jobs of this function that workers hold.
        workers: the connections registered for this function, in order.
        sleepers: connections that slept (PRE_SLEEP) while able to run this
            function, in the order they fell asleep. Entries can be stale (the
            connection woke since); they are checked when popped.
        max_queue: the ``maxqueue`` limits per priority (0: unlimited), or ``None``.
        uniques: live jobs by unique key (uniques other than ``-``).
        by_data: live jobs submitted with the unique ``-``, by payload.
    """

    __slots__ = (
        "by_data",
        "counts",
        "future",
        "held",
        "max_queue",
        "name",
        "queues",
        "running",
        "sleepers",
        "uniques",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: list[deque[Job] | None] = [None, None, None]
        self.counts = [0, 0, 0]
        self.future = 0
        self.held = [0, 0, 0]
        self.running = 0
        self.workers: dict[ConnectionState, None] = {}
        self.sleepers: dict[ConnectionState, None] = {}
        self.max_queue: tuple[int, int, int] | None = None
        self.uniques: dict[bytes, Job] = {}
        self.by_data: dict[bytes, Job] = {}

    @property
    def queued(self) -> int:
        """Jobs waiting to run: queued at any priority, epoch jobs not due yet, held jobs."""
        counts, held = self.counts, self.held
        return counts[0] + counts[1] + counts[2] + self.future + held[0] + held[1] + held[2]

    @property
    def total(self) -> int:
        """Queued plus running jobs, as gearmand's ``status`` TOTAL column counts them."""
        return self.queued + self.running

    def __repr__(self) -> str:
        return f"<Function {self.name!r} queued={self.counts} running={self.running}>"


class ConnectionState:
    """What the server knows about one connection.

    The I/O layer reads :attr:`outgoing` and :attr:`closing`; everything else is
    the state machine's own.

    Attributes:
        id: a number unique among this server's connections.
        address: the peer address, as shown by the admin ``workers`` command.
        fd: the file descriptor number, as shown by ``workers``.
        outgoing: encoded bytes to send. The I/O layer sends and deletes them.
        closing: the server wants the connection closed once ``outgoing`` is sent.
        closed: :meth:`ServerState.disconnect` has run for this connection.
        client_id: set by SET_CLIENT_ID; ``-`` until then.
        exceptions: the client asked for WORK_EXCEPTION packets (OPTION_REQ).
        abilities: the functions this worker registered, with the CAN_DO_TIMEOUT
            in milliseconds (0: none).
        ability_list: the same functions in registration order.
        rr: where the next scan of ``ability_list`` starts (round robin).
        sleeping: the worker sent PRE_SLEEP and has not grabbed since.
        noop_sent: a NOOP went out since the last PRE_SLEEP or GRAB.
        running: the jobs this worker holds, by handle.
        attached: the foreground jobs this client waits for.
    """

    __slots__ = (
        "abilities",
        "ability_list",
        "address",
        "attached",
        "client_id",
        "closed",
        "closing",
        "exceptions",
        "fd",
        "id",
        "noop_sent",
        "outgoing",
        "rr",
        "running",
        "sleeping",
    )

    def __init__(self, id: int, address: bytes, fd: int, exceptions: bool) -> None:
        self.id = id
        self.address = address
        self.fd = fd
        self.outgoing = bytearray()
        self.closing = False
        self.closed = False
        self.client_id = b"-"
        self.exceptions = exceptions
        self.abilities: dict[Function, int] = {}
        self.ability_list: list[Function] = []
        self.rr = 0
        self.sleeping = False
        self.noop_sent = False
        self.running: dict[bytes, Job] = {}
        self.attached: dict[Job, None] = {}

    def __repr__(self) -> str:
        return f"<ConnectionState {self.id} {self.address!r} fd={self.fd}>"


class JobStore(Protocol):
    """Where background jobs are made durable (the persistence seam).

    The server calls :meth:`add` before it answers JOB_CREATED for a new
    background job (or for a foreground job that a background submission
    coalesced onto), and :meth:`done` once such a job is finished, failed,
    cancelled or dropped. Jobs are keyed by :attr:`Job.handle`.
    """

    def add(self, job: Job, epoch: int = 0) -> None:
        """Make ``job`` durable.

        Args:
            job: the new background job.
            epoch: for a SUBMIT_JOB_EPOCH job that is not due yet, its time in
                seconds since the Unix epoch (it waits for it after a restart
                too); 0 for a job that is queued at once. Only passed when not 0.

        Raises:
            GearmanError: the job cannot be stored; the submission is refused with
                ``ERROR QUEUE_ERROR``.
        """

    def done(self, job: Job) -> None:
        """Forget ``job``: it is finished. Must not raise."""


class JobOutcome(str, enum.Enum):
    """How a job ended, as a :class:`JobObserver` is told."""

    COMPLETED = "completed"
    """The worker sent WORK_COMPLETE."""
    FAILED = "failed"
    """The worker sent WORK_FAIL."""
    EXCEPTION = "exception"
    """The worker sent WORK_EXCEPTION."""
    CANCELLED = "cancelled"
    """The admin ``cancel job`` command removed it."""
    LOST = "lost"
    """The server gave up on it: its workers went away once too often (the retry
    limit), or nobody waited for a foreground job any more."""


class JobObserver(Protocol):
    """Told of every job's start and end: the seam for test tools.

    The state machine calls it synchronously, after the move is complete (the
    tables are consistent). While :attr:`JobTable.observer` is ``None`` it costs
    one attribute check per submission and per result.
    """

    def job_created(self, job: Job) -> None:
        """A submission created ``job`` (not called when it coalesced onto one)."""

    def job_ended(self, job: Job, outcome: JobOutcome, result: bytes) -> None:
        """``job`` left the server (its state is :data:`GONE`); called once per job.

        A job cancelled while it runs leaves when its worker finishes or goes
        away; its outcome is then :attr:`JobOutcome.CANCELLED` whatever the
        worker reported.

        Args:
            job: the job.
            outcome: how it ended.
            result: the WORK_COMPLETE data or the WORK_EXCEPTION text, else empty.
        """


@attrs.define
class ServerConfig:
    """Settings of the job server (gearmand's command-line options where they apply).

    The state machine reads them once, when it is created. Import it from
    :mod:`._server_state`, which re-exports it.

    Attributes:
        job_handle_prefix: handles are ``prefix + b":" + counter``.
        exceptions: every connection starts with the ``exceptions`` option on
            (``--exceptions``).
        job_retries: the total number of attempts of a job whose worker goes away
            (``--job-retries``); after the last one the job fails. 0 is unlimited.
        worker_wakeup: NOOPs sent per queued job (``--worker-wakeup``); 0 wakes
            every sleeping worker that can run it.
        version: the reply to the admin ``version`` command.
        pid: the reply to the admin ``getpid`` command.
        verbose: the reply to the admin ``verbose`` command.
        max_unique: the longest unique key a submission may carry.
        store: where background jobs are made durable, or ``None``.
    """

    job_handle_prefix: bytes = b"H:localhost"
    exceptions: bool = False
    job_retries: int = 0
    worker_wakeup: int = 0
    version: bytes = __version__.encode()
    pid: int = 0
    verbose: bytes = b"ERROR"
    max_unique: int = 64
    store: JobStore | None = None
