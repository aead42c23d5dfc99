"""One connection to the job server, and the poller that reads every connection.

A connection is read when its socket is readable: what it has (up to 64 KiB) is
decoded and every complete packet and admin line is handed to the server state,
which appends replies to the ``outgoing`` buffer of every connection they are
for. After each batch the server sends each of those buffers with one
non-blocking ``send``. Only when a peer's socket buffer is full is a writer task
started for that connection; it sends the rest as the socket drains, and ends.
An admin listing longer than one slice is sent by a task of its connection too:
it asks the state for the next slice once the last one went out, and lets the
other connections be served in between; the connection is not read meanwhile.

Where the system has ``epoll`` the server's connections need no task at all: a
:class:`ReadPoller` keeps them in an epoll set of its own (registered once, level
triggered), takes every readable connection in one go, reads each once, and only
then lets the server send the replies of the whole batch. An idle connection is
then a socket and two small objects. Elsewhere each connection is served by its
own task, :meth:`ServerConnection.run`.

A connection talks to whoever owns it (the server's connection hub) only through
the small :class:`ConnectionOwner` interface below; it knows nothing else of the
server. Every way a connection can end (the peer leaves or resets, a protocol
error, the state closes it, the owner drops it, the server stops) goes through
:meth:`ServerConnection.close`, which tells the owner exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import select
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import anyio.lowlevel
import trio

from .._exceptions import ProtocolError
from .._proto._codec import Decoder
from .._proto._packets import Magic
from .sockets import notify_closing, wait_readable, wait_writable

if TYPE_CHECKING:
    from .._proto.server.state import ConnectionState, ServerState

__all__ = [
    "HAVE_EPOLL",
    "RECEIVE_SIZE",
    "ConnectionOwner",
    "ConnectionSocket",
    "ReadPoller",
    "ServerConnection",
]

logger = logging.getLogger("trio_gearman.server")

RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read."""
FLUSH_TIMEOUT: Final = 10.0
"""Seconds a closing connection may take to send its last replies."""
HAVE_EPOLL: Final = hasattr(select, "epoll")
"""Whether the server's connections can be served by a :class:`ReadPoller`."""
_POLL_EVENTS: Final = 1024
"""Readable connections taken from the poller at most per batch."""


class ConnectionSocket(Protocol):
    """What a connection needs of its socket: a plain non-blocking socket has it.

    So does a TLS connection's :class:`~trio_gearman._server.tls.TLSSocket`, whose
    ``recv`` and ``send`` raise ``BlockingIOError`` like a plain socket's.
    """

    def fileno(self) -> int:
        """The file descriptor, ``-1`` once closed."""

    def recv(self, bufsize: int, /) -> bytes:
        """Up to ``bufsize`` bytes; empty at the end of the stream."""

    def send(self, data: bytes | bytearray | memoryview, /) -> int:
        """Send what the socket takes now; the count sent."""

    def close(self) -> None:
        """Close the socket."""


