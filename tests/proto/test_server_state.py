"""The job server state machine: requests, replies, submission, results and status."""

from __future__ import annotations

import attrs
import pytest

from trio_gearman import BadArgumentCount, BadMagic, PacketTooLarge, UnknownPacketType
from trio_gearman._exceptions import AdminLineTooLong, ProtocolError
from trio_gearman._proto import TextLine, UnexpectedMagic, _packets
from trio_gearman._proto._packets import (
    AllYours,
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    NoJob,
    Noop,
    OptionReq,
    OptionRes,
    PacketType,
    Priority,
    SetClientId,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    Unused,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)
from trio_gearman._proto.server.state import ServerConfig, ServerState

from .test_server_state_harness import Harness, Peer, handle

NOT_EXPECTED = Error(b"INVALID_COMMAND", b"Command not expected")

# --- every request type has a handler; the ones no server accepts get INVALID_COMMAND --


def _message_classes() -> list[type[Message]]:
    return [
        getattr(_packets, name)
        for name in _packets.__all__
        if name not in {"Magic", "Message", "PacketType", "Priority"}
    ]


def test_every_message_class_is_handled() -> None:
    state = ServerState(ServerConfig())
    handled = set(state._handlers)
    assert set(_message_classes()) <= handled
    assert {TextLine, UnexpectedMagic} <= handled


