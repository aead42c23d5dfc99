"""The server's connections: one way in (:meth:`ConnectionHub.adopt`), one way out.

Every connection the job server serves, whatever brought its socket (the accept
loop of a listener, a socket pair of the test server, a socket handed over by
the caller), is adopted here: configured, entered in the state, and handed to
the poller or to a task of its own. The hub is the :class:`ConnectionOwner` of
every connection: it sends their replies after each batch, drops those that
cannot keep up, and forgets each one exactly once when it ends.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final

import anyio
from anyio.abc import TaskGroup

from .._proto.server.acl import Action, Denial, Identity
from .._proto.server.model import JobNotice
from .._proto.server.names import Refusal
from .connection import ConnectionSocket, ReadPoller, ServerConnection
from .limits import SWEEP_INTERVAL, TRIM_AFTER, Limits
from .sockets import KeepAlive, configure_accepted, trim_heap
from .tls import TLSSocket

if TYPE_CHECKING:
    from .._proto.server.state import ServerState

__all__ = ["ConnectionHub"]

logger = logging.getLogger("trio_gearman.server")


class ConnectionHub:
    """The connections of one job server, and what they need of it.

    Args:
        state: the server state the connections feed.
        limits: the bounds the connections are kept to.
        keepalive: TCP keepalive for adopted TCP sockets, or ``None``.
        after_batch: called after the replies of each batch are sent (the server
            re-arms its timer there).

    Attributes:
        state: the server state.
        limits: the bounds the connections are kept to.
        max_packet_size: the largest packet body accepted from a peer.
        buffered: bytes the connections hold in buffers now: packets being
            received, and replies waiting for a peer that does not read.
        accepted: connections served since the start.
        refused: connections closed at once since the start (over a connection limit).
    """

    def __init__(
        self,
        state: ServerState,
        *,
        limits: Limits,
        keepalive: KeepAlive | None,
        after_batch: Callable[[], None],
    ) -> None:
        self.state = state
        self.limits = limits
        self.max_packet_size = limits.max_packet_size
        self._keepalive = keepalive
        self._after_batch = after_batch
        self._connections: dict[int, ServerConnection] = {}
        self._task_group: TaskGroup | None = None
        self._poller: ReadPoller | None = None
        self.accepted = 0
        self.refused = 0
        # The traffic of the connections that have ended (see traffic()).
        self._ended_in = 0
        self._ended_out = 0
        # Connections per peer address, kept only under a per-address limit.
        self._per_address: dict[str, int] | None = (
            {} if limits.max_connections_per_address is not None else None
        )
        # Why connections are refused now (logged once per episode), and how many.
        self._refusing: dict[str, int] = {}
        # TLS peers still shaking hands: they count toward the connection limits.
        self.handshaking = 0
        # Connections that hold buffered bytes (a partial packet, blocked replies):
        # the sweep looks at these only (and at all of them for the idle timeout).
        self.buffered = 0
        self._holding: set[ServerConnection] = set()
        self._over_budget = False
        self._sweep_wanted: anyio.Event | None = None
        self._released = 0  # buffer bytes let go of since the last trim_heap()

    def traffic(self) -> tuple[int, int]:
        """Bytes received and sent so far, over every connection, ended ones included."""
        received, sent = self._ended_in, self._ended_out
        for connection in self._connections.values():
            received += connection.bytes_in
            sent += connection.bytes_out
        return received, sent

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[ServerConnection]:
        return iter(list(self._connections.values()))

    def open(self, task_group: TaskGroup, *, poll: bool) -> None:
        """Start serving in ``task_group``; with ``poll``, through one epoll poller."""
        self._task_group = task_group
        if poll:
            self._poller = ReadPoller(self)
            task_group.start_soon(self._poller.run)
        task_group.start_soon(self._sweep_loop)

    def shut(self) -> None:
        """The server has stopped: adopt nothing more."""
        self._task_group = None
        self._poller = None

    def adopt(
        self, sock: socket.socket, peer: str, *, identity: Identity | None = None
    ) -> ServerConnection | None:
        """Serve a connected socket from now on (the one way a connection starts).

        A connection over :attr:`Limits.max_connections` or
        :attr:`Limits.max_connections_per_address` is closed at once instead.

        Args:
            sock: a connected stream socket; the hub owns it from now on. An
                :class:`ssl.SSLSocket` whose handshake is done is served through
                TLS, with the names of its client certificate as the
                connection's ``cert_names``.
            peer: the peer's address as the admin protocol lists it.
            identity: who the peer is, for the access rules; by default ``peer``
                with the names of its TLS client certificate, if any (a Unix
                socket counts as loopback).

        Returns:
            The connection, or ``None`` if the socket was already dead or refused.

        Raises:
            RuntimeError: the server is not running.
        """
        task_group = self._task_group
        if task_group is None:
            sock.close()
            raise RuntimeError("the job server is not running")
        refusal = self._refusal(peer)
        if refusal is not None:
            self._refuse(sock, peer, *refusal)
            return None
        try:
            configure_accepted(sock, self._keepalive)
        except OSError as exc:  # the peer left before we looked
            logger.debug("Dropping a connection that closed at once: %s", exc.strerror)
            sock.close()
            return None
        cert_names: tuple[str, ...] = ()
        transport: ConnectionSocket = sock
        if isinstance(sock, ssl.SSLSocket):
            tls = TLSSocket(sock)
            transport, cert_names = tls, tls.cert_names
        if identity is None:
            identity = Identity(
                peer,
                names=cert_names,
                local=sock.family == getattr(socket, "AF_UNIX", None),
            )
        conn = self.state.connect(peer.encode(), sock.fileno(), identity=identity)
        connection = ServerConnection(self, transport, conn, peer)
        connection.cert_names = cert_names
        self._connections[conn.id] = connection
        if self._per_address is not None:
            self._per_address[peer] = self._per_address.get(peer, 0) + 1
        self.accepted += 1
        logger.debug("Connection %d from %s", conn.id, peer, extra={"peer": peer})
        if self._poller is not None:
            self._poller.add(connection)
        else:
            task_group.start_soon(connection.run)
        return connection

    def begin_handshake(self, sock: socket.socket, peer: str) -> bool:
        """A TLS peer is about to shake hands: count it toward the connection limits.

        A peer over :attr:`Limits.max_connections` or
        :attr:`Limits.max_connections_per_address` (handshakes in progress
        included) is closed at once, as :meth:`adopt` would, so that peers that
        never finish their handshake cannot hold more sockets than the limits
        allow. Call :meth:`end_handshake` when the handshake is over, whatever
        its outcome, before :meth:`adopt`.

        Returns:
            ``False`` if the socket was refused (and closed).
        """
        refusal = self._refusal(peer)
        if refusal is not None:
            self._refuse(sock, peer, *refusal)
            return False
        self.handshaking += 1
        if self._per_address is not None:
            self._per_address[peer] = self._per_address.get(peer, 0) + 1
        return True

    def end_handshake(self, peer: str) -> None:
        """The handshake :meth:`begin_handshake` counted is over."""
        self.handshaking -= 1
        self._uncount(peer)

    def _uncount(self, peer: str) -> None:
        if self._per_address is not None:
            left = self._per_address.pop(peer, 1) - 1
            if left:
                self._per_address[peer] = left

    def _refusal(self, peer: str) -> tuple[str, str] | None:
        """Why a new connection from ``peer`` is refused now (a key and a reason), or ``None``."""
        limits = self.limits
        maximum = limits.max_connections
        if maximum is not None and len(self._connections) + self.handshaking >= maximum:
            return "", f"{maximum} connections are open (the maximum)"
        per_address = limits.max_connections_per_address
        if (
            self._per_address is not None
            and per_address is not None
            and self._per_address.get(peer, 0) >= per_address
        ):
            return peer, f"{per_address} connections from {peer} are open (the maximum)"
        refusing = self._refusing
        if refusing:
            # A limit that refused connections no longer does: say so, once.
            for key in ("", peer):
                count = refusing.pop(key, None)
                if count is not None:
                    logger.warning(
                        "Accepting connections%s again (%d refused)",
                        f" from {key}" if key else "",
                        count,
                        extra={"peer": peer},
                    )
        return None

    def _refuse(self, sock: socket.socket, peer: str, key: str, reason: str) -> None:
        """Close a new connection at once; log the first of each episode."""
        self.refused += 1
        count = self._refusing.get(key)
        if count is None:
            if len(self._refusing) < 1024:  # a bound on what is remembered
                self._refusing[key] = 1
            logger.warning(
                "Refusing new connections: %s (logged once until one is accepted again)",
                reason,
                extra={"peer": peer},
            )
        else:
            self._refusing[key] = count + 1
        sock.close()

    # --- what a connection needs (ConnectionOwner) ------------------------------------------

    def send_pending(self) -> None:
        """Send every connection's new output; drop those that cannot take it."""
        denials = self.state.take_denials()
        if denials:
            _log_denials(denials)
        notices = self.state.take_job_notices()
        if notices:
            _log_job_notices(notices)
        refusals, unlogged = self.state.take_refusals()
        if refusals:
            _log_refusals(refusals, unlogged)
        dirty = self.state.dirty
        closing: list[ServerConnection] = []
        if dirty:
            connections = self._connections
            limit = self.limits.max_output_bytes
            while dirty:
                conn = dirty.pop()
                connection = connections.get(conn.id)
                if connection is None:
                    conn.clear_output()
                    continue
                try:
                    if not connection.blocked and not connection.flush():
                        self.drop(connection, "the peer is gone", level=logging.DEBUG)
                        continue
                    if connection.blocked:
                        waiting = conn.pending_output
                        if waiting > limit:
                            # What the socket did not take waits: the replies of one
                            # read can be over the limit by themselves.
                            self.drop(
                                connection,
                                f"more than {limit} bytes of replies wait while it does not read",
                            )
                            continue
                        connection.hold_output(waiting)
                    if conn.listing is not None:
                        connection.keep_listing()
                    if conn.closing:
                        closing.append(connection)
                except MemoryError:
                    self.drop(
                        connection,
                        "MEMORY_ALLOCATION_FAILURE: out of memory for its replies",
                        level=logging.ERROR,
                    )
        for connection in closing:
            # The state ended it (maybe outside a read of it, as a commit answers it).
            connection.finish()
        if self._over_budget:
            self._keep_budget()
        self._after_batch()

    def start_task(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a task of a connection: its writer (it has more to send than its socket
        took), or the sender of a long admin listing."""
        assert self._task_group is not None
        self._task_group.start_soon(func)

    def connection_closed(self, connection: ServerConnection) -> None:
        """Forget a connection that has ended, and send what its end caused."""
        if self._forget(connection):
            logger.debug(
                "Connection %d from %s closed",
                connection.conn.id,
                connection.peer,
                extra={"peer": connection.peer},
            )
            self.send_pending()

    def hold(self, connection: ServerConnection, delta: int) -> None:
        """``connection`` holds ``delta`` more bytes in its buffers (or fewer)."""
        self.buffered += delta
        if delta < 0:
            self._released -= delta
        else:
            holding = self._holding
            if connection not in holding:
                holding.add(connection)
                if self._sweep_wanted is not None:
                    self._sweep_wanted.set()
            budget = self.limits.max_buffered_bytes
            if budget is not None and self.buffered > budget:
                self._over_budget = True

    # --- the bounds over time ------------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        """Once a second, drop the connections past a timeout or over the budget.

        Nothing is timed per packet: a connection's progress is read from its byte
        counters, compared with what the previous sweep saw. Without an idle timeout
        only the connections holding buffered bytes are looked at, and with none of
        them the loop waits.
        """
        limits = self.limits
        while True:
            if not self._holding and limits.idle_timeout is None:
                self._sweep_wanted = anyio.Event()
                await self._sweep_wanted.wait()
                self._sweep_wanted = None
            await anyio.sleep(SWEEP_INTERVAL)
            self.sweep(anyio.current_time())

    def sweep(self, now: float) -> None:
        """Check every timeout and the budget once (the sweep loop calls it every second).

        Args:
            now: the event loop's time.
        """
        limits = self.limits
        packet_timeout = limits.packet_timeout
        write_timeout = limits.write_timeout
        holding = self._holding
        for connection in list(holding):
            if connection.closed:
                holding.discard(connection)
                continue
            late = connection.late(now, packet_timeout, write_timeout)
            if late is not None:
                self.drop(connection, late)
            elif not connection.held_in and not connection.blocked:
                holding.discard(connection)
        idle_timeout = limits.idle_timeout
        if idle_timeout is not None:
            for connection in list(self._connections.values()):
                if connection.idle_for(now) >= idle_timeout:
                    self.drop(
                        connection,
                        f"nothing sent or received for {idle_timeout:g} s (the idle timeout)",
                        level=logging.INFO,
                    )
        self._keep_budget()
        self.send_pending()
        if self._released >= TRIM_AFTER:
            self._released = 0
            trim_heap()

    def _keep_budget(self) -> None:
        """Drop the connections holding the most until the buffers fit the budget."""
        self._over_budget = False
        budget = self.limits.max_buffered_bytes
        if budget is None or self.buffered <= budget:
            return
        total = self.buffered
        heaviest = sorted(self._holding, key=lambda c: c.held_in + c.held_out, reverse=True)
        for connection in heaviest:
            if self.buffered <= budget:
                break
            if connection.closed:
                continue
            self.drop(
                connection,
                f"it holds {connection.held_in + connection.held_out} bytes while every "
                f"connection together holds {total}, over the budget of {budget}",
            )

    # --- ending connections ------------------------------------------------------------------

    def drop(
        self, connection: ServerConnection, reason: str, *, level: int = logging.WARNING
    ) -> None:
        """End a connection at once, without its pending replies, and log why."""
        logger.log(
            level,
            "Dropping connection %d from %s: %s",
            connection.conn.id,
            connection.peer,
            reason,
            extra={"peer": connection.peer},
        )
        self._forget(connection)
        connection.abort()

    def _forget(self, connection: ServerConnection) -> bool:
        """Tell the state that ``connection`` is gone; ``False`` if it was told before."""
        if self._connections.pop(connection.conn.id, None) is None:
            return False
        self._ended_in += connection.bytes_in
        self._ended_out += connection.bytes_out
        held = connection.release_buffers()
        self.buffered -= held
        self._released += held
        self._holding.discard(connection)
        self._uncount(connection.peer)
        self.state.disconnect(connection.conn, anyio.current_time())
        return True


_WHAT: Final = {
    Action.REGISTER: "register the function",
    Action.SUBMIT: "submit jobs of",
    Action.ADMIN: "run the admin command",
}


def _log_denials(denials: Iterable[Denial]) -> None:
    """One warning per request the access rules refused."""
    for denial in denials:
        identity = denial.identity
        target = denial.target
        function = None if denial.action is Action.ADMIN else target
        logger.warning(
            "Permission denied: %s may not %s %r: %s",
            identity.describe(),
            _WHAT[denial.action],
            target.decode("utf-8", "backslashreplace"),
            denial.reason,
            extra={"peer": identity.address, "function": function},
        )


def _log_refusals(refusals: Iterable[Refusal], unlogged: int) -> None:
    """One line per refused name, and one for those not kept."""
    for refusal in refusals:
        peer = refusal.peer.decode("utf-8", "backslashreplace")
        logger.info("From %s: %s", peer, refusal.text, extra={"peer": peer})
    if unlogged:
        logger.info("%d more names refused since the last batch", unlogged)


def _log_job_notices(notices: Iterable[JobNotice]) -> None:
    """One line per rare turn of a job's life, with its handle, function and peer."""
    for notice in notices:
        handle = notice.handle.decode("utf-8", "backslashreplace")
        function = notice.function.decode("utf-8", "backslashreplace")
        peer = notice.peer.decode("utf-8", "backslashreplace") or None
        logger.log(
            logging.WARNING if notice.serious else logging.INFO,
            "Job %s (%s%s): %s",
            handle,
            function,
            f", from {peer}" if peer else "",
            notice.text,
            extra={"peer": peer, "handle": handle, "function": function},
        )
