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
    SetClientId,
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


# --- names that would forge admin lines ---------------------------------------------------

BAD_NAME = Error(b"INVALID_FUNCTION_NAME", b"Function name with a space or control byte")
BAD_ID = Error(b"INVALID_ARGUMENT", b"Client id with a control byte")
FORGED = [
    b"f\n9 6.6.6.6 fake : evil",
    b"f\t5\t5\t5",
    b"f\r",
    b"f\0g",
    b"f\x1b[2J",
    b"f\x7f",
    b"f g",
]


@pytest.mark.parametrize("name", FORGED)
def test_a_function_name_with_a_control_byte_or_space_is_refused(name: bytes) -> None:
    harness = Harness()
    peer = harness.connect()
    messages: list[Message] = [
        CanDo(name),
        CanDoTimeout(name, 5),
        CantDo(name),
        SubmitJob(name, b"", b"x"),
        SubmitJob(name, b"u", b"x", background=True),
        SubmitReduceJob(name, b"", b"r", b"", b"x"),
        SubmitJobEpoch(name, b"", 0, b"x"),
    ]
    for message in messages:
        assert peer.request(message) == [BAD_NAME], message
    assert list(harness.state.functions) == []
    assert harness.state.jobs_queued == 0
    admin = harness.connect()
    refusal = b"ERR INVALID_FUNCTION_NAME Function+name+with+a+space+or+control+byte\r\n"
    if b" " not in name and b"\0" not in name:  # an admin word ends at either
        for command in (b"create function ", b"drop function ", b"maxqueue "):
            assert admin.admin(command + name) == refusal, command


@pytest.mark.parametrize("client_id", [b"w\n9 6.6.6.6 fake :", b"w\t", b"w\r", b"w\0x", b"w\x01"])
def test_a_client_id_with_a_control_byte_is_refused(client_id: bytes) -> None:
    harness = Harness()
    peer = harness.connect()
    assert peer.request(SetClientId(b"web 1")) == []  # spaces are fine
    assert peer.request(SetClientId(client_id)) == [BAD_ID]
    assert peer.conn.client_id == b"web 1"


def test_admin_listings_have_exactly_the_lines_expected_after_forgery_attempts() -> None:
    harness = Harness()
    worker = harness.connect()
    worker.send(SetClientId(b"w-1\n99 6.6.6.6 fake : evil"), SetClientId(b"w-1"), CanDo(b"resize"))
    for name in FORGED:
        worker.send(CanDo(name), SubmitJob(name, b"", b"x", background=True))
    client = harness.connect()
    client.send(SubmitJob(b"resize", b"", b"x", background=True))
    admin = harness.connect()
    assert admin.admin(b"status") == b"resize\t1\t0\t1\n.\n"
    fds = [peer.conn.fd for peer in (worker, client, admin)]
    assert admin.admin(b"workers") == (
        b"%d 127.0.0.1 w-1 : resize\n%d 127.0.0.1 - :\n%d 127.0.0.1 - :\n.\n" % tuple(fds)
    )


def test_refused_names_are_kept_for_the_log_within_a_bound() -> None:
    harness = Harness()
    peer = harness.connect(b"10.0.0.9")
    peer.send(CanDo(b"a\tb"), SetClientId(b"x\ny"), SubmitJob(LONG, b"", b"x"))
    refusals, unlogged = harness.state.take_refusals()
    assert unlogged == 0
    assert [r.peer for r in refusals] == [b"10.0.0.9"] * 3
    assert refusals[0].text == (
        "function name 'a\\tb' (3 bytes) refused: Function name with a space or control byte"
    )
    assert refusals[1].text == "client id 'x\\ny' (3 bytes) refused: Client id with a control byte"
    assert refusals[2].text.startswith("function name '" + "f" * 64 + "'... (8193 bytes) refused")
    assert harness.state.take_refusals() == ([], 0)
    for _ in range(150):
        peer.send(CanDo(b"a b"))
    refusals, unlogged = harness.state.take_refusals()
    assert (len(refusals), unlogged) == (100, 50)
