"""The sans-IO Gearman protocol: bytes in, messages out; messages in, bytes out.

Nothing in this package performs I/O or reads a clock; a test enforces it.
"""

from importlib.machinery import EXTENSION_SUFFIXES as _EXTENSION_SUFFIXES
from typing import Final as _Final

from . import _codec
from ._codec import (
    DEFAULT_MAX_LINE_LENGTH as DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PACKET_SIZE as DEFAULT_MAX_PACKET_SIZE,
    Decoder as Decoder,
    Event as Event,
    TextLine as TextLine,
    UnexpectedMagic as UnexpectedMagic,
    encode as encode,
    encode_into as encode_into,
)
from ._packets import *  # noqa: F403
from ._packets import __all__ as _packet_names

COMPILED: _Final = _codec.__file__ is not None and _codec.__file__.endswith(
    tuple(_EXTENSION_SUFFIXES)
)
"""Whether the codec and the server's state machine run compiled: the mypyc build
(``TRIO_GEARMAN_COMPILE=1 pip install .``), not the pure-Python modules."""

__all__ = [
    "COMPILED",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PACKET_SIZE",
    "Decoder",
    "Event",
    "TextLine",
    "UnexpectedMagic",
    "encode",
    "encode_into",
    *_packet_names,
]
