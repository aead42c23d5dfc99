"""Checks of the names that peers give the job server: function names.

A function name lives as long as its function's entry in the job table, and the
admin listings print it, so the server bounds its length (gearmand, whose packets
must fit an 8 KiB buffer, closes the connection of a longer one).
"""

from __future__ import annotations

from typing import Final

__all__ = ["DEFAULT_MAX_FUNCTION_NAME", "function_name_error"]

DEFAULT_MAX_FUNCTION_NAME: Final = 8192
"""The longest function name accepted by default, in bytes (gearmand's buffer)."""


def function_name_error(name: bytes, limit: int) -> bytes | None:
    """Why ``name`` is refused as a function name, or ``None`` if it is accepted.

    Args:
        name: the function name a peer gave.
        limit: the longest name accepted, in bytes.

    Returns:
        The text of the refusal (for an ERROR packet or an ``ERR`` line), or ``None``.

    Example:
        >>> function_name_error(b"resize", 8192) is None
        True
        >>> function_name_error(b"x" * 9, 8)
        b'Function name longer than 8 bytes'
    """
    if len(name) > limit:
        return b"Function name longer than %d bytes" % limit
    return None
