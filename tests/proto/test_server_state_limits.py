"""Limits of the server state: function-name length, and functions forgotten when unused."""

from __future__ import annotations

import pytest

from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    CantDo,
    Error,
    GrabJob,
    JobCreated,
    Message,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
)

from .test_server_state_harness import Harness, handle

LONG = b"f" * 8193
TOO_LARGE = Error(b"ARGUMENT_TOO_LARGE", b"Function name longer than 8192 bytes")


@pytest.mark.parametrize(
    "message",
    [
        CanDo(LONG),
        CanDoTimeout(LONG, 5),
        CantDo(LONG),
        SubmitJob(LONG, b"", b"x"),
        SubmitJob(LONG, b"", b"x", background=True),
        SubmitReduceJob(LONG, b"", b"r", b"", b"x"),
        SubmitJobEpoch(LONG, b"", 0, b"x"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_a_function_name_over_the_limit_is_refused(message: Message) -> None:
    harness = Harness()
    peer = harness.connect()
    assert peer.request(message) == [TOO_LARGE]
    assert list(harness.state.functions) == []
    assert harness.state.jobs_queued == 0
    assert not peer.conn.closing  # the connection goes on
    assert peer.request(CanDo(b"f" * 8192)) == []
    assert [f.name for f in harness.state.functions] == [b"f" * 8192]


def test_the_limit_is_a_setting() -> None:
    harness = Harness(max_function_name=3)
    peer = harness.connect()
    assert peer.request(SubmitJob(b"abc", b"", b"x", background=True)) == [JobCreated(handle(1))]
    assert peer.request(SubmitJob(b"abcd", b"", b"x", background=True)) == [
        Error(b"ARGUMENT_TOO_LARGE", b"Function name longer than 3 bytes")
    ]
    admin = harness.connect()
    refusal = b"ERR ARGUMENT_TOO_LARGE Function+name+longer+than+3+bytes\r\n"
    assert admin.admin(b"create function abcd") == refusal
    assert admin.admin(b"drop function abcd") == refusal
    assert admin.admin(b"maxqueue abcd 5") == refusal
    assert [f.name for f in harness.state.functions] == [b"abc"]


def test_many_names_registered_then_dropped_leave_nothing() -> None:
    harness = Harness()
    worker = harness.worker(*(b"f%d" % i for i in range(500)))
    assert len(list(harness.state.functions)) == 500
    worker.close()
    assert list(harness.state.functions) == []
    worker = harness.worker(b"a", b"b")
    worker.send(CantDo(b"a"))
    assert [f.name for f in harness.state.functions] == [b"b"]


def test_a_function_is_kept_while_anything_needs_it() -> None:
    harness = Harness()
    admin = harness.connect()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    assert harness.state.get_function(b"f") is not None  # a queued job
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    worker.send(CantDo(b"f"))  # its running job goes back to the queue
    assert harness.state.get_function(b"f") is not None
    worker.send(CanDo(b"f"), GrabJob(), WorkComplete(handle(1), b""))
    assert admin.admin(b"maxqueue f 3") == b"OK\r\n"
    worker.close()
    assert harness.state.get_function(b"f") is not None  # a maxqueue limit
    assert admin.admin(b"maxqueue f") == b"OK\r\n"
    assert harness.state.get_function(b"f") is None
    assert admin.admin(b"create function f") == b"OK\r\n"
    assert admin.admin(b"status") == b"f\t0\t0\t0\n.\n"  # pinned until dropped
    assert admin.admin(b"drop function f") == b"OK\r\n"
    assert harness.state.get_function(b"f") is None


def test_a_forgotten_function_comes_back_fresh() -> None:
    harness = Harness(metrics=True)
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    first = harness.state.get_function(b"f")
    assert first is not None
    assert first.stats is not None
    assert first.stats.submitted[4] == 1
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b""))
    worker.close()
    assert harness.state.get_function(b"f") is None  # its counters went with it
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    again = harness.state.get_function(b"f")
    assert again is not None
    assert again is not first
    assert again.stats is not None
    assert again.stats.submitted[4] == 1
