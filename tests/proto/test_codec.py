"""The codec: round trips, any split of the input, text lines, and every decoder error."""

from __future__ import annotations

import itertools
import struct
import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings, strategies as st

from trio_gearman._exceptions import (
    AdminLineTooLong,
    BadArgumentCount,
    BadMagic,
    PacketTooLarge,
    ProtocolError,
    UnknownPacketType,
)
from trio_gearman._proto import (
    DEFAULT_MAX_LINE_LENGTH,
    DEFAULT_MAX_PACKET_SIZE,
    CanDoTimeout,
    Decoder,
    EchoReq,
    Event,
    GrabJob,
    Magic,
    Message,
    Noop,
    PacketType,
    PreSleep,
    Priority,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    TextLine,
    UnexpectedMagic,
    WorkComplete,
    WorkStatus,
    encode,
    encode_into,
)
from trio_gearman._proto._codec import BIG_PACKET, LARGE_PART, append_packet

from .strategies import MESSAGE_CLASSES, SIGNED_NUMBERS, message_strategies, messages

MAGICS = (Magic.REQ, Magic.RES)
STRATEGIES = message_strategies()
SIGNED_STRATEGIES = message_strategies(SIGNED_NUMBERS)
NUMBERED = (WorkStatus, StatusRes, StatusResUnique, CanDoTimeout, SubmitJobEpoch)
LONG_MAX = 2**63 - 1


def packet(ptype: int, body: bytes = b"", magic: bytes = b"\0REQ") -> bytes:
    """Raw packet bytes, built without the encoder under test."""
    return struct.pack(">4sII", magic, ptype, len(body)) + body


def decode(stream: bytes, expect: Magic = Magic.REQ, *, allow_text: bool = False) -> list[Event]:
    decoder = Decoder(expect=expect, allow_text=allow_text)
    decoder.feed(stream)
    events = list(decoder)
    assert decoder.buffered == 0
    return events


def decode_split(decoder: Decoder, stream: bytes, cuts: Sequence[int]) -> list[Event]:
    """Feed ``stream`` cut at ``cuts``, iterating after every piece."""
    events: list[Event] = []
    bounds = [0, *sorted(cuts), len(stream)]
    for start, stop in itertools.pairwise(bounds):
        decoder.feed(stream[start:stop])
        events.extend(decoder)
    return events


def raised_after(decoder: Decoder, error: type[ProtocolError]) -> tuple[list[Event], ProtocolError]:
    """Iterate until ``error`` is raised; return the events yielded before it and it."""
    events: list[Event] = []

    def drain() -> None:
        for event in decoder:
            events.append(event)

    with pytest.raises(error) as info:
        drain()
    return events, info.value


# --- round trips -----------------------------------------------------------------------------


def test_strategies_cover_every_message_class() -> None:
    assert len(MESSAGE_CLASSES) == 36
    assert set(STRATEGIES) == set(MESSAGE_CLASSES)
    assert set(SIGNED_STRATEGIES) == set(MESSAGE_CLASSES)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=60)
@given(data=st.data())
def test_round_trip_every_type_both_magics(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[cls])
    assert type(message) is cls
    for magic in MAGICS:
        wire = encode(message, magic)
        assert wire[:4] == magic.value
        assert struct.unpack(">I", wire[4:8])[0] == message.packet_type
        assert decode(wire, magic) == [message]
    assert encode(message) == encode(message, message.MAGIC)


