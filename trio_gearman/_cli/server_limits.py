"""``trio-gearmand``'s options for the bounds of its connections (none is gearmand's).

:func:`add_limit_options` adds them to the command's parser and
:func:`limit_arguments` turns the parsed values into :class:`GearmanServer`
keyword arguments. Byte counts take a ``K``, ``M`` or ``G`` suffix (KiB, MiB,
GiB); a count or a timeout of 0 means "no limit".
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import Any, Final

from .._proto._codec import DEFAULT_MAX_PACKET_SIZE
from .._server.limits import (
    DEFAULT_MAX_BUFFERED_BYTES,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_PACKET_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
)
from .options import seconds

__all__ = ["add_limit_options", "limit_arguments"]

_SIZE: Final = re.compile(r"([0-9]+)([KMG]?)(?:i?B)?", re.IGNORECASE)
_UNITS: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_NAMES: Final = (
    "max_connections",
    "max_connections_per_address",
    "max_output_bytes",
    "max_buffered_bytes",
    "max_packet_size",
    "packet_timeout",
    "write_timeout",
    "idle_timeout",
)


def _size(*, zero_is_none: bool) -> Callable[[str], int | None]:
    """An argparse ``type`` for a byte count such as ``512M``; 0 is ``None`` if allowed."""

    def parse(text: str) -> int | None:
        match = _SIZE.fullmatch(text.strip())
        if match is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not a byte count (e.g. 65536, 64K, 32M)")
        value = int(match.group(1)) * _UNITS[match.group(2).upper()]
        if value == 0:
            if zero_is_none:
                return None
            raise argparse.ArgumentTypeError(f"{text} is not a positive byte count")
        return value

    parse.__name__ = "byte count"
    return parse


def _count(text: str) -> int | None:
    """A number of connections; 0 means no limit."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is less than 0")
    return value or None


def _timeout(text: str) -> float | None:
    """Seconds, or 0 for no timeout."""
    return seconds(zero=True)(text) or None


def _mib(value: int) -> str:
    return f"{value >> 20}M"


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """Add the options of the connection bounds to ``trio-gearmand``'s parser."""
    add = parser.add_argument
    add(
        "--max-connections",
        type=_count,
        default=None,
        metavar="N",
        help="connections served at once; more are closed at once (default 0: as many "
        "as the open-file limit allows)",
    )
    add(
        "--max-connections-per-address",
        type=_count,
        default=None,
        metavar="N",
        help="connections from one peer address at once (default 0: no limit)",
    )
    add(
        "--max-output-bytes",
        type=_size(zero_is_none=False),
        default=DEFAULT_MAX_OUTPUT_BYTES,
        metavar="BYTES",
        help="replies that may wait for a peer that does not read before its connection "
        f"is dropped (default {_mib(DEFAULT_MAX_OUTPUT_BYTES)})",
    )
    add(
        "--max-buffered-bytes",
        type=_size(zero_is_none=True),
        default=DEFAULT_MAX_BUFFERED_BYTES,
        metavar="BYTES",
        help="bytes every connection together may hold in buffers (partial packets, "
        "unread replies); past it the connections holding the most are dropped "
        f"(default {_mib(DEFAULT_MAX_BUFFERED_BYTES)}; 0: no limit)",
    )
    add(
        "--max-packet-size",
        type=_size(zero_is_none=False),
        default=DEFAULT_MAX_PACKET_SIZE,
        metavar="BYTES",
        help="the largest packet body accepted, refused from its header "
        f"(default {_mib(DEFAULT_MAX_PACKET_SIZE)})",
    )
    add(
        "--packet-timeout",
        type=_timeout,
        default=DEFAULT_PACKET_TIMEOUT,
        metavar="SECONDS",
        help="how long a peer may take to complete a packet it started "
        f"(default {DEFAULT_PACKET_TIMEOUT:g}; 0: no limit)",
    )
    add(
        "--write-timeout",
        type=_timeout,
        default=DEFAULT_WRITE_TIMEOUT,
        metavar="SECONDS",
        help="how long replies may wait for a peer that takes none of them "
        f"(default {DEFAULT_WRITE_TIMEOUT:g}; 0: no limit)",
    )
    add(
        "--idle-timeout",
        type=_timeout,
        default=None,
        metavar="SECONDS",
        help="close connections without a byte in or out for this long (default 0: "
        "never; sleeping workers and clients waiting for long jobs are silent too)",
    )


def limit_arguments(options: argparse.Namespace) -> dict[str, Any]:
    """The :class:`GearmanServer` keyword arguments of the parsed limit options."""
    return {name: getattr(options, name) for name in _NAMES}
