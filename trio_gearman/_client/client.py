"""The Gearman client: submit jobs, follow them, ask for their status."""

from __future__ import annotations

import itertools
import logging
import ssl
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

import anyio
import anyio.abc
import attrs

from .._address import Address, server_list
from .._exceptions import (
    ConnectionLost,
    GearmanError,
    InvalidArgument,
    NoServersAvailable,
    ServerLost,
)
from .._failover import (
    Backoff,
    Heartbeat,
    Link,
    LinkSet,
    ServerHealth,
    preferred_order,
    rendezvous_order,
)
from .._net.stream import DEFAULT_CONNECT_TIMEOUT, Connector, connect
from .._payload import Codec, function_name, payload, unique_key
from .._proto import (
    EchoReq,
    EchoRes,
    GetStatus,
    GetStatusUnique,
    Message,
    Priority,
    StatusRes,
    StatusResUnique,
)
from .connection import ClientConnection, Submission
from .job import ForegroundJob, JobHandle, JobStatus

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = ["Client"]

logger = logging.getLogger("trio_gearman.client")

R = TypeVar("R")
U = TypeVar("U")

_MAX_HANDLE_SIZE = 63  # gearmand drops the connection on a longer GET_STATUS handle


def _identity(data: bytes) -> bytes:
    return data


@attrs.define(slots=True)
class _Request:
    """One submission as the caller made it, and the servers it has been sent to."""

    function: bytes
    unique: bytes
    data: bytes
    priority: Priority
    background: bool = False
    epoch: int | None = None
    want_updates: bool = False
    tried: dict[str, GearmanError] = attrs.Factory(dict)

    @property
    def routing_key(self) -> bytes:
        """The key that picks the server: the unique key (the data for ``"-"``)."""
        return self.data if self.unique == b"-" else self.unique