@pytest.mark.parametrize(
    "message",
    [
        Unused(),
        Noop(),
        NoJob(),
        AllYours(),
        JobCreated(b"H:x:1"),
        JobAssign(b"H:x:1", b"f", b""),
        JobAssignUniq(b"H:x:1", b"f", b"u", b""),
        JobAssignAll(b"H:x:1", b"f", b"u", b"r", b""),
        EchoRes(b"x"),
        Error(b"CODE", b"text"),
        StatusRes(b"H:x:1", True, False, 0, 0),
        StatusResUnique(b"u", True, False, 0, 0, 1),
        OptionRes(b"exceptions"),
        SubmitJobSched(b"f", b"u", b"1", b"2", b"3", b"4", b"5", b"data"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_response_and_unimplemented_types_get_invalid_command(message: Message) -> None:
    harness = Harness()
    peer = harness.connect()
    assert peer.request(message, EchoReq(b"still open")) == [NOT_EXPECTED, EchoRes(b"still open")]
    assert not peer.conn.closing


def test_response_magic_gets_invalid_magic_and_the_connection_stays() -> None:
    harness = Harness()
    peer = harness.connect()
    replies = peer.request(UnexpectedMagic(PacketType.SUBMIT_JOB, Magic.RES), EchoReq(b"x"))
    assert replies == [Error(b"INVALID_MAGIC", b"Request magic expected"), EchoRes(b"x")]
    assert not peer.conn.closing


@pytest.mark.parametrize("size", [0, 1, 8192, 4 * 1024 * 1024])
def test_echo_of_any_size(size: int) -> None:
    peer = Harness().connect()
    data = bytes(range(256)) * (size // 256) + b"\0" * (size % 256)
    assert peer.request(EchoReq(data)) == [EchoRes(data)]


# --- protocol errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UnknownPacketType("unknown packet type 99 (size 0)", offset=0), b"INVALID_COMMAND"),
        (BadArgumentCount("SUBMIT_JOB needs 3 arguments", offset=12), b"INVALID_ARGUMENT"),
        (PacketTooLarge("a 2 GiB body", offset=24), b"ARGUMENT_TOO_LARGE"),
    ],
)
def test_protocol_errors_that_get_an_error_packet(error: ProtocolError, code: bytes) -> None:
    harness = Harness()
    peer = harness.connect()
    harness.state.protocol_error(peer.conn, error, harness.now)
    assert peer.received() == [Error(code, str(error).encode())]
    assert peer.conn.closing
    # Nothing more is answered on a closing connection.
    assert peer.request(EchoReq(b"x")) == []


@pytest.mark.parametrize(
    "error", [BadMagic("expected REQ", offset=0), AdminLineTooLong("line", offset=0)]
)
def test_protocol_errors_closed_silently(error: ProtocolError) -> None:
    harness = Harness()
    peer = harness.connect()
    harness.state.protocol_error(peer.conn, error, harness.now)
    assert peer.raw() == b""
    assert peer.conn.closing


# --- submission ----------------------------------------------------------------------------


@pytest.mark.parametrize("priority", list(Priority))
@pytest.mark.parametrize("background", [False, True])
def test_every_submit_variant_gets_a_handle(priority: Priority, background: bool) -> None:
    harness = Harness()
    client = harness.connect()
    replies = client.request(
        SubmitJob(b"f", b"", b"a", priority, background),
        SubmitJob(b"f", b"", b"b", priority, background),
    )
    assert replies == [JobCreated(handle(1)), JobCreated(handle(2))]
    assert harness.state.jobs_queued == 2


def test_handles_use_the_configured_prefix() -> None:
    harness = Harness(job_handle_prefix=b"H:box")
    client = harness.connect()
    assert client.request(SubmitJob(b"f", b"", b"", background=True)) == [JobCreated(b"H:box:1")]


def test_replies_keep_request_order_with_errors_between() -> None:
    harness = Harness()
    client = harness.connect()
    client.admin(b"create function limited")
    assert client.admin(b"maxqueue limited 1") == b"OK\r\n"
    replies = client.request(
        SubmitJob(b"f", b"", b"1"),
        SubmitJob(b"f", b"u" * 65, b"2"),
        SubmitJob(b"limited", b"", b"3", background=True),
        SubmitJob(b"limited", b"", b"4", background=True),
        SubmitJob(b"f", b"", b"5"),
    )
    assert replies == [
        JobCreated(handle(1)),
        Error(b"ARGUMENT_TOO_LARGE", b"Unique value too large"),
        JobCreated(handle(2)),
        Error(b"QUEUE_ERROR", b"Job queue is full"),
        JobCreated(handle(3)),
    ]


def test_unique_of_64_bytes_is_accepted_65_refused() -> None:
    harness = Harness()
    client = harness.connect()
    assert client.request(SubmitJob(b"f", b"u" * 64, b"")) == [JobCreated(handle(1))]
    too_long: list[Message] = [
        SubmitJob(b"g", b"u" * 65, b""),
        SubmitJobEpoch(b"g", b"u" * 65, 0, b""),
        SubmitReduceJob(b"g", b"u" * 65, b"r", b"", b""),
    ]
    for message in too_long:
        assert client.request(message) == [Error(b"ARGUMENT_TOO_LARGE", b"Unique value too large")]
    # A refused submission creates no function.
    assert b"g\t" not in client.admin(b"status")


def test_max_unique_is_configurable() -> None:
    client = Harness(max_unique=4).connect()
    assert client.request(SubmitJob(b"f", b"12345", b""))[0].code == b"ARGUMENT_TOO_LARGE"  # type: ignore[union-attr]


def test_reduce_jobs_are_accepted_and_hand_the_reducer_to_grab_job_all() -> None:
    harness = Harness()
    client = harness.connect()
    assert client.request(
        SubmitReduceJob(b"f", b"u1", b"count", b"", b"data"),
        SubmitReduceJob(b"f", b"u2", b"sum", b"", b"more", background=True),
        SubmitJob(b"f", b"u3", b"plain"),
    ) == [JobCreated(handle(1)), JobCreated(handle(2)), JobCreated(handle(3))]
    worker = harness.worker(b"f")
    assert worker.request(GrabJobAll(), GrabJobAll(), GrabJobAll()) == [
        JobAssignAll(handle(1), b"f", b"u1", b"count", b"data"),
        JobAssignAll(handle(2), b"f", b"u2", b"sum", b"more"),
        JobAssignUniq(handle(3), b"f", b"u3", b"plain"),
    ]


# --- unique coalescing -----------------------------------------------------------------------


def test_same_function_and_unique_coalesce() -> None:
    harness = Harness()
    a, b = harness.connect(), harness.connect()
    assert a.request(SubmitJob(b"f", b"u", b"one")) == [JobCreated(handle(1))]
    # Priority, payload and background flag of the second request are ignored.
    assert b.request(SubmitJob(b"f", b"u", b"two", Priority.HIGH)) == [JobCreated(handle(1))]
    assert a.request(SubmitJob(b"g", b"u", b"one")) == [JobCreated(handle(2))]
    assert harness.state.jobs_queued == 2
    worker = harness.worker(b"f")
    assert worker.request(GrabJobUniq()) == [JobAssignUniq(handle(1), b"f", b"u", b"one")]


def test_empty_unique_never_coalesces() -> None:
    harness = Harness()
    client = harness.connect()
    replies = client.request(SubmitJob(b"f", b"", b"x"), SubmitJob(b"f", b"", b"x"))
    assert replies == [JobCreated(handle(1)), JobCreated(handle(2))]


def test_dash_unique_coalesces_by_payload() -> None:
    harness = Harness()
    client = harness.connect()
    replies = client.request(
        SubmitJob(b"f", b"-", b"same"),
        SubmitJob(b"f", b"-", b"same"),
        SubmitJob(b"f", b"-", b"other"),
        SubmitJob(b"g", b"-", b"same"),
        SubmitJob(b"f", b"same", b"x"),
    )
    handles = [r.handle for r in replies]  # type: ignore[union-attr]
    assert handles == [handle(1), handle(1), handle(2), handle(3), handle(4)]
    worker = harness.worker(b"f")
    assert worker.request(GrabJobUniq())[0] == JobAssignUniq(handle(1), b"f", b"-", b"same")
    worker.send(WorkComplete(handle(1), b""))
    # Both attachments of `client` got the result; once done, the payload no longer coalesces.
    assert client.received() == [WorkComplete(handle(1), b"")] * 2
    assert client.request(SubmitJob(b"f", b"-", b"same")) == [JobCreated(handle(5))]


def test_coalescing_onto_a_running_job_gets_later_results_only() -> None:
    harness = Harness()
    first, late = harness.connect(), harness.connect()
    first.send(SubmitJob(b"f", b"u", b"x"))
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkData(handle(1), b"early"))
    assert late.request(SubmitJob(b"f", b"u", b"x")) == [JobCreated(handle(1))]
    worker.send(WorkData(handle(1), b"later"), WorkComplete(handle(1), b"done"))
    assert first.received() == [
        JobCreated(handle(1)),
        WorkData(handle(1), b"early"),
        WorkData(handle(1), b"later"),
        WorkComplete(handle(1), b"done"),
    ]
    assert late.received() == [WorkData(handle(1), b"later"), WorkComplete(handle(1), b"done")]


def test_a_large_result_reaches_every_client_waiting_for_it() -> None:
    harness = Harness()
    first, second = harness.connect(), harness.connect()
    first.send(SubmitJob(b"f", b"u", b"x"))
    second.send(SubmitJob(b"f", b"u", b"x"))
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    result = bytes(range(256)) * 512  # 128 KiB: appended to each client as it is
    worker.send(WorkData(handle(1), result), WorkComplete(handle(1), result))
    for client in (first, second):
        assert client.received() == [
            JobCreated(handle(1)),
            WorkData(handle(1), result),
            WorkComplete(handle(1), result),
        ]


def test_large_jobs_are_handed_out_whole() -> None:
    harness = Harness()
    client = harness.connect()
    big = bytes(range(256)) * 512
    client.send(*(SubmitJob(b"f", unique, big) for unique in (b"a", b"b", b"c")))
    worker = harness.worker(b"f")
    assert worker.request(GrabJob()) == [JobAssign(handle(1), b"f", big)]
    assert worker.request(GrabJobUniq()) == [JobAssignUniq(handle(2), b"f", b"b", big)]
    assert worker.request(GrabJobAll()) == [JobAssignUniq(handle(3), b"f", b"c", big)]


def test_every_attachment_gets_every_result() -> None:
    harness = Harness()
    a, b = harness.connect(), harness.connect()
    a.send(SubmitJob(b"f", b"u", b"x"), SubmitJob(b"f", b"u", b"x"))
    b.send(SubmitJob(b"f", b"u", b"x"))
    a.received(), b.received()
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    results: list[Message] = [
        WorkStatus(handle(1), 1, 2),
        WorkWarning(handle(1), b"w"),
        WorkData(handle(1), b"d"),
        WorkComplete(handle(1), b"r"),
    ]
    worker.send(*results)
    # One copy per attachment: `a` attached twice.
    assert a.received() == [r for r in results for _ in range(2)]
    assert b.received() == results


def test_foreground_client_coalescing_onto_background_job_gets_results() -> None:
    harness = Harness()
    submitter, waiter = harness.connect(), harness.connect()
    submitter.send(SubmitJob(b"f", b"u", b"x", background=True))
    assert waiter.request(SubmitJob(b"f", b"u", b"y")) == [JobCreated(handle(1))]
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b"r"))
    assert waiter.received() == [WorkComplete(handle(1), b"r")]
    assert submitter.received() == [JobCreated(handle(1))]