@pytest.mark.parametrize("cls", NUMBERED, ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_negative_numbers_round_trip(cls: type[Message], data: st.DataObject) -> None:
    message = data.draw(SIGNED_STRATEGIES[cls])
    assert decode(encode(message, Magic.REQ)) == [message]


@pytest.mark.parametrize("priority", list(Priority))
@pytest.mark.parametrize("background", [False, True])
def test_submit_job_every_priority_and_mode(priority: Priority, background: bool) -> None:
    expected_type = {
        (Priority.NORMAL, False): PacketType.SUBMIT_JOB,
        (Priority.NORMAL, True): PacketType.SUBMIT_JOB_BG,
        (Priority.HIGH, False): PacketType.SUBMIT_JOB_HIGH,
        (Priority.HIGH, True): PacketType.SUBMIT_JOB_HIGH_BG,
        (Priority.LOW, False): PacketType.SUBMIT_JOB_LOW,
        (Priority.LOW, True): PacketType.SUBMIT_JOB_LOW_BG,
    }[priority, background]
    message = SubmitJob(b"f", b"u", b"\0data\0", priority, background)
    wire = encode(message)
    assert wire == packet(expected_type, b"f\0u\0\0data\0")
    [decoded] = decode(wire)
    assert decoded == message
    assert isinstance(decoded, SubmitJob)
    assert decoded.priority is priority
    assert decoded.background is background


@pytest.mark.parametrize(
    ("background", "ptype"),
    [(False, PacketType.SUBMIT_REDUCE_JOB), (True, PacketType.SUBMIT_REDUCE_JOB_BACKGROUND)],
)
def test_submit_reduce_job_both_modes(background: bool, ptype: PacketType) -> None:
    message = SubmitReduceJob(b"f", b"u", b"r", b"", b"d", background)
    assert encode(message) == packet(ptype, b"f\0u\0r\0\0d")
    assert decode(encode(message)) == [message]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"42", 42),
        (b"007", 7),
        (b"", 0),
        (b"abc", 0),
        (b"12abc", 12),
        (b" \t\n\v\f\r12", 12),
        (b"+7", 7),
        (b"-7", -7),
        (b"- 7", 0),
        (b"0" * 100 + b"5", 5),
        (b"9223372036854775807", LONG_MAX),
        (b"9223372036854775808", LONG_MAX),
        (b"-9223372036854775808", -(2**63)),
        (b"-9223372036854775809", -(2**63)),
        (b"9" * 5000, LONG_MAX),  # no 4300-digit int conversion error
        (b"-" + b"9" * 5000, -(2**63)),
    ],
)
def test_numbers_parse_like_strtol(text: bytes, value: int) -> None:
    events = decode(packet(PacketType.WORK_STATUS, b"H:1\0" + text + b"\0" + text))
    assert events == [WorkStatus(b"H:1", value, value)]


def test_status_flags_parse_as_numbers() -> None:
    body = b"H:1\0 2\0x\0 3\0 4"
    assert decode(packet(PacketType.STATUS_RES, body, b"\0RES"), Magic.RES) == [
        StatusRes(b"H:1", known=True, running=False, numerator=3, denominator=4)
    ]


# --- any split of the input ------------------------------------------------------------------


@given(data=st.data(), batch=st.lists(messages(), max_size=25))
def test_random_splits_give_the_same_messages(data: st.DataObject, batch: list[Message]) -> None:
    stream = b"".join(encode(m, Magic.REQ) for m in batch)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    decoder = Decoder(expect=Magic.REQ)
    assert decode_split(decoder, stream, cuts) == batch
    assert decoder.buffered == 0


@settings(max_examples=40)
@given(batch=st.lists(messages(), max_size=12))
def test_one_byte_at_a_time_gives_the_same_messages(batch: list[Message]) -> None:
    stream = b"".join(encode(m, Magic.RES) for m in batch)
    decoder = Decoder(expect=Magic.RES)
    assert decode_split(decoder, stream, range(1, len(stream))) == batch
    assert decoder.buffered == 0


TEXT_LINES = st.tuples(
    # A line starts with a non-NUL byte, holds no LF and does not end in CR.
    st.binary(max_size=30).filter(
        lambda line: not line.startswith(b"\0") and b"\n" not in line and not line.endswith(b"\r")
    ),
    st.sampled_from([b"\n", b"\r\n"]),
)


