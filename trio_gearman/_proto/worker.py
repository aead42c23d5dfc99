"""The worker's protocol state, sans-IO: abilities, the grab cycle, job slots and jobs.

One :class:`WorkerConnectionState` per connection to a server; the job slots of the
whole worker are one :class:`Slots` that every connection state is given (and a
function with its own concurrency limit has one more, shared by its connections to
every server). Nothing here performs I/O or reads a clock: each method appends the
packets to send to the :attr:`~WorkerConnectionState.outbox` of every connection
they concern, and the I/O layer sends them, runs the jobs that
:meth:`~WorkerConnectionState.receive` hands it and reports their ends with
:meth:`~WorkerConnectionState.finish`.

The grab cycle, per connection:

* while awake and a slot is free, send GRAB_JOB_UNIQ (up to ``max_grabs`` in
  flight, each holding a slot until its answer);
* JOB_ASSIGN, JOB_ASSIGN_UNIQ or JOB_ASSIGN_ALL makes a job owned by this
  connection, which keeps the GRAB's slot until :meth:`finish`;
* NO_JOB means the queue is empty: no more GRABs; once every GRAB in flight is
  answered, send PRE_SLEEP and sleep (nothing is sent until woken);
* NOOP wakes the connection, and so does :meth:`wake` (the I/O layer's re-grab
  timer) and a new ability.

A slot that frees up goes first to the other connections, then to the one that
freed it, so that no server starves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final, Generic, Protocol, TypeVar

import attrs

from .._exceptions import ProtocolError
from ._packets import (
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    Message,
    NoJob,
    Noop,
    PreSleep,
    SetClientId,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)

__all__ = [
    "ECHO",
    "GRAB",
    "Ability",
    "AssignedJob",
    "Slots",
    "WorkerConnectionState",
    "wire_timeout",
]

GRAB: Final = GrabJobUniq()
"""The GRAB every connection sends (one instance, so the I/O layer can send it pre-encoded)."""
ECHO: Final = EchoReq(b"heartbeat")
"""The ECHO_REQ of the handshake and of the heartbeat."""

_ASSIGNS: Final = (JobAssignUniq, JobAssign, JobAssignAll)
_PROGRESS: Final = (WorkData, WorkStatus, WorkWarning)
_FINAL: Final = (WorkComplete, WorkFail, WorkException)


def wire_timeout(timeout: float, grace: float) -> int:
    """CAN_DO_TIMEOUT's milliseconds for a local limit of ``timeout`` seconds."""
    return math.ceil((timeout + grace) * 1000)


class Ability(Protocol):
    """A function as the protocol state needs it: its wire name and time limit."""

    @property
    def wire(self) -> bytes:
        """The function name as sent."""

    @property
    def timeout(self) -> float | None:
        """The local time limit per job, in seconds, or ``None``."""


A = TypeVar("A", bound=Ability)


class _Grabber(Protocol):
    def pump(self) -> None: ...


@attrs.define(eq=False)
class AssignedJob(Generic[A]):
    """A job the server assigned to one connection, from JOB_ASSIGN to :meth:`finish`.

    Attributes:
        handle: the job handle.
        function: the ability it was assigned for.
        unique: the unique key (empty for JOB_ASSIGN).
        data: the payload.
        reducer: the reducer of a JOB_ASSIGN_ALL, else ``None``.
        finished: whether its end was reported (it can send nothing more).
        orphaned: whether its connection was lost while it ran (its end goes nowhere).
    """

    handle: bytes
    function: A
    unique: bytes
    data: bytes
    reducer: bytes | None = None
    finished: bool = False
    orphaned: bool = False


