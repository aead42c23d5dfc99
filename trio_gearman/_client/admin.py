"""AdminClient: the admin text protocol of a Gearman server, with typed results.

One TCP connection, one request at a time (requests from several tasks take turns).
The lines are written and the replies read by the sans-IO :mod:`._proto._admin`.
"""

from __future__ import annotations

import ssl
from collections import deque
from types import TracebackType
from typing import TypeVar

import anyio
import anyio.abc

from .._address import Address, format_server, parse_server
from .._exceptions import (
    AdminError,
    AdminLineTooLong,
    BadAdminReply,
    ConnectionLost,
    InvalidArgument,
)
from .._net.stream import DEFAULT_CONNECT_TIMEOUT, broken_reason, ended_unheard, open_transport
from .._proto._admin import (
    DEFAULT_MAX_REPLY_LINE_LENGTH,
    NEED_DATA,
    OK_REPLY,
    PID_REPLY,
    PRIORITY_STATUS_REPLY,
    SHOW_JOBS_REPLY,
    SHOW_UNIQUE_JOBS_REPLY,
    STATUS_REPLY,
    TEXT_REPLY,
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
    Status,
    Verbose,
    Version,
    WorkerInfo,
    Workers,
    format_command,
)

__all__ = ["AdminClient"]

_T = TypeVar("_T")
_RECEIVE_SIZE = 65536


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


