"""A first check of the decoder and encoder on a mixed stream."""

from __future__ import annotations

from trio_gearman._proto import (
    CanDo,
    Decoder,
    EchoReq,
    Event,
    Magic,
    Message,
    PreSleep,
    Priority,
    SubmitJob,
    TextLine,
    WorkStatus,
    encode,
)


def test_mixed_stream_byte_at_a_time() -> None:
    messages: list[Message] = [
        SubmitJob(b"f", b"u", b"data\0with nul", Priority.HIGH, background=True),
        CanDo(b"reverse"),
        PreSleep(),
        WorkStatus(b"H:1", 3, 7),
        EchoReq(b""),
    ]
    stream = b"".join(encode(m) for m in messages) + b"status\r\nworkers\n"
    decoder = Decoder(expect=Magic.REQ, allow_text=True)
    seen: list[Event] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        seen.extend(decoder)
    assert seen == [*messages, TextLine(b"status"), TextLine(b"workers")]
    assert decoder.buffered == 0
