"""Explicit examples for branches of the sans-IO layer that other tests reach only by chance.

Each test names the behaviour it pins down; together they keep branch coverage of
``trio_gearman/_proto`` complete without relying on what hypothesis happens to draw.
"""

from __future__ import annotations

import tracemalloc

import pytest

from trio_gearman._exceptions import BadAdminReply, UnknownPacketType
from trio_gearman._proto import Decoder, Magic, encode
from trio_gearman._proto._admin import (
    NEED_DATA,
    OK_REPLY,
    PRIORITY_STATUS_REPLY,
    SHOW_UNIQUE_JOBS_REPLY,
    TEXT_REPLY,
    FunctionPriorityStatus,
    ReplyParser,
)
from trio_gearman._proto._packets import (
    EchoReq,
    Error,
    GrabJob,
    JobAssign,
    JobCreated,
    Message,
    NoJob,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
    WorkException,
)

from .test_server_state_harness import Harness, Peer, handle


def _grab(worker: Peer) -> Message:
    (reply,) = worker.request(GrabJob())
    return reply


# --- the admin reply parser -------------------------------------------------------------------


def test_admin_prioritystatus_line_with_too_few_columns_is_a_bad_reply() -> None:
    parser = ReplyParser()
    parser.feed(b"f\t1\t2\t3\n.\n")
    with pytest.raises(BadAdminReply, match="expected FUNCTION, HIGH, NORMAL, LOW, WORKERS"):
        parser.next_reply(PRIORITY_STATUS_REPLY)
    good = ReplyParser()
    good.feed(b"f\t1\t2\t3\t4\n.\n")
    assert good.next_reply(PRIORITY_STATUS_REPLY) == [FunctionPriorityStatus(b"f", 1, 2, 3, 4)]


def test_admin_ok_reply_that_is_not_ok_is_a_bad_reply() -> None:
    parser = ReplyParser()
    parser.feed(b"KO\r\n")
    with pytest.raises(BadAdminReply, match="expected OK"):
        parser.next_reply(OK_REPLY)
    with pytest.raises(BadAdminReply):  # the parser stays broken
        parser.next_reply(OK_REPLY)


def test_admin_text_reply_of_a_bare_ok_is_an_empty_value() -> None:
    parser = ReplyParser()
    parser.feed(b"OK\r\nOK 1.1.20\n")
    assert parser.next_reply(TEXT_REPLY) == b""
    assert parser.next_reply(TEXT_REPLY) == b"1.1.20"
    assert parser.buffered == 0


def test_admin_reply_buffer_is_compacted_after_64_kib() -> None:
    # Every chunk ends in the middle of a line, so the buffer is never drained whole:
    # only compaction keeps it from holding every byte ever fed.
    line = b"u" * 999 + b"\n"
    listing = line * 20 + b".\n"  # 20 KB
    chunk = listing * 4
    rounds = 40  # 3.2 MB in all
    parser = ReplyParser()
    parser.feed(b"uuu")
    replies = 0
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(rounds):
            parser.feed(chunk[3:] + b"uuu")
            while (reply := parser.next_reply(SHOW_UNIQUE_JOBS_REPLY)) is not NEED_DATA:
                assert reply == [b"u" * 999] * 20
                replies += 1
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert replies == rounds * 4
    assert parser.buffered == 3  # the start of the next line
    assert after - before < 1_000_000, after - before


# --- the binary decoder ---------------------------------------------------------------------


def test_decoder_keeps_undelivered_events_when_iteration_stops_early_then_decodes_more() -> None:
    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(encode(EchoReq(b"1"), Magic.REQ) + encode(EchoReq(b"2"), Magic.REQ))
    first = iter(decoder)
    assert next(first) == EchoReq(b"1")
    del first  # the consumer stops early: EchoReq(b"2") stays in the decoder
    decoder.feed(encode(EchoReq(b"3"), Magic.REQ))
    assert list(decoder) == [EchoReq(b"2"), EchoReq(b"3")]
    assert list(decoder) == []


def test_decoder_iteration_ending_late_keeps_events_a_newer_iteration_left() -> None:
    def echo(n: int) -> bytes:
        return encode(EchoReq(b"%d" % n), Magic.REQ)

    decoder = Decoder(expect=Magic.REQ)
    decoder.feed(echo(0) + echo(1))
    outer = iter(decoder)
    assert next(outer) == EchoReq(b"0")
    assert list(decoder) == [EchoReq(b"1")]  # an inner iteration drains the rest
    decoder.feed(echo(2) + echo(3))
    newer = iter(decoder)
    assert next(newer) == EchoReq(b"2")
    del newer  # stops early: EchoReq(b"3") waits in the decoder
    assert list(outer) == []  # the first iteration ends, and must not drop it
    assert list(decoder) == [EchoReq(b"3")]
    assert list(decoder) == []


