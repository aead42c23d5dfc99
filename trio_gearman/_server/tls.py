"""TLS on the job server's connections: the handshake, then a socket that reads through TLS.

How it is done:

- On a server with an ``ssl_context`` every accepted socket first gets a task of
  its own, :func:`accept_tls`, before the connection hub adopts it; a slow or
  silent peer holds up only that task, never the poller or the other
  connections.
- That task peeks at the first byte the peer sends. A TLS connection opens with
  a handshake record (byte 0x16); anything else (``\\0REQ`` of a plaintext Gearman
  packet, the letters of an admin command) is turned away at once with a log
  line, without waiting for the handshake timeout.
- The handshake runs on an :class:`ssl.SSLSocket` wrapped with
  ``do_handshake_on_connect=False``, non-blocking: each ``do_handshake`` that
  wants more input or output waits with ``wait_readable``/``wait_writable``. The
  whole of it (the first byte included) is bounded by the handshake timeout. A
  handshake that fails or times out closes the socket and logs one line with
  the peer and the reason (WARNING for a refused client certificate, INFO for
  the rest).
- After the handshake the connection is served like any other:
  :class:`TLSSocket` gives the SSL socket the ``recv``/``send`` of a plain
  non-blocking socket (``SSLWantReadError``/``SSLWantWriteError`` become
  ``BlockingIOError``; a close_notify or an abrupt end of the stream is the end
  of the stream), so the connection, the poller and the writer are unchanged.
  Closing sends a close_notify when the socket takes it, without waiting for
  the peer's.
  Level-triggered epoll only sees bytes still in the kernel: whatever the SSL
  object has already decrypted (``pending()``) is read in the same ``recv``.
  OpenSSL keeps what a blocked ``send`` has started; the connection retries
  with the same (or a longer) buffer, as OpenSSL's moving-buffer mode allows.
- The names of a verified client certificate (its subject's commonName and its
  subjectAltName DNS, URI, email and IP values) are kept as
  :attr:`TLSSocket.cert_names`, and the hub puts them on the connection
  (``ServerConnection.cert_names``).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Mapping
from typing import Final

import anyio

from .sockets import wait_readable, wait_writable

__all__ = [
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "TLSSocket",
    "accept_tls",
    "certificate_names",
    "check_server_context",
]

logger = logging.getLogger("trio_gearman.server")

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
"""Seconds a peer has to complete the TLS handshake (``--ssl-handshake-timeout``)."""

_HANDSHAKE_RECORD: Final = 0x16
"""The first byte of a TLS record that carries a handshake (a ClientHello)."""
_PEEK: Final = 8
"""Bytes of a non-TLS peer's first message shown in the log."""
_WOULD_BLOCK: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_SAN_KINDS: Final = frozenset({"DNS", "URI", "email", "IP Address"})


def certificate_names(cert: Mapping[str, object] | None) -> tuple[str, ...]:
    """The names a peer certificate (as ``SSLSocket.getpeercert()`` gives it) vouches for.

    Args:
        cert: the decoded certificate, or ``None``/empty when there is none.

    Returns:
        The subject's commonName values, then the subjectAltName DNS, URI, email
        and IP address values, each once, in that order. IP addresses are in
        their short form (``::1``, not ``0:0:0:0:0:0:0:1``). Empty without a
        certificate.

    Example:
        >>> certificate_names({
        ...     "subject": ((("commonName", "worker-1"),),),
        ...     "subjectAltName": (("DNS", "worker-1.example"), ("IP Address", "10.0.0.7")),
        ... })
        ('worker-1', 'worker-1.example', '10.0.0.7')
    """
    names: list[str] = []
    if not cert:
        return ()
    subject = cert.get("subject", ())
    if isinstance(subject, tuple):
        for rdn in subject:
            for key, value in rdn:
                if key == "commonName" and value not in names:
                    names.append(value)
    alt_names = cert.get("subjectAltName", ())
    if isinstance(alt_names, tuple):
        for kind, value in alt_names:
            if kind not in _SAN_KINDS:
                continue
            if kind == "IP Address":
                with contextlib.suppress(ValueError):
                    value = ipaddress.ip_address(value.strip()).compressed
            if value not in names:
                names.append(value)
    return tuple(names)


def check_server_context(context: ssl.SSLContext) -> None:
    """Refuse a context that cannot serve: one made for the client side.

    Raises:
        ValueError: ``context`` is a client context (``PROTOCOL_TLS_CLIENT``, or
            ``check_hostname`` on, as ``ssl.create_default_context()`` makes it).
    """
    if context.protocol == ssl.PROTOCOL_TLS_CLIENT or context.check_hostname:
        raise ValueError(
            "ssl_context is a client-side context; make the server's with "
            "ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) or "
            "ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)"
        )