@given(
    data=st.data(),
    items=st.lists(st.one_of(messages(), TEXT_LINES), max_size=20),
)
def test_text_lines_interleaved_with_packets(
    data: st.DataObject, items: list[Message | tuple[bytes, bytes]]
) -> None:
    stream = b""
    expected: list[Event] = []
    for item in items:
        if isinstance(item, tuple):
            line, terminator = item
            stream += line + terminator
            expected.append(TextLine(line))
        else:
            stream += encode(item, Magic.REQ)
            expected.append(item)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    decoder = Decoder(expect=Magic.REQ, allow_text=True)
    assert decode_split(decoder, stream, cuts) == expected
    assert decoder.buffered == 0


def test_text_line_terminators() -> None:
    stream = b"status\r\nworkers\n\n\r\nversion"
    decoder = Decoder(expect=Magic.REQ, allow_text=True)
    decoder.feed(stream)
    assert list(decoder) == [
        TextLine(b"status"),
        TextLine(b"workers"),
        TextLine(b""),
        TextLine(b""),
    ]
    assert decoder.buffered == len(b"version")
    decoder.feed(b"\r")
    assert list(decoder) == []
    decoder.feed(b"\n")
    assert list(decoder) == [TextLine(b"version")]


@given(
    data=st.data(),
    batch=st.lists(st.tuples(messages(), st.sampled_from(MAGICS)), max_size=20),
)
def test_unexpected_magic_is_reported_and_skipped(
    data: st.DataObject, batch: list[tuple[Message, Magic]]
) -> None:
    stream = b"".join(encode(m, magic) for m, magic in batch)
    expected = [
        m if magic is Magic.REQ else UnexpectedMagic(m.packet_type, magic) for m, magic in batch
    ]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    decoder = Decoder(expect=Magic.REQ)
    assert decode_split(decoder, stream, cuts) == expected


def test_unexpected_magic_body_is_skipped_unparsed() -> None:
    # A PRE_SLEEP with a body would be a BadArgumentCount with the expected magic.
    stream = (
        packet(PacketType.ECHO_REQ, b"a")
        + packet(PacketType.PRE_SLEEP, b"\0REQ\0\0\0\x04", b"\0RES")
        + packet(PacketType.ECHO_REQ, b"b")
    )
    assert decode(stream) == [
        EchoReq(b"a"),
        UnexpectedMagic(PacketType.PRE_SLEEP, Magic.RES),
        EchoReq(b"b"),
    ]


@given(message=messages(), magic=st.sampled_from([None, *MAGICS]), prefix=st.binary())
def test_encode_into_equals_encode(message: Message, magic: Magic | None, prefix: bytes) -> None:
    buffer = bytearray(prefix)
    encode_into(buffer, message, magic)
    assert buffer == prefix + encode(message, magic)


# --- decoder errors --------------------------------------------------------------------------

GOOD = encode(EchoReq(b"ok"))


def test_bad_magic_garbage() -> None:
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(GOOD + b"GET / HTTP/1.1\r\n")
    events, error = raised_after(decoder, BadMagic)
    assert events == [EchoReq(b"ok")]
    assert error.offset == len(GOOD)
    assert "expected b'\\x00REQ' magic, got b'GET '" in str(error)
    assert f"at byte {len(GOOD)} of the stream" in str(error)


@pytest.mark.parametrize("allow_text", [False, True])
def test_bad_magic_nul_then_garbage(allow_text: bool) -> None:
    decoder = Decoder(expect=Magic.RES, allow_text=allow_text)
    good = encode(Noop())
    decoder.feed(good + b"\0XYZ" + b"\0" * 8)
    events, error = raised_after(decoder, BadMagic)
    assert events == [Noop()]
    assert error.offset == len(good)
    assert "expected b'\\x00RES' magic, got b'\\x00XYZ'" in str(error)


@pytest.mark.parametrize("head", [b"\0X", b"\0RX", b"\0REX"])
def test_bad_magic_refused_before_the_header_is_complete(head: bytes) -> None:
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(b"\0RE"[: len(head) - 1])
    assert list(decoder) == []
    decoder.feed(head[-1:])
    _, error = raised_after(decoder, BadMagic)
    assert error.offset == 0
    assert f"got {head!r}" in str(error)


