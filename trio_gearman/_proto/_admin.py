"""The admin text protocol, sans-IO: commands, the server's replies, and their parsing.

Three jobs, one module:

* **requests**: :func:`parse_command` turns one admin text line (as the decoder's
  :class:`~trio_gearman._proto.TextLine` holds it, without the newline) into a typed
  command, or into the :class:`AdminErrorReply` gearmand 1.1.20 gives for it;
  :func:`format_command` is its inverse, for an admin client.
* **replies, server side**: the ``format_*`` functions return gearmand 1.1.20's exact
  bytes, including its inconsistent line endings (listings end in ``\\n`` and ``.\\n``,
  ``OK`` and ``ERR`` lines in ``\\r\\n``, ``OK <value>`` lines in ``\\n``).
* **replies, client side**: :class:`ReplyParser` reads replies incrementally. The client
  knows which command it sent, so it asks for a reply of one :class:`ReplyKind`.

How gearmand reads a line, and so how :func:`parse_command` does:

* words are separated by runs of spaces (only ``' '``; a tab is part of a word). A
  leading or trailing space makes an empty word: ``" status"`` is the unknown command
  ``""``, and ``"show jobs "`` has three words;
* at most five words; a sixth closes the connection (:class:`TooManyAdminArguments`);
* the command word is compared case-insensitively; extra words after a command that
  takes none are ignored (``"status x"`` is ``status``);
* every word is read as a C string, so it ends at its first NUL byte;
* numbers (``maxqueue``) are read like C's ``atoi``: leading digits, otherwise 0.

Where gearmand has a bug we do not copy it: ``create function abc`` names ``abc`` also
on a line that ends in a bare ``\\n`` (gearmand drops the ``c``), and ``maxqueue``
numbers beyond a C ``int`` are taken as written (gearmand wraps them: ``4294967297``
becomes 1).

``ERR`` lines are ``ERR CODE text+with+plus`` (spaces in the text are sent as ``+``),
``ERR CODE`` when there is no text, and, for ``drop function``, free text with spaces
(``ERR function not found``). An :class:`AdminErrorReply` with an empty ``code`` stands
for the free-text form. Parsing undoes the ``+``; a ``+`` that was in the text cannot be
told apart from a space, as with gearmand itself.

Worker lines (``workers``) are ``FD ADDRESS ID :`` followed by `` FUNCTION`` for each
registered function. The client id may contain spaces (SET_CLIENT_ID allows them), and
so may a function name; the line cannot tell every such case apart. The rule here: the
first two space-separated fields are the descriptor and the address; the id runs up to
the **last** ``" :"`` that ends the line or is followed by a space; the rest, split on
spaces, are the function names. So any client id is read back exactly, and function
names are read back exactly unless they contain a space or are exactly ``":"``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable
from typing import Final, Generic, TypeVar

import attrs

from .._exceptions import AdminLineTooLong, BadAdminReply, TooManyAdminArguments
from ._codec import DEFAULT_MAX_LINE_LENGTH

__all__ = [
    "DEFAULT_MAX_REPLY_LINE_LENGTH",
    "DROP_FUNCTION_BUSY",
    "DROP_FUNCTION_NOT_FOUND",
    "LISTING_END",
    "MAX_ADMIN_WORDS",
    "NEED_DATA",
    "OK_REPLY",
    "PID_REPLY",
    "PRIORITY_STATUS_REPLY",
    "SHOW_JOBS_REPLY",
    "SHOW_UNIQUE_JOBS_REPLY",
    "SHUTDOWN_REFUSED",
    "STATUS_REPLY",
    "TEXT_REPLY",
    "UNKNOWN_JOB",
    "WORKERS_REPLY",
    "AdminCommand",
    "AdminErrorReply",
    "CancelJob",
    "CreateFunction",
    "DropFunction",
    "FunctionPriorityStatus",
    "FunctionStatus",
    "GetPid",
    "JobInfo",
    "MaxQueue",
    "NeedData",
    "PriorityStatus",
    "ReplyKind",
    "ReplyParser",
    "ShowJobs",
    "ShowUniqueJobs",
    "Shutdown",
    "Status",
    "Verbose",
    "Version",
    "WorkerInfo",
    "Workers",
    "format_command",
    "format_error",
    "format_error_reply",
    "format_getpid",
    "format_ok",
    "format_priority_status",
    "format_show_jobs",
    "format_show_unique_jobs",
    "format_status",
    "format_verbose",
    "format_version",
    "format_workers",
    "parse_command",
    "priority_status_line",
    "reply_kind",
    "show_jobs_line",
    "status_line",
    "unknown_command",
    "workers_line",
]

MAX_ADMIN_WORDS: Final = 5
"""The most words an admin line may have; gearmand closes the connection on a sixth."""

DEFAULT_MAX_REPLY_LINE_LENGTH: Final = 1024 * 1024
"""The longest reply line :class:`ReplyParser` accepts by default (1 MiB).

