"""One framed Gearman connection over an AnyIO byte stream.

:class:`PacketStream` is the I/O half of every Gearman connection this package
opens (client, worker, and later the admin client and the failover supervisor):

* one reader reads large chunks and feeds the sans-IO :class:`~trio_gearman._proto.Decoder`,
  handing each decoded event to a callback;
* packets to send are appended to one outgoing ``bytearray``
  (:meth:`PacketStream.send_nowait`), and one writer task hands everything that
  accumulated to the transport in a single ``send``.

It is typed by :class:`anyio.abc.ByteStream`, so tests run it on in-memory streams
as easily as on sockets. :func:`connect` opens a TCP connection with a timeout,
over TLS where the address or the caller asks for it; :func:`open_transport` is
that connection path alone (the admin client reads lines, not packets).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
import ssl
import sys
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

from .._address import TLS_SCHEME, Address, format_server, parse_server
from .._exceptions import ConnectFailed, ConnectionLost, ProtocolError
from .._proto import DEFAULT_MAX_PACKET_SIZE, Decoder, Event, Magic, Message, encode_into

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "Connector",
    "PacketStream",
    "broken_reason",
    "connect",
    "default_ssl_context",
    "ended_unheard",
    "open_transport",
    "os_error_text",
    "os_reason",
    "tls_error_text",
]

logger = logging.getLogger("trio_gearman.stream")

DEFAULT_CONNECT_TIMEOUT = 4.0
"""Seconds to wait for a TCP connection (libgearman's default)."""

_RECEIVE_SIZE = 65536
_HIGH_WATER = 1024 * 1024


_SSL_TEXT = re.compile(r"^\[[^\]]*\]\s*(.*?)\s*\(_ssl\.c:\d+\)$")


def tls_error_text(exc: ssl.SSLError) -> str:
    """What a TLS error means, without OpenSSL's decoration.

    ``certificate verify failed: unable to get local issuer certificate`` for a
    certificate the trusted CAs did not sign, ``tlsv13 alert certificate required``
    when the server wanted a client certificate, and so on.
    """
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    text = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
    found = _SSL_TEXT.match(text)
    if found and found.group(1):
        return found.group(1)
    return text or (exc.reason or type(exc).__name__).lower().replace("_", " ")


def os_error_text(exc: BaseException) -> str | None:
    """The operating system's own words in an exception's causes, if any.

    AnyIO reports "All connection attempts failed" with the attempts' errors as its
    cause (an exception group when there were several addresses); this digs out
    the first error with an errno, e.g. "Connection refused". A TLS error in the
    causes gives ``TLS error: `` and :func:`tls_error_text` instead (its errno is
    OpenSSL's, not the OS's).
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return f"TLS error: {tls_error_text(current)}"
        code = current.errno if isinstance(current, OSError) else None
        if code is not None and code in errno.errorcode:
            return os.strerror(code)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return None


def os_reason(exc: BaseException) -> str:
    """The OS's words for a failed connect, else the error's own message."""
    return os_error_text(exc) or str(exc)


def ended_unheard(peer: str, reason: str) -> str:
    """``reason``, with a hint when a TLS connection ends before the server's first byte.

    A TLS 1.3 server that requires a client certificate checks it only after the
    client's side of the handshake is done: a client without one sees the
    connection reset or closed on its first exchange, and sees the server's
    ``certificate required`` alert only when it reads it before the reset.
    """
    if not peer.startswith(TLS_SCHEME) or "TLS error" in reason:
        return reason
    return f"{reason} before the server's first answer (does it require a client certificate?)"


def broken_reason(exc: BaseException) -> str:
    """Why a connection in use broke, in words: never empty.

    The OS's words where there are some (``Connection reset by peer``), else the
    error's message, else what the error type means.
    """
    text = os_error_text(exc) or str(exc)
    if text:
        return text
    if isinstance(exc, anyio.ClosedResourceError):
        return "it was closed on this side"
    if isinstance(exc, anyio.BrokenResourceError):
        return "the peer reset or abandoned it"
    return type(exc).__name__


@functools.cache
def default_ssl_context() -> ssl.SSLContext:
    """The context of a TLS connection made without one: the system's CAs, verified.

    Made once (loading the CA store takes a while) by
    :func:`ssl.create_default_context`: the server's certificate must chain to a
    trusted CA and name the host of the address.
    """
    return ssl.create_default_context()


async def open_transport(
    address: Address,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[anyio.abc.ByteStream, str]:
    """Open a TCP connection to a server, with a TLS handshake where asked.

    TLS is used when the address says ``tls://``, or when it has no scheme and
    ``ssl_context`` is given; ``tcp://`` is always plaintext. The certificate is
    checked against the address's host (which is also sent as SNI).

    Args:
        address: the server, see :func:`~trio_gearman._address.parse_server`.
        connect_timeout: seconds for the connection and the TLS handshake together.
        ssl_context: the TLS settings; ``None`` takes :func:`default_ssl_context`
            for a ``tls://`` address.

    Returns:
        The transport and the server's normalised address (``tls://host:port``
        for TLS), as errors name it.

    Raises:
        ConnectFailed: the connection was refused, the host is unknown or
            unreachable, the TLS handshake failed (the reason says why, e.g.
            ``certificate verify failed: unable to get local issuer
            certificate``), or nothing answered within ``connect_timeout``.
    """
    default_tls = ssl_context is not None
    host, port, tls = parse_server(address, tls=default_tls)
    peer = format_server(host, port, tls, default_tls=default_tls)
    stream: anyio.abc.ByteStream
    try:
        with anyio.fail_after(connect_timeout):
            if tls:
                # Not "standard compatible": Gearman's framing shows a cut-off packet,
                # so a server or proxy that closes without close_notify is no error.
                stream = await anyio.connect_tcp(
                    host,
                    port,
                    ssl_context=ssl_context or default_ssl_context(),
                    tls_hostname=host,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(host, port)
    except TimeoutError as exc:
        raise ConnectFailed(f"no connection within {connect_timeout:g} s", server=peer) from exc
    except OSError as exc:  # ssl.SSLError too: os_reason() gives its words
        raise ConnectFailed(f"cannot connect: {os_reason(exc)}", server=peer) from exc
    except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:  # in the TLS handshake
        cause = exc.__cause__
        if cause is None or isinstance(cause, ssl.SSLEOFError):
            reason = (
                "TLS error: the server closed the connection during the handshake "
                "(is the port a TLS one?)"
            )
        else:
            reason = broken_reason(exc)
        raise ConnectFailed(f"cannot connect: {reason}", server=peer) from exc
    return stream, peer


async def connect(
    address: Address,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    ssl_context: ssl.SSLContext | None = None,
    expect: Magic = Magic.RES,
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
) -> PacketStream:
    """Open a TCP connection to a Gearman server, over TLS where asked.

    Args:
        address: the server, see :func:`~trio_gearman._address.parse_server`.
        connect_timeout: seconds to wait for the connection (and TLS handshake).
        ssl_context: as for :func:`open_transport`.
        expect: the magic of the packets this side receives (``RES`` for a client
            or worker).
        max_packet_size: the largest packet body accepted from the server.

    Returns:
        A :class:`PacketStream` on the new connection (TCP_NODELAY set).

    Raises:
        ConnectFailed: as for :func:`open_transport`.
    """
    stream, peer = await open_transport(
        address, connect_timeout=connect_timeout, ssl_context=ssl_context
    )
    return PacketStream(stream, peer=peer, expect=expect, max_packet_size=max_packet_size)


class PacketStream:
    """A Gearman connection: decoded events in, batched packets out.

    Run :meth:`serve` in a task for as long as the connection is used; queue packets
    with :meth:`send_nowait` (or :meth:`send`, which waits while too much is queued)
    from any task of the same event loop.

    Attributes:
        peer: how errors name the other end.
        reads: how many chunks have arrived from the peer: 0 until it has said
            anything (a heartbeat compares it over time).

    Args:
        stream: the transport.
        peer: how errors name the other end (``host:port`` for a server).
        expect: the magic of received packets: ``Magic.RES`` on a client or worker.
        max_packet_size: the largest packet body accepted.
        receive_size: the most bytes read from the transport at once.
    """

    __slots__ = (
        "_decoder",
        "_drained",
        "_error",
        "_out",
        "_receive_size",
        "_sending",
        "_stream",
        "_wakeup",
        "peer",
        "reads",
    )

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        *,
        peer: str,
        expect: Magic = Magic.RES,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        receive_size: int = _RECEIVE_SIZE,
    ) -> None:
        self._stream = stream
        self.peer = peer
        self._decoder = Decoder(expect=expect, max_packet_size=max_packet_size)
        self._receive_size = receive_size
        self._out = bytearray()
        self._sending = False
        self._wakeup: anyio.Event | None = None
        self._drained: anyio.Event | None = None
        self._error: ConnectionLost | None = None
        self.reads = 0

    @property
    def error(self) -> ConnectionLost | None:
        """Why the connection ended, or ``None`` while it is usable."""
        return self._error

    @property
    def buffered(self) -> int:
        """Bytes queued for sending and not yet handed to the transport."""
        return len(self._out)

    def send_nowait(self, message: Message, magic: Magic | None = None) -> None:
        """Queue one packet; the writer task sends it with whatever else is queued.

        Args:
            message: the packet.
            magic: its magic, by default the one the packet normally travels with.

        Raises:
            ConnectionLost: the connection has ended.
        """
        if self._error is not None:
            raise self._error
        encode_into(self._out, message, magic)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def send_encoded_nowait(self, packet: bytes) -> None:
        """Queue one packet already encoded (a constant one, say, encoded once).

        Raises:
            ConnectionLost: the connection has ended.
        """
        if self._error is not None:
            raise self._error
        self._out += packet
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def send(self, message: Message, magic: Magic | None = None) -> None:
        """Queue one packet, then wait while more than 1 MiB is queued.

        Raises:
            ConnectionLost: the connection has ended.
        """
        self.send_nowait(message, magic)
        if len(self._out) > _HIGH_WATER:
            await self.drain()

    async def drain(self) -> None:
        """Wait until every queued packet has been handed to the transport.

        Raises:
            ConnectionLost: the connection ended before that.
        """
        while self._out or self._sending:
            if self._error is not None:
                raise self._error
            if self._drained is None:
                self._drained = anyio.Event()
            await self._drained.wait()
        if self._error is not None:
            raise self._error

    async def serve(
        self,
        on_event: Callable[[Event], object],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read and write until the connection ends; then close the transport.

        Every decoded event is passed to ``on_event`` in order, from this task.
        Errors that ``on_event`` raises propagate (they are bugs, not I/O errors).

        Raises:
            ConnectionLost: always, once the connection has ended: the peer closed
                it, the transport failed, or the peer broke the protocol (then the
                :class:`~trio_gearman.ProtocolError` is the ``__cause__``).
        """
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._write_loop, tg.cancel_scope)
                task_status.started()
                await self._read_loop(on_event)
                tg.cancel_scope.cancel()
        finally:
            await anyio.aclose_forcefully(self._stream)
            if self._error is None:
                self._fail("the connection was closed")
        assert self._error is not None
        raise self._error

    async def aclose(self, reason: str = "the connection was closed") -> None:
        """Close the transport now; queued packets are dropped.

        Args:
            reason: why, as :attr:`error` will say (unless it had ended already).
        """
        if self._error is None:
            self._fail(reason)
        await anyio.aclose_forcefully(self._stream)

    def _unheard(self, reason: str) -> str:
        return ended_unheard(self.peer, reason) if self.reads == 0 else reason

    def _fail(self, reason: str, cause: BaseException | None = None) -> ConnectionLost:
        if self._error is None:
            error = ConnectionLost(reason, server=self.peer)
            error.__cause__ = cause
            self._error = error
            self._out.clear()
            for event in (self._wakeup, self._drained):
                if event is not None:
                    event.set()
            self._wakeup = self._drained = None
        return self._error

    async def _read_loop(self, on_event: Callable[[Event], object]) -> None:
        receive = self._stream.receive
        size = self._receive_size
        decoder = self._decoder
        while True:
            try:
                data = await receive(size)
            except anyio.EndOfStream:
                self._fail(self._unheard("the server closed the connection"))
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._fail(self._unheard(f"the connection broke: {broken_reason(exc)}"), exc)
                return
            self.reads += 1
            decoder.feed(data)
            try:
                for event in decoder:
                    on_event(event)
            except ProtocolError as exc:
                logger.warning("%s broke the protocol: %s", self.peer, exc)
                self._fail(f"the server broke the protocol: {exc}", exc)
                return
            if self._error is not None:  # closed by on_event
                return

    async def _write_loop(self, scope: anyio.CancelScope) -> None:
        send = self._stream.send
        while True:
            out = self._out
            if not out:
                drained = self._drained
                if drained is not None:
                    self._drained = None
                    drained.set()
                if self._error is not None:
                    return
                wakeup = self._wakeup = anyio.Event()
                await wakeup.wait()
                continue
            self._out = bytearray()
            self._sending = True
            try:
                await send(bytes(out))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._fail(self._unheard(f"the connection broke: {broken_reason(exc)}"), exc)
                scope.cancel()
                return
            finally:
                self._sending = False


Connector = Callable[[str], Awaitable[PacketStream]]
"""Opens a connection to one server (``host:port``), or raises ConnectFailed."""
