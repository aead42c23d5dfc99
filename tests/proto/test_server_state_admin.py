"""The job server state machine: admin text commands and their exact replies."""

from __future__ import annotations

import pytest

from trio_gearman._proto import TextLine
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    Error,
    GetStatus,
    GrabJob,
    JobCreated,
    NoJob,
    Priority,
    SetClientId,
    StatusRes,
    SubmitJob,
    WorkComplete,
    WorkFail,
)

from .admin_golden import ERROR_LINES
from .test_server_state_harness import Harness, handle


def test_status_counts_queued_running_and_workers() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(*(SubmitJob(b"resize", b"", b"%d" % i, background=True) for i in range(4)))
    client.send(SubmitJob(b"thumb", b"", b"t", background=True))
    harness.worker(b"resize", b"thumb").send(GrabJob())
    harness.worker(b"email")
    harness.worker(b"resize")
    admin = harness.connect()
    admin.admin(b"create function newfn")
    assert admin.admin(b"status") == (
        b"resize\t4\t1\t2\nthumb\t1\t0\t1\nemail\t0\t0\t1\nnewfn\t0\t0\t0\n.\n"
    )
    # Case-insensitive command word.
    assert admin.admin(b"STATUS") == admin.admin(b"status")


def test_functions_are_forgotten_once_their_jobs_and_workers_go() -> None:
    harness = Harness()
    worker = harness.worker(b"f")
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    worker.send(GrabJob(), WorkComplete(handle(1), b""))
    assert harness.connect().admin(b"status") == b"f\t0\t0\t1\n.\n"  # a worker needs it
    worker.close()
    assert harness.connect().admin(b"status") == b".\n"
    assert harness.state.get_function(b"f") is None


def test_prioritystatus_counts_waiting_jobs_per_priority() -> None:
    harness = Harness()
    client = harness.connect()
    for priority, count in ((Priority.HIGH, 1), (Priority.NORMAL, 2), (Priority.LOW, 3)):
        client.send(*(SubmitJob(b"f", b"", b"x", priority, True) for _ in range(count)))
    harness.worker(b"f").send(GrabJob())
    assert harness.connect().admin(b"prioritystatus") == b"f\t0\t2\t3\t1\n.\n"


def test_workers_lists_every_connection() -> None:
    harness = Harness()
    worker = harness.connect()
    worker.send(SetClientId(b"worker-A"), CanDo(b"resize"), CanDo(b"thumb"))
    client = harness.connect(b"::1")
    client.send(SubmitJob(b"resize", b"", b""))
    admin = harness.connect()
    # Functions in reverse registration order, as gearmand lists them.
    assert admin.admin(b"workers") == (
        b"11 127.0.0.1 worker-A : thumb resize\n12 ::1 - :\n13 127.0.0.1 - :\n.\n"
    )
    worker.close()
    assert admin.admin(b"workers") == b"12 ::1 - :\n13 127.0.0.1 - :\n.\n"


def test_show_jobs_and_show_unique_jobs() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(
        SubmitJob(b"f", b"img-1", b"", background=True),
        SubmitJob(b"f", b"", b""),
        SubmitJob(b"g", b"img-1", b""),
        SubmitJob(b"f", b"m-1", b""),
    )
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    worker.close()
    admin = harness.connect()
    assert admin.admin(b"show jobs") == (
        b"H:test:1\t1\t0\t1\nH:test:2\t0\t0\t0\nH:test:3\t0\t0\t0\nH:test:4\t0\t0\t0\n.\n"
    )
    assert admin.admin(b"show unique jobs") == b"img-1\n\nimg-1\nm-1\n.\n"


def test_show_jobs_flags_cancelled_and_abandoned_running_jobs() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"fg"), SubmitJob(b"f", b"", b"bg", background=True))
    worker = harness.worker(b"f")
    worker.send(GrabJob(), GrabJob())
    admin = harness.connect()
    assert admin.admin(b"cancel job " + handle(2)) == b"OK\r\n"
    client.close()
    assert admin.admin(b"show jobs") == b"H:test:1\t0\t1\t0\nH:test:2\t0\t1\t0\n.\n"


