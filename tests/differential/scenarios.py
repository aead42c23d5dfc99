"""Scripted conversations played against gearmand 1.1.20 and against our server.

Each scenario either expects identical (normalised) transcripts, or names a deliberate
difference: ``adjust`` turns gearmand's raw transcript into what ours must send, and
``why`` says which of gearmand's bugs we fix (DESIGN.md, "Compatibility decisions").
"""

from __future__ import annotations

import time
from collections.abc import Callable

import attrs

from trio_gearman._proto import (
    AllYours,
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    Error,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Magic,
    NoJob,
    Noop,
    OptionReq,
    PreSleep,
    Priority,
    ResetAbilities,
    SetClientId,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    TextLine,
    Unused,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
    encode,
)

from .harness import CLOSED, Close, ExpectClosed, Recv, Send, Step, Transcript, sync

HIGH, NORMAL, LOW = Priority.HIGH, Priority.NORMAL, Priority.LOW


@attrs.frozen
class Scenario:
    """A conversation, the server options it needs, and any deliberate difference."""

    name: str
    steps: tuple[Step, ...]
    server_args: tuple[str, ...] = ()
    adjust: Callable[[Transcript], Transcript] | None = None
    why: str = ""
    mask: Callable[[Transcript], Transcript] | None = None
    """Applied to both transcripts: hides what may legitimately differ (a version)."""


def fg(
    function: bytes, unique: bytes = b"", data: bytes = b"x", prio: Priority = NORMAL
) -> SubmitJob:
    return SubmitJob(function, unique, data, prio, False)


def bg(
    function: bytes, unique: bytes = b"", data: bytes = b"x", prio: Priority = NORMAL
) -> SubmitJob:
    return SubmitJob(function, unique, data, prio, True)


def _handle_of(transcript: Transcript, index: int) -> bytes:
    """The handle of the index-th JOB_CREATED seen in a transcript."""
    seen = [e.handle for _, events in transcript for e in events if isinstance(e, JobCreated)]
    return seen[index]


def _map_events(transcript: Transcript, fn: Callable[[object], object | None]) -> Transcript:
    out: Transcript = []
    for conn, events in transcript:
        mapped = [fn(e) for e in events]
        out.append((conn, tuple(e for e in mapped if e is not None)))
    return out


def _strip_fail_nul(transcript: Transcript) -> Transcript:
    def fix(event: object) -> object:
        if isinstance(event, WorkFail) and event.handle.endswith(b"\0"):
            return WorkFail(event.handle.rstrip(b"\0"))
        return event

    return _map_events(transcript, fix)


def _replace_text(old: bytes, new: bytes) -> Callable[[Transcript], Transcript]:
    def adjust(transcript: Transcript) -> Transcript:
        return _map_events(
            transcript,
            lambda e: TextLine(new) if isinstance(e, TextLine) and e.line == old else e,
        )

    return adjust


def _replace_conn(conn: str, events: tuple[object, ...]) -> Callable[[Transcript], Transcript]:
    """Ours sends ``events`` where gearmand sent something else on the first sync of conn."""

    def adjust(transcript: Transcript) -> Transcript:
        out = list(transcript)
        for i, (name, _) in enumerate(out):
            if name == conn:
                out[i] = (name, events)
                return out
        raise AssertionError(f"no sync of {conn} in {transcript}")

    return adjust


def _replace_nth(
    conn: str, nth: int, events: tuple[object, ...]
) -> Callable[[Transcript], Transcript]:
    def adjust(transcript: Transcript) -> Transcript:
        out = list(transcript)
        seen = 0
        for i, (name, _) in enumerate(out):
            if name == conn:
                if seen == nth:
                    out[i] = (name, events)
                    return out
                seen += 1
        raise AssertionError(f"no sync #{nth} of {conn} in {transcript}")

    return adjust


def _work_cycle(worker: str, client: str) -> tuple[Step, ...]:
    return (
        Send(worker, CanDo(b"f")),
        Send(client, fg(b"f", b"u1", b"payload")),
        sync(client),
        Send(worker, GrabJobUniq()),
        sync(worker),
    )


