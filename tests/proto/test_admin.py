"""The admin text protocol: command parsing, byte-exact replies, and the reply parser.

The expected bytes are gearmand 1.1.20's own (tests/proto/admin_golden.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from trio_gearman._exceptions import AdminLineTooLong, BadAdminReply, TooManyAdminArguments
from trio_gearman._proto._admin import (
    DROP_FUNCTION_BUSY,
    DROP_FUNCTION_NOT_FOUND,
    NEED_DATA,
    OK_REPLY,
    PID_REPLY,
    PRIORITY_STATUS_REPLY,
    SHOW_JOBS_REPLY,
    SHOW_UNIQUE_JOBS_REPLY,
    SHUTDOWN_REFUSED,
    STATUS_REPLY,
    TEXT_REPLY,
    UNKNOWN_JOB,
    WORKERS_REPLY,
    AdminCommand,
    AdminErrorReply,
    CancelJob,
    CreateFunction,
    DropFunction,
    FunctionPriorityStatus,
    FunctionStatus,
    GetPid,
    JobInfo,
    MaxQueue,
    PriorityStatus,
    ReplyKind,
    ReplyParser,
    ShowJobs,
    ShowUniqueJobs,
    Shutdown,
    Status,
    Verbose,
    Version,
    WorkerInfo,
    Workers,
    format_command,
    format_error,
    format_error_reply,
    format_getpid,
    format_ok,
    format_priority_status,
    format_show_jobs,
    format_show_unique_jobs,
    format_status,
    format_verbose,
    format_version,
    format_workers,
    parse_command,
    reply_kind,
)

from .admin_golden import ERROR_LINES, GETPID, SCENE, SCENE_LINES

# --- the captured scene as typed values ---------------------------------------------

STATUS = [
    FunctionStatus(b"", 0, 0, 1),
    FunctionStatus(b"newfn", 1, 0, 0),
    FunctionStatus(b"email", 0, 0, 1),
    FunctionStatus(b"thumb", 1, 1, 1),
    FunctionStatus(b"a:b", 0, 0, 1),
    FunctionStatus(b"resize", 3, 0, 1),
]
STATUS_AFTER_CREATE = [*STATUS[:5], FunctionStatus(b"made", 0, 0, 0), STATUS[5]]
PRIORITY_STATUS = [
    FunctionPriorityStatus(b"", 0, 0, 0, 1),
    FunctionPriorityStatus(b"newfn", 0, 1, 0, 0),
    FunctionPriorityStatus(b"email", 0, 0, 0, 1),
    FunctionPriorityStatus(b"thumb", 0, 0, 0, 1),
    FunctionPriorityStatus(b"a:b", 0, 0, 0, 1),
    FunctionPriorityStatus(b"resize", 0, 2, 1, 1),
]
WORKERS = [
    WorkerInfo(23, b"127.0.0.1", b"-", ()),
    WorkerInfo(20, b"127.0.0.1", b"id with : spaces", (b"a:b",)),
    WorkerInfo(21, b"127.0.0.1", b"", (b"",)),
    WorkerInfo(22, b"127.0.0.1", b"-", ()),
    WorkerInfo(18, b"127.0.0.1", b"worker-A", (b"thumb", b"resize")),
    WorkerInfo(19, b"127.0.0.1", b"-", (b"email",)),
]
SHOW_JOBS = [
    JobInfo(b"JH:5", 0, False, False),
    JobInfo(b"JH:4", 0, False, True),
    JobInfo(b"JH:1", 0, False, True),
    JobInfo(b"JH:2", 0, False, True),
    JobInfo(b"JH:3", 0, False, True),
]
SHOW_JOBS_AFTER_CANCEL = [JobInfo(b"JH:5", 0, True, False), *SHOW_JOBS[1:]]
UNIQUES = [b"", b"", b"img-1", b"img-2", b"m-1"]

# name in the scene -> (the command parsed, the kind of its reply, the reply read)
SCENE_VALUES: dict[str, tuple[AdminCommand | AdminErrorReply, ReplyKind[object], object]] = {
    "status": (Status(), STATUS_REPLY, STATUS),
    "prioritystatus": (PriorityStatus(), PRIORITY_STATUS_REPLY, PRIORITY_STATUS),
    "workers": (Workers(), WORKERS_REPLY, WORKERS),
    "show_jobs": (ShowJobs(), SHOW_JOBS_REPLY, SHOW_JOBS),
    "show_unique_jobs": (ShowUniqueJobs(), SHOW_UNIQUE_JOBS_REPLY, UNIQUES),
    "cancel_ok": (CancelJob(b"JH:5"), OK_REPLY, None),
    "cancel_unknown": (CancelJob(b"JH:99"), OK_REPLY, UNKNOWN_JOB),
    "show_jobs_after_cancel": (ShowJobs(), SHOW_JOBS_REPLY, SHOW_JOBS_AFTER_CANCEL),
    "show_jobs_trailing_space": (
        AdminErrorReply(b"UNKNOWN_SHOW_ARGUMENTS"),
        SHOW_JOBS_REPLY,
        AdminErrorReply(b"UNKNOWN_SHOW_ARGUMENTS"),
    ),
    "show_jobs_upper": (ShowJobs(), SHOW_JOBS_REPLY, SHOW_JOBS_AFTER_CANCEL),
    "drop_busy": (DropFunction(b"resize"), OK_REPLY, DROP_FUNCTION_BUSY),
    "drop_not_found": (DropFunction(b"nosuch"), OK_REPLY, DROP_FUNCTION_NOT_FOUND),
    "create": (CreateFunction(b"made"), OK_REPLY, None),
    "status_after_create": (Status(), STATUS_REPLY, STATUS_AFTER_CREATE),
    "drop_ok": (DropFunction(b"MADE"), OK_REPLY, None),
    "maxqueue": (MaxQueue(b"resize", (10, 10, 10)), OK_REPLY, None),
    "maxqueue_unknown_function": (MaxQueue(b"nosuch", (1, 2, 3)), OK_REPLY, None),
    "version": (Version(), TEXT_REPLY, b"1.1.20+ds"),
    "getpid": (GetPid(), PID_REPLY, GETPID),
    "verbose": (Verbose(), TEXT_REPLY, b"INFO"),
}


def test_scene_is_fully_covered() -> None:
    assert SCENE_VALUES.keys() == SCENE.keys() == SCENE_LINES.keys()


# --- parse_command --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"status", Status()),
        (b"STATUS", Status()),
        (b"Status", Status()),
        (b"status ignored words here", Status()),
        (b"status ", Status()),
        (b"prioritystatus", PriorityStatus()),
        (b"PriorityStatus", PriorityStatus()),
        (b"workers", Workers()),
        (b"WORKERS x", Workers()),
        (b"show jobs", ShowJobs()),
        (b"SHOW   Jobs", ShowJobs()),
        (b"show unique jobs", ShowUniqueJobs()),
        (b"show  UNIQUE  jobs", ShowUniqueJobs()),
        (b"cancel job H:host:1", CancelJob(b"H:host:1")),
        (b"CANCEL   JOB   H:x:2", CancelJob(b"H:x:2")),
        (b"cancel job ", CancelJob(b"")),
        (b"create function abc", CreateFunction(b"abc")),
        (b"Create FUNCTION Mixed", CreateFunction(b"Mixed")),
        (b"create function ", CreateFunction(b"")),
        (b"drop function abc", DropFunction(b"abc")),
        (b"DROP function  abc", DropFunction(b"abc")),
        (b"maxqueue f", MaxQueue(b"f")),
        (b"maxqueue ", MaxQueue(b"")),
        (b"maxqueue f 5", MaxQueue(b"f", (5, 5, 5))),
        (b"maxqueue f 2 1", MaxQueue(b"f", (2, 1, 0))),
        (b"MAXQUEUE f 1 2 3", MaxQueue(b"f", (1, 2, 3))),
        (b"maxqueue f -5", MaxQueue(b"f", (0, 0, 0))),
        (b"maxqueue f 1x 0 -1", MaxQueue(b"f", (1, 0, 0))),
        (b"maxqueue f abc", MaxQueue(b"f", (0, 0, 0))),
        (b"maxqueue f +7 \t8", MaxQueue(b"f", (7, 8, 0))),
        (b"maxqueue f 4294967297", MaxQueue(b"f", (4294967297,) * 3)),
        (b"version", Version()),
        (b"VERSION please", Version()),
        (b"getpid", GetPid()),
        (b"verbose", Verbose()),
        (b"shutdown", Shutdown(graceful=False)),
        (b"shutdown graceful", Shutdown(graceful=True)),
        (b"SHUTDOWN GRACEFUL", Shutdown(graceful=True)),
        # Words are C strings: each ends at its first NUL byte.
        (b"status\0junk", Status()),
        (b"cancel job H:1\0junk", CancelJob(b"H:1")),
    ],
)
def test_parse_command(line: bytes, expected: AdminCommand) -> None:
    assert parse_command(line) == expected


def test_create_function_keeps_the_last_character() -> None:
    # gearmand 1.1.20 creates "ab" for "create function abc\n"; the decoder has
    # already stripped the line ending, and the name is the whole word.
    assert parse_command(b"create function abc") == CreateFunction(b"abc")


def test_shutdown_refusal_repeats_the_word_as_written() -> None:
    command = parse_command(b"SHUTDOWN")
    assert isinstance(command, Shutdown)
    assert command == Shutdown()
    assert format_error_reply(command.refusal()) == ERROR_LINES[b"SHUTDOWN"]
    assert format_error_reply(SHUTDOWN_REFUSED) == ERROR_LINES[b"shutdown"]


@pytest.mark.parametrize("line", [line for line, reply in ERROR_LINES.items() if reply])
def test_error_lines_byte_exact(line: bytes) -> None:
    result = parse_command(line)
    if isinstance(result, Shutdown):  # parsed so the server can refuse it
        result = result.refusal()
    assert isinstance(result, AdminErrorReply)
    assert format_error_reply(result) == ERROR_LINES[line]


@pytest.mark.parametrize("line", [line for line, reply in ERROR_LINES.items() if not reply])
def test_six_words_are_refused(line: bytes) -> None:
    with pytest.raises(TooManyAdminArguments, match="6 words"):
        parse_command(line)


def test_five_words_are_fine() -> None:
    assert parse_command(b"status a b c d") == Status()
    assert parse_command(b"maxqueue f 1 2 3") == MaxQueue(b"f", (1, 2, 3))


@pytest.mark.parametrize("name", list(SCENE_LINES))
def test_scene_commands_parse(name: str) -> None:
    expected, _, _ = SCENE_VALUES[name]
    assert parse_command(SCENE_LINES[name]) == expected


def test_error_reply_of_a_scene_command_byte_exact() -> None:
    reply = parse_command(SCENE_LINES["show_jobs_trailing_space"])
    assert isinstance(reply, AdminErrorReply)
    assert format_error_reply(reply) == SCENE["show_jobs_trailing_space"]


# --- format_command --------------------------------------------------------------------

_WORD = st.binary(max_size=20).filter(lambda w: not (set(w) & set(b" \n\0")))
_SIZES = st.tuples(*[st.integers(0, 2**31)] * 3)
_COMMANDS = st.one_of(
    st.sampled_from(
        [
            Status(),
            PriorityStatus(),
            Workers(),
            ShowJobs(),
            ShowUniqueJobs(),
            Version(),
            GetPid(),
            Verbose(),
            Shutdown(graceful=False),
            Shutdown(graceful=True),
        ]
    ),
    st.builds(CancelJob, _WORD),
    st.builds(CreateFunction, _WORD),
    st.builds(DropFunction, _WORD),
    st.builds(MaxQueue, _WORD),
    st.builds(MaxQueue, _WORD.filter(bool), _SIZES),
)


@given(_COMMANDS)
def test_format_command_round_trip(command: AdminCommand) -> None:
    line = format_command(command)
    assert line.endswith(b"\r\n")
    assert parse_command(line[:-2]) == command


def test_format_command_examples() -> None:
    assert format_command(Status()) == b"status\r\n"
    assert format_command(ShowUniqueJobs()) == b"show unique jobs\r\n"
    assert format_command(CancelJob(b"H:x:1")) == b"cancel job H:x:1\r\n"
    assert format_command(MaxQueue(b"f")) == b"maxqueue f\r\n"
    assert format_command(MaxQueue(b"f", (1, 2, 0))) == b"maxqueue f 1 2 0\r\n"
    assert format_command(Shutdown(graceful=True)) == b"shutdown graceful\r\n"


@pytest.mark.parametrize(
    "command",
    [CancelJob(b"a b"), CreateFunction(b"a\nstatus"), DropFunction(b"a\0b")],
)
def test_format_command_refuses_words_the_protocol_cannot_carry(command: AdminCommand) -> None:
    with pytest.raises(ValueError, match="space, newline or NUL"):
        format_command(command)


def test_format_command_refuses_an_empty_word_before_the_last() -> None:
    with pytest.raises(ValueError, match="only the last word"):
        format_command(MaxQueue(b"", (1, 1, 1)))
    assert format_command(CancelJob(b"")) == b"cancel job \r\n"


def test_format_command_refuses_an_overlong_line() -> None:
    with pytest.raises(ValueError, match="longer than"):
        format_command(CreateFunction(b"f" * 9000))


def test_maxqueue_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        MaxQueue(b"f", (1, -1, 0))


def test_reply_kind_of_each_command() -> None:
    for name, (command, kind, _) in SCENE_VALUES.items():
        if not isinstance(command, AdminErrorReply):
            assert reply_kind(command) is kind, name
    assert reply_kind(Shutdown()) is OK_REPLY


# --- formatting, byte-exact against gearmand ------------------------------------------


def test_format_status() -> None:
    assert format_status(STATUS) == SCENE["status"]
    assert format_status(STATUS_AFTER_CREATE) == SCENE["status_after_create"]
    assert format_status([]) == b".\n"


def test_format_priority_status() -> None:
    assert format_priority_status(PRIORITY_STATUS) == SCENE["prioritystatus"]


def test_format_workers() -> None:
    assert format_workers(WORKERS) == SCENE["workers"]


def test_format_workers_prints_the_id_as_a_c_string() -> None:
    assert format_workers([WorkerInfo(7, b"::1", b"ab\0cd", (b"f",))]) == b"7 ::1 ab : f\n.\n"


def test_format_show_jobs() -> None:
    assert format_show_jobs(SHOW_JOBS) == SCENE["show_jobs"]
    assert format_show_jobs(SHOW_JOBS_AFTER_CANCEL) == SCENE["show_jobs_after_cancel"]


def test_format_show_unique_jobs_with_empty_uniques() -> None:
    assert format_show_unique_jobs(UNIQUES) == SCENE["show_unique_jobs"]


def test_format_single_lines() -> None:
    assert format_ok() == SCENE["cancel_ok"] == SCENE["create"] == SCENE["maxqueue"]
    assert format_error_reply(UNKNOWN_JOB) == SCENE["cancel_unknown"]
    assert format_error_reply(DROP_FUNCTION_BUSY) == SCENE["drop_busy"]
    assert format_error_reply(DROP_FUNCTION_NOT_FOUND) == SCENE["drop_not_found"]
    assert format_version(b"1.1.20+ds") == SCENE["version"]
    assert format_getpid(GETPID) == SCENE["getpid"]
    assert format_verbose(b"INFO") == SCENE["verbose"]


def test_format_error() -> None:
    assert format_error(b"UNKNOWN_JOB") == b"ERR UNKNOWN_JOB\r\n"
    assert format_error(b"X", b"two words") == b"ERR X two+words\r\n"
    assert format_error(b"", b"function not found") == b"ERR function not found\r\n"


# --- the reply parser -----------------------------------------------------------------


def _read_all(data: bytes, kind: ReplyKind[object], *, step: int | None = None) -> object:
    """Feed ``data`` whole (or ``step`` bytes at a time) and read one reply of ``kind``."""
    parser = ReplyParser()
    reply: object = NEED_DATA
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for i, chunk in enumerate(chunks):
        assert reply is NEED_DATA, f"reply complete after {i} of {len(chunks)} chunks"
        parser.feed(chunk)
        reply = parser.next_reply(kind)
    assert parser.buffered == 0
    return reply


@pytest.mark.parametrize("name", list(SCENE))
@pytest.mark.parametrize("step", [None, 1])
def test_parse_gearmand_replies(name: str, step: int | None) -> None:
    _, kind, expected = SCENE_VALUES[name]
    assert _read_all(SCENE[name], kind, step=step) == expected


@pytest.mark.parametrize("line", [line for line, reply in ERROR_LINES.items() if reply])
def test_parse_gearmand_error_lines(line: bytes) -> None:
    result = parse_command(line)
    expected = result.refusal() if isinstance(result, Shutdown) else result
    kind = STATUS_REPLY if line.startswith(b"show") else OK_REPLY
    reply = _read_all(ERROR_LINES[line], kind)
    assert isinstance(reply, AdminErrorReply)
    assert format_error_reply(reply) == ERROR_LINES[line]
    if b"+" not in line:  # a '+' the peer wrote reads back as a space
        assert reply == expected


def test_pipelined_replies_in_one_chunk() -> None:
    parser = ReplyParser()
    parser.feed(SCENE["status"] + SCENE["cancel_ok"] + SCENE["version"] + SCENE["drop_busy"])
    assert parser.next_reply(STATUS_REPLY) == STATUS
    assert parser.next_reply(OK_REPLY) is None
    assert parser.next_reply(TEXT_REPLY) == b"1.1.20+ds"
    assert parser.next_reply(OK_REPLY) == DROP_FUNCTION_BUSY
    assert parser.next_reply(OK_REPLY) is NEED_DATA
    assert parser.buffered == 0


def test_need_data_until_the_terminator() -> None:
    parser = ReplyParser()
    parser.feed(b"f\t1\t0\t0\n.")
    assert parser.next_reply(STATUS_REPLY) is NEED_DATA
    assert parser.buffered == len(b"f\t1\t0\t0\n.")
    parser.feed(b"\n")
    assert parser.next_reply(STATUS_REPLY) == [FunctionStatus(b"f", 1, 0, 0)]


def test_a_listing_line_that_looks_like_an_error() -> None:
    # gearmand ends every ERR line with \r\n and no listing line with \r.
    data = b"ERR x\t1\t0\t0\n.\n"
    assert _read_all(data, STATUS_REPLY) == [FunctionStatus(b"ERR x", 1, 0, 0)]
    assert _read_all(b"ERR u\n.\n", SHOW_UNIQUE_JOBS_REPLY) == [b"ERR u"]


def test_error_forms() -> None:
    assert _read_all(b"ERR UNKNOWN_JOB\r\n", OK_REPLY) == UNKNOWN_JOB
    assert _read_all(b"ERR\r\n", OK_REPLY) == AdminErrorReply(b"")
    assert _read_all(b"ERR X a+b c\n", TEXT_REPLY) == AdminErrorReply(b"X", b"a b c")
    assert _read_all(b"ERR no code here\r\n", PID_REPLY) == AdminErrorReply(b"", b"no code here")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"f\t1\tx\t0\n.\n", STATUS_REPLY),
        (b"f\t1\t0\n.\n", STATUS_REPLY),
        (b"f\t1\t0\t0\t-1\n.\n", PRIORITY_STATUS_REPLY),
        (b"7 127.0.0.1 no-colon\n.\n", WORKERS_REPLY),
        (b"x 127.0.0.1 - :\n.\n", WORKERS_REPLY),
        (b"7 127.0.0.1\n.\n", WORKERS_REPLY),
        (b"H:1\t0\t0\n.\n", SHOW_JOBS_REPLY),
        (b"WHAT\r\n", OK_REPLY),
        (b"OK 1.1.20\n", OK_REPLY),
        (b"NO\n", TEXT_REPLY),
        (b"OK 12x\n", PID_REPLY),
    ],
)
def test_bad_replies(data: bytes, kind: ReplyKind[object]) -> None:
    parser = ReplyParser()
    parser.feed(data)
    with pytest.raises(BadAdminReply, match="reply line"):
        parser.next_reply(kind)
    # The stream cannot be followed any more: the parser stays broken.
    parser.feed(b"OK\r\n")
    with pytest.raises(BadAdminReply):
        parser.next_reply(OK_REPLY)


def test_lines_are_bounded() -> None:
    parser = ReplyParser(max_line_length=10)
    parser.feed(b"0123456789")
    assert parser.next_reply(OK_REPLY) is NEED_DATA
    parser.feed(b"A")
    with pytest.raises(AdminLineTooLong, match="longer than 10"):
        parser.next_reply(OK_REPLY)
    with pytest.raises(AdminLineTooLong):
        parser.next_reply(OK_REPLY)

    parser = ReplyParser(max_line_length=10)
    parser.feed(b"short\t1\t1\t1\n.\n")
    with pytest.raises(AdminLineTooLong, match="of 11 bytes"):
        parser.next_reply(STATUS_REPLY)


def test_another_kind_while_a_listing_is_half_read() -> None:
    parser = ReplyParser()
    parser.feed(b"f\t1\t0\t0\n")
    assert parser.next_reply(STATUS_REPLY) is NEED_DATA
    with pytest.raises(ValueError, match="status reply is half read"):
        parser.next_reply(WORKERS_REPLY)
    parser.feed(b".\n")
    assert parser.next_reply(STATUS_REPLY) == [FunctionStatus(b"f", 1, 0, 0)]


def test_large_listing_fed_in_pieces() -> None:
    rows = [FunctionStatus(b"function-%d" % i, i, i // 2, 1) for i in range(20000)]
    data = format_status(rows)
    assert len(data) > 2 * 65536
    assert _read_all(data, STATUS_REPLY, step=4096) == rows


# --- parse(format(x)) == x --------------------------------------------------------------

_COUNT = st.integers(0, 2**32 - 1)
_LINE_BYTES = st.binary(max_size=12).filter(lambda b: b"\n" not in b)


def _chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    return chunks


def _round_trip(data: bytes, kind: ReplyKind[object], sizes: list[int]) -> object:
    parser = ReplyParser()
    reply: object = NEED_DATA
    for chunk in _chunked(data, sizes):
        assert reply is NEED_DATA
        parser.feed(chunk)
        reply = parser.next_reply(kind)
    assert parser.buffered == 0
    assert _read_all(data, kind, step=1) == reply
    return reply


_SIZES_DRAWN = st.lists(st.integers(1, 9), max_size=5)


@given(st.lists(st.builds(FunctionStatus, _LINE_BYTES, _COUNT, _COUNT, _COUNT)), _SIZES_DRAWN)
def test_status_round_trip(rows: list[FunctionStatus], sizes: list[int]) -> None:
    assert _round_trip(format_status(rows), STATUS_REPLY, sizes) == rows


@given(
    st.lists(st.builds(FunctionPriorityStatus, _LINE_BYTES, _COUNT, _COUNT, _COUNT, _COUNT)),
    _SIZES_DRAWN,
)
def test_priority_status_round_trip(rows: list[FunctionPriorityStatus], sizes: list[int]) -> None:
    assert _round_trip(format_priority_status(rows), PRIORITY_STATUS_REPLY, sizes) == rows


_ADDRESS = st.binary(max_size=8).filter(lambda b: not (set(b) & set(b" \n")))
_CLIENT_ID = st.binary(max_size=12).filter(lambda b: not (set(b) & set(b"\n\0")))
_FUNCTION = st.binary(max_size=6).filter(lambda b: not (set(b) & set(b" \n")) and b != b":")
_WORKER = st.builds(
    WorkerInfo,
    st.integers(0, 2**31),
    _ADDRESS,
    _CLIENT_ID | st.sampled_from([b"-", b"a : b", b"x :", b" : ", b"id:1"]),
    st.lists(_FUNCTION | st.sampled_from([b":x", b"x:", b"a:b"]), max_size=4).map(tuple),
)


@given(st.lists(_WORKER), _SIZES_DRAWN)
def test_workers_round_trip(rows: list[WorkerInfo], sizes: list[int]) -> None:
    assert _round_trip(format_workers(rows), WORKERS_REPLY, sizes) == rows


@given(
    st.lists(st.builds(JobInfo, _LINE_BYTES, st.integers(0, 255), st.booleans(), st.booleans())),
    _SIZES_DRAWN,
)
def test_show_jobs_round_trip(rows: list[JobInfo], sizes: list[int]) -> None:
    assert _round_trip(format_show_jobs(rows), SHOW_JOBS_REPLY, sizes) == rows


_UNIQUE = (st.just(b"") | _LINE_BYTES).filter(lambda b: b != b"." and not b.endswith(b"\r"))


@given(st.lists(_UNIQUE), _SIZES_DRAWN)
def test_show_unique_jobs_round_trip(uniques: list[bytes], sizes: list[int]) -> None:
    assert _round_trip(format_show_unique_jobs(uniques), SHOW_UNIQUE_JOBS_REPLY, sizes) == uniques


_CODE = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789", min_size=1, max_size=12).map(
    str.encode
)
_TEXT = st.binary(max_size=20).filter(lambda b: not (set(b) & set(b"+\n\r")))


@given(st.one_of(st.builds(AdminErrorReply, _CODE, _TEXT)), _SIZES_DRAWN)
def test_error_round_trip(reply: AdminErrorReply, sizes: list[int]) -> None:
    for kind in (OK_REPLY, STATUS_REPLY, SHOW_UNIQUE_JOBS_REPLY):
        assert _round_trip(format_error_reply(reply), kind, sizes) == reply


@given(st.integers(0, 2**31), _LINE_BYTES.filter(lambda b: not b.endswith(b"\r")))
def test_single_line_round_trip(pid: int, value: bytes) -> None:
    assert _read_all(format_getpid(pid), PID_REPLY, step=1) == pid
    assert _read_all(format_version(value), TEXT_REPLY, step=1) == value
    assert _read_all(format_verbose(value), TEXT_REPLY) == value
    assert _read_all(format_ok(), OK_REPLY, step=1) is None