class Slots:
    """Job slots shared by connection states: GRABs in flight plus jobs running.

    The worker has one (its ``concurrency``); a function with its own limit has
    another, shared by its connections to every server.

    Args:
        size: the most GRABs in flight plus jobs running at once.

    Attributes:
        size: as given.
        grabbing: GRABs in flight that hold a slot.
        running: jobs running (assigned and not finished) that hold a slot.
        stopped: no connection grabs any more (see :meth:`stop`).
    """

    __slots__ = ("_members", "grabbing", "running", "size", "stopped")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a slot count must be at least 1, got {size}")
        self.size = size
        self.grabbing = 0
        self.running = 0
        self.stopped = False
        self._members: list[_Grabber] = []

    @property
    def used(self) -> int:
        """Slots taken, by GRABs in flight and by running jobs."""
        return self.grabbing + self.running

    @property
    def free(self) -> int:
        """Slots free for a GRAB."""
        return self.size - self.used

    def stop(self) -> None:
        """Grab no more, on every connection (a worker's graceful stop).

        GRABs in flight may still bring jobs; a NO_JOB no longer leads to PRE_SLEEP.
        """
        self.stopped = True

    def _attach(self, state: _Grabber) -> None:
        self._members.append(state)

    def _detach(self, state: _Grabber) -> None:
        if state in self._members:
            self._members.remove(state)

    def _freed(self, source: _Grabber) -> None:
        """Slots were freed by ``source``: the others grab first, then ``source``."""
        for other in self._members:
            if other is not source and self.free > 0:
                other.pump()
        source.pump()


