"""Long admin listings are produced a slice at a time, and stay consistent."""

from __future__ import annotations

from trio_gearman._proto._codec import TextLine, encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    GrabJob,
    JobCreated,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._proto.server.listing import SLICE_BYTES, SLICE_ROWS, Listing

from .test_server_state_harness import Harness, Peer, handle

N = SLICE_ROWS * 2 + 7


def _queue(harness: Harness, count: int) -> Peer:
    client = harness.connect()
    for i in range(count):
        client.send(SubmitJob(b"f", b"u%d" % i, b"x", background=True))
    client.raw()
    return client


def _finish(harness: Harness, peer: Peer) -> tuple[bytes, int]:
    """Ask for the rest of ``peer``'s listing; its bytes and the number of slices."""
    data = b""
    slices = 0
    while peer.conn.listing is not None:
        harness.state.continue_listing(peer.conn, harness.now)
        data += peer.raw()
        slices += 1
    return data, slices


def test_a_long_listing_comes_in_slices_and_lists_each_job_once() -> None:
    harness = Harness()
    _queue(harness, N)
    admin = harness.connect()
    first = admin.admin(b"show jobs")
    assert first.count(b"\n") == SLICE_ROWS
    assert not first.endswith(b".\n")
    assert admin.conn.listing is not None
    rest, slices = _finish(harness, admin)
    assert slices == 2
    expected = b"".join(b"%s\t0\t0\t1\n" % handle(i) for i in range(1, N + 1)) + b".\n"
    assert first + rest == expected


def test_a_slice_ends_after_about_slice_bytes() -> None:
    rows = [b"x" * 1000] * 200
    listing = Listing(rows, lambda row: row + b"\n")
    chunk, done = listing.next_slice()
    assert not done
    assert SLICE_BYTES <= len(chunk) < SLICE_BYTES + 1001


def test_later_requests_wait_for_the_listing_and_others_are_served() -> None:
    harness = Harness()
    _queue(harness, N)
    admin, other = harness.connect(), harness.connect()
    admin.admin(b"show unique jobs")
    admin.send(EchoReq(b"after"), TextLine(b"version"))
    assert admin.raw() == b""  # waits behind the listing
    assert other.request(EchoReq(b"now")) == [EchoRes(b"now")]
    harness.state.continue_listing(admin.conn, harness.now)
    harness.state.continue_listing(admin.conn, harness.now)  # the last slice
    assert admin.conn.listing is None
    tail = admin.raw()
    assert tail.startswith(b"u%d\nu%d\n" % (SLICE_ROWS, SLICE_ROWS + 1))
    version = b"OK " + harness.state.config.version + b"\n"
    assert tail.endswith(b"u%d\n.\n" % (N - 1) + encode(EchoRes(b"after")) + version)
    harness.state.continue_listing(admin.conn, harness.now)  # nothing left: no-op
    assert admin.raw() == b""


def test_jobs_that_end_meanwhile_are_left_out_and_new_ones_not_listed() -> None:
    harness = Harness()
    client = _queue(harness, N)
    admin = harness.connect()
    admin.admin(b"show jobs")
    worker = harness.worker(b"f")
    for _ in range(3):  # the three oldest jobs end; the last job is not listed yet
        worker.send(GrabJob())
    worker.raw()
    for i in (1, 2, 3):
        worker.send(WorkComplete(handle(i), b""))
    harness.state.cancel_job(handle(N))
    client.send(SubmitJob(b"f", b"new", b"x", background=True))
    rest, _ = _finish(harness, admin)
    assert handle(N) + b"\t" not in rest  # gone before its slice was formatted
    assert handle(N + 1) + b"\t" not in rest  # submitted after the command
    assert rest.endswith(b"%s\t0\t0\t1\n.\n" % handle(N - 1))


def test_every_long_listing_is_sliced() -> None:
    harness = Harness()
    for i in range(N):
        harness.worker(b"f%d" % i)
    admin = harness.connect()
    for command, lines in (
        (b"status", N),
        (b"prioritystatus", N),
        (b"workers", N + 1),
    ):
        first = admin.admin(command)
        assert admin.conn.listing is not None, command
        rest, _ = _finish(harness, admin)
        whole = first + rest
        assert whole.count(b"\n") == lines + 1, command
        assert whole.endswith(b"\n.\n")


def test_rows_gone_meanwhile_are_skipped_in_status_and_workers() -> None:
    harness = Harness()
    workers = [harness.worker(b"f%d" % i) for i in range(N)]
    admin = harness.connect()
    first = admin.admin(b"status")
    workers[-1].close()  # its function is forgotten
    rest, _ = _finish(harness, admin)
    assert b"f%d\t" % (N - 1) not in rest
    assert (first + rest).count(b"\n") == N
    first = admin.admin(b"prioritystatus")
    workers[-2].close()
    rest, _ = _finish(harness, admin)
    assert b"f%d\t" % (N - 2) not in rest
    assert (first + rest).count(b"\n") == N - 1
    first = admin.admin(b"workers")
    workers[-3].close()
    rest, _ = _finish(harness, admin)
    assert b" f%d\n" % (N - 3) not in rest
    assert (first + rest).count(b"\n") == N - 2 + 1


def test_a_connection_that_goes_away_drops_its_listing() -> None:
    harness = Harness()
    _queue(harness, N)
    admin = harness.connect()
    admin.admin(b"show jobs")
    admin.send(CanDo(b"g"))
    admin.close()
    assert admin.conn.listing is None
    assert harness.state.get_function(b"g") is None  # the paused CAN_DO never ran


def test_a_closing_connection_gets_no_more_slices() -> None:
    harness = Harness()
    _queue(harness, N)
    admin = harness.connect()
    admin.admin(b"show jobs")
    admin.conn.closing = True
    harness.state.continue_listing(admin.conn, harness.now)
    assert admin.conn.listing is None
    assert admin.raw() == b""


def test_a_listing_behind_store_acks_waits_for_them_then_holds_up_what_follows() -> None:
    harness = Harness(durable=True)
    state = harness.state
    client = harness.connect()
    for i in range(N):
        client.send(SubmitJob(b"f", b"", b"%d" % i, background=True))
    while (write := state.take_store_write()) is not None:
        state.store_written(write, harness.now)
    client.raw()
    # One more durable job: what the connection sends next waits for its commit.
    client.send(SubmitJob(b"f", b"", b"last", background=True))
    client.send(TextLine(b"show unique jobs"), EchoReq(b"after"))
    assert client.raw() == b""
    write = state.take_store_write()
    assert write is not None
    state.store_written(write, harness.now)
    assert client.conn.listing is not None  # the listing started, the ECHO waits behind it
    created = encode(JobCreated(handle(N + 1)))
    first = client.raw()
    assert first.startswith(created)
    assert first[len(created) :].count(b"\n") == SLICE_ROWS
    rest, _ = _finish(harness, client)
    assert rest.endswith(b"\n.\n" + encode(EchoRes(b"after")))
    assert (first[len(created) :] + rest).count(b"\n") == N + 1 + 1
