"""The job server: listeners, a poller reading every connection, a timer, wired to the state.

The protocol logic lives in the sans-IO :class:`~trio_gearman._proto.server.state.ServerState`;
this module only moves bytes and time in and out of it.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from .._proto._codec import DEFAULT_MAX_PACKET_SIZE
from .._proto.server.state import ServerConfig, ServerState
from .connection import HAVE_EPOLL, ReadPoller, ServerConnection
from .sockets import (
    KeepAlive,
    ListenAddress,
    configure_accepted,
    format_address,
    open_listeners,
    raise_fd_limit,
    wait_readable,
)

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "GearmanServer", "ServerStatistics", "serve"]

logger = logging.getLogger("trio_gearman.server")

DEFAULT_MAX_OUTPUT_BYTES: Final = 32 * 1024 * 1024
"""Bytes that may wait behind a blocked send before a connection is dropped (32 MiB)."""

# accept() errors that mean "the system is short of something, try again soon".
_ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_BACKOFF: Final = 0.1
_ACCEPT_BATCH: Final = 64
_CLOCK_CHECK: Final = 60.0


@attrs.frozen
class ServerStatistics:
    """A snapshot of a running server.

    Attributes:
        connections: connections open now.
        jobs_queued: jobs waiting for a worker.
        jobs_running: jobs a worker holds.
        listening: whether new connections are accepted.
    """

    connections: int
    jobs_queued: int
    jobs_running: int
    listening: bool


class GearmanServer:
    """A Gearman job server, compatible with gearmand 1.1 on the wire.

    Run it with :meth:`run` (or :func:`serve`) in a task group; ``await tg.start``
    returns once every address is listening.

    Args:
        config: the job server's settings (``None``: the defaults).
        listen: ``(host, port)`` pairs; a ``None`` host means every local address
            (IPv4 and IPv6), port 0 a free port.
        backlog: the ``listen()`` backlog.
        max_output_bytes: how many reply bytes may pile up for a connection while a
            send to it is blocked (a peer that does not read); past it the
            connection is dropped.
        max_packet_size: the largest packet body accepted from a peer.
        keepalive: TCP keepalive settings for accepted connections, or ``None``.
        fd_limit: the open-file limit to set at start (``None``: the hard limit).

    Example:
        >>> async def main():
        ...     async with anyio.create_task_group() as tg:
        ...         server = await tg.start(GearmanServer(listen=[("127.0.0.1", 0)]).run)
        ...         print(server.addresses)
        ...         await server.aclose()
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        listen: Sequence[ListenAddress] = ((None, 4730),),
        *,
        backlog: int = 32,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        keepalive: KeepAlive | None = None,
        fd_limit: int | None = None,
    ) -> None:
        self.config = config if config is not None else ServerConfig()
        self.state = ServerState(self.config)
        self.max_packet_size = max_packet_size
        self.addresses: tuple[tuple[str, int], ...] = ()
        self._listen = tuple(listen)
        self._backlog = backlog
        self._max_output = max_output_bytes
        self._keepalive = keepalive
        self._fd_limit = fd_limit
        self._connections: dict[int, ServerConnection] = {}
        self._task_group: TaskGroup | None = None
        self._poller: ReadPoller | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._listen_scope: anyio.CancelScope | None = None
        self._timer_scope: anyio.CancelScope | None = None
        self._armed: float | None = None
        self._drained: anyio.Event | None = None
        self._not_listening: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._closed = False

    @property
    def port(self) -> int:
        """The port of the first listening address."""
        if not self.addresses:
            raise RuntimeError("the server is not listening yet")
        return self.addresses[0][1]

    def statistics(self) -> ServerStatistics:
        """A snapshot of the connection and job counts."""
        return ServerStatistics(
            connections=len(self._connections),
            jobs_queued=self.state.jobs_queued,
            jobs_running=self.state.jobs_running,
            listening=self._not_listening is not None and not self._not_listening.is_set(),
        )

    # --- life cycle -----------------------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[GearmanServer] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen and serve until cancelled or closed with :meth:`aclose`.

        Args:
            task_status: reports this server (with its bound :attr:`addresses`)
                once every address is listening.

        Raises:
            OSError: an address could not be bound.
            RuntimeError: the server was already run.
        """
        if self._stopped is not None or self._closed:
            raise RuntimeError("a GearmanServer runs once")
        self._stopped = anyio.Event()
        self._not_listening = anyio.Event()
        try:
            limit = raise_fd_limit(self._fd_limit)
            logger.debug("open-file limit: %d", limit)
            listeners = await open_listeners(self._listen, self._backlog)
            self.addresses = tuple(
                (str(sock.getsockname()[0]), int(sock.getsockname()[1])) for sock in listeners
            )
            self.state.wall_offset = time.time() - anyio.current_time()
            try:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    self._run_scope = tg.cancel_scope
                    self._listen_scope = anyio.CancelScope()
                    if HAVE_EPOLL:
                        self._poller = ReadPoller(self)
                        tg.start_soon(self._poller.run)
                    tg.start_soon(self._timer_loop)
                    tg.start_soon(self._listen_all, listeners, tg, self._listen_scope)
                    for host, port in self.addresses:
                        logger.info("Listening on %s", format_address(host, port))
                    task_status.started(self)
            finally:
                for sock in listeners:
                    sock.close()
        finally:
            self._closed = True
            self._stopped.set()

    async def aclose(self) -> None:
        """Stop the server at once: close every connection and listener, stop the tasks."""
        self._closed = True
        if self._run_scope is not None:
            self._run_scope.cancel()
        if self._stopped is not None:
            await self._stopped.wait()

    async def drain(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Stop accepting connections and wait until no job is running.

        Existing connections are served on; call :meth:`aclose` afterwards.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            ``True`` if no job is running, ``False`` if the timeout passed first.
        """
        self.stop_listening()
        if self._not_listening is not None:
            await self._not_listening.wait()
        if self.state.jobs_running:
            self._drained = anyio.Event()
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await self._drained.wait()
        return self.state.jobs_running == 0

    def stop_listening(self) -> None:
        """Close the listening sockets; new connections are refused from now on."""
        if self._listen_scope is not None:
            self._listen_scope.cancel()

    # --- accepting --------------------------------------------------------------------------

    async def _listen_all(
        self, listeners: list[socket.socket], tg: TaskGroup, scope: anyio.CancelScope
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as accept_tg:
                    for sock in listeners:
                        accept_tg.start_soon(self._accept_loop, sock, tg)
        finally:
            for sock in listeners:
                sock.close()
            assert self._not_listening is not None
            self._not_listening.set()
        logger.info("Stopped listening")

    async def _accept_loop(self, listener: socket.socket, tg: TaskGroup) -> None:
        while True:
            await wait_readable(listener)
            for _ in range(_ACCEPT_BATCH):
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_RETRY:
                        logger.error("Cannot accept a connection (%s); retrying", exc.strerror)
                        await anyio.sleep(_ACCEPT_BACKOFF)
                        break
                    logger.warning("Cannot accept a connection: %s", exc.strerror)
                    continue
                if self._poller is not None:
                    self._add_socket(sock, str(address[0]), self._poller)
                else:
                    tg.start_soon(self._serve_socket, sock, str(address[0]))

    def _add_socket(self, sock: socket.socket, host: str, poller: ReadPoller) -> None:
        """Hand a new connection to the poller: no task of its own while it is idle."""
        connection = self._connect(sock, host)
        if connection is not None:
            poller.add(connection)

    async def _serve_socket(self, sock: socket.socket, host: str) -> None:
        """Serve one connection from this task until it ends (the test server uses it)."""
        connection = self._connect(sock, host)
        if connection is not None:
            await connection.run()

    def _connect(self, sock: socket.socket, host: str) -> ServerConnection | None:
        try:
            configure_accepted(sock, self._keepalive)
        except OSError as exc:  # the peer left before we looked
            logger.debug("Dropping a connection that closed at once: %s", exc.strerror)
            sock.close()
            return None
        conn = self.state.connect(host.encode(), sock.fileno())
        connection = ServerConnection(self, sock, conn, host)
        self._connections[conn.id] = connection
        logger.debug("Connection %d from %s", conn.id, host)
        return connection

    # --- the state's side -------------------------------------------------------------------

    def _after_batch(self) -> None:
        """Send every connection's new output; keep the timer armed; notice a drain."""
        state = self.state
        dirty = state.dirty
        if dirty:
            connections = self._connections
            limit = self._max_output
            while dirty:
                conn = dirty.pop()
                connection = connections.get(conn.id)
                if connection is None:
                    conn.outgoing.clear()
                elif not connection.blocked:
                    if not connection.flush():
                        self._drop(connection, "the peer is gone")
                elif len(conn.outgoing) > limit:
                    self._drop(
                        connection,
                        f"more than {limit} bytes of replies wait while it does not read",
                    )
        deadline = state.next_deadline()
        if deadline is not None and self._timer_scope is not None:
            armed = self._armed
            if armed is None or deadline < armed:
                self._armed = deadline
                self._timer_scope.deadline = deadline
        if self._drained is not None and state.jobs_running == 0:
            self._drained.set()

    def _drop(self, connection: ServerConnection, reason: str) -> None:
        logger.warning(
            "Dropping connection %d from %s: %s", connection.conn.id, connection.peer, reason
        )
        self._disconnect(connection)
        connection.abort()

    def _start_writer(self, write_loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a connection's writer (it has more to send than its socket took)."""
        assert self._task_group is not None
        self._task_group.start_soon(write_loop)

    def _disconnect(self, connection: ServerConnection) -> None:
        if connection.disconnected:
            return
        connection.disconnected = True
        del self._connections[connection.conn.id]
        self.state.disconnect(connection.conn, anyio.current_time())

    def _connection_ended(self, connection: ServerConnection) -> None:
        """Called by a connection's task on its way out."""
        if not connection.disconnected:
            logger.debug("Connection %d from %s closed", connection.conn.id, connection.peer)
            self._disconnect(connection)
            self._after_batch()

    async def _timer_loop(self) -> None:
        """Call ``state.advance`` at every deadline the state names.

        ``_after_batch`` moves the deadline forward when a new timer is earlier. The
        loop also wakes every ``_CLOCK_CHECK`` seconds to follow changes of the wall
        clock, which epoch jobs are scheduled by.
        """
        state = self.state
        while True:
            state.wall_offset = time.time() - anyio.current_time()
            deadline = state.next_deadline()
            check = anyio.current_time() + _CLOCK_CHECK
            if deadline is None or deadline > check:
                deadline = check
            self._armed = deadline
            with anyio.CancelScope(deadline=deadline) as scope:
                self._timer_scope = scope
                await anyio.sleep_forever()
            self._timer_scope = None
            state.advance(anyio.current_time())
            self._after_batch()


async def serve(
    config: ServerConfig | None = None,
    listen: Sequence[ListenAddress] = ((None, 4730),),
    *,
    backlog: int = 32,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    keepalive: KeepAlive | None = None,
    fd_limit: int | None = None,
    task_status: TaskStatus[GearmanServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run a job server until cancelled; report it through ``task_status`` once listening.

    The arguments are those of :class:`GearmanServer`.

    Example:
        >>> async def main():
        ...     async with anyio.create_task_group() as tg:
        ...         server = await tg.start(serve, None, [("127.0.0.1", 0)])
        ...         host, port = server.addresses[0]
        ...         ...
        ...         await server.aclose()
    """
    server = GearmanServer(
        config,
        listen,
        backlog=backlog,
        max_output_bytes=max_output_bytes,
        max_packet_size=max_packet_size,
        keepalive=keepalive,
        fd_limit=fd_limit,
    )
    await server.run(task_status=task_status)