def test_bad_magic_text_byte_when_text_is_not_allowed() -> None:
    decoder = Decoder(expect=Magic.REQ, allow_text=False)
    decoder.feed(GOOD + b"s")
    events, error = raised_after(decoder, BadMagic)
    assert events == [EchoReq(b"ok")]
    assert error.offset == len(GOOD)
    assert "got b's'" in str(error)


@pytest.mark.parametrize("ptype", [0, 43, 2**31, 2**32 - 1])
def test_unknown_packet_type(ptype: int) -> None:
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(GOOD + packet(ptype, b"xyz"))
    events, error = raised_after(decoder, UnknownPacketType)
    assert events == [EchoReq(b"ok")]
    assert error.offset == len(GOOD)
    assert f"unknown packet type {ptype} (size 3)" in str(error)


@pytest.mark.parametrize(
    ("ptype", "body", "message"),
    [
        (
            PacketType.SUBMIT_JOB,
            b"f\0data",
            "SUBMIT_JOB (type 7) needs 3 NUL-separated arguments (2 NUL bytes), "
            "but its 6-byte body has 1 NUL bytes",
        ),
        (
            PacketType.JOB_ASSIGN_UNIQ,
            b"H:1\0f\0data",
            "JOB_ASSIGN_UNIQ (type 31) needs 4 NUL-separated arguments (3 NUL bytes), "
            "but its 10-byte body has 2 NUL bytes",
        ),
        (
            PacketType.PRE_SLEEP,
            b"zzz",
            "PRE_SLEEP (type 4) takes no arguments, but its body has 3 bytes",
        ),
        (
            PacketType.STATUS_RES,
            b"H:1\x001\x000\x007",
            "STATUS_RES (type 20) needs 5 NUL-separated arguments (4 NUL bytes), "
            "but its 9-byte body has 3 NUL bytes",
        ),
    ],
)
def test_bad_argument_count(ptype: PacketType, body: bytes, message: str) -> None:
    decoder = Decoder(expect=Magic.RES)
    good = encode(Noop())
    decoder.feed(good + packet(ptype, body, b"\0RES") + good)
    events, error = raised_after(decoder, BadArgumentCount)
    assert events == [Noop()]
    assert error.offset == len(good)
    assert message in str(error)


def test_packet_too_large_refused_from_the_header_alone() -> None:
    # The largest size a header can declare (4 GiB - 1); no body follows.
    header = struct.pack(">4sII", b"\0REQ", PacketType.SUBMIT_JOB, 2**32 - 1)
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(GOOD + header)
    events, error = raised_after(decoder, PacketTooLarge)
    assert events == [EchoReq(b"ok")]
    assert error.offset == len(GOOD)
    assert (
        f"SUBMIT_JOB (type 7) declares a 4294967295-byte body, "
        f"over the {DEFAULT_MAX_PACKET_SIZE}-byte maximum"
    ) in str(error)


def test_packet_too_large_custom_maximum() -> None:
    decoder = Decoder(expect=Magic.REQ, max_packet_size=10)
    at_limit = packet(PacketType.ECHO_REQ, b"0123456789")
    decoder.feed(at_limit)
    assert list(decoder) == [EchoReq(b"0123456789")]
    decoder.feed(packet(PacketType.ECHO_REQ, b"0123456789X")[:12])
    _, error = raised_after(decoder, PacketTooLarge)
    assert error.offset == len(at_limit)
    assert "ECHO_REQ (type 16) declares a 11-byte body, over the 10-byte maximum" in str(error)


def test_admin_line_too_long_without_newline_raises_at_the_bound() -> None:
    chunk = b"a" * 65536
    decoder = Decoder(expect=Magic.REQ, allow_text=True)
    decoder.feed(b"status\n" + chunk)
    events, error = raised_after(decoder, AdminLineTooLong)
    # The first 64 KiB of a 1 MiB line is enough: nothing more was needed or kept.
    assert events == [TextLine(b"status")]
    assert error.offset == len(b"status\n")
    assert f"admin text line longer than {DEFAULT_MAX_LINE_LENGTH} bytes" in str(error)
    for _ in range(15):
        decoder.feed(chunk)
        assert decoder.buffered == 0
        with pytest.raises(AdminLineTooLong):
            list(decoder)


