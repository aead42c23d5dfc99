"""Every Gearman packet as a small frozen attrs message.

A message knows its packet type number (``packet_type``), the magic it normally
travels with (``MAGIC``) and its argument layout (``wire_parts``). Wire variants
that differ only in priority or foreground/background are fields of one class,
not separate classes: ``SubmitJob(function, unique, data, priority, background)``
covers the six SUBMIT_JOB* packets.

All protocol values are ``bytes``; numbers that the protocol carries as decimal
text (WORK_STATUS, STATUS_RES, CAN_DO_TIMEOUT, SUBMIT_JOB_EPOCH) are ``int`` and
are parsed the way gearmand parses them (``atoi``/``strtol``: leading digits,
anything else is 0).
"""

from __future__ import annotations

import enum
from typing import ClassVar, Final

import attrs

__all__ = [
    "AllYours",
    "CanDo",
    "CanDoTimeout",
    "CantDo",
    "EchoReq",
    "EchoRes",
    "Error",
    "GetStatus",
    "GetStatusUnique",
    "GrabJob",
    "GrabJobAll",
    "GrabJobUniq",
    "JobAssign",
    "JobAssignAll",
    "JobAssignUniq",
    "JobCreated",
    "Magic",
    "Message",
    "NoJob",
    "Noop",
    "OptionReq",
    "OptionRes",
    "PacketType",
    "PreSleep",
    "Priority",
    "ResetAbilities",
    "SetClientId",
    "StatusRes",
    "StatusResUnique",
    "SubmitJob",
    "SubmitJobEpoch",
    "SubmitJobSched",
    "SubmitReduceJob",
    "Unused",
    "WorkComplete",
    "WorkData",
    "WorkException",
    "WorkFail",
    "WorkStatus",
    "WorkWarning",
]


class Magic(bytes, enum.Enum):
    """The four bytes that open every binary packet."""

    REQ = b"\0REQ"
    """A request: client or worker to server."""
    RES = b"\0RES"
    """A response: server to client or worker."""


class PacketType(enum.IntEnum):
    """Packet type numbers, as in gearmand's ``gearman_command_t``."""

    CAN_DO = 1
    CANT_DO = 2
    RESET_ABILITIES = 3
    PRE_SLEEP = 4
    UNUSED = 5
    NOOP = 6
    SUBMIT_JOB = 7
    JOB_CREATED = 8
    GRAB_JOB = 9
    NO_JOB = 10
    JOB_ASSIGN = 11
    WORK_STATUS = 12
    WORK_COMPLETE = 13
    WORK_FAIL = 14
    GET_STATUS = 15
    ECHO_REQ = 16
    ECHO_RES = 17
    SUBMIT_JOB_BG = 18
    ERROR = 19
    STATUS_RES = 20
    SUBMIT_JOB_HIGH = 21
    SET_CLIENT_ID = 22
    CAN_DO_TIMEOUT = 23
    ALL_YOURS = 24
    WORK_EXCEPTION = 25
    OPTION_REQ = 26
    OPTION_RES = 27
    WORK_DATA = 28
    WORK_WARNING = 29
    GRAB_JOB_UNIQ = 30
    JOB_ASSIGN_UNIQ = 31
    SUBMIT_JOB_HIGH_BG = 32
    SUBMIT_JOB_LOW = 33
    SUBMIT_JOB_LOW_BG = 34
    SUBMIT_JOB_SCHED = 35
    SUBMIT_JOB_EPOCH = 36
    SUBMIT_REDUCE_JOB = 37
    SUBMIT_REDUCE_JOB_BACKGROUND = 38
    GRAB_JOB_ALL = 39
    JOB_ASSIGN_ALL = 40
    GET_STATUS_UNIQUE = 41
    STATUS_RES_UNIQUE = 42


