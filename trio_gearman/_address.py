"""Server addresses: parsing, formatting, and the server lists of clients and workers."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

__all__ = ["DEFAULT_PORT", "Address", "format_address", "parse_address", "server_list"]

DEFAULT_PORT: Final = 4730
"""The IANA port of Gearman."""

Address = str | tuple[str, int]
"""A server address: ``"host"``, ``"host:port"``, ``"[v6]:port"`` or ``(host, port)``."""


def parse_address(address: Address) -> tuple[str, int]:
    """Split a server address into host and port (4730 when none is given).

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
    if isinstance(address, tuple):
        host, port = address
    elif address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad server address {address!r}")
        port = int(rest[1:]) if rest else DEFAULT_PORT
    elif address.count(":") == 1:
        host, _, port_text = address.partition(":")
        if not port_text.isdigit():
            raise ValueError(f"bad port in server address {address!r}")
        port = int(port_text)
    else:  # a host name, an IPv4 address or a bare IPv6 literal
        host, port = address, DEFAULT_PORT
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    f"bad server address {address!r}: write host:port, or [v6]:port for IPv6"
                ) from None
    if not host:
        raise ValueError(f"no host in server address {address!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in server address {address!r}")
    return host, port


def format_address(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def server_list(servers: Address | Sequence[Address]) -> list[str]:
    """Normalise a server list to ``host:port`` strings.

    Accepts one address, a comma-separated string (as ``GEARMAN_SERVERS``), or a
    sequence of addresses.

    Raises:
        ValueError: an address is malformed, or the list is empty.
    """
    if isinstance(servers, str):
        items: Sequence[Address] = [part.strip() for part in servers.split(",") if part.strip()]
    elif isinstance(servers, tuple) and len(servers) == 2 and isinstance(servers[1], int):
        items = [servers]
    else:
        items = list(servers)
    if not items:
        raise ValueError("no Gearman server given")
    return [format_address(*parse_address(item)) for item in items]
