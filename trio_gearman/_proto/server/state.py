"""The job server as a sans-IO state machine.

:class:`ServerState` takes what a connection's decoder yields and appends the
replies, already encoded, to the ``outgoing`` buffer of every connection they
concern. It reads no clock: the I/O layer passes the event loop's time in, asks
:meth:`ServerState.next_deadline` when to call :meth:`ServerState.advance`, and
sends what accumulates in the buffers of the connections in
:attr:`ServerState.dirty`.

The wire behaviour is gearmand 1.1.20's (reply order, ERROR codes and texts,
fan-out of every WORK_* packet to every attachment, coalescing on unique keys,
``-`` coalescing by payload, retries as total attempts), with these differences:

* Priority is global across a worker's functions (HIGH, then NORMAL, then LOW),
  FIFO within one priority of one function, round robin between the functions a
  worker can do (gearmand 2.0 semantics).
* Clients without ``exceptions`` get WORK_FAIL without a trailing NUL for a
  WORK_EXCEPTION; trailing NULs of a worker's WORK_FAIL handle are stripped.
* SUBMIT_JOB_EPOCH jobs wait in a timer heap, block nothing, and wake sleeping
  workers when they are due.
* CAN_DO_TIMEOUT arms one deadline per running job (PRE_SLEEP keeps it). CAN_DO is
  deduplicated; the last CAN_DO or CAN_DO_TIMEOUT of a function sets its timeout.
* A queued foreground job nobody waits for leaves the queue at once. Background
  jobs are never dropped because a client left; a background submission that
  coalesces onto a foreground job makes it a background job.
* GET_STATUS and GET_STATUS_UNIQUE of any length are answered (unknown: known=0).
  GET_STATUS_UNIQUE finds jobs by their unique key, not jobs submitted with ``-``.
* A NOOP goes only to sleeping workers that can run the queued job, one until the
  worker grabs or sleeps again (gearmand never wakes a worker that slept again
  without grabbing). A sleeping worker that registers a function with queued jobs
  is woken; when a woken worker leaves or drops the function, others are woken.
* A WORK_* for a job the connection does not hold gets JOB_NOT_FOUND, also with
  a handle of 64 bytes or more.
* ``cancel job`` of a running job detaches its clients after their WORK_FAIL, so
  they never see a later WORK_COMPLETE.

Access control (:mod:`.acl`): each connection carries a :class:`~.acl.Grant`
made from its :class:`~.acl.Identity` when it connects. A CAN_DO,
CAN_DO_TIMEOUT or submission the grant does not allow gets ``ERROR
PERMISSION_DENIED`` and changes nothing; a refused admin command gets ``ERR
PERMISSION_DENIED``. The connection stays open, and each refusal is kept as a
:class:`~.acl.Denial` for the I/O layer to log (:meth:`ServerState.take_denials`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from ..._exceptions import (
    BadArgumentCount,
    PacketTooLarge,
    ProtocolError,
    UnknownPacketType,
)
from .._codec import LARGE_PART, Event, TextLine, UnexpectedMagic, append_packet, pack_header
from .._packets import (
    AllYours,
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    NoJob,
    Noop,
    OptionReq,
    OptionRes,
    PacketType,
    PreSleep,
    ResetAbilities,
    SetClientId,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    Unused,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)
from .acl import Action, Denial, Grant, Identity, grant_for
from .admin import AdminHandler
from .jobs import JobTable
from .model import (
    FUTURE,
    GONE,
    HELD,
    PENDING,
    QUEUED,
    RUNNING,
    Ack,
    ConnectionState,
    Function,
    Job,
    JobOutcome,
    ServerConfig,
    StoredJob,
    StoreWrite,
)
from .names import client_id_error, describe_refused, function_name_error

__all__ = ["ConnectionState", "ServerConfig", "ServerState"]

_RES_BYTES: Final = Magic.RES.value
_pack: Final = pack_header
_NOOP: Final = _pack(_RES_BYTES, PacketType.NOOP, 0)
_JOB_CREATED: Final = int(PacketType.JOB_CREATED)
_JOB_ASSIGN_UNIQ: Final = int(PacketType.JOB_ASSIGN_UNIQ)
_NO_JOB: Final = _pack(_RES_BYTES, PacketType.NO_JOB, 0)

_CLIENT_ID_MAX: Final = 127
_SHARE_AT: Final = 4096
"""Payloads of WORK_* packets from this size on are shared, not copied, by the
connections they go to."""
_MIN_TIMEOUT_MS: Final = 1000

_NOT_EXPECTED: Final = (b"INVALID_COMMAND", b"Command not expected")
_NO_JOB_DATA: Final = b"Job does not exist on server"
_NO_JOB_RESULT: Final = b"Job given in work result not found"
_NO_JOB_EXCEPTION: Final = b"An exception was received for a job that does not exist"
_PERMISSION_DENIED: Final = b"PERMISSION_DENIED"

_PROTOCOL_ERROR_CODES: Final[dict[type[ProtocolError], bytes]] = {
    UnknownPacketType: b"INVALID_COMMAND",
    BadArgumentCount: b"INVALID_ARGUMENT",
    PacketTooLarge: b"ARGUMENT_TOO_LARGE",
}
"""ProtocolErrors answered with an ERROR packet before the connection closes."""


_Handler = Callable[[ConnectionState, Any, float], None]


_new_tuple: Final = tuple.__new__


class _BrokenStream:
    """A protocol error among the events waiting behind a connection's pending replies."""

    __slots__ = ("error",)

    def __init__(self, error: ProtocolError) -> None:
        self.error = error


