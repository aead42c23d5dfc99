"""The Gearman worker: functions, a hard limit of concurrent jobs, a graceful stop."""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.abc

from .._address import Address, server_list
from .._exceptions import ConnectionLost, GearmanError, JobException, JobFailed
from .._failover import Backoff, Heartbeat, Link, LinkSet, ServerHealth
from .._net.stream import DEFAULT_CONNECT_TIMEOUT, Connector, PacketStream, connect
from .._proto import Message, WorkComplete, WorkException, WorkFail, WorkWarning
from .._proto.worker import AssignedJob, Slots, WorkerConnectionState
from .connection import WorkerConnection
from .job import FunctionSpec, Handler, Job, result_bytes

__all__ = ["Worker"]

logger = logging.getLogger("trio_gearman.worker")

H = TypeVar("H", bound=Handler)

_FLUSH_TIMEOUT = 5.0  # seconds to hand the last packets to the transport after stop()
_CANCEL_FLUSH_TIMEOUT = 1.0  # the same when run() is cancelled: cancellation is prompt


class _Slot:
    """A job task between jobs: the work handed to it and the event that wakes it."""

    __slots__ = ("event", "work")

    def __init__(self, work: tuple[WorkerConnection, AssignedJob[FunctionSpec]]) -> None:
        self.work = work
        self.event = anyio.Event()


class _Jobs:
    """One run of a worker: its slots, its connections and the tasks that run jobs.

    It is the :class:`~.connection.ConnectionOwner` of the worker's connections.
    """

    def __init__(
        self,
        slots: Slots,
        tg: anyio.abc.TaskGroup,
        limiter: anyio.CapacityLimiter,
        *,
        send_exceptions: bool,
    ) -> None:
        self.slots = slots
        self.conns: list[WorkerConnection] = []
        self.tg: anyio.abc.TaskGroup | None = tg
        self.limiter = limiter
        self.send_exceptions = send_exceptions
        self.idle_slots: list[_Slot] = []
        self.idle: anyio.Event | None = None

    def start_job(self, conn: WorkerConnection, job: AssignedJob[FunctionSpec]) -> bool:
        """Hand a job to an idle job task, or start one (cheaper than a task per job)."""
        if self.tg is None:
            return False
        if self.idle_slots:
            slot = self.idle_slots.pop()
            slot.work = (conn, job)
            slot.event.set()
        else:
            self.tg.start_soon(self._run_slot, _Slot((conn, job)))
        return True

    def flush(self) -> None:
        """Send what every connection has queued; wake a drain once no slot is used."""
        for conn in self.conns:
            conn.flush()
        idle = self.idle
        if idle is not None and self.slots.used == 0:
            self.idle = None
            idle.set()

    def connection_ended(self, conn: WorkerConnection) -> None:
        """A connection ended: its GRABs freed their slots for the others; its jobs run on."""
        with contextlib.suppress(ValueError):
            self.conns.remove(conn)
        self.flush()

    async def wait_idle(self) -> None:
        """Wait until no slot is used (no GRAB in flight, no job running)."""
        while self.slots.used > 0:
            self.idle = anyio.Event()
            await self.idle.wait()

    def close(self) -> None:
        """Take no more jobs (the job tasks are gone)."""
        self.tg = None
        self.idle_slots.clear()

    async def _run_slot(self, slot: _Slot) -> None:
        idle = self.idle_slots
        while True:
            conn, job = slot.work
            await self._run_job(conn, job)
            # Idle before anything else runs: the GRAB that the job's end may have
            # sent cannot be answered before this task waits.
            slot.event = anyio.Event()
            idle.append(slot)
            await slot.event.wait()

    async def _run_job(self, conn: WorkerConnection, assigned: AssignedJob[FunctionSpec]) -> None:
        """Run one job and send its final packet(s); a cancelled job sends WORK_FAIL."""
        spec = assigned.function
        job = Job(conn, assigned)
        final: tuple[Message, ...] = ()
        try:
            try:
                if spec.timeout is None:
                    value = await spec.call(job, self.limiter)
                else:
                    with anyio.move_on_after(spec.timeout) as scope:
                        value = await spec.call(job, self.limiter)
                    if scope.cancelled_caught:
                        logger.warning("%r ran over its %g s time limit", job, spec.timeout)
                        final = self._failure(job, f"timed out after {spec.timeout:g} s")
                if not final:
                    final = (WorkComplete(job.handle, result_bytes(value)),)
            except JobException as exc:
                final = self._failure(job, exc.data)
            except JobFailed as exc:
                logger.info("%r failed: %s", job, exc)
                final = (WorkFail(job.handle),)
            except ConnectionLost:
                pass  # from send_data() & co.: nothing more can be sent; run() reports it
            except Exception as exc:
                logger.exception("%r raised", job)
                final = self._failure(job, f"{type(exc).__name__}: {exc}")
        finally:
            conn.finish(assigned, final or (WorkFail(job.handle),))

    def _failure(self, job: Job, text: bytes | str) -> tuple[Message, ...]:
        data = text.encode() if isinstance(text, str) else text
        if self.send_exceptions:
            return (WorkException(job.handle, data),)
        return (WorkWarning(job.handle, data), WorkFail(job.handle))


