"""One worker connection: its abilities, its GRABs and sleep, the jobs it runs.

The grab cycle, per connection:

* while awake and a job slot is free, send GRAB_JOB_UNIQ (several may be in
  flight, each holding a slot until its answer);
* JOB_ASSIGN_UNIQ starts the job in the worker's task group; its slot is held
  until the job's final packet is queued;
* NO_JOB means the queue is empty: no more GRABs; once every GRAB in flight is
  answered, send PRE_SLEEP and sleep;
* NOOP wakes the connection, and so does a timer when it has slept for
  ``regrab_interval`` seconds (a lost NOOP never leaves work waiting).

A worker whose functions have their own concurrency limits has one connection
per limited function (per server), so that the server hands each connection only
the jobs it can take; a :class:`SharedLimit` holds such a function's limit across
the connections of every server.

A connection to a server that is one of several first asks for an ECHO and
grabs only once the server has answered, so that a server that accepts
connections but never answers holds no job slot. Jobs outlive their
connection: a job whose connection is lost runs to its end, and its result is
dropped (the server has re-queued the job).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._exceptions import ConnectionLost, JobException, JobFailed
from .._net.stream import PacketStream
from .._proto import (
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    Error,
    Event,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    Message,
    NoJob,
    Noop,
    OptionRes,
    PreSleep,
    SetClientId,
    WorkComplete,
    WorkException,
    WorkFail,
    WorkWarning,
    encode,
)
from .job import FunctionSpec, Job, result_bytes, wire_timeout

if TYPE_CHECKING:
    from .worker import Worker

__all__ = ["SharedLimit", "WorkerConnection"]

logger = logging.getLogger("trio_gearman.worker")

_GRAB = encode(GrabJobUniq())
_PRE_SLEEP = encode(PreSleep())
_ECHO = encode(EchoReq(b"heartbeat"))


class SharedLimit:
    """A function's own concurrency limit, shared by its connections to every server.

    Attributes:
        size: the most jobs of the function at once.
        used: GRABs in flight plus jobs running, over every connection.
    """

    __slots__ = ("size", "used")

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0


class WorkerConnection:
    """The protocol state of one worker connection.

    Args:
        worker: the worker that owns the job slots and the job task group.
        functions: the functions this connection registers.
        limit: the function's own limit (running plus GRABs in flight, shared with
            its connections to other servers), or ``None`` for only the worker's.
        handshake: send an ECHO_REQ after registering and grab only once the
            server has answered.
    """

    def __init__(
        self,
        worker: Worker,
        functions: list[FunctionSpec],
        limit: SharedLimit | int | None = None,
        *,
        handshake: bool = False,
    ) -> None:
        self._worker = worker
        self.functions: dict[bytes, FunctionSpec] = {spec.wire: spec for spec in functions}
        # Unregistered functions, for jobs that GRABs sent before the CANT_DO still bring.
        self._retired: dict[bytes, FunctionSpec] = {}
        self.limit = SharedLimit(limit) if isinstance(limit, int) else limit
        self.stream: PacketStream | None = None
        self.grabs = 0
        self.running = 0
        self.sleeping = False
        self.drained = False
        self.closed = False
        self._handshake = handshake
        self._echoes = 0
        self._sleep_since = 0.0
        self._sleep_event: anyio.Event | None = None
        self._dispatch: dict[type[Any], Callable[[Any], None]] = {
            JobAssignUniq: self._on_assign,
            JobAssign: self._on_assign,
            JobAssignAll: self._on_assign,
            NoJob: self._on_no_job,
            Noop: self._on_noop,
            Error: self._on_error,
            OptionRes: _ignore,
            EchoRes: self._on_echo,
        }

    @property
    def server(self) -> str:
        """The server's address, once connected."""
        return self.stream.peer if self.stream is not None else "(not connected)"

    @property
    def open(self) -> bool:
        """Whether packets can be sent: connected, and the connection has not ended."""
        stream = self.stream
        return stream is not None and stream.error is None and not self.closed

    @property
    def heard(self) -> int:
        """How many chunks the server has sent on this connection."""
        return self.stream.reads if self.stream is not None else 0

    @property
    def waiting(self) -> bool:
        """Whether the server owes an answer (to a GRAB or an ECHO_REQ)."""
        return self.grabs > 0 or self._echoes > 0

    def probe(self) -> None:
        """Send an ECHO_REQ (a heartbeat)."""
        if self.stream is not None and self.open:
            self.stream.send_encoded_nowait(_ECHO)
            self._echoes += 1

    # --- abilities -----------------------------------------------------------------------

    def add(self, spec: FunctionSpec) -> None:
        """Register a function; CAN_DO (or CAN_DO_TIMEOUT) goes out at once."""
        self.functions[spec.wire] = spec
        self._retired.pop(spec.wire, None)
        if self.open:
            self._send(self._can_do(spec))
            self.wake()

    def remove(self, spec: FunctionSpec) -> None:
        """Unregister a function; CANT_DO goes out at once."""
        removed = self.functions.pop(spec.wire, None)
        if removed is not None:
            self._retired[spec.wire] = removed
            if self.open:
                self._send(CantDo(spec.wire))

    def _can_do(self, spec: FunctionSpec) -> Message:
        if spec.timeout is None:
            return CanDo(spec.wire)
        return CanDoTimeout(spec.wire, wire_timeout(spec.timeout, self._worker.timeout_grace))

    # --- running -------------------------------------------------------------------------

    async def run(
        self,
        stream: PacketStream,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register, grab and serve until the connection ends or the task is cancelled.

        Returns when the connection is lost; either way the worker learns that it
        ended. The jobs it started run on.
        """
        self.stream = stream
        client_id = self._worker.client_id
        if client_id:
            self._send(SetClientId(client_id))
        for spec in self.functions.values():
            self._send(self._can_do(spec))
        if self._handshake:
            self.probe()
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._regrab_timer)
                tg.start_soon(self._watch)
                self.pump()
                try:
                    await stream.serve(self._on_event, task_status=task_status)
                except ConnectionLost as exc:
                    logger.debug("%s: %s", self.server, exc)
                tg.cancel_scope.cancel()
        finally:
            self.closed = True
            self._worker._connection_ended(self)

    async def _watch(self) -> None:
        reason = await self._worker.heartbeat.watch(self)
        logger.debug("%s: %s; dropping the connection", self.server, reason)
        assert self.stream is not None
        await self.stream.aclose(reason)

    def _send(self, message: Message) -> None:
        assert self.stream is not None
        self.stream.send_nowait(message)

    def pump(self) -> None:
        """Send GRABs while this connection is awake and job slots are free."""
        worker = self._worker
        if self.sleeping or self.drained or worker.stopping or not self.open:
            return
        if not self.functions or self._handshake:
            return
        limit = self.limit
        assert self.stream is not None
        send = self.stream.send_encoded_nowait
        while worker.free > 0 and self.grabs < worker.max_grabs:
            if limit is not None:
                if limit.used >= limit.size:
                    break
                limit.used += 1
            send(_GRAB)
            self.grabs += 1
            worker.free -= 1

    def wake(self) -> None:
        """Leave sleep (a NOOP, the re-grab timer, a new ability) and grab."""
        self.sleeping = False
        self.drained = False
        self.pump()

    async def drain(self) -> None:
        """Wait until every queued packet has been handed to the transport."""
        if self.stream is not None and self.open:
            await self.stream.drain()

    async def _regrab_timer(self) -> None:
        interval = self._worker.regrab_interval
        while True:
            if self.sleeping:
                delay = self._sleep_since + interval - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                    continue
                logger.debug("%s: no NOOP for %g s, grabbing again", self.server, interval)
                self.wake()
            else:
                event = self._sleep_event = anyio.Event()
                await event.wait()

    # --- packets -------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        handler = self._dispatch.get(type(event))
        if handler is not None:
            handler(event)
        else:
            logger.warning("%s sent an unexpected %r; ignored", self.server, event)

    def _on_assign(self, message: JobAssignUniq | JobAssign | JobAssignAll) -> None:
        worker = self._worker
        self.grabs -= 1
        spec = self.functions.get(message.function) or self._retired.get(message.function)
        if spec is None or worker.jobs_tg is None:
            logger.warning(
                "%s assigned job %r of %r, which is not registered here; failing it",
                self.server,
                message.handle,
                message.function,
            )
            self._send(WorkFail(message.handle))
            if self.limit is not None:
                self.limit.used -= 1
            worker._release(self)
            return
        stream = self.stream
        assert stream is not None
        if isinstance(message, JobAssignUniq):
            job = Job(stream, message.handle, spec.name, message.unique, message.data)
        elif isinstance(message, JobAssign):
            job = Job(stream, message.handle, spec.name, b"", message.data)
        else:
            job = Job(
                stream, message.handle, spec.name, message.unique, message.data, message.reducer
            )
        self.running += 1
        worker.jobs_running += 1
        worker._start_job(self, job, spec)
        self.drained = False  # the queue was not empty after all
        self.pump()

    def _on_no_job(self, message: NoJob) -> None:
        self.grabs -= 1
        if self.limit is not None:
            self.limit.used -= 1
        self.drained = True
        if self.grabs == 0 and not self.sleeping and not self._worker.stopping:
            assert self.stream is not None
            self.stream.send_encoded_nowait(_PRE_SLEEP)
            self.sleeping = True
            self._sleep_since = anyio.current_time()
            event = self._sleep_event
            if event is not None:
                self._sleep_event = None
                event.set()
        self._worker._release(self)

    def _on_noop(self, message: Noop) -> None:
        self.wake()

    def _on_echo(self, message: EchoRes) -> None:
        if self._echoes:
            self._echoes -= 1
        if self._handshake:  # the server answers: grab from it
            self._handshake = False
            self.pump()

    def _on_error(self, message: Error) -> None:
        logger.warning(
            "%s sent ERROR %s: %s",
            self.server,
            message.code.decode(errors="replace"),
            message.text.decode(errors="replace"),
        )

    # --- jobs ----------------------------------------------------------------------------

    async def run_job(self, job: Job, spec: FunctionSpec) -> None:
        """Run one job and queue its final packet(s); a cancelled job sends WORK_FAIL."""
        worker = self._worker
        final: tuple[Message, ...] = ()
        try:
            try:
                if spec.timeout is None:
                    value = await spec.call(job, worker.limiter)
                else:
                    with anyio.move_on_after(spec.timeout) as scope:
                        value = await spec.call(job, worker.limiter)
                    if scope.cancelled_caught:
                        logger.warning("%r ran over its %g s time limit", job, spec.timeout)
                        final = self._failure(job, f"timed out after {spec.timeout:g} s")
                if not final:
                    final = (WorkComplete(job.handle, result_bytes(value)),)
            except JobException as exc:
                final = self._failure(job, exc.data)
            except JobFailed as exc:
                logger.info("%r failed: %s", job, exc)
                final = (WorkFail(job.handle),)
            except ConnectionLost:
                pass  # from send_data() & co.: nothing more can be sent; run() reports it
            except Exception as exc:
                logger.exception("%r raised", job)
                final = self._failure(job, f"{type(exc).__name__}: {exc}")
        finally:
            job._finished = True
            self._finish(job, final or (WorkFail(job.handle),))

    def _failure(self, job: Job, text: bytes | str) -> tuple[Message, ...]:
        data = text.encode() if isinstance(text, str) else text
        if self._worker.send_exceptions:
            return (WorkException(job.handle, data),)
        return (WorkWarning(job.handle, data), WorkFail(job.handle))

    def _finish(self, job: Job, packets: tuple[Message, ...]) -> None:
        stream = self.stream
        if stream is not None and stream.error is None:
            for packet in packets:
                stream.send_nowait(packet)
        else:
            logger.info(
                "%s: connection lost; dropping the %s of %r (the server re-queues the job"
                " if it still has it)",
                self.server,
                type(packets[-1]).__name__,
                job,
            )
        self.running -= 1
        worker = self._worker
        worker.jobs_running -= 1
        if self.limit is not None:
            self.limit.used -= 1
        worker._release(self)


def _ignore(message: Message) -> None:
    pass
