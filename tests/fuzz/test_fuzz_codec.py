"""The decoder fed hostile streams in random splits.

Whatever the bytes, the decoder raises nothing but a ``ProtocolError``; how the
stream is split never changes what it yields or where it fails; once broken it stays
broken; every packet it yields encodes back to a packet that decodes to itself.

``TRIO_GEARMAN_FUZZ_EXAMPLES=100000`` runs a long fuzz (docs/design.rst, "Fuzzing").
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_gearman._exceptions import ProtocolError
from trio_gearman._proto import (
    DEFAULT_MAX_PACKET_SIZE,
    Decoder,
    Event,
    Magic,
    TextLine,
    UnexpectedMagic,
    encode,
)

from .strategies import fuzz_examples, streams

_SETTINGS = settings(
    max_examples=fuzz_examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _decode(
    decoder: Decoder, chunks: list[bytes]
) -> tuple[list[Event], tuple[type[ProtocolError], int | None] | None]:
    """Feed ``chunks`` one by one, iterating after each; the events and the error."""
    events: list[Event] = []
    for chunk in chunks:
        decoder.feed(chunk)
        assert decoder.buffered <= sum(map(len, chunks))
        try:
            events.extend(decoder)
        except ProtocolError as exc:
            return events, (type(exc), exc.offset)
    return events, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@_SETTINGS
@given(
    data=streams(),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    allow_text=st.booleans(),
    max_packet_size=st.sampled_from([DEFAULT_MAX_PACKET_SIZE, 64, 0]),
    expect=st.sampled_from([Magic.REQ, Magic.RES]),
)
def test_any_split_of_any_stream_decodes_alike_or_fails_alike(
    data: bytes, cuts: list[int], allow_text: bool, max_packet_size: int, expect: Magic
) -> None:
    def decoder() -> Decoder:
        return Decoder(expect=expect, allow_text=allow_text, max_packet_size=max_packet_size)

    whole, whole_error = _decode(decoder(), [data])
    split, split_error = _decode(decoder(), _split(data, cuts))
    step = 1 if len(data) <= 2048 else 61  # byte by byte, but not over an 8 KiB line
    small = [data[i : i + step] for i in range(0, len(data), step)]
    one_by_one, bytewise_error = _decode(decoder(), small)
    assert split == whole == one_by_one
    assert split_error == whole_error == bytewise_error
    if whole_error is not None:
        offset = whole_error[1]
        assert offset is not None
        assert 0 <= offset <= len(data)
    for event in whole:
        if isinstance(event, TextLine):
            assert allow_text
            assert b"\n" not in event.line
        elif isinstance(event, UnexpectedMagic):
            assert event.magic is not expect
        else:
            again = Decoder(expect=expect, max_packet_size=DEFAULT_MAX_PACKET_SIZE)
            again.feed(encode(event, expect))
            assert list(again) == [event]


@_SETTINGS
@given(data=streams(4), more=streams(2))
def test_a_broken_decoder_stays_broken(data: bytes, more: bytes) -> None:
    decoder = Decoder(expect=Magic.REQ, allow_text=True, max_packet_size=64)
    decoder.feed(data)
    try:
        list(decoder)
    except ProtocolError as exc:
        first = exc
    else:
        return
    decoder.feed(more)
    assert decoder.buffered == 0
    with pytest.raises(ProtocolError) as again:
        list(decoder)
    assert again.value is first