def test_coalesced_submissions_bypass_maxqueue() -> None:
    harness = Harness()
    client = harness.connect()
    client.admin(b"create function f")
    client.admin(b"maxqueue f 1")
    replies = client.request(
        SubmitJob(b"f", b"u", b"x"),
        SubmitJob(b"f", b"u", b"x"),
        SubmitJob(b"f", b"v", b"x"),
    )
    assert replies == [
        JobCreated(handle(1)),
        JobCreated(handle(1)),
        Error(b"QUEUE_ERROR", b"Job queue is full"),
    ]


# --- work results -------------------------------------------------------------------------


def _running_job(harness: Harness, *, exceptions: bool = False) -> tuple[Peer, Peer]:
    client = harness.connect()
    if exceptions:
        client.send(OptionReq(b"exceptions"))
    client.send(SubmitJob(b"f", b"", b"x"))
    client.received()
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    worker.received()
    return client, worker


def test_results_are_forwarded_with_response_magic() -> None:
    harness = Harness()
    client, worker = _running_job(harness)
    worker.send(WorkData(handle(1), b"chunk\0with nul"))
    raw = client.raw()
    assert raw.startswith(Magic.RES.value)
    assert raw.endswith(handle(1) + b"\0chunk\0with nul")


@pytest.mark.parametrize(
    ("message", "text"),
    [
        (WorkData(handle(1), b""), b"Job does not exist on server"),
        (WorkWarning(handle(1), b""), b"Job does not exist on server"),
        (WorkStatus(handle(1), 1, 2), b"Job given in work result not found"),
        (WorkComplete(handle(1), b""), b"Job given in work result not found"),
        (WorkFail(handle(1)), b"Job given in work result not found"),
        (
            WorkException(handle(1), b""),
            b"An exception was received for a job that does not exist",
        ),
    ],
    ids=lambda m: type(m).__name__,
)
def test_results_for_a_job_this_worker_does_not_hold(message: Message, text: bytes) -> None:
    harness = Harness()
    client = harness.connect()
    other = harness.worker(b"f")
    # Unknown handle.
    assert other.request(message) == [Error(b"JOB_NOT_FOUND", text)]
    # A job that exists but is queued, then held by another worker.
    client.send(SubmitJob(b"f", b"", b"x"))
    assert other.request(message) == [Error(b"JOB_NOT_FOUND", text)]
    holder = harness.worker(b"f")
    holder.send(GrabJob())
    assert other.request(message) == [Error(b"JOB_NOT_FOUND", text)]
    # The holder's own result is accepted.
    holder.received()
    holder.send(message)
    assert holder.received() == []


