"""Incremental decoder and encoder of the Gearman binary protocol.

The decoder takes bytes in any split (``feed``) and yields complete events when
iterated: packet messages, admin :class:`TextLine` s (when text is allowed, as on a
server's port) and :class:`UnexpectedMagic` for a well-formed packet that came with
the other direction's magic. It parses strictly by each packet's declared size,
refuses an oversized packet from its 12-byte header before buffering the body,
and raises a :class:`~trio_gearman.ProtocolError` subclass that names what was
wrong and where.
"""

from __future__ import annotations

import itertools
import re
import struct
from collections import deque
from collections.abc import Callable, Iterator
from typing import Final

import attrs

from .._exceptions import (
    AdminLineTooLong,
    BadArgumentCount,
    BadMagic,
    PacketTooLarge,
    ProtocolError,
    UnknownPacketType,
)
from ._packets import (
    AllYours,
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    NoJob,
    Noop,
    OptionReq,
    OptionRes,
    PacketType,
    PreSleep,
    Priority,
    ResetAbilities,
    SetClientId,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    Unused,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)

__all__ = [
    "BIG_PACKET",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_PACKET_SIZE",
    "HEADER_SIZE",
    "LARGE_PART",
    "Decoder",
    "Event",
    "TextLine",
    "UnexpectedMagic",
    "append_packet",
    "encode",
    "encode_into",
]

HEADER_SIZE: Final = 12
DEFAULT_MAX_PACKET_SIZE: Final = 64 * 1024 * 1024
"""Largest packet body accepted by default (64 MiB)."""
DEFAULT_MAX_LINE_LENGTH: Final = 8192
"""Longest admin text line accepted by default, as in gearmand (8 KiB)."""
LARGE_PART: Final = 65536
"""A last argument this long is appended by itself rather than joined into a body first."""
BIG_PACKET: Final = 128 * 1024
"""A packet this long (header included) is received into one buffer of its size."""

HEADER: Final = struct.Struct(">4sII")
"""The packet header: magic, packet type, body length (the one definition of framing)."""
pack_header: Final = HEADER.pack
"""``pack_header(magic_bytes, packet_type, body_length)``: the 12 header bytes."""
_HEADER: Final = HEADER
_REQ: Final = Magic.REQ.value
_RES: Final = Magic.RES.value


@attrs.frozen
class TextLine:
    """An admin text line, without its ``\\n`` or ``\\r\\n`` terminator."""

    line: bytes


@attrs.frozen
class UnexpectedMagic:
    """A well-formed packet that came with the other direction's magic.

    gearmand answers such a request with ``ERROR INVALID_MAGIC`` and keeps the
    connection open; the packet's body has been skipped.
    """

    packet_type: PacketType
    magic: Magic


Event = Message | TextLine | UnexpectedMagic
"""What the decoder yields."""


# --- argument parsing -----------------------------------------------------------------

_ATOI: Final = re.compile(rb"[ \t\n\v\f\r]*([+-]?)0*([0-9]+)")
_LONG_MAX: Final = 2**63 - 1
_LONG_MIN: Final = -(2**63)


def _atoi(value: bytes) -> int:
    """Parse a decimal number the way C's ``strtol`` does.

    Leading whitespace and a sign are skipped, parsing stops at the first other
    byte, no digits give 0, and a value outside the signed 64-bit range saturates
    (so a peer cannot make the decoder convert a number of thousands of digits).
    """
    if value.isdigit() and len(value) < 19:
        return int(value)
    match = _ATOI.match(value)
    if match is None:
        return 0
    sign, digits = match.groups()
    if len(digits) > 19:
        return _LONG_MIN if sign == b"-" else _LONG_MAX
    number = -int(digits) if sign == b"-" else int(digits)
    return min(max(number, _LONG_MIN), _LONG_MAX)


def _work_status(handle: bytes, num: bytes, den: bytes) -> WorkStatus:
    return WorkStatus(handle, _atoi(num), _atoi(den))


def _status_res(handle: bytes, known: bytes, running: bytes, num: bytes, den: bytes) -> StatusRes:
    return StatusRes(handle, _atoi(known) != 0, _atoi(running) != 0, _atoi(num), _atoi(den))


def _status_res_unique(
    unique: bytes, known: bytes, running: bytes, num: bytes, den: bytes, clients: bytes
) -> StatusResUnique:
    return StatusResUnique(
        unique, _atoi(known) != 0, _atoi(running) != 0, _atoi(num), _atoi(den), _atoi(clients)
    )