class WorkerConnectionState(Generic[A]):
    """The protocol state of one worker connection.

    Args:
        slots: the worker's slots, shared with its other connections.
        functions: the abilities to register on connecting.
        limit: the slots of a function with its own limit (shared with that
            function's connections to other servers), or ``None``.
        max_grabs: the most GRABs in flight on this connection.
        timeout_grace: seconds added to an ability's ``timeout`` in CAN_DO_TIMEOUT.
        handshake: after registering, send an ECHO_REQ and grab only once it is
            answered (so a server that accepts but never answers holds no slot).

    Attributes:
        outbox: the packets to send, in order; the I/O layer empties it.
        functions: the abilities registered, by wire name.
        grabs: GRABs in flight.
        sleeping: PRE_SLEEP was sent and no NOOP (nor :meth:`wake`) came since.
        drained: a NO_JOB came and nothing woke the connection since: no GRAB.
        connected: :meth:`connect` was called.
        lost: :meth:`lose` was called: nothing is sent any more.
        jobs: the jobs this connection owns that have not finished.
    """

    def __init__(
        self,
        slots: Slots,
        functions: Sequence[A] = (),
        *,
        limit: Slots | None = None,
        max_grabs: int = 8,
        timeout_grace: float = 1.0,
        handshake: bool = False,
    ) -> None:
        if max_grabs < 1:
            raise ValueError(f"max_grabs must be at least 1, got {max_grabs}")
        self.slots = slots
        self.limit = limit
        self.max_grabs = max_grabs
        self.timeout_grace = timeout_grace
        self.outbox: list[Message] = []
        self.functions: dict[bytes, A] = {spec.wire: spec for spec in functions}
        # Unregistered abilities, for the jobs that GRABs sent before the CANT_DO bring.
        self._retired: dict[bytes, A] = {}
        self.grabs = 0
        self.sleeping = False
        self.drained = False
        self.connected = False
        self.lost = False
        self.jobs: list[AssignedJob[A]] = []
        self._handshake = handshake
        self._echoes = 0

    def __repr__(self) -> str:
        return (
            f"<WorkerConnectionState grabs={self.grabs} jobs={len(self.jobs)}"
            f" sleeping={self.sleeping} drained={self.drained} lost={self.lost}>"
        )

    @property
    def open(self) -> bool:
        """Whether packets go out: connected and not lost."""
        return self.connected and not self.lost

    @property
    def waiting(self) -> bool:
        """Whether the server owes an answer (to a GRAB or an ECHO_REQ)."""
        return self.grabs > 0 or self._echoes > 0

    @property
    def handshaking(self) -> bool:
        """Whether the handshake's ECHO_REQ is still unanswered (no GRAB until it is)."""
        return self._handshake

    def _members(self) -> list[Slots]:
        return [self.slots] if self.limit is None else [self.slots, self.limit]

    # --- connecting and abilities ---------------------------------------------------------

    def connect(self, client_id: bytes | None = None) -> None:
        """The connection is up: register (SET_CLIENT_ID, CAN_DO*), then grab.

        Raises:
            RuntimeError: called twice, or after :meth:`lose`.
        """
        if self.connected or self.lost:
            raise RuntimeError(f"{self!r} is already connected")
        self.connected = True
        self.slots._attach(self)
        if client_id:
            self.outbox.append(SetClientId(client_id))
        self.outbox.extend(self._can_do(spec) for spec in self.functions.values())
        if self._handshake:
            self.probe()
        self.pump()

    def _can_do(self, spec: A) -> Message:
        if spec.timeout is None:
            return CanDo(spec.wire)
        return CanDoTimeout(spec.wire, wire_timeout(spec.timeout, self.timeout_grace))

    def add(self, spec: A) -> None:
        """Register an ability: CAN_DO (or CAN_DO_TIMEOUT) now, and wake to grab."""
        self.functions[spec.wire] = spec
        self._retired.pop(spec.wire, None)
        if self.open:
            self.outbox.append(self._can_do(spec))
            self.wake()

    def remove(self, wire: bytes) -> None:
        """Unregister an ability: CANT_DO now. Jobs of it already grabbed still run."""
        removed = self.functions.pop(wire, None)
        if removed is not None:
            self._retired[wire] = removed
            if self.open:
                self.outbox.append(CantDo(wire))

    def probe(self) -> None:
        """Send an ECHO_REQ (the handshake, or a heartbeat)."""
        if self.open:
            self.outbox.append(ECHO)
            self._echoes += 1

    # --- the grab cycle -------------------------------------------------------------------

    def pump(self) -> None:
        """Send GRABs while awake, registered and a slot is free (up to ``max_grabs``)."""
        if self.sleeping or self.drained or self.slots.stopped or not self.open:
            return
        if not self.functions or self._handshake:
            return
        slots, limit = self.slots, self.limit
        while slots.free > 0 and self.grabs < self.max_grabs:
            if limit is not None:
                if limit.free <= 0:
                    break
                limit.grabbing += 1
            slots.grabbing += 1
            self.grabs += 1
            self.outbox.append(GRAB)

    def wake(self) -> None:
        """Leave sleep (a NOOP, the re-grab timer, a new ability) and grab."""
        self.sleeping = False
        self.drained = False
        self.pump()

    def _answered(self, message: Message) -> None:
        if self.grabs == 0:
            raise ProtocolError(f"the server sent {type(message).__name__} with no GRAB in flight")
        self.grabs -= 1

    def receive(self, message: Message) -> AssignedJob[A] | None:
        """Take one message from the server.

        Returns:
            The job to run, for a JOB_ASSIGN* of a registered (or just
            unregistered) function; ``None`` otherwise. A JOB_ASSIGN* of an unknown
            function is answered with WORK_FAIL (and ``None`` returned). Messages
            that concern no state (ERROR, OPTION_RES, ...) are ignored.

        Raises:
            ProtocolError: a JOB_ASSIGN* or NO_JOB came with no GRAB in flight.
        """
        if self.lost:
            return None
        if isinstance(message, _ASSIGNS):
            return self._on_assign(message)
        if isinstance(message, NoJob):
            self._on_no_job(message)
        elif isinstance(message, Noop):
            self.wake()
        elif isinstance(message, EchoRes):
            self._on_echo()
        return None

    def _on_assign(
        self, message: JobAssignUniq | JobAssign | JobAssignAll
    ) -> AssignedJob[A] | None:
        self._answered(message)
        spec = self.functions.get(message.function) or self._retired.get(message.function)
        for slots in self._members():
            slots.grabbing -= 1
        if spec is None:
            self.outbox.append(WorkFail(message.handle))
            self.slots._freed(self)
            return None
        if isinstance(message, JobAssignUniq):
            job = AssignedJob(message.handle, spec, message.unique, message.data)
        elif isinstance(message, JobAssign):
            job = AssignedJob(message.handle, spec, b"", message.data)
        else:
            job = AssignedJob(message.handle, spec, message.unique, message.data, message.reducer)
        for slots in self._members():
            slots.running += 1
        self.jobs.append(job)
        self.drained = False  # the queue was not empty after all
        self.pump()
        return job

    def _on_no_job(self, message: NoJob) -> None:
        self._answered(message)
        for slots in self._members():
            slots.grabbing -= 1
        self.drained = True
        if self.grabs == 0 and not self.sleeping and not self.slots.stopped:
            self.outbox.append(PreSleep())
            self.sleeping = True
        self.slots._freed(self)

    def _on_echo(self) -> None:
        if self._echoes:
            self._echoes -= 1
        if self._handshake:  # the server answers: grab from it
            self._handshake = False
            self.pump()

    # --- jobs -----------------------------------------------------------------------------

    def _owned(self, job: AssignedJob[A], message: Message) -> None:
        if job not in self.jobs:
            state = "finished" if job.finished else "not owned by this connection"
            raise RuntimeError(f"{type(message).__name__} for job {job.handle!r}, {state}")
        handle = getattr(message, "handle", None)
        if handle != job.handle:
            raise ValueError(f"{type(message).__name__} names job {handle!r}, not {job.handle!r}")

    def check_progress(self, job: AssignedJob[A], message: Message) -> None:
        """Check that ``message`` (WORK_DATA, WORK_STATUS, WORK_WARNING) may go out now.

        Raises:
            RuntimeError: the job has finished, or another connection owns it.
            ValueError: not such a message, or it names another job.
        """
        self._owned(job, message)
        if not isinstance(message, _PROGRESS):
            raise ValueError(f"{type(message).__name__} is not a progress report")

    def finish(self, job: AssignedJob[A], messages: Sequence[Message]) -> bool:
        """A job ended: queue its final packets, free its slot, grab again.

        Args:
            job: a job this connection owns.
            messages: its last packets: WORK_WARNING/WORK_DATA/WORK_STATUS as needed,
                then one WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION.

        Returns:
            Whether the packets go out: ``False`` when the connection was lost (the
            server re-queues the job), and the packets are dropped.

        Raises:
            RuntimeError: the job has finished already, or another connection owns it.
            ValueError: the packets are not a job's end, or name another job.
        """
        if not messages or not isinstance(messages[-1], _FINAL):
            raise ValueError(f"a job's last packet is WORK_COMPLETE/FAIL/EXCEPTION: {messages}")
        for message in messages:
            self._owned(job, message)
        for message in messages[:-1]:
            if not isinstance(message, _PROGRESS):
                raise ValueError(f"{type(message).__name__} before a job's last packet")
        job.finished = True
        self.jobs.remove(job)
        for slots in self._members():
            slots.running -= 1
        delivered = self.open
        if delivered:
            self.outbox.extend(messages)
        self.slots._freed(self)
        return delivered

    def lose(self) -> list[AssignedJob[A]]:
        """The connection ended: its GRABs free their slots; its jobs run on, orphaned.

        Returns:
            The jobs still running, whose ends will go nowhere (the server
            re-queues them). They still hold their slots until :meth:`finish`.
        """
        if self.lost:
            return []
        self.lost = True
        self.outbox.clear()
        grabs, self.grabs = self.grabs, 0
        for slots in self._members():
            slots.grabbing -= grabs
        self.sleeping = self.drained = False
        self.slots._detach(self)
        for job in self.jobs:
            job.orphaned = True
        if grabs:
            self.slots._freed(self)
        return list(self.jobs)