A ``workers`` line lists every function of a connection, so it can be far longer than
the 8 KiB that bound a request line.
"""


# --- requests -------------------------------------------------------------------------


@attrs.frozen
class Status:
    """``status``: per function, the jobs queued or running, those running, and workers."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"status",)


@attrs.frozen
class PriorityStatus:
    """``prioritystatus``: per function, the jobs waiting at each priority, and workers."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"prioritystatus",)


@attrs.frozen
class Workers:
    """``workers``: every connection with its id and registered functions."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"workers",)


@attrs.frozen
class ShowJobs:
    """``show jobs``: every job with its retries and flags."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"show", b"jobs")


@attrs.frozen
class ShowUniqueJobs:
    """``show unique jobs``: the unique key of every job (empty for jobs without one)."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"show", b"unique", b"jobs")


@attrs.frozen
class CancelJob:
    """``cancel job HANDLE``: fail a job and take it out of the queue."""

    handle: bytes

    def _words(self) -> tuple[bytes, ...]:
        return (b"cancel", b"job", self.handle)


@attrs.frozen
class CreateFunction:
    """``create function NAME``: make a function known, with no jobs and no workers."""

    function: bytes

    def _words(self) -> tuple[bytes, ...]:
        return (b"create", b"function", self.function)


@attrs.frozen
class DropFunction:
    """``drop function NAME``: forget a function (gearmand matches the name ignoring case)."""

    function: bytes

    def _words(self) -> tuple[bytes, ...]:
        return (b"drop", b"function", self.function)


def _check_sizes(
    instance: object,
    attribute: attrs.Attribute[tuple[int, int, int] | None],
    value: tuple[int, int, int] | None,
) -> None:
    if value is not None and (len(value) != 3 or any(size < 0 for size in value)):
        raise ValueError(f"maxqueue sizes are three numbers >= 0 (0 = unlimited), got {value!r}")


@attrs.frozen
class MaxQueue:
    """``maxqueue FUNCTION [ALL | HIGH NORMAL [LOW]]``: limit a function's queue.

    Attributes:
        function: the function (a function the server does not know is ignored).
        sizes: the limits for HIGH, NORMAL and LOW submissions, 0 meaning unlimited;
            ``None`` (no numbers given) also means unlimited at every priority. One
            number applies to all three priorities; two leave LOW unlimited.
    """

    function: bytes
    sizes: tuple[int, int, int] | None = attrs.field(default=None, validator=_check_sizes)

    def _words(self) -> tuple[bytes, ...]:
        if self.sizes is None:
            return (b"maxqueue", self.function)
        return (b"maxqueue", self.function, *(b"%d" % size for size in self.sizes))


@attrs.frozen
class Version:
    """``version``: the server's version string."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"version",)


@attrs.frozen
class GetPid:
    """``getpid``: the server's process id."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"getpid",)


@attrs.frozen
class Verbose:
    """``verbose``: the name of the server's log level."""

    def _words(self) -> tuple[bytes, ...]:
        return (b"verbose",)


@attrs.frozen
class Shutdown:
    """``shutdown [graceful]``, parsed so that a server can refuse it.

    gearmand 1.1.20 no longer has it and answers with :meth:`refusal`.

    Attributes:
        graceful: ``shutdown graceful``.
        word: the command word as the peer wrote it (``SHUTDOWN``), which the
            refusal repeats; it takes no part in comparisons.
    """

    graceful: bool = False
    word: bytes = attrs.field(default=b"shutdown", eq=False, repr=False)

    def refusal(self) -> AdminErrorReply:
        """gearmand 1.1.20's answer: ``ERR UNKNOWN_COMMAND Unknown+server+command<word>``."""
        return unknown_command(self.word)

    def _words(self) -> tuple[bytes, ...]:
        return (b"shutdown", b"graceful") if self.graceful else (b"shutdown",)


