"""The job server's records (jobs, functions, connections) and its settings.

These are plain slotted records, shared by the job table (:mod:`._server_jobs`),
the state machine (:mod:`._server_state`) and its admin commands
(:mod:`._server_admin`). They hold data and do no bookkeeping of their own; every
rule lives in the state machine. :class:`StoreWrite` is the seam for persistence;
:class:`JobObserver` the seam for test tools (every job's start and end).

A million queued jobs must fit in memory, so :class:`Job` carries only what the
protocol needs and no ``__weakref__`` slot, and a function's three priority queues
are created on first use.
"""

from __future__ import annotations

import enum
from collections import deque
from itertools import islice
from typing import Any, Final, NamedTuple, Protocol

import attrs

from ..._version import __version__
from .acl import Acl, Grant, Identity
from .listing import Listing
from .names import DEFAULT_MAX_FUNCTION_NAME

__all__ = [
    "DURATION_BUCKETS",
    "FUTURE",
    "GONE",
    "HELD",
    "NEW",
    "OUTCOMES",
    "PENDING",
    "QUEUED",
    "RUNNING",
    "Ack",
    "ConnectionState",
    "Function",
    "FunctionStats",
    "Job",
    "JobObserver",
    "JobOutcome",
    "JobState",
    "ServerConfig",
    "StoreWrite",
    "StoredJob",
]


_BUFFERS_AT_ONCE: Final = 64
"""The most buffers :meth:`ConnectionState.output_buffers` gives at a time."""


class JobState(enum.IntEnum):
    """Where a job is. The job table moves jobs between states and keeps the counts.

    A NEW job becomes QUEUED (or FUTURE, for an epoch job not due yet, or HELD
    while its function is held), after PENDING while a durable store commits it.
    QUEUED goes to RUNNING when a worker grabs it, or to HELD when its function
    becomes held; FUTURE and HELD go to QUEUED; RUNNING
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
    PENDING = 6
    """A durable job waits for the store's commit before it is queued or acknowledged."""


QUEUED: Final = JobState.QUEUED
RUNNING: Final = JobState.RUNNING
FUTURE: Final = JobState.FUTURE
GONE: Final = JobState.GONE
HELD: Final = JobState.HELD
NEW: Final = JobState.NEW
PENDING: Final = JobState.PENDING


class Job:
    """One job, from submission until it is finished.

    Jobs compare and hash by identity. The unique-key index, the handle table and a
    worker's running table refer to the same object. A plain slotted class (not an
    attrs one): compiled, the state machine reads and writes its fields directly.

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
        stored: the store holds the job's row (or is writing it): its end must
            delete it.
        acks: the JOB_CREATED replies that wait for the commit of this job (a
            durable submission, or one that coalesced onto a job being stored),
            or ``None``.
        queued_at: the loop time the job was submitted (an epoch job: came due).
        assigned_at: the loop time a worker last took it.
    """

    __slots__ = (
        "acks",
        "assigned_at",
        "background",
        "cancelled",
        "clients",
        "data",
        "denominator",
        "function",
        "handle",
        "numerator",
        "priority",
        "queued_at",
        "reducer",
        "retries",
        "state",
        "stored",
        "timer",
        "unique",
        "worker",
    )

    def __init__(
        self,
        handle: bytes,
        function: Function,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        reducer: bytes = b"",
    ) -> None:
        self.handle = handle
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.background = background
        self.reducer = reducer
        self.state: JobState = NEW
        self.retries = 0
        self.numerator = 0
        self.denominator = 0
        self.clients: list[ConnectionState] | None = None
        self.worker: ConnectionState | None = None
        self.timer = 0
        self.cancelled = False
        self.stored = False
        self.acks: list[Ack] | None = None
        self.queued_at = 0.0
        self.assigned_at = 0.0

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in _JOB_FIELDS)
        return f"Job({fields})"


_JOB_FIELDS: Final = (
    "handle",
    "function",
    "unique",
    "data",
    "priority",
    "background",
    "reducer",
    "state",
    "retries",
    "numerator",
    "denominator",
    "clients",
    "worker",
    "timer",
    "cancelled",
    "stored",
    "acks",
    "queued_at",
    "assigned_at",
)
"""The fields of a :class:`Job` in the order its repr shows them."""


class Ack:
    """A reply that waits for a commit of the store, in its connection's order.

    A durable submission's JOB_CREATED (or QUEUE_ERROR) is known only once the
    store has committed (or failed); any other reply to that connection waits
    behind it, so that a connection's replies keep the order of its requests.

    Attributes:
        conn: the connection to answer.
        job: the job whose commit the reply waits for, or ``None``.
        reply: the encoded reply once known, else ``None``.
    """

    __slots__ = ("conn", "job", "reply")

    def __init__(self, conn: ConnectionState, job: Job | None, reply: bytes | None = None) -> None:
        self.conn = conn
        self.job = job
        self.reply = reply


