"""The one exception tree of trio_gearman, rooted at :class:`GearmanError`.

Errors raised by the sans-IO protocol layer describe what the *peer* did wrong
(:class:`ProtocolError` and its subclasses); each names what was wrong and where
(the byte offset in the stream and, where known, the packet type).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AdminError",
    "AdminLineTooLong",
    "BadAdminReply",
    "BadArgumentCount",
    "BadMagic",
    "ConnectFailed",
    "ConnectionLost",
    "GearmanError",
    "InvalidArgument",
    "JobError",
    "JobException",
    "JobFailed",
    "NoServersAvailable",
    "PacketTooLarge",
    "ProtocolError",
    "ServerConnectionError",
    "ServerLost",
    "TooManyAdminArguments",
    "UniqueTooLong",
    "UnknownPacketType",
]


class GearmanError(Exception):
    """Base class of every error raised by trio_gearman."""


class ProtocolError(GearmanError, ValueError):
    """The peer broke the Gearman protocol; the connection cannot continue.

    Attributes:
        offset: byte offset in the received stream where the offending packet or
            line starts, or ``None`` when not known.
    """

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        if offset is not None:
            message = f"{message} (at byte {offset} of the stream)"
        super().__init__(message)
        self.offset = offset


class BadMagic(ProtocolError):
    """A binary packet started with neither ``\\0REQ`` nor ``\\0RES``."""


class UnknownPacketType(ProtocolError):
    """A binary packet carried a type number that the protocol does not define."""


class BadArgumentCount(ProtocolError):
    """A packet's body held the wrong number of NUL-separated arguments."""


class PacketTooLarge(ProtocolError):
    """A packet header declared a body larger than the configured maximum."""


class AdminLineTooLong(ProtocolError):
    """An admin text line ran past the configured bound without a newline."""


class TooManyAdminArguments(ProtocolError):
    """An admin text line held more words than the admin protocol allows."""


class BadAdminReply(ProtocolError):
    """A server's admin reply did not have the shape its command calls for."""


class ServerConnectionError(GearmanError, ConnectionError):
    """Connecting to a Gearman server failed, or the connection broke during a request.

    Attributes:
        server: the server's address, as ``host:port``.
    """

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(f"{server}: {message}")
        self.server = server


class AdminError(GearmanError):
    """A server answered an admin command with an ``ERR`` line.

    Attributes:
        code: the error code, e.g. ``"UNKNOWN_JOB"``; empty for gearmand's free-text
            errors (``ERR function not found``).
        text: the explanation, with the ``+`` that stand for spaces on the wire
            turned back into spaces.
        server: the server's address, when known.
    """

    def __init__(self, code: str, text: str = "", *, server: str | None = None) -> None:
        reply = " ".join(part for part in (code, text) if part)
        super().__init__(f"{server}: ERR {reply}" if server else f"ERR {reply}")
        self.code = code
        self.text = text
        self.server = server


def _job_context(server: str | None, function: str | None, handle: str | None) -> str:
    parts = []
    if function is not None:
        parts.append(f"function {function!r}")
    if handle is not None:
        parts.append(f"job {handle}")
    if server is not None:
        parts.append(f"server {server}")
    return f" ({', '.join(parts)})" if parts else ""


class ConnectFailed(ServerConnectionError):
    """A server could not be reached: refused, unreachable or silent past the timeout."""


class ConnectionLost(ServerConnectionError):
    """The connection to a server broke, or was closed, while a request was in flight.

    Attributes:
        server: the server's address, as ``host:port``.
        function: the function of the interrupted job, where there was one.
        handle: the handle of the interrupted job, where the server had assigned one.
    """

    def __init__(
        self,
        message: str,
        *,
        server: str,
        function: str | None = None,
        handle: str | None = None,
    ) -> None:
        super().__init__(message + _job_context(None, function, handle), server=server)
        self.function = function
        self.handle = handle


class NoServersAvailable(GearmanError):
    """None of the configured servers could be reached.

    The per-server errors are kept: ``__cause__`` is an exception group holding one
    error per server (a :class:`ConnectFailed`, or what broke its last
    connection), and the message names each server with its reason, e.g.
    ``no job server available: 127.0.0.1:4730 (cannot connect: Connection
    refused), 127.0.0.1:4731 (did not come up within 5 s)``.

    Args:
        servers: the addresses that were tried, in order.
        errors: each server's error, in the same order, for the message.

    Attributes:
        servers: the addresses that were tried, in order.
    """

    def __init__(self, servers: tuple[str, ...], errors: Sequence[BaseException] = ()) -> None:
        if errors:
            reasons = ", ".join(
                f"{server} ({_reason(server, error)})"
                for server, error in zip(servers, errors, strict=True)
            )
            message = f"no job server available: {reasons}"
        else:
            message = f"no Gearman server could be reached (tried {', '.join(servers)})"
        super().__init__(message)
        self.servers = servers


def _reason(server: str, error: BaseException) -> str:
    """An error's text without the server's name in front (the message names it)."""
    text = str(error) or type(error).__name__
    return text.removeprefix(f"{server}: ")


class InvalidArgument(GearmanError, ValueError):
    """An argument cannot be sent: checked before anything goes on the wire."""


class UniqueTooLong(InvalidArgument):
    """A unique key is longer than the 64 bytes that servers accept."""


class JobFailed(GearmanError):
    """A job failed: the worker sent WORK_FAIL.

    A worker function raises it to fail its job without an error text.

    Attributes:
        server: the server that ran the job, when known.
        function: the job's function name, when known.
        handle: the job handle, when known.
    """

    def __init__(
        self,
        message: str = "",
        *,
        server: str | None = None,
        function: str | None = None,
        handle: str | None = None,
    ) -> None:
        super().__init__((message or "the job failed") + _job_context(server, function, handle))
        self.server = server
        self.function = function
        self.handle = handle


class JobException(JobFailed):
    """A job failed with an error text: the worker sent WORK_EXCEPTION.

    A worker function raises it to fail its job with that text.

    Attributes:
        data: the worker's error text, as sent.
    """

    def __init__(
        self,
        data: bytes | str = b"",
        *,
        server: str | None = None,
        function: str | None = None,
        handle: str | None = None,
    ) -> None:
        self.data = data.encode() if isinstance(data, str) else bytes(data)
        text = self.data.decode(errors="replace")
        super().__init__(f"the job raised: {text}", server=server, function=function, handle=handle)


class JobError(GearmanError):
    """The server refused a request with an ERROR packet (e.g. ``QUEUE_ERROR``).

    Attributes:
        code: the error code, e.g. ``"QUEUE_ERROR"``.
        text: the server's explanation.
        server: the server that answered.
        function: the function of the refused submission, where there was one.
    """

    def __init__(self, code: str, text: str, *, server: str, function: str | None = None) -> None:
        super().__init__(f"{code}: {text}" + _job_context(server, function, None))
        self.code = code
        self.text = text
        self.server = server
        self.function = function


class ServerLost(ConnectionLost):
    """The server of an accepted foreground job went away before the job ended.

    The job may or may not have run (a server with persistence runs it again after
    a restart). ``Client(retry_on_server_loss=True)`` resubmits such a job to
    another live server instead of raising.
    """