AdminCommand = (
    Status
    | PriorityStatus
    | Workers
    | ShowJobs
    | ShowUniqueJobs
    | CancelJob
    | CreateFunction
    | DropFunction
    | MaxQueue
    | Version
    | GetPid
    | Verbose
    | Shutdown
)
"""Every admin command."""


@attrs.frozen
class AdminErrorReply:
    """An ``ERR`` reply: the server's answer to a request it refuses.

    Attributes:
        code: the error code, such as ``b"UNKNOWN_COMMAND"``; empty for the free-text
            form (``ERR function not found``).
        text: the explanation, with spaces (the wire sends them as ``+``).
    """

    code: bytes
    text: bytes = b""


def unknown_command(word: bytes) -> AdminErrorReply:
    """The reply to an unknown command word (gearmand puts no space before the word).

    Args:
        word: the command word as the peer sent it.
    """
    return AdminErrorReply(b"UNKNOWN_COMMAND", b"Unknown server command" + word)


def _incomplete(word: bytes) -> AdminErrorReply:
    return AdminErrorReply(
        b"INVALID_ARGUMENTS", b"An incomplete set of arguments was sent to this command " + word
    )


UNKNOWN_JOB: Final = AdminErrorReply(b"UNKNOWN_JOB")
"""``cancel job`` of a handle the server does not know."""
DROP_FUNCTION_NOT_FOUND: Final = AdminErrorReply(b"", b"function not found")
"""``drop function`` of a function the server does not know."""
DROP_FUNCTION_BUSY: Final = AdminErrorReply(
    b"", b"there are still connected workers or executing clients"
)
"""``drop function`` of a function with registered workers or running jobs."""
SHUTDOWN_REFUSED: Final = unknown_command(b"shutdown")
"""gearmand 1.1.20's answer to ``shutdown`` written in lower case (the command was
removed in 1.1.15); :meth:`Shutdown.refusal` repeats the word as the peer wrote it."""

_SPACES: Final = re.compile(rb" +")
_ATOI: Final = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _atoi(word: bytes) -> int:
    """C's ``atoi``: optional blanks and sign, then the leading digits; else 0."""
    match = _ATOI.match(word)
    return int(match.group(1)) if match else 0


def _no_argument(command: AdminCommand) -> Callable[[list[bytes]], AdminCommand]:
    def parse(words: list[bytes]) -> AdminCommand:
        return command

    return parse


def _parse_cancel(words: list[bytes]) -> AdminCommand | AdminErrorReply:
    if len(words) < 3:
        return unknown_command(words[0])
    if len(words) == 3 and words[1].lower() == b"job":
        return CancelJob(words[2])
    return AdminErrorReply(b"UNKNOWN_ERROR")


def _parse_show(words: list[bytes]) -> AdminCommand | AdminErrorReply:
    if len(words) < 2:
        return unknown_command(words[0])
    if len(words) == 3 and words[1].lower() == b"unique" and words[2].lower() == b"jobs":
        return ShowUniqueJobs()
    if len(words) == 2 and words[1].lower() == b"jobs":
        return ShowJobs()
    return AdminErrorReply(b"UNKNOWN_SHOW_ARGUMENTS")


def _parse_create(words: list[bytes]) -> AdminCommand | AdminErrorReply:
    if len(words) == 3 and words[1].lower() == b"function":
        return CreateFunction(words[2])
    return _incomplete(words[0])


def _parse_drop(words: list[bytes]) -> AdminCommand | AdminErrorReply:
    if len(words) == 3 and words[1].lower() == b"function":
        return DropFunction(words[2])
    return _incomplete(words[0])


def _parse_maxqueue(words: list[bytes]) -> AdminCommand | AdminErrorReply:
    if len(words) == 1:
        return _incomplete(words[0])
    numbers = [max(_atoi(word), 0) for word in words[2:]]
    if not numbers:
        return MaxQueue(words[1])
    if len(numbers) == 1:
        return MaxQueue(words[1], (numbers[0], numbers[0], numbers[0]))
    if len(numbers) == 2:
        return MaxQueue(words[1], (numbers[0], numbers[1], 0))
    return MaxQueue(words[1], (numbers[0], numbers[1], numbers[2]))