S = Scenario
SCENARIOS: list[Scenario] = [
    S(
        "echo, small, empty, with NULs and 1 MiB",
        (
            Send("c", EchoReq(b"hello")),
            Send("c", EchoReq(b"")),
            Send("c", EchoReq(b"a\0b\0")),
            Send("c", EchoReq(b"z" * (1 << 20))),
            sync("c"),
        ),
    ),
    S(
        "grab with nothing queued gives NO_JOB",
        (Send("w", CanDo(b"f")), Send("w", GrabJob()), sync("w")),
    ),
    S(
        "GRAB_JOB gives JOB_ASSIGN, GRAB_JOB_ALL without reducer gives JOB_ASSIGN_UNIQ",
        (
            Send("w", CanDo(b"f")),
            Send("c", bg(b"f", b"a", b"1")),
            Send("c", bg(b"f", b"b", b"2")),
            sync("c"),
            Send("w", GrabJob()),
            Send("w", GrabJobAll()),
            sync("w"),
        ),
    ),
    S(
        "SUBMIT_REDUCE_JOB_BACKGROUND hands the reducer to GRAB_JOB_ALL",
        (
            Send("w", CanDo(b"map")),
            Send("c", SubmitReduceJob(b"map", b"r1", b"reduce", b"", b"data", background=True)),
            sync("c"),
            Send("w", GrabJobAll()),
            sync("w"),
        ),
    ),
    S(
        "priorities within one function, FIFO within a priority",
        (
            Send("w", CanDo(b"f")),
            Send("c", bg(b"f", b"l1", b"l1", LOW)),
            Send("c", bg(b"f", b"n1", b"n1", NORMAL)),
            Send("c", bg(b"f", b"h1", b"h1", HIGH)),
            Send("c", bg(b"f", b"n2", b"n2", NORMAL)),
            Send("c", bg(b"f", b"h2", b"h2", HIGH)),
            sync("c"),
            *[Send("w", GrabJobUniq()) for _ in range(6)],
            sync("w"),
        ),
    ),
    S(
        "GET_STATUS of an unknown handle",
        (Send("c", GetStatus(b"H:nope:1")), sync("c")),
    ),
    S(
        "GET_STATUS_UNIQUE unknown",
        (Send("c", GetStatusUnique(b"nothing-here")), sync("c")),
    ),
    S(
        "coalescing: two foreground submits with one unique share the job",
        (
            Send("c1", fg(b"f", b"same", b"one")),
            sync("c1"),
            Send("c2", fg(b"f", b"same", b"two")),
            sync("c2"),
            Send("c3", GetStatusUnique(b"same")),
            sync("c3"),
            Send("w", CanDo(b"f")),
            Send("w", GrabJobUniq()),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
    ),
    S(
        "coalescing: a foreground submit onto a background job",
        (
            Send("c1", bg(b"f", b"k", b"bgdata")),
            sync("c1"),
            Send("c2", fg(b"f", b"k", b"fgdata", HIGH)),
            sync("c2"),
            Send("w", CanDo(b"f")),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
    ),
    S(
        "unique '-' coalesces by payload",
        (
            Send("c", bg(b"f", b"-", b"same")),
            Send("c", bg(b"f", b"-", b"same")),
            Send("c", bg(b"f", b"-", b"other")),
            sync("c"),
            Send("w", CanDo(b"f")),
            *[Send("w", GrabJobUniq()) for _ in range(3)],
            sync("w"),
        ),
    ),
    S(
        "GET_STATUS_UNIQUE of '-' finds no job coalesced by payload",
        (
            Send("c", bg(b"f", b"-", b"payload")),
            sync("c"),
            Send("c", GetStatusUnique(b"-")),
            sync("c"),
        ),
    ),
    S(
        "an empty unique never coalesces",
        (
            Send("c", bg(b"f", b"", b"same")),
            Send("c", bg(b"f", b"", b"same")),
            sync("c"),
            Send("w", CanDo(b"f")),
            *[Send("w", GrabJobUniq()) for _ in range(3)],
            sync("w"),
        ),
    ),
    S(
        "unique of 64 bytes accepted, 65 refused, replies in request order",
        (
            Send("c", bg(b"f", b"u" * 64)),
            Send("c", bg(b"f", b"v" * 65)),
            Send("c", bg(b"f", b"w")),
            Send("c", fg(b"f", b"y" * 100)),
            sync("c"),
        ),
    ),
    S(
        "OPTION_REQ: exceptions in any case, unknown option",
        (
            Send("c", OptionReq(b"exceptions")),
            Send("c", OptionReq(b"EXCEPTIONS")),
            Send("c", OptionReq(b"bogus")),
            sync("c"),
        ),
    ),
    S(
        "response-type and unimplemented packets as requests: INVALID_COMMAND",
        (
            Send("c", encode(JobCreated(b"H:x:1"), Magic.REQ)),
            Send("c", encode(NoJob(), Magic.REQ)),
            Send("c", encode(Noop(), Magic.REQ)),
            Send("c", encode(Unused(), Magic.REQ)),
            Send("c", AllYours()),
            Send("c", SubmitJobSched(b"f", b"u", b"1", b"2", b"3", b"4", b"5", b"d")),
            Send("c", EchoReq(b"still here")),
            sync("c"),
        ),
    ),
    S(
        "a request with RES magic: INVALID_MAGIC, connection kept",
        (
            Send("c", encode(EchoReq(b"wrong magic"), Magic.RES)),
            Send("c", EchoReq(b"after")),
            sync("c"),
        ),
    ),
    S(
        "work packets for an unknown handle: JOB_NOT_FOUND with each text",
        (
            Send("w", WorkComplete(b"H:x:99", b"r")),
            Send("w", WorkData(b"H:x:99", b"d")),
            Send("w", WorkWarning(b"H:x:99", b"d")),
            Send("w", WorkStatus(b"H:x:99", 1, 2)),
            Send("w", WorkFail(b"H:x:99")),
            Send("w", WorkException(b"H:x:99", b"e")),
            sync("w"),
        ),
    ),
    S(
        "PRE_SLEEP with work queued gets a NOOP at once",
        (
            Send("c", bg(b"f", b"a")),
            sync("c"),
            Send("w", CanDo(b"f")),
            Send("w", PreSleep()),
            sync("w"),
        ),
    ),
    S(
        "a sleeping worker gets one NOOP until it grabs, and none for other functions",
        (
            Send("w", CanDo(b"f")),
            Send("w", PreSleep()),
            sync("w"),
            Send("c", bg(b"g", b"other-function")),
            sync("c"),
            sync("w"),
            Send("c", bg(b"f", b"a")),
            Send("c", bg(b"f", b"b")),
            sync("c"),
            sync("w"),
            Send("w", GrabJobUniq()),
            Send("w", PreSleep()),
            sync("w"),
        ),
    ),
    S(
        "a worker that disconnects gives its job back; a sleeping worker is woken for it",
        (
            Send("w1", CanDo(b"f")),
            Send("c", bg(b"f", b"job")),
            sync("c"),
            Send("w1", GrabJobUniq()),
            sync("w1"),
            Send("w2", CanDo(b"f")),
            Send("w2", PreSleep()),
            sync("w2"),
            Close("w1"),
            Recv("w2"),
            Send("w2", GrabJobUniq()),
            sync("w2"),
        ),
    ),
    S(
        "--job-retries 2: the second lost attempt fails the job",
        (
            Send("c", fg(b"f", b"job")),
            sync("c"),
            Send("w1", CanDo(b"f")),
            Send("w1", GrabJobUniq()),
            sync("w1"),
            Send("w2", CanDo(b"f")),
            Send("w2", PreSleep()),
            sync("w2"),
            Close("w1"),
            Recv("w2"),
            Send("w2", GrabJobUniq()),
            sync("w2"),
            Send("w3", CanDo(b"f")),
            Send("w3", PreSleep()),
            sync("w3"),
            Close("w2"),
            Recv("c"),
            Send("w3", GrabJobUniq()),
            sync("w3"),
        ),
        server_args=("--job-retries=2",),
    ),
    S(
        "CANT_DO gives back the running jobs of that function",
        (
            Send("w", CanDo(b"f")),
            Send("c", bg(b"f", b"job")),
            sync("c"),
            Send("w", GrabJobUniq()),
            sync("w"),
            Send("w2", CanDo(b"f")),
            Send("w2", PreSleep()),
            sync("w2"),
            Send("w", CantDo(b"f")),
            Recv("w2"),
            Send("w2", GrabJobUniq()),
            sync("w", "w2"),
        ),
    ),
    S(
        "RESET_ABILITIES: the worker gets nothing more",
        (
            Send("w", CanDo(b"f")),
            Send("w", ResetAbilities()),
            Send("c", bg(b"f", b"job")),
            sync("c"),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
    ),
    S(
        "SUBMIT_JOB_EPOCH in the past runs now",
        (
            Send("c", SubmitJobEpoch(b"f", b"e1", 1_000_000, b"old")),
            sync("c"),
            Send("w", CanDo(b"f")),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
    ),
    S(
        "admin: status, prioritystatus and show jobs with queued and running jobs",
        (
            Send("w", CanDo(b"resize")),
            Send("c", bg(b"resize", b"r1", b"1", HIGH)),
            Send("c", bg(b"resize", b"r2", b"2", NORMAL)),
            Send("c", bg(b"resize", b"r3", b"3", LOW)),
            Send("c", bg(b"thumb", b"t1", b"1")),
            sync("c"),
            Send("w", GrabJobUniq()),
            sync("w"),
            Send("a", "status\n"),
            Send("a", "prioritystatus\n"),
            Send("a", "show jobs\n"),
            Send("a", "show unique jobs\n"),
            sync("a"),
        ),
    ),
    S(
        "admin: workers lists every connection with its id and functions",
        (
            Send("w", SetClientId(b"worker-A")),
            Send("w", CanDo(b"resize")),
            Send("w", CanDo(b"thumb")),
            sync("w"),
            Send("a", "workers\n"),
            sync("a"),
        ),
        adjust=None,
    ),
    S(
        "admin: commands are case-insensitive, pipelined, LF or CRLF",
        (
            Send("w", CanDo(b"f")),
            sync("w"),
            Send("a", "STATUS\r\nStatus\nstatus\r\nvErSiOn\n"),
            sync("a"),
        ),
        mask=lambda t: _map_events(
            t,
            lambda e: (
                TextLine(b"OK <version>")
                if isinstance(e, TextLine) and e.line.startswith(b"OK ")
                else e
            ),
        ),
    ),
    S(
        "admin: unknown and malformed commands",
        (
            Send("a", "bogus\n"),
            Send("a", "\n"),
            Send("a", "show\n"),
            Send("a", "show foo\n"),
            Send("a", "cancel\n"),
            Send("a", "cancel foo bar\n"),
            Send("a", "create\n"),
            Send("a", "maxqueue\n"),
            sync("a"),
        ),
    ),
    S(
        "admin: shutdown is not a command (removed in gearmand 1.1.15)",
        (Send("a", "shutdown\n"), Send("a", "shutdown graceful\n"), sync("a")),
    ),
    S(
        "admin: cancel job",
        (
            Send("c", bg(b"f", b"k")),
            sync("c"),
            Send("a", "cancel job H:nope:77\n"),
            sync("a"),
        ),
    ),
    S(
        "admin: create function and drop function (CRLF lines)",
        (
            Send("a", "create function newfn\r\n"),
            Send("a", "status\r\n"),
            Send("a", "drop function newfn\r\n"),
            Send("a", "drop function newfn\r\n"),
            Send("a", "status\r\n"),
            sync("a"),
        ),
    ),
    S(
        "admin: create function with an LF line keeps the whole name",
        (Send("a", "create function abc\n"), Send("a", "status\n"), sync("a")),
        adjust=_replace_text(b"ab\t0\t0\t0", b"abc\t0\t0\t0"),
        why="gearmand 1.1.20 drops the last character of the name on an LF line",
    ),
    S(
        "admin: maxqueue limits submissions (queued + running count)",
        (
            Send("c", bg(b"f", b"first")),
            sync("c"),
            Send("a", "maxqueue f 2\n"),
            sync("a"),
            Send("c", bg(b"f", b"second")),
            Send("c", bg(b"f", b"third")),
            Send("c", bg(b"f", b"first")),
            sync("c"),
        ),
    ),
    S(
        "six admin words close the connection",
        (Send("a", "status a b c d e\n"), sync("a")),
        adjust=_replace_conn(
            "a",
            (TextLine(b"ERR TOO_MANY_ARGS Too+many+arguments"), CLOSED),
        ),
        why="gearmand closes silently; we say why first",
    ),
    S(
        "garbage bytes close the connection",
        (Send("c", b"\0XYZgarbage-garbage"), ExpectClosed("c")),
    ),
    S(
        "an unknown packet type closes the connection",
        (Send("c", b"\0REQ\x00\x00\x00\x63\x00\x00\x00\x00"), ExpectClosed("c")),
        adjust=_replace_conn(
            "c closed",
            (
                Error(
                    b"INVALID_COMMAND", b"unknown packet type 99 (size 0) (at byte 0 of the stream)"
                ),
            ),
        ),
        why="gearmand closes silently; we say why first",
    ),
    S(
        "CAN_DO_TIMEOUT registers the function",
        (
            Send("w", CanDoTimeout(b"f", 5000)),
            Send("c", bg(b"f", b"t")),
            sync("c"),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
    ),
]


def _swap_first_two_assignments(conn: str) -> Callable[[Transcript], Transcript]:
    def adjust(transcript: Transcript) -> Transcript:
        out = list(transcript)
        for i, (name, events) in enumerate(out):
            if name == conn and len(events) >= 2:
                out[i] = (name, (events[1], events[0], *events[2:]))
                return out
        raise AssertionError(f"no two events on {conn}")

    return adjust


FUTURE = int(time.time()) + 3600

SCENARIOS += [
    S(
        "foreground job: assign, data, warning, status, complete, then unknown",
        (
            *_work_cycle("w", "c"),
            Send("w", WorkData(b"@1", b"chunk\0with nul")),
            Send("w", WorkWarning(b"@1", b"careful")),
            Send("w", WorkStatus(b"@1", 1, 2)),
            Send("w", WorkComplete(b"@1", b"result")),
            sync("w", "c"),
            Send("c", GetStatus(b"@1")),
            sync("c"),
        ),
    ),
    S(
        "background job status: queued, running, 7/9, gone",
        (
            Send("c", bg(b"f", b"st")),
            sync("c"),
            Send("c", GetStatus(b"@1")),
            Send("c", GetStatusUnique(b"st")),
            sync("c"),
            Send("w", CanDo(b"f")),
            Send("w", GrabJobUniq()),
            sync("w"),
            Send("c", GetStatus(b"@1")),
            sync("c"),
            Send("w", WorkStatus(b"@1", 7, 9)),
            sync("w"),
            Send("c", GetStatus(b"@1")),
            Send("c", GetStatusUnique(b"st")),
            sync("c"),
            Send("w", WorkComplete(b"@1", b"")),
            sync("w"),
            Send("c", GetStatus(b"@1")),
            sync("c"),
        ),
    ),
    S(
        "WORK_FAIL is forwarded to the client",
        (*_work_cycle("w", "c"), Send("w", WorkFail(b"@1")), sync("w", "c")),
    ),
    S(
        "WORK_EXCEPTION to a client with the exceptions option",
        (
            Send("c", OptionReq(b"exceptions")),
            *_work_cycle("w", "c"),
            Send("w", WorkException(b"@1", b"boom")),
            sync("w", "c"),
        ),
    ),
    S(
        "WORK_EXCEPTION to a client without the option becomes WORK_FAIL",
        (*_work_cycle("w", "c"), Send("w", WorkException(b"@1", b"boom")), sync("w", "c")),
        adjust=_strip_fail_nul,
        why="gearmand sends WORK_FAIL with a trailing NUL, which libgearman clients ignore",
    ),
    S(
        "--exceptions makes the option the default",
        (*_work_cycle("w", "c"), Send("w", WorkException(b"@1", b"boom")), sync("w", "c")),
        server_args=("--exceptions",),
    ),
    S(
        "a client coalescing onto a running job gets the later packets only",
        (
            *_work_cycle("w", "c1"),
            Send("w", WorkData(b"@1", b"early")),
            sync("w", "c1"),
            Send("c2", fg(b"f", b"u1", b"ignored")),
            sync("c2"),
            Send("w", WorkData(b"@1", b"late")),
            Send("w", WorkComplete(b"@1", b"done")),
            sync("w", "c1", "c2"),
        ),
    ),
    S(
        "work results from a connection that does not hold the job: JOB_NOT_FOUND",
        (
            *_work_cycle("w", "c"),
            Send("other", WorkComplete(b"@1", b"stolen")),
            sync("other"),
            Send("w", WorkComplete(b"@1", b"mine")),
            sync("w", "c"),
        ),
    ),
    S(
        "admin: cancel job by handle",
        (
            Send("c", bg(b"f", b"k")),
            sync("c"),
            Send("a", "cancel job @1\n"),
            sync("a"),
        ),
    ),
    S(
        "GET_STATUS with a 100-byte handle",
        (Send("c", GetStatus(b"H" * 100)), sync("c")),
        adjust=_replace_conn("c", (StatusRes(b"H" * 100, False, False, 0, 0),)),
        why="gearmand drops the connection; we answer 'unknown'",
    ),
    # A queued foreground job whose client left: gearmand keeps it queued (and in
    # `status`) until a worker reaches it; we drop it at once. Not played here: a
    # disconnect and another connection's request are not ordered on the wire, so the
    # transcript would race. tests/proto/test_server_state*.py covers it.
    S(
        "priority across a worker's functions",
        (
            Send("w", CanDo(b"a")),
            Send("w", CanDo(b"b")),
            Send("c", bg(b"a", b"a-high", b"1", HIGH)),
            Send("c", bg(b"b", b"b-low", b"2", LOW)),
            sync("c"),
            Send("w", GrabJobUniq()),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
        adjust=_swap_first_two_assignments("w"),
        why="gearmand 1.1 applies priority per function, last CAN_DO first",
    ),
    S(
        "a duplicate CAN_DO registers once",
        (
            Send("w", CanDo(b"f")),
            Send("w", CanDo(b"f")),
            sync("w"),
            Send("a", "status\n"),
            sync("a"),
        ),
        adjust=_replace_text(b"f\t0\t0\t2", b"f\t0\t0\t1"),
        why="gearmand registers the worker twice",
    ),
    S(
        "a future epoch job wakes nobody now",
        (
            Send("w", CanDo(b"f")),
            Send("w", PreSleep()),
            sync("w"),
            Send("c", SubmitJobEpoch(b"f", b"later", FUTURE, b"d")),
            sync("c", "w"),
        ),
        adjust=_replace_nth("w", 1, ()),
        why="gearmand sends a NOOP for a job no GRAB can get yet",
    ),
    S(
        "a future epoch job does not block LOW jobs",
        (
            Send("c", SubmitJobEpoch(b"f", b"later", FUTURE, b"d")),
            Send("c", bg(b"f", b"low", b"l", LOW)),
            sync("c"),
            Send("w", CanDo(b"f")),
            Send("w", GrabJobUniq()),
            sync("w"),
        ),
        adjust=lambda t: _replace_conn("w", (JobAssignUniq(_handle_of(t, 1), b"f", b"low", b"l"),))(
            t
        ),
        why="in gearmand a future NORMAL job hides the function's LOW jobs",
    ),
]
