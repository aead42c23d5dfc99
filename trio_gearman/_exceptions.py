"""The one exception tree of trio_gearman, rooted at :class:`GearmanError`.

Errors raised by the sans-IO protocol layer describe what the *peer* did wrong
(:class:`ProtocolError` and its subclasses); each names what was wrong and where
(the byte offset in the stream and, where known, the packet type).
"""

from __future__ import annotations

__all__ = [
    "AdminLineTooLong",
    "BadArgumentCount",
    "BadMagic",
    "GearmanError",
    "PacketTooLarge",
    "ProtocolError",
    "TooManyAdminArguments",
    "UnknownPacketType",
]


class GearmanError(Exception):
    """Base class of every error raised by trio_gearman."""


class ProtocolError(GearmanError, ValueError):
    """The peer broke the Gearman protocol; the connection cannot continue.

    Attributes:
        offset: byte offset in the received stream where the offending packet or
            line starts, or ``None`` when not known.
    """

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at byte {offset} of the stream)"
        super().__init__(message)
        self.offset = offset


class BadMagic(ProtocolError):
    """A binary packet started with neither ``\\0REQ`` nor ``\\0RES``."""


class UnknownPacketType(ProtocolError):
    """A binary packet carried a type number that the protocol does not define."""


class BadArgumentCount(ProtocolError):
    """A packet's body held the wrong number of NUL-separated arguments."""


class PacketTooLarge(ProtocolError):
    """A packet header declared a body larger than the configured maximum."""


class AdminLineTooLong(ProtocolError):
    """An admin text line ran past the configured bound without a newline."""


class TooManyAdminArguments(ProtocolError):
    """An admin text line held more words than the admin protocol allows."""
