"""One connection to the job server: a reader feeding the state, replies sent in one go.

The reader waits until the socket is readable, takes what it has (up to 64 KiB),
decodes every complete packet and admin line in it and hands each to the server
state, which appends replies to the ``outgoing`` buffer of every connection they
are for. Then the server sends each of those buffers with one non-blocking
``send``, from the same task. Only when a peer's socket buffer is full is a writer
task started for that connection; it sends the rest as the socket drains, and
ends. Nothing is spawned and nothing goes through a channel per packet.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Final

import anyio
import anyio.lowlevel

from ._exceptions import ProtocolError
from ._proto._codec import Decoder
from ._proto._packets import Magic
from ._server_net import notify_closing, wait_readable, wait_writable

if TYPE_CHECKING:
    from ._proto._server_state import ConnectionState
    from ._server import GearmanServer

__all__ = ["RECEIVE_SIZE", "ServerConnection"]

logger = logging.getLogger("trio_gearman.server")

RECEIVE_SIZE: Final = 65536
"""Bytes asked of the socket per read."""
FLUSH_TIMEOUT: Final = 10.0
"""Seconds a closing connection may take to send its last replies."""


class ServerConnection:
    """The job server's side of one TCP connection.

    Created by the server for each accepted socket; :meth:`run` serves it until the
    peer leaves, the state asks for it to be closed, or the server stops. The server
    keeps it by ``conn.id`` and, after each batch of events, calls :meth:`flush` on
    it (or, while it is :attr:`blocked`, checks how much waits) and :meth:`abort` to
    drop it.

    Attributes:
        conn: this connection's record in the server state.
        peer: the peer's address, for log messages.
        blocked: replies wait for the socket to become writable (the peer is slow
            to read); a writer task sends them as the socket drains.
        disconnected: the state has been told that the connection is gone.
    """

    __slots__ = (
        "_closed",
        "_reader_scope",
        "_server",
        "_sock",
        "_writer_done",
        "_writer_scope",
        "blocked",
        "conn",
        "disconnected",
        "peer",
    )

    def __init__(
        self, server: GearmanServer, sock: socket.socket, conn: ConnectionState, peer: str
    ) -> None:
        self._server = server
        self._sock = sock
        self.conn = conn
        self.peer = peer
        self.blocked = False
        self.disconnected = False
        self._closed = False
        self._reader_scope = anyio.CancelScope()
        self._writer_scope: anyio.CancelScope | None = None
        self._writer_done: anyio.Event | None = None

    def flush(self) -> bool:
        """Send what ``conn.outgoing`` holds, without waiting.

        What the socket does not take now is left to a writer task, started here
        and ending once everything is sent.

        Returns:
            ``False`` if the connection is broken (the peer is gone).
        """
        out = self.conn.outgoing
        try:
            sent = self._sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent == len(out):
            out.clear()
        else:
            del out[:sent]
            self.blocked = True
            self._writer_scope = anyio.CancelScope()
            self._writer_done = anyio.Event()
            self._server._start_writer(self._write_loop)
        return True

    def abort(self) -> None:
        """Stop serving at once, without sending what is pending."""
        self.conn.outgoing.clear()
        self._reader_scope.cancel()
        if self._writer_scope is not None:
            self._writer_scope.cancel()

    async def run(self) -> None:
        """Serve the connection until it ends; close the socket on the way out."""
        try:
            with self._reader_scope:
                if await self._read_loop() and self._writer_done is not None:
                    # The peer is done sending, or the state wants the connection
                    # closed: let the last replies go out (within a bound).
                    with anyio.move_on_after(FLUSH_TIMEOUT):
                        await self._writer_done.wait()
        finally:
            self._closed = True
            if self._writer_scope is not None:
                self._writer_scope.cancel()
            self._server._connection_ended(self)
            notify_closing(self._sock)
            self._sock.close()

    async def _read_loop(self) -> bool:
        """Read, decode and hand over until the stream ends.

        Returns:
            ``True`` when the last replies should still be sent (end of stream,
            protocol error, closing), ``False`` when the connection is broken.
        """
        server = self._server
        state = server.state
        conn = self.conn
        recv = self._sock.recv
        sock = self._sock
        decoder = Decoder(expect=Magic.REQ, allow_text=True, max_packet_size=server.max_packet_size)
        feed = decoder.feed
        handle = state.receive
        current_time = anyio.current_time
        checkpoint = anyio.lowlevel.checkpoint
        after_batch = server._after_batch
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
            if not data:
                return True
            more = len(data) == RECEIVE_SIZE
            feed(data)
            now = current_time()
            try:
                for event in decoder:
                    handle(conn, event, now)
                    if conn.closing:
                        break
            except ProtocolError as exc:
                logger.info("Closing the connection from %s: %s", self.peer, exc)
                state.protocol_error(conn, exc, now)
                conn.closing = True
            except Exception:
                logger.exception("Internal error serving %s; closing its connection", self.peer)
                conn.closing = True
            after_batch()
            if conn.closing:
                return True

    async def _write_loop(self) -> None:
        """Send what the socket would not take at once, as it drains; then end."""
        conn = self.conn
        sock = self._sock
        scope = self._writer_scope
        done = self._writer_done
        assert scope is not None
        assert done is not None
        try:
            with scope:
                while conn.outgoing and not self._closed:
                    await wait_writable(sock)
                    out = conn.outgoing
                    try:
                        sent = sock.send(out)
                    except BlockingIOError:
                        continue
                    except OSError:
                        # The peer is gone: stop reading too.
                        out.clear()
                        self._reader_scope.cancel()
                        return
                    del out[:sent]
        except anyio.ClosedResourceError:  # the reader closed the socket
            pass
        finally:
            self.blocked = False
            self._writer_scope = self._writer_done = None
            done.set()