def test_admin_line_too_long_raises_on_the_chunk_that_passes_the_bound() -> None:
    decoder = Decoder(expect=Magic.REQ, allow_text=True, max_line_length=100)
    for _ in range(101):  # 101 bytes may still be a 100-byte line and a CR
        decoder.feed(b"a")
        assert list(decoder) == []
    decoder.feed(b"a")
    _, error = raised_after(decoder, AdminLineTooLong)
    assert error.offset == 0
    assert "admin text line longer than 100 bytes without a newline" in str(error)


def test_admin_line_length_bounds() -> None:
    line = b"w" * DEFAULT_MAX_LINE_LENGTH
    assert decode(line + b"\r\n", allow_text=True) == [TextLine(line)]
    decoder = Decoder(expect=Magic.REQ, allow_text=True)
    decoder.feed(line + b"w\n")
    _, error = raised_after(decoder, AdminLineTooLong)
    assert error.offset == 0
    assert f"admin text line of 8193 bytes, longer than {DEFAULT_MAX_LINE_LENGTH}" in str(error)


def test_decoder_stays_broken_after_an_error() -> None:
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(packet(0))
    _, first = raised_after(decoder, UnknownPacketType)
    decoder.feed(GOOD)
    assert decoder.buffered == 0
    for _ in range(2):
        _, again = raised_after(decoder, UnknownPacketType)
        assert again is first


# --- consumers and buffers -------------------------------------------------------------------


def test_events_are_kept_when_the_consumer_stops_early() -> None:
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(encode(GrabJob()) + encode(PreSleep()) + GOOD + packet(43))
    for event in decoder:
        assert event == GrabJob()
        break
    events, _ = raised_after(decoder, UnknownPacketType)
    assert events == [PreSleep(), EchoReq(b"ok")]


def test_feed_copies_mutable_buffers() -> None:
    decoder = Decoder(expect=Magic.REQ)
    wire = bytearray(GOOD)
    decoder.feed(wire)
    wire[:] = b"\xff" * len(wire)  # the caller reuses its receive buffer
    decoder.feed(memoryview(GOOD))
    assert list(decoder) == [EchoReq(b"ok"), EchoReq(b"ok")]


def test_incomplete_packet_is_buffered_until_its_last_byte() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = encode(WorkComplete(b"H:1", payload))
    decoder = Decoder(expect=Magic.REQ)
    for start in range(0, len(wire) - 1, 65536):
        decoder.feed(wire[start : min(start + 65536, len(wire) - 1)])
        assert list(decoder) == []
        assert decoder.buffered == min(start + 65536, len(wire) - 1)
    decoder.feed(wire[-1:] + GOOD[:3])
    assert list(decoder) == [WorkComplete(b"H:1", payload)]
    assert decoder.buffered == 3


def _decode_pieces(pieces: Sequence[bytes]) -> tuple[list[Event], float]:
    """The events and the best CPU time (of 3 runs) to decode ``pieces``."""
    best = float("inf")
    events: list[Event] = []
    for _ in range(3):
        decoder = Decoder(expect=Magic.REQ)
        events = []
        start = time.thread_time()  # CPU time: other processes do not disturb it
        for piece in pieces:
            decoder.feed(piece)
            events.extend(decoder)
        best = min(best, time.thread_time() - start)
    return events, best


