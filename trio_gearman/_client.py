"""The Gearman client: submit jobs, follow them, ask for their status."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import anyio
import anyio.abc

from ._client_conn import ClientConnection, Submission
from ._client_job import ForegroundJob, JobHandle, JobStatus
from ._codecs import Codec, function_name, payload, unique_key
from ._exceptions import GearmanError, InvalidArgument
from ._proto import (
    EchoReq,
    EchoRes,
    GetStatus,
    GetStatusUnique,
    Message,
    Priority,
    StatusRes,
    StatusResUnique,
)
from ._servers import Connector, open_first_reachable, server_list
from ._stream import DEFAULT_CONNECT_TIMEOUT, Address

__all__ = ["Client"]

R = TypeVar("R")
U = TypeVar("U")

_MAX_HANDLE_SIZE = 63  # gearmand drops the connection on a longer GET_STATUS handle


def _identity(data: bytes) -> bytes:
    return data


class Client(Generic[R]):
    """A Gearman client: an async context manager owning one server connection.

    The client connects to the first reachable server of ``servers`` on entry
    (and again on the next call after that connection is lost). Any number of
    tasks may use it at once: requests share the connection and their replies
    are matched in order, results by job handle. Cancelling a call (a cancel
    scope, a timeout) detaches it cleanly; the connection stays usable.

    Args:
        servers: ``"host:port"``, a comma-separated list, or a sequence of
            addresses (``"host"``, ``"host:port"``, ``"[v6]:port"``, ``(host, port)``).
        client_id: sent as SET_CLIENT_ID (shown by the server's ``workers`` command).
        codec: encodes job data and decodes results for every call that does not
            give its own; by default data is bytes (``str`` is sent as UTF-8) and
            results are bytes.
        connect_timeout: seconds to wait for each server.
        exceptions: ask the server to forward WORK_EXCEPTION (raised as
            :class:`~trio_gearman.JobException` with the worker's text); without
            it a failing job raises :class:`~trio_gearman.JobFailed`.

    Example:
        >>> async def main():
        ...     async with trio_gearman.Client(["127.0.0.1:4730"], client_id="web-1") as client:
        ...         assert await client.submit("reverse", b"hello") == b"olleh"
        ...         handle = await client.submit_background("resize", b"img-42",
        ...                                                 priority=Priority.HIGH)
        ...         status = await client.get_status(handle)
    """

    @overload
    def __init__(
        self: Client[bytes],
        servers: Address | Sequence[Address],
        *,
        client_id: str | bytes | None = None,
        codec: None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        exceptions: bool = True,
    ) -> None: ...

    @overload
    def __init__(
        self: Client[R],
        servers: Address | Sequence[Address],
        *,
        client_id: str | bytes | None = None,
        codec: Codec[R],
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        exceptions: bool = True,
    ) -> None: ...

    def __init__(
        self,
        servers: Address | Sequence[Address],
        *,
        client_id: str | bytes | None = None,
        codec: Codec[Any] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        exceptions: bool = True,
    ) -> None:
        self.servers = server_list(servers)
        self._client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self._codec = codec
        self._connect_timeout = connect_timeout
        self._exceptions = exceptions
        self._tg: anyio.abc.TaskGroup | None = None
        self._conn: ClientConnection | None = None
        self._lock = anyio.Lock()
        self._closed = False
        self._connector: Connector | None = None  # tests: in-memory connections

    @property
    def server(self) -> str | None:
        """The server of the current connection, or ``None`` when not connected."""
        conn = self._conn
        return conn.server if conn is not None and conn.error is None else None

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> Client[R]:
        if self._tg is not None or self._closed:
            raise RuntimeError("a Client can be entered only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await self._connect()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closed = True
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)

    async def _connect(self) -> ClientConnection:
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.error is None:
                return conn
            if self._tg is None:
                raise RuntimeError("use the client inside 'async with Client(...)'")
            stream = await open_first_reachable(
                self.servers, timeout=self._connect_timeout, connector=self._connector
            )
            conn = ClientConnection(stream, client_id=self._client_id, exceptions=self._exceptions)
            await self._tg.start(conn.run)
            self._conn = conn
            return conn

    async def _connection(self) -> ClientConnection:
        conn = self._conn
        if conn is not None and conn.error is None:
            return conn
        if self._closed:
            raise RuntimeError("the client is closed")
        return await self._connect()

    def _encoder_decoder(self, codec: Codec[Any] | None) -> tuple[Any, Any]:
        codec = codec if codec is not None else self._codec
        if codec is None:
            return payload, _identity
        return codec.encode, codec.decode

    # --- submitting ----------------------------------------------------------------------

    @overload
    async def submit(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = ...,
        unique: str | bytes | None = ...,
        codec: None = None,
    ) -> R: ...

    @overload
    async def submit(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = ...,
        unique: str | bytes | None = ...,
        codec: Codec[U],
    ) -> U: ...

    async def submit(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = Priority.NORMAL,
        unique: str | bytes | None = None,
        codec: Codec[Any] | None = None,
    ) -> Any:
        """Run a foreground job and return its result.

        Args:
            function: the function name.
            data: the payload: bytes, or ``str`` (sent as UTF-8); any value when a
                codec is in use.
            priority: HIGH, NORMAL or LOW.
            unique: a unique key (at most 64 bytes): jobs with the same function and
                key run once and share the result; ``"-"`` asks the server to use
                the payload as the key.
            codec: overrides the client's codec for this call.

        Returns:
            The WORK_COMPLETE data (decoded by the codec, if any).

        Raises:
            JobFailed: the worker failed the job (WORK_FAIL).
            JobException: the worker failed it with an error text (WORK_EXCEPTION).
            JobError: the server refused the submission (ERROR).
            ConnectionLost: the connection ended before the job did.
            UniqueTooLong: ``unique`` is longer than 64 bytes (nothing was sent).
        """
        encode, decode = self._encoder_decoder(codec)
        name = function_name(function)
        key = unique_key(unique)
        body = encode(data)
        conn = self._conn
        if conn is None or conn.error is not None:
            conn = await self._connection()
        submission = conn.submit(name, key, body, priority)
        try:
            while not submission.done:
                await submission.next_change()
        finally:
            if not submission.done:
                conn.abandon(submission)
        if submission.error is not None:
            raise submission.error
        return decode(submission.result)

    async def submit_background(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = Priority.NORMAL,
        unique: str | bytes | None = None,
        at: datetime | None = None,
        codec: Codec[Any] | None = None,
    ) -> JobHandle:
        """Queue a background job and return its handle once the server has it.

        Args:
            function: the function name.
            data: the payload, as for :meth:`submit`.
            priority: HIGH, NORMAL or LOW.
            unique: a unique key, as for :meth:`submit`.
            at: run the job no earlier than this time (SUBMIT_JOB_EPOCH; a naive
                datetime is local time). Such jobs have normal priority.
            codec: overrides the client's codec for this call.

        Returns:
            The job's handle, for :meth:`get_status`.

        Raises:
            JobError: the server refused the submission (e.g. its queue is full).
            ConnectionLost: the connection ended before the server answered.
            InvalidArgument: ``at`` was given with a priority other than NORMAL.
        """
        encode, _ = self._encoder_decoder(codec)
        name = function_name(function)
        key = unique_key(unique)
        body = encode(data)
        epoch = None
        if at is not None:
            if priority is not Priority.NORMAL:
                raise InvalidArgument("a job scheduled with at= always has NORMAL priority")
            epoch = int(at.timestamp())
        conn = await self._connection()
        submission = conn.submit(name, key, body, priority, background=True, epoch=epoch)
        await self._settle(conn, submission)
        assert submission.handle is not None
        return JobHandle(submission.handle, conn.server)

    @overload
    def submit_job(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = ...,
        unique: str | bytes | None = ...,
        codec: None = None,
    ) -> ForegroundJob[R]: ...

    @overload
    def submit_job(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = ...,
        unique: str | bytes | None = ...,
        codec: Codec[U],
    ) -> ForegroundJob[U]: ...

    def submit_job(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = Priority.NORMAL,
        unique: str | bytes | None = None,
        codec: Codec[Any] | None = None,
    ) -> ForegroundJob[Any]:
        """A foreground job to follow: WORK_DATA, WORK_WARNING, WORK_STATUS, then its end.

        Entering the returned object submits the job and waits for its handle.

        Example:
            >>> async def count(client):
            ...     async with client.submit_job("count", b"5") as job:
            ...         async for update in job:      # WorkData | WorkWarning | WorkStatus
            ...             print(update)
            ...     return job.result                 # bytes, once complete

        Raises:
            UniqueTooLong: ``unique`` is longer than 64 bytes (nothing was sent).
        """
        encode, decode = self._encoder_decoder(codec)
        name = function_name(function)
        key = unique_key(unique)
        body = encode(data)

        async def start() -> tuple[ClientConnection, Submission]:
            conn = await self._connection()
            return conn, conn.submit(name, key, body, priority, want_updates=True)

        return ForegroundJob(start, decode, name.decode(errors="replace"))

    @overload
    async def map(
        self,
        function: str | bytes,
        items: Iterable[object],
        *,
        concurrency: int = ...,
        priority: Priority = ...,
        codec: None = None,
    ) -> list[R]: ...

    @overload
    async def map(
        self,
        function: str | bytes,
        items: Iterable[object],
        *,
        concurrency: int = ...,
        priority: Priority = ...,
        codec: Codec[U],
    ) -> list[U]: ...

    async def map(
        self,
        function: str | bytes,
        items: Iterable[object],
        *,
        concurrency: int = 100,
        priority: Priority = Priority.NORMAL,
        codec: Codec[Any] | None = None,
    ) -> list[Any]:
        """Run one foreground job per item, at most ``concurrency`` at once.

        Returns:
            The results, in the order of ``items``.

        Raises:
            JobFailed: the first job that failed (the others are cancelled); also
                any other error :meth:`submit` raises.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        work = list(enumerate(items))
        results: list[Any] = [None] * len(work)
        pending = iter(work)
        failure: list[GearmanError] = []

        async def run(scope: anyio.CancelScope) -> None:
            for index, item in pending:
                try:
                    results[index] = await self.submit(
                        function, item, priority=priority, codec=codec
                    )
                except GearmanError as exc:
                    failure.append(exc)
                    scope.cancel()
                    return

        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, len(work))):
                tg.start_soon(run, tg.cancel_scope)
        if failure:
            raise failure[0]
        return results

    # --- status and echo -------------------------------------------------------------------

    async def get_status(self, handle: JobHandle | bytes | str) -> JobStatus:
        """Ask the server about a job by handle (GET_STATUS).

        Raises:
            InvalidArgument: the handle is longer than 63 bytes (gearmand would
                drop the connection).
            ConnectionLost: the connection ended before the answer.
        """
        if isinstance(handle, JobHandle):
            raw = handle.handle
        else:
            raw = handle.encode() if isinstance(handle, str) else bytes(handle)
        if len(raw) > _MAX_HANDLE_SIZE or b"\0" in raw:
            raise InvalidArgument(f"not a job handle: {raw[:80]!r}")
        reply = await self._call(GetStatus(raw), StatusRes)
        return JobStatus(reply.known, reply.running, reply.numerator, reply.denominator)

    async def get_status_unique(self, unique: str | bytes) -> JobStatus:
        """Ask the server about a job by unique key (GET_STATUS_UNIQUE).

        The answer also counts the foreground clients waiting for the job.

        Raises:
            InvalidArgument: the key is longer than 63 bytes (gearmand would drop
                the connection) or holds a NUL byte.
        """
        key = unique_key(unique)
        if len(key) > _MAX_HANDLE_SIZE:
            raise InvalidArgument("status by unique key needs a key of at most 63 bytes")
        reply = await self._call(GetStatusUnique(key), StatusResUnique)
        return JobStatus(
            reply.known, reply.running, reply.numerator, reply.denominator, reply.clients
        )

    async def echo(self, data: bytes | str = b"") -> bytes:
        """Send ECHO_REQ and return what the server echoes back."""
        reply = await self._call(EchoReq(payload(data)), EchoRes)
        result: bytes = reply.data
        return result

    async def _call(self, message: Message, reply_type: type[Message]) -> Any:
        conn = await self._connection()
        call = conn.call(message, reply_type)
        await call.wait()
        if call.error is not None:
            raise call.error
        return call.reply

    async def _settle(self, conn: ClientConnection, submission: Submission) -> None:
        try:
            while not submission.done:
                await submission.next_change()
        finally:
            if not submission.done:
                conn.abandon(submission)
        if submission.error is not None:
            raise submission.error
