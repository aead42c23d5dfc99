"""One worker connection: the I/O driver of its sans-IO ``WorkerConnectionState``.

The protocol (abilities, the grab cycle, slots, which job belongs to which
connection) lives in the sans-IO state; this module reads packets into it, sends
what it queues, runs the re-grab timer (a sleeping connection grabs again after
``regrab_interval`` seconds without a NOOP, so a lost NOOP never leaves work
waiting) and the heartbeat, and hands assigned jobs to its owner (the worker),
which reports their ends back with :meth:`WorkerConnection.finish`.

A connection to a server that is one of several first asks for an ECHO and
grabs only once the server has answered, so that a server that accepts
connections but never answers holds no job slot. Jobs outlive their
connection: a job whose connection is lost runs to its end, and its result is
dropped (the server has re-queued the job).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final, Protocol

import anyio
import anyio.abc

from .._exceptions import ConnectionLost
from .._failover import Heartbeat
from .._net.stream import PacketStream
from .._proto import (
    EchoRes,
    Error,
    Event,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    Message,
    NoJob,
    Noop,
    OptionRes,
    WorkFail,
    encode,
)
from .._proto.worker import GRAB, AssignedJob, WorkerConnectionState
from .job import FunctionSpec

__all__ = ["ConnectionOwner", "WorkerConnection"]

logger = logging.getLogger("trio_gearman.worker")

_GRAB: Final = encode(GRAB)
_ASSIGNS: Final = (JobAssignUniq, JobAssign, JobAssignAll)
_STATEFUL: Final = (*_ASSIGNS, NoJob, Noop, EchoRes)


class ConnectionOwner(Protocol):
    """What a :class:`WorkerConnection` needs from the worker that owns it."""

    def start_job(self, conn: WorkerConnection, job: AssignedJob[FunctionSpec]) -> bool:
        """Run ``job`` in a task of its own; it ends with ``conn.finish(job, ...)``.

        Returns:
            ``False`` when the worker takes no more jobs (it is shutting down).
        """

    def flush(self) -> None:
        """The protocol state changed: send what every connection has queued."""

    def connection_ended(self, conn: WorkerConnection) -> None:
        """``conn`` ended (its state has lost the connection); its jobs run on."""


class WorkerConnection:
    """Drives one worker connection's protocol state over a :class:`PacketStream`.

    Args:
        owner: the worker, which runs the jobs.
        state: the connection's protocol state (sharing the worker's slots).
        client_id: sent as SET_CLIENT_ID on connecting, if set.
        regrab_interval: while asleep, GRAB again after this many seconds.
        heartbeat: when a silent server counts as gone.

    Attributes:
        state: as given.
        stream: the connection, once :meth:`run` has it.
    """

    def __init__(
        self,
        owner: ConnectionOwner,
        state: WorkerConnectionState[FunctionSpec],
        *,
        client_id: bytes | None = None,
        regrab_interval: float = 10.0,
        heartbeat: Heartbeat | None = None,
    ) -> None:
        self._owner = owner
        self.state = state
        self._client_id = client_id
        self._regrab_interval = regrab_interval
        self._heartbeat = heartbeat if heartbeat is not None else Heartbeat()
        self.stream: PacketStream | None = None
        self._slept_at = 0.0
        self._sleep_event: anyio.Event | None = None

    @property
    def server(self) -> str:
        """The server's address, once connected."""
        return self.stream.peer if self.stream is not None else "(not connected)"

    @property
    def heard(self) -> int:
        """How many chunks the server has sent on this connection."""
        return self.stream.reads if self.stream is not None else 0

    @property
    def waiting(self) -> bool:
        """Whether the server owes an answer (to a GRAB or an ECHO_REQ)."""
        return self.state.waiting

    @property
    def running(self) -> int:
        """Jobs from this connection that run now."""
        return len(self.state.jobs)

    def probe(self) -> None:
        """Send an ECHO_REQ (a heartbeat)."""
        self.state.probe()
        self.flush()

    def add(self, spec: FunctionSpec) -> None:
        """Register a function; CAN_DO (or CAN_DO_TIMEOUT) goes out at once."""
        self.state.add(spec)
        self._owner.flush()

    def remove(self, spec: FunctionSpec) -> None:
        """Unregister a function; CANT_DO goes out at once."""
        self.state.remove(spec.wire)
        self._owner.flush()

    def flush(self) -> None:
        """Send what the state has queued (dropped once the connection has ended)."""
        outbox = self.state.outbox
        if not outbox:
            return
        stream = self.stream
        if stream is not None and stream.error is None:
            for message in outbox:
                if message is GRAB:
                    stream.send_encoded_nowait(_GRAB)
                else:
                    stream.send_nowait(message)
        outbox.clear()

    def _after(self, was_sleeping: bool) -> None:
        """Send what every connection queued; start the re-grab timer if asleep now."""
        if self.state.sleeping and not was_sleeping:
            self._slept_at = anyio.current_time()
            event = self._sleep_event
            if event is not None:
                self._sleep_event = None
                event.set()
        self._owner.flush()

    # --- running -------------------------------------------------------------------------

    async def run(
        self,
        stream: PacketStream,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Register, grab and serve until the connection ends or the task is cancelled.

        Returns when the connection is lost; either way the owner learns that it
        ended. The jobs it started run on.
        """
        self.stream = stream
        try:
            self.state.connect(self._client_id)
            self.flush()
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._regrab_timer)
                tg.start_soon(self._watch)
                try:
                    await stream.serve(self._on_event, task_status=task_status)
                except ConnectionLost as exc:
                    logger.debug("%s: %s", self.server, exc)
                tg.cancel_scope.cancel()
        finally:
            self.state.lose()
            self._owner.connection_ended(self)

    async def _watch(self) -> None:
        reason = await self._heartbeat.watch(self)
        logger.debug("%s: %s; dropping the connection", self.server, reason)
        assert self.stream is not None
        await self.stream.aclose(reason)

    async def drain(self) -> None:
        """Wait until every queued packet has been handed to the transport."""
        if self.stream is not None and self.stream.error is None and not self.state.lost:
            await self.stream.drain()

    async def _regrab_timer(self) -> None:
        interval = self._regrab_interval
        while True:
            if self.state.sleeping:
                delay = self._slept_at + interval - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                    continue
                logger.debug("%s: no NOOP for %g s, grabbing again", self.server, interval)
                self.state.wake()
                self._owner.flush()
            else:
                event = self._sleep_event = anyio.Event()
                await event.wait()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, _STATEFUL):
            state = self.state
            was_sleeping = state.sleeping
            job = state.receive(event)
            if isinstance(event, _ASSIGNS):
                if job is None:
                    logger.warning(
                        "%s assigned job %r of %r, which is not registered here; failing it",
                        self.server,
                        event.handle,
                        event.function,
                    )
                elif not self._owner.start_job(self, job):
                    logger.warning(
                        "%s assigned job %r while shutting down; failing it",
                        self.server,
                        job.handle,
                    )
                    state.finish(job, (WorkFail(job.handle),))
            self._after(was_sleeping)
        elif isinstance(event, Error):
            logger.warning(
                "%s sent ERROR %s: %s",
                self.server,
                event.code.decode(errors="replace"),
                event.text.decode(errors="replace"),
            )
        elif not isinstance(event, OptionRes):
            logger.warning("%s sent an unexpected %r; ignored", self.server, event)

    # --- jobs ----------------------------------------------------------------------------

    async def send_progress(self, job: AssignedJob[FunctionSpec], message: Message) -> None:
        """Send a WORK_DATA, WORK_STATUS or WORK_WARNING of a running job.

        Raises:
            ConnectionLost: the connection has ended.
            RuntimeError: the job has finished.
        """
        self.state.check_progress(job, message)
        if self.stream is None:
            raise ConnectionLost("not connected", server=self.server)
        await self.stream.send(message)

    def finish(self, job: AssignedJob[FunctionSpec], messages: Sequence[Message]) -> None:
        """A job ended: send its last packets (or drop them, when the connection is lost)."""
        stream = self.stream
        if stream is None or stream.error is not None:
            self.state.lose()  # before run() learns it: nothing more goes out
        if not self.state.finish(job, messages):
            logger.info(
                "%s: connection lost; dropping the %s of <Job %s of %r> (the server re-queues"
                " the job if it still has it)",
                self.server,
                type(messages[-1]).__name__,
                job.handle.decode(errors="replace"),
                job.function.name,
            )
        self._owner.flush()
