"""One client connection to one job server: requests in flight, matched to replies.

Gearman answers a connection's requests in the order they were sent: JOB_CREATED,
ERROR, STATUS_RES, ECHO_RES and OPTION_RES each settle the oldest request still
waiting (FIFO); an ERROR settles the oldest request of any kind. WORK_* packets
name their job by handle. :class:`ClientConnection` keeps both tables and nothing
else, so a supervisor can own several of them (one per server).

A request whose caller gave up (cancelled, timed out) stays in the FIFO, marked
abandoned, until its reply arrives and consumes the slot; the packets of a job
nobody waits for any more are dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from .._exceptions import (
    ConnectionLost,
    GearmanError,
    JobError,
    JobException,
    JobFailed,
    ServerLost,
)
from .._net.stream import PacketStream
from .._proto import (
    EchoReq,
    EchoRes,
    Error,
    Event,
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

__all__ = ["Call", "ClientConnection", "Submission", "Update"]

logger = logging.getLogger("trio_gearman.client")

Update = WorkData | WorkWarning | WorkStatus
"""What a foreground job streams before its end."""


def _text(value: bytes) -> str:
    return value.decode(errors="replace")


class _Request:
    """A request in the FIFO: settled once, by its reply, an ERROR or the end."""

    __slots__ = ("_event", "done", "error", "reply_type")

    def __init__(self, reply_type: type[Message]) -> None:
        self.reply_type = reply_type
        self._event: anyio.Event | None = None
        self.done = False
        self.error: GearmanError | None = None

    def _notify(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()

    async def _changed(self) -> None:
        event = self._event = anyio.Event()
        await event.wait()

    async def wait(self) -> None:
        """Wait until the request is settled (its outcome in ``error`` and the value)."""
        while not self.done:
            await self._changed()

    def fail(self, error: GearmanError) -> None:
        """Settle the request with an error."""
        if not self.done:
            self.done = True
            self.error = error
            self._notify()

    def function_name(self) -> str | None:
        """The function a refusal of this request concerns, if any."""
        return None


class Call(_Request):
    """A request answered by one reply packet (ECHO_RES, STATUS_RES, OPTION_RES...)."""

    __slots__ = ("reply",)

    def __init__(self, reply_type: type[Message]) -> None:
        super().__init__(reply_type)
        self.reply: Any = None

    def settle(self, reply: Message) -> None:
        """Settle the request with its reply."""
        if not self.done:
            self.done = True
            self.reply = reply
            self._notify()


class Submission(_Request):
    """A submitted job, from SUBMIT_JOB* to its JOB_CREATED and, in the foreground, its end.

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

    def created(self, handle: bytes) -> None:
        """JOB_CREATED arrived: a background job is settled, a foreground one goes on."""
        self.handle = handle
        if self.background:
            self.done = True
            self._notify()
        elif self.updates is not None:  # a follower waits for the handle
            self._notify()

    def complete(self, data: bytes) -> None:
        """WORK_COMPLETE arrived."""
        if not self.done:
            self.done = True
            self.result = data
            self._notify()

    def update(self, message: Update) -> None:
        """A WORK_DATA, WORK_WARNING or WORK_STATUS arrived."""
        updates = self.updates
        if updates is not None:
            updates.append(message)
            self._notify()

    async def next_change(self) -> None:
        """Wait for the next update, the handle or the end (return at once if done)."""
        if not self.done:
            await self._changed()


