"""The client side of one connection as a sans-IO state machine.

Gearman answers a connection's requests in the order they were sent: JOB_CREATED,
STATUS_RES, STATUS_RES_UNIQUE, ECHO_RES and OPTION_RES each settle the oldest
request still waiting for that kind of reply (FIFO); an ERROR settles the oldest
request of any kind. WORK_* packets name their job by handle.
:class:`ClientConnectionState` keeps both tables and nothing else: it sends and
reads nothing, and knows nothing about waiting.

The I/O layer sends what :meth:`~ClientConnectionState.submit` and
:meth:`~ClientConnectionState.call` return, feeds every decoded event to
:meth:`~ClientConnectionState.receive`, and after each call wakes whoever waits for
the requests listed in :attr:`~ClientConnectionState.changed` (then clears it).
The requests themselves are the tokens: each holds its outcome (``done``,
``error``, and the reply, handle, result or updates).

A request whose caller gave up (cancelled, timed out) stays in the FIFO, marked
abandoned, until its reply arrives and consumes the slot; the packets of a job
nobody waits for any more are dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from .._exceptions import (
    ConnectionLost,
    GearmanError,
    JobError,
    JobException,
    JobFailed,
    ServerLost,
)
from ._codec import Event
from ._packets import (
    EchoReq,
    EchoRes,
    Error,
    JobCreated,
    Message,
    OptionReq,
    OptionRes,
    Priority,
    SetClientId,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)

__all__ = ["Call", "ClientConnectionState", "Request", "Submission", "Update"]

Update = WorkData | WorkWarning | WorkStatus
"""What a foreground job streams before its end."""


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


class Request:
    """A request in the FIFO: settled once, by its reply, an ERROR or the end.

    Requests compare and hash by identity: the I/O layer keys its waiters by them.

    Attributes:
        reply_type: the packet type that answers the request.
        done: whether the request is settled (its outcome is final).
        error: why it failed, once settled with an error.
    """

    __slots__ = ("done", "error", "reply_type")

    def __init__(self, reply_type: type[Message]) -> None:
        self.reply_type = reply_type
        self.done = False
        self.error: GearmanError | None = None

    def function_name(self) -> str | None:
        """The function a refusal of this request concerns, if any."""
        return None


class Call(Request):
    """A request answered by one reply packet (ECHO_RES, STATUS_RES, OPTION_RES...).

    Attributes:
        reply: the reply, once settled without an error.
    """

    __slots__ = ("reply",)

    def __init__(self, reply_type: type[Message]) -> None:
        super().__init__(reply_type)
        self.reply: Any = None


class Submission(Request):
    """A submitted job, from SUBMIT_JOB* to its JOB_CREATED and, in the foreground, its end.

    A background job is settled by its JOB_CREATED; a foreground one by its
    WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION.

    Attributes:
        function: the function name, as sent.
        background: whether the job was submitted in the background.
        handle: the job handle, once JOB_CREATED arrived.
        result: the WORK_COMPLETE data, once complete.
        updates: WORK_DATA / WORK_WARNING / WORK_STATUS not yet consumed, or
            ``None`` when the submitter does not want them.
        abandoned: the submitter stopped waiting; later packets are dropped.
    """

    __slots__ = ("abandoned", "background", "function", "handle", "result", "updates")

    def __init__(self, function: bytes, background: bool, want_updates: bool) -> None:
        super().__init__(JobCreated)
        self.function = function
        self.background = background
        self.handle: bytes | None = None
        self.result = b""
        self.updates: deque[Update] | None = deque() if want_updates else None
        self.abandoned = False

    def function_name(self) -> str:
        """The function name as text."""
        return _text(self.function)


class ClientConnectionState:
    """The request/reply state of one client connection to one server.

    Args:
        server: how errors name the server (``host:port``).

    Attributes:
        server: as given.
        changed: the requests whose outcome changed (settled, got their handle
            while someone follows them, got an update) since the I/O layer last
            cleared the list; a request may be listed more than once.
        opening: the request the connection opened with (see :meth:`open`), if any.
    """

    __slots__ = ("_dispatch", "_error", "_fifo", "_jobs", "changed", "opening", "server")

    def __init__(self, server: str) -> None:
        self.server = server
        self.changed: list[Request] = []
        self.opening: Call | None = None
        self._fifo: deque[Request] = deque()
        self._jobs: dict[bytes, list[Submission]] = {}
        self._error: ConnectionLost | None = None
        self._dispatch: dict[type[Any], Callable[[Any], str | None]] = {
            WorkComplete: self._on_complete,
            JobCreated: self._on_created,
            WorkData: self._on_update,
            WorkWarning: self._on_update,
            WorkStatus: self._on_update,
            WorkFail: self._on_fail,
            WorkException: self._on_exception,
            Error: self._on_error,
        }
        for reply_type in (StatusRes, StatusResUnique, OptionRes, EchoRes):
            self._dispatch[reply_type] = self._on_reply

    # --- queries -------------------------------------------------------------------------

    @property
    def error(self) -> ConnectionLost | None:
        """Why the connection ended, or ``None`` while it is usable."""
        return self._error

    @property
    def in_flight(self) -> int:
        """Requests waiting for a reply plus foreground jobs waiting for their end."""
        return len(self._fifo) + len(self._jobs)

    @property
    def waiting(self) -> bool:
        """Whether the server owes an answer: a reply, or the end of a job."""
        return bool(self._fifo or self._jobs)

    def requests(self) -> tuple[Request, ...]:
        """The requests waiting for a reply, oldest first (abandoned ones too)."""
        return tuple(self._fifo)

    def jobs(self) -> dict[bytes, tuple[Submission, ...]]:
        """The foreground jobs waiting for their end: handle to submissions (a copy)."""
        return {handle: tuple(waiting) for handle, waiting in self._jobs.items()}

    # --- requests ------------------------------------------------------------------------

    def open(
        self,
        *,
        client_id: bytes | None = None,
        exceptions: bool = True,
        handshake: bool = False,
    ) -> list[Message]:
        """The packets that open the connection; the request among them is :attr:`opening`.

        Args:
            client_id: sent as SET_CLIENT_ID first, if given.
            exceptions: ask the server for WORK_EXCEPTION packets (OPTION_REQ).
            handshake: open with a request the server must answer (the OPTION_REQ,
                or else an ECHO_REQ), so that a silent server shows at once.

        Returns:
            The packets to send, in order.
        """
        messages: list[Message] = []
        if client_id:
            messages.append(SetClientId(client_id))
        request: Message | None = None
        if exceptions:
            request = OptionReq(b"exceptions")
            self.opening = self.call(OptionRes)
        elif handshake:
            request = EchoReq(b"handshake")
            self.opening = self.call(EchoRes)
        if request is not None:
            messages.append(request)
        return messages

    def submit(
        self,
        function: bytes,
        unique: bytes,
        data: bytes,
        priority: Priority = Priority.NORMAL,
        *,
        background: bool = False,
        epoch: int | None = None,
        want_updates: bool = False,
    ) -> tuple[Submission, SubmitJob | SubmitJobEpoch]:
        """Record a SUBMIT_JOB* (or SUBMIT_JOB_EPOCH when ``epoch`` is given).

        Returns:
            The submission (the token to wait on) and the packet to send.

        Raises:
            ConnectionLost: the connection has ended.
        """
        if self._error is not None:
            raise self._lost_error(self._error, function, None)
        message: SubmitJob | SubmitJobEpoch
        if epoch is None:
            message = SubmitJob(function, unique, data, priority, background)
        else:
            message = SubmitJobEpoch(function, unique, epoch, data)
        submission = Submission(function, background, want_updates)
        self._fifo.append(submission)
        return submission, message

    def call(self, reply_type: type[Message]) -> Call:
        """Record a request answered by one ``reply_type`` packet (or an ERROR).

        The caller sends the request itself.

        Returns:
            The call (the token to wait on).

        Raises:
            ConnectionLost: the connection has ended.
        """
        if self._error is not None:
            raise self._error
        call = Call(reply_type)
        self._fifo.append(call)
        return call

    def abandon(self, submission: Submission) -> None:
        """Stop following a job: its FIFO slot stays, its later packets are dropped.

        Does nothing once the submission is settled.
        """
        if submission.done:
            return
        submission.abandoned = True
        submission.updates = None
        handle = submission.handle
        if handle is not None:
            waiting = self._jobs.get(handle)
            if waiting is not None and submission in waiting:
                waiting.remove(submission)
                if not waiting:
                    del self._jobs[handle]

    # --- replies -------------------------------------------------------------------------

    def receive(self, event: Event) -> str | None:
        """Match one event from the server to what waits for it.

        The requests it settles or updates are appended to :attr:`changed`.

        Returns:
            ``None``, or a warning for the log: the event was unexpected (and
            ignored), answered nothing, or answered out of order.
        """
        handler = self._dispatch.get(type(event))
        if handler is None:
            return f"{self.server} sent an unexpected {event!r}; ignored"
        return handler(event)

    def _search(self, reply_type: type[Message]) -> tuple[Request | None, str]:
        """Take the oldest request for ``reply_type`` when it is not the oldest of all."""
        fifo = self._fifo
        for index, request in enumerate(fifo):
            if request.reply_type is reply_type:
                del fifo[index]
                return request, (
                    f"{self.server} answered out of order: "
                    f"{reply_type.__name__} before earlier requests"
                )
        return None, f"{self.server} sent {reply_type}, but no request waits for one"

    def _on_created(self, message: JobCreated) -> str | None:
        fifo = self._fifo
        notice = None
        submission: Request | None
        if fifo and fifo[0].reply_type is JobCreated:  # the usual case, kept cheap
            submission = fifo.popleft()
        else:
            submission, notice = self._search(JobCreated)
        if not isinstance(submission, Submission):
            return notice
        handle = submission.handle = message.handle
        if submission.background:
            submission.done = True
            self.changed.append(submission)
            return notice
        if submission.abandoned:
            return notice
        if submission.updates is not None:  # a follower waits for the handle
            self.changed.append(submission)
        waiting = self._jobs.get(handle)
        if waiting is None:
            self._jobs[handle] = [submission]
        else:  # coalesced onto a job this connection already waits for
            waiting.append(submission)
        return notice

    def _on_complete(self, message: WorkComplete) -> None:
        waiting = self._jobs.pop(message.handle, None)
        if waiting is not None:
            data = message.data
            for submission in waiting:
                submission.done = True
                submission.result = data
            self.changed += waiting

    def _on_update(self, message: Update) -> None:
        waiting = self._jobs.get(message.handle)
        if waiting is not None:
            for submission in waiting:
                updates = submission.updates
                if updates is not None:
                    updates.append(message)
                    self.changed.append(submission)

    def _pop_job(self, handle: bytes) -> list[Submission]:
        waiting = self._jobs.pop(handle, None)
        if waiting is None and handle.endswith(b"\0"):
            # gearmand 1.1.20 tells clients without the exceptions option "handle\0".
            waiting = self._jobs.pop(handle.rstrip(b"\0"), None)
        return waiting or []

    def _fail(self, request: Request, error: GearmanError) -> None:
        request.done = True
        request.error = error
        self.changed.append(request)

    def _on_fail(self, message: WorkFail) -> None:
        for submission in self._pop_job(message.handle):
            self._fail(
                submission,
                JobFailed(
                    server=self.server,
                    function=submission.function_name(),
                    handle=_text(submission.handle or b""),
                ),
            )

    def _on_exception(self, message: WorkException) -> None:
        for submission in self._pop_job(message.handle):
            self._fail(
                submission,
                JobException(
                    message.data,
                    server=self.server,
                    function=submission.function_name(),
                    handle=_text(submission.handle or b""),
                ),
            )

    def _on_reply(self, message: Message) -> str | None:
        fifo = self._fifo
        reply_type = type(message)
        notice = None
        call: Request | None
        if fifo and fifo[0].reply_type is reply_type:
            call = fifo.popleft()
        else:
            call, notice = self._search(reply_type)
        if isinstance(call, Call):
            call.done = True
            call.reply = message
            self.changed.append(call)
        return notice

    def _on_error(self, message: Error) -> str | None:
        if not self._fifo:
            return (
                f"{self.server} sent ERROR {_text(message.code)} ({_text(message.text)}) "
                "with no request waiting"
            )
        request = self._fifo.popleft()
        self._fail(
            request,
            JobError(
                _text(message.code),
                _text(message.text),
                server=self.server,
                function=request.function_name(),
            ),
        )
        return None

    # --- the end -------------------------------------------------------------------------

    def _lost_error(
        self,
        cause: ConnectionLost,
        function: bytes,
        handle: bytes | None,
        kind: type[ConnectionLost] = ConnectionLost,
    ) -> ConnectionLost:
        reason = str(cause).removeprefix(f"{self.server}: ")
        error = kind(
            reason,
            server=self.server,
            function=_text(function),
            handle=None if handle is None else _text(handle),
        )
        error.__cause__ = cause
        return error

    def connection_lost(self, error: ConnectionLost, *, server_lost: bool = False) -> None:
        """The connection ended: settle everything in flight; refuse new requests.

        Requests waiting for a reply fail with :class:`~trio_gearman.ConnectionLost`
        (a submission's names its function; a call's is ``error`` itself);
        accepted foreground jobs fail with :class:`~trio_gearman.ServerLost` when
        ``server_lost``, else with ConnectionLost. Each error's ``__cause__`` is
        ``error``. A later call replaces :attr:`error` (nothing is left to settle).

        Args:
            error: why the connection ended.
            server_lost: the server went away (it closed the connection, broke it,
                or stopped answering), rather than this side closing it.
        """
        self._error = error
        kind = ServerLost if server_lost else ConnectionLost
        fifo, self._fifo = self._fifo, deque()
        jobs, self._jobs = self._jobs, {}
        for request in fifo:
            if isinstance(request, Submission):
                self._fail(request, self._lost_error(error, request.function, None))
            else:
                self._fail(request, error)
        for waiting in jobs.values():
            for submission in waiting:
                self._fail(
                    submission,
                    self._lost_error(error, submission.function, submission.handle, kind),
                )