def test_cancel_queued_job_fails_it_for_clients_and_removes_it() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"u", b"x"), SubmitJob(b"f", b"u", b"x"))
    client.received()
    admin = harness.connect()
    assert admin.admin(b"cancel job " + handle(1)) == b"OK\r\n"
    assert client.received() == [WorkFail(handle(1)), WorkFail(handle(1))]
    assert admin.admin(b"status") == b".\n"  # the function had nothing else
    assert admin.request(GetStatus(handle(1))) == [StatusRes(handle(1), False, False, 0, 0)]
    assert harness.worker(b"f").request(GrabJob()) == [NoJob()]
    assert admin.admin(b"cancel job " + handle(1)) == b"ERR UNKNOWN_JOB\r\n"
    # The unique is free again.
    assert client.request(SubmitJob(b"f", b"u", b"x")) == [JobCreated(handle(2))]


def test_cancel_running_job_fails_it_and_drops_the_later_result() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"u", b"x"))
    client.received()
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    worker.received()
    admin = harness.connect()
    assert admin.admin(b"cancel job " + handle(1)) == b"OK\r\n"
    assert client.received() == [WorkFail(handle(1))]
    # Still running (gearmand cannot stop a worker), still known, but a new
    # submission with the same unique is a new job.
    assert admin.request(GetStatus(handle(1))) == [StatusRes(handle(1), True, True, 0, 0)]
    assert client.request(SubmitJob(b"f", b"u", b"x")) == [JobCreated(handle(2))]
    assert worker.request(WorkComplete(handle(1), b"late")) == []
    assert client.received() == []
    assert admin.admin(b"status") == b"f\t1\t0\t1\n.\n"


def test_cancelled_running_job_is_not_requeued() -> None:
    harness = Harness()
    harness.connect().send(SubmitJob(b"f", b"", b"x", background=True))
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    harness.connect().admin(b"cancel job " + handle(1))
    worker.close()
    assert harness.state.jobs_queued == harness.state.jobs_running == 0


def test_create_and_drop_function() -> None:
    harness = Harness()
    admin = harness.connect()
    assert admin.admin(b"create function abc") == b"OK\r\n"
    assert admin.admin(b"create function abc") == b"OK\r\n"
    assert admin.admin(b"status") == b"abc\t0\t0\t0\n.\n"
    assert admin.admin(b"drop function ABC") == b"OK\r\n"
    assert admin.admin(b"status") == b".\n"
    assert admin.admin(b"drop function abc") == b"ERR function not found\r\n"


def test_drop_function_is_refused_while_it_has_workers_or_jobs() -> None:
    harness = Harness()
    admin = harness.connect()
    busy = b"ERR there are still connected workers or executing clients\r\n"
    worker = harness.worker(b"f")
    assert admin.admin(b"drop function f") == busy
    worker.close()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    assert admin.admin(b"drop function f") == busy
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b""))
    assert admin.admin(b"drop function f") == busy
    worker.close()
    # Unused, the function is forgotten; one made by `create function` stays until dropped.
    assert admin.admin(b"drop function f") == b"ERR function not found\r\n"
    assert admin.admin(b"create function f") == b"OK\r\n"
    assert admin.admin(b"drop function f") == b"OK\r\n"


def test_drop_function_exact_name_before_case_insensitive() -> None:
    harness = Harness()
    admin = harness.connect()
    admin.admin(b"create function Fn")
    admin.admin(b"create function fn")
    assert admin.admin(b"drop function fn") == b"OK\r\n"
    assert admin.admin(b"status") == b"Fn\t0\t0\t0\n.\n"


def test_maxqueue_limits_queued_plus_running_per_priority() -> None:
    harness = Harness()
    client = harness.connect()
    admin = harness.connect()
    assert admin.admin(b"maxqueue nofunc 1") == b"OK\r\n"
    assert admin.admin(b"status") == b".\n"
    admin.admin(b"create function f")
    assert admin.admin(b"maxqueue f 3 2 1") == b"OK\r\n"
    full = [Error(b"QUEUE_ERROR", b"Job queue is full")]
    assert client.request(SubmitJob(b"f", b"", b"1", Priority.LOW, True)) == [JobCreated(handle(1))]
    assert client.request(SubmitJob(b"f", b"", b"2", Priority.LOW, True)) == full
    assert client.request(SubmitJob(b"f", b"", b"2", Priority.NORMAL, True)) == [
        JobCreated(handle(2))
    ]
    harness.worker(b"f").send(GrabJob())
    # One queued and one running: NORMAL (2) is full, HIGH (3) is not.
    assert client.request(SubmitJob(b"f", b"", b"3", Priority.NORMAL, True)) == full
    assert client.request(SubmitJob(b"f", b"", b"3", Priority.HIGH, True)) == [
        JobCreated(handle(3))
    ]
    assert admin.admin(b"maxqueue f") == b"OK\r\n"
    assert client.request(SubmitJob(b"f", b"", b"4", Priority.LOW, True)) == [JobCreated(handle(4))]
    assert admin.admin(b"maxqueue f 0") == b"OK\r\n"
    assert client.request(SubmitJob(b"f", b"", b"5", Priority.LOW, True)) == [JobCreated(handle(5))]