# A tuple object, not a fixed-size one: compiled (mypyc), a fixed-size tuple of floats
# is unboxed, which other modules cannot read at import time and bisect boxes per call.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""Upper bounds, in seconds, of the buckets of :class:`FunctionStats`' histograms."""

OUTCOMES: Final[tuple[str, ...]] = ("completed", "failed", "exception", "cancelled", "lost")
"""The order of :attr:`FunctionStats.ended`: the values of :class:`JobOutcome`."""


class FunctionStats:
    """Counters of one function, for metrics (kept only with ``ServerConfig.metrics``).

    Plain integers and floats updated in place: no allocation per job.

    Attributes:
        submitted: new jobs by kind and priority: ``[fg HIGH, fg NORMAL, fg LOW,
            bg HIGH, bg NORMAL, bg LOW]`` (submissions that coalesced are not new jobs).
        coalesced: submissions that joined an existing job.
        ended: jobs ended, by outcome, in the order of :data:`OUTCOMES`.
        retried: jobs queued again because their worker went away (or timed out).
        wait: the queue-wait histogram (submit to a worker's taking it): counts per
            bucket of :data:`DURATION_BUCKETS`, plus one for larger values.
        wait_sum: the sum of the waits, in seconds.
        run: the run-time histogram (a worker's taking it to its result).
        run_sum: the sum of the run times, in seconds.
    """

    __slots__ = ("coalesced", "ended", "retried", "run", "run_sum", "submitted", "wait", "wait_sum")

    def __init__(self) -> None:
        self.submitted = [0, 0, 0, 0, 0, 0]
        self.coalesced = 0
        self.ended = [0, 0, 0, 0, 0]
        self.retried = 0
        self.wait = [0] * (len(DURATION_BUCKETS) + 1)
        self.wait_sum = 0.0
        self.run = [0] * (len(DURATION_BUCKETS) + 1)
        self.run_sum = 0.0


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
        pending: the number of its jobs that wait for the store (:data:`PENDING`).
        running: the number of jobs of this function that workers hold.
        workers: the connections registered for this function, in order.
        sleepers: connections that slept (PRE_SLEEP) while able to run this
            function, in the order they fell asleep. Entries can be stale (the
            connection woke since); they are checked when popped.
        max_queue: the ``maxqueue`` limits per priority (0: unlimited), or ``None``.
        uniques: live jobs by unique key (uniques other than ``-``).
        by_data: live jobs submitted with the unique ``-``, by payload.
        stats: its counters for metrics, or ``None`` (metrics off).
        pinned: the admin ``create function`` made it: it stays until ``drop
            function``. Any other function is forgotten once it has no job, no
            worker and no ``maxqueue`` limit.
    """

    __slots__ = (
        "by_data",
        "counts",
        "future",
        "held",
        "max_queue",
        "name",
        "pending",
        "pinned",
        "queues",
        "running",
        "sleepers",
        "stats",
        "uniques",
        "workers",
    )

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.queues: list[deque[Job] | None] = [None, None, None]
        self.counts = [0, 0, 0]
        self.future = 0
        self.held = [0, 0, 0]
        self.pending = 0
        self.running = 0
        self.workers: dict[ConnectionState, None] = {}
        self.sleepers: dict[ConnectionState, None] = {}
        self.max_queue: tuple[int, int, int] | None = None
        self.uniques: dict[bytes, Job] = {}
        self.by_data: dict[bytes, Job] = {}
        self.stats: FunctionStats | None = None
        self.pinned = False

    @property
    def queued(self) -> int:
        """Jobs waiting to run: queued at any priority, epoch jobs not due yet, held
        jobs, and jobs the store is writing."""
        counts, held = self.counts, self.held
        return (
            counts[0]
            + counts[1]
            + counts[2]
            + self.future
            + held[0]
            + held[1]
            + held[2]
            + self.pending
        )

    @property
    def total(self) -> int:
        """Queued plus running jobs, as gearmand's ``status`` TOTAL column counts them."""
        return self.queued + self.running

    def __repr__(self) -> str:
        return f"<Function {self.name!r} queued={self.counts} running={self.running}>"


