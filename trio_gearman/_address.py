"""Server addresses: parsing, formatting, and the server lists of clients and workers.

An address may say how to talk to its server: ``tls://host:port`` asks for TLS,
``tcp://host:port`` for plaintext; a bare ``host:port`` follows the caller's
default (plaintext unless an ``ssl_context`` is given for every server). The
normalised form is ``tls://host:port`` for TLS, ``host:port`` for plaintext, and
``tcp://host:port`` for plaintext where TLS is the default, so that normalising
it again with the same default gives the same answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

__all__ = [
    "DEFAULT_PORT",
    "TLS_SCHEME",
    "Address",
    "format_address",
    "format_server",
    "parse_address",
    "parse_server",
    "server_list",
]

DEFAULT_PORT: Final = 4730
"""The IANA port of Gearman."""

TLS_SCHEME: Final = "tls://"
"""The prefix of an address whose server is spoken to over TLS."""

_TCP_SCHEME: Final = "tcp://"

Address = str | tuple[str, int]
"""A server address: ``"host"``, ``"host:port"``, ``"[v6]:port"``, any of these after
``tls://`` or ``tcp://``, or ``(host, port)``."""


def _split_scheme(address: str) -> tuple[bool | None, str]:
    """Whether ``address`` asks for TLS (True), plaintext (False) or neither (None)."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return None, address
    lowered = scheme.lower() + "://"
    if lowered == TLS_SCHEME:
        return True, rest
    if lowered == _TCP_SCHEME:
        return False, rest
    raise ValueError(
        f"unknown scheme {scheme!r} in server address {address!r}: "
        "write tls://host:port for TLS, or host:port"
    )


def parse_address(address: Address) -> tuple[str, int]:
    """Split a server address into host and port (4730 when none is given).

    A ``tls://`` or ``tcp://`` prefix is accepted and left out of the result (see
    :func:`parse_server` for the whole answer).

    Args:
        address: ``"host"``, ``"host:port"``, ``"[::1]:4730"``, a bare IPv6 literal,
            or a ``(host, port)`` tuple.

    Returns:
        ``(host, port)``.

    Raises:
        ValueError: the port is not a number in 1..65535, or the host is empty.

    Example:
        >>> parse_address("127.0.0.1:4731")
        ('127.0.0.1', 4731)
        >>> parse_address("[::1]")
        ('::1', 4730)
    """
    return parse_server(address)[:2]


def parse_server(address: Address, *, tls: bool = False) -> tuple[str, int, bool]:
    """Split a server address into host, port and whether to speak TLS to it.

    Args:
        address: as for :func:`parse_address`, optionally after ``tls://`` (TLS)
            or ``tcp://`` (plaintext).
        tls: the answer for an address that has neither prefix.

    Returns:
        ``(host, port, tls)``.

    Raises:
        ValueError: as :func:`parse_address`, or the prefix is neither ``tls://``
            nor ``tcp://``.

    Example:
        >>> parse_server("tls://gearman.example.com:4730")
        ('gearman.example.com', 4730, True)
        >>> parse_server("10.0.0.1", tls=True)
        ('10.0.0.1', 4730, True)
    """
    if isinstance(address, tuple):
        host, port = address
        return _checked(host, port, address, tls)
    said, text = _split_scheme(address)
    if said is not None:
        tls = said
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad server address {address!r}")
        if rest and not rest[1:].isdigit():
            raise ValueError(f"bad port in server address {address!r}")
        port = int(rest[1:]) if rest else DEFAULT_PORT
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad port in server address {address!r}")
        port = int(port_text)
    else:  # a host name, an IPv4 address or a bare IPv6 literal
        host, port = text, DEFAULT_PORT
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    f"bad server address {address!r}: write host:port, or [v6]:port for IPv6"
                ) from None
    return _checked(host, port, address, tls)


def _checked(host: str, port: int, address: Address, tls: bool) -> tuple[str, int, bool]:
    if not host:
        raise ValueError(f"no host in server address {address!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in server address {address!r}")
    return host, port, tls


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def format_server(host: str, port: int, tls: bool, *, default_tls: bool = False) -> str:
    """The normalised address: ``tls://host:port`` for TLS, else ``host:port``.

    Args:
        host: the host.
        port: the port.
        tls: whether the server is spoken to over TLS.
        default_tls: whether an address without a scheme means TLS where this one
            is read again; then plaintext is written ``tcp://host:port``.
    """
    if tls:
        return TLS_SCHEME + format_address(host, port)
    if default_tls:
        return _TCP_SCHEME + format_address(host, port)
    return format_address(host, port)


def server_list(servers: Address | Sequence[Address], *, tls: bool = False) -> list[str]:
    """Normalise a server list to ``host:port`` and ``tls://host:port`` strings.

    Normalising the result again with the same ``tls`` gives it back unchanged.

    Accepts one address, a comma-separated string (as ``GEARMAN_SERVERS``), or a
    sequence of addresses.

    Args:
        servers: the addresses.
        tls: whether an address without ``tls://`` or ``tcp://`` is spoken to over
            TLS (a client given an ``ssl_context`` passes True).

    Raises:
        ValueError: an address is malformed, or the list is empty.

    Example:
        >>> server_list("tls://a:4730, b, tcp://c")
        ['tls://a:4730', 'b:4730', 'c:4730']
        >>> server_list("a, tcp://c", tls=True)
        ['tls://a:4730', 'tcp://c:4730']
    """
    if isinstance(servers, str):
        items: Sequence[Address] = [part.strip() for part in servers.split(",") if part.strip()]
    elif isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int):
        items = [servers]
    else:
        items = list(servers)
    if not items:
        raise ValueError("no Gearman server given")
    return [format_server(*parse_server(item, tls=tls), default_tls=tls) for item in items]