class Client(Generic[R]):
    """A Gearman client: an async context manager owning a link to every server.

    Each configured server gets a supervised link in the client's task group: it
    connects, reconnects with back-off when the connection breaks, and drops a
    server that stops answering (see ``heartbeat_interval``). :meth:`servers`
    reports each link's health.

    Where jobs go:

    * a job with a unique key goes to the server that rendezvous hashing of the
      key prefers, or, while that one is down, the next live one in the key's
      order, so that duplicates coalesce on one server;
    * a job without one goes round-robin over the live servers;
    * when the connection breaks before the server acknowledged the job
      (JOB_CREATED), it is sent to the next live server it has not been sent
      to: at-least-once, made idempotent by a unique key on servers that
      coalesce;
    * a foreground job whose server is lost after acknowledging it raises
      :class:`~trio_gearman.ServerLost`, or, with ``retry_on_server_loss``, is
      submitted again to another live server (at-least-once: it may run twice);
    * when no server is live, a request waits up to ``wait_for_server`` seconds
      for one, then raises :class:`~trio_gearman.NoServersAvailable` whose
      ``__cause__`` groups every server's own error (and whose message names
      each server with its reason). Entering the client waits for each link's
      first attempt but needs no server up: the links keep trying in the
      background, and a server that comes up later takes the requests.

    Any number of tasks may use the client at once: requests share the
    connections and their replies are matched in order, results by job handle.
    Cancelling a call (a cancel scope, a timeout) detaches it cleanly; the
    connection stays usable.

    TLS: a server whose address starts with ``tls://`` is spoken to over TLS,
    with ``ssl_context`` if given, else :func:`ssl.create_default_context`'s
    (the system's CAs); with an ``ssl_context`` every server without a scheme is
    too, and only ``tcp://host:port`` stays plaintext. The certificate must name
    the address's host. :attr:`addresses` and the links' health say
    ``tls://host:port`` for each TLS server. A handshake that fails (say
    ``certificate verify failed: unable to get local issuer certificate``) is a
    failed connection attempt like a refused one: the link logs it, backs off
    and tries again, and a request that finds no server raises
    :class:`~trio_gearman.NoServersAvailable` naming it.

    Args:
        servers: ``"host:port"``, a comma-separated list, or a sequence of
            addresses (``"host"``, ``"host:port"``, ``"[v6]:port"``, ``(host, port)``,
            any string one after ``tls://`` for TLS or ``tcp://`` for plaintext).
        client_id: sent as SET_CLIENT_ID (shown by the server's ``workers`` command).
        codec: encodes job data and decodes results for every call that does not
            give its own; by default data is bytes (``str`` is sent as UTF-8) and
            results are bytes.
        connect_timeout: seconds to wait for each connection attempt; also the
            time a new connection's server has to answer its first request.
        exceptions: ask the server to forward WORK_EXCEPTION (raised as
            :class:`~trio_gearman.JobException` with the worker's text); without
            it a failing job raises :class:`~trio_gearman.JobFailed`.
        retry_on_server_loss: resubmit a foreground job whose server was lost
            after accepting it (each call can override it).
        wait_for_server: seconds a request waits for a live server.
        backoff: how long a broken link waits before reconnecting.
        heartbeat_interval: while the server owes an answer and has been silent
            this many seconds, send it an ECHO_REQ.
        heartbeat_timeout: a server that leaves that ECHO_REQ unanswered this
            many seconds is dropped (its link reconnects after back-off).
        ssl_context: the TLS settings (trusted CAs, a client certificate for
            mutual TLS) for ``tls://`` servers; given, every server without a
            scheme uses TLS too. Verification stays as the context says: keep
            ``verify_mode`` and ``check_hostname`` on.

    Raises:
        ValueError: a server is listed twice, or ``wait_for_server`` is negative.

    Example:
        >>> async def main():
        ...     servers = ["10.0.0.1:4730", "10.0.0.2:4730", "10.0.0.3:4730"]
        ...     async with trio_gearman.Client(servers, client_id="web-1") as client:
        ...         assert await client.submit("reverse", b"hello") == b"olleh"
        ...         handle = await client.submit_background("resize", b"img-42",
        ...                                                 priority=Priority.HIGH)
        ...         status = await client.get_status(handle)
        >>> async def over_tls():
        ...     context = ssl.create_default_context(cafile="/etc/gearman/ca.pem")
        ...     async with trio_gearman.Client("gearman.internal:4730",
        ...                                    ssl_context=context) as client:
        ...         ...
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
        retry_on_server_loss: bool = False,
        wait_for_server: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Backoff | None = None,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
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
        retry_on_server_loss: bool = False,
        wait_for_server: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Backoff | None = None,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None: ...

    def __init__(
        self,
        servers: Address | Sequence[Address],
        *,
        client_id: str | bytes | None = None,
        codec: Codec[Any] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        exceptions: bool = True,
        retry_on_server_loss: bool = False,
        wait_for_server: float = DEFAULT_CONNECT_TIMEOUT,
        backoff: Backoff | None = None,
        heartbeat_interval: float = 10.0,
        heartbeat_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.addresses = server_list(servers, tls=ssl_context is not None)
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"a server is listed twice: {', '.join(self.addresses)}")
        if wait_for_server < 0:
            raise ValueError(f"wait_for_server must not be negative, got {wait_for_server}")
        self.retry_on_server_loss = retry_on_server_loss
        self.wait_for_server = wait_for_server
        self.backoff = backoff if backoff is not None else Backoff()
        self.heartbeat = Heartbeat(
            min(connect_timeout, heartbeat_interval), heartbeat_interval, heartbeat_timeout
        )
        self._client_id = client_id.encode() if isinstance(client_id, str) else client_id
        self._codec = codec
        self._connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self._exceptions = exceptions
        self._tg: anyio.abc.TaskGroup | None = None
        self._links: LinkSet[ClientConnection] | None = None
        self._turn = itertools.count()
        self._closed = False
        self._connector: Connector | None = None  # tests: in-memory connections

    @property
    def server(self) -> str | None:
        """The first live server in the configured order, or ``None`` when none is."""
        links = self._links
        if links is None:
            return None
        live = links.live()
        return live[0].server if live else None

    def servers(self) -> list[ServerHealth]:
        """The health of the link to each server, in the configured order.

        ``jobs_in_flight`` counts the requests waiting for a reply and the
        foreground jobs waiting for their end on that server's connection.
        """
        if self._links is None:
            return []
        return self._links.health(lambda conn: conn.in_flight)

    async def wait_servers_changed(self) -> None:
        """Wait for the next state transition of any server's link.

        Example:
            >>> async def report(client):
            ...     while True:
            ...         await client.wait_servers_changed()
            ...         for health in client.servers():
            ...             print(health)
        """
        await self._link_set().wait_changed()

    # --- lifetime -----------------------------------------------------------------------

    async def __aenter__(self) -> Client[R]:
        if self._tg is not None or self._closed:
            raise RuntimeError("a Client can be entered only once")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            links = LinkSet(
                [
                    Link(address, self._open, self._serve, backoff=self.backoff, role="client")
                    for address in self.addresses
                ],
                usable=lambda conn: conn.usable,
                verified=lambda conn: conn.heard > 0,
            )
            self._links = links
            for link in links.links:
                await tg.start(link.run)
            # Every link gets its first attempt (each bounded by connect_timeout) and
            # its server a chance to answer, so that keyed jobs go to their own
            # server from the first one on. With none up the links keep trying;
            # each request waits for one up to wait_for_server.
            await links.wait_settled()
            if len(self.addresses) > 1:
                with anyio.move_on_after(self._connect_timeout):
                    for conn in links.live():
                        await conn.wait_answered()
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

    async def _open(self, address: str) -> ClientConnection:
        if self._connector is not None:
            stream = await self._connector(address)
        else:
            stream = await connect(
                address,
                connect_timeout=self._connect_timeout,
                ssl_context=self.ssl_context,
            )
        return ClientConnection(
            stream,
            client_id=self._client_id,
            exceptions=self._exceptions,
            handshake=len(self.addresses) > 1,
        )

    async def _serve(self, conn: ClientConnection) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                reason = await self.heartbeat.watch(conn)
                logger.debug("%s: %s; dropping the connection", conn.server, reason)
                await conn.abort(reason)

            tg.start_soon(watch)
            await conn.run()
            tg.cancel_scope.cancel()
        assert conn.error is not None
        raise conn.error

    def _link_set(self) -> LinkSet[ClientConnection]:
        links = self._links
        if links is None or self._tg is None:
            if self._closed:
                raise RuntimeError("the client is closed")
            raise RuntimeError("use the client inside 'async with Client(...)'")
        return links

    async def _place(
        self, request: _Request, lost: tuple[ClientConnection, Submission] | None = None
    ) -> tuple[ClientConnection, Submission]:
        """Send ``request`` to a live server; return once it is accepted or refused.

        A connection that breaks before the server acknowledged the job sends it
        on to the next live server it has not been sent to.

        Args:
            request: the submission.
            lost: the connection and submission of an earlier attempt whose server
                was lost after accepting it (``retry_on_server_loss``).

        Raises:
            ConnectionLost: the connection broke before the acknowledgement and the
                only configured server has been tried (or the client is closing).
            NoServersAvailable: no untried server was live within
                ``wait_for_server`` seconds, or every server has been tried.
        """
        tried = request.tried
        if lost is not None:
            conn, submission = lost
            assert submission.error is not None
            tried[conn.server] = submission.error
            logger.info(
                "%s: lost with job %s of %r; submitting it again elsewhere",
                conn.server,
                (submission.handle or b"").decode(errors="replace"),
                request.function.decode(errors="replace"),
            )
        while True:
            conn = await self._choose(request)
            submission = conn.submit(
                request.function,
                request.unique,
                request.data,
                request.priority,
                background=request.background,
                epoch=request.epoch,
                want_updates=request.want_updates,
            )
            try:
                while submission.handle is None and not submission.done:
                    await conn.next_change(submission)
            except BaseException:
                conn.abandon(submission)
                raise
            error = submission.error
            if submission.handle is not None or not isinstance(error, ConnectionLost):
                return conn, submission
            if self._closed:
                raise error
            tried[conn.server] = error
            logger.debug(
                "%s: connection lost before it accepted a %r job; trying the next server",
                conn.server,
                request.function.decode(errors="replace"),
            )

    async def _choose(self, request: _Request) -> ClientConnection:
        links = self._link_set()
        tried = request.tried
        key = request.routing_key
        order = preferred_order(key, self.addresses)
        if tried:
            order = [address for address in order if address not in tried]
            if not order:
                if len(tried) == 1:
                    raise next(iter(tried.values()))
                errors = [tried[address] for address in self.addresses]
                raise NoServersAvailable(tuple(self.addresses), errors) from ExceptionGroup(
                    "the request failed on every server", errors
                )
        turn = None if key else next(self._turn)
        return await links.acquire(order, turn, within=self.wait_for_server, errors=tried)

    def _retrying(self, retry_on_server_loss: bool | None) -> bool:
        if retry_on_server_loss is None:
            return self.retry_on_server_loss
        return retry_on_server_loss

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
        retry_on_server_loss: bool | None = ...,
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
        retry_on_server_loss: bool | None = ...,
    ) -> U: ...

    async def submit(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = Priority.NORMAL,
        unique: str | bytes | None = None,
        codec: Codec[Any] | None = None,
        retry_on_server_loss: bool | None = None,
    ) -> Any:
        """Run a foreground job and return its result.

        Args:
            function: the function name.
            data: the payload: bytes, or ``str`` (sent as UTF-8); any value when a
                codec is in use.
            priority: HIGH, NORMAL or LOW.
            unique: a unique key (at most 64 bytes): jobs with the same function and
                key run once and share the result; ``"-"`` asks the server to use
                the payload as the key. The key also picks the server.
            codec: overrides the client's codec for this call.
            retry_on_server_loss: overrides the client's setting for this call:
                when the job's server is lost after accepting it, submit the job
                again to another live server (it may then run twice).

        Returns:
            The WORK_COMPLETE data (decoded by the codec, if any).

        Raises:
            JobFailed: the worker failed the job (WORK_FAIL).
            JobException: the worker failed it with an error text (WORK_EXCEPTION).
            JobError: the server refused the submission (ERROR).
            ServerLost: the job's server was lost after accepting it (without
                ``retry_on_server_loss``, or when every server has been tried).
            ConnectionLost: the connection broke before the only configured
                server accepted the job, or the client was closed.
            NoServersAvailable: no live server within ``wait_for_server`` seconds.
            UniqueTooLong: ``unique`` is longer than 64 bytes (nothing was sent).
        """
        encode, decode = self._encoder_decoder(codec)
        request = _Request(function_name(function), unique_key(unique), encode(data), priority)
        retry = self._retrying(retry_on_server_loss)
        lost: tuple[ClientConnection, Submission] | None = None
        while True:
            conn, submission = await self._place(request, lost)
            try:
                while not submission.done:
                    await conn.next_change(submission)
            finally:
                if not submission.done:
                    conn.abandon(submission)
            error = submission.error
            if error is None:
                return decode(submission.result)
            if not (retry and isinstance(error, ServerLost) and not self._closed):
                raise error
            lost = conn, submission

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

        The job is done with once a server has acknowledged it: if that server is
        lost later, the job is lost with it unless the server keeps its queue
        (persistence) and comes back. :meth:`get_status` asks the very server
        that acknowledged it.

        Args:
            function: the function name.
            data: the payload, as for :meth:`submit`.
            priority: HIGH, NORMAL or LOW.
            unique: a unique key, as for :meth:`submit`.
            at: run the job no earlier than this time (SUBMIT_JOB_EPOCH; a naive
                datetime is local time). Such jobs have normal priority.
            codec: overrides the client's codec for this call.

        Returns:
            The job's handle (and server), for :meth:`get_status`.

        Raises:
            JobError: the server refused the submission (e.g. its queue is full).
            ConnectionLost: the connection broke before the only configured
                server acknowledged the job, or the client was closed.
            NoServersAvailable: no live server within ``wait_for_server`` seconds.
            InvalidArgument: ``at`` was given with a priority other than NORMAL.
        """
        encode, _ = self._encoder_decoder(codec)
        epoch = None
        if at is not None:
            if priority is not Priority.NORMAL:
                raise InvalidArgument("a job scheduled with at= always has NORMAL priority")
            epoch = int(at.timestamp())
        request = _Request(
            function_name(function),
            unique_key(unique),
            encode(data),
            priority,
            background=True,
            epoch=epoch,
        )
        conn, submission = await self._place(request)
        if submission.error is not None:
            raise submission.error
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
        retry_on_server_loss: bool | None = ...,
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
        retry_on_server_loss: bool | None = ...,
    ) -> ForegroundJob[U]: ...

    def submit_job(
        self,
        function: str | bytes,
        data: object,
        *,
        priority: Priority = Priority.NORMAL,
        unique: str | bytes | None = None,
        codec: Codec[Any] | None = None,
        retry_on_server_loss: bool | None = None,
    ) -> ForegroundJob[Any]:
        """A foreground job to follow: WORK_DATA, WORK_WARNING, WORK_STATUS, then its end.

        Entering the returned object submits the job and waits for its handle.
        With ``retry_on_server_loss`` (see :meth:`submit`), a job whose server is
        lost is submitted again and followed on its new server: its updates
        start over, and its handle changes.

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
        request = _Request(
            function_name(function), unique_key(unique), encode(data), priority, want_updates=True
        )

        async def place(
            lost: tuple[ClientConnection, Submission] | None,
        ) -> tuple[ClientConnection, Submission]:
            return await self._place(request, lost)

        def may_retry() -> bool:
            return self._retrying(retry_on_server_loss) and not self._closed

        return ForegroundJob(
            place, decode, request.function.decode(errors="replace"), may_retry=may_retry
        )

    @overload
    async def map(
        self,
        function: str | bytes,
        items: Iterable[object],
        *,
        concurrency: int = ...,
        priority: Priority = ...,
        codec: None = None,
        retry_on_server_loss: bool | None = ...,
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
        retry_on_server_loss: bool | None = ...,
    ) -> list[U]: ...

    async def map(
        self,
        function: str | bytes,
        items: Iterable[object],
        *,
        concurrency: int = 100,
        priority: Priority = Priority.NORMAL,
        codec: Codec[Any] | None = None,
        retry_on_server_loss: bool | None = None,
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
                        function,
                        item,
                        priority=priority,
                        codec=codec,
                        retry_on_server_loss=retry_on_server_loss,
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

        A :class:`~trio_gearman.JobHandle` is asked of the server that gave it
        (handles belong to one server); a bare handle of the first live server.

        Raises:
            InvalidArgument: the handle is longer than 63 bytes (gearmand would
                drop the connection).
            ConnectionLost: the connection ended before the answer.
            NoServersAvailable: the handle's server (or, for a bare handle, every
                server) was not live within ``wait_for_server`` seconds.
        """
        order = self.addresses
        if isinstance(handle, JobHandle):
            raw = handle.handle
            if handle.server in self.addresses:
                order = [handle.server]
        else:
            raw = handle.encode() if isinstance(handle, str) else bytes(handle)
        if len(raw) > _MAX_HANDLE_SIZE or b"\0" in raw:
            raise InvalidArgument(f"not a job handle: {raw[:80]!r}")
        reply = await self._call(GetStatus(raw), StatusRes, order)
        return JobStatus(reply.known, reply.running, reply.numerator, reply.denominator)

    async def get_status_unique(self, unique: str | bytes) -> JobStatus:
        """Ask the server about a job by unique key (GET_STATUS_UNIQUE).

        The question goes where a job with that key would go: the first live
        server in the key's rendezvous order. The answer also counts the
        foreground clients waiting for the job.

        Raises:
            InvalidArgument: the key is longer than 63 bytes (gearmand would drop
                the connection) or holds a NUL byte.
        """
        key = unique_key(unique)
        if len(key) > _MAX_HANDLE_SIZE:
            raise InvalidArgument("status by unique key needs a key of at most 63 bytes")
        order = rendezvous_order(key, self.addresses)
        reply = await self._call(GetStatusUnique(key), StatusResUnique, order)
        return JobStatus(
            reply.known, reply.running, reply.numerator, reply.denominator, reply.clients
        )

    async def echo(self, data: bytes | str = b"") -> bytes:
        """Send ECHO_REQ to the first live server and return what it echoes back."""
        reply = await self._call(EchoReq(payload(data)), EchoRes, self.addresses)
        result: bytes = reply.data
        return result

    async def _call(self, message: Message, reply_type: type[Message], order: Sequence[str]) -> Any:
        links = self._link_set()
        conn = await links.acquire(order, within=self.wait_for_server)
        call = conn.call(message, reply_type)
        await conn.wait(call)
        if call.error is not None:
            raise call.error
        return call.reply