def _durable_submission(event: Event) -> bool:
    """Whether ``event`` submits a background job (handled at once behind pending acks)."""
    if isinstance(event, (SubmitJob, SubmitReduceJob)):
        return event.background
    return isinstance(event, SubmitJobEpoch)


_MAX_BATCH: Final = 1_000
"""The most jobs one store transaction adds: answering a commit is then a few ms of loop
time at most, while a busy server still commits hundreds of jobs per fsync."""

_RESERVE: Final = 1_000_000
"""Handle numbers reserved in the store at a time (a new block is asked for at half)."""


def _frame(message: Message) -> bytes:
    """``message`` as a RES packet."""
    body = b"\0".join(message.wire_parts())
    return _pack(_RES_BYTES, message.packet_type, len(body)) + body


class ServerState(JobTable):
    """The job server's functions, queues, jobs, workers and clients.

    Args:
        config: the server settings.

    Attributes:
        config: the settings given.
        wall_offset: wall-clock time minus event-loop time, in seconds. The I/O
            layer keeps it current; SUBMIT_JOB_EPOCH's epoch is turned into loop
            time with it.
        dirty: connections whose ``outgoing`` buffer gained bytes. The I/O layer
            takes them out and sends.

    Example:
        >>> state = ServerState(ServerConfig(job_handle_prefix=b"H:x"))
        >>> conn = state.connect(b"127.0.0.1", 7)
        >>> state.receive(conn, SubmitJob(b"f", b"", b"data", background=True), 0.0)
        >>> bytes(conn.outgoing)
        b'\\x00RES\\x00\\x00\\x00\\x08\\x00\\x00\\x00\\x05H:x:1'
    """

    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.wall_offset = 0.0
        self._prefix = config.job_handle_prefix + b":"
        self._max_unique = config.max_unique
        # A cluster member leaves committed background jobs to the store.
        self._cluster = config.cluster and config.durable
        # Own submissions whose rows this member claimed before their commit was answered.
        self._claimed_early: set[bytes] = set()
        self._max_function_name = config.max_function_name
        self._next_handle = 1
        # Durable servers reserve handle numbers in the store ahead of use.
        self._handle_limit = 0
        self._reserving: int | None = None
        self._next_conn = 1
        self._connections: dict[int, ConnectionState] = {}
        self._denials: list[Denial] = []
        self._admin = AdminHandler(self, self._connections.values(), deny=self._deny_admin)
        invalid = self._invalid_command
        self._handlers: dict[type[Event], _Handler] = {
            SubmitJob: self._submit_job,
            GrabJobUniq: self._grab_job_uniq,
            WorkComplete: self._work_complete,
            GrabJob: self._grab_job,
            GrabJobAll: self._grab_job_all,
            PreSleep: self._pre_sleep,
            WorkData: self._work_data,
            WorkWarning: self._work_warning,
            WorkStatus: self._work_status,
            WorkFail: self._work_fail,
            WorkException: self._work_exception,
            GetStatus: self._get_status,
            GetStatusUnique: self._get_status_unique,
            EchoReq: self._echo,
            CanDo: self._can_do,
            CanDoTimeout: self._can_do_timeout,
            CantDo: self._cant_do,
            ResetAbilities: self._reset_abilities,
            SetClientId: self._set_client_id,
            OptionReq: self._option,
            SubmitJobEpoch: self._submit_job_epoch,
            SubmitReduceJob: self._submit_reduce_job,
            TextLine: self._text_line,
            UnexpectedMagic: self._unexpected_magic,
            Unused: invalid,
            Noop: invalid,
            JobCreated: invalid,
            NoJob: invalid,
            JobAssign: invalid,
            JobAssignUniq: invalid,
            JobAssignAll: invalid,
            EchoRes: invalid,
            Error: invalid,
            StatusRes: invalid,
            StatusResUnique: invalid,
            OptionRes: invalid,
            AllYours: invalid,
            SubmitJobSched: invalid,
        }

    # --- the interface of the I/O layer -------------------------------------------------

    def connect(
        self, address: bytes, fd: int, *, identity: Identity | None = None
    ) -> ConnectionState:
        """Register a new connection.

        Args:
            address: the peer's address as the admin ``workers`` listing shows it,
                e.g. ``b"127.0.0.1"``.
            fd: the connection's file descriptor number (shown by ``workers``).
            identity: who the peer is, for the access rules (its address, and
                the names of its verified TLS certificate); by default the
                address alone.

        Returns:
            The connection's state; pass it to every later call about it.
        """
        if identity is None:
            identity = Identity(address.decode("latin-1"))
        conn = ConnectionState(
            self._next_conn, address, fd, self.config.exceptions, self._grant(identity)
        )
        self._next_conn += 1
        self._connections[conn.id] = conn
        return conn

    def set_identity(self, conn: ConnectionState, identity: Identity) -> None:
        """Tell who the peer of ``conn`` is, once known (after a TLS handshake).

        What it may do from now on follows from ``identity``; what it registered
        before stays registered.
        """
        conn.grant = self._grant(identity)

    def _grant(self, identity: Identity) -> Grant:
        config = self.config
        return grant_for(config.acl, identity, admin_from_anywhere=config.admin_from_anywhere)

    def take_denials(self) -> Sequence[Denial]:
        """The requests refused by the access rules since the last call, oldest first.

        The I/O layer logs them (the state cannot); until then they are kept. It
        costs one check when there are none, so the I/O layer calls it after
        every batch.
        """
        denials = self._denials
        if not denials:
            return ()
        self._denials = []
        return denials

    def receive(self, conn: ConnectionState, event: Event, now: float) -> None:
        """Handle one event from ``conn``'s decoder.

        Replies are appended to the ``outgoing`` buffer of every connection they
        concern, and those connections are added to :attr:`dirty`. Events for a
        connection that is closing are ignored.

        Args:
            conn: the connection the event came from.
            event: a packet message, an admin :class:`TextLine` or an
                :class:`UnexpectedMagic`.
            now: the event loop's time, in seconds.
        """
        if conn.closing:
            return
        if conn.acks is not None:
            self._receive_behind_acks(conn, event, now)
            return
        if conn.listing is not None:
            # Answered once the listing is sent, in order.
            if conn.paused is None:
                conn.paused = [event]
            else:
                conn.paused.append(event)
            return
        self._handlers[type(event)](conn, event, now)

    def continue_listing(self, conn: ConnectionState, now: float) -> None:
        """Append the next slice of ``conn``'s admin listing to its output.

        The I/O layer calls it while :attr:`ConnectionState.listing` is set, each
        time the previous slice has been sent (letting other connections be served
        in between). After the last slice, the events that ``conn`` sent meanwhile
        are handled, in order.

        Args:
            conn: a connection whose :attr:`~ConnectionState.listing` is set.
            now: the event loop's time, in seconds.
        """
        listing = conn.listing
        if listing is None:
            return
        if conn.closing:  # the connection is going: the rest is not wanted
            conn.listing = None
            return
        chunk, done = listing.next_slice()
        conn.outgoing += chunk
        self.dirty.add(conn)
        if not done:
            return
        conn.listing = None
        paused = conn.paused
        conn.paused = None
        if paused:
            self._resume(conn, paused, now)

    def _resume(self, conn: ConnectionState, paused: list[Any], now: float) -> None:
        """Handle, in order, what ``conn`` sent while earlier replies waited: its events,
        and last, if its stream broke meanwhile, the protocol error."""
        for event in paused:
            if isinstance(event, _BrokenStream):
                if not conn.closing:
                    self._break(conn, event)
            else:
                self.receive(conn, event, now)

    def _receive_behind_acks(self, conn: ConnectionState, event: Event, now: float) -> None:
        """``conn`` waits for JOB_CREATED replies that the store must commit first.

        Another durable submission is handled at once (so that one connection's
        submissions share a commit); its reply, if it has one now, queues behind
        the others. Anything else waits, in order, until every reply before it
        went out.
        """
        if conn.paused is not None or not _durable_submission(event):
            if conn.paused is None:
                conn.paused = [event]
            else:
                conn.paused.append(event)
            return
        out = conn.outgoing
        mark = len(out)
        self._handlers[type(event)](conn, event, now)
        if len(out) > mark:  # an immediate reply (an error, a coalesced job's handle)
            said = bytes(out[mark:])
            del out[mark:]
            assert conn.acks is not None
            conn.acks.append(Ack(conn, None, said))

    def protocol_error(self, conn: ConnectionState, error: ProtocolError, now: float) -> None:
        """The decoder of ``conn`` failed: answer where that helps, and close.

        An ERROR packet goes out for an unknown packet type (``INVALID_COMMAND``),
        a body with the wrong number of arguments (``INVALID_ARGUMENT``) and a
        packet over the size limit (``ARGUMENT_TOO_LARGE``); its text is the
        decoder's message. A bad magic or an over-long admin line gets no answer:
        such a peer does not speak the binary protocol. :attr:`ConnectionState.closing`
        is set (and the connection marked dirty); the I/O layer closes the
        connection after flushing and then calls :meth:`disconnect`.

        While earlier requests of ``conn`` wait for their replies (a durable
        submission's commit, an admin listing), the error comes after those
        replies, in order: ``conn`` is marked :attr:`~ConnectionState.broken`
        now (read nothing more from it) and gets ``closing`` once they are
        answered.

        Args:
            conn: the connection whose stream broke the protocol.
            error: what the decoder raised.
            now: the event loop's time, in seconds.
        """
        if conn.closing or conn.broken:
            return
        if conn.acks is not None or conn.listing is not None:
            conn.broken = True
        self._break(conn, _BrokenStream(error))

    def _break(self, conn: ConnectionState, marker: _BrokenStream) -> None:
        """End ``conn`` with the error of ``marker``, or queue it behind the pending
        replies (after every event waiting there)."""
        if conn.acks is not None or conn.listing is not None:
            if conn.paused is None:
                conn.paused = [marker]
            else:
                conn.paused.append(marker)
            return
        self._end_broken(conn, marker.error)

    def _end_broken(self, conn: ConnectionState, error: ProtocolError) -> None:
        for kind, code in _PROTOCOL_ERROR_CODES.items():
            if isinstance(error, kind):
                self._error(conn, code, str(error).encode("ascii", "backslashreplace"))
                break
        conn.closing = True
        self.dirty.add(conn)

    def disconnect(self, conn: ConnectionState, now: float) -> None:
        """Forget a closed connection.

        Its running jobs are re-queued at the tail (or fail when the retry limit
        is reached), its foreground jobs lose it as a listener (a queued job
        nobody waits for any more leaves the queue), and its registrations go.

        Args:
            conn: the connection that closed.
            now: the event loop's time, in seconds.
        """
        if conn.closed:
            return
        conn.closed = conn.closing = True
        conn.sleeping = False
        conn.listing = None
        del self._connections[conn.id]
        self.dirty.discard(conn)
        for job in conn.attached:
            self._detach(conn, job)
        conn.attached.clear()
        lost = conn.ability_list[:]
        # A worker only runs jobs of functions it can do, and dropping them all
        # re-queued every one of its running jobs.
        self._drop_abilities(conn, lost, "its worker went away")
        assert not conn.running
        self._rewake(lost)

    @property
    def connections(self) -> Iterable[ConnectionState]:
        """Every open connection, oldest first."""
        return self._connections.values()

    @property
    def handles_issued(self) -> int:
        """How many handle numbers this server has used (or reserved)."""
        return self._next_handle - 1

    def set_handle_prefix(self, prefix: bytes) -> None:
        """Issue handles ``prefix:N`` from now on (before serving).

        A cluster member learns at start, from the store, a prefix that no other
        member uses, so that handles stay unique across the cluster.
        """
        self._prefix = prefix + b":"

    def reserve_handles(self, count: int) -> None:
        """Never issue the handle numbers up to ``count``.

        A server that takes over from an earlier one (a restart) keeps its
        handles unique with ``reserve_handles(earlier.handles_issued)``.
        """
        self._next_handle = max(self._next_handle, count + 1)
        self._handle_limit = max(self._handle_limit, count)

    # --- requests that concern no job -----------------------------------------------------

    def _invalid_command(self, conn: ConnectionState, event: Message, now: float) -> None:
        self._send(conn, Error(*_NOT_EXPECTED))

    def _unexpected_magic(self, conn: ConnectionState, event: UnexpectedMagic, now: float) -> None:
        self._send(conn, Error(b"INVALID_MAGIC", b"Request magic expected"))

    def _deny(self, conn: ConnectionState, action: Action, target: bytes) -> None:
        grant = conn.grant
        self._denials.append(Denial(grant.identity, action, target, grant.why_not()))

    def _deny_admin(self, conn: ConnectionState, words: bytes) -> bool:
        """Whether the admin command ``words`` is refused to ``conn`` (and record it)."""
        if conn.grant.admin:
            return False
        self._deny(conn, Action.ADMIN, words)
        return True

    def _text_line(self, conn: ConnectionState, event: TextLine, now: float) -> None:
        conn.admin = True
        self._admin.receive(conn, event.line)

    # --- submission -------------------------------------------------------------------------

    def _submit_job(self, conn: ConnectionState, msg: SubmitJob, now: float) -> None:
        self._submit(
            conn, msg.function, msg.unique, msg.data, msg.priority, msg.background, b"", 0.0, now
        )

    def _submit_reduce_job(self, conn: ConnectionState, msg: SubmitReduceJob, now: float) -> None:
        self._submit(
            conn, msg.function, msg.unique, msg.data, 1, msg.background, msg.reducer, 0.0, now
        )

    def _submit_job_epoch(self, conn: ConnectionState, msg: SubmitJobEpoch, now: float) -> None:
        due = msg.epoch - self.wall_offset if msg.epoch > 0 else 0.0
        self._submit(conn, msg.function, msg.unique, msg.data, 1, True, b"", due, now)

    def _submit(
        self,
        conn: ConnectionState,
        name: bytes,
        unique: bytes,
        data: bytes,
        priority: int,
        background: bool,
        reducer: bytes = b"",
        due: float = 0.0,
        now: float = 0.0,
    ) -> None:
        function = self._functions.get(name)
        # Names in the table were checked when they entered it.
        if function is None and self._refused(conn, name):
            return
        allowed = conn.grant.submit
        if allowed is not None and not allowed(name):
            self._deny(conn, Action.SUBMIT, name)
            self._error(conn, _PERMISSION_DENIED, b"not allowed to submit jobs of " + name)
            return
        if len(unique) > self._max_unique:
            self._error(conn, b"ARGUMENT_TOO_LARGE", b"Unique value too large")
            return
        if function is None:
            function = self._new_function(name)
        index: dict[bytes, Job] | None = None
        key = unique
        if unique and not (background and self._cluster):
            if unique == b"-":
                index = function.by_data
                key = data
            else:
                index = function.uniques
            existing = index.get(key)
            if existing is not None:
                if function.stats is not None:
                    function.stats.coalesced += 1
                self._coalesce(conn, existing, background)
                return
        limits = function.max_queue
        if limits is not None:
            limit = limits[priority]
            if limit and function.total >= limit:
                self._error(conn, b"QUEUE_ERROR", b"Job queue is full")
                return
        handle = self._prefix + b"%d" % self._next_handle
        job = Job(handle, function, unique, data, priority, background, reducer)
        job.queued_at = due if due > now else now
        stats = function.stats
        if stats is not None:
            stats.submitted[priority + 3 if background else priority] += 1
        self._next_handle += 1
        self._jobs[handle] = job
        if index is not None:
            index[key] = job
        if not background:
            job.clients = [conn]
            conn.attached[job] = None
        elif self._durable:
            self._store_job(job, due if due > now else 0.0)
            self._move(job, PENDING)
            self._ack_later(conn, job)
            observer = self.observer
            if observer is not None:
                observer.job_created(job)
            return
        out = conn.outgoing
        out += _pack(_RES_BYTES, _JOB_CREATED, len(handle))
        out += handle
        self.dirty.add(conn)
        if due > now:
            self._schedule(job, due)
        else:
            self._enqueue(job)
        observer = self.observer
        if observer is not None:
            observer.job_created(job)

    def restore_job(
        self,
        handle: bytes,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: int = 1,
        reducer: bytes = b"",
        due: float | None = None,
        now: float = 0.0,
    ) -> Job:
        """Take back a background job that an earlier server accepted.

        For a restart that keeps its jobs (a store's replay, the test server's
        ``restart(keep_jobs=True)``): the job keeps its handle, which no later job
        of this server reuses, and goes to the tail of its queue (or waits for
        ``due``). The store is not told (it has the job already), nor the
        :attr:`observer`.

        Args:
            handle: the job's handle.
            function: the function name.
            unique: the unique key (empty: none; ``-``: coalesced by data).
            data: the payload.
            priority: 0 (HIGH), 1 (NORMAL) or 2 (LOW).
            reducer: the reducer of a SUBMIT_REDUCE_JOB, else empty.
            due: for an epoch job not due yet, the loop time it is due at.
            now: the event loop's time (its queue wait is counted from it).

        Returns:
            The job, queued (or waiting for its time).

        Raises:
            ValueError: a job with this handle exists.
        """
        if handle in self._jobs:
            raise ValueError(f"a job with the handle {handle!r} exists")
        prefix = self._prefix
        if handle.startswith(prefix) and handle[len(prefix) :].isdigit():
            self._next_handle = max(self._next_handle, int(handle[len(prefix) :]) + 1)
        owner = self._function(function)
        job = Job(handle, owner, unique, data, priority, True, reducer)
        job.stored = self._durable
        job.queued_at = due if due is not None else now
        self._jobs[handle] = job
        if unique:
            index, key = (owner.by_data, data) if unique == b"-" else (owner.uniques, unique)
            index.setdefault(key, job)
        if due is not None:
            self._schedule(job, due)
        else:
            self._enqueue(job)
        return job

    def claimed_early(self, handle: bytes) -> bool:
        """A cluster member claimed the row of ``handle``: is it a job here already?

        The member's claim can come back before its own commit of that job
        is answered (:meth:`store_written`): the job, still waiting for the
        answer, is then queued here once answered instead of being left to the
        store. A job that runs here already (claimed again after its lease
        lapsed) stays as it is.

        Returns:
            Whether a job with this handle is here (do not restore it then).
        """
        job = self._jobs.get(handle)
        if job is None:
            return False
        if job.state == PENDING and self._cluster:
            self._claimed_early.add(handle)
        return True

    def _coalesce(self, conn: ConnectionState, job: Job, background: bool) -> None:
        if not background:
            if job.clients is None:
                job.clients = [conn]
            else:
                job.clients.append(conn)
            conn.attached[job] = None
        elif not job.background:
            # A background request joins a foreground job: the job must now survive
            # its clients, and be stored like any background job.
            job.background = True
            if self._durable:
                self._store_job(job, 0.0)
        if job.acks is not None:
            self._ack_later(conn, job)  # the job is being stored: its reply waits
        else:
            self._send(conn, JobCreated(job.handle))

    # --- durable jobs: the store's transactions ---------------------------------------------

    def _store_job(self, job: Job, due: float) -> None:
        """Put ``job`` in the store's next transaction; its replies wait for the commit."""
        epoch = round(due + self.wall_offset) if due else None
        write = self._write
        # tuple.__new__ directly: a named tuple's own __new__ is a Python function.
        write.added.append(
            _new_tuple(
                StoredJob,
                (
                    job.handle,
                    job.function.name,
                    job.unique,
                    job.data,
                    job.priority,
                    job.reducer,
                    epoch,
                ),
            )
        )
        write.jobs.append(job)
        write.due.append(due)
        job.stored = True
        job.acks = []

    def _ack_later(self, conn: ConnectionState, job: Job) -> None:
        """``conn``'s JOB_CREATED for ``job`` waits for the commit that stores it."""
        ack = Ack(conn, job)
        assert job.acks is not None
        job.acks.append(ack)
        if conn.acks is None:
            conn.acks = deque((ack,))
        else:
            conn.acks.append(ack)

    @property
    def store_work(self) -> bool:
        """Whether :meth:`take_store_write` has anything to give."""
        write = self._write
        return bool(write) or (self._durable and self._wants_handles())

    def _wants_handles(self) -> bool:
        return self._reserving is None and self._next_handle + _RESERVE // 2 > self._handle_limit

    def take_store_write(self) -> StoreWrite | None:
        """The store's next transaction, or ``None`` when there is nothing to write.

        Every durable job accepted since the last call (at most a thousand; the
        rest go in the next one, in order), the handles of stored
        jobs that ended, and, when handles run low, a new reservation of handle
        numbers (so that no handle is issued twice, even after a crash). Commit
        it, then call :meth:`store_written` or :meth:`store_failed` with it;
        take the next one only then.
        """
        write = self._write
        if self._durable and self._wants_handles():
            write.handle_limit = self._reserving = self._next_handle + _RESERVE
        if not write:
            return None
        self._write = StoreWrite()
        if len(write.added) > _MAX_BATCH:
            # A bounded transaction keeps bounded the loop's work when it is answered.
            rest = self._write
            rest.added, write.added = write.added[_MAX_BATCH:], write.added[:_MAX_BATCH]
            rest.jobs, write.jobs = write.jobs[_MAX_BATCH:], write.jobs[:_MAX_BATCH]
            rest.due, write.due = write.due[_MAX_BATCH:], write.due[:_MAX_BATCH]
            later = {job.handle for job in rest.added}
            rest.removed = [handle for handle in write.removed if handle in later]
            write.removed = [handle for handle in write.removed if handle not in later]
        if write.removed and write.added:
            # A job that ended before it was ever written (cancelled while it
            # waited) needs neither its row nor its deletion.
            both = {job.handle for job in write.added}.intersection(write.removed)
            if both:
                write.added = [job for job in write.added if job.handle not in both]
                write.removed = [handle for handle in write.removed if handle not in both]
        return write

    def store_written(
        self, write: StoreWrite, now: float, coalesced: Mapping[bytes, bytes] | None = None
    ) -> None:
        """The store committed ``write``: acknowledge its jobs and queue them.

        Args:
            write: what :meth:`take_store_write` gave.
            now: the event loop's time, in seconds.
            coalesced: what the store of a cluster answered: the handles of the
                jobs of ``write`` it did not insert because a live job of the
                cluster has their function and unique key, each with that job's
                handle. Their submissions are acknowledged with it (as gearmand
                answers a background submission that joins a job).
        """
        if write.handle_limit is not None:
            self._handle_limit = max(self._handle_limit, write.handle_limit)
            self._reserving = None
        if coalesced:
            self._count_coalesced(write, coalesced)
        touched = self._settle(write, b"", coalesced)
        early = self._claimed_early
        for job, due in zip(write.jobs, write.due, strict=True):
            if early and job.handle in early:
                early.discard(job.handle)
                claimed = True
            else:
                claimed = False
            if job.state == PENDING and self._cluster and not claimed:
                # Acknowledged; the row is the cluster's now, for any member to claim.
                job.stored = False
                self._forget(job)
            elif job.state == PENDING:
                if due > now:
                    self._move(job, FUTURE)
                    self._arm(job, due)
                else:
                    self._enqueue(job)
        self._answer(touched, now)

    def store_failed(self, write: StoreWrite, reason: bytes, now: float) -> None:
        """The store could not commit ``write``: refuse its jobs, keep its deletions.

        Each submission it held gets ``ERROR QUEUE_ERROR reason``; its new jobs
        are gone (a foreground job a background submission had joined runs on).
        The deletions go into the next transaction again.

        Args:
            write: what :meth:`take_store_write` gave.
            reason: the text of the errors (what the store said).
            now: the event loop's time, in seconds.
        """
        if write.handle_limit is not None:
            self._reserving = None
        early = self._claimed_early
        if early:  # nothing was written: nobody claimed those rows
            early.difference_update(job.handle for job in write.jobs)
        self._write.removed[:0] = write.removed
        touched = self._settle(write, reason)
        for job in write.jobs:
            job.stored = False
            if job.state == PENDING:
                self._forget(job)
                self._ended(job, JobOutcome.LOST)
            elif job.state != GONE:
                # A foreground job that the failed submission was to make durable
                # stays foreground, and goes if nobody waits for it any more.
                job.background = False
                if job.clients is None and job.state in (QUEUED, HELD):
                    self._forget(job)
                    self._ended(job, JobOutcome.LOST)
        self._answer(touched, now)

    def _count_coalesced(self, write: StoreWrite, coalesced: Mapping[bytes, bytes]) -> None:
        """For metrics: the jobs the cluster's store coalesced were no new jobs."""
        for job in write.jobs:
            stats = job.function.stats
            if stats is not None and job.handle in coalesced:
                stats.coalesced += 1
                stats.submitted[job.priority + 3] -= 1

    def _settle(
        self, write: StoreWrite, error: bytes, coalesced: Mapping[bytes, bytes] | None = None
    ) -> list[ConnectionState]:
        """Give the acks of ``write``'s jobs their reply; the connections they concern."""
        touched: list[ConnectionState] = []
        failed = _frame(Error(b"QUEUE_ERROR", error)) if error else b""
        for job in write.jobs:
            acks = job.acks or ()
            job.acks = None
            handle = job.handle
            if coalesced:
                handle = coalesced.get(handle, handle)
            reply = failed or _pack(_RES_BYTES, _JOB_CREATED, len(handle)) + handle
            for ack in acks:
                ack.reply = reply
                touched.append(ack.conn)
        return touched

    def _answer(self, conns: list[ConnectionState], now: float) -> None:
        """Send the answered acks at the head of each connection's queue, in order,
        then handle what each connection sent meanwhile."""
        for conn in conns:
            acks = conn.acks
            if acks is None:
                continue  # answered already (it appeared twice)
            if conn.closed:
                conn.acks = conn.paused = None
                continue
            out = conn.outgoing
            while acks:
                reply = acks[0].reply
                if reply is None:
                    break
                acks.popleft()
                out += reply
            self.dirty.add(conn)
            if acks:
                continue
            conn.acks = None
            paused = conn.paused
            conn.paused = None
            if paused:
                # In order; a durable submission among them makes the rest wait again.
                self._resume(conn, paused, now)

    # --- sleeping workers ---------------------------------------------------------------------

    def _pre_sleep(self, conn: ConnectionState, msg: PreSleep, now: float) -> None:
        conn.sleeping = True
        conn.noop_sent = False
        if self._find(conn, rotate=False) is not None:
            conn.noop_sent = True
            conn.outgoing += _NOOP
            self.dirty.add(conn)
            return
        for function in conn.ability_list:
            function.sleepers[conn] = None

    # --- workers --------------------------------------------------------------------------------

    def _register(self, conn: ConnectionState, name: bytes, timeout: int) -> None:
        allowed = conn.grant.register
        if allowed is not None and not allowed(name):
            self._deny(conn, Action.REGISTER, name)
            self._error(conn, _PERMISSION_DENIED, b"not allowed to register the function " + name)
            return
        function = self._function(name)
        abilities = conn.abilities
        if function in abilities:
            abilities[function] = timeout
            return
        abilities[function] = timeout
        conn.ability_list.append(function)
        function.workers[conn] = None
        if conn.sleeping and not conn.noop_sent:
            if any(function.counts):
                conn.noop_sent = True
                conn.outgoing += _NOOP
                self.dirty.add(conn)
            else:
                function.sleepers[conn] = None

    def _refused(self, conn: ConnectionState, name: bytes) -> bool:
        """Whether the function name ``name`` is refused (``conn`` is then told why)."""
        why = function_name_error(name, self._max_function_name)
        if why is None:
            return False
        self._note_refusal(conn, describe_refused("function name", name, why[1]))
        self._error(conn, *why)
        return True

    def _can_do(self, conn: ConnectionState, msg: CanDo, now: float) -> None:
        if msg.function in self._functions or not self._refused(conn, msg.function):
            self._register(conn, msg.function, 0)

    def _can_do_timeout(self, conn: ConnectionState, msg: CanDoTimeout, now: float) -> None:
        if msg.function not in self._functions and self._refused(conn, msg.function):
            return
        timeout = msg.timeout
        self._register(conn, msg.function, max(timeout, _MIN_TIMEOUT_MS) if timeout > 0 else 0)

    def _drop_abilities(self, conn: ConnectionState, functions: list[Function], why: str) -> None:
        """Unregister ``functions`` and re-queue the jobs of them ``conn`` runs."""
        dropped = set(functions)
        for function in functions:
            del conn.abilities[function]
            del function.workers[conn]
            function.sleepers.pop(conn, None)
        conn.ability_list = [f for f in conn.ability_list if f not in dropped]
        conn.rr = 0
        for job in [job for job in conn.running.values() if job.function in dropped]:
            self._requeue(job, why)
        for function in functions:
            self._release(function)

    def _cant_do(self, conn: ConnectionState, msg: CantDo, now: float) -> None:
        function = self._functions.get(msg.function)
        if function is None:
            self._refused(conn, msg.function)  # an unknown name that is valid needs no reply
            return
        if function not in conn.abilities:
            return
        self._drop_abilities(conn, [function], "its worker sent CANT_DO while running it")
        self._rewake([function])

    def _reset_abilities(self, conn: ConnectionState, msg: ResetAbilities, now: float) -> None:
        lost = conn.ability_list[:]
        self._drop_abilities(conn, lost, "its worker sent RESET_ABILITIES while running it")
        self._rewake(lost)

    def _grab(self, conn: ConnectionState, now: float) -> Job | None:
        conn.sleeping = False
        conn.noop_sent = False
        self.dirty.add(conn)
        found = self._find(conn, rotate=True)
        if found is None:
            conn.outgoing += _NO_JOB
            return None
        job = self._take(*found)
        self._assign(conn, job, now)
        return job

    def _grab_job(self, conn: ConnectionState, msg: GrabJob, now: float) -> None:
        job = self._grab(conn, now)
        if job is not None:
            self._send_job(conn, JobAssign(job.handle, job.function.name, job.data), job.data)

    def _grab_job_uniq(self, conn: ConnectionState, msg: GrabJobUniq, now: float) -> None:
        job = self._grab(conn, now)
        if job is not None:
            parts = (job.handle, job.function.name, job.unique, job.data)
            if len(job.data) >= LARGE_PART:
                append_packet(conn.outgoing, _RES_BYTES, _JOB_ASSIGN_UNIQ, parts)
            else:
                body = b"\0".join(parts)
                out = conn.outgoing
                out += _pack(_RES_BYTES, _JOB_ASSIGN_UNIQ, len(body))
                out += body

    def _grab_job_all(self, conn: ConnectionState, msg: GrabJobAll, now: float) -> None:
        job = self._grab(conn, now)
        if job is None:
            return
        if job.reducer:
            assign: Message = JobAssignAll(
                job.handle, job.function.name, job.unique, job.reducer, job.data
            )
        else:
            assign = JobAssignUniq(job.handle, job.function.name, job.unique, job.data)
        self._send_job(conn, assign, job.data)

    # --- work results ---------------------------------------------------------------------------

    def _forward(self, job: Job, message: Message) -> None:
        clients = job.clients
        if clients is not None:
            self._fan_out(clients, message)

    def _fan_out(self, clients: Iterable[ConnectionState], message: Message) -> None:
        """Send ``message`` to each of ``clients`` (once per entry), encoded once.

        A large payload is not copied at all: each connection's output refers to
        the message's own bytes object (:meth:`ConnectionState.share`).
        """
        parts = message.wire_parts()
        data = parts[-1]
        dirty = self.dirty
        if len(data) < _SHARE_AT or len(parts) < 2:
            body = b"\0".join(parts)
            packet = _pack(_RES_BYTES, message.packet_type, len(body)) + body
            for client in clients:
                client.outgoing += packet
                dirty.add(client)
            return
        head = b"\0".join(parts[:-1]) + b"\0"
        head = _pack(_RES_BYTES, message.packet_type, len(head) + len(data)) + head
        for client in clients:
            client.outgoing += head
            client.share(data)
            dirty.add(client)

    def _work_data(self, conn: ConnectionState, msg: WorkData, now: float) -> None:
        job = conn.running.get(msg.handle)
        if job is None:
            self._error(conn, b"JOB_NOT_FOUND", _NO_JOB_DATA)
        else:
            self._forward(job, msg)

    def _work_warning(self, conn: ConnectionState, msg: WorkWarning, now: float) -> None:
        job = conn.running.get(msg.handle)
        if job is None:
            self._error(conn, b"JOB_NOT_FOUND", _NO_JOB_DATA)
        else:
            self._forward(job, msg)

    def _work_status(self, conn: ConnectionState, msg: WorkStatus, now: float) -> None:
        job = conn.running.get(msg.handle)
        if job is None:
            self._error(conn, b"JOB_NOT_FOUND", _NO_JOB_RESULT)
            return
        job.numerator = msg.numerator
        job.denominator = msg.denominator
        self._forward(job, msg)

    def _work_complete(self, conn: ConnectionState, msg: WorkComplete, now: float) -> None:
        job = conn.running.get(msg.handle)
        if job is None:
            self._error(conn, b"JOB_NOT_FOUND", _NO_JOB_RESULT)
            return
        if job.clients is not None:
            self._forward(job, msg)
        self._finish(conn, job)
        outcome = JobOutcome.CANCELLED if job.cancelled else JobOutcome.COMPLETED
        self._ended(job, outcome, msg.data, now)

    def _work_fail(self, conn: ConnectionState, msg: WorkFail, now: float) -> None:
        handle = msg.handle
        if handle.endswith(b"\0"):
            handle = handle.rstrip(b"\0")
            msg = WorkFail(handle)
        job = conn.running.get(handle)
        if job is None:
            self._error(conn, b"JOB_NOT_FOUND", _NO_JOB_RESULT)
            return
        self._forward(job, msg)
        self._finish(conn, job)
        self._ended(job, JobOutcome.CANCELLED if job.cancelled else JobOutcome.FAILED, b"", now)

    def _work_exception(self, conn: ConnectionState, msg: WorkException, now: float) -> None:
        job = conn.running.get(msg.handle)
        if job is None:
            self._error(conn, b"JOB_NOT_FOUND", _NO_JOB_EXCEPTION)
            return
        clients = job.clients
        if clients is not None:
            # Those that asked for exceptions get them; the others WORK_FAIL.
            told = [client for client in clients if client.exceptions]
            if told:
                self._fan_out(told, msg)
            if len(told) < len(clients):
                self._fan_out([c for c in clients if not c.exceptions], WorkFail(msg.handle))
        self._finish(conn, job)
        outcome = JobOutcome.CANCELLED if job.cancelled else JobOutcome.EXCEPTION
        self._ended(job, outcome, msg.data, now)

    # --- status and connection options ----------------------------------------------------------

    def _get_status(self, conn: ConnectionState, msg: GetStatus, now: float) -> None:
        job = self._jobs.get(msg.handle)
        if job is None:
            self._send(conn, StatusRes(msg.handle, False, False, 0, 0))
        else:
            running = job.state == RUNNING
            self._send(conn, StatusRes(msg.handle, True, running, job.numerator, job.denominator))

    def _get_status_unique(self, conn: ConnectionState, msg: GetStatusUnique, now: float) -> None:
        unique = msg.unique
        job = None
        if unique and len(unique) <= self._max_unique:
            for function in self._functions.values():
                job = function.uniques.get(unique)
                if job is not None:
                    break
        if job is None:
            self._send(conn, StatusResUnique(unique, False, False, 0, 0, 0))
        else:
            clients = len(job.clients) if job.clients is not None else 0
            running = job.state == RUNNING
            self._send(
                conn,
                StatusResUnique(unique, True, running, job.numerator, job.denominator, clients),
            )

    def _echo(self, conn: ConnectionState, msg: EchoReq, now: float) -> None:
        self._send(conn, EchoRes(msg.data))

    def _set_client_id(self, conn: ConnectionState, msg: SetClientId, now: float) -> None:
        client_id = msg.client_id[:_CLIENT_ID_MAX]
        why = client_id_error(client_id)
        if why is None:
            conn.client_id = client_id
        else:
            self._note_refusal(conn, describe_refused("client id", client_id, why[1]))
            self._error(conn, *why)  # the connection keeps its id

    def _option(self, conn: ConnectionState, msg: OptionReq, now: float) -> None:
        if msg.option.lower() == b"exceptions":
            conn.exceptions = True
            self._send(conn, OptionRes(msg.option))
        else:
            self._error(conn, b"UNKNOWN_OPTION", b"Server does not recognize given option")
