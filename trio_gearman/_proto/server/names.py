"""Checks of the names that peers give the job server: function names and client ids.

A function name lives as long as its function's entry in the job table, and the
admin listings print names and ids on lines of tab- and space-separated fields, so:

* a function name is at most ``max_function_name`` bytes (gearmand, whose packets
  must fit an 8 KiB buffer, closes the connection of a longer one);
* a function name holds no control byte (``\\x00``-``\\x1f``, ``\\x7f``) and no space:
  a newline or tab would add lines or columns to ``status``, a space would split
  one name into two in ``workers``;
* a client id (SET_CLIENT_ID) holds no control byte (spaces are fine: ``workers``
  readers find the id by the `` :`` that ends it).

gearmand accepts all of these and prints them as they are.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

__all__ = [
    "DEFAULT_MAX_FUNCTION_NAME",
    "MAX_REFUSALS_KEPT",
    "Refusal",
    "client_id_error",
    "describe_refused",
    "function_name_error",
]

MAX_REFUSALS_KEPT: Final = 100
"""Refusals kept for the log between two batches; the rest are only counted."""

DEFAULT_MAX_FUNCTION_NAME: Final = 8192
"""The longest function name accepted by default, in bytes (gearmand's buffer)."""

_BAD_IN_NAME: Final = re.compile(rb"[\x00-\x20\x7f]")
_BAD_IN_ID: Final = re.compile(rb"[\x00-\x1f\x7f]")


class Refusal(NamedTuple):
    """A name refused from a peer, for the log (the I/O layer writes it).

    Attributes:
        peer: the peer's address.
        text: what was refused and why, with the start of the name, escaped.
    """

    peer: bytes
    text: str


def describe_refused(kind: str, name: bytes, why: bytes) -> str:
    """A log line's text for a refused ``name``: its first 64 bytes, escaped.

    Example:
        >>> describe_refused("function name", b"a\\nb", b"Bad")
        "function name 'a\\\\nb' (3 bytes) refused: Bad"
    """
    shown = name[:64].decode("ascii", "backslashreplace")
    more = "..." if len(name) > 64 else ""
    return f"{kind} {shown!r}{more} ({len(name)} bytes) refused: {why.decode()}"


def function_name_error(name: bytes, limit: int) -> tuple[bytes, bytes] | None:
    """Why ``name`` is refused as a function name, or ``None`` if it is accepted.

    Args:
        name: the function name a peer gave.
        limit: the longest name accepted, in bytes.

    Returns:
        The error code and text of the refusal (for an ERROR packet or an ``ERR``
        line), or ``None``.

    Example:
        >>> function_name_error(b"resize", 8192) is None
        True
        >>> function_name_error(b"x" * 9, 8)
        (b'ARGUMENT_TOO_LARGE', b'Function name longer than 8 bytes')
        >>> function_name_error(b"a\\tb", 8)
        (b'INVALID_FUNCTION_NAME', b'Function name with a space or control byte')
    """
    if len(name) > limit:
        return b"ARGUMENT_TOO_LARGE", b"Function name longer than %d bytes" % limit
    if _BAD_IN_NAME.search(name) is not None:
        return b"INVALID_FUNCTION_NAME", b"Function name with a space or control byte"
    return None


def client_id_error(client_id: bytes) -> tuple[bytes, bytes] | None:
    """Why ``client_id`` is refused as a SET_CLIENT_ID id, or ``None`` if it is accepted.

    Example:
        >>> client_id_error(b"web 1") is None
        True
        >>> client_id_error(b"web\\n9 1.2.3.4 fake :")
        (b'INVALID_ARGUMENT', b'Client id with a control byte')
    """
    if _BAD_IN_ID.search(client_id) is not None:
        return b"INVALID_ARGUMENT", b"Client id with a control byte"
    return None