class Priority(enum.IntEnum):
    """Job priority; lower values run first (gearmand's internal order)."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


_REQ: Final = Magic.REQ
_RES: Final = Magic.RES


def _num(value: int) -> bytes:
    return b"%d" % value


# --- messages without arguments -------------------------------------------------------


@attrs.frozen
class ResetAbilities:
    """RESET_ABILITIES (W→S): forget every function this worker registered."""

    packet_type: ClassVar[PacketType] = PacketType.RESET_ABILITIES
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class PreSleep:
    """PRE_SLEEP (W→S): the worker is about to sleep until a NOOP arrives."""

    packet_type: ClassVar[PacketType] = PacketType.PRE_SLEEP
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class Unused:
    """Packet type 5, which the protocol reserves and no peer should send."""

    packet_type: ClassVar[PacketType] = PacketType.UNUSED
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class Noop:
    """NOOP (S→W): wake up, a GRAB may succeed now."""

    packet_type: ClassVar[PacketType] = PacketType.NOOP
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class GrabJob:
    """GRAB_JOB (W→S): ask for a job; answered by JOB_ASSIGN or NO_JOB."""

    packet_type: ClassVar[PacketType] = PacketType.GRAB_JOB
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class GrabJobUniq:
    """GRAB_JOB_UNIQ (W→S): ask for a job; answered by JOB_ASSIGN_UNIQ or NO_JOB."""

    packet_type: ClassVar[PacketType] = PacketType.GRAB_JOB_UNIQ
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class GrabJobAll:
    """GRAB_JOB_ALL (W→S): answered by JOB_ASSIGN_ALL, JOB_ASSIGN_UNIQ or NO_JOB."""

    packet_type: ClassVar[PacketType] = PacketType.GRAB_JOB_ALL
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class NoJob:
    """NO_JOB (S→W): nothing to grab now."""

    packet_type: ClassVar[PacketType] = PacketType.NO_JOB
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


@attrs.frozen
class AllYours:
    """ALL_YOURS (W→S): defined by the protocol, implemented by no server."""

    packet_type: ClassVar[PacketType] = PacketType.ALL_YOURS
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return ()


# --- worker registration ---------------------------------------------------------------


@attrs.frozen
class CanDo:
    """CAN_DO (W→S): the worker can run ``function``."""

    function: bytes
    packet_type: ClassVar[PacketType] = PacketType.CAN_DO
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.function,)


@attrs.frozen
class CantDo:
    """CANT_DO (W→S): the worker no longer runs ``function``."""

    function: bytes
    packet_type: ClassVar[PacketType] = PacketType.CANT_DO
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.function,)


@attrs.frozen
class CanDoTimeout:
    """CAN_DO_TIMEOUT (W→S): like CAN_DO, with a per-job time limit in milliseconds."""

    function: bytes
    timeout: int
    packet_type: ClassVar[PacketType] = PacketType.CAN_DO_TIMEOUT
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.function, _num(self.timeout))


@attrs.frozen
class SetClientId:
    """SET_CLIENT_ID (any→S): the id the server shows for this connection."""

    client_id: bytes
    packet_type: ClassVar[PacketType] = PacketType.SET_CLIENT_ID
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.client_id,)


# --- submission ------------------------------------------------------------------------

_SUBMIT_TYPES: Final = {
    (Priority.NORMAL, False): PacketType.SUBMIT_JOB,
    (Priority.NORMAL, True): PacketType.SUBMIT_JOB_BG,
    (Priority.HIGH, False): PacketType.SUBMIT_JOB_HIGH,
    (Priority.HIGH, True): PacketType.SUBMIT_JOB_HIGH_BG,
    (Priority.LOW, False): PacketType.SUBMIT_JOB_LOW,
    (Priority.LOW, True): PacketType.SUBMIT_JOB_LOW_BG,
}


@attrs.frozen
class SubmitJob:
    """SUBMIT_JOB, _BG, _HIGH, _HIGH_BG, _LOW, _LOW_BG (C→S): submit a job.

    ``unique`` is empty for no unique key; ``-`` asks the server to coalesce by payload.
    """

    function: bytes
    unique: bytes
    data: bytes
    priority: Priority = Priority.NORMAL
    background: bool = False
    MAGIC: ClassVar[Magic] = _REQ

    @property
    def packet_type(self) -> PacketType:
        """The SUBMIT_JOB* type number for this priority and mode."""
        return _SUBMIT_TYPES[self.priority, self.background]

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.function, self.unique, self.data)


@attrs.frozen
class SubmitJobEpoch:
    """SUBMIT_JOB_EPOCH (C→S): a background job that may not run before ``epoch``."""

    function: bytes
    unique: bytes
    epoch: int
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.SUBMIT_JOB_EPOCH
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.function, self.unique, _num(self.epoch), self.data)


@attrs.frozen
class SubmitJobSched:
    """SUBMIT_JOB_SCHED (C→S): a cron-style job (gearmand answers INVALID_COMMAND)."""

    function: bytes
    unique: bytes
    minute: bytes
    hour: bytes
    day_of_month: bytes
    month: bytes
    day_of_week: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.SUBMIT_JOB_SCHED
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (
            self.function,
            self.unique,
            self.minute,
            self.hour,
            self.day_of_month,
            self.month,
            self.day_of_week,
            self.data,
        )


@attrs.frozen
class SubmitReduceJob:
    """SUBMIT_REDUCE_JOB and _BACKGROUND (C→S): a job with a reducer function."""

    function: bytes
    unique: bytes
    reducer: bytes
    aggregator: bytes
    data: bytes
    background: bool = False
    MAGIC: ClassVar[Magic] = _REQ

    @property
    def packet_type(self) -> PacketType:
        """SUBMIT_REDUCE_JOB or SUBMIT_REDUCE_JOB_BACKGROUND."""
        if self.background:
            return PacketType.SUBMIT_REDUCE_JOB_BACKGROUND
        return PacketType.SUBMIT_REDUCE_JOB

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.function, self.unique, self.reducer, self.aggregator, self.data)


@attrs.frozen
class JobCreated:
    """JOB_CREATED (S→C): the handle of the job just submitted."""

    handle: bytes
    packet_type: ClassVar[PacketType] = PacketType.JOB_CREATED
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle,)


# --- assignment ------------------------------------------------------------------------


@attrs.frozen
class JobAssign:
    """JOB_ASSIGN (S→W): a job, in answer to GRAB_JOB."""

    handle: bytes
    function: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.JOB_ASSIGN
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.function, self.data)


@attrs.frozen
class JobAssignUniq:
    """JOB_ASSIGN_UNIQ (S→W): a job with its unique key."""

    handle: bytes
    function: bytes
    unique: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.JOB_ASSIGN_UNIQ
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.function, self.unique, self.data)


@attrs.frozen
class JobAssignAll:
    """JOB_ASSIGN_ALL (S→W): a job with its unique key and reducer."""

    handle: bytes
    function: bytes
    unique: bytes
    reducer: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.JOB_ASSIGN_ALL
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.function, self.unique, self.reducer, self.data)


# --- work results (W→S, forwarded S→C) ------------------------------------------------------


@attrs.frozen
class WorkData:
    """WORK_DATA: a chunk of streamed output."""

    handle: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.WORK_DATA
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.data)


@attrs.frozen
class WorkWarning:
    """WORK_WARNING: a warning with data."""

    handle: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.WORK_WARNING
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.data)


@attrs.frozen
class WorkStatus:
    """WORK_STATUS: progress as numerator/denominator."""

    handle: bytes
    numerator: int
    denominator: int
    packet_type: ClassVar[PacketType] = PacketType.WORK_STATUS
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, _num(self.numerator), _num(self.denominator))


@attrs.frozen
class WorkComplete:
    """WORK_COMPLETE: the job finished with ``data`` as its result."""

    handle: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.WORK_COMPLETE
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.data)


@attrs.frozen
class WorkFail:
    """WORK_FAIL: the job failed (no data)."""

    handle: bytes
    packet_type: ClassVar[PacketType] = PacketType.WORK_FAIL
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle,)


@attrs.frozen
class WorkException:
    """WORK_EXCEPTION: the job failed with an exception text in ``data``."""

    handle: bytes
    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.WORK_EXCEPTION
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle, self.data)


# --- status ---------------------------------------------------------------------------------


@attrs.frozen
class GetStatus:
    """GET_STATUS (C→S): ask about a job by handle."""

    handle: bytes
    packet_type: ClassVar[PacketType] = PacketType.GET_STATUS
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.handle,)


@attrs.frozen
class StatusRes:
    """STATUS_RES (S→C): the answer to GET_STATUS."""

    handle: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int
    packet_type: ClassVar[PacketType] = PacketType.STATUS_RES
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (
            self.handle,
            b"1" if self.known else b"0",
            b"1" if self.running else b"0",
            _num(self.numerator),
            _num(self.denominator),
        )


@attrs.frozen
class GetStatusUnique:
    """GET_STATUS_UNIQUE (C→S): ask about a job by unique key."""

    unique: bytes
    packet_type: ClassVar[PacketType] = PacketType.GET_STATUS_UNIQUE
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.unique,)


@attrs.frozen
class StatusResUnique:
    """STATUS_RES_UNIQUE (S→C): the answer to GET_STATUS_UNIQUE.

    The first field is the unique key (not the handle), as gearmand sends it.
    """

    unique: bytes
    known: bool
    running: bool
    numerator: int
    denominator: int
    clients: int
    packet_type: ClassVar[PacketType] = PacketType.STATUS_RES_UNIQUE
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (
            self.unique,
            b"1" if self.known else b"0",
            b"1" if self.running else b"0",
            _num(self.numerator),
            _num(self.denominator),
            _num(self.clients),
        )


# --- misc -------------------------------------------------------------------------------------


@attrs.frozen
class EchoReq:
    """ECHO_REQ (any→S): the server answers ECHO_RES with the same data."""

    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.ECHO_REQ
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.data,)


@attrs.frozen
class EchoRes:
    """ECHO_RES (S→any): the data of an ECHO_REQ, returned."""

    data: bytes
    packet_type: ClassVar[PacketType] = PacketType.ECHO_RES
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.data,)


@attrs.frozen
class Error:
    """ERROR (S→any): ``code`` is a gearman_return_t name without ``GEARMAN_``."""

    code: bytes
    text: bytes
    packet_type: ClassVar[PacketType] = PacketType.ERROR
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.code, self.text)


@attrs.frozen
class OptionReq:
    """OPTION_REQ (any→S): enable a connection option (only ``exceptions`` exists)."""

    option: bytes
    packet_type: ClassVar[PacketType] = PacketType.OPTION_REQ
    MAGIC: ClassVar[Magic] = _REQ

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.option,)


@attrs.frozen
class OptionRes:
    """OPTION_RES (S→any): the option was enabled; echoes its name as sent."""

    option: bytes
    packet_type: ClassVar[PacketType] = PacketType.OPTION_RES
    MAGIC: ClassVar[Magic] = _RES

    def wire_parts(self) -> tuple[bytes, ...]:
        """The arguments in wire order; the body joins them with NUL bytes."""
        return (self.option,)


Message = (
    CanDo
    | CantDo
    | ResetAbilities
    | PreSleep
    | Unused
    | Noop
    | SubmitJob
    | JobCreated
    | GrabJob
    | NoJob
    | JobAssign
    | WorkStatus
    | WorkComplete
    | WorkFail
    | GetStatus
    | EchoReq
    | EchoRes
    | Error
    | StatusRes
    | SetClientId
    | CanDoTimeout
    | AllYours
    | WorkException
    | OptionReq
    | OptionRes
    | WorkData
    | WorkWarning
    | GrabJobUniq
    | JobAssignUniq
    | SubmitJobSched
    | SubmitJobEpoch
    | SubmitReduceJob
    | GrabJobAll
    | JobAssignAll
    | GetStatusUnique
    | StatusResUnique
)
"""Any Gearman binary packet."""
