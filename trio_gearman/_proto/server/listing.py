"""Long admin listings, produced a slice at a time.

``status``, ``prioritystatus``, ``workers``, ``show jobs`` and ``show unique jobs``
list one row per function, connection or job: a million queued jobs make a 30 MB
listing that takes seconds to format. A :class:`Listing` takes a snapshot of the
rows (a list of references) when the command arrives and formats them on demand,
:data:`SLICE_ROWS` rows (or about :data:`SLICE_BYTES` bytes) at a time, so the I/O
layer can send one slice, serve other connections, and ask for the next slice once
the previous one went out.

What a listing means when the server changes while it is produced: it lists the
rows that existed when the command arrived, each at most once, minus those that
were gone (a job that ended, a connection that closed, a function that was
forgotten) when their slice was formatted; the numbers of a row are those of the
moment its slice was formatted. Rows that appeared meanwhile are not listed. A
listing of one slice (up to :data:`SLICE_ROWS` rows) is one consistent snapshot,
byte for byte what gearmand sends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final, Generic, TypeVar

from .._admin import LISTING_END

__all__ = ["SLICE_BYTES", "SLICE_ROWS", "Listing"]

SLICE_ROWS: Final = 2000
"""The most rows formatted for one slice."""
SLICE_BYTES: Final = 65536
"""A slice ends after the row that reaches this many bytes."""

_Row = TypeVar("_Row")


class Listing(Generic[_Row]):
    """The rows of one admin listing, formatted a slice at a time.

    Args:
        rows: the snapshot of the rows, in the order to list them.
        line: formats one row as its line, or returns ``None`` for a row that is
            gone (it is skipped).

    Example:
        >>> listing = Listing([b"a", b"b"], lambda row: row + b"\\n")
        >>> listing.next_slice()
        (b'a\\nb\\n.\\n', True)
    """

    __slots__ = ("_at", "_line", "_rows")

    def __init__(self, rows: Sequence[_Row], line: Callable[[_Row], bytes | None]) -> None:
        self._rows = rows
        self._line = line
        self._at = 0

    def next_slice(self) -> tuple[bytes, bool]:
        """Format the next slice.

        Returns:
            The slice's bytes, and whether it is the last one (it then ends with the
            listing's ``.`` line).
        """
        rows = self._rows
        line = self._line
        at = self._at
        stop = min(len(rows), at + SLICE_ROWS)
        lines: list[bytes] = []
        size = 0
        while at < stop and size < SLICE_BYTES:
            text = line(rows[at])
            at += 1
            if text is not None:
                lines.append(text)
                size += len(text)
        self._at = at
        if at < len(rows):
            return b"".join(lines), False
        self._rows = ()  # the snapshot is no longer needed
        lines.append(LISTING_END)
        return b"".join(lines), True