class TLSSocket:
    """An established TLS connection, with the ``recv``/``send`` of a non-blocking socket.

    What the server's connection needs of a socket (``fileno``, ``recv``,
    ``send``, ``close``) and nothing more.

    Args:
        sock: a non-blocking SSL socket whose handshake is complete.

    Attributes:
        ssl_socket: the SSL socket (for its cipher, version, peer certificate).
        cert_names: the names of the peer's verified certificate
            (:func:`certificate_names`); empty without one.
    """

    __slots__ = ("cert_names", "ssl_socket")

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.ssl_socket = sock
        self.cert_names = certificate_names(sock.getpeercert())

    def fileno(self) -> int:
        """The file descriptor (``-1`` once closed)."""
        return self.ssl_socket.fileno()

    def recv(self, size: int, /) -> bytes:
        """Up to ``size`` decrypted bytes, plus whatever else is already decrypted.

        Returns:
            The bytes; empty at the end of the stream (a close_notify, or the peer
            closed the TCP connection).

        Raises:
            BlockingIOError: nothing to read yet (only part of a record arrived,
                or the record held no data).
            OSError: the connection is broken (ssl.SSLError included).
        """
        sock = self.ssl_socket
        try:
            data = sock.recv(size)
        except _WOULD_BLOCK:
            raise BlockingIOError(errno.EAGAIN, "no TLS data yet") from None
        # Decrypted bytes that epoll cannot see are taken now. OpenSSL hands a read
        # this large a whole record, so only a context that reads ahead leaves any.
        pending = sock.pending()
        if pending:  # pragma: no cover
            chunks = [data]
            while pending:
                chunks.append(sock.recv(pending))
                pending = sock.pending()
            data = b"".join(chunks)
        return data

    def send(self, data: bytes | bytearray | memoryview, /) -> int:
        """Encrypt and send ``data``.

        Returns:
            The bytes taken: all of ``data``.

        Raises:
            BlockingIOError: the socket is full. OpenSSL has kept what it started
                to send: call again with the same bytes (more may be appended).
            OSError: the connection is broken.
        """
        if not data:
            return 0
        try:
            return self.ssl_socket.send(data)
        except _WOULD_BLOCK:
            raise BlockingIOError(errno.EAGAIN, "the TLS socket is full") from None

    def close(self) -> None:
        """Send a close_notify if the socket takes it (without waiting for the peer's); close."""
        sock = self.ssl_socket
        with contextlib.suppress(OSError, ValueError):  # broken, or full: close anyway
            sock.unwrap()
        sock.close()


async def _first_bytes(sock: socket.socket) -> bytes:
    """Wait until the peer sends something; peek at it (it stays for the handshake)."""
    while True:
        await wait_readable(sock)
        try:
            return sock.recv(_PEEK, socket.MSG_PEEK)
        except BlockingIOError:  # pragma: no cover (woken, yet nothing there)
            continue


async def _handshake(sock: ssl.SSLSocket) -> None:
    while True:
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            await wait_readable(sock)
        except ssl.SSLWantWriteError:
            await wait_writable(sock)
        else:
            return


def _reason(exc: OSError) -> tuple[int, str]:
    """The log level and words for a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return logging.WARNING, f"its certificate was refused: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError):
        return logging.INFO, "it closed the connection during the TLS handshake"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or exc.strerror or str(exc)
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return logging.WARNING, "it sent no client certificate (one is required)"
        return logging.INFO, f"TLS handshake failed: {reason}"
    return logging.INFO, f"TLS handshake failed: {exc.strerror or exc}"


async def accept_tls(
    sock: socket.socket,
    context: ssl.SSLContext,
    peer: str,
    timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,  # noqa: ASYNC109
) -> ssl.SSLSocket | None:
    """Make a freshly accepted socket a TLS connection: the server's side of the handshake.

    Args:
        sock: the accepted socket; this function owns it from now on.
        context: the server's SSL context.
        peer: the peer's address, for the log.
        timeout: seconds the peer has to send its ClientHello and finish the
            handshake.

    Returns:
        The non-blocking SSL socket with the handshake done, or ``None`` when the
        peer was turned away (not TLS, a failed handshake, too slow, gone); its
        socket is closed then, and one log line says why.
    """
    tls: ssl.SSLSocket | None = None
    level, reason = logging.INFO, f"no TLS handshake within {timeout:g} s"
    try:
        with anyio.move_on_after(timeout):
            sock.setblocking(False)
            first = await _first_bytes(sock)
            if not first:
                reason = "it closed the connection before the TLS handshake"
            elif first[0] != _HANDSHAKE_RECORD:
                reason = f"it does not speak TLS (it sent {first!r}...; a plaintext client?)"
            else:
                tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                await _handshake(tls)
                if logger.isEnabledFor(logging.DEBUG):
                    names = certificate_names(tls.getpeercert())
                    logger.debug(
                        "TLS from %s: %s, %s; client certificate: %s",
                        peer,
                        tls.version(),
                        (tls.cipher() or ("?",))[0],
                        ", ".join(names) if names else "none",
                        extra={"peer": peer},
                    )
                result, tls = tls, None
                return result
    except OSError as exc:  # ssl.SSLError included
        level, reason = _reason(exc)
    except Exception:
        logger.exception("Internal error in the TLS handshake with %s", peer, extra={"peer": peer})
        level, reason = logging.ERROR, "internal error"
    finally:
        if tls is not None:
            tls.close()
        elif sock.fileno() >= 0:
            sock.close()
    logger.log(level, "Closing the connection from %s: %s", peer, reason, extra={"peer": peer})
    return None