@pytest.mark.parametrize(
    "terminal",
    [WorkComplete(handle(1), b"r"), WorkFail(handle(1)), WorkException(handle(1), b"e")],
    ids=lambda m: type(m).__name__,
)
def test_terminal_results_end_the_job(terminal: Message) -> None:
    harness = Harness()
    client, worker = _running_job(harness)
    worker.send(terminal)
    assert harness.state.jobs_running == 0
    assert client.request(GetStatus(handle(1))) == [
        WorkFail(handle(1)) if isinstance(terminal, WorkException) else terminal,
        StatusRes(handle(1), False, False, 0, 0),
    ]
    assert worker.request(WorkComplete(handle(1), b"late")) == [
        Error(b"JOB_NOT_FOUND", b"Job given in work result not found")
    ]


def test_work_exception_goes_to_clients_that_asked_else_work_fail_without_nul() -> None:
    harness = Harness()
    plain, wants = harness.connect(), harness.connect()
    assert wants.request(OptionReq(b"exceptions")) == [OptionRes(b"exceptions")]
    plain.send(SubmitJob(b"f", b"u", b"x"))
    wants.send(SubmitJob(b"f", b"u", b"x"))
    plain.received(), wants.received()
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkException(handle(1), b"boom"))
    assert wants.received() == [WorkException(handle(1), b"boom")]
    raw = plain.raw()
    # WORK_FAIL (14) whose body is exactly the handle: no trailing NUL.
    assert raw == b"\0RES" + (14).to_bytes(4, "big") + len(handle(1)).to_bytes(4, "big") + handle(1)


def test_server_wide_exceptions_default() -> None:
    harness = Harness(exceptions=True)
    client, worker = _running_job(harness)
    worker.send(WorkException(handle(1), b"boom"))
    assert client.received() == [WorkException(handle(1), b"boom")]


