"""The bounds a job server keeps its connections to, and their defaults.

Each bound protects the server from one kind of peer: too many connections (from
everywhere, or from one address), a peer that does not read its replies, a peer
that starts a packet and never finishes it, a peer that holds a connection without
using it, and too many bytes held in buffers over all connections together. What
is done when a bound is hit, and what is logged, is described in the operations
guide (docs/howto/production.rst, "Limits").
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from .._proto._codec import DEFAULT_MAX_PACKET_SIZE

__all__ = [
    "DEFAULT_MAX_BUFFERED_BYTES",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_PACKET_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "SWEEP_INTERVAL",
    "TRIM_AFTER",
    "Limits",
]

DEFAULT_MAX_OUTPUT_BYTES: Final = 32 * 1024 * 1024
"""Bytes that may wait behind a blocked send before a connection is dropped (32 MiB)."""
DEFAULT_MAX_BUFFERED_BYTES: Final = 1024 * 1024 * 1024
"""Bytes all connections together may hold in their buffers (1 GiB)."""
DEFAULT_PACKET_TIMEOUT: Final = 60.0
"""Seconds a peer may take to send the rest of a packet it started."""
DEFAULT_WRITE_TIMEOUT: Final = 60.0
"""Seconds a peer may leave its replies unread (no byte of them taken)."""
SWEEP_INTERVAL: Final = 1.0
"""Seconds between two checks of the timeouts and of the buffer budget."""
TRIM_AFTER: Final = 32 * 1024 * 1024
"""Buffer bytes let go of after which the sweep gives freed heap memory back to the system."""


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not (isinstance(value, int | float) and value > 0):
        raise ValueError(f"{attribute.name} must be positive or None, not {value!r}")


@attrs.frozen
class Limits:
    """The bounds of one job server's connections (``None``: no bound).

    Attributes:
        max_connections: connections served at once; past it a new connection is
            accepted and closed at once.
        max_connections_per_address: connections from one peer address at once.
        max_output_bytes: reply bytes that may wait for a peer that does not read
            before its connection is dropped.
        max_buffered_bytes: bytes every connection together may hold in buffers
            (packets being received, replies waiting to be sent); past it the
            connections holding the most are dropped.
        max_packet_size: the largest packet body accepted, refused from its header.
        packet_timeout: seconds a peer may take to complete a packet it started.
        write_timeout: seconds replies may wait for a peer that takes none of them.
        idle_timeout: seconds a connection may stay without any byte in or out. It
            is off by default: a sleeping worker, or a client waiting for a long
            job, is silent for as long as it takes.
    """

    max_connections: int | None = attrs.field(default=None, validator=_positive_or_none)
    max_connections_per_address: int | None = attrs.field(default=None, validator=_positive_or_none)
    max_output_bytes: int = attrs.field(
        default=DEFAULT_MAX_OUTPUT_BYTES, validator=_positive_or_none
    )
    max_buffered_bytes: int | None = attrs.field(
        default=DEFAULT_MAX_BUFFERED_BYTES, validator=_positive_or_none
    )
    max_packet_size: int = attrs.field(default=DEFAULT_MAX_PACKET_SIZE, validator=_positive_or_none)
    packet_timeout: float | None = attrs.field(
        default=DEFAULT_PACKET_TIMEOUT, validator=_positive_or_none
    )
    write_timeout: float | None = attrs.field(
        default=DEFAULT_WRITE_TIMEOUT, validator=_positive_or_none
    )
    idle_timeout: float | None = attrs.field(default=None, validator=_positive_or_none)