def _submit(priority: Priority, background: bool) -> Callable[[bytes, bytes, bytes], SubmitJob]:
    def make(function: bytes, unique: bytes, data: bytes) -> SubmitJob:
        return SubmitJob(function, unique, data, priority, background)

    return make


def _reduce(background: bool) -> Callable[[bytes, bytes, bytes, bytes, bytes], SubmitReduceJob]:
    def make(
        function: bytes, unique: bytes, reducer: bytes, aggregator: bytes, data: bytes
    ) -> SubmitReduceJob:
        return SubmitReduceJob(function, unique, reducer, aggregator, data, background)

    return make


def _epoch(function: bytes, unique: bytes, epoch: bytes, data: bytes) -> SubmitJobEpoch:
    return SubmitJobEpoch(function, unique, _atoi(epoch), data)


def _can_do_timeout(function: bytes, timeout: bytes) -> CanDoTimeout:
    return CanDoTimeout(function, _atoi(timeout))


def _const(message: Message) -> Callable[[], Message]:
    # A C-level callable returning the shared instance: no Python frame per packet.
    return itertools.repeat(message).__next__


# type number -> (number of NUL-separated parts in the body, factory taking the parts).
# "parts" counts the trailing opaque data argument where the packet has one.
_Factory = Callable[..., Message]
_TABLE: Final[dict[int, tuple[int, _Factory]]] = {
    PacketType.CAN_DO: (1, CanDo),
    PacketType.CANT_DO: (1, CantDo),
    PacketType.RESET_ABILITIES: (0, _const(ResetAbilities())),
    PacketType.PRE_SLEEP: (0, _const(PreSleep())),
    PacketType.UNUSED: (0, _const(Unused())),
    PacketType.NOOP: (0, _const(Noop())),
    PacketType.SUBMIT_JOB: (3, SubmitJob),  # the defaults: NORMAL, foreground
    PacketType.JOB_CREATED: (1, JobCreated),
    PacketType.GRAB_JOB: (0, _const(GrabJob())),
    PacketType.NO_JOB: (0, _const(NoJob())),
    PacketType.JOB_ASSIGN: (3, JobAssign),
    PacketType.WORK_STATUS: (3, _work_status),
    PacketType.WORK_COMPLETE: (2, WorkComplete),
    PacketType.WORK_FAIL: (1, WorkFail),
    PacketType.GET_STATUS: (1, GetStatus),
    PacketType.ECHO_REQ: (1, EchoReq),
    PacketType.ECHO_RES: (1, EchoRes),
    PacketType.SUBMIT_JOB_BG: (3, _submit(Priority.NORMAL, True)),
    PacketType.ERROR: (2, Error),
    PacketType.STATUS_RES: (5, _status_res),
    PacketType.SUBMIT_JOB_HIGH: (3, _submit(Priority.HIGH, False)),
    PacketType.SET_CLIENT_ID: (1, SetClientId),
    PacketType.CAN_DO_TIMEOUT: (2, _can_do_timeout),
    PacketType.ALL_YOURS: (0, _const(AllYours())),
    PacketType.WORK_EXCEPTION: (2, WorkException),
    PacketType.OPTION_REQ: (1, OptionReq),
    PacketType.OPTION_RES: (1, OptionRes),
    PacketType.WORK_DATA: (2, WorkData),
    PacketType.WORK_WARNING: (2, WorkWarning),
    PacketType.GRAB_JOB_UNIQ: (0, _const(GrabJobUniq())),
    PacketType.JOB_ASSIGN_UNIQ: (4, JobAssignUniq),
    PacketType.SUBMIT_JOB_HIGH_BG: (3, _submit(Priority.HIGH, True)),
    PacketType.SUBMIT_JOB_LOW: (3, _submit(Priority.LOW, False)),
    PacketType.SUBMIT_JOB_LOW_BG: (3, _submit(Priority.LOW, True)),
    PacketType.SUBMIT_JOB_SCHED: (8, SubmitJobSched),
    PacketType.SUBMIT_JOB_EPOCH: (4, _epoch),
    PacketType.SUBMIT_REDUCE_JOB: (5, SubmitReduceJob),  # the default: foreground
    PacketType.SUBMIT_REDUCE_JOB_BACKGROUND: (5, _reduce(True)),
    PacketType.GRAB_JOB_ALL: (0, _const(GrabJobAll())),
    PacketType.JOB_ASSIGN_ALL: (5, JobAssignAll),
    PacketType.GET_STATUS_UNIQUE: (1, GetStatusUnique),
    PacketType.STATUS_RES_UNIQUE: (6, _status_res_unique),
}
# The hot path's form of the table: a list indexed by type number (faster than a dict),
# holding (maxsplit for bytes.split, factory); maxsplit is -1 for packets without
# arguments and 0 for a single argument (the whole body).
_BY_TYPE: Final[list[tuple[int, _Factory] | None]] = [
    (entry[0] - 1, entry[1]) if (entry := _TABLE.get(i)) else None for i in range(43)
]
_TYPE_NAMES: Final = {int(t): t.name for t in PacketType}


