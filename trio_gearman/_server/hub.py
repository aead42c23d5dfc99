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
from .connection import ConnectionSocket, ReadPoller, ServerConnection
from .sockets import KeepAlive, configure_accepted
from .tls import TLSSocket

if TYPE_CHECKING:
    from .._proto.server.state import ServerState

__all__ = ["ConnectionHub"]

logger = logging.getLogger("trio_gearman.server")


class ConnectionHub:
    """The connections of one job server, and what they need of it.

    Args:
        state: the server state the connections feed.
        max_packet_size: the largest packet body accepted from a peer.
        max_output: reply bytes that may wait for a blocked peer before it is dropped.
        keepalive: TCP keepalive for adopted TCP sockets, or ``None``.
        after_batch: called after the replies of each batch are sent (the server
            re-arms its timer there).

    Attributes:
        state: the server state.
        max_packet_size: the largest packet body accepted from a peer.
    """

    def __init__(
        self,
        state: ServerState,
        *,
        max_packet_size: int,
        max_output: int,
        keepalive: KeepAlive | None,
        after_batch: Callable[[], None],
    ) -> None:
        self.state = state
        self.max_packet_size = max_packet_size
        self._max_output = max_output
        self._keepalive = keepalive
        self._after_batch = after_batch
        self._connections: dict[int, ServerConnection] = {}
        self._task_group: TaskGroup | None = None
        self._poller: ReadPoller | None = None
        self.accepted = 0
        # The traffic of the connections that have ended (see traffic()).
        self._ended_in = 0
        self._ended_out = 0

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

    def shut(self) -> None:
        """The server has stopped: adopt nothing more."""
        self._task_group = None
        self._poller = None

    def adopt(
        self, sock: socket.socket, peer: str, *, identity: Identity | None = None
    ) -> ServerConnection | None:
        """Serve a connected socket from now on (the one way a connection starts).

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
            The connection, or ``None`` if the socket was already dead.

        Raises:
            RuntimeError: the server is not running.
        """
        task_group = self._task_group
        if task_group is None:
            sock.close()
            raise RuntimeError("the job server is not running")
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
        self.accepted += 1
        logger.debug("Connection %d from %s", conn.id, peer, extra={"peer": peer})
        if self._poller is not None:
            self._poller.add(connection)
        else:
            task_group.start_soon(connection.run)
        return connection

    # --- what a connection needs (ConnectionOwner) ------------------------------------------

    def send_pending(self) -> None:
        """Send every connection's new output; drop those that cannot take it."""
        denials = self.state.take_denials()
        if denials:
            _log_denials(denials)
        notices = self.state.take_job_notices()
        if notices:
            _log_job_notices(notices)
        dirty = self.state.dirty
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
                        self.drop(connection, "the peer is gone")
                    elif len(conn.outgoing) > limit:
                        # What the socket did not take waits: the replies of one read
                        # can be over the limit by themselves.
                        self.drop(
                            connection,
                            f"more than {limit} bytes of replies wait while it does not read",
                        )
                elif len(conn.outgoing) > limit:
                    self.drop(
                        connection,
                        f"more than {limit} bytes of replies wait while it does not read",
                    )
        self._after_batch()

    def start_task(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run a connection's writer (it has more to send than its socket took)."""
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

    # --- ending connections ------------------------------------------------------------------

    def drop(self, connection: ServerConnection, reason: str) -> None:
        """End a connection at once, without its pending replies, and log why."""
        logger.warning(
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