class _ServerConns:
    """One server's connections: the main one, and one per function with its own limit.

    They live and die together: when one ends, the others are closed and the
    server's link reconnects them all.
    """

    __slots__ = ("address", "ended", "error", "extra", "main", "opened", "stream", "tg")

    def __init__(self, address: str, stream: PacketStream) -> None:
        self.address = address
        self.stream = stream
        self.opened: dict[str, PacketStream] = {}  # connected, not yet running
        self.main: WorkerConnection | None = None
        self.extra: dict[str, WorkerConnection] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.error: GearmanError | None = None
        self.ended = anyio.Event()

    @property
    def heard(self) -> int:
        """How many chunks the server has sent on the main connection."""
        return self.stream.reads

    @property
    def running(self) -> int:
        """Jobs running that came from these connections."""
        conns = [*self.extra.values()] if self.main is None else [self.main, *self.extra.values()]
        return sum(conn.running for conn in conns)

    def end(self, error: GearmanError | None) -> None:
        """One of the connections ended: close them all."""
        if self.error is None:
            self.error = error or ConnectionLost("the connection ended", server=self.address)
            self.ended.set()


class Worker:
    """A Gearman worker: runs registered functions for the jobs its servers hand out.

    The worker keeps a supervised link to every server of ``servers``: it
    registers its functions on each, grabs jobs from each and sleeps on each.
    A link that breaks reconnects with back-off; once its server is back the
    worker registers every function (CAN_DO / CAN_DO_TIMEOUT) and its client id
    there again and grabs from it. A job whose server is lost while it runs goes
    on to its end; its result is dropped with a log line (the server re-queues
    the job). :meth:`servers` reports each link's health.

    At most ``concurrency`` jobs run at once, over all servers together: the
    worker sends a GRAB only while a slot is free (several GRABs in flight when
    several are), and runs each job as a task of its own. An ``async def``
    function is awaited; a plain function runs in a worker thread. A function
    returns the job's result (``bytes``, ``str`` as UTF-8, or ``None`` for
    empty); raising :class:`~trio_gearman.JobFailed` fails the job (WORK_FAIL);
    raising :class:`~trio_gearman.JobException` or any other exception fails it
    with an error text (WORK_EXCEPTION; the exception is logged with its
    traceback), and the worker goes on.

    Args:
        servers: as for :class:`~trio_gearman.Client`.
        client_id: sent as SET_CLIENT_ID (shown by the server's ``workers`` command).
        concurrency: the most jobs at once, over all servers (a hard limit).
        regrab_interval: while asleep, GRAB again after this many seconds without a
            NOOP (so a lost NOOP never leaves work waiting).
        send_exceptions: fail a job that raised with WORK_EXCEPTION and the error
            text (True), or with WORK_WARNING carrying the text then WORK_FAIL
            (False). gearmand 1.1.20 turns WORK_EXCEPTION into ``WORK_FAIL
            handle\\0`` for clients without the ``exceptions`` option, which
            libgearman 1.1.20 clients never match (they wait forever); use False
            where such clients submit to gearmand 1.1.20.
        timeout_grace: seconds added to a function's ``timeout`` in the
            CAN_DO_TIMEOUT the server gets, so that the local limit fails the job
            cleanly before the server's limit re-queues it.
        max_grabs: the most GRABs in flight per connection.
        connect_timeout: seconds to wait for each connection attempt; also the
            time a new connection's server has to answer.
        backoff: how long a broken link waits before reconnecting.
        heartbeat_interval: while a server owes an answer (to a GRAB) and has been
            silent this many seconds, send it an ECHO_REQ.
        heartbeat_timeout: a server that leaves that ECHO_REQ unanswered this many
            seconds is dropped (its link reconnects after back-off).
        ssl_context: the TLS settings for ``tls://`` servers, and for every
            server without a scheme once given (as for
            :class:`~trio_gearman.Client`: a failed handshake is a failed
            connection attempt, logged and retried after back-off).

    Example:
        >>> worker = Worker(["10.0.0.1:4730", "10.0.0.2:4730"], client_id="resizer-1",
        ...                 concurrency=8)
        >>> @worker.function("reverse")
        ... async def reverse(job: Job) -> bytes:
        ...     await job.send_status(1, 2)
        ...     return job.data[::-1]
        >>> # await worker.run()    serves until cancelled or stop()ped
    """

    def __init__(
        self,
        servers: Address | Sequence[Address],
        *,
        client_id: str | bytes | None = None,
        concurrency: int = 1,
        regrab_interval: float = 10.0,
        send_exceptions: bool = True,
        timeout_grace: float = 1.0,
        max_grabs: int = 8,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Backoff | None = None,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_grabs < 1:
            raise ValueError(f"max_grabs must be at least 1, got {max_grabs}")
        if not regrab_interval > 0:
            raise ValueError(f"regrab_interval must be positive, got {regrab_interval}")
        self.addresses = server_list(servers, tls=ssl_context is not None)
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"a server is listed twice: {', '.join(self.addresses)}")
        self.client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self.concurrency = concurrency
        self.regrab_interval = regrab_interval
        self.send_exceptions = send_exceptions
        self.timeout_grace = timeout_grace
        self.max_grabs = max_grabs
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.backoff = backoff if backoff is not None else Backoff()
        self.heartbeat = Heartbeat(
            min(connect_timeout, heartbeat_interval), heartbeat_interval, heartbeat_timeout
        )
        self._limiter = anyio.CapacityLimiter(concurrency)
        # The job slots (GRABs in flight + running jobs), new for each run().
        self._slots = Slots(concurrency)
        self._jobs: _Jobs | None = None
        self._connector: Connector | None = None
        self._functions: dict[str, FunctionSpec] = {}
        self._limits: dict[str, Slots] = {}
        self._links: LinkSet[_ServerConns] | None = None
        self._running = False
        self._stop_requested = anyio.Event()
        self._stop_deadline = math.inf
        self._drain_scope: anyio.CancelScope | None = None
        self._settling: anyio.CancelScope | None = None
        self._flush_timeout = _FLUSH_TIMEOUT

    # --- functions -----------------------------------------------------------------------

    @property
    def functions(self) -> list[str]:
        """The names of the registered functions."""
        return list(self._functions)

    @property
    def running_jobs(self) -> int:
        """How many jobs run right now."""
        return self._slots.running

    def servers(self) -> list[ServerHealth]:
        """The health of the link to each server, in the configured order.

        ``jobs_in_flight`` counts the jobs running that came from that server's
        current connections. Empty while the worker does not run.
        """
        if self._links is None:
            return []
        return self._links.health(lambda conns: conns.running)

    async def wait_servers_changed(self) -> None:
        """Wait for the next state transition of any server's link.

        Raises:
            RuntimeError: the worker is not running.
        """
        if self._links is None:
            raise RuntimeError("the worker is not running")
        await self._links.wait_changed()

    def function(
        self, name: str, *, timeout: float | None = None, concurrency: int | None = None
    ) -> Callable[[H], H]:
        """Register the decorated function under ``name`` (see :meth:`register`).

        Example:
            >>> @worker.function("reverse", timeout=30)
            ... async def reverse(job):
            ...     return job.data[::-1]
        """

        def decorate(handler: H) -> H:
            self.register(name, handler, timeout=timeout, concurrency=concurrency)
            return handler

        return decorate

    def register(
        self,
        name: str,
        handler: Handler,
        *,
        timeout: float | None = None,
        concurrency: int | None = None,
    ) -> None:
        """Register a function; while the worker runs, the server learns it at once.

        Args:
            name: the function name clients submit to.
            handler: ``async def f(job) -> bytes | str | None``, or a plain
                function, which runs in a worker thread.
            timeout: a job running longer than this many seconds is cancelled and
                failed (CAN_DO_TIMEOUT tells the server; see ``timeout_grace``). A
                thread cannot be interrupted: its job fails at once and the thread
                is abandoned.
            concurrency: the most jobs of this function at once, within the
                worker's limit. Such a function gets a connection of its own.

        Raises:
            ValueError: ``name`` is already registered, empty or holds a NUL byte,
                or ``timeout``/``concurrency`` is not positive.
        """
        if name in self._functions:
            raise ValueError(f"function {name!r} is already registered; unregister it first")
        spec = FunctionSpec.create(name, handler, timeout, concurrency)
        self._functions[name] = spec
        if concurrency is not None:
            self._limits[name] = Slots(concurrency)
        if self._links is None:
            return  # run() registers it on every server it connects to
        for conns in self._links.live():
            if concurrency is None:
                if conns.main is not None:
                    conns.main.add(spec)
            elif conns.tg is not None:
                conns.tg.start_soon(self._run_extra, conns, spec)

    def unregister(self, name: str) -> None:
        """Unregister a function; while the worker runs, CANT_DO goes out at once.

        Jobs of the function that are running go on. gearmand 1.1.20 re-queues
        them on CANT_DO, so another worker runs them again and their results here
        earn an ERROR (JOB_NOT_FOUND), which is logged.

        Raises:
            KeyError: ``name`` is not registered.
        """
        spec = self._functions.pop(name)
        self._limits.pop(name, None)
        if self._links is None:
            return
        for conns in self._links.live():
            conn = conns.extra.get(name, conns.main)
            if conn is not None:
                conn.remove(spec)

    # --- running -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve jobs until :meth:`stop` or cancellation.

        Calls ``task_status.started()`` once every server has had its first
        connection attempt: the functions are registered on each server that
        answered. A server that is not up yet, or is lost later, is retried with
        back-off however long it takes (each outage is logged once, as is its
        end), and the worker registers there as soon as it is back: start
        workers and servers in any order. The worker never stops on its own;
        :meth:`servers` tells which links are up.

        Two ways to stop:

        * :meth:`stop` is the graceful one: nothing more is grabbed, running jobs
          finish (up to its ``timeout``), their results go out, and then
          :meth:`run` returns;
        * cancelling :meth:`run` is prompt, as Trio asks of cancellation: the
          running jobs are cancelled at once and each is reported to its server
          with WORK_FAIL (the server lets the client know, and re-queues
          nothing), with at most a second spent handing those packets over.
        """
        if self._running:
            raise RuntimeError("the worker is already running")
        self._running = True
        try:
            self._slots = Slots(self.concurrency)
            for name in self._limits:
                self._limits[name] = Slots(self._limits[name].size)
            links = LinkSet(
                [
                    Link(
                        address, self._open, self._serve_server, backoff=self.backoff, role="worker"
                    )
                    for address in self.addresses
                ],
                usable=lambda conns: conns.error is None,
                verified=lambda conns: conns.heard > 0,
            )
            finished = anyio.Event()
            async with anyio.create_task_group() as outer:
                try:
                    await outer.start(self._serve, links, finished)
                    with anyio.CancelScope() as self._settling:
                        if not self._stop_requested.is_set():
                            await links.wait_settled()
                    self._settling = None
                    if not links.live() and not self._stop_requested.is_set():
                        logger.warning(
                            "worker: no server is up yet (%s); retrying until one is",
                            ", ".join(self.addresses),
                        )
                    task_status.started()
                    await finished.wait()
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True):
                        self._flush_timeout = _CANCEL_FLUSH_TIMEOUT
                        self.stop(0)
                        await finished.wait()
                    raise
        finally:
            self._running = False
            self._stop_requested = anyio.Event()
            self._stop_deadline = math.inf
            self._drain_scope = None
            self._settling = None
            self._flush_timeout = _FLUSH_TIMEOUT
            self._links = None
            self._jobs = None

    def stop(self, timeout: float | None = None) -> None:
        """Stop grabbing; let running jobs finish, then close and return from :meth:`run`.

        Has no effect while the worker is not running.

        Args:
            timeout: cancel (and fail, with WORK_FAIL) the jobs still running after
                this many seconds; ``None`` waits for them however long they take.
                A second call can shorten the deadline, never extend it.
        """
        if not self._running:
            return
        self._slots.stop()
        if timeout is not None:
            deadline = anyio.current_time() + timeout
            self._stop_deadline = min(self._stop_deadline, deadline)
            if self._drain_scope is not None:
                self._drain_scope.deadline = self._stop_deadline
        if self._settling is not None:
            self._settling.cancel()  # stopped before every server had its first try
        self._stop_requested.set()

    async def _serve(
        self,
        links: LinkSet[_ServerConns],
        finished: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # Shielded: cancelling run() starts a drain (see run) instead of tearing down.
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as conns:
                    async with anyio.create_task_group() as jobs:
                        runner = self._jobs = _Jobs(
                            self._slots, jobs, self._limiter, send_exceptions=self.send_exceptions
                        )
                        self._links = links
                        for link in links.links:
                            await conns.start(link.run)
                        task_status.started()
                        await self._stop_requested.wait()
                        with anyio.CancelScope(deadline=self._stop_deadline) as drain:
                            self._drain_scope = drain
                            await runner.wait_idle()
                        jobs.cancel_scope.cancel()
                    runner.close()
                    with anyio.move_on_after(self._flush_timeout):
                        for conn in list(runner.conns):
                            with contextlib.suppress(ConnectionLost):
                                await conn.drain()
                    conns.cancel_scope.cancel()
        finally:
            finished.set()

    # --- one server's connections ----------------------------------------------------------

    async def _connect(self, address: str) -> PacketStream:
        if self._connector is not None:
            return await self._connector(address)
        return await connect(
            address,
            connect_timeout=self.connect_timeout,
            ssl_context=self.ssl_context,
        )

    async def _open(self, address: str) -> _ServerConns:
        """Connect the main connection and one per function with its own limit."""
        conns = _ServerConns(address, await self._connect(address))
        try:
            for spec in list(self._functions.values()):
                if spec.concurrency is not None:
                    conns.opened[spec.name] = await self._connect(address)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for stream in [conns.stream, *conns.opened.values()]:
                    await stream.aclose()
            raise
        return conns

    async def _serve_server(self, conns: _ServerConns) -> None:
        """Run one server's connections until one of them ends; then close them all."""
        handshake = len(self.addresses) > 1
        # No await between reading the functions and publishing the connections, so
        # that register() reaches them either way.
        unlimited = [spec for spec in self._functions.values() if spec.concurrency is None]
        limited = [spec for spec in self._functions.values() if spec.concurrency is not None]
        main = conns.main = self._connection(unlimited, None, handshake=handshake)
        try:
            async with anyio.create_task_group() as tg:
                conns.tg = tg
                await tg.start(self._run_conn, conns, main, conns.stream)
                for spec in limited:
                    await tg.start(self._run_extra, conns, spec)
                await conns.ended.wait()
                tg.cancel_scope.cancel()
        finally:
            conns.tg = None
            conns.end(None)
            with anyio.CancelScope(shield=True):
                for stream in [conns.stream, *conns.opened.values()]:
                    if stream.error is None:  # never served
                        await stream.aclose()
        assert conns.error is not None
        raise conns.error

    async def _run_extra(
        self,
        conns: _ServerConns,
        spec: FunctionSpec,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the connection of a function with its own limit (connecting it if need be)."""
        stream = conns.opened.pop(spec.name, None)
        if spec.concurrency is None or self._functions.get(spec.name) is not spec:
            task_status.started()
            return  # unregistered meanwhile
        if stream is None:
            try:
                stream = await self._connect(conns.address)
            except GearmanError as exc:
                task_status.started()
                conns.end(exc)  # the server is in trouble: reconnect everything
                return
        limit = self._limits.get(spec.name) or Slots(spec.concurrency)
        conn = self._connection([spec], limit, handshake=len(self.addresses) > 1)
        conns.extra[spec.name] = conn
        await self._run_conn(conns, conn, stream, task_status=task_status)

    async def _run_conn(
        self,
        conns: _ServerConns,
        conn: WorkerConnection,
        stream: PacketStream,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self._jobs is not None
        self._jobs.conns.append(conn)
        try:
            await conn.run(stream, task_status=task_status)
        finally:
            conns.end(stream.error)

    def _connection(
        self, functions: list[FunctionSpec], limit: Slots | None, *, handshake: bool
    ) -> WorkerConnection:
        assert self._jobs is not None
        state = WorkerConnectionState(
            self._slots,
            functions,
            limit=limit,
            max_grabs=self.max_grabs,
            timeout_grace=self.timeout_grace,
            handshake=handshake,
        )
        return WorkerConnection(
            self._jobs,
            state,
            client_id=self.client_id,
            regrab_interval=self.regrab_interval,
            heartbeat=self.heartbeat,
        )