def _parse_shutdown(words: list[bytes]) -> AdminCommand | AdminErrorReply:
    if len(words) == 1:
        return Shutdown(graceful=False, word=words[0])
    if len(words) == 2 and words[1].lower() == b"graceful":
        return Shutdown(graceful=True, word=words[0])
    return unknown_command(words[0])


_COMMANDS: Final[dict[bytes, Callable[[list[bytes]], AdminCommand | AdminErrorReply]]] = {
    b"status": _no_argument(Status()),
    b"prioritystatus": _no_argument(PriorityStatus()),
    b"workers": _no_argument(Workers()),
    b"version": _no_argument(Version()),
    b"getpid": _no_argument(GetPid()),
    b"verbose": _no_argument(Verbose()),
    b"cancel": _parse_cancel,
    b"show": _parse_show,
    b"create": _parse_create,
    b"drop": _parse_drop,
    b"maxqueue": _parse_maxqueue,
    b"shutdown": _parse_shutdown,
}


def parse_command(line: bytes) -> AdminCommand | AdminErrorReply:
    """Read one admin line the way gearmand 1.1.20 does.

    Args:
        line: the line without its ``\\n`` or ``\\r\\n``.

    Returns:
        The command, or the error reply gearmand sends for this line (format it with
        :func:`format_error_reply`).

    Raises:
        TooManyAdminArguments: the line has more than :data:`MAX_ADMIN_WORDS` words;
            gearmand closes the connection without a reply.

    Example:
        >>> parse_command(b"CANCEL  job H:host:1")
        CancelJob(handle=b'H:host:1')
        >>> parse_command(b"show")
        AdminErrorReply(code=b'UNKNOWN_COMMAND', text=b'Unknown server commandshow')
    """
    words = _SPACES.split(line)
    if len(words) > MAX_ADMIN_WORDS:
        raise TooManyAdminArguments(
            f"admin command of {len(words)} words, more than the {MAX_ADMIN_WORDS} allowed: "
            f"{line[:60]!r}"
        )
    if b"\0" in line:
        words = [word.partition(b"\0")[0] for word in words]
    parse = _COMMANDS.get(words[0].lower())
    if parse is None:
        return unknown_command(words[0])
    return parse(words)


def format_command(command: AdminCommand) -> bytes:
    """The request line for a command, ending in ``\\r\\n``.

    The line ends in CRLF because gearmand 1.1.20 drops the last character of a
    ``create function`` name on a line that ends in a bare ``\\n``.

    Args:
        command: the command to send.

    Raises:
        ValueError: an argument contains a space, a newline or a NUL byte, or is empty
            and not the last word (it would not come back as one word), or the line is
            longer than a server reads.

    Example:
        >>> format_command(MaxQueue(b"resize", (10, 10, 0)))
        b'maxqueue resize 10 10 0\\r\\n'
    """
    words = command._words()
    for word in words:
        if b" " in word or b"\n" in word or b"\0" in word:
            raise ValueError(
                f"{type(command).__name__}: {word!r} contains a space, newline or NUL byte, "
                "which the admin protocol cannot carry"
            )
    if not all(words[:-1]):
        raise ValueError(f"{command!r}: only the last word of an admin line can be empty")
    line = b" ".join(words)
    if len(line) > DEFAULT_MAX_LINE_LENGTH:
        raise ValueError(
            f"{type(command).__name__}: a {len(line)}-byte admin line is longer than "
            f"the {DEFAULT_MAX_LINE_LENGTH} bytes a server reads"
        )
    return line + b"\r\n"


# --- replies: the server side ------------------------------------------------------


@attrs.frozen
class FunctionStatus:
    """One line of ``status``.

    Attributes:
        function: the function name.
        total: jobs queued or running (gearmand counts cancelled and abandoned jobs
            that still wait in the queue too).
        running: jobs a worker holds.
        workers: registered workers.
    """

    function: bytes
    total: int
    running: int
    workers: int


@attrs.frozen
class FunctionPriorityStatus:
    """One line of ``prioritystatus``: jobs *waiting* at each priority, and workers."""

    function: bytes
    high: int
    normal: int
    low: int
    workers: int


