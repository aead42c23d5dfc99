"""Real Gearman conversations, and the ways a fuzzer breaks them (``random``-driven).

The black-box fuzz (``test_fuzz_blackbox.py``) runs for a bounded time rather than a
number of examples, so it draws from a seeded :class:`random.Random` instead of
hypothesis: the seed it prints reproduces a run. A conversation is the list of what a
client, a worker or an admin tool sends, packet by packet; :func:`mutate` breaks one
(bit flips, splices, truncation, duplication, length and type fields changed,
garbage, admin lines between packets) and :func:`chunks` splits the bytes into
reads.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Sequence
from typing import Final

from trio_gearman._proto import (
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    Message,
    OptionReq,
    PreSleep,
    Priority,
    ResetAbilities,
    SetClientId,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
    encode,
)
from trio_gearman._proto._codec import HEADER

__all__ = [
    "HANDLES",
    "HANDLE_PREFIX",
    "Conversation",
    "chunks",
    "conversation",
    "mutate",
]

HANDLE_PREFIX: Final = b"H:fuzz"
"""The job handle prefix the fuzzed servers are started with."""
HANDLES: Final = re.compile(rb"H:fuzz:\d+")
"""Finds the handles in a server's replies, for later requests to name."""

Conversation = list[bytes]
"""What one connection sends: packets and admin lines, in order."""

_FUNCTIONS: Final = [b"a", b"a", b"b", b"c", b""]
_UNIQUES: Final = [b"", b"", b"-", b"u1", b"u2", b"u" * 65]
_ADMIN: Final = [
    b"status",
    b"prioritystatus",
    b"workers",
    b"show jobs",
    b"show unique jobs",
    b"version",
    b"getpid",
    b"verbose",
    b"create function a",
    b"drop function b",
    b"maxqueue a 100",
    b"maxqueue b 1 2 3",
    b"cancel job H:fuzz:1",
    b"shutdown",
    b"status a b c d e f",
]


def _payload(rng: random.Random) -> bytes:
    return rng.choice([b"", b"x", b"data", rng.randbytes(rng.randrange(64))])


def _handle(rng: random.Random, handles: Sequence[bytes]) -> bytes:
    if handles and rng.random() < 0.8:
        return rng.choice(handles)
    return HANDLE_PREFIX + b":%d" % rng.randrange(1, 50)


def _client(rng: random.Random, handles: Sequence[bytes]) -> Message:
    function = rng.choice(_FUNCTIONS)
    unique = rng.choice(_UNIQUES)
    roll = rng.random()
    if roll < 0.55:
        priority = rng.choice(list(Priority))
        return SubmitJob(function, unique, _payload(rng), priority, rng.random() < 0.4)
    if roll < 0.62:
        return SubmitReduceJob(function, unique, b"r", b"", _payload(rng), rng.random() < 0.5)
    if roll < 0.68:
        return SubmitJobEpoch(function, unique, rng.choice([0, 1, 2**40]), _payload(rng))
    if roll < 0.85:
        return GetStatus(_handle(rng, handles))
    if roll < 0.9:
        return GetStatusUnique(unique)
    if roll < 0.95:
        return OptionReq(rng.choice([b"exceptions", b"bogus"]))
    return EchoReq(_payload(rng))


def _worker(rng: random.Random, handles: Sequence[bytes]) -> Message:
    function = rng.choice(_FUNCTIONS)
    handle = _handle(rng, handles)
    makers: list[Callable[[], Message]] = [
        lambda: CanDo(function),
        lambda: CanDo(function),
        lambda: CanDoTimeout(function, rng.choice([0, 1, 2000])),
        lambda: CantDo(function),
        lambda: ResetAbilities(),
        lambda: SetClientId(b"fuzz-worker"),
        lambda: PreSleep(),
        lambda: GrabJob(),
        lambda: GrabJobUniq(),
        lambda: GrabJobAll(),
        lambda: GrabJobUniq(),
        lambda: WorkStatus(handle, rng.randrange(100), 100),
        lambda: WorkData(handle, _payload(rng)),
        lambda: WorkWarning(handle, _payload(rng)),
        lambda: WorkComplete(handle, _payload(rng)),
        lambda: WorkComplete(handle, _payload(rng)),
        lambda: WorkFail(handle),
        lambda: WorkException(handle, b"boom"),
    ]
    return rng.choice(makers)()


