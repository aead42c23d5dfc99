"""Hypothesis strategies for hostile byte streams on a job server's port.

A stream is a list of pieces: valid request packets of every kind (with fields drawn
from small alphabets, so that submissions, workers and results meet), any message at
all (``tests/proto/strategies.py``), mutated packets (flipped bytes, a wrong length,
a wrong type, truncated, wrong magic, doubled, spliced), admin text lines (real
commands with random arguments, too many words, over-long lines) and garbage.
"""

from __future__ import annotations

import os
import struct
from typing import Final, TypeVar

from hypothesis import strategies as st

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
    Magic,
    Message,
    OptionReq,
    PreSleep,
    Priority,
    ResetAbilities,
    SetClientId,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
    encode,
)

from ..proto.strategies import ARG, messages

__all__ = [
    "EXAMPLES",
    "PREFIX",
    "WALL",
    "Piece",
    "admin_lines",
    "client_requests",
    "fuzz_examples",
    "mutated_packets",
    "pieces",
    "requests",
    "session_pieces",
    "streams",
    "valid_packets",
    "worker_requests",
]

T = TypeVar("T")

EXAMPLES: Final = "TRIO_GEARMAN_FUZZ_EXAMPLES"
"""The environment variable that sets how many examples each fuzz test runs."""

PREFIX: Final = b"H:fuzz"
"""The job handle prefix of the fuzzed server states."""
WALL: Final = 1_800_000_000
"""The wall-clock time (seconds since the epoch) of the fuzzed server states."""


def fuzz_examples(default: int) -> int:
    """How many examples a fuzz test runs: ``default``, or ``$TRIO_GEARMAN_FUZZ_EXAMPLES``."""
    value = os.environ.get(EXAMPLES, "")
    return int(value) if value else default


