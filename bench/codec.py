"""Throughput of the sans-IO codec: packets per second decoded and encoded.

Run from the repository root::

    python bench/codec.py            # best of 7 runs
    python bench/codec.py --runs 3

Each figure is the best of N runs (the least disturbed by the rest of the machine).
The decoder is fed 64 KiB chunks, as the connection layer reads them.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time
from collections.abc import Callable, Sequence

import attrs

from trio_gearman._proto import (
    COMPILED,
    CanDo,
    Decoder,
    GrabJobUniq,
    JobAssignUniq,
    Magic,
    Message,
    Noop,
    PreSleep,
    Priority,
    SubmitJob,
    WorkComplete,
    WorkStatus,
    encode,
    encode_into,
)

STREAM_SIZE = 1024 * 1024
CHUNK_SIZE = 64 * 1024


def submit_jobs() -> list[Message]:
    """SUBMIT_JOB packets with 16-byte payloads, 1 MiB of them on the wire."""
    message = SubmitJob(b"resize", b"", b"0123456789abcdef")
    count = STREAM_SIZE // len(encode(message)) + 1
    return [message] * count


def mixed() -> list[Message]:
    """A mix of small client and worker packets, 1 MiB of them on the wire."""
    cycle: list[Message] = [
        SubmitJob(b"resize", b"", b"0123456789abcdef"),
        SubmitJob(b"resize", b"u-1", b"payload", Priority.HIGH, background=True),
        SubmitJob(b"thumb", b"", b"x" * 40, Priority.LOW),
        JobAssignUniq(b"H:host:12345", b"resize", b"u-1", b"payload"),
        WorkComplete(b"H:host:12345", b"done"),
        GrabJobUniq(),
        PreSleep(),
        Noop(),
        WorkStatus(b"H:host:12345", 50, 100),
        CanDo(b"resize"),
    ]
    out: list[Message] = []
    size = 0
    for message in itertools.cycle(cycle):
        out.append(message)
        size += len(encode(message))
        if size >= STREAM_SIZE:
            return out
    raise AssertionError("unreachable")


def best_of(runs: int, work: Callable[[], object]) -> float:
    """The shortest wall time of ``runs`` calls of ``work``, in seconds."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def chunked(stream: bytes) -> list[bytes]:
    """``stream`` cut into 64 KiB reads."""
    return [stream[i : i + CHUNK_SIZE] for i in range(0, len(stream), CHUNK_SIZE)]


def decode_all(chunks: Sequence[bytes]) -> int:
    """Decode ``chunks`` with a fresh server-side decoder; return the event count."""
    decoder = Decoder(expect=Magic.REQ)
    count = 0
    for chunk in chunks:
        decoder.feed(chunk)
        for _ in decoder:
            count += 1
    return count


def bench_decode(messages: list[Message], runs: int) -> tuple[int, float]:
    """Packets and best seconds to decode ``messages`` sent with REQ magic."""
    stream = b"".join(encode(m, Magic.REQ) for m in messages)
    chunks = chunked(stream)
    if decode_all(chunks) != len(messages):
        raise AssertionError("the decoder lost packets")
    return len(messages), best_of(runs, lambda: decode_all(chunks))


def bench_encode(messages: list[Message], runs: int) -> tuple[int, float]:
    """Packets and best seconds to ``encode`` each message."""

    def work() -> None:
        for message in messages:
            encode(message)

    return len(messages), best_of(runs, work)


def bench_encode_into(messages: list[Message], runs: int) -> tuple[int, float]:
    """Packets and best seconds to ``encode_into`` one bytearray."""

    def work() -> None:
        buffer = bytearray()
        for message in messages:
            encode_into(buffer, message)

    return len(messages), best_of(runs, work)


# --- representation: what a frozen attrs message costs ------------------------------------


class PlainSubmit:
    """A SubmitJob-like class with ``__slots__`` and a hand-written ``__init__``."""

    __slots__ = ("background", "data", "function", "priority", "unique")

    def __init__(
        self, function: bytes, unique: bytes, data: bytes, priority: Priority, background: bool
    ) -> None:
        self.function = function
        self.unique = unique
        self.data = data
        self.priority = priority
        self.background = background


@attrs.define
class MutableSubmit:
    """A SubmitJob-like mutable attrs class with slots."""

    function: bytes
    unique: bytes
    data: bytes
    priority: Priority = Priority.NORMAL
    background: bool = False


def bench_construct(
    cls: Callable[[bytes, bytes, bytes, Priority, bool], object], runs: int
) -> tuple[int, float]:
    """Constructions and best seconds for ``cls`` with five positional arguments."""
    count = 200_000
    args = (b"resize", b"", b"0123456789abcdef", Priority.NORMAL, False)

    def work() -> None:
        for _ in range(count):
            cls(*args)

    return count, best_of(runs, work)


def machine() -> str:
    """CPU count, CPU model and Python version."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    python = f"{platform.python_implementation()} {platform.python_version()}"
    build = "compiled with mypyc" if COMPILED else "pure Python"
    return f"{os.cpu_count()} CPUs, {model}, {python}, trio_gearman {build}"


def main(argv: Sequence[str] | None = None) -> None:
    """Run every benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=7, help="runs per figure (best is kept)")
    args = parser.parse_args(argv)
    runs: int = args.runs

    print(f"machine: {machine()}")
    print(f"best of {runs} runs; decoder fed {CHUNK_SIZE // 1024} KiB chunks\n")
    jobs = submit_jobs()
    mix = mixed()
    rows: list[tuple[str, tuple[int, float]]] = [
        ("decode SUBMIT_JOB, 16 B payload (1 MiB)", bench_decode(jobs, runs)),
        ("decode mixed small packets (1 MiB)", bench_decode(mix, runs)),
        ("encode SUBMIT_JOB", bench_encode(jobs, runs)),
        ("encode_into SUBMIT_JOB, one bytearray", bench_encode_into(jobs, runs)),
        ("encode mixed", bench_encode(mix, runs)),
        ("encode_into mixed, one bytearray", bench_encode_into(mix, runs)),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'benchmark':<{width}}  {'packets':>8}  {'packets/s':>11}  {'ns/packet':>9}")
    for name, (count, seconds) in rows:
        rate = count / seconds
        print(f"{name:<{width}}  {count:>8}  {rate:>11,.0f}  {1e9 / rate:>9.0f}")

    print("\nconstructing one SubmitJob-like object (5 fields):")
    kinds: list[tuple[str, Callable[[bytes, bytes, bytes, Priority, bool], object]]] = [
        ("attrs frozen, slots (SubmitJob)", SubmitJob),
        ("attrs mutable, slots", MutableSubmit),
        ("plain class with __slots__", PlainSubmit),
    ]
    width = max(len(name) for name, _ in kinds)
    for name, cls in kinds:
        count, seconds = bench_construct(cls, runs)
        print(f"{name:<{width}}  {seconds / count * 1e9:>6.0f} ns")


if __name__ == "__main__":
    main()