def conversation(rng: random.Random, handles: Sequence[bytes] = ()) -> Conversation:
    """A client's, a worker's, an admin tool's or a mixed conversation, well formed.

    Args:
        rng: the source of every choice.
        handles: handles the server gave out lately; results and status requests
            name them most of the time.
    """
    role = rng.choice(["client", "worker", "worker", "admin", "mixed"])
    length = rng.randrange(1, 16)
    said: Conversation = []
    for _ in range(length):
        kind = role if role != "mixed" else rng.choice(["client", "worker", "admin"])
        if kind == "admin":
            said.append(rng.choice(_ADMIN) + rng.choice([b"\n", b"\r\n"]))
        elif kind == "client":
            said.append(encode(_client(rng, handles)))
        else:
            said.append(encode(_worker(rng, handles)))
    return said


def _packet_indexes(said: Conversation) -> list[int]:
    return [i for i, piece in enumerate(said) if len(piece) >= 12 and piece[:1] == b"\0"]


def mutate(rng: random.Random, said: Conversation, other: Conversation) -> Conversation:
    """``said`` broken in one to three ways (``other`` is spliced in sometimes)."""
    said = list(said)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.choice(
            ["flip", "length", "type", "magic", "truncate", "duplicate", "splice", "garbage"]
        )
        packets = _packet_indexes(said)
        if kind in ("length", "type", "magic") and packets:
            i = rng.choice(packets)
            magic, ptype, size = HEADER.unpack_from(said[i])
            if kind == "length":
                size = rng.choice([0, max(size - 1, 0), size + 1, 2**31, 2**32 - 1, 64 << 20])
                size = size if rng.random() < 0.8 else rng.randrange(2**32)
            elif kind == "type":
                ptype = rng.choice([0, 43, 44, 2**31, 2**32 - 1, rng.randrange(1, 43)])
            else:
                magic = rng.choice([b"\0RES", b"\0req", b"\0\0\0\0", rng.randbytes(4)])
            said[i] = HEADER.pack(magic, ptype, size & 0xFFFFFFFF) + said[i][12:]
        elif kind == "flip":
            flipped = bytearray(b"".join(said))
            if flipped:
                for _ in range(rng.randrange(1, 4)):
                    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            said = [bytes(flipped)]
        elif kind == "truncate":
            data = b"".join(said)
            said = [data[: rng.randrange(len(data) + 1)]]
        elif kind == "duplicate" and said:
            i = rng.randrange(len(said))
            said[i:i] = [said[i]] * rng.randrange(1, 4)
        elif kind == "splice":
            mine, theirs = b"".join(said), b"".join(other)
            said = [mine[: rng.randrange(len(mine) + 1)], theirs[rng.randrange(len(theirs) + 1) :]]
        else:
            garbage = rng.choice(
                [rng.randbytes(rng.randrange(1, 32)), b"\0" + rng.randbytes(11), b"x" * 9000]
            )
            said.insert(rng.randrange(len(said) + 1), garbage)
    return said


def chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` split into reads: whole, byte by byte (up to 4 KiB), or at random points.

    (A long stream is never cut into single bytes: besides taking long to send, a
    list of a million one-byte objects would move glibc's mmap threshold, and the
    later tests in this process would allocate their large buffers differently.)
    """
    style = rng.random()
    if style < 0.3 or len(data) < 2:
        return [data]
    if style < 0.4 and len(data) <= 4096:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 8))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]