class ConnectionState:
    """What the server knows about one connection.

    The I/O layer sends its output (:attr:`shared`, then :attr:`outgoing`) and
    reads :attr:`closing`; everything else is the state machine's own.

    Attributes:
        id: a number unique among this server's connections.
        address: the peer address, as shown by the admin ``workers`` command.
        fd: the file descriptor number, as shown by ``workers``.
        outgoing: encoded bytes to send, after those of :attr:`shared`. The I/O
            layer sends and deletes them.
        shared: buffers to send before :attr:`outgoing`, or ``None``: a large
            payload that several connections send (the same bytes object for
            all), and the bytes of ``outgoing`` that were before it. While it is
            not ``None`` the I/O layer sends :meth:`output_buffers` and reports
            what went with :meth:`consume_output`.
        shared_size: the bytes in :attr:`shared`.
        closing: the server wants the connection closed once ``outgoing`` is sent.
        broken: the peer's stream broke the protocol while earlier requests still
            wait for their replies (a commit, a listing): nothing more is read from
            it, and it gets :attr:`closing` (and its error) once they are answered.
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
        acks: its JOB_CREATED replies waiting for the store, in submission order,
            or ``None``.
        paused: the events received while ``acks`` wait that must not be answered
            before them (anything but another durable submission), in order, or
            ``None``.
        admin: the connection has sent an admin text command.
        grant: what the peer may do (the access rules matched against its
            identity); by default anything.
        listing: the rest of an admin listing being sent a slice at a time, or
            ``None``. While it is set, the connection's later events wait in
            :attr:`paused`.
    """

    __slots__ = (
        "abilities",
        "ability_list",
        "acks",
        "address",
        "admin",
        "attached",
        "broken",
        "client_id",
        "closed",
        "closing",
        "exceptions",
        "fd",
        "grant",
        "id",
        "listing",
        "noop_sent",
        "outgoing",
        "paused",
        "rr",
        "running",
        "shared",
        "shared_size",
        "sleeping",
    )

    def __init__(
        self, id: int, address: bytes, fd: int, exceptions: bool, grant: Grant | None = None
    ) -> None:
        self.id = id
        self.address = address
        self.fd = fd
        self.outgoing = bytearray()
        self.shared: deque[bytes | bytearray | memoryview] | None = None
        self.shared_size = 0
        self.closing = False
        self.broken = False
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
        self.acks: deque[Ack] | None = None
        self.admin = False
        self.paused: list[Any] | None = None
        self.grant = grant if grant is not None else Grant(Identity(address.decode("latin-1")))
        self.listing: Listing[Any] | None = None

    def __repr__(self) -> str:
        return f"<ConnectionState {self.id} {self.address!r} fd={self.fd}>"

    def share(self, payload: bytes) -> None:
        """Send ``payload`` after what is queued, without copying it.

        Many connections can share one payload (a coalesced job's result): each
        keeps a reference, none a copy.
        """
        shared = self.shared
        if shared is None:
            shared = self.shared = deque()
        out = self.outgoing
        if out:
            shared.append(out)  # what was queued before goes first
            self.shared_size += len(out)
            self.outgoing = bytearray()
        shared.append(payload)
        self.shared_size += len(payload)

    @property
    def pending_output(self) -> int:
        """The bytes waiting to be sent."""
        return len(self.outgoing) + self.shared_size

    def output_buffers(self) -> list[bytes | bytearray | memoryview]:
        """The buffers to send, in order (the first ones of :attr:`shared`, then
        :attr:`outgoing`)."""
        shared = self.shared
        if shared is None:
            return [self.outgoing]
        buffers = list(islice(shared, _BUFFERS_AT_ONCE))
        if len(buffers) < _BUFFERS_AT_ONCE:
            buffers.append(self.outgoing)
        return buffers

    def consume_output(self, sent: int) -> None:
        """Forget the first ``sent`` bytes of the output: they went out."""
        shared = self.shared
        if shared is not None:
            while shared and sent:
                size = len(shared[0])
                if sent < size:
                    shared[0] = memoryview(shared[0])[sent:]
                    self.shared_size -= sent
                    return
                shared.popleft()
                self.shared_size -= size
                sent -= size
            if shared:
                return
            self.shared = None
        if sent:
            del self.outgoing[:sent]

    def clear_output(self) -> None:
        """Forget the whole output (the connection is gone)."""
        self.outgoing.clear()
        self.shared = None
        self.shared_size = 0


class StoredJob(NamedTuple):
    """One background job as a store holds it: a tuple, its fields in column order.

    A named tuple (not an attrs class) because one is made per durable submission
    on the event loop, and a store can bind it as a row as it is.

    Attributes:
        handle: the job handle.
        function: the function name.
        unique: the unique key (empty: none; ``-``: coalesced by payload).
        data: the payload.
        priority: 0 (HIGH), 1 (NORMAL) or 2 (LOW).
        reducer: the reducer of a SUBMIT_REDUCE_JOB, else empty.
        epoch: when an epoch job is due, in seconds since the Unix epoch, else ``None``.
    """

    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    priority: int
    reducer: bytes = b""
    epoch: int | None = None


