"""Test helpers: an embedded job server to run your clients and workers against.

Works on any test runner, under Trio or AnyIO (asyncio too); the pytest fixtures
of :mod:`trio_gearman.pytest_plugin` are thin wrappers around it.

:func:`open_test_server` runs a real job server in the current task: the
:class:`~trio_gearman.GearmanServer` of ``trio-gearmand``, with its listener,
accept loop and poller, on a free loopback port. It also serves connections
that need no port (:meth:`EmbeddedServer.connect_memory`, a socket pair).
Tests look inside it (what is queued, what runs, every job's outcome), steer it
(hold jobs back, wait until it is idle) and break it (drop connections, refuse
new ones, restart it).

The server reads time from the event loop only, so under Trio's ``MockClock``
(pytest-trio's ``autojump_clock`` fixture) epoch jobs, CAN_DO_TIMEOUT expiry,
retries and back-off take no real time.

Example:
    >>> async def reverse(job: trio_gearman.Job) -> bytes:
    ...     return job.data[::-1]
    >>> async def test_reverse():
    ...     async with open_test_server() as server:
    ...         worker = trio_gearman.Worker(server.address)
    ...         worker.register("reverse", reverse)
    ...         async with anyio.create_task_group() as tg:
    ...             await tg.start(worker.run)
    ...             async with trio_gearman.Client(server.address) as client:
    ...                 assert await client.submit("reverse", b"abc") == b"cba"
    ...             tg.cancel_scope.cancel()
    ...     assert server.history[0].outcome is JobOutcome.COMPLETED
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import attrs
from anyio.abc import TaskStatus

from .._address import format_address
from .._proto.server.model import ConnectionState, Job, JobOutcome
from .._proto.server.state import ServerConfig, ServerState
from .._server.server import GearmanServer
from .._server.tls import DEFAULT_HANDSHAKE_TIMEOUT
from ._history import JobHistory, JobRecord
from ._memory import MemoryByteStream, memory_stream_pair

if TYPE_CHECKING:
    from .._proto.server.model import Function

__all__ = [
    "EmbeddedServer",
    "JobOutcome",
    "JobRecord",
    "MemoryByteStream",
    "memory_stream_pair",
    "open_test_server",
]

MEMORY_PEER = "memory"
"""The address the server lists for a :meth:`EmbeddedServer.connect_memory` connection."""


def _is_worker(conn: ConnectionState) -> bool:
    return bool(conn.ability_list or conn.running)


@attrs.frozen
class _KeptJob:
    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    priority: int
    reducer: bytes
    due: float | None


def _open_fd_limit() -> int | None:
    """The current open-file limit, so that the server leaves it as it is."""
    if sys.platform == "win32":  # pragma: no cover
        return None
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _function_name(function: str | bytes) -> bytes:
    return function.encode() if isinstance(function, str) else function


class EmbeddedServer:
    """A job server for tests, with the means to look inside it and to break it.

    Create it with :func:`open_test_server` (or run :meth:`run` in a task group of
    your own). It serves TCP connections on :attr:`address` and portless ones
    from :meth:`connect_memory`, with the same job server as ``trio-gearmand``:
    the same listener, accept loop, connections and (where the system has epoll)
    poller.

    Args:
        exceptions: every connection starts with the ``exceptions`` option on.
        job_retries: the total attempts of a job whose worker goes away (0:
            unlimited).
        worker_wakeup: NOOPs sent per queued job (0: every sleeping worker).
        job_handle_prefix: handles are ``prefix:N``.
        host: the loopback address to listen on.
        ssl_context: serve the TCP port through TLS with this server-side context
            (memory connections stay plaintext); see
            :class:`~trio_gearman.GearmanServer`.
        ssl_handshake_timeout: seconds a TLS peer has to finish its handshake.
    """

    def __init__(
        self,
        *,
        exceptions: bool = False,
        job_retries: int = 0,
        worker_wakeup: int = 0,
        job_handle_prefix: str | bytes = "H:localhost",
        host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        prefix = (
            job_handle_prefix.encode() if isinstance(job_handle_prefix, str) else job_handle_prefix
        )
        self.config = ServerConfig(
            job_handle_prefix=prefix,
            exceptions=exceptions,
            job_retries=job_retries,
            worker_wakeup=worker_wakeup,
        )
        self.host = host
        self.port = 0
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self._history = JobHistory()
        self._held: list[str] = []
        self._server: GearmanServer | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._stopped: anyio.Event | None = None

    # --- where and what -------------------------------------------------------------------

    @property
    def address(self) -> str:
        """``host:port`` of the listening socket (the port stays across restarts)."""
        return format_address(self.host, self.port)

    @property
    def server(self) -> GearmanServer:
        """The job server running now (a new one after :meth:`restart`)."""
        if self._server is None:
            raise RuntimeError("the test server is not running")
        return self._server

    @property
    def state(self) -> ServerState:
        """The job server's state machine (functions, queues, jobs, connections)."""
        return self.server.state

    @property
    def accepting(self) -> bool:
        """Whether new TCP connections are accepted (see :meth:`pause_accepting`)."""
        return self._server is not None and self._server.listening

    @property
    def history(self) -> list[JobRecord]:
        """Every job the server has seen, oldest first, across restarts.

        The records are updated in place: a job that is still queued or running
        has ``outcome`` ``None`` until it ends.
        """
        return list(self._history.records)

    def _function(self, function: str | bytes) -> Function | None:
        return self.state.get_function(_function_name(function))

    def queued(self, function: str | bytes) -> int:
        """Jobs of ``function`` waiting for a worker (held and epoch jobs included)."""
        found = self._function(function)
        return found.queued if found is not None else 0

    def running(self, function: str | bytes) -> int:
        """Jobs of ``function`` that workers hold now."""
        found = self._function(function)
        return found.running if found is not None else 0

    def workers(self, function: str | bytes) -> int:
        """Connections registered for ``function`` now."""
        found = self._function(function)
        return len(found.workers) if found is not None else 0

    async def wait_idle(self) -> None:
        """Wait until no job is queued (held and epoch jobs included) and none runs.

        It wakes when a job ends, never by polling. Put a deadline around it:
        ``with anyio.fail_after(5): await server.wait_idle()``.
        """
        while True:
            state = self.state
            if state.jobs_queued == 0 and state.jobs_running == 0:
                return
            await self._history.wait_changed()

    # --- steering -------------------------------------------------------------------------

    def hold(self, pattern: str = "*") -> None:
        """Keep the jobs of every function matching ``pattern`` away from workers.

        ``pattern`` is matched against function names as :func:`fnmatch.fnmatchcase`
        does (``*``, ``?``, ``[seq]``; case-sensitive). Such jobs, queued now or
        later, stay queued (``status`` and :meth:`queued` count them, GET_STATUS
        knows them, ``cancel job`` removes them) until :meth:`release`.

        Args:
            pattern: function names to hold; ``*`` (the default) holds every job.
        """
        self._held.append(pattern)
        self._apply_hold()

    def release(self, pattern: str | None = None) -> None:
        """Let the jobs of a :meth:`hold` go: back to the tail of their queues.

        Sleeping workers that can run them are woken.

        Args:
            pattern: a pattern given to :meth:`hold`; ``None`` releases every hold.

        Raises:
            ValueError: ``pattern`` is not held.
        """
        if pattern is None:
            self._held.clear()
        elif pattern in self._held:
            self._held.remove(pattern)
        else:
            raise ValueError(f"{pattern!r} is not held (held: {self._held})")
        self._apply_hold()

    def _held_function(self, name: bytes) -> bool:
        text = name.decode("utf-8", "replace")
        return any(fnmatchcase(text, pattern) for pattern in self._held)

    def _apply_hold(self) -> None:
        server = self._server
        if server is not None:  # else the server applies the holds when it starts
            server.state.set_hold(self._held_function if self._held else None)
            server.send_pending()

    # --- connections ----------------------------------------------------------------------

    async def connect_memory(self) -> anyio.abc.SocketStream:
        """Open a connection that needs no port: one end of a socket pair.

        The server adopts the other end as it adopts an accepted TCP connection,
        so it is served by the very same code; no port is taken and nothing can
        refuse it (also while accepting is paused).

        Returns:
            The peer's end: speak the Gearman protocol on it. Closing it ends the
            connection. The server lists its address as ``memory``.
        """
        ours, theirs = socket.socketpair()
        try:
            self.server.adopt(ours, MEMORY_PEER)
        except BaseException:
            theirs.close()
            raise
        return await anyio.abc.SocketStream.from_socket(theirs)

    async def drop_connections(self, *, workers: bool = False, clients: bool = False) -> int:
        """Cut connections, as if the network failed; return once they are gone.

        The server handles it as any disconnect: running jobs of a dropped worker
        are queued again (or fail at the retry limit), foreground jobs of a
        dropped client lose it. Peers see their connection end.

        Args:
            workers: drop connections that have registered a function or hold a job.
            clients: drop every other connection (clients, admin tools).

        Returns:
            How many connections were dropped.

        Raises:
            ValueError: neither ``workers`` nor ``clients`` was asked for.
        """
        if not (workers or clients):
            raise ValueError("say which connections to drop: workers=True, clients=True or both")
        server = self.server
        victims = [
            connection
            for connection in server.connections
            if (workers if _is_worker(connection.conn) else clients)
        ]
        await server.close_connections(victims, "dropped by the test server")
        return len(victims)

    async def pause_accepting(self) -> None:
        """Close the listening socket: connecting is refused until :meth:`resume_accepting`.

        Connections already open are served on.
        """
        await self.server.pause_listening()

    async def resume_accepting(self) -> None:
        """Listen again, on the same port."""
        await self.server.resume_listening()

    async def restart(self, *, keep_jobs: bool = False) -> None:
        """Stop the job server and start a fresh one on the same port.

        Like a server process that is stopped and started again: listening pauses,
        every connection is dropped (peers see it end; clients and workers must
        reconnect), and the new server starts empty, with handle numbers that do
        not repeat the old ones. Held patterns stay held; listening resumes (also
        if it was paused).

        Args:
            keep_jobs: carry the background jobs over, as a persistent queue
                would: they keep their handles, queued again (running ones too,
                without counting a retry), epoch jobs keep their time. Without it
                every job still on the server ends as ``lost`` in :attr:`history`.
                Foreground jobs never survive (their clients are gone).
        """
        old = self.server
        await old.pause_listening()
        kept = _background_jobs(old.state) if keep_jobs else []
        old.state.observer = None
        await old.close_connections(old.connections, "the test server restarts")
        await old.aclose()
        self._server = None
        self._history.lose_all_but({job.handle for job in kept})
        await self._start_server(old.state.handles_issued, kept)

    # --- life cycle -----------------------------------------------------------------------

    @property
    def _task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the test server is not running")
        return self._tg

    async def run(
        self, *, task_status: TaskStatus[EmbeddedServer] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled or closed with :meth:`aclose`.

        Args:
            task_status: reports this server once it is listening.

        Raises:
            RuntimeError: the server was run before.
        """
        if self._stopped is not None:
            raise RuntimeError("an EmbeddedServer runs once")
        self._stopped = stopped = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                await self._start_server(0, [])
                task_status.started(self)
                await anyio.sleep_forever()  # the job server and listener come and go
        finally:
            self._tg = None
            stopped.set()

    async def aclose(self) -> None:
        """Stop serving: close the listener and every connection."""
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        if self._stopped is not None:
            await self._stopped.wait()

    async def _start_server(self, handles_issued: int, kept: list[_KeptJob]) -> None:
        """Start a job server on :attr:`port` (a free one the first time), with ``kept`` jobs."""
        server = GearmanServer(
            self.config,
            listen=[(self.host, self.port)],
            fd_limit=_open_fd_limit(),
            ssl_context=self.ssl_context,
            ssl_handshake_timeout=self.ssl_handshake_timeout,
        )
        state = server.state
        state.observer = self._history
        if self._held:
            state.set_hold(self._held_function)
        state.reserve_handles(handles_issued)
        for job in kept:
            state.restore_job(
                job.handle, job.function, job.unique, job.data, job.priority, job.reducer, job.due
            )
        await self._task_group.start(server.run)
        self.port = server.port
        self._server = server


def _background_jobs(state: ServerState) -> list[_KeptJob]:
    due = dict(state.scheduled_jobs())
    return [_kept(job, due.get(job)) for job in state.jobs if job.background and not job.cancelled]


def _kept(job: Job, due: float | None) -> _KeptJob:
    return _KeptJob(
        job.handle, job.function.name, job.unique, job.data, job.priority, job.reducer, due
    )


@contextlib.asynccontextmanager
async def open_test_server(
    *,
    exceptions: bool = False,
    job_retries: int = 0,
    worker_wakeup: int = 0,
    job_handle_prefix: str | bytes = "H:localhost",
    ssl_context: ssl.SSLContext | None = None,
    ssl_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
) -> AsyncIterator[EmbeddedServer]:
    """Run an embedded job server on a free loopback port for the duration of the block.

    Args:
        exceptions: every connection starts with the ``exceptions`` option on
            (``--exceptions``).
        job_retries: the total attempts of a job whose worker goes away; 0 is
            unlimited (``--job-retries``).
        worker_wakeup: NOOPs sent per queued job; 0 wakes every sleeping worker
            (``--worker-wakeup``).
        job_handle_prefix: handles are ``prefix:N``.
        ssl_context: serve the TCP port through TLS with this server-side
            context (``--ssl``); memory connections stay plaintext.
        ssl_handshake_timeout: seconds a TLS peer has to finish its handshake
            (``--ssl-handshake-timeout``).

    Yields:
        The running :class:`EmbeddedServer`; ``server.address`` is
        ``"127.0.0.1:PORT"``. On exit every connection is closed.

    Example:
        >>> async with open_test_server(job_retries=2) as server:
        ...     async with Client(server.address) as client:
        ...         await client.submit_background("resize", b"img-1")
        ...     assert server.queued("resize") == 1
    """
    server = EmbeddedServer(
        exceptions=exceptions,
        job_retries=job_retries,
        worker_wakeup=worker_wakeup,
        job_handle_prefix=job_handle_prefix,
        ssl_context=ssl_context,
        ssl_handshake_timeout=ssl_handshake_timeout,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()