@attrs.frozen
class WorkerInfo:
    """One line of ``workers``: one connection, worker or not.

    Attributes:
        fd: the connection's file descriptor (any number that names the connection).
        address: the peer's IP address.
        client_id: the id set by SET_CLIENT_ID, ``b"-"`` by default.
        functions: the registered functions, in the order the server lists them.
    """

    fd: int
    address: bytes
    client_id: bytes
    functions: tuple[bytes, ...] = ()


@attrs.frozen
class JobInfo:
    """One line of ``show jobs``.

    Attributes:
        handle: the job handle.
        retries: how many times the job went back to the queue after a worker left.
        ignore: the job is cancelled or abandoned and is dropped when reached.
        queued: the job is kept in the persistent queue.
    """

    handle: bytes
    retries: int
    ignore: bool
    queued: bool


_OK: Final = b"OK\r\n"
_END: Final = b".\n"


def format_ok() -> bytes:
    """``OK\\r\\n``."""
    return _OK


def format_error(code: bytes, text: bytes = b"") -> bytes:
    """An ``ERR`` line: ``ERR CODE text+with+plus\\r\\n``.

    Args:
        code: the error code; empty for the free-text form that ``drop function``
            uses (``ERR function not found\\r\\n``), where ``text`` is sent as it is.
        text: the explanation; its spaces are sent as ``+``.
    """
    if not code:
        return b"ERR " + text + b"\r\n"
    if text:
        return b"ERR " + code + b" " + text.replace(b" ", b"+") + b"\r\n"
    return b"ERR " + code + b"\r\n"


def format_error_reply(reply: AdminErrorReply) -> bytes:
    """The ``ERR`` line of an :class:`AdminErrorReply`."""
    return format_error(reply.code, reply.text)


LISTING_END: Final = _END
"""The line that ends every listing (``status``, ``workers``, ``show jobs``, ...)."""


def status_line(function: bytes, total: int, running: int, workers: int) -> bytes:
    """One line of ``status``: ``FUNCTION\\tTOTAL\\tRUNNING\\tWORKERS\\n``."""
    return b"%s\t%d\t%d\t%d\n" % (function, total, running, workers)


def priority_status_line(function: bytes, high: int, normal: int, low: int, workers: int) -> bytes:
    """One line of ``prioritystatus``: ``FUNCTION\\tHIGH\\tNORMAL\\tLOW\\tWORKERS\\n``."""
    return b"%s\t%d\t%d\t%d\t%d\n" % (function, high, normal, low, workers)


def workers_line(fd: int, address: bytes, client_id: bytes, functions: Iterable[bytes]) -> bytes:
    """One line of ``workers``: ``FD ADDRESS ID :`` and `` FUNCTION`` per function.

    As gearmand prints the client id as a C string, it ends at its first NUL byte.
    """
    if b"\0" in client_id:
        client_id = client_id.partition(b"\0")[0]
    names = b"".join([b" " + function for function in functions])
    return b"%d %s %s :%s\n" % (fd, address, client_id, names)


def show_jobs_line(handle: bytes, retries: int, ignore: bool, queued: bool) -> bytes:
    """One line of ``show jobs``: ``HANDLE\\tRETRIES\\tIGNORE\\tQUEUED\\n`` (flags 0/1)."""
    return b"%s\t%d\t%d\t%d\n" % (handle, retries, ignore, queued)


def format_status(rows: Iterable[FunctionStatus]) -> bytes:
    """The ``status`` listing: ``FUNCTION\\tTOTAL\\tRUNNING\\tWORKERS\\n`` lines, then ``.\\n``."""
    lines = [status_line(row.function, row.total, row.running, row.workers) for row in rows]
    lines.append(_END)
    return b"".join(lines)


def format_priority_status(rows: Iterable[FunctionPriorityStatus]) -> bytes:
    """The ``prioritystatus`` listing: ``FUNCTION\\tHIGH\\tNORMAL\\tLOW\\tWORKERS\\n`` lines."""
    lines = [
        priority_status_line(row.function, row.high, row.normal, row.low, row.workers)
        for row in rows
    ]
    lines.append(_END)
    return b"".join(lines)


def format_workers(rows: Iterable[WorkerInfo]) -> bytes:
    """The ``workers`` listing: ``FD ADDRESS ID :`` and `` FUNCTION`` per function.

    As gearmand prints the client id as a C string, it ends at its first NUL byte.
    """
    lines = [workers_line(row.fd, row.address, row.client_id, row.functions) for row in rows]
    lines.append(_END)
    return b"".join(lines)