class ConnectionOwner(Protocol):
    """What a :class:`ServerConnection` needs of its owner, and all it may use.

    Attributes:
        state: the server state that the connection's events are handed to.
        max_packet_size: the largest packet body accepted from the peer.
    """

    state: ServerState
    max_packet_size: int

    def send_pending(self) -> None:
        """Send the replies that the state queued for any connection."""

    def start_task(self, func: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``func`` in a task of the server (a connection's writer or listing sender)."""

    def connection_closed(self, connection: ServerConnection) -> None:
        """The connection has ended: forget it and tell the state (once)."""

    def hold(self, connection: ServerConnection, delta: int) -> None:
        """The connection's buffers hold ``delta`` bytes more (or fewer, if negative)."""


class ServerConnection:
    """The job server's side of one connection (a TCP socket, or a socket pair's end).

    Created by the server's hub for each accepted socket. It is served either by
    a :class:`ReadPoller` (which calls :meth:`read`) or by its own task
    (:meth:`run`), until the peer leaves, the state asks for it to be closed, or
    the server stops. The owner keeps it by ``conn.id`` and, after each batch of
    events, calls :meth:`flush` on it (or, while it is :attr:`blocked`, checks how
    much waits) and :meth:`abort` to drop it.

    Args:
        owner: the server side it reports to.
        sock: the connected, non-blocking socket (or TLS socket); the connection
            closes it.
        conn: this connection's record in the server state.
        peer: the peer's address, for log messages.

    Attributes:
        conn: this connection's record in the server state.
        peer: the peer's address, for log messages.
        cert_names: the names of the peer's verified TLS client certificate
            (subject commonName, then subjectAltName DNS, URI, email and IP
            values); empty for a plaintext connection or one without a
            client certificate.
        blocked: replies wait for the socket to become writable (the peer is slow
            to read); a writer task sends them as the socket drains.
        bytes_in: bytes received so far.
        bytes_out: bytes sent so far.
        held_in: bytes of an incomplete packet or line, waiting for the rest.
        held_out: reply bytes waiting for a blocked peer, as of the last count.
    """

    __slots__ = (
        "_closed",
        "_closed_event",
        "_deadline",
        "_decoder",
        "_ending",
        "_finishing",
        "_idle_mark",
        "_idle_since",
        "_in_mark",
        "_in_since",
        "_listing",
        "_listing_scope",
        "_out_mark",
        "_out_since",
        "_owner",
        "_paused_poller",
        "_poller",
        "_reader_scope",
        "_released",
        "_sock",
        "_writer_done",
        "_writer_scope",
        "blocked",
        "bytes_in",
        "bytes_out",
        "cert_names",
        "conn",
        "held_in",
        "held_out",
        "peer",
    )

    def __init__(
        self, owner: ConnectionOwner, sock: ConnectionSocket, conn: ConnectionState, peer: str
    ) -> None:
        self._owner = owner
        self._sock = sock
        self.conn = conn
        self.peer = peer
        self.cert_names: tuple[str, ...] = ()
        self.bytes_in = 0
        self.bytes_out = 0
        self.blocked = False
        self._closed = False
        self._closed_event: anyio.Event | None = None
        self._ending = False
        self._finishing = False
        self._deadline = math.inf
        self._listing: anyio.Event | None = None
        self._listing_scope: anyio.CancelScope | None = None
        self._decoder: Decoder | None = None
        self._poller: ReadPoller | None = None
        self._paused_poller: ReadPoller | None = None
        self._reader_scope: anyio.CancelScope | None = None
        self._writer_scope: anyio.CancelScope | None = None
        self._writer_done: anyio.Event | None = None
        self.held_in = 0
        self.held_out = 0
        self._released = False
        # What the owner's sweep saw last (a byte count) and since when (see late()).
        self._in_mark = self._out_mark = self._idle_mark = -1
        self._in_since = self._out_since = self._idle_since = 0.0

    def flush(self) -> bool:
        """Send the connection's output (``conn.outgoing``, after any shared
        buffers), without waiting.

        What the socket does not take now is left to a writer task, started here
        and ending once everything is sent.

        Returns:
            ``False`` if the connection is broken (the peer is gone).
        """
        conn = self.conn
        out = conn.outgoing
        if conn.shared is None:
            try:
                sent = self._sock.send(out)
                self.bytes_out += sent
            except BlockingIOError:
                sent = 0
            except OSError:
                return False
            if sent == len(out):
                out.clear()
                return True
            del out[:sent]
        else:
            try:
                self._send_buffers()
            except OSError:
                return False
            if not conn.pending_output:
                return True
        self.blocked = True
        self._writer_scope = anyio.CancelScope(deadline=self._deadline)
        self._writer_done = anyio.Event()
        self._owner.start_task(self._write_loop)
        return True

    def _send_buffers(self) -> None:
        """Send what the socket takes of an output with shared buffers, in order.

        Raises:
            OSError: the connection is broken.
        """
        conn = self.conn
        send = self._sock.send
        total = 0
        for buffer in conn.output_buffers():
            try:
                sent = send(buffer)
            except BlockingIOError:
                break
            total += sent
            if sent < len(buffer):
                break
        self.bytes_out += total
        conn.consume_output(total)

    def keep_listing(self) -> None:
        """Send the rest of the connection's admin listing (``conn.listing``) from a
        task of its own, a slice at a time (unless that task runs already).

        The connection is not read meanwhile (what it sends would only wait behind
        the listing): a peer that sends without reading is held back by its socket.
        """
        if self._listing is None and not self._closed:
            self._listing = anyio.Event()
            self._listing_scope = anyio.CancelScope(deadline=self._deadline)
            poller = self._poller
            if poller is not None:
                poller.discard(self)
                self._paused_poller = poller
            self._owner.start_task(self._list_loop)

    async def _list_loop(self) -> None:
        """Ask the state for the next slice each time the last one went out.

        Other connections are served between two slices; while a slice waits for
        the socket, nothing more is made.
        """
        conn = self.conn
        state = self._owner.state
        scope = self._listing_scope
        done = self._listing
        assert scope is not None
        assert done is not None
        try:
            with scope:
                while conn.listing is not None and not self._closed:
                    await anyio.lowlevel.checkpoint()
                    sending = self._writer_done
                    if sending is not None:  # the peer has not taken the last slice yet
                        await sending.wait()
                        continue
                    state.continue_listing(conn, anyio.current_time())
                    self._owner.send_pending()
        finally:
            self._listing = self._listing_scope = None
            done.set()
            poller, self._paused_poller = self._paused_poller, None
            if self._ending and self._writer_done is None:
                # Served by the poller and ending: close once the last slice is sent.
                self.close()
            elif poller is not None and not self._closed and not poller.resume(self):
                self.close()  # the poller has stopped: the server is closing

    @property
    def closed(self) -> bool:
        """Whether the connection has ended (its socket is closed)."""
        return self._closed

    def abort(self) -> None:
        """Stop serving at once, without sending what is pending.

        A connection served by its own task ends when that task has unwound; one
        served by the poller ends here. :meth:`wait_closed` waits for either.
        """
        self.conn.clear_output()
        if self._reader_scope is not None:
            self._reader_scope.cancel()
        else:
            self.close()
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        if self._closed:
            return
        if self._closed_event is None:
            self._closed_event = anyio.Event()
        await self._closed_event.wait()

    # --- the owner's bounds --------------------------------------------------------------------

    def hold_output(self, waiting: int) -> None:
        """Count ``waiting`` reply bytes as held for a blocked peer (0: none)."""
        delta = waiting - self.held_out
        if delta and not self._released:
            self.held_out = waiting
            self._owner.hold(self, delta)

    def release_buffers(self) -> int:
        """Stop counting this connection's buffers (it ends); the bytes it held."""
        held = self.held_in + self.held_out
        self.held_in = self.held_out = 0
        self._released = True
        return held

    def late(
        self, now: float, packet_timeout: float | None, write_timeout: float | None
    ) -> str | None:
        """Why the connection is past a timeout, or ``None``; called once per sweep.

        The packet timeout runs from the first sweep that saw the packet incomplete
        until it is complete, however its bytes trickle in (a slowloris peer keeps
        sending some); the write timeout runs while no reply byte is taken and
        starts again whenever one is. Both are read from the byte counters, so
        nothing is timed per packet.

        Args:
            now: the event loop's time.
            packet_timeout: seconds a started packet may stay incomplete, or ``None``.
            write_timeout: seconds replies may wait with none of them taken, or ``None``.
        """
        if self.held_in and packet_timeout is not None:
            mark = self.bytes_in - self.held_in  # where the incomplete packet starts
            if mark != self._in_mark:
                self._in_mark, self._in_since = mark, now
            elif now - self._in_since >= packet_timeout:
                return (
                    f"a packet it started is incomplete after {packet_timeout:g} s "
                    f"({self.held_in} bytes received; the packet timeout)"
                )
        if self.blocked and write_timeout is not None:
            mark = self.bytes_out
            if mark != self._out_mark:
                self._out_mark, self._out_since = mark, now
            elif now - self._out_since >= write_timeout:
                return (
                    f"it took none of its {self.conn.pending_output} bytes of replies "
                    f"for {write_timeout:g} s (the write timeout)"
                )
        return None

    def idle_for(self, now: float) -> float:
        """Seconds since the last sweep that saw a byte in or out (0 if this one did)."""
        mark = self.bytes_in + self.bytes_out
        if mark != self._idle_mark:
            self._idle_mark, self._idle_since = mark, now
            return 0.0
        return now - self._idle_since

    def _out_of_memory(self, doing: str) -> None:
        """Memory ran out serving this connection: end it, without its pending replies."""
        self.conn.clear_output()
        self._decoder = None
        self.conn.closing = True
        logger.error(
            "MEMORY_ALLOCATION_FAILURE: out of memory %s; closing the connection from %s",
            doing,
            self.peer,
            extra={"peer": self.peer},
        )

    # --- reading ----------------------------------------------------------------------------

    def read(self, now: float) -> bool:
        """Take what the readable socket has and hand every complete event to the state.

        Args:
            now: the time of the batch (``anyio.current_time()``).

        Returns:
            ``True`` when the connection ends: the peer is done sending or gone, or
            the state wants it closed.
        """
        try:
            data = self._sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            self.conn.clear_output()  # the peer is gone: nothing more to send
            return True
        except MemoryError:
            self._out_of_memory("receiving")
            return True
        if not data:
            return True
        self._handle(data, now)
        return self.conn.closing

    def _handle(self, data: bytes, now: float) -> None:
        """Decode ``data`` and hand each event to the state; close on a protocol error."""
        self.bytes_in += len(data)
        state = self._owner.state
        conn = self.conn
        decoder = self._decoder
        if decoder is None:
            decoder = self._decoder = Decoder(
                expect=Magic.REQ, allow_text=True, max_packet_size=self._owner.max_packet_size
            )
        handle = state.receive
        try:
            decoder.feed(data)
            for event in decoder:
                handle(conn, event, now)
                if conn.closing:
                    break
        except MemoryError:
            self._out_of_memory("decoding or handling its packets")
            return
        except ProtocolError as exc:
            state.protocol_error(conn, exc, now)
            if conn.broken and not conn.closing:
                # Earlier requests still wait for their replies: the error and the
                # close come after them (see finish()); nothing more is read.
                logger.info(
                    "Closing the connection from %s once its pending replies are sent: %s",
                    self.peer,
                    exc,
                    extra={"peer": self.peer},
                )
                poller = self._poller
                if poller is not None:
                    poller.discard(self)
            else:
                logger.info(
                    "Closing the connection from %s: %s", self.peer, exc, extra={"peer": self.peer}
                )
                conn.closing = True
        except Exception:
            logger.exception(
                "Internal error serving %s; closing its connection",
                self.peer,
                extra={"peer": self.peer},
            )
            conn.closing = True
        held = decoder.buffered
        if held != self.held_in and not self._released:
            self._owner.hold(self, held - self.held_in)
            self.held_in = held

    def finish(self) -> None:
        """The state wants the connection closed (``conn.closing``) outside a read of it:
        send what is pending, then close.

        That happens when a store's commit, or the end of a listing, answers the
        requests that waited behind it and one of them ends the connection.
        """
        if self._closed:
            return
        if self._reader_scope is None:
            self.end()
        else:  # served by its own task: stop its reading; run() sends the rest
            self._finishing = True
            self._reader_scope.cancel()

    def end(self) -> None:
        """Stop reading (the poller's side): close now, or once the last replies are sent."""
        if self._closed:
            return
        poller = self._poller
        if poller is not None:
            poller.discard(self)
        if self._listing is not None or (
            self._writer_scope is not None and self.conn.pending_output
        ):
            # Let the writer send the last replies, and the rest of a listing
            # (within a bound), then close.
            self._ending = True
            self._deadline = anyio.current_time() + FLUSH_TIMEOUT
            for scope in (self._writer_scope, self._listing_scope):
                if scope is not None:
                    scope.deadline = min(scope.deadline, self._deadline)
        else:
            self.close()

    def close(self) -> None:
        """End the connection: stop reading and writing, tell the owner, close the socket.

        Every way a connection ends comes here; only the first call does anything.
        """
        if self._closed:
            return
        self._closed = True
        self._decoder = None  # a partial packet's bytes go back now
        poller = self._poller
        if poller is not None:
            poller.discard(self)
        if self._writer_scope is not None:
            self._writer_scope.cancel()
        if self._listing_scope is not None:
            self._listing_scope.cancel()
        try:
            self._owner.connection_closed(self)
        finally:
            notify_closing(self._sock)
            self._sock.close()
            if self._closed_event is not None:
                self._closed_event.set()

    async def run(self) -> None:
        """Serve the connection from this task until it ends; close the socket on the way out."""
        if self._closed:  # aborted before its task started
            return
        try:
            flush = False
            with anyio.CancelScope() as self._reader_scope:
                flush = await self._read_loop()
            if flush or self._finishing:
                # The peer is done sending, or the state wants the connection closed:
                # let the last replies and the rest of a listing go out (within a
                # bound; abort() cancels this scope too).
                with anyio.CancelScope() as self._reader_scope, anyio.move_on_after(FLUSH_TIMEOUT):
                    while True:
                        waiting = self._listing or self._writer_done
                        if waiting is None:
                            break
                        await waiting.wait()
        except MemoryError:
            self._out_of_memory("serving it")
        finally:
            self.close()

    async def _read_loop(self) -> bool:
        """Read, decode and hand over until the stream ends.

        Returns:
            ``True`` when the last replies should still be sent (end of stream,
            protocol error, closing), ``False`` when the connection is broken.
        """
        conn = self.conn
        recv = self._sock.recv
        sock = self._sock
        current_time = anyio.current_time
        checkpoint = anyio.lowlevel.checkpoint
        after_batch = self._owner.send_pending
        more = False
        while True:
            # After a full read more is probably waiting: read again (yielding to
            # other tasks first). Otherwise wait until the peer sends something.
            if more:
                await checkpoint()
            else:
                await wait_readable(sock)
            try:
                data = recv(RECEIVE_SIZE)
            except BlockingIOError:
                more = False
                continue
            except OSError:
                return False
            except MemoryError:
                self._out_of_memory("receiving")
                return False
            if not data:
                return True
            more = len(data) == RECEIVE_SIZE
            self._handle(data, current_time())
            after_batch()
            if conn.closing:
                return True
            if conn.broken:
                await anyio.sleep_forever()  # until finish(): the state says when to close
            listing = self._listing
            if listing is not None:
                await listing.wait()  # read nothing more until the listing is sent

    # --- writing ----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        """Send what the socket would not take at once, as it drains; then end."""
        conn = self.conn
        sock = self._sock
        scope = self._writer_scope
        done = self._writer_done
        assert scope is not None
        assert done is not None
        broken = False
        try:
            with scope:
                while conn.pending_output and not self._closed:
                    await wait_writable(sock)
                    out = conn.outgoing
                    try:
                        if conn.shared is None:
                            sent = sock.send(out)
                            self.bytes_out += sent
                            del out[:sent]
                        else:
                            self._send_buffers()
                    except BlockingIOError:
                        continue
                    except OSError:
                        # The peer is gone: stop reading too.
                        conn.clear_output()
                        broken = True
                        if self._reader_scope is not None:
                            self._reader_scope.cancel()
                        return
                    self.hold_output(conn.pending_output)
        except anyio.ClosedResourceError:  # the reader closed the socket
            pass
        except MemoryError:
            self._out_of_memory("sending its replies")
            broken = True
            if self._reader_scope is not None:
                self._reader_scope.cancel()
        finally:
            self.blocked = False
            self.hold_output(0)
            self._writer_scope = self._writer_done = None
            done.set()
            # Served by the poller (no reader task to notice): close here when the
            # connection was only waiting for these replies, or is broken.
            if (self._ending and self._listing is None) or (broken and self._reader_scope is None):
                self.close()


class ReadPoller:
    """Reads every connection of a server from one task, through one epoll set.

    Each connection's socket is registered once (level triggered) when it is
    added. The poller waits until the epoll set is readable, reads every readable
    connection once, and then lets the server send all the replies of the batch
    (so replies to several peers go out with one ``send`` each, after every read).
    While connections are busy it polls again after yielding to other tasks,
    without going back to the event loop's own wait.

    Args:
        owner: the server side whose replies are sent after each batch.
    """

    __slots__ = ("_by_fd", "_epoll", "_owner")

    def __init__(self, owner: ConnectionOwner) -> None:
        self._owner = owner
        self._epoll = select.epoll()
        self._by_fd: dict[int, ServerConnection] = {}

    def add(self, connection: ServerConnection) -> None:
        """Start reading ``connection``."""
        fd = connection._sock.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._by_fd[fd] = connection
        connection._poller = self

    def resume(self, connection: ServerConnection) -> bool:
        """Read ``connection`` again after a pause; ``False`` if the poller has stopped."""
        if self._epoll.closed:
            return False
        self.add(connection)
        return True

    def discard(self, connection: ServerConnection) -> None:
        """Stop reading ``connection`` (before its socket is closed)."""
        if connection._poller is not self:
            return
        connection._poller = None
        fd = connection._sock.fileno()
        if self._by_fd.get(fd) is connection:
            del self._by_fd[fd]
            with contextlib.suppress(OSError):  # already gone
                self._epoll.unregister(fd)

    async def run(self) -> None:
        """Serve until cancelled; then close every connection still open."""
        by_fd = self._by_fd
        poll = self._epoll.poll
        epoll_fd = self._epoll.fileno()
        after_batch = self._owner.send_pending
        wait: Callable[[int], Awaitable[None]]
        checkpoint: Callable[[], Awaitable[None]]
        current_time: Callable[[], float]
        try:
            trio.lowlevel.current_trio_token()
        except RuntimeError:
            wait = wait_readable
            checkpoint = anyio.lowlevel.checkpoint
            current_time = anyio.current_time
        else:  # Trio's own primitives: fewer frames on the hot path.
            wait = trio.lowlevel.wait_readable
            checkpoint = trio.lowlevel.checkpoint
            current_time = trio.current_time
        ending: list[ServerConnection] = []
        try:
            while True:
                events = poll(0, _POLL_EVENTS)
                if not events:
                    await wait(epoll_fd)
                    continue
                now = current_time()
                for fd, _ in events:
                    connection = by_fd.get(fd)
                    if connection is not None and connection.read(now):
                        ending.append(connection)
                try:
                    after_batch()
                except MemoryError:  # each connection's own failures are handled in it
                    logger.error("MEMORY_ALLOCATION_FAILURE: out of memory sending replies")
                if ending:
                    for connection in ending:
                        connection.end()
                    ending.clear()
                await checkpoint()
        finally:
            for connection in list(by_fd.values()):
                connection.close()
            self._epoll.close()