class ClientConnection:
    """The request/reply state of one client connection to one server.

    Run :meth:`run` in a task; submit and call from any task of the same loop.

    Args:
        stream: the connection.
        client_id: sent as SET_CLIENT_ID first, if given.
        exceptions: ask the server for WORK_EXCEPTION packets (OPTION_REQ).
        handshake: open with a request the server must answer (the OPTION_REQ, or
            else an ECHO_REQ), so that a silent server shows at once.
    """

    def __init__(
        self,
        stream: PacketStream,
        *,
        client_id: bytes | None = None,
        exceptions: bool = True,
        handshake: bool = False,
    ) -> None:
        self._stream = stream
        self.server = stream.peer
        self._send = stream.send_nowait
        self._fifo: deque[_Request] = deque()
        self._jobs: dict[bytes, list[Submission]] = {}
        self._error: ConnectionLost | None = None
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
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
        if client_id:
            self._send(SetClientId(client_id))
        self._opening: Call | None = None
        if exceptions:
            self._opening = self.call(OptionReq(b"exceptions"), OptionRes)
        elif handshake:
            self._opening = self.call(EchoReq(b"handshake"), EchoRes)

    @property
    def error(self) -> ConnectionLost | None:
        """Why the connection ended, or ``None`` while it is usable."""
        return self._error

    @property
    def usable(self) -> bool:
        """Whether requests can be sent: the connection has not ended."""
        return self._error is None and self._stream.error is None

    @property
    def in_flight(self) -> int:
        """Requests waiting for a reply plus foreground jobs waiting for their end."""
        return len(self._fifo) + len(self._jobs)

    @property
    def heard(self) -> int:
        """How many chunks the server has sent on this connection."""
        return self._stream.reads

    @property
    def waiting(self) -> bool:
        """Whether the server owes an answer: a reply, or the end of a job."""
        return bool(self._fifo or self._jobs)

    async def wait_answered(self) -> None:
        """Wait for the answer to the request the connection opened with, if any.

        Returns at once when there was none, and when the connection ends.
        """
        if self._opening is not None:
            await self._opening.wait()

    def probe(self) -> None:
        """Send an ECHO_REQ (a heartbeat); its answer is matched like any reply."""
        if self.usable:
            self.call(EchoReq(b"heartbeat"), EchoRes)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the connection until it ends (then return) or the task is cancelled.

        When it ends, every request and job still in flight fails with
        :class:`~trio_gearman.ConnectionLost`.
        """
        try:
            await self._stream.serve(self._on_event, task_status=task_status)
        except ConnectionLost as exc:
            self._lost(exc, server_lost=True)
        finally:
            if self._error is None:
                self._lost(ConnectionLost("the client was closed", server=self.server))

    async def aclose(self) -> None:
        """Close the connection; whatever is in flight fails with ConnectionLost."""
        await self._stream.aclose()
        if self._error is None:
            self._lost(ConnectionLost("the client was closed", server=self.server))

    async def abort(self, reason: str) -> None:
        """Drop the connection because the server is gone (e.g. it stopped answering).

        Whatever is in flight fails as if the server had closed the connection:
        accepted foreground jobs with :class:`~trio_gearman.ServerLost`.
        """
        await self._stream.aclose(reason)

    # --- requests ------------------------------------------------------------------------

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
    ) -> Submission:
        """Send a SUBMIT_JOB* (or SUBMIT_JOB_EPOCH when ``epoch`` is given).

        Raises:
            ConnectionLost: the connection has ended.
        """
        if self._error is not None:
            raise self._lost_error(self._error, function, None)
        if epoch is None:
            self._send(SubmitJob(function, unique, data, priority, background))
        else:
            self._send(SubmitJobEpoch(function, unique, epoch, data))
        submission = Submission(function, background, want_updates)
        self._fifo.append(submission)
        return submission

    def call(self, message: Message, reply_type: type[Message]) -> Call:
        """Send a request answered by one ``reply_type`` packet (or an ERROR).

        Raises:
            ConnectionLost: the connection has ended.
        """
        if self._error is not None:
            raise self._error
        self._send(message)
        call = Call(reply_type)
        self._fifo.append(call)
        return call

    def abandon(self, submission: Submission) -> None:
        """Stop waiting for a job: its FIFO slot stays, its later packets are dropped."""
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

    def _on_event(self, event: Event) -> None:
        handler = self._dispatch.get(type(event))
        if handler is not None:
            handler(event)
        else:
            logger.warning("%s sent an unexpected %r; ignored", self.server, event)

    def _take(self, reply_type: type[Message]) -> _Request | None:
        fifo = self._fifo
        if fifo and fifo[0].reply_type is reply_type:
            return fifo.popleft()
        for index, request in enumerate(fifo):
            if request.reply_type is reply_type:
                del fifo[index]
                logger.warning(
                    "%s answered out of order: %s before earlier requests",
                    self.server,
                    reply_type.__name__,
                )
                return request
        logger.warning("%s sent %s, but no request waits for one", self.server, reply_type)
        return None

    def _on_created(self, message: JobCreated) -> None:
        submission = self._take(JobCreated)
        if not isinstance(submission, Submission):
            return
        handle = message.handle
        submission.created(handle)
        if submission.background or submission.abandoned:
            return
        waiting = self._jobs.get(handle)
        if waiting is None:
            self._jobs[handle] = [submission]
        else:  # coalesced onto a job this connection already waits for
            waiting.append(submission)

    def _on_complete(self, message: WorkComplete) -> None:
        for submission in self._jobs.pop(message.handle, ()):
            submission.complete(message.data)

    def _on_update(self, message: Update) -> None:
        for submission in self._jobs.get(message.handle, ()):
            submission.update(message)

    def _pop_job(self, handle: bytes) -> list[Submission]:
        waiting = self._jobs.pop(handle, None)
        if waiting is None and handle.endswith(b"\0"):
            # gearmand 1.1.20 tells clients without the exceptions option "handle\0".
            waiting = self._jobs.pop(handle.rstrip(b"\0"), None)
        return waiting or []

    def _on_fail(self, message: WorkFail) -> None:
        for submission in self._pop_job(message.handle):
            submission.fail(
                JobFailed(
                    server=self.server,
                    function=submission.function_name(),
                    handle=_text(submission.handle or b""),
                )
            )

    def _on_exception(self, message: WorkException) -> None:
        for submission in self._pop_job(message.handle):
            submission.fail(
                JobException(
                    message.data,
                    server=self.server,
                    function=submission.function_name(),
                    handle=_text(submission.handle or b""),
                )
            )

    def _on_reply(self, message: Message) -> None:
        call = self._take(type(message))
        if isinstance(call, Call):
            call.settle(message)

    def _on_error(self, message: Error) -> None:
        if not self._fifo:
            logger.warning(
                "%s sent ERROR %s (%s) with no request waiting",
                self.server,
                _text(message.code),
                _text(message.text),
            )
            return
        request = self._fifo.popleft()
        request.fail(
            JobError(
                _text(message.code),
                _text(message.text),
                server=self.server,
                function=request.function_name(),
            )
        )

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

    def _lost(self, error: ConnectionLost, *, server_lost: bool = False) -> None:
        self._error = error
        kind = ServerLost if server_lost else ConnectionLost
        fifo, self._fifo = self._fifo, deque()
        jobs, self._jobs = self._jobs, {}
        for request in fifo:
            if isinstance(request, Submission):
                request.fail(self._lost_error(error, request.function, None))
            else:
                request.fail(error)
        for waiting in jobs.values():
            for submission in waiting:
                submission.fail(
                    self._lost_error(error, submission.function, submission.handle, kind)
                )