def format_show_jobs(rows: Iterable[JobInfo]) -> bytes:
    """The ``show jobs`` listing: ``HANDLE\\tRETRIES\\tIGNORE\\tQUEUED\\n`` lines (flags 0/1)."""
    lines = [show_jobs_line(row.handle, row.retries, row.ignore, row.queued) for row in rows]
    lines.append(_END)
    return b"".join(lines)


def format_show_unique_jobs(uniques: Iterable[bytes]) -> bytes:
    """The ``show unique jobs`` listing: one line per job, empty for a job without one."""
    lines = [unique + b"\n" for unique in uniques]
    lines.append(_END)
    return b"".join(lines)


def format_version(version: bytes) -> bytes:
    """``OK <version>\\n`` (gearmand: ``OK 1.1.20+ds\\n``)."""
    return b"OK " + version + b"\n"


def format_getpid(pid: int) -> bytes:
    """``OK <pid>\\n``."""
    return b"OK %d\n" % pid


def format_verbose(level: bytes) -> bytes:
    """``OK <level name>\\n``, e.g. ``OK ERROR\\n``."""
    return b"OK " + level + b"\n"


# --- replies: the client side ------------------------------------------------------

_T_co = TypeVar("_T_co", covariant=True)
_T = TypeVar("_T")


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA`."""

    NEED_DATA = enum.auto()


NEED_DATA: Final = NeedData.NEED_DATA
"""What :meth:`ReplyParser.next_reply` returns while the reply is incomplete."""


@attrs.frozen(eq=False)
class ReplyKind(Generic[_T_co]):
    """The shape of a reply, and how to read it into a typed value.

    Use the module's constants (:data:`STATUS_REPLY`, :data:`OK_REPLY`, ...), or
    :func:`reply_kind` for the kind a command gets.

    Attributes:
        name: a name for messages.
        listing: the reply is lines up to a line ``.``; otherwise one line.
    """

    name: str
    listing: bool
    _parse: Callable[[list[bytes]], _T_co] = attrs.field(repr=False, alias="parse")

    def parse(self, lines: list[bytes]) -> _T_co:
        """Read the lines of a complete reply (the single line of a one-line reply).

        Raises:
            BadAdminReply: a line does not have the shape this kind calls for.
        """
        return self._parse(lines)


def _bad(kind: str, line: bytes, why: str) -> BadAdminReply:
    shown = line if len(line) <= 80 else line[:80] + b"..."
    return BadAdminReply(f"{kind} reply line {shown!r}: {why}")


def _number(kind: str, line: bytes, field: bytes) -> int:
    if not field.isdigit():
        raise _bad(kind, line, f"{field!r} is not a number")
    return int(field)


def _parse_status(lines: list[bytes]) -> list[FunctionStatus]:
    rows = []
    for line in lines:
        fields = line.rsplit(b"\t", 3)
        if len(fields) != 4:
            raise _bad("status", line, "expected FUNCTION, TOTAL, RUNNING, WORKERS")
        function, total, running, workers = fields
        rows.append(
            FunctionStatus(
                function,
                _number("status", line, total),
                _number("status", line, running),
                _number("status", line, workers),
            )
        )
    return rows


def _parse_priority_status(lines: list[bytes]) -> list[FunctionPriorityStatus]:
    rows = []
    for line in lines:
        fields = line.rsplit(b"\t", 4)
        if len(fields) != 5:
            raise _bad("prioritystatus", line, "expected FUNCTION, HIGH, NORMAL, LOW, WORKERS")
        function, *numbers = fields
        high, normal, low, workers = (_number("prioritystatus", line, n) for n in numbers)
        rows.append(FunctionPriorityStatus(function, high, normal, low, workers))
    return rows


def _parse_workers(lines: list[bytes]) -> list[WorkerInfo]:
    rows = []
    for line in lines:
        fields = line.split(b" ", 2)
        if len(fields) != 3:
            raise _bad("workers", line, "expected FD ADDRESS ID : FUNCTIONS")
        fd, address, rest = fields
        # The id ends at the last " :" that ends the line or is followed by a space.
        colon = rest.rfind(b" :")
        while colon >= 0 and colon + 2 < len(rest) and rest[colon + 2] != 0x20:
            colon = rest.rfind(b" :", 0, colon + 1)
        if colon < 0:
            raise _bad("workers", line, 'no " :" after the client id')
        functions = rest[colon + 3 :].split(b" ") if colon + 2 < len(rest) else []
        rows.append(
            WorkerInfo(_number("workers", line, fd), address, rest[:colon], tuple(functions))
        )
    return rows


def _parse_show_jobs(lines: list[bytes]) -> list[JobInfo]:
    rows = []
    for line in lines:
        fields = line.rsplit(b"\t", 3)
        if len(fields) != 4:
            raise _bad("show jobs", line, "expected HANDLE, RETRIES, IGNORE, QUEUED")
        handle, retries, ignore, queued = fields
        rows.append(
            JobInfo(
                handle,
                _number("show jobs", line, retries),
                _number("show jobs", line, ignore) != 0,
                _number("show jobs", line, queued) != 0,
            )
        )
    return rows


def _single(lines: list[bytes]) -> bytes:
    (line,) = lines
    return line[:-1] if line.endswith(b"\r") else line


def _parse_ok(lines: list[bytes]) -> None:
    line = _single(lines)
    if line != b"OK":
        raise _bad("OK", line, "expected OK")


def _parse_text(lines: list[bytes]) -> bytes:
    line = _single(lines)
    if line == b"OK":
        return b""
    if not line.startswith(b"OK "):
        raise _bad("OK <value>", line, "expected OK and a value")
    return line[3:]


def _parse_pid(lines: list[bytes]) -> int:
    return _number("getpid", lines[0], _parse_text(lines))


STATUS_REPLY: Final[ReplyKind[list[FunctionStatus]]] = ReplyKind("status", True, _parse_status)
"""The ``status`` listing."""
PRIORITY_STATUS_REPLY: Final[ReplyKind[list[FunctionPriorityStatus]]] = ReplyKind(
    "prioritystatus", True, _parse_priority_status
)
"""The ``prioritystatus`` listing."""
WORKERS_REPLY: Final[ReplyKind[list[WorkerInfo]]] = ReplyKind("workers", True, _parse_workers)
"""The ``workers`` listing."""
SHOW_JOBS_REPLY: Final[ReplyKind[list[JobInfo]]] = ReplyKind("show jobs", True, _parse_show_jobs)
"""The ``show jobs`` listing."""
SHOW_UNIQUE_JOBS_REPLY: Final[ReplyKind[list[bytes]]] = ReplyKind("show unique jobs", True, list)
"""The ``show unique jobs`` listing: the lines themselves."""
OK_REPLY: Final[ReplyKind[None]] = ReplyKind("OK", False, _parse_ok)
"""``OK`` (cancel job, create/drop function, maxqueue): read as ``None``."""
TEXT_REPLY: Final[ReplyKind[bytes]] = ReplyKind("OK <value>", False, _parse_text)
"""``OK <value>`` (version, verbose): read as the value."""
PID_REPLY: Final[ReplyKind[int]] = ReplyKind("getpid", False, _parse_pid)
"""``OK <pid>``: read as a number."""

_KINDS: Final[dict[type[AdminCommand], ReplyKind[object]]] = {
    Status: STATUS_REPLY,
    PriorityStatus: PRIORITY_STATUS_REPLY,
    Workers: WORKERS_REPLY,
    ShowJobs: SHOW_JOBS_REPLY,
    ShowUniqueJobs: SHOW_UNIQUE_JOBS_REPLY,
    CancelJob: OK_REPLY,
    CreateFunction: OK_REPLY,
    DropFunction: OK_REPLY,
    MaxQueue: OK_REPLY,
    Version: TEXT_REPLY,
    GetPid: PID_REPLY,
    Verbose: TEXT_REPLY,
    Shutdown: OK_REPLY,
}


def reply_kind(command: AdminCommand) -> ReplyKind[object]:
    """The kind of reply a command gets (for code that handles any command)."""
    return _KINDS[type(command)]


def _is_error(line: bytes) -> bool:
    return line.startswith(b"ERR") and (len(line) == 3 or line[3] in b" \r")


def _parse_error(line: bytes) -> AdminErrorReply:
    rest = line[4:-1] if line.endswith(b"\r") else line[4:]
    code, _, text = rest.partition(b" ")
    if code and all(c in _CODE_BYTES for c in code):
        return AdminErrorReply(code, text.replace(b"+", b" "))
    return AdminErrorReply(b"", rest)


_CODE_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


class ReplyParser:
    """Reads admin replies from a server, incrementally, whatever the split of the input.

    Replies come in the order of the requests. The caller says which kind of reply it
    waits for, as only the command tells a listing from a single line.

    Args:
        max_line_length: the longest reply line accepted, without its newline.

    Example:
        >>> parser = ReplyParser()
        >>> parser.feed(b"resize\\t3\\t1\\t2\\n.")
        >>> parser.next_reply(STATUS_REPLY)
        <NeedData.NEED_DATA: 1>
        >>> parser.feed(b"\\nOK\\r\\n")
        >>> parser.next_reply(STATUS_REPLY)
        [FunctionStatus(function=b'resize', total=3, running=1, workers=2)]
        >>> parser.next_reply(OK_REPLY) is None
        True
    """

    __slots__ = ("_buffer", "_error", "_kind", "_lines", "_max_line", "_scan", "_start")

    def __init__(self, *, max_line_length: int = DEFAULT_MAX_REPLY_LINE_LENGTH) -> None:
        self._max_line = max_line_length
        self._buffer = bytearray()
        self._start = 0  # first byte not yet consumed
        self._scan = 0  # where the search for the next newline resumes
        self._lines: list[bytes] | None = None  # lines of a listing read so far
        self._kind: ReplyKind[object] | None = None  # the kind of that listing
        self._error: BadAdminReply | AdminLineTooLong | None = None

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned reply."""
        pending = len(self._buffer) - self._start
        if self._lines is not None:
            pending += sum(len(line) + 1 for line in self._lines)
        return pending

    def feed(self, data: bytes) -> None:
        """Add bytes received from the server."""
        self._buffer += data

    def next_reply(self, kind: ReplyKind[_T]) -> _T | AdminErrorReply | NeedData:
        """The next reply, read as ``kind``, once it is complete.

        Args:
            kind: the kind of reply the next command sent gets.

        Returns:
            The typed reply; an :class:`AdminErrorReply` for an ``ERR`` line; or
            :data:`NEED_DATA` until the whole reply has been fed.

        Raises:
            BadAdminReply: the reply does not have the shape of ``kind``. The parser
                stays broken, as the stream cannot be followed any more.
            AdminLineTooLong: a line is longer than ``max_line_length``.
            ValueError: a listing of another kind is half read.
        """
        if self._error is not None:
            raise self._error
        if self._kind is not None and self._kind is not kind:
            raise ValueError(f"a {self._kind.name} reply is half read, not a {kind.name} one")
        try:
            return self._next(kind)
        except (BadAdminReply, AdminLineTooLong) as exc:
            self._error = exc
            raise

    def _next(self, kind: ReplyKind[_T]) -> _T | AdminErrorReply | NeedData:
        lines = self._lines
        while (line := self._next_line()) is not None:
            if lines is None:
                # The first line: an error (gearmand ends those in CRLF, and no listing
                # line in CR), a one-line reply, or the start of a listing.
                if _is_error(line) and (not kind.listing or line.endswith(b"\r")):
                    return _parse_error(line)
                if not kind.listing:
                    return kind.parse([line])
                lines = []
            if line == b".":
                self._lines = self._kind = None
                return kind.parse(lines)
            lines.append(line)
            self._lines, self._kind = lines, kind
        return NEED_DATA

    def _next_line(self) -> bytes | None:
        buffer = self._buffer
        newline = buffer.find(b"\n", self._scan)
        if newline < 0:
            self._scan = len(buffer)
            if self._scan - self._start > self._max_line:
                raise AdminLineTooLong(
                    f"admin reply line longer than {self._max_line} bytes without a newline"
                )
            if self._start and self._start == self._scan:
                buffer.clear()
                self._start = self._scan = 0
            return None
        if newline - self._start > self._max_line:
            raise AdminLineTooLong(
                f"admin reply line of {newline - self._start} bytes, longer than {self._max_line}"
            )
        line = bytes(buffer[self._start : newline])
        self._start = self._scan = newline + 1
        if self._start > 65536 and self._start * 2 > len(buffer):
            del buffer[: self._start]
            self._start = self._scan = 0
        return line