def _describe(ptype: int) -> str:
    name = _TYPE_NAMES.get(ptype)
    return f"{name} (type {ptype})" if name else f"type {ptype}"


def _arity_error(ptype: int, nparts: int, body: bytes, offset: int) -> BadArgumentCount:
    if nparts == 0:
        return BadArgumentCount(
            f"{_describe(ptype)} takes no arguments, but its body has {len(body)} bytes",
            offset=offset,
        )
    return BadArgumentCount(
        f"{_describe(ptype)} needs {nparts} NUL-separated arguments "
        f"({nparts - 1} NUL bytes), but its {len(body)}-byte body has "
        f"{body.count(0)} NUL bytes",
        offset=offset,
    )


def _split(src: bytes, start: int, stop: int, maxsplit: int) -> list[bytes]:
    """``src[start:stop].split(b"\\0", maxsplit)``, each part copied from ``src`` once."""
    parts = []
    find = src.find
    pos = start
    for _ in range(maxsplit):
        nul = find(b"\0", pos, stop)
        if nul < 0:
            break
        parts.append(src[pos:nul])
        pos = nul + 1
    parts.append(src[pos:stop])
    return parts


# --- the decoder --------------------------------------------------------------------------


class Decoder:
    """Turns a byte stream into Gearman events, whatever the split of the input.

    Args:
        expect: the magic this side receives: ``Magic.REQ`` on a server,
            ``Magic.RES`` on a client or worker.
        allow_text: recognise admin text lines (a packet start whose first byte is
            not NUL), as a server does on its port.
        max_packet_size: the largest packet body accepted, checked on the header.
        max_line_length: the longest admin text line accepted, without its newline.

    Example:
        >>> decoder = Decoder(expect=Magic.REQ)
        >>> decoder.feed(b"\\0REQ\\x00\\x00\\x00\\x10\\x00\\x00\\x00\\x02hi")
        >>> list(decoder)
        [EchoReq(data=b'hi')]
    """

    __slots__ = (
        "_allow_text",
        "_big",
        "_chunks",
        "_error",
        "_expect",
        "_have",
        "_max_line",
        "_max_size",
        "_need",
        "_offset",
        "_other",
        "_pending",
        "_ready",
    )

    def __init__(
        self,
        *,
        expect: Magic,
        allow_text: bool = False,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    ) -> None:
        self._expect = expect.value
        self._other = _RES if expect is Magic.REQ else _REQ
        self._allow_text = allow_text
        self._max_size = max_packet_size
        self._max_line = max_line_length
        # Bytes received but not yet decoded: ``_pending`` plus the list ``_chunks``,
        # which only grows while a packet of known total size ``_need`` is incomplete
        # (so a large body arriving in many reads is joined once, not once per read).
        self._pending = b""
        self._chunks: list[bytes] = []
        # A packet of at least BIG_PACKET bytes is gathered in one buffer of its size
        # instead (its header included): each read is copied in and let go at once,
        # so the reads do not pile up, and its body is copied out once.
        self._big: bytearray | None = None
        self._have = 0
        self._need = 0
        self._offset = 0  # stream offset of the first pending byte
        # Decoded events not yet handed out: a consumer that stops iterating early
        # finds the rest here on its next iteration. Made when there is something to
        # decode and dropped once drained, so an idle decoder holds no block of it.
        self._ready: deque[Event] | None = None
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their packet or line."""
        return self._have if self._need else len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes. Complete events come out when the decoder is iterated.

        Once the decoder has raised a protocol error, fed bytes are dropped: the
        stream cannot be resynchronised.

        Args:
            data: bytes received from the peer, split anywhere; a bytearray or
                memoryview (a buffer the caller may reuse) is copied.
        """
        if not data or self._error is not None:
            return
        chunk = data if type(data) is bytes else bytes(data)
        big = self._big
        if big is not None:
            have = self._have
            room = self._need - have
            if len(chunk) <= room:
                big += chunk
                self._have = have + len(chunk)
                return
            if room:
                big += memoryview(chunk)[:room]
                self._have = self._need
                chunk = chunk[room:]
            # The packet is complete: what follows it waits for the next iteration.
            self._pending = self._pending + chunk if self._pending else chunk
        elif self._need:
            self._chunks.append(chunk)
            self._have += len(chunk)
        elif self._pending:
            self._pending += chunk
        else:
            self._pending = chunk

    def __iter__(self) -> Iterator[Event]:
        """Yield every complete event, then raise the first protocol error, if any.

        An event leaves the decoder when it is yielded: a consumer that stops early
        gets the remaining events from its next iteration.

        Raises:
            ProtocolError: the stream broke the protocol. Every event before the
                offending packet has been yielded first; the decoder stays broken.
        """
        ready = self._ready
        if self._error is None:
            big = None
            if self._need and self._have >= self._need:
                if self._big is None:
                    self._pending = b"".join([self._pending, *self._chunks])
                    self._chunks.clear()
                else:
                    big, self._big = self._big, None
                self._have = self._need = 0
            if big is not None or (self._pending and not self._need):
                if ready is None:
                    ready = self._ready = deque()
                try:
                    if big is not None:
                        self._decode_big(big, ready)
                        del big
                    if self._pending and not self._need:
                        self._decode(self._pending, ready)
                except ProtocolError as exc:
                    self._error = exc
                    self._pending = b""
                    self._big = None
                    self._chunks.clear()
                    self._have = self._need = 0
        if ready is not None:
            while ready:
                yield ready.popleft()
            if self._ready is ready:
                self._ready = None
        if self._error is not None:
            raise self._error

    def _decode(self, src: bytes, out: deque[Event]) -> None:
        """Decode every complete event in ``src`` into ``out``; keep the remainder."""
        pos = 0
        end = len(src)
        unpack = _HEADER.unpack_from
        by_type = _BY_TYPE
        append = out.append
        expect = self._expect
        max_size = self._max_size
        try:
            while pos < end:
                if src[pos]:
                    if not self._allow_text:
                        raise BadMagic(
                            f"expected {expect!r} magic, got {src[pos : pos + 4]!r}",
                            offset=self._offset + pos,
                        )
                    newline = src.find(b"\n", pos, pos + self._max_line + 2)
                    if newline < 0:
                        if end - pos > self._max_line + 1:
                            raise AdminLineTooLong(
                                f"admin text line longer than {self._max_line} bytes "
                                "without a newline",
                                offset=self._offset + pos,
                            )
                        break
                    stop = newline - 1 if newline > pos and src[newline - 1] == 13 else newline
                    if stop - pos > self._max_line:
                        raise AdminLineTooLong(
                            f"admin text line of {stop - pos} bytes, longer than {self._max_line}",
                            offset=self._offset + pos,
                        )
                    append(TextLine(src[pos:stop]))
                    pos = newline + 1
                    continue
                if end - pos < HEADER_SIZE:
                    # An incomplete header: refuse a wrong magic as soon as it shows.
                    head = src[pos : pos + 4]
                    if head != _REQ[: len(head)] and head != _RES[: len(head)]:
                        raise BadMagic(
                            f"expected {expect!r} magic, got {head!r}", offset=self._offset + pos
                        )
                    break
                magic, ptype, size = unpack(src, pos)
                if magic != expect and magic != self._other:
                    raise BadMagic(
                        f"expected {expect!r} magic, got {magic!r}", offset=self._offset + pos
                    )
                try:
                    entry = by_type[ptype]
                except IndexError:
                    entry = None
                if entry is None:
                    raise UnknownPacketType(
                        f"unknown packet type {ptype} (size {size})", offset=self._offset + pos
                    )
                if size > max_size:
                    raise PacketTooLarge(
                        f"{_describe(ptype)} declares a {size}-byte body, over the "
                        f"{max_size}-byte maximum",
                        offset=self._offset + pos,
                    )
                start = pos + HEADER_SIZE
                stop = start + size
                if stop > end:
                    self._need = stop - pos
                    self._have = end - pos
                    if self._need >= BIG_PACKET:
                        # Grown read by read (not made whole at once: filling it with
                        # zeros first would cost as much as the copies).
                        self._big = bytearray(memoryview(src)[pos:end])
                    break
                if magic != expect:
                    append(UnexpectedMagic(PacketType(ptype), Magic(magic)))
                    pos = stop
                    continue
                maxsplit, factory = entry
                if maxsplit > 0:
                    if size < LARGE_PART:
                        parts = src[start:stop].split(b"\0", maxsplit)
                    else:  # without a copy of the whole body first
                        parts = _split(src, start, stop, maxsplit)
                    if len(parts) <= maxsplit:
                        raise _arity_error(ptype, maxsplit + 1, src[start:stop], self._offset + pos)
                    append(factory(*parts))
                elif maxsplit == 0:
                    append(factory(src[start:stop]))
                else:
                    if size:
                        raise _arity_error(ptype, 0, src[start:stop], self._offset + pos)
                    append(factory())
                pos = stop
        finally:
            self._offset += pos
            self._pending = src[pos:] if pos < end and self._big is None else b""

    def _decode_big(self, packet: bytearray, out: deque[Event]) -> None:
        """Decode one complete packet gathered in its own buffer (its header was checked)."""
        offset = self._offset
        self._offset += len(packet)
        magic, ptype, _ = _HEADER.unpack_from(packet)
        if magic != self._expect:
            out.append(UnexpectedMagic(PacketType(ptype), Magic(magic)))
            return
        entry = _BY_TYPE[ptype]
        assert entry is not None
        maxsplit, factory = entry
        with memoryview(packet) as view:
            if maxsplit < 0:
                raise _arity_error(ptype, 0, bytes(view[HEADER_SIZE:]), offset)
            parts = []
            pos = HEADER_SIZE
            for _ in range(maxsplit):
                nul = packet.find(b"\0", pos)
                if nul < 0:
                    body = bytes(view[HEADER_SIZE:])
                    raise _arity_error(ptype, maxsplit + 1, body, offset)
                parts.append(bytes(view[pos:nul]))
                pos = nul + 1
            parts.append(bytes(view[pos:]))
        out.append(factory(*parts))


