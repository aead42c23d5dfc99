"""A result that many waiters share is encoded once: its payload is never copied per waiter."""

from __future__ import annotations

import tracemalloc

from trio_gearman._proto._packets import (
    GrabJob,
    JobAssign,
    JobCreated,
    OptionReq,
    OptionRes,
    SubmitJob,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
)

from .test_server_state_harness import Harness, handle

MIB = 1 << 20


def test_a_shared_result_is_not_copied_per_waiter() -> None:
    harness = Harness()
    clients = [harness.connect() for _ in range(200)]
    for client in clients:
        client.send(SubmitJob(b"f", b"same", b"x"))
        assert client.received() == [JobCreated(handle(1))]
    worker = harness.worker(b"f")
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", b"x")]
    result = WorkComplete(handle(1), b"r" * MIB)
    tracemalloc.start()
    try:
        worker.send(result)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Copied, 200 waiters would take 200 MiB; shared, a few bytes each.
    assert peak < 4 * MIB
    for client in clients:
        assert client.conn.pending_output == 12 + len(handle(1)) + 1 + MIB
        assert client.received() == [result]


def test_a_connection_that_waits_twice_gets_the_result_twice_in_order() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"same", b"x"), SubmitJob(b"f", b"same", b"x"))
    assert client.received() == [JobCreated(handle(1))] * 2
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    big = b"d" * 5000
    worker.send(WorkData(handle(1), b"small"), WorkData(handle(1), big))
    worker.send(WorkData(handle(1), b"tiny"), WorkComplete(handle(1), big))
    # One packet per submission, as gearmand sends them; the big ones are shared.
    assert client.conn.shared_size > 4 * len(big)  # the four big payloads, not copied
    assert client.received() == [
        WorkData(handle(1), b"small"),
        WorkData(handle(1), b"small"),
        WorkData(handle(1), big),
        WorkData(handle(1), big),
        WorkData(handle(1), b"tiny"),
        WorkData(handle(1), b"tiny"),
        WorkComplete(handle(1), big),
        WorkComplete(handle(1), big),
    ]
    assert client.conn.shared is None
    assert client.conn.pending_output == 0


def test_an_exception_is_shared_by_those_who_asked_and_a_fail_goes_to_the_others() -> None:
    harness = Harness()
    asked, plain = harness.connect(), harness.connect()
    assert asked.request(OptionReq(b"exceptions")) == [OptionRes(b"exceptions")]
    for client in (asked, plain, asked):
        client.send(SubmitJob(b"f", b"same", b"x"))
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    asked.received()
    plain.received()
    worker.send(WorkException(handle(1), b"e" * 5000))
    assert asked.received() == [WorkException(handle(1), b"e" * 5000)] * 2
    assert plain.received() == [WorkFail(handle(1))]


def test_output_with_shared_buffers_is_consumed_in_order() -> None:
    harness = Harness()
    conn = harness.connect().conn
    conn.outgoing += b"ab"
    conn.share(b"cdef")
    conn.outgoing += b"gh"
    assert conn.pending_output == 8
    assert b"".join(conn.output_buffers()) == b"abcdefgh"
    conn.consume_output(0)
    conn.consume_output(3)  # a partial buffer
    assert b"".join(conn.output_buffers()) == b"defgh"
    conn.consume_output(4)  # the shared buffers, and part of outgoing
    assert conn.shared is None
    assert b"".join(conn.output_buffers()) == b"h"
    conn.consume_output(1)  # no shared buffers
    assert conn.pending_output == 0
    conn.outgoing += b"h"
    conn.share(b"i" * 10)
    for _ in range(100):  # more buffers than one call gives
        conn.share(b"j")
    buffers = conn.output_buffers()
    assert conn.outgoing not in buffers
    conn.consume_output(sum(len(b) for b in buffers))
    assert b"".join(conn.output_buffers()) == b"j" * (100 - (len(buffers) - 2))
    conn.clear_output()
    assert conn.pending_output == 0
    assert conn.shared is None