class AdminClient:
    """A connection to a Gearman server's admin interface (``gearadmin``'s protocol).

    Args:
        address: the server: ``"host"``, ``"host:port"``, ``"[::1]:4730"`` or
            ``(host, port)``; the port defaults to 4730. ``tls://host:port`` asks
            for TLS, ``tcp://host:port`` for plaintext.
        connect_timeout: seconds to wait for the TCP connection (and the TLS
            handshake).
        max_line_length: the longest reply line accepted.
        ssl_context: the TLS settings (trusted CAs, a client certificate) for a
            ``tls://`` address; given, an address without a scheme uses TLS too.
            A ``tls://`` address without one is verified against the system's CAs.

    Every method raises :class:`~trio_gearman.AdminError` when the server answers
    ``ERR``, :class:`~trio_gearman.ConnectionLost` when the connection breaks, and
    :class:`~trio_gearman.BadAdminReply` when a reply cannot be read. Wrap a call in
    ``anyio.fail_after`` to bound its time; a request cancelled before its reply came
    leaves the connection usable (the late reply is skipped).

    Example:
        >>> async def main():
        ...     async with AdminClient("127.0.0.1:4730") as admin:
        ...         for row in await admin.status():
        ...             print(row.function, row.total, row.running, row.workers)
    """

    def __init__(
        self,
        address: Address = "127.0.0.1:4730",
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        max_line_length: int = DEFAULT_MAX_REPLY_LINE_LENGTH,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._host, self._port, self._tls = parse_server(address, tls=ssl_context is not None)
        self._connect_timeout = connect_timeout
        self._ssl_context = ssl_context
        self._parser = ReplyParser(max_line_length=max_line_length)
        self._stream: anyio.abc.ByteStream | None = None
        self._lock = anyio.Lock()
        # The reply kinds of requests sent whose replies are not read yet (only those
        # of cancelled requests stay here; their replies are skipped).
        self._unread: deque[ReplyKind[object]] = deque()
        self._error: ConnectionLost | None = None
        self._heard = False  # the server has sent something
        self._closed = False

    @property
    def server(self) -> str:
        """The server's address, ``host:port`` (``tls://host:port`` over TLS)."""
        return format_server(
            self._host, self._port, self._tls, default_tls=self._ssl_context is not None
        )

    async def __aenter__(self) -> AdminClient:
        """Connect to the server.

        Raises:
            ConnectFailed: the connection was refused, the host is unknown or
                unreachable, the TLS handshake failed, or nothing answered within
                ``connect_timeout``.
        """
        if self._stream is not None or self._closed:
            raise RuntimeError("an AdminClient connects once; make a new one")
        self._stream, _ = await open_transport(
            self.server,
            connect_timeout=self._connect_timeout,
            ssl_context=self._ssl_context,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (at once; a request in progress fails)."""
        self._closed = True
        if self._error is None:
            self._error = ConnectionLost("the admin client was closed", server=self.server)
        if self._stream is not None:
            await anyio.aclose_forcefully(self._stream)

    # --- the commands --------------------------------------------------------------------

    async def status(self) -> list[FunctionStatus]:
        """Per function: jobs queued or running, jobs running, registered workers."""
        return await self._request(Status(), STATUS_REPLY)

    async def priority_status(self) -> list[FunctionPriorityStatus]:
        """Per function: jobs waiting at HIGH, NORMAL and LOW priority, and workers."""
        return await self._request(PriorityStatus(), PRIORITY_STATUS_REPLY)

    async def workers(self) -> list[WorkerInfo]:
        """Every connection to the server (this one too) and its registered functions."""
        return await self._request(Workers(), WORKERS_REPLY)

    async def show_jobs(self) -> list[JobInfo]:
        """Every job: handle, retries, and the ignore and queued flags."""
        return await self._request(ShowJobs(), SHOW_JOBS_REPLY)

    async def show_unique_jobs(self) -> list[bytes]:
        """The unique key of every job; ``b""`` for each job that has none."""
        return await self._request(ShowUniqueJobs(), SHOW_UNIQUE_JOBS_REPLY)

    async def version(self) -> str:
        """The server's version, e.g. ``"1.1.20+ds"``."""
        return (await self._request(Version(), TEXT_REPLY)).decode(errors="replace")

    async def getpid(self) -> int:
        """The server's process id."""
        return await self._request(GetPid(), PID_REPLY)

    async def verbose(self) -> str:
        """The name of the server's log level, e.g. ``"ERROR"``."""
        return (await self._request(Verbose(), TEXT_REPLY)).decode(errors="replace")

    async def cancel_job(self, handle: bytes | str) -> None:
        """Cancel a job: its clients get WORK_FAIL and it leaves the queue.

        Raises:
            AdminError: ``UNKNOWN_JOB`` when the server has no such job.
        """
        await self._request(CancelJob(_bytes(handle)), OK_REPLY)

    async def create_function(self, function: bytes | str) -> None:
        """Make a function known to the server, with no jobs and no workers."""
        await self._request(CreateFunction(_bytes(function)), OK_REPLY)

    async def drop_function(self, function: bytes | str) -> None:
        """Make the server forget a function.

        Raises:
            AdminError: with an empty code and the text ``function not found``, or
                ``there are still connected workers or executing clients``.
        """
        await self._request(DropFunction(_bytes(function)), OK_REPLY)

    async def maxqueue(
        self, function: bytes | str, limit: int | tuple[int, int, int] | None = None
    ) -> None:
        """Limit how many jobs a function may hold (queued and running).

        The server ignores the command for a function it does not know.

        Args:
            function: the function.
            limit: ``None`` or 0 for no limit; one number for every priority; or
                ``(high, normal, low)``, each applying to submissions of that priority.

        Raises:
            InvalidArgument: a negative limit.
        """
        sizes = (limit, limit, limit) if isinstance(limit, int) else limit
        try:
            command = MaxQueue(_bytes(function), sizes)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        await self._request(command, OK_REPLY)

    # --- one request -------------------------------------------------------------------

    async def _request(self, command: AdminCommand, kind: ReplyKind[_T]) -> _T:
        try:
            line = format_command(command)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc
        async with self._lock:
            stream = self._usable()
            try:
                await stream.send(line)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._lose(f"the connection broke sending {command!r}: {broken_reason(exc)}", exc)
                raise self._failure() from exc
            except BaseException as exc:  # cancelled: part of the line may have gone out
                self._lose(f"{command!r} was cancelled while being sent", exc)
                raise
            unread = self._unread
            unread.append(kind)
            while len(unread) > 1:  # first the replies to requests that were cancelled
                await self._receive(stream, unread[0], command)
                unread.popleft()
            reply = await self._receive(stream, kind, command)
            unread.popleft()
        if isinstance(reply, AdminErrorReply):
            raise AdminError(
                reply.code.decode(errors="replace"),
                reply.text.decode(errors="replace"),
                server=self.server,
            )
        return reply

    def _usable(self) -> anyio.abc.ByteStream:
        if self._error is not None:
            raise self._error
        if self._stream is None:
            raise RuntimeError("use the admin client inside 'async with AdminClient(...)'")
        return self._stream

    async def _receive(
        self, stream: anyio.abc.ByteStream, kind: ReplyKind[_T], command: AdminCommand
    ) -> _T | AdminErrorReply:
        parser = self._parser
        while True:
            try:
                reply = parser.next_reply(kind)
            except (BadAdminReply, AdminLineTooLong) as exc:
                self._lose(f"unreadable reply: {exc}", exc)
                raise type(exc)(f"{self.server}: {exc}") from exc
            if reply is not NEED_DATA:
                return reply
            try:
                data = await stream.receive(_RECEIVE_SIZE)
            except anyio.EndOfStream as exc:
                self._lose(f"the server closed the connection before answering {command!r}", exc)
                raise self._failure() from exc
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._lose(
                    f"the connection broke waiting for the reply to {command!r}: "
                    f"{broken_reason(exc)}",
                    exc,
                )
                raise self._failure() from exc
            self._heard = True
            parser.feed(data)

    def _lose(self, reason: str, cause: BaseException) -> None:
        if self._error is None:
            if not self._heard:
                reason = ended_unheard(self.server, reason)
            error = ConnectionLost(reason, server=self.server)
            error.__cause__ = cause
            self._error = error

    def _failure(self) -> ConnectionLost:
        assert self._error is not None
        return self._error