# --- the job table ---------------------------------------------------------------------------


def test_cancelled_epoch_job_does_not_run_when_its_stale_timer_fires() -> None:
    harness = Harness()
    client = harness.connect()
    assert client.request(SubmitJobEpoch(b"f", b"", 1060, b"later")) == [JobCreated(handle(1))]
    assert harness.connect().admin(b"cancel job " + handle(1)) == b"OK\r\n"
    harness.advance(61)
    assert harness.state.jobs_queued == 0
    assert harness.state.get_job(handle(1)) is None
    assert _grab(harness.worker(b"f")) == NoJob()


def test_get_function_finds_a_known_function_and_none_for_an_unknown_one() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    function = harness.state.get_function(b"f")
    assert function is not None
    assert function.name == b"f"
    assert function.queued == 1
    assert harness.state.get_function(b"g") is None


def test_taking_the_last_live_job_drops_the_tombstones_behind_it() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(
        SubmitJob(b"f", b"", b"a", background=True), SubmitJob(b"f", b"", b"b", background=True)
    )
    assert harness.state.cancel_job(handle(2)) is True  # a tombstone behind job 1
    function = harness.state.get_function(b"f")
    assert function is not None
    queue = function.queues[1]
    assert queue is not None
    assert len(queue) == 2
    worker = harness.worker(b"f")
    assert _grab(worker) == JobAssign(handle(1), b"f", b"a")
    assert len(queue) == 0
    assert _grab(worker) == NoJob()


def test_grab_skips_a_tombstone_ahead_of_a_live_job() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(
        SubmitJob(b"f", b"", b"a", background=True), SubmitJob(b"f", b"", b"b", background=True)
    )
    assert harness.state.cancel_job(handle(1)) is True
    worker = harness.worker(b"f")
    assert _grab(worker) == JobAssign(handle(2), b"f", b"b")
    assert _grab(worker) == NoJob()


def test_finishing_a_cancelled_job_keeps_the_newer_job_coalesced_on_its_data() -> None:
    harness = Harness()
    client = harness.connect()
    submit = SubmitJob(b"f", b"-", b"x", background=True)
    assert client.request(submit) == [JobCreated(handle(1))]
    worker = harness.worker(b"f")
    assert _grab(worker) == JobAssign(handle(1), b"f", b"x")
    assert harness.state.cancel_job(handle(1)) is True
    # Job 1 no longer takes submissions of its data, so this one is a new job ...
    assert client.request(submit) == [JobCreated(handle(2))]
    worker.send(WorkComplete(handle(1), b""))
    assert harness.state.get_job(handle(1)) is None
    # ... and job 1 ending leaves job 2 as the one that data coalesces onto.
    assert client.request(submit) == [JobCreated(handle(2))]
    assert harness.state.jobs_queued == 1


# --- the model --------------------------------------------------------------------------------


def test_function_repr_shows_name_counts_and_running() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    function = harness.state.get_function(b"f")
    assert repr(function) == "<Function b'f' queued=[0, 1, 0] running=0>"


def test_connection_state_repr_shows_id_address_and_fd() -> None:
    harness = Harness()
    peer = harness.connect(b"10.0.0.7")
    conn = peer.conn
    assert repr(conn) == f"<ConnectionState {conn.id} b'10.0.0.7' fd={conn.fd}>"


# --- the server state -------------------------------------------------------------------------


def test_protocol_error_on_a_closing_connection_sends_nothing_more() -> None:
    harness = Harness()
    peer = harness.connect()
    harness.state.protocol_error(peer.conn, UnknownPacketType("first"), harness.now)
    assert peer.received() == [Error(b"INVALID_COMMAND", b"first")]
    assert peer.conn.closing
    harness.state.protocol_error(peer.conn, UnknownPacketType("second"), harness.now)
    assert peer.received() == []
    assert peer.conn.closing


def test_disconnecting_worker_requeues_its_running_job_for_another_worker() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    first = harness.worker(b"f")
    assert _grab(first) == JobAssign(handle(1), b"f", b"x")
    assert harness.state.jobs_running == 1
    first.close()
    assert harness.state.jobs_running == 0
    assert harness.state.jobs_queued == 1
    assert _grab(harness.worker(b"f")) == JobAssign(handle(1), b"f", b"x")


def test_work_exception_of_a_background_job_finishes_it_silently() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    assert client.received() == [JobCreated(handle(1))]
    worker = harness.worker(b"f")
    assert _grab(worker) == JobAssign(handle(1), b"f", b"x")
    worker.send(WorkException(handle(1), b"boom"))
    assert worker.received() == []
    assert client.received() == []
    assert harness.state.jobs_running == 0
    assert harness.state.get_job(handle(1)) is None
