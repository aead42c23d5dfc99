"""Server lists, and connecting to the first server of a list that answers."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence

from ._exceptions import ConnectFailed, NoServersAvailable
from ._stream import Address, PacketStream, connect, format_address, parse_address

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Connector", "open_first_reachable", "server_list"]


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


async def open_first_reachable(
    servers: Sequence[str], *, timeout: float, connector: Connector | None = None
) -> PacketStream:
    """Connect to the first server of ``servers`` that answers, in order.

    Args:
        servers: ``host:port`` addresses.
        timeout: seconds to wait for each server.
        connector: opens one connection (by default a TCP connection); tests pass
            one that returns in-memory streams.

    Returns:
        The :class:`~trio_gearman._stream.PacketStream` of the connection.

    Raises:
        NoServersAvailable: none answered; ``__cause__`` groups the per-server errors.
    """
    errors: list[ConnectFailed] = []
    for server in servers:
        try:
            if connector is None:
                return await connect(server, connect_timeout=timeout)
            return await connector(server)
        except ConnectFailed as exc:
            errors.append(exc)
    raise NoServersAvailable(tuple(servers)) from ExceptionGroup(
        "every server refused the connection", errors
    )
