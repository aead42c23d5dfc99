"""The admin text protocol against the real gearmand 1.1.20.

Every command is sent raw (as :func:`format_command` writes it) and gearmand's reply is
read with :class:`ReplyParser`, as the admin client does. Then random admin lines are
sent to gearmand and to :func:`parse_command`, and both must agree.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trio_gearman._exceptions import TooManyAdminArguments
from trio_gearman._proto import (
    CanDo,
    EchoReq,
    GrabJob,
    Message,
    Priority,
    SetClientId,
    SubmitJob,
    encode,
)
from trio_gearman._proto._admin import (
    DROP_FUNCTION_BUSY,
    DROP_FUNCTION_NOT_FOUND,
    NEED_DATA,
    UNKNOWN_JOB,
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
    format_error_reply,
    parse_command,
    reply_kind,
)

from .gearmand_peer import GearmandProcess

pytestmark = pytest.mark.gearmand


class Peer:
    """One raw connection to gearmand."""

    def __init__(self, server: GearmandProcess) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=5)
        self.parser = ReplyParser()

    def close(self) -> None:
        self.sock.close()

    def sync(self, *messages: Message) -> bytes:
        """Send packets, then wait until gearmand has handled them (an echo comes back)."""
        self.sock.sendall(b"".join(encode(m) for m in messages) + encode(EchoReq(b"sync")))
        data = b""
        while not data.endswith(b"sync"):
            chunk = self.sock.recv(65536)
            assert chunk, f"gearmand closed the connection after {data!r}"
            data += chunk
        return data

    def ask(self, kind: ReplyKind[object], line: bytes, *, step: int | None = None) -> object:
        """Send one admin line and read its reply as ``kind``."""
        self.sock.sendall(line)
        while (reply := self.parser.next_reply(kind)) is NEED_DATA:
            chunk = self.sock.recv(step or 65536)
            assert chunk, "gearmand closed the connection"
            self.parser.feed(chunk)
        return reply

    def command(self, command: AdminCommand, *, step: int | None = None) -> object:
        return self.ask(reply_kind(command), format_command(command), step=step)


@pytest.fixture
def server(gearmand: GearmandProcess) -> Iterator[GearmandProcess]:
    """The ``gearmand`` fixture; its log pipe is closed afterwards (it is drained by a
    separate process, and an open pipe would be reported as a ResourceWarning)."""
    yield gearmand
    if gearmand.process.stderr is not None:
        gearmand.process.stderr.close()


@pytest.fixture
def connect(server: GearmandProcess) -> Iterator[Callable[[], Peer]]:
    """Open raw connections to gearmand; all are closed after the test."""
    peers: list[Peer] = []

    def open_peer() -> Peer:
        peers.append(Peer(server))
        return peers[-1]

    yield open_peer
    for peer in peers:
        peer.close()


@pytest.fixture
def scene(server: GearmandProcess, connect: Callable[[], Peer]) -> GearmandProcess:
    """gearmand with three workers, five jobs (one running) and a foreground client."""
    worker_a, worker_b, worker_c, client = (connect() for _ in range(4))
    worker_a.sync(SetClientId(b"worker-A"), CanDo(b"resize"), CanDo(b"thumb"))
    worker_b.sync(CanDo(b"email"))
    worker_c.sync(SetClientId(b"id with : spaces"), CanDo(b"a:b"))
    created = client.sync(
        SubmitJob(b"resize", b"img-1", b"x", background=True),
        SubmitJob(b"resize", b"", b"x", background=True),
        SubmitJob(b"thumb", b"img-2", b"x", Priority.HIGH, background=True),
        SubmitJob(b"resize", b"", b"y", Priority.LOW, background=True),
        SubmitJob(b"newfn", b"m-1", b"z"),
    )
    assert created.count(b"H:") == 5
    assert b"\0thumb\0" in worker_a.sync(GrabJob())
    return server


def _handles(admin: Peer) -> list[bytes]:
    jobs = admin.command(ShowJobs())
    assert isinstance(jobs, list)
    return sorted(job.handle for job in jobs)


def test_listings_read_into_typed_values(
    scene: GearmandProcess, connect: Callable[[], Peer]
) -> None:
    admin = connect()
    status = admin.command(Status())
    assert isinstance(status, list)
    assert Counter(status) == Counter(
        [
            FunctionStatus(b"newfn", 1, 0, 0),
            FunctionStatus(b"email", 0, 0, 1),
            FunctionStatus(b"thumb", 1, 1, 1),
            FunctionStatus(b"a:b", 0, 0, 1),
            FunctionStatus(b"resize", 3, 0, 1),
        ]
    )
    priority = admin.command(PriorityStatus())
    assert isinstance(priority, list)
    assert Counter(priority) == Counter(
        [
            FunctionPriorityStatus(b"newfn", 0, 1, 0, 0),
            FunctionPriorityStatus(b"email", 0, 0, 0, 1),
            FunctionPriorityStatus(b"thumb", 0, 0, 0, 1),
            FunctionPriorityStatus(b"a:b", 0, 0, 0, 1),
            FunctionPriorityStatus(b"resize", 0, 2, 1, 1),
        ]
    )
    workers = admin.command(Workers(), step=7)
    assert isinstance(workers, list)
    assert all(isinstance(w, WorkerInfo) and w.address == b"127.0.0.1" for w in workers)
    assert len({w.fd for w in workers}) == len(workers) == 5  # 4 peers and this admin
    assert Counter((w.client_id, w.functions) for w in workers) == Counter(
        [
            (b"worker-A", (b"thumb", b"resize")),  # reverse registration order
            (b"-", (b"email",)),
            (b"id with : spaces", (b"a:b",)),
            (b"-", ()),
            (b"-", ()),
        ]
    )
    jobs = admin.command(ShowJobs())
    assert isinstance(jobs, list)
    assert all(isinstance(job, JobInfo) for job in jobs)
    assert sorted((job.retries, job.ignore, job.queued) for job in jobs) == sorted(
        [(0, False, True)] * 4 + [(0, False, False)]  # background jobs are "queued"
    )
    uniques = admin.command(ShowUniqueJobs(), step=1)
    assert isinstance(uniques, list)
    assert sorted(uniques) == [b"", b"", b"img-1", b"img-2", b"m-1"]


def test_single_line_replies(scene: GearmandProcess, connect: Callable[[], Peer]) -> None:
    admin = connect()
    assert admin.command(Version()) == b"1.1.20+ds"
    assert admin.command(GetPid()) == scene.process.pid
    assert admin.command(Verbose()) == b"INFO"
    assert admin.command(Shutdown()) == Shutdown().refusal()
    assert admin.command(Shutdown(graceful=True)) == Shutdown().refusal()


def test_cancel_create_drop_maxqueue(scene: GearmandProcess, connect: Callable[[], Peer]) -> None:
    admin = connect()
    handles = _handles(admin)
    assert admin.command(CancelJob(b"H:nosuch:99")) == UNKNOWN_JOB
    assert admin.command(CancelJob(handles[0])) is None
    jobs = admin.command(ShowJobs())
    assert isinstance(jobs, list)
    assert [job.ignore for job in jobs if job.handle == handles[0]] == [True]

    # format_command ends lines in CRLF, so gearmand creates the whole name.
    assert admin.command(CreateFunction(b"abc")) is None
    status = admin.command(Status())
    assert isinstance(status, list)
    assert FunctionStatus(b"abc", 0, 0, 0) in status
    assert admin.command(DropFunction(b"ABC")) is None  # gearmand ignores case here
    assert admin.command(DropFunction(b"abc")) == DROP_FUNCTION_NOT_FOUND
    assert admin.command(DropFunction(b"resize")) == DROP_FUNCTION_BUSY

    assert admin.command(MaxQueue(b"resize", (1, 1, 1))) is None
    assert admin.command(MaxQueue(b"nosuch")) is None
    refused = connect().sync(SubmitJob(b"resize", b"", b"x", background=True))
    assert b"QUEUE_ERROR\0Job queue is full" in refused


def test_pipelined_commands_on_one_connection(
    scene: GearmandProcess, connect: Callable[[], Peer]
) -> None:
    admin = connect()
    commands: list[AdminCommand] = [Status(), Version(), CancelJob(b"H:x:1"), Workers(), GetPid()]
    admin.sock.sendall(b"".join(format_command(c) for c in commands))
    replies = []
    for command in commands:
        while (reply := admin.parser.next_reply(reply_kind(command))) is NEED_DATA:
            admin.parser.feed(admin.sock.recv(3))
        replies.append(reply)
    assert replies[1] == b"1.1.20+ds"
    assert replies[2] == UNKNOWN_JOB
    assert replies[4] == scene.process.pid
    assert isinstance(replies[0], list)
    assert len(replies[0]) == 5
    assert isinstance(replies[3], list)
    assert len(replies[3]) == 5


# --- parse_command agrees with gearmand on any line -----------------------------------

_WORDS = [
    "status",
    "prioritystatus",
    "workers",
    "show",
    "jobs",
    "unique",
    "cancel",
    "job",
    "create",
    "drop",
    "function",
    "maxqueue",
    "version",
    "getpid",
    "verbose",
    "shutdown",
    "graceful",
    "f",
    "H:x:1",
    "5",
    "-3",
    "x+y",
    "",
]
_WORD = st.sampled_from(_WORDS).flatmap(
    lambda w: st.sampled_from([w, w.upper(), w.capitalize()])
) | st.text(alphabet="ab\t\r:", max_size=3)
_LINE = st.tuples(
    st.lists(_WORD, min_size=1, max_size=7),
    st.lists(st.integers(1, 3), min_size=7, max_size=7),
).map(lambda t: " ".join(w + " " * (n - 1) for w, n in zip(*t, strict=False)).encode())


def _gearmand_reply(server: GearmandProcess, line: bytes) -> bytes:
    """gearmand's whole reply to one line on a fresh connection (b"" if it closes)."""
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(line + b"\r\n")
        data = b""
        while not (
            (data.startswith((b"OK", b"ERR")) and data.endswith(b"\n"))
            or data == b".\n"
            or data.endswith(b"\n.\n")
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


_DOMAIN_ERRORS = {UNKNOWN_JOB, DROP_FUNCTION_BUSY, DROP_FUNCTION_NOT_FOUND}


def _agrees(server: GearmandProcess, line: bytes) -> None:
    reply = _gearmand_reply(server, line)
    try:
        ours = parse_command(line)
    except TooManyAdminArguments:
        assert reply == b"", line
        return
    if isinstance(ours, Shutdown):
        ours = ours.refusal()
    if isinstance(ours, AdminErrorReply):
        assert format_error_reply(ours) == reply, line
        return
    parser = ReplyParser()
    parser.feed(reply)
    read = parser.next_reply(reply_kind(ours))
    assert read is not NEED_DATA, (line, reply)
    assert parser.buffered == 0
    assert not isinstance(read, AdminErrorReply) or read in _DOMAIN_ERRORS, (line, reply)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=_LINE)
def test_random_lines_agree_with_gearmand(server: GearmandProcess, line: bytes) -> None:
    _agrees(server, line)


def test_edge_lines_agree_with_gearmand(server: GearmandProcess) -> None:
    lines = [
        b"",
        b" ",
        b"status\0junk",
        b"cancel job H:1\0x",
        b"create function ",
        b"maxqueue ",
        b"drop function ",
        b"show jobs ",
        b"status a b c d",
        b"status a b c d ",
        b"a\tb c",
        b"status\r",
    ]
    for line in lines:
        _agrees(server, line)