def test_work_fail_trailing_nuls_are_stripped() -> None:
    harness = Harness()
    client, worker = _running_job(harness)
    worker.send(WorkFail(handle(1) + b"\0\0"))
    assert client.raw() == (
        b"\0RES" + (14).to_bytes(4, "big") + len(handle(1)).to_bytes(4, "big") + handle(1)
    )
    assert worker.received() == []
    assert harness.state.jobs_running == 0


@pytest.mark.parametrize("name", [b"exceptions", b"EXCEPTIONS", b"Exceptions"])
def test_option_exceptions_is_case_insensitive_and_echoed_as_sent(name: bytes) -> None:
    peer = Harness().connect()
    assert peer.request(OptionReq(name)) == [OptionRes(name)]
    assert peer.conn.exceptions


def test_unknown_option() -> None:
    peer = Harness().connect()
    assert peer.request(OptionReq(b"speed")) == [
        Error(b"UNKNOWN_OPTION", b"Server does not recognize given option")
    ]
    assert not peer.conn.exceptions


# --- status -------------------------------------------------------------------------------


def test_get_status_through_a_jobs_life() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    client.received()

    def status() -> Message:
        (reply,) = client.request(GetStatus(handle(1)))
        return reply

    assert status() == StatusRes(handle(1), True, False, 0, 0)
    worker = harness.worker(b"f")
    worker.send(GrabJob())
    assert status() == StatusRes(handle(1), True, True, 0, 0)
    worker.send(WorkStatus(handle(1), 7, 9))
    assert status() == StatusRes(handle(1), True, True, 7, 9)
    worker.close()
    assert status() == StatusRes(handle(1), True, False, 0, 0)
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkComplete(handle(1), b""))
    assert status() == StatusRes(handle(1), False, False, 0, 0)


@pytest.mark.parametrize("length", [64, 1000, 100_000])
def test_get_status_of_long_handles_is_answered(length: int) -> None:
    peer = Harness().connect()
    long = b"H" * length
    assert peer.request(GetStatus(long)) == [StatusRes(long, False, False, 0, 0)]
    assert peer.request(GetStatusUnique(long)) == [StatusResUnique(long, False, False, 0, 0, 0)]
    assert not peer.conn.closing


def test_get_status_unique() -> None:
    harness = Harness()
    a, b = harness.connect(), harness.connect()
    a.send(SubmitJob(b"f", b"u", b"x"), SubmitJob(b"f", b"u", b"x"))
    b.send(SubmitJob(b"f", b"u", b"x"), SubmitJob(b"g", b"bg", b"x", background=True))
    assert b.request(GetStatusUnique(b"u"))[-1] == StatusResUnique(b"u", True, False, 0, 0, 3)
    assert b.request(GetStatusUnique(b"bg")) == [StatusResUnique(b"bg", True, False, 0, 0, 0)]
    worker = harness.worker(b"f")
    worker.send(GrabJob(), WorkStatus(handle(1), 1, 4))
    b.received()
    assert b.request(GetStatusUnique(b"u")) == [StatusResUnique(b"u", True, True, 1, 4, 3)]
    a.close()
    assert b.request(GetStatusUnique(b"u")) == [StatusResUnique(b"u", True, True, 1, 4, 1)]
    assert b.request(GetStatusUnique(b"nope")) == [StatusResUnique(b"nope", False, False, 0, 0, 0)]
    assert b.request(GetStatusUnique(b"")) == [StatusResUnique(b"", False, False, 0, 0, 0)]


def test_set_client_id_is_truncated_to_127_bytes() -> None:
    harness = Harness()
    peer = harness.connect()
    peer.send(SetClientId(b"a b" + b"x" * 200))
    assert peer.conn.client_id == (b"a b" + b"x" * 200)[:127]
    assert peer.received() == []


def test_config_is_an_attrs_class_with_the_documented_defaults() -> None:
    config = ServerConfig()
    assert attrs.asdict(config, recurse=False) | {"version": b""} == {
        "job_handle_prefix": b"H:localhost",
        "exceptions": False,
        "job_retries": 0,
        "worker_wakeup": 0,
        "version": b"",
        "pid": 0,
        "verbose": b"ERROR",
        "max_unique": 64,
        "durable": False,
        "metrics": False,
        "acl": None,
        "admin_from_anywhere": False,
        "cluster": False,
        "max_function_name": 8192,
    }


def test_can_do_creates_the_function() -> None:
    harness = Harness()
    harness.worker(b"f")
    assert harness.connect().admin(b"status") == b"f\t0\t0\t1\n.\n"
    assert [f.name for f in harness.state.functions] == [b"f"]