class StoreWrite:
    """One transaction for the store to commit: the effect of a durable server.

    The state machine makes it (:meth:`ServerState.take_store_write
    <trio_gearman._proto.server.state.ServerState.take_store_write>`); the I/O
    layer commits it and reports how that went (``store_written`` or
    ``store_failed``). A plain class, not an attrs one: mypyc compiles it (it
    cannot compile attrs' ``Factory`` defaults).

    Attributes:
        added: the new durable jobs, in submission order.
        removed: the handles of stored jobs that ended; never one of ``added``
            (so a store may delete first, freeing room, then insert).
        handle_limit: a new highest reserved handle number, or ``None``.
        jobs: the jobs of ``added``, in the same order (the state's own records).
        due: for each of ``jobs``, the loop time an epoch job is due at, else 0.
    """

    __slots__ = ("added", "due", "handle_limit", "jobs", "removed")

    def __init__(
        self,
        added: list[StoredJob] | None = None,
        removed: list[bytes] | None = None,
        handle_limit: int | None = None,
        jobs: list[Job] | None = None,
        due: list[float] | None = None,
    ) -> None:
        self.added: list[StoredJob] = [] if added is None else added
        self.removed: list[bytes] = [] if removed is None else removed
        self.handle_limit = handle_limit
        self.jobs: list[Job] = [] if jobs is None else jobs
        self.due: list[float] = [] if due is None else due

    def __repr__(self) -> str:
        return (
            f"StoreWrite(added={self.added!r}, removed={self.removed!r}, "
            f"handle_limit={self.handle_limit!r}, jobs={self.jobs!r}, due={self.due!r})"
        )

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.handle_limit is not None)

    def parts(self, size: int) -> list[StoreWrite]:
        """This committed write as successive writes of at most ``size`` jobs each.

        Acknowledging a large commit part by part (``store_written`` for each, in
        order) lets the I/O layer serve other connections in between. The first
        part carries the rows, the deletions and the handle limit; the others only
        jobs to acknowledge.
        """
        if len(self.jobs) <= size:
            return [self]
        return [
            StoreWrite(
                self.added if not start else [],
                self.removed if not start else [],
                self.handle_limit if not start else None,
                self.jobs[start : start + size],
                self.due[start : start + size],
            )
            for start in range(0, len(self.jobs), size)
        ]


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


@attrs.frozen
class JobNotice:
    """Something happened to a job that an operator wants in the log: an effect.

    The state collects them (:meth:`JobTable.take_job_notices
    <trio_gearman._proto.server.jobs.JobTable.take_job_notices>`) only for the rare
    turns of a job's life (its worker went away or timed out while running it, an
    admin cancelled it), never per job on the hot path; the I/O layer logs them.

    Attributes:
        handle: the job's handle.
        function: its function name.
        peer: the address of the connection concerned (the worker, or the
            admin connection), or empty.
        text: what happened, as a sentence fragment (``"its worker went away;
            queued again (attempt 2)"``).
        serious: the job is gone without a result (a warning, not information).
    """

    handle: bytes
    function: bytes
    peer: bytes
    text: str
    serious: bool = False


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
        durable: background jobs are made durable: each is acknowledged (and
            queued) only after the store has committed it (see :class:`StoreWrite`).
        metrics: keep :class:`FunctionStats` for every function (and mark admin
            connections), for a metrics exporter. A function's counters go with
            it when it is forgotten (no job, no worker, no ``maxqueue`` limit).
        acl: the access rules (:class:`~.acl.Acl`), or ``None``: every peer may
            register and submit anything.
        admin_from_anywhere: without ``acl``, every peer may run the admin commands
            that change the server (gearmand's behaviour); by default only
            loopback peers may.
        cluster: the server is one member of a cluster sharing one store (with
            ``durable``): a background submission, once committed, is
            acknowledged and then left to the store, not queued here; the I/O
            layer claims stored jobs for this server's workers and gives them
            back with :meth:`ServerState.restore_job
            <trio_gearman._proto.server.state.ServerState.restore_job>`. Background
            submissions do not coalesce on unique keys here: the store coalesces
            them across the cluster, and says so when it commits them.
        max_function_name: the longest function name accepted, in bytes
            (``--max-function-name``); a longer one is refused with an ERROR.
    """

    job_handle_prefix: bytes = b"H:localhost"
    exceptions: bool = False
    job_retries: int = 0
    worker_wakeup: int = 0
    version: bytes = __version__.encode()
    pid: int = 0
    verbose: bytes = b"ERROR"
    max_unique: int = 64
    durable: bool = False
    metrics: bool = False
    acl: Acl | None = None
    admin_from_anywhere: bool = False
    cluster: bool = False
    max_function_name: int = DEFAULT_MAX_FUNCTION_NAME
