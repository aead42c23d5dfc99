"""Server lists: the addresses a client or worker is configured with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from ._net.stream import Address, PacketStream, format_address, parse_address

__all__ = ["Connector", "server_list"]


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


Connector = Callable[[str], Awaitable[PacketStream]]
"""Opens a connection to one server (``host:port``), or raises ConnectFailed."""
