"""The job server's sockets: listening addresses, accepted-socket options, the fd limit.

The server works on plain non-blocking sockets and waits for them with AnyIO's
``wait_readable``/``wait_writable`` (or an epoll set of its own, see
``_server_conn.ReadPoller``), so it decides itself when to call ``recv`` and
``send``: no read is attempted that is known to find nothing, and replies go out
with one ``send`` per connection and batch.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import anyio
import attrs

from .._address import format_address

__all__ = [
    "FdReserve",
    "HasFileno",
    "KeepAlive",
    "ListenAddress",
    "ListenFailed",
    "configure_accepted",
    "notify_closing",
    "open_listeners",
    "raise_fd_limit",
    "trim_heap",
    "wait_readable",
    "wait_writable",
]

logger = logging.getLogger("trio_gearman.server")

ListenAddress = tuple[str | None, int]
"""``(host, port)`` to listen on; a ``None`` host means every local address."""

# AnyIO >= 4.7 (the oldest supported) takes a socket or a file descriptor.
wait_readable: Final = anyio.wait_readable
wait_writable: Final = anyio.wait_writable


class HasFileno(Protocol):
    """A socket, or anything else with a file descriptor to wait on."""

    def fileno(self) -> int:
        """The file descriptor, ``-1`` once closed."""


def notify_closing(sock: HasFileno) -> None:
    """Wake any task waiting on ``sock`` (with ClosedResourceError) before it is closed."""
    notify = getattr(anyio, "notify_closing", None)
    if notify is not None and sock.fileno() >= 0:
        notify(sock)


class ListenFailed(OSError):
    """A listening address could not be opened; the message names it and says why.

    Attributes:
        host: the host as it was asked for (``None``: every local address).
        address: ``host:port`` of the address that failed (the resolved one).
    """

    def __init__(self, host: str | None, address: str, error: OSError) -> None:
        reason = error.strerror or str(error)
        super().__init__(error.errno, f"cannot listen on {address}: {reason}")
        self.host = host
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)


# Errors that say "this address family is not available here": skipped for a
# ``None`` host (an IPv4-only machine still serves on 0.0.0.0), fatal otherwise.
_FAMILY_MISSING = frozenset({errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT})


@attrs.frozen
class KeepAlive:
    """TCP keepalive on accepted connections (``--keepalive`` and its tuning).

    Attributes:
        idle: seconds of silence before the first probe (TCP_KEEPIDLE), or ``None``
            for the system default.
        interval: seconds between probes (TCP_KEEPINTVL), or ``None``.
        count: unanswered probes before the connection is dropped (TCP_KEEPCNT), or
            ``None``.
    """

    idle: int | None = None
    interval: int | None = None
    count: int | None = None


def configure_accepted(sock: socket.socket, keepalive: KeepAlive | None) -> None:
    """Make a new connection non-blocking; on TCP set TCP_NODELAY and, if asked, keepalive."""
    sock.setblocking(False)
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is None:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (
        ("TCP_KEEPIDLE", keepalive.idle),
        ("TCP_KEEPINTVL", keepalive.interval),
        ("TCP_KEEPCNT", keepalive.count),
    ):
        option = getattr(socket, name, None)
        if value is not None and value > 0 and option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


async def _resolve(host: str | None, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """The numeric addresses to bind for one ``(host, port)``, IPv4 first."""
    flags = socket.AI_PASSIVE | (socket.AI_ADDRCONFIG if host is None else 0)
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    found: list[tuple[socket.AddressFamily, str]] = []
    for family, *_, sockaddr in sorted(infos, key=lambda info: info[0]):
        entry = (family, str(sockaddr[0]))
        if family in (socket.AF_INET, socket.AF_INET6) and entry not in found:
            found.append(entry)
    return found


def _bind(family: socket.AddressFamily, host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _listen_one(host: str | None, port: int, backlog: int) -> list[socket.socket]:
    """Bind every address of ``host``; a port of 0 becomes one free port for all of them."""
    try:
        addresses = await _resolve(host, port)
    except OSError as exc:  # socket.gaierror: the name does not resolve
        raise ListenFailed(host, format_address(host or "*", port), exc) from exc
    if not addresses:
        raise ListenFailed(
            host, format_address(host or "*", port), OSError(errno.EADDRNOTAVAIL, "no address")
        )
    for attempt in range(10):
        bound_port = port
        opened: list[socket.socket] = []
        try:
            for family, ip in addresses:
                try:
                    sock = _bind(family, ip, bound_port, backlog)
                except OSError as exc:
                    if host is None and exc.errno in _FAMILY_MISSING and len(addresses) > 1:
                        logger.warning("Cannot listen on %s: %s", ip, exc.strerror)
                        continue
                    raise ListenFailed(host, format_address(ip, bound_port), exc) from exc
                opened.append(sock)
                if bound_port == 0:
                    bound_port = sock.getsockname()[1]
        except OSError as exc:
            for sock in opened:
                sock.close()
            # An ephemeral port taken on another family: try another one.
            if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 9:
                continue
            raise
        if not opened:  # pragma: no cover (every family was missing)
            raise OSError(errno.EADDRNOTAVAIL, f"could not listen on any address of {host!r}")
        return opened
    raise AssertionError("unreachable")  # pragma: no cover


async def open_listeners(listen: Sequence[ListenAddress], backlog: int = 32) -> list[socket.socket]:
    """Open a non-blocking listening socket for every address of every ``(host, port)``.

    Args:
        listen: the addresses. A ``None`` host binds every local address (0.0.0.0 and
            ``::``, the latter IPv6-only), as gearmand does without ``-L``; a host name
            binds each address it resolves to. Port 0 picks a free port, the same one
            for every address of that host.
        backlog: the ``listen()`` backlog.

    Returns:
        The listening sockets, in order.

    Raises:
        OSError: an address could not be bound; nothing is left open.
    """
    listeners: list[socket.socket] = []
    try:
        for host, port in listen:
            listeners += await _listen_one(host, port, backlog)
    except BaseException:
        for sock in listeners:
            sock.close()
        raise
    return listeners


def raise_fd_limit(target: int | None = None) -> int:
    """Raise the soft limit on open files (RLIMIT_NOFILE) where the system allows it.

    Args:
        target: the wanted limit; ``None`` means the hard limit. Going past the hard
            limit needs privileges; without them the soft limit stops at the hard one.

    Returns:
        The soft limit now in force (``-1`` where the platform has no such limit).
    """
    if sys.platform == "win32":  # pragma: no cover
        return -1
    import resource

    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if target is None:
        target = hard if hard != infinity else 1 << 20
    attempts = [(target, hard)] if hard == infinity or target <= hard else [(target, target)]
    if hard != infinity and target > hard:
        attempts.append((hard, hard))
    for limits in attempts:
        if limits == (soft, hard):
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError) as exc:
            logger.debug("Cannot set the open-file limit to %s: %s", limits, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FdReserve:
    """One file descriptor held back, so that a server out of descriptors can still say no.

    When ``accept()`` fails with EMFILE or ENFILE the waiting connections stay in the
    listen backlog: their clients hang, and the listener stays readable. Closing
    the reserve frees one descriptor, enough to accept one connection and close it
    at once (its client sees the connection end instead of hanging); the reserve is
    then taken again.
    """

    __slots__ = ("_fd",)

    def __init__(self) -> None:
        self._fd: int | None = None

    def take(self) -> bool:
        """Hold the reserve descriptor (if not held yet); ``False`` if none is free."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return False
        return True

    def release(self) -> None:
        """Close the reserve descriptor (the server stops)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def refuse(self, listener: socket.socket) -> bool:
        """Accept one waiting connection on the reserve descriptor and close it at once.

        Returns:
            ``True`` if a connection was refused so; ``False`` if not even the
            reserve could take it (the caller should back off).

        Raises:
            BlockingIOError: no connection is waiting.
        """
        if self._fd is None and not self.take():
            return False
        self.release()
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            raise
        except OSError:
            return False
        else:
            sock.close()
            return True
        finally:
            self.take()


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on another C library."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return None
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):  # pragma: no cover (musl, ...)
        return None
    return trim


_TRIM: Final = _malloc_trim()


def trim_heap() -> None:
    """Give the heap's free pages back to the system (glibc; elsewhere nothing).

    The buffers of large packets are freed in many mid-sized blocks, which the C
    allocator keeps for reuse: without this, the memory of 20 peers that each sent
    most of a 60 MiB packet stays with the process after they leave.
    """
    if _TRIM is not None:
        _TRIM(0)
