"""The Gearman worker: functions, a hard limit of concurrent jobs, a graceful stop."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio
import anyio.abc

from ._exceptions import ConnectFailed, ConnectionLost, GearmanError
from ._job import FunctionSpec, Handler, Job
from ._servers import Connector, open_first_reachable, server_list
from ._stream import DEFAULT_CONNECT_TIMEOUT, Address, PacketStream, connect
from ._worker_conn import WorkerConnection

__all__ = ["Worker"]

H = TypeVar("H", bound=Handler)

_FLUSH_TIMEOUT = 5.0  # seconds to hand the last packets to the transport at shutdown


class _Slot:
    """A job task between jobs: the work handed to it and the event that wakes it."""

    __slots__ = ("event", "work")

    def __init__(self, work: tuple[WorkerConnection, Job, FunctionSpec]) -> None:
        self.work = work
        self.event = anyio.Event()


class Worker:
    """A Gearman worker: runs registered functions for the jobs a server hands out.

    At most ``concurrency`` jobs run at once: the worker sends a GRAB only while a
    slot is free (several GRABs in flight when several are), and runs each job as a
    task of its own. An ``async def`` function is awaited; a plain function runs in
    a worker thread. A function returns the job's result (``bytes``, ``str`` as
    UTF-8, or ``None`` for empty); raising :class:`~trio_gearman.JobFailed` fails
    the job (WORK_FAIL); raising :class:`~trio_gearman.JobException` or any other
    exception fails it with an error text (WORK_EXCEPTION; the exception is logged
    with its traceback), and the worker goes on.

    Args:
        servers: as for :class:`~trio_gearman.Client`; the worker connects to the
            first reachable one.
        client_id: sent as SET_CLIENT_ID (shown by the server's ``workers`` command).
        concurrency: the most jobs at once (a hard limit).
        regrab_interval: while asleep, GRAB again after this many seconds without a
            NOOP (so a lost NOOP never leaves work waiting).
        drain_timeout: when :meth:`run` is cancelled, the seconds running jobs get
            to finish before they are cancelled.
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
        connect_timeout: seconds to wait for each server.

    Example:
        >>> worker = Worker(["127.0.0.1:4730"], client_id="resizer-1", concurrency=8)
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
        drain_timeout: float = 10.0,
        send_exceptions: bool = True,
        timeout_grace: float = 1.0,
        max_grabs: int = 8,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_grabs < 1:
            raise ValueError(f"max_grabs must be at least 1, got {max_grabs}")
        if not regrab_interval > 0:
            raise ValueError(f"regrab_interval must be positive, got {regrab_interval}")
        self.servers = server_list(servers)
        self.client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self.concurrency = concurrency
        self.regrab_interval = regrab_interval
        self.drain_timeout = drain_timeout
        self.send_exceptions = send_exceptions
        self.timeout_grace = timeout_grace
        self.max_grabs = max_grabs
        self.connect_timeout = connect_timeout
        self.limiter = anyio.CapacityLimiter(concurrency)
        # The free job slots: concurrency minus (GRABs in flight + running jobs).
        self.free = concurrency
        self.stopping = False
        self.jobs_tg: anyio.abc.TaskGroup | None = None
        self._connector: Connector | None = None
        self._functions: dict[str, FunctionSpec] = {}
        self._conns: list[WorkerConnection] = []
        self._conn_of: dict[str, WorkerConnection] = {}
        self._conns_tg: anyio.abc.TaskGroup | None = None
        self._server: str | None = None
        self._running = False
        self._stop_requested = anyio.Event()
        self._stop_deadline = math.inf
        self._drain_scope: anyio.CancelScope | None = None
        self._idle: anyio.Event | None = None
        self._error: GearmanError | None = None
        self._idle_slots: list[_Slot] = []

    # --- functions -----------------------------------------------------------------------

    @property
    def functions(self) -> list[str]:
        """The names of the registered functions."""
        return list(self._functions)

    @property
    def running_jobs(self) -> int:
        """How many jobs run right now."""
        return sum(conn.running for conn in self._conns)

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
        if not self._running or not self._conns:
            return  # run() registers it when it connects
        if concurrency is None:
            conn = self._conns[0]
            conn.add(spec)
        else:
            conn = WorkerConnection(self, [spec], concurrency)
            self._conns.append(conn)
            if self._conns_tg is not None:
                self._conns_tg.start_soon(self._run_extra, conn)
        self._conn_of[name] = conn

    def unregister(self, name: str) -> None:
        """Unregister a function; while the worker runs, CANT_DO goes out at once.

        Jobs of the function that are running go on. gearmand 1.1.20 re-queues
        them on CANT_DO, so another worker runs them again and their results here
        earn an ERROR (JOB_NOT_FOUND), which is logged.

        Raises:
            KeyError: ``name`` is not registered.
        """
        spec = self._functions.pop(name)
        conn = self._conn_of.pop(name, None)
        if conn is not None:
            conn.remove(spec)

    # --- running -------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve jobs until :meth:`stop` or cancellation, then drain and return.

        Calls ``task_status.started()`` once the worker is connected and its
        functions are registered. When cancelled, running jobs get
        ``drain_timeout`` seconds to finish before they are cancelled (and
        failed); nothing is grabbed meanwhile.

        Raises:
            NoServersAvailable: no server could be reached.
            ConnectionLost: the connection to the server broke (running jobs were
                cancelled; the server re-queues them).
        """
        if self._running:
            raise RuntimeError("the worker is already running")
        self._running = True
        self._conns = []
        try:
            stream = await open_first_reachable(
                self.servers, timeout=self.connect_timeout, connector=self._connector
            )
            self._server = stream.peer
            self.free = self.concurrency
            main = WorkerConnection(
                self, [s for s in self._functions.values() if s.concurrency is None]
            )
            self._conns = [main]
            self._conn_of = {}
            for spec in self._functions.values():
                if spec.concurrency is None:
                    self._conn_of[spec.name] = main
                else:
                    conn = WorkerConnection(self, [spec], spec.concurrency)
                    self._conns.append(conn)
                    self._conn_of[spec.name] = conn
            finished = anyio.Event()
            async with anyio.create_task_group() as outer:
                try:
                    await outer.start(self._serve, main, stream, finished)
                    task_status.started()
                    await finished.wait()
                except anyio.get_cancelled_exc_class():
                    with anyio.CancelScope(shield=True):
                        self.stop(self.drain_timeout)
                        await finished.wait()
                    raise
            error, self._error = self._error, None
            if error is not None:
                raise error
        finally:
            self._running = False
            self.stopping = False
            self._stop_requested = anyio.Event()
            self._stop_deadline = math.inf
            self._drain_scope = None
            self._conns_tg = None
            self.jobs_tg = None
            self._idle_slots.clear()

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
        self.stopping = True
        if timeout is not None:
            deadline = anyio.current_time() + timeout
            self._stop_deadline = min(self._stop_deadline, deadline)
            if self._drain_scope is not None:
                self._drain_scope.deadline = self._stop_deadline
        self._stop_requested.set()

    async def _serve(
        self,
        main: WorkerConnection,
        stream: PacketStream,
        finished: anyio.Event,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        # Shielded: cancelling run() starts a drain (see run) instead of tearing down.
        try:
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as conns:
                    self._conns_tg = conns
                    async with anyio.create_task_group() as jobs:
                        self.jobs_tg = jobs
                        await conns.start(main.run, stream)
                        for conn in self._conns[1:]:
                            await conns.start(self._run_extra, conn)
                        task_status.started()
                        await self._stop_requested.wait()
                        with anyio.CancelScope(deadline=self._stop_deadline) as drain:
                            self._drain_scope = drain
                            while self.free < self.concurrency:
                                self._idle = anyio.Event()
                                await self._idle.wait()
                        jobs.cancel_scope.cancel()
                    self.jobs_tg = None
                    self._idle_slots.clear()
                    with anyio.move_on_after(_FLUSH_TIMEOUT):
                        for conn in self._conns:
                            with contextlib.suppress(ConnectionLost):
                                await conn.drain()
                    conns.cancel_scope.cancel()
        finally:
            finished.set()

    async def _run_extra(
        self,
        conn: WorkerConnection,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect one more connection (for a function with its own limit) and run it."""
        assert self._server is not None
        try:
            if self._connector is not None:
                stream = await self._connector(self._server)
            else:
                stream = await connect(self._server, connect_timeout=self.connect_timeout)
        except ConnectFailed as exc:
            task_status.started()
            self._fail(exc)
            return
        await conn.run(stream, task_status=task_status)

    # --- slots and failures ----------------------------------------------------------------

    def _start_job(self, conn: WorkerConnection, job: Job, spec: FunctionSpec) -> None:
        """Hand a job to an idle job task, or start one (cheaper than a task per job)."""
        if self._idle_slots:
            slot = self._idle_slots.pop()
            slot.work = (conn, job, spec)
            slot.event.set()
        else:
            assert self.jobs_tg is not None
            self.jobs_tg.start_soon(self._run_slot, _Slot((conn, job, spec)))

    async def _run_slot(self, slot: _Slot) -> None:
        idle = self._idle_slots
        while True:
            conn, job, spec = slot.work
            await conn.run_job(job, spec)
            # Idle before anything else runs: the GRAB that run_job's end may have
            # sent cannot be answered before this task waits.
            slot.event = anyio.Event()
            idle.append(slot)
            await slot.event.wait()

    def _release(self, conn: WorkerConnection) -> None:
        """A GRAB was answered with nothing, or a job ended: one slot is free again."""
        self.free += 1
        if len(self._conns) > 1:  # the other connections first: none starves
            for other in self._conns:
                if other is not conn and self.free:
                    other.pump()
        conn.pump()
        idle = self._idle
        if idle is not None and self.free >= self.concurrency:
            self._idle = None
            idle.set()

    def _connection_lost(self, conn: WorkerConnection, error: ConnectionLost) -> None:
        self.free += conn.grabs  # never to be answered
        conn.grabs = 0
        self._fail(error)

    def _fail(self, error: GearmanError) -> None:
        if self._error is None:
            self._error = error
        self.stop(0)
