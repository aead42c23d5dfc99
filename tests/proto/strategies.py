"""Hypothesis strategies for every Gearman message.

The wire rules shape the values: an argument that is not the last one of its
packet is NUL-terminated on the wire, so it is generated without NUL bytes; the
last argument runs to the end of the body and may hold any bytes. Numbers that
travel as decimal text are non-negative by default (``NUMBERS``); the decoder
parses a leading ``-`` as well, which ``SIGNED_NUMBERS`` exercises. Both stay in
the signed 64-bit range, where the decoder's ``strtol`` parsing is exact.
"""

from __future__ import annotations

from typing import Final, get_args

from hypothesis import strategies as st

from trio_gearman._proto import (
    AllYours,
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    Error,
    GetStatus,
    GetStatusUnique,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    JobCreated,
    Message,
    NoJob,
    Noop,
    OptionReq,
    OptionRes,
    PreSleep,
    Priority,
    ResetAbilities,
    SetClientId,
    StatusRes,
    StatusResUnique,
    SubmitJob,
    SubmitJobEpoch,
    SubmitJobSched,
    SubmitReduceJob,
    Unused,
    WorkComplete,
    WorkData,
    WorkException,
    WorkFail,
    WorkStatus,
    WorkWarning,
)

__all__ = [
    "ARG",
    "DATA",
    "MESSAGE_CLASSES",
    "NUMBERS",
    "SIGNED_NUMBERS",
    "message_strategies",
    "messages",
]

MESSAGE_CLASSES: Final[tuple[type[Message], ...]] = get_args(Message)
"""Every message class, in the order of the ``Message`` union."""

NUMBERS: Final = st.integers(min_value=0, max_value=2**63 - 1)
"""Counts, progress, time-outs and epochs as peers send them."""

SIGNED_NUMBERS: Final = st.integers(min_value=-(2**63), max_value=2**63 - 1)
"""Any number ``strtol`` parses exactly, negative ones included."""

ARG: Final = st.lists(st.integers(min_value=1, max_value=255), max_size=24).map(bytes)
"""A NUL-terminated argument: any bytes but NUL."""

DATA: Final = st.one_of(
    st.binary(max_size=64),
    # NUL-heavy data, including leading and trailing NULs and empty runs.
    st.lists(st.sampled_from([0, 0, ord("a"), ord("\n"), ord("\r")]), max_size=12).map(bytes),
)
"""The last argument of a packet: any bytes, NULs included."""


def message_strategies(
    numbers: st.SearchStrategy[int] = NUMBERS,
) -> dict[type[Message], st.SearchStrategy[Message]]:
    """A strategy for each of the message classes.

    Args:
        numbers: the integers used for the fields sent as decimal text.

    Returns:
        A dict with one entry per class in the ``Message`` union.
    """
    return {
        CanDo: st.builds(CanDo, DATA),
        CantDo: st.builds(CantDo, DATA),
        ResetAbilities: st.just(ResetAbilities()),
        PreSleep: st.just(PreSleep()),
        Unused: st.just(Unused()),
        Noop: st.just(Noop()),
        SubmitJob: st.builds(SubmitJob, ARG, ARG, DATA, st.sampled_from(Priority), st.booleans()),
        JobCreated: st.builds(JobCreated, DATA),
        GrabJob: st.just(GrabJob()),
        NoJob: st.just(NoJob()),
        JobAssign: st.builds(JobAssign, ARG, ARG, DATA),
        WorkStatus: st.builds(WorkStatus, ARG, numbers, numbers),
        WorkComplete: st.builds(WorkComplete, ARG, DATA),
        WorkFail: st.builds(WorkFail, DATA),
        GetStatus: st.builds(GetStatus, DATA),
        EchoReq: st.builds(EchoReq, DATA),
        EchoRes: st.builds(EchoRes, DATA),
        Error: st.builds(Error, ARG, DATA),
        StatusRes: st.builds(StatusRes, ARG, st.booleans(), st.booleans(), numbers, numbers),
        SetClientId: st.builds(SetClientId, DATA),
        CanDoTimeout: st.builds(CanDoTimeout, ARG, numbers),
        AllYours: st.just(AllYours()),
        WorkException: st.builds(WorkException, ARG, DATA),
        OptionReq: st.builds(OptionReq, DATA),
        OptionRes: st.builds(OptionRes, DATA),
        WorkData: st.builds(WorkData, ARG, DATA),
        WorkWarning: st.builds(WorkWarning, ARG, DATA),
        GrabJobUniq: st.just(GrabJobUniq()),
        JobAssignUniq: st.builds(JobAssignUniq, ARG, ARG, ARG, DATA),
        SubmitJobSched: st.builds(SubmitJobSched, ARG, ARG, ARG, ARG, ARG, ARG, ARG, DATA),
        SubmitJobEpoch: st.builds(SubmitJobEpoch, ARG, ARG, numbers, DATA),
        SubmitReduceJob: st.builds(SubmitReduceJob, ARG, ARG, ARG, ARG, DATA, st.booleans()),
        GrabJobAll: st.just(GrabJobAll()),
        JobAssignAll: st.builds(JobAssignAll, ARG, ARG, ARG, ARG, DATA),
        GetStatusUnique: st.builds(GetStatusUnique, DATA),
        StatusResUnique: st.builds(
            StatusResUnique, ARG, st.booleans(), st.booleans(), numbers, numbers, numbers
        ),
    }


def messages(numbers: st.SearchStrategy[int] = NUMBERS) -> st.SearchStrategy[Message]:
    """Any message of any class.

    Args:
        numbers: the integers used for the fields sent as decimal text.
    """
    return st.one_of(list(message_strategies(numbers).values()))