# --- the encoder --------------------------------------------------------------------------


def encode(message: Message, magic: Magic | None = None) -> bytes:
    """The wire bytes of one packet.

    Args:
        message: the packet.
        magic: ``Magic.REQ`` or ``Magic.RES``; by default the direction the
            packet normally travels (WORK_* packets default to REQ, as a worker
            sends them; a server forwarding them to clients passes ``Magic.RES``).

    Returns:
        The 12-byte header followed by the body.
    """
    body = b"\0".join(message.wire_parts())
    # A Magic member is itself the bytes: reading ``.value`` would cost more than packing.
    return _HEADER.pack(magic or message.MAGIC, message.packet_type, len(body)) + body


def append_packet(
    buffer: bytearray, magic: bytes, packet_type: int, parts: tuple[bytes, ...]
) -> None:
    """Append one packet, made of its arguments ``parts``, to ``buffer``.

    A large last argument (a job's data or result) is copied once, into
    ``buffer``: joining the arguments into a body first would copy it once more
    (and adding the header to that body a third time).

    Args:
        buffer: the outgoing bytes, extended in place.
        magic: the magic bytes (a :class:`Magic` member is one).
        packet_type: the packet type number.
        parts: the arguments in wire order (``message.wire_parts()``).
    """
    if len(parts) > 1 and len(parts[-1]) >= LARGE_PART:
        size = len(parts) - 1
        for part in parts:
            size += len(part)
        buffer += _HEADER.pack(magic, packet_type, size)
        for part in parts[:-1]:
            buffer += part
            buffer += b"\0"
        buffer += parts[-1]
    else:
        body = b"\0".join(parts)  # of one argument: that argument itself, not a copy
        buffer += _HEADER.pack(magic, packet_type, len(body))
        buffer += body


def encode_into(buffer: bytearray, message: Message, magic: Magic | None = None) -> None:
    """Append the wire bytes of one packet to ``buffer`` (for batching many sends).

    Args:
        buffer: the outgoing bytes, extended in place.
        message: the packet.
        magic: as for :func:`encode`.
    """
    parts = message.wire_parts()
    if len(parts) > 1 and len(parts[-1]) >= LARGE_PART:
        append_packet(buffer, magic or message.MAGIC, message.packet_type, parts)
    else:
        body = b"\0".join(parts)
        buffer += _HEADER.pack(magic or message.MAGIC, message.packet_type, len(body))
        buffer += body