def test_large_payload_in_64k_chunks_decodes_in_linear_time() -> None:
    payload = bytes(range(256)) * (32 * 1024)  # 8 MiB
    wire = encode(WorkComplete(b"H:2", payload)) + GOOD
    expected = [WorkComplete(b"H:2", payload), EchoReq(b"ok")]
    whole_events, whole_time = _decode_pieces([wire])
    chunk_events, chunk_time = _decode_pieces(
        [wire[offset : offset + 65536] for offset in range(0, len(wire), 65536)]
    )
    assert whole_events == expected
    assert chunk_events == expected
    # Joining the buffered bytes once per read would copy ~64 times the payload in
    # 129 reads, where one feed copies it once; gathering the reads in one buffer
    # copies it twice (in, and out into the message), about 4 times the time here,
    # plus the Python work of each read (slower under coverage's tracing).
    assert chunk_time < 16 * whole_time + 0.02


# --- large packets: gathered in one buffer, copied out once -------------------------------


def _in_reads(wire: bytes, size: int = 65536) -> list[Event]:
    """The events of ``wire`` fed in reads of ``size`` bytes, iterating after each."""
    decoder = Decoder(expect=Magic.REQ)
    events: list[Event] = []
    for offset in range(0, len(wire), size):
        decoder.feed(wire[offset : offset + size])
        events.extend(decoder)
    assert decoder.buffered == 0
    return events


@pytest.mark.parametrize(
    "message",
    [
        EchoReq(bytes(range(256)) * 1024),
        WorkComplete(b"H:1", b"\0" * (BIG_PACKET + 5)),
        SubmitJob(b"f", b"u", b"x" * (2 * BIG_PACKET)),
    ],
)
def test_a_large_packet_in_reads_decodes_alone_or_with_what_follows(message: Message) -> None:
    assert _in_reads(encode(message) + GOOD, 50000) == [message, EchoReq(b"ok")]
    assert _in_reads(encode(message)) == [message]


def test_the_rest_of_a_large_packet_and_more_fed_before_iterating() -> None:
    wire = encode(EchoReq(b"y" * BIG_PACKET))
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(wire[:1000])
    assert list(decoder) == []
    decoder.feed(wire[1000:])  # exactly the rest
    decoder.feed(GOOD[:5])  # then more, before the packet is taken
    decoder.feed(GOOD[5:])
    assert list(decoder) == [EchoReq(b"y" * BIG_PACKET), EchoReq(b"ok")]


def test_a_large_packet_with_the_other_magic_is_skipped() -> None:
    wire = encode(WorkComplete(b"H:1", b"z" * BIG_PACKET), Magic.RES)
    assert _in_reads(wire + GOOD) == [
        UnexpectedMagic(PacketType.WORK_COMPLETE, Magic.RES),
        EchoReq(b"ok"),
    ]


@pytest.mark.parametrize(
    ("ptype", "message"),
    [
        (PacketType.WORK_COMPLETE, "needs 2 NUL-separated arguments"),
        (PacketType.SUBMIT_JOB, "needs 3 NUL-separated arguments"),
        (PacketType.GRAB_JOB, "takes no arguments"),
    ],
)
@pytest.mark.parametrize("whole", [True, False])
def test_a_large_body_with_too_few_arguments_is_refused(
    ptype: PacketType, message: str, whole: bool
) -> None:
    body = b"a\0" if ptype == PacketType.SUBMIT_JOB else b""
    body += b"q" * BIG_PACKET
    wire = struct.pack(">4sII", b"\0REQ", ptype, len(body)) + body
    with pytest.raises(BadArgumentCount, match=message):
        _in_reads(wire, len(wire) if whole else 65536)


@pytest.mark.parametrize(
    "message",
    [
        WorkComplete(b"H:1", b"r" * LARGE_PART),
        WorkComplete(b"H:1", b"small"),
        EchoReq(b"e" * LARGE_PART),
        Noop(),
    ],
)
def test_append_packet_writes_what_encode_returns(message: Message) -> None:
    buffer = bytearray(b"before")
    append_packet(buffer, Magic.RES, message.packet_type, message.wire_parts())
    assert bytes(buffer) == b"before" + encode(message, Magic.RES)
    buffer = bytearray(b"before")
    encode_into(buffer, message)
    assert bytes(buffer) == b"before" + encode(message)
