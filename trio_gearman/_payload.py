"""Payload codecs and the checks every submitted argument passes before it is sent.

A job's data travels as bytes. A :class:`Codec` turns application values into
those bytes and results back into values, per client or per call::

    async with trio_gearman.Client(["127.0.0.1"], codec=trio_gearman.JsonCodec()) as client:
        total = await client.submit("sum", [1, 2, 3])     # sends b"[1,2,3]", decodes the result
"""

from __future__ import annotations

import json
from typing import Any, Final, Protocol, TypeVar

from ._exceptions import InvalidArgument, UniqueTooLong

__all__ = [
    "MAX_UNIQUE_SIZE",
    "Codec",
    "JsonCodec",
    "function_name",
    "payload",
    "unique_key",
]

MAX_UNIQUE_SIZE: Final = 64
"""The longest unique key servers accept, in bytes."""

T_co = TypeVar("T_co", covariant=True)


class Codec(Protocol[T_co]):
    """Turns values into job payloads and job results back into values.

    Any object with these two methods is a codec; :class:`JsonCodec` is one.

    Example:
        >>> import pickle
        >>> class PickleCodec:
        ...     def encode(self, value: object) -> bytes:
        ...         return pickle.dumps(value)
        ...     def decode(self, data: bytes) -> object:
        ...         return pickle.loads(data)
    """

    def encode(self, value: Any) -> bytes:
        """The payload bytes of ``value``."""
        ...

    def decode(self, data: bytes) -> T_co:
        """The value of a job's result bytes."""
        ...


class JsonCodec:
    """JSON payloads and results, UTF-8 encoded, without spaces.

    Example:
        >>> codec = JsonCodec()
        >>> codec.encode({"n": [1, 2]})
        b'{"n":[1,2]}'
        >>> codec.decode(b'{"n":[1,2]}')
        {'n': [1, 2]}
    """

    def encode(self, value: Any) -> bytes:
        """``value`` as compact JSON."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def decode(self, data: bytes) -> Any:
        """The JSON value in ``data``."""
        return json.loads(data)


def payload(data: object) -> bytes:
    """Job data as bytes: bytes-like objects as they are, ``str`` as UTF-8.

    Raises:
        TypeError: ``data`` is neither bytes-like nor ``str`` (pass a codec).
    """
    if type(data) is bytes:
        return data
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"job data must be bytes or str, not {type(data).__name__} (or give a codec)")


def function_name(function: str | bytes) -> bytes:
    """A function name as sent: UTF-8 for ``str``; no NUL byte allowed.

    Raises:
        InvalidArgument: the name is empty or holds a NUL byte.
    """
    name = function.encode() if isinstance(function, str) else bytes(function)
    if not name or b"\0" in name:
        raise InvalidArgument(f"a function name must be non-empty and free of NUL: {function!r}")
    return name


def unique_key(unique: str | bytes | None) -> bytes:
    """A unique key as sent (empty for none), checked before it goes on the wire.

    Raises:
        UniqueTooLong: the key is longer than 64 bytes.
        InvalidArgument: the key holds a NUL byte.
    """
    if unique is None:
        return b""
    key = unique.encode() if isinstance(unique, str) else bytes(unique)
    if len(key) > MAX_UNIQUE_SIZE:
        raise UniqueTooLong(
            f"unique key of {len(key)} bytes, longer than {MAX_UNIQUE_SIZE}: {key[:16]!r}..."
        )
    if b"\0" in key:
        raise InvalidArgument(f"a unique key cannot hold a NUL byte: {key!r}")
    return key
