"""Gearman for Python on structured concurrency: job server, client, worker, admin client."""

from ._exceptions import (
    AdminLineTooLong as AdminLineTooLong,
    BadArgumentCount as BadArgumentCount,
    BadMagic as BadMagic,
    GearmanError as GearmanError,
    PacketTooLarge as PacketTooLarge,
    ProtocolError as ProtocolError,
    TooManyAdminArguments as TooManyAdminArguments,
    UnknownPacketType as UnknownPacketType,
)
from ._proto._packets import Priority as Priority
from ._version import __version__ as __version__

__all__ = [
    "AdminLineTooLong",
    "BadArgumentCount",
    "BadMagic",
    "GearmanError",
    "PacketTooLarge",
    "Priority",
    "ProtocolError",
    "TooManyAdminArguments",
    "UnknownPacketType",
    "__version__",
]