def test_version_getpid_verbose() -> None:
    harness = Harness(version=b"1.2.3", pid=4242, verbose=b"INFO")
    admin = harness.connect()
    assert admin.admin(b"version") == b"OK 1.2.3\n"
    assert admin.admin(b"getpid") == b"OK 4242\n"
    assert admin.admin(b"verbose") == b"OK INFO\n"


@pytest.mark.parametrize("line", [b"shutdown", b"shutdown graceful"])
def test_shutdown_is_refused_like_gearmand(line: bytes) -> None:
    admin = Harness().connect()
    assert admin.admin(line) == b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n"
    assert not admin.conn.closing


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"", b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n"),
        (b"nonsense", b"ERR UNKNOWN_COMMAND Unknown+server+commandnonsense\r\n"),
        (b"show", b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n"),
        (b"show foo", b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n"),
        (b"cancel foo bar", b"ERR UNKNOWN_ERROR\r\n"),
    ],
)
def test_admin_errors(line: bytes, reply: bytes) -> None:
    admin = Harness().connect()
    assert admin.admin(line) == reply
    assert not admin.conn.closing


def test_too_many_words_get_an_error_and_close() -> None:
    admin = Harness().connect()
    assert admin.admin(b"a b c d e f") == b"ERR TOO_MANY_ARGS Too+many+arguments\r\n"
    assert admin.conn.closing
    assert admin.request(EchoReq(b"x")) == []


def test_pipelined_admin_commands_and_packets() -> None:
    harness = Harness(version=b"9")
    peer = harness.connect()
    peer.send(TextLine(b"version"), TextLine(b"status"), TextLine(b"getpid"))
    assert peer.raw() == b"OK 9\n.\nOK 0\n"
    peer.send(TextLine(b"create function f"), EchoReq(b"bin"), TextLine(b"status"))
    raw = peer.raw()
    echo = b"\0RES\x00\x00\x00\x11\x00\x00\x00\x03bin"
    assert raw == b"OK\r\n" + echo + b"f\t0\t0\t0\n.\n"


@pytest.mark.parametrize("line", sorted(line for line, reply in ERROR_LINES.items() if reply))
def test_the_server_answers_bad_admin_lines_with_gearmands_bytes(line: bytes) -> None:
    # ``SHUTDOWN`` included: the refusal repeats the word as the peer wrote it.
    assert Harness().connect().admin(line) == ERROR_LINES[line]


@pytest.mark.parametrize("line", sorted(line for line, reply in ERROR_LINES.items() if not reply))
def test_too_many_words_close_the_connection_as_gearmand_does(line: bytes) -> None:
    # gearmand closes without a word; we say why first (the one difference).
    peer = Harness().connect()
    assert peer.admin(line) == b"ERR TOO_MANY_ARGS Too+many+arguments\r\n"
    assert peer.conn.closing


def test_prioritystatus_keeps_a_held_job_in_its_priority_column() -> None:
    harness = Harness()
    harness.state.set_hold(lambda name: name == b"f")
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"h", Priority.HIGH, True))
    client.send(SubmitJob(b"f", b"", b"l", Priority.LOW, True))
    admin = harness.connect()
    assert admin.admin(b"prioritystatus") == b"f\t1\t0\t1\t0\n.\n"
    assert admin.admin(b"status") == b"f\t2\t0\t0\n.\n"
    harness.state.set_hold(None)  # released: queued at the same priorities
    assert admin.admin(b"prioritystatus") == b"f\t1\t0\t1\t0\n.\n"
