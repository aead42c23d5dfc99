"""The job server: listeners, a poller reading every connection, a timer, wired to the state.

The protocol logic lives in the sans-IO :class:`~trio_gearman._proto.server.state.ServerState`;
this module only moves bytes and time in and out of it.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Final

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from .._address import format_address
from .._proto._codec import DEFAULT_MAX_PACKET_SIZE
from .._proto.server.acl import Acl, Identity
from .._proto.server.state import ServerConfig, ServerState
from .cluster import ClusterMember
from .connection import HAVE_EPOLL, ServerConnection
from .hub import ConnectionHub
from .limits import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_PACKET_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    Limits,
)
from .sockets import (
    FdReserve,
    KeepAlive,
    ListenAddress,
    open_listeners,
    raise_fd_limit,
    wait_readable,
)
from .store.base import QueueStore
from .store.cluster import ClusterStore
from .store.writer import StoreStatistics, StoreWriter
from .tls import DEFAULT_HANDSHAKE_TIMEOUT, accept_tls, check_server_context

__all__ = ["DEFAULT_MAX_OUTPUT_BYTES", "GearmanServer", "ServerStatistics", "serve"]

logger = logging.getLogger("trio_gearman.server")
startup_logger = logging.getLogger("trio_gearman.server.startup")
"""Where the server says where it listens: ``trio-gearmand`` shows it at its default level."""


# accept() errors that mean "the system is short of something, try again soon".
_ACCEPT_RETRY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_FD_SHORT = frozenset({errno.EMFILE, errno.ENFILE})
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
        accepted: connections served since the start.
        bytes_received: bytes read from every connection since the start.
        bytes_sent: bytes sent to every connection since the start.
        bytes_buffered: bytes the connections hold in buffers now (packets being
            received, replies waiting for a peer that does not read).
        refused: connections closed at once since the start (over a connection limit).
        handshaking: TLS peers shaking hands now (not yet among ``connections``;
            they count toward the connection limits).
    """

    connections: int
    jobs_queued: int
    jobs_running: int
    listening: bool
    accepted: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    bytes_buffered: int = 0
    refused: int = 0
    handshaking: int = 0


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
        max_connections: connections served at once (``None``: as many as the
            open-file limit allows); past it new ones are closed at once.
        max_connections_per_address: connections from one peer address at once
            (``None``: no limit).
        max_buffered_bytes: bytes all connections together may hold in buffers
            (packets being received, replies waiting for a peer that does not
            read); past it the connections holding the most are dropped
            (``None``: no limit; default 1 GiB).
        packet_timeout: seconds a peer may take to complete a packet (or admin
            line) it started before its connection is dropped (``None``: no limit;
            default 60).
        write_timeout: seconds replies may wait for a peer that takes none of
            them before its connection is dropped (``None``: no limit; default 60).
        idle_timeout: seconds a connection may pass without a byte in or out
            before it is dropped (default ``None``: never; sleeping workers and
            clients waiting for long jobs are silent legitimately).
        keepalive: TCP keepalive settings for accepted connections, or ``None``.
        fd_limit: the open-file limit to set at start (``None``: the hard limit).
        store: a persistent queue for background jobs, or ``None`` to keep them in
            memory. With one, :meth:`run` replays the stored jobs before it
            listens, and each background submission is acknowledged (JOB_CREATED)
            and queued only after the store committed it; submissions that arrive
            during a commit share the next one. The store is driven from a
            thread, never from the event loop.
        acl: the access rules (who may register, submit and run the admin
            commands that change the server); ``None`` keeps ``config.acl``
            (by default none: anybody may register and submit).
        admin_from_anywhere: without ``acl``, let every peer run the admin
            commands that change the server (gearmand's behaviour); by default
            only loopback peers and Unix sockets may. ``None`` keeps
            ``config.admin_from_anywhere``.
        ssl_context: serve every TCP connection through TLS with this server-side
            context (``None``: plaintext). A peer that does not open with a TLS
            handshake is closed at once; to require client certificates, set
            ``verify_mode = ssl.CERT_REQUIRED`` on it and load the CA with
            ``load_verify_locations``. Connections that :meth:`adopt` is given
            (the test server's memory connections) are not affected.
        ssl_handshake_timeout: seconds a TLS peer has to finish its handshake;
            past it the socket is closed. Handshakes run in tasks of their own,
            so a slow one holds up no other connection.

    Raises:
        ValueError: ``ssl_context`` is a client-side context, or the handshake
            timeout is not positive.

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
        max_connections: int | None = None,
        max_connections_per_address: int | None = None,
        max_buffered_bytes: int | None = DEFAULT_MAX_BUFFERED_BYTES,
        packet_timeout: float | None = DEFAULT_PACKET_TIMEOUT,
        write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
        idle_timeout: float | None = None,
        keepalive: KeepAlive | None = None,
        fd_limit: int | None = None,
        store: QueueStore | None = None,
        acl: Acl | None = None,
        admin_from_anywhere: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ssl_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    ) -> None:
        if ssl_context is not None:
            check_server_context(ssl_context)
        if not ssl_handshake_timeout > 0:
            raise ValueError(f"ssl_handshake_timeout must be positive, not {ssl_handshake_timeout}")
        config = config if config is not None else ServerConfig()
        if store is not None and not config.durable:
            config = attrs.evolve(config, durable=True)
        if isinstance(store, ClusterStore) and not config.cluster:
            config = attrs.evolve(config, cluster=True)
        if acl is not None:
            config = attrs.evolve(config, acl=acl)
        if admin_from_anywhere is not None:
            config = attrs.evolve(config, admin_from_anywhere=admin_from_anywhere)
        self.config = config
        self.state = ServerState(self.config)
        self.store = store
        self.replayed = 0
        self.max_packet_size = max_packet_size
        self.addresses: tuple[tuple[str, int], ...] = ()
        self._listen = tuple(listen)
        self._backlog = backlog
        self._fd_limit = fd_limit
        self.ssl_context = ssl_context
        self.ssl_handshake_timeout = ssl_handshake_timeout
        self._reserve = FdReserve()
        self._short_of: str | None = None  # what accept() lacks now, if anything
        self._refused = 0
        self.limits = Limits(
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            max_output_bytes=max_output_bytes,
            max_buffered_bytes=max_buffered_bytes,
            max_packet_size=max_packet_size,
            packet_timeout=packet_timeout,
            write_timeout=write_timeout,
            idle_timeout=idle_timeout,
        )
        self._hub = ConnectionHub(
            self.state,
            limits=self.limits,
            keepalive=keepalive,
            after_batch=self._after_batch,
        )
        self._task_group: TaskGroup | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._listen_scope: anyio.CancelScope | None = None
        self._timer_scope: anyio.CancelScope | None = None
        self._armed: float | None = None
        self._drained: anyio.Event | None = None
        self._not_listening: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._closed = False
        self._writer: StoreWriter | None = None
        self._member: ClusterMember | None = None
        if store is not None:
            self._writer = StoreWriter(store, self.state, self._hub.send_pending)
        if isinstance(store, ClusterStore):
            assert self._writer is not None
            self._member = ClusterMember(store, self._writer, self._hub.send_pending)

    @property
    def port(self) -> int:
        """The port of the first listening address."""
        if not self.addresses:
            raise RuntimeError("the server is not listening yet")
        return self.addresses[0][1]

    @property
    def listening(self) -> bool:
        """Whether new connections are accepted now."""
        return self._not_listening is not None and not self._not_listening.is_set()

    @property
    def connections(self) -> list[ServerConnection]:
        """The connections served now."""
        return list(self._hub)

    def statistics(self) -> ServerStatistics:
        """A snapshot of the connection and job counts."""
        received, sent = self._hub.traffic()
        return ServerStatistics(
            connections=len(self._hub),
            jobs_queued=self.state.jobs_queued,
            jobs_running=self.state.jobs_running,
            listening=self.listening,
            accepted=self._hub.accepted,
            bytes_received=received,
            bytes_sent=sent,
            bytes_buffered=self._hub.buffered,
            refused=self._hub.refused,
            handshaking=self._hub.handshaking,
        )

    def store_statistics(self) -> StoreStatistics | None:
        """The persistent queue's commits so far, or ``None`` without one."""
        return None if self._writer is None else self._writer.statistics

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
            StoreError: the store could not be opened or read.
            RuntimeError: the server was already run.
        """
        if self._stopped is not None or self._closed:
            raise RuntimeError("a GearmanServer runs once")
        self._stopped = anyio.Event()
        self._not_listening = anyio.Event()
        writer = self._writer
        try:
            limit = raise_fd_limit(self._fd_limit)
            logger.debug("open-file limit: %d", limit)
            self.state.wall_offset = time.time() - anyio.current_time()
            if writer is not None:
                self.replayed = await writer.open(time.time())
                startup_logger.info(
                    "Queue: %s (%d background jobs replayed)",
                    writer.store.description,
                    self.replayed,
                )
            listeners = await open_listeners(self._listen, self._backlog)
            self._reserve.take()
            self.addresses = tuple(
                (str(sock.getsockname()[0]), int(sock.getsockname()[1])) for sock in listeners
            )
            self.state.wall_offset = time.time() - anyio.current_time()
            try:
                async with anyio.create_task_group() as tg:
                    self._task_group = tg
                    self._run_scope = tg.cancel_scope
                    self._hub.open(tg, poll=HAVE_EPOLL)
                    tg.start_soon(self._timer_loop)
                    if writer is not None:
                        tg.start_soon(writer.run)
                    if self._member is not None:
                        tg.start_soon(self._member.run)
                    self._start_listening(listeners)
                    listeners = []
                    task_status.started(self)
            finally:
                for sock in listeners:
                    sock.close()
        finally:
            self._closed = True
            self._task_group = None
            self._hub.shut()
            self._reserve.release()
            if writer is not None:
                await writer.close()
            if self._member is not None:
                await self._member.close()
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

        Existing connections are served on; call :meth:`aclose` afterwards. A
        cluster member also stops claiming jobs, and gives back at once the
        claimed jobs its workers have not started.

        Args:
            timeout: seconds to wait at most; ``None`` waits as long as it takes.

        Returns:
            ``True`` if no job is running, ``False`` if the timeout passed first.
        """
        if self._member is not None:
            # Other members' workers take the cluster's jobs from now on.
            self._member.drain()
        await self.pause_listening()
        if self.state.jobs_running:
            self._drained = anyio.Event()
            with anyio.move_on_after(math.inf if timeout is None else timeout):
                await self._drained.wait()
        return self.state.jobs_running == 0

    def stop_listening(self) -> None:
        """Close the listening sockets; new connections are refused from now on.

        Connections already open are served on. :meth:`pause_listening` also
        waits until the sockets are closed; :meth:`resume_listening` listens again.
        """
        if self._listen_scope is not None:
            self._listen_scope.cancel()

    async def pause_listening(self) -> None:
        """Close the listening sockets and wait until they are closed."""
        self.stop_listening()
        if self._not_listening is not None:
            await self._not_listening.wait()

    async def resume_listening(self) -> None:
        """Listen again on the addresses bound at the start (the same ports).

        Raises:
            RuntimeError: the server is not running.
            OSError: an address could not be bound again.
        """
        if self.listening:
            return
        if self._task_group is None:
            raise RuntimeError("the job server is not running")
        self._start_listening(await open_listeners(self.addresses, self._backlog))

    def adopt(
        self, sock: socket.socket, peer: str, *, identity: Identity | None = None
    ) -> ServerConnection | None:
        """Serve an already connected socket, as if it had been accepted.

        It is the path every accepted connection takes; a socket pair's end (the
        test server's in-memory connections) or a socket handed over by a parent
        process can take it too.

        Args:
            sock: a connected stream socket; the server owns and closes it.
            peer: the peer's address as the admin protocol lists it.
            identity: who the peer is, for the access rules (its address and
                the names of its verified TLS certificate); by default ``peer``
                alone (a Unix socket counts as a loopback peer).

        Returns:
            The connection, or ``None`` if the socket was already dead.

        Raises:
            RuntimeError: the server is not running.
        """
        return self._hub.adopt(sock, peer, identity=identity)

    def send_pending(self) -> None:
        """Send the replies the state has queued: call it after changing the state directly."""
        self._hub.send_pending()

    async def close_connections(self, connections: Sequence[ServerConnection], reason: str) -> None:
        """Drop ``connections`` at once (pending replies are not sent) and wait until closed.

        Args:
            connections: connections of this server (from :attr:`connections`).
            reason: why, for the log line.
        """
        for connection in connections:
            self._hub.drop(connection, reason)
        for connection in connections:
            await connection.wait_closed()

    # --- accepting --------------------------------------------------------------------------

    def _start_listening(self, listeners: list[socket.socket]) -> None:
        assert self._task_group is not None
        self._listen_scope = scope = anyio.CancelScope()
        self._not_listening = anyio.Event()
        self._task_group.start_soon(self._listen_all, listeners, scope, self._not_listening)
        for sock in listeners:
            host, port = sock.getsockname()[:2]
            startup_logger.info("Listening on %s", format_address(str(host), int(port)))

    async def _listen_all(
        self, listeners: list[socket.socket], scope: anyio.CancelScope, done: anyio.Event
    ) -> None:
        try:
            with scope:
                async with anyio.create_task_group() as accept_tg:
                    for sock in listeners:
                        accept_tg.start_soon(self._accept_loop, sock)
        finally:
            for sock in listeners:
                sock.close()
            done.set()
        logger.info("Stopped listening")

    async def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            await wait_readable(listener)
            for _ in range(_ACCEPT_BATCH):
                try:
                    sock, address = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in _ACCEPT_RETRY:
                        if await self._accept_short(listener, exc):
                            continue
                        break
                    # The peer reset before it was accepted, and the like: its business.
                    logger.debug("Cannot accept a connection: %s", exc.strerror)
                    continue
                if self._short_of is not None:
                    logger.warning(
                        "Accepting connections again (%d refused while short of %s)",
                        self._refused,
                        self._short_of,
                    )
                    self._short_of = None
                try:
                    if self.ssl_context is not None:
                        self._start_tls(sock, str(address[0]))
                    else:
                        self._hub.adopt(sock, str(address[0]))
                except MemoryError:
                    sock.close()
                    logger.error("MEMORY_ALLOCATION_FAILURE: out of memory accepting a connection")

    async def _accept_short(self, listener: socket.socket, exc: OSError) -> bool:
        """``accept()`` failed for want of a resource: refuse politely, log once, back off.

        Returns:
            ``True`` if a waiting connection was accepted and closed (try the next).
        """
        what = "file descriptors" if exc.errno in _FD_SHORT else "memory"
        if self._short_of is None:
            self._short_of = what
            self._refused = 0
            logger.error(
                "Cannot accept connections (%s): refusing them until %s are available again",
                exc.strerror,
                what,
            )
        if exc.errno in _FD_SHORT:
            try:
                if self._reserve.refuse(listener):
                    self._refused += 1
                    return True
            except BlockingIOError:
                return False
        await anyio.sleep(_ACCEPT_BACKOFF)
        return False

    def _start_tls(self, sock: socket.socket, peer: str) -> None:
        """Shake hands with a new TLS peer in a task of its own, then serve it.

        The handshake counts toward the connection limits while it lasts.
        """
        assert self._task_group is not None
        if self._hub.begin_handshake(sock, peer):
            try:
                self._task_group.start_soon(self._accept_tls, sock, peer)
            except BaseException:
                self._hub.end_handshake(peer)
                raise

    async def _accept_tls(self, sock: socket.socket, peer: str) -> None:
        assert self.ssl_context is not None
        try:
            tls = await accept_tls(sock, self.ssl_context, peer, self.ssl_handshake_timeout)
        finally:
            self._hub.end_handshake(peer)
        if tls is not None:
            try:
                self._hub.adopt(tls, peer)
            except MemoryError:
                tls.close()
                logger.error("MEMORY_ALLOCATION_FAILURE: out of memory accepting a connection")

    # --- the state's side -------------------------------------------------------------------

    def _after_batch(self) -> None:
        """After the replies of a batch are sent: keep the timer armed, notice a drain."""
        state = self.state
        deadline = state.next_deadline()
        if deadline is not None and self._timer_scope is not None:
            armed = self._armed
            if armed is None or deadline < armed:
                self._armed = deadline
                self._timer_scope.deadline = deadline
        if self._drained is not None and state.jobs_running == 0:
            self._drained.set()
        if self._writer is not None and state.store_work:
            self._writer.wake()
        if self._member is not None:
            self._member.poke()

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
            try:
                state.advance(anyio.current_time())
                self._hub.send_pending()
            except MemoryError:
                logger.error("MEMORY_ALLOCATION_FAILURE: out of memory handling the timers")


async def serve(
    config: ServerConfig | None = None,
    listen: Sequence[ListenAddress] = ((None, 4730),),
    *,
    backlog: int = 32,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
    keepalive: KeepAlive | None = None,
    fd_limit: int | None = None,
    acl: Acl | None = None,
    admin_from_anywhere: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    ssl_handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    max_connections: int | None = None,
    max_connections_per_address: int | None = None,
    max_buffered_bytes: int | None = DEFAULT_MAX_BUFFERED_BYTES,
    packet_timeout: float | None = DEFAULT_PACKET_TIMEOUT,
    write_timeout: float | None = DEFAULT_WRITE_TIMEOUT,
    idle_timeout: float | None = None,
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
        acl=acl,
        admin_from_anywhere=admin_from_anywhere,
        ssl_context=ssl_context,
        ssl_handshake_timeout=ssl_handshake_timeout,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        max_buffered_bytes=max_buffered_bytes,
        packet_timeout=packet_timeout,
        write_timeout=write_timeout,
        idle_timeout=idle_timeout,
    )
    await server.run(task_status=task_status)