def weighted(*choices: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of several strategies, each drawn with the given relative weight.

    (``st.one_of`` draws its branches alike, and merges a branch given twice.)
    """
    return st.sampled_from([s for weight, s in choices for _ in range(weight)]).flatmap(
        lambda strategy: strategy
    )


FUNCTIONS: Final = weighted(
    (6, st.sampled_from([b"a", b"a", b"b"])), (1, st.sampled_from([b"c", b""])), (1, ARG)
)
UNIQUES: Final = weighted(
    (8, st.sampled_from([b"", b"", b"-", b"u1", b"u2"])),
    (1, st.integers(60, 70).map(lambda n: b"u" * n)),  # around the 64-byte limit
    (1, ARG),
)
HANDLES: Final = weighted(
    (6, st.integers(1, 8).map(lambda n: PREFIX + b":%d" % n)),
    (1, st.sampled_from([PREFIX + b":1\0", b"", b"H:" + b"x" * 70])),
    (1, ARG),
)
PAYLOADS: Final = st.one_of(st.sampled_from([b"", b"x", b"y"]), st.binary(max_size=32))
NUMBERS: Final = st.one_of(
    st.sampled_from([0, 1, 1500, 2**31, 2**63 - 1]), st.integers(-(2**63), 2**63 - 1)
)
EPOCHS: Final = st.one_of(
    st.sampled_from([0, WALL - 10, WALL + 1, WALL + 3, WALL + 10**6]),
    st.integers(0, 2**63 - 1),
)


def client_requests() -> st.SearchStrategy[Message]:
    """Requests as clients send them."""
    submit = st.builds(
        SubmitJob, FUNCTIONS, UNIQUES, PAYLOADS, st.sampled_from(Priority), st.booleans()
    )
    return weighted(
        (8, submit),
        (1, st.builds(SubmitReduceJob, FUNCTIONS, UNIQUES, ARG, ARG, PAYLOADS, st.booleans())),
        (2, st.builds(SubmitJobEpoch, FUNCTIONS, UNIQUES, EPOCHS, PAYLOADS)),
        (1, st.builds(SubmitJobSched, FUNCTIONS, UNIQUES, ARG, ARG, ARG, ARG, ARG, PAYLOADS)),
        (2, st.builds(GetStatus, HANDLES)),
        (1, st.builds(GetStatusUnique, UNIQUES)),
        (1, st.builds(EchoReq, PAYLOADS)),
        (1, st.builds(OptionReq, st.one_of(st.sampled_from([b"exceptions", b"X"]), ARG))),
        (1, st.builds(SetClientId, st.one_of(PAYLOADS, st.just(b"c" * 200)))),
    )


def worker_requests() -> st.SearchStrategy[Message]:
    """Requests as workers send them, their results naming the handles of early jobs."""
    return weighted(
        (4, st.builds(CanDo, FUNCTIONS)),
        (1, st.builds(CanDoTimeout, FUNCTIONS, NUMBERS)),
        (1, st.builds(CantDo, FUNCTIONS)),
        (6, st.sampled_from([PreSleep(), GrabJob(), GrabJobUniq(), GrabJobAll()])),
        (1, st.just(ResetAbilities())),
        (1, st.builds(WorkData, HANDLES, PAYLOADS)),
        (1, st.builds(WorkWarning, HANDLES, PAYLOADS)),
        (1, st.builds(WorkStatus, HANDLES, NUMBERS, NUMBERS)),
        (4, st.builds(WorkComplete, HANDLES, PAYLOADS)),
        (1, st.builds(WorkFail, HANDLES)),
        (1, st.builds(WorkException, HANDLES, PAYLOADS)),
    )


def requests() -> st.SearchStrategy[Message]:
    """Requests as clients and workers send them, with fields that meet each other."""
    return st.one_of(client_requests(), worker_requests())


def valid_packets() -> st.SearchStrategy[bytes]:
    """Well-formed packets: mostly requests, some of any kind and either magic."""
    return weighted(
        (6, requests().map(encode)),
        (1, requests().map(lambda m: encode(m, Magic.RES))),
        (
            1,
            st.tuples(messages(), st.sampled_from([None, Magic.REQ, Magic.RES])).map(
                lambda pair: encode(*pair)
            ),
        ),
    )


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    """A valid packet broken in one way."""
    packet = bytearray(draw(valid_packets()))
    kind = draw(
        st.sampled_from(
            ["flip", "length", "type", "magic", "truncate", "double", "splice", "insert"]
        )
    )
    if kind == "flip":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(packet) - 1))
            packet[at] ^= 1 << draw(st.integers(0, 7))
    elif kind == "length":
        size = len(packet) - 12
        declared = draw(
            st.one_of(
                st.sampled_from([0, max(size - 1, 0), size + 1, 2**31, 2**32 - 1]),
                st.integers(0, 2**32 - 1),
            )
        )
        packet[8:12] = struct.pack(">I", declared)
    elif kind == "type":
        ptype = draw(st.one_of(st.integers(0, 50), st.sampled_from([2**31, 2**32 - 1])))
        packet[4:8] = struct.pack(">I", ptype)
    elif kind == "magic":
        packet[0:4] = draw(
            st.one_of(
                st.sampled_from([b"\0REs", b"\0req", b"\0\0\0\0", b"REQ\0", b"\0RE\n"]),
                st.binary(min_size=4, max_size=4),
            )
        )
    elif kind == "truncate":
        del packet[draw(st.integers(0, len(packet) - 1)) :]
    elif kind == "double":
        packet += bytes(packet)
    elif kind == "splice":
        other = draw(valid_packets())
        packet[draw(st.integers(0, len(packet))) :] = other[draw(st.integers(0, len(other))) :]
    else:
        at = draw(st.integers(0, len(packet)))
        packet[at:at] = draw(st.binary(min_size=1, max_size=8))
    return bytes(packet)


_ADMIN_WORDS: Final = [
    b"status",
    b"prioritystatus",
    b"workers",
    b"show jobs",
    b"show unique jobs",
    b"cancel job",
    b"create function",
    b"drop function",
    b"maxqueue",
    b"version",
    b"getpid",
    b"verbose",
    b"shutdown",
    b"shutdown graceful",
]
_ADMIN_ARGS: Final = st.one_of(
    st.sampled_from([b"a", b"b", b"c", PREFIX + b":1", PREFIX + b":2", b"-1", b"0", b"5"]),
    st.integers(-(2**70), 2**70).map(lambda n: b"%d" % n),
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")),
)


@st.composite
def admin_lines(draw: st.DrawFn) -> bytes:
    """An admin text line with its terminator (``\\n`` or ``\\r\\n``)."""
    kind = draw(st.sampled_from(["command", "command", "command", "random", "long"]))
    if kind == "command":
        words = [draw(st.sampled_from(_ADMIN_WORDS))]
        words += draw(st.lists(_ADMIN_ARGS, max_size=6))
        line = draw(st.sampled_from([b" ", b"  ", b"\t"])).join(words)
    elif kind == "random":
        line = draw(st.binary(min_size=1, max_size=40)).replace(b"\n", b" ")
        if line[:1] == b"\0":
            line = b"x" + line  # a NUL first would start a binary packet
    else:
        line = b"status " + b"x" * draw(st.sampled_from([8185, 8186, 8200]))
    return line + draw(st.sampled_from([b"\n", b"\r\n"]))


class Piece(bytes):
    """Bytes whose repr is short: runs of one byte are written ``b"x" * 8186``.

    Hypothesis prints a failing example's arguments; an 8 KiB admin line would make
    that unreadable (and hypothesis warns about it).
    """

    def __repr__(self) -> str:
        parts: list[str] = []
        literal = bytearray()
        i = 0
        while i < len(self):
            run = i
            while run < len(self) and self[run] == self[i]:
                run += 1
            if run - i >= 16:
                if literal:
                    parts.append(repr(bytes(literal)))
                    literal.clear()
                parts.append(f"{bytes(self[i : i + 1])!r} * {run - i}")
            else:
                literal += self[i:run]
            i = run
        if literal or not parts:
            parts.append(repr(bytes(literal)))
        return " + ".join(parts)


_PIECES: Final = weighted(
    (6, valid_packets()),
    (3, mutated_packets()),
    (1, admin_lines()),
    # Garbage: starting with a NUL it is a broken packet, else an admin line so far.
    (1, st.binary(min_size=1, max_size=48)),
    (1, st.binary(max_size=48).map(lambda garbage: b"\0" + garbage)),
)


@st.composite
def pieces(draw: st.DrawFn) -> Piece:
    """One piece of a stream: a packet, valid or broken, an admin line, or garbage."""
    # A composite, so that hypothesis names it in one word instead of printing the tree.
    return Piece(draw(_PIECES))


def streams(max_pieces: int = 8) -> st.SearchStrategy[bytes]:
    """Several pieces, joined."""
    return st.lists(pieces(), min_size=1, max_size=max_pieces).map(lambda p: Piece(b"".join(p)))


_VALID: Final = valid_packets()
_CLIENT: Final = client_requests().map(encode)
_WORKER: Final = worker_requests().map(encode)


@st.composite
def session_pieces(draw: st.DrawFn) -> list[Piece]:
    """What one connection sends: a client's, a worker's or anyone's requests, mostly
    well formed; a hostile session mixes in broken packets, admin lines and garbage."""
    role = draw(st.sampled_from(["worker", "client", "worker", "client", "anyone"]))
    valid = {"client": _CLIENT, "worker": _WORKER, "anyone": _VALID}[role]
    said: list[bytes] = []
    if role == "worker":
        # A worker says what it can do first, as real ones do.
        functions = draw(st.lists(st.sampled_from([b"a", b"b"]), min_size=1, max_size=2))
        said += [encode(CanDo(function)) for function in functions]
    if draw(st.integers(0, 2)):  # two sessions in three are clean
        piece = weighted((8, valid), (1, admin_lines()), (1, valid_packets()))
    else:
        piece = _PIECES
    said += draw(st.lists(piece, min_size=3, max_size=12))
    return [Piece(data) for data in said]
