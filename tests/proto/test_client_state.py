"""The client connection's sans-IO state: requests matched to replies, jobs to packets.

Plain unit tests for each reply kind and each odd case, then a hypothesis
rule-based machine that plays a server answering in order (with coalescing,
updates, failures, stray packets, abandonment and connection loss) and checks
that every request settles exactly once, in FIFO order, and that nothing settled
stays in the tables.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from trio_gearman._exceptions import (
    ConnectionLost,
    JobError,
    JobException,
    JobFailed,
    ServerLost,
)
from trio_gearman._proto import TextLine
from trio_gearman._proto._packets import (
    EchoReq,
    EchoRes,
    Error,
    JobCreated,
    Message,
    Noop,
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
from trio_gearman._proto.client import Call, ClientConnectionState, Request, Submission

SERVER = "10.0.0.1:4730"
REPLIES: dict[type[Message], Message] = {
    StatusRes: StatusRes(b"H:1", True, False, 1, 2),
    StatusResUnique: StatusResUnique(b"u", True, True, 3, 4, 2),
    EchoRes: EchoRes(b"ping"),
    OptionRes: OptionRes(b"exceptions"),
}


def _state() -> ClientConnectionState:
    return ClientConnectionState(SERVER)


def _fg(
    state: ClientConnectionState, function: bytes = b"f", *, updates: bool = False
) -> Submission:
    submission, _ = state.submit(function, b"", b"data", want_updates=updates)
    return submission


def _created(
    state: ClientConnectionState, handle: bytes, function: bytes = b"f", *, updates: bool = False
) -> Submission:
    submission = _fg(state, function, updates=updates)
    assert state.receive(JobCreated(handle)) is None
    state.changed.clear()
    return submission


def _lost(reason: str = "the server closed the connection") -> ConnectionLost:
    return ConnectionLost(reason, server=SERVER)


# --- opening -----------------------------------------------------------------------------


def test_open_sends_client_id_then_the_exceptions_option() -> None:
    state = _state()
    assert state.open(client_id=b"me", exceptions=True) == [
        SetClientId(b"me"),
        OptionReq(b"exceptions"),
    ]
    assert state.opening is not None
    assert state.requests() == (state.opening,)
    assert state.receive(OptionRes(b"exceptions")) is None
    assert state.opening.done
    assert state.opening.reply == OptionRes(b"exceptions")
    assert state.changed == [state.opening]


def test_open_with_a_handshake_but_no_exceptions_sends_an_echo() -> None:
    state = _state()
    assert state.open(client_id=b"", exceptions=False, handshake=True) == [EchoReq(b"handshake")]
    assert state.opening is not None
    assert state.opening.reply_type is EchoRes


def test_open_without_anything_sends_nothing() -> None:
    state = _state()
    assert state.open(exceptions=False) == []
    assert state.opening is None
    assert not state.waiting


# --- submissions -------------------------------------------------------------------------


def test_submit_returns_the_packet_to_send() -> None:
    state = _state()
    submission, message = state.submit(b"f", b"u", b"d", Priority.HIGH, background=True)
    assert message == SubmitJob(b"f", b"u", b"d", Priority.HIGH, True)
    assert not submission.done
    assert submission.handle is None
    assert state.requests() == (submission,)
    _, message = state.submit(b"f", b"u", b"d", background=True, epoch=1234)
    assert message == SubmitJobEpoch(b"f", b"u", 1234, b"d")
    assert state.in_flight == 2


def test_job_created_settles_a_background_job() -> None:
    state = _state()
    submission, _ = state.submit(b"f", b"", b"", background=True)
    assert state.receive(JobCreated(b"H:1")) is None
    assert submission.done
    assert submission.error is None
    assert submission.handle == b"H:1"
    assert state.changed == [submission]
    assert state.jobs() == {}
    assert not state.waiting


def test_job_created_of_a_foreground_job_tracks_it_quietly() -> None:
    state = _state()
    submission = _fg(state)
    assert state.receive(JobCreated(b"H:1")) is None
    assert not submission.done
    assert submission.handle == b"H:1"
    assert state.changed == []  # nobody follows it: only its end matters
    assert state.jobs() == {b"H:1": (submission,)}
    assert state.requests() == ()
    assert state.in_flight == 1


def test_job_created_wakes_a_follower() -> None:
    state = _state()
    submission = _fg(state, updates=True)
    state.receive(JobCreated(b"H:1"))
    assert state.changed == [submission]
    assert not submission.done


def test_work_complete_settles_the_job() -> None:
    state = _state()
    submission = _created(state, b"H:1")
    assert state.receive(WorkComplete(b"H:1", b"result")) is None
    assert submission.done
    assert submission.error is None
    assert submission.result == b"result"
    assert state.changed == [submission]
    assert state.jobs() == {}


def test_updates_stream_to_followers_only() -> None:
    state = _state()
    follower = _created(state, b"H:1", updates=True)
    quiet = _created(state, b"H:2")
    data, warning, status = (
        WorkData(b"H:1", b"d"),
        WorkWarning(b"H:1", b"w"),
        WorkStatus(b"H:1", 1, 2),
    )
    for message in (data, warning, status):
        assert state.receive(message) is None
    assert follower.updates == deque([data, warning, status])
    assert state.changed == [follower, follower, follower]
    state.changed.clear()
    state.receive(WorkData(b"H:2", b"d"))
    assert quiet.updates is None
    assert state.changed == []


def test_coalesced_jobs_share_the_packets() -> None:
    state = _state()
    first = _created(state, b"H:1", updates=True)
    second = _created(state, b"H:1", updates=True)
    assert state.jobs() == {b"H:1": (first, second)}
    assert state.in_flight == 1
    state.receive(WorkData(b"H:1", b"d"))
    assert first.updates == second.updates == deque([WorkData(b"H:1", b"d")])
    state.changed.clear()
    state.receive(WorkComplete(b"H:1", b"r"))
    assert first.result == second.result == b"r"
    assert state.changed == [first, second]


def test_work_fail_fails_the_job() -> None:
    state = _state()
    submission = _created(state, b"H:1", b"resize")
    assert state.receive(WorkFail(b"H:1")) is None
    assert submission.done
    error = submission.error
    assert type(error) is JobFailed
    assert (error.server, error.function, error.handle) == (SERVER, "resize", "H:1")
    assert state.changed == [submission]
    assert state.jobs() == {}


@pytest.mark.parametrize("message", [WorkFail(b"H:1\0"), WorkException(b"H:1\0", b"boom")])
def test_a_trailing_nul_in_the_handle_still_finds_the_job(message: Message) -> None:
    # gearmand 1.1.20 tells clients without the exceptions option "handle\0".
    state = _state()
    submission = _created(state, b"H:1")
    state.receive(message)
    assert isinstance(submission.error, JobFailed)
    assert state.jobs() == {}


def test_work_exception_fails_the_job_with_its_text() -> None:
    state = _state()
    submission = _created(state, b"H:1", b"resize")
    state.receive(WorkException(b"H:1", b"no such file"))
    error = submission.error
    assert isinstance(error, JobException)
    assert error.data == b"no such file"
    assert (error.server, error.function, error.handle) == (SERVER, "resize", "H:1")


# --- calls -------------------------------------------------------------------------------


@pytest.mark.parametrize("reply_type", list(REPLIES))
def test_a_reply_settles_its_call(reply_type: type[Message]) -> None:
    state = _state()
    call = state.call(reply_type)
    assert isinstance(call, Call)
    reply = REPLIES[reply_type]
    assert state.receive(reply) is None
    assert call.done
    assert call.error is None
    assert call.reply is reply
    assert state.changed == [call]
    assert state.requests() == ()


def test_replies_settle_calls_in_fifo_order() -> None:
    state = _state()
    first, second = state.call(EchoRes), state.call(EchoRes)
    state.receive(EchoRes(b"1"))
    assert first.reply == EchoRes(b"1")
    assert not second.done
    state.receive(EchoRes(b"2"))
    assert second.reply == EchoRes(b"2")


def test_a_reply_out_of_order_takes_the_oldest_of_its_kind_and_says_so() -> None:
    state = _state()
    call = state.call(EchoRes)
    submission = _fg(state)
    notice = state.receive(JobCreated(b"H:1"))
    assert notice == f"{SERVER} answered out of order: JobCreated before earlier requests"
    assert submission.handle == b"H:1"
    assert state.requests() == (call,)
    assert state.receive(EchoRes(b"x")) is None  # back in order
    assert call.done


def test_an_out_of_order_call_reply_is_matched_too() -> None:
    state = _state()
    submission = _fg(state)
    call = state.call(EchoRes)
    notice = state.receive(EchoRes(b"x"))
    assert notice is not None
    assert "answered out of order: EchoRes" in notice
    assert call.done
    assert state.requests() == (submission,)


# --- ERROR -------------------------------------------------------------------------------


def test_error_settles_the_oldest_request_of_any_kind() -> None:
    state = _state()
    submission = _fg(state, b"resize")
    call = state.call(EchoRes)
    assert state.receive(Error(b"QUEUE_ERROR", b"full")) is None
    error = submission.error
    assert isinstance(error, JobError)
    assert (error.code, error.text, error.server, error.function) == (
        "QUEUE_ERROR",
        "full",
        SERVER,
        "resize",
    )
    assert submission.done
    assert not call.done
    state.receive(Error(b"X", b"y"))
    assert isinstance(call.error, JobError)
    assert call.error.function is None
    assert state.changed == [submission, call]
    assert state.requests() == ()


# --- nothing waits -----------------------------------------------------------------------


def test_an_error_with_nothing_in_flight_is_reported_and_ignored() -> None:
    state = _state()
    notice = state.receive(Error(b"X", b"no request"))
    assert notice == f"{SERVER} sent ERROR X (no request) with no request waiting"
    assert state.changed == []


@pytest.mark.parametrize("reply", [JobCreated(b"H:1"), *REPLIES.values()])
def test_a_reply_with_nothing_in_flight_is_reported_and_ignored(reply: Message) -> None:
    state = _state()
    notice = state.receive(reply)
    assert notice == f"{SERVER} sent {type(reply)}, but no request waits for one"
    assert state.changed == []
    assert state.jobs() == {}


def test_a_reply_no_request_of_that_kind_waits_for_leaves_the_others() -> None:
    state = _state()
    call = state.call(EchoRes)
    notice = state.receive(JobCreated(b"H:1"))
    assert notice is not None
    assert "no request waits" in notice
    assert state.requests() == (call,)
    assert not call.done


@pytest.mark.parametrize("event", [Noop(), TextLine(b"OK")])
def test_unexpected_events_are_reported_and_ignored(event: Any) -> None:
    state = _state()
    call = state.call(EchoRes)
    assert state.receive(event) == f"{SERVER} sent an unexpected {event!r}; ignored"
    assert not call.done
    assert state.changed == []


@pytest.mark.parametrize(
    "message",
    [
        WorkData(b"H:9", b"d"),
        WorkWarning(b"H:9", b"w"),
        WorkStatus(b"H:9", 1, 2),
        WorkComplete(b"H:9", b"r"),
        WorkFail(b"H:9"),
        WorkFail(b"H:9\0"),
        WorkException(b"H:9", b"e"),
    ],
)
def test_packets_for_unknown_handles_are_dropped(message: Message) -> None:
    state = _state()
    submission = _created(state, b"H:1", updates=True)
    assert state.receive(message) is None
    assert state.changed == []
    assert not submission.done
    assert submission.updates == deque()
    assert state.jobs() == {b"H:1": (submission,)}


# --- abandoned ---------------------------------------------------------------------------


def test_an_abandoned_request_keeps_its_slot_until_its_reply() -> None:
    state = _state()
    abandoned = _fg(state, updates=True)
    later = _fg(state)
    state.abandon(abandoned)
    assert abandoned.abandoned
    assert abandoned.updates is None
    assert state.requests() == (abandoned, later)
    state.receive(JobCreated(b"H:1"))
    assert abandoned.handle == b"H:1"  # the slot was consumed by its own reply
    assert state.changed == []
    state.receive(JobCreated(b"H:2"))
    assert later.handle == b"H:2"
    assert state.jobs() == {b"H:2": (later,)}
    state.receive(WorkComplete(b"H:1", b"r"))  # nobody waits: dropped
    assert not abandoned.done
    assert state.changed == []


def test_an_abandoned_job_leaves_the_job_table_but_its_partner_stays() -> None:
    state = _state()
    first = _created(state, b"H:1", updates=True)
    second = _created(state, b"H:1")
    state.abandon(first)
    assert state.jobs() == {b"H:1": (second,)}
    state.receive(WorkData(b"H:1", b"d"))
    assert state.changed == []
    state.abandon(second)
    assert state.jobs() == {}
    assert not state.waiting
    state.receive(WorkComplete(b"H:1", b"r"))
    assert not first.done
    assert not second.done


def test_abandoning_twice_or_after_the_end_changes_nothing() -> None:
    state = _state()
    done = _created(state, b"H:1")
    state.receive(WorkComplete(b"H:1", b"r"))
    state.abandon(done)
    assert not done.abandoned
    assert done.result == b"r"
    early = _fg(state)  # abandoned before its JOB_CREATED: never tracked
    state.abandon(early)
    partner = _fg(state)
    state.receive(JobCreated(b"H:2"))
    state.receive(JobCreated(b"H:2"))  # coalesced: the partner is tracked
    assert state.jobs() == {b"H:2": (partner,)}
    state.abandon(early)  # its handle is in the table, but it is not
    assert state.jobs() == {b"H:2": (partner,)}
    state.abandon(partner)
    state.abandon(partner)  # its handle is no longer in the table
    assert state.jobs() == {}


def test_an_abandoned_request_still_settles_by_error_or_background_reply() -> None:
    state = _state()
    refused = _fg(state)
    background, _ = state.submit(b"f", b"", b"", background=True)
    state.abandon(refused)
    state.abandon(background)
    state.receive(Error(b"X", b"y"))
    state.receive(JobCreated(b"H:1"))
    assert isinstance(refused.error, JobError)
    assert background.done
    assert background.error is None
    assert state.changed == [refused, background]


# --- the end -----------------------------------------------------------------------------


@pytest.mark.parametrize("server_lost", [True, False])
def test_connection_lost_fails_everything_in_flight(server_lost: bool) -> None:
    state = _state()
    job = _created(state, b"H:1", b"resize")
    waiting = _fg(state, b"thumb")
    call = state.call(EchoRes)
    cause = _lost()
    state.connection_lost(cause, server_lost=server_lost)
    assert state.error is cause
    assert state.changed == [waiting, call, job]
    assert all(request.done for request in (job, waiting, call))
    assert call.error is cause
    error = waiting.error
    assert type(error) is ConnectionLost
    assert (error.function, error.handle, error.__cause__) == ("thumb", None, cause)
    assert str(error).startswith(f"{SERVER}: the server closed the connection")
    assert f"{SERVER}: {SERVER}" not in str(error)  # the server is named once
    error = job.error
    assert type(error) is (ServerLost if server_lost else ConnectionLost)
    assert (error.function, error.handle, error.__cause__) == ("resize", "H:1", cause)
    assert state.requests() == ()
    assert state.jobs() == {}
    assert state.in_flight == 0


def test_after_the_end_requests_are_refused() -> None:
    state = _state()
    cause = _lost()
    state.connection_lost(cause)
    with pytest.raises(ConnectionLost) as info:
        state.submit(b"resize", b"", b"")
    assert info.value.function == "resize"
    assert info.value.__cause__ is cause
    with pytest.raises(ConnectionLost) as call_info:
        state.call(EchoRes)
    assert call_info.value is cause
    assert state.requests() == ()


def test_a_second_loss_replaces_the_reason_and_settles_nothing_again() -> None:
    state = _state()
    call = state.call(EchoRes)
    first, second = _lost("closed"), _lost("broke")
    state.connection_lost(first)
    state.changed.clear()
    state.connection_lost(second, server_lost=True)
    assert state.error is second
    assert call.error is first
    assert state.changed == []


def test_lost_after_an_abandoned_job_leaves_it_alone() -> None:
    state = _state()
    abandoned = _created(state, b"H:1")
    state.abandon(abandoned)
    state.connection_lost(_lost())
    assert not abandoned.done
    assert state.changed == []


# --- a random server answering in order --------------------------------------------------

FUNCTIONS = st.sampled_from([b"a", b"b"])
PICK = st.integers(0, 1000)
REPLY_TYPES = st.sampled_from(list(REPLIES))


class ClientMachine(RuleBasedStateMachine):
    """A server that answers the client's requests in order, and the client's state."""

    def __init__(self) -> None:
        super().__init__()
        self.state = _state()
        self.sent: deque[Request] = deque()  # the server's view: unanswered, in order
        self.handles: dict[bytes, list[Submission]] = {}  # the server's live fg jobs
        self.everything: list[Request] = []
        self.settled: dict[Request, tuple[object, ...]] = {}  # outcome when first seen done
        self.counter = 0
        self.lost = False

    # --- helpers ------------------------------------------------------------------------

    def _record(self, request: Request) -> None:
        self.sent.append(request)
        self.everything.append(request)

    def _deliver(self, message: Any) -> str | None:
        notice = self.state.receive(message)
        self._observe()
        return notice

    def _observe(self) -> None:
        """What the I/O layer does after each event: look at ``changed``, clear it."""
        for request in self.state.changed:
            # Nothing settled changes again: each request settles exactly once.
            assert request not in self.settled, request
        for request in self.state.changed:
            if request.done:
                self.settled[request] = _outcome(request)
        self.state.changed.clear()

    def _new_handle(self) -> bytes:
        self.counter += 1
        return b"H:%d" % self.counter

    # --- requests -----------------------------------------------------------------------

    @precondition(lambda self: not self.lost)
    @rule(function=FUNCTIONS, background=st.booleans(), updates=st.booleans())
    def submit(self, function: bytes, background: bool, updates: bool) -> None:
        submission, message = self.state.submit(
            function, b"", b"x", background=background, want_updates=updates and not background
        )
        assert isinstance(message, SubmitJob)
        assert message.function == function
        self._record(submission)

    @precondition(lambda self: not self.lost)
    @rule(reply_type=REPLY_TYPES)
    def call(self, reply_type: type[Message]) -> None:
        self._record(self.state.call(reply_type))

    @rule(pick=PICK)
    def abandon(self, pick: int) -> None:
        submissions = [r for r in self.everything if isinstance(r, Submission)]
        if not submissions:
            return
        submission = submissions[pick % len(submissions)]
        was_done, was_abandoned = submission.done, submission.abandoned
        self.state.abandon(submission)
        if was_done:  # nothing to stop
            assert submission.abandoned is was_abandoned
        else:
            assert submission.abandoned
            assert submission.updates is None
        self._observe()

    @precondition(lambda self: self.lost)
    @rule(function=FUNCTIONS)
    def submit_after_the_end(self, function: bytes) -> None:
        with pytest.raises(ConnectionLost):
            self.state.submit(function, b"", b"")
        with pytest.raises(ConnectionLost):
            self.state.call(EchoRes)

    # --- the server's answers -----------------------------------------------------------

    @precondition(lambda self: bool(self.sent))
    @rule(coalesce=st.booleans(), pick=PICK)
    def answer_the_oldest(self, coalesce: bool, pick: int) -> None:
        request = self.sent.popleft()
        if isinstance(request, Submission):
            live = list(self.handles)
            if coalesce and live and not request.background:
                handle = live[pick % len(live)]
            else:
                handle = self._new_handle()
            assert self._deliver(JobCreated(handle)) is None
            assert request.handle == handle  # FIFO: this very request got it
            if request.background:
                assert request.done
            else:
                assert not request.done
                self.handles.setdefault(handle, []).append(request)
        else:
            reply = REPLIES[request.reply_type]
            assert self._deliver(reply) is None
            assert isinstance(request, Call)
            assert request.done
            assert request.reply is reply

    @precondition(lambda self: bool(self.sent))
    @rule()
    def refuse_the_oldest(self) -> None:
        request = self.sent.popleft()
        assert self._deliver(Error(b"QUEUE_ERROR", b"full")) is None
        assert request.done
        assert isinstance(request.error, JobError)

    @precondition(lambda self: bool(self.handles))
    @rule(pick=PICK, kind=st.sampled_from([WorkData, WorkWarning, WorkStatus]))
    def update(self, pick: int, kind: type[Any]) -> None:
        handles = list(self.handles)
        handle = handles[pick % len(handles)]
        message = WorkStatus(handle, 1, 2) if kind is WorkStatus else kind(handle, b"u")
        before = {s: len(s.updates) for s in self.handles[handle] if s.updates is not None}
        assert self._deliver(message) is None
        for submission, count in before.items():
            assert submission.updates is not None
            assert len(submission.updates) == count + 1
            assert submission.updates[-1] is message

    @precondition(lambda self: bool(self.handles))
    @rule(
        pick=PICK,
        end=st.sampled_from(["complete", "fail", "exception"]),
        nul=st.booleans(),
    )
    def end_a_job(self, pick: int, end: str, nul: bool) -> None:
        handles = list(self.handles)
        handle = handles[pick % len(handles)]
        waiting = self.handles.pop(handle)
        message: Message
        if end == "complete":
            message = WorkComplete(handle, b"result")
        elif end == "fail":
            message = WorkFail(handle + b"\0" if nul else handle)
        else:
            message = WorkException(handle + b"\0" if nul else handle, b"boom")
        assert self._deliver(message) is None
        for submission in waiting:
            if submission.abandoned:
                assert not submission.done
                continue
            assert submission.done
            if end == "complete":
                assert submission.error is None
                assert submission.result == b"result"
            elif end == "fail":
                assert type(submission.error) is JobFailed
            else:
                assert type(submission.error) is JobException

    @rule(kind=st.sampled_from([WorkComplete, WorkData, WorkFail]))
    def stray_packet(self, kind: type[Any]) -> None:
        handle = b"stray:%d" % self.counter
        message = WorkFail(handle) if kind is WorkFail else kind(handle, b"x")
        before = self.state.jobs()
        assert self._deliver(message) is None
        assert self.state.jobs() == before

    @precondition(lambda self: not self.lost)
    @rule(server_lost=st.booleans())
    def lose_the_connection(self, server_lost: bool) -> None:
        in_fifo = list(self.sent)
        tracked = [s for subs in self.state.jobs().values() for s in subs]
        cause = _lost()
        self.state.connection_lost(cause, server_lost=server_lost)
        self._observe()
        self.lost = True
        self.sent.clear()
        self.handles.clear()
        for request in in_fifo:
            assert request.done
            assert isinstance(request.error, ConnectionLost)
            assert not isinstance(request.error, ServerLost)
        for submission in tracked:
            assert submission.done
            assert isinstance(submission.error, ConnectionLost)
            assert isinstance(submission.error, ServerLost) is server_lost

    # --- invariants ---------------------------------------------------------------------

    @invariant()
    def fifo_is_the_order_of_sending(self) -> None:
        assert self.state.requests() == tuple(self.sent)

    @invariant()
    def job_table_holds_exactly_the_followed_jobs(self) -> None:
        expected = {
            handle: tuple(s for s in waiting if not s.abandoned)
            for handle, waiting in self.handles.items()
        }
        assert self.state.jobs() == {h: w for h, w in expected.items() if w}
        assert self.state.in_flight == len(self.sent) + len(self.state.jobs())
        assert self.state.waiting is (self.state.in_flight > 0)

    @invariant()
    def nothing_settled_is_tracked(self) -> None:
        for request in self.state.requests():
            assert not request.done
        for waiting in self.state.jobs().values():
            for submission in waiting:
                assert not submission.done
                assert not submission.abandoned

    @invariant()
    def outcomes_never_change(self) -> None:
        for request, outcome in self.settled.items():
            assert request.done
            assert _outcome(request) == outcome

    @invariant()
    def everything_followed_is_accounted_for(self) -> None:
        tracked = {s for waiting in self.state.jobs().values() for s in waiting}
        waiting = set(self.state.requests())
        for request in self.everything:
            places = (request in tracked) + (request in waiting) + request.done
            if isinstance(request, Submission) and request.abandoned and request.handle:
                assert places <= 1  # dropped: may never settle
            else:
                assert places == 1, request

    def teardown(self) -> None:
        if not self.lost:
            self.state.connection_lost(_lost("the client was closed"))
            self._observe()
        for request in self.everything:
            abandoned_job = isinstance(request, Submission) and request.abandoned and request.handle
            assert request.done or abandoned_job


def _outcome(request: Request) -> tuple[object, ...]:
    if isinstance(request, Submission):
        return (request.error, request.handle, request.result)
    assert isinstance(request, Call)
    return (request.error, request.reply)


TestClientMachine = ClientMachine.TestCase
TestClientMachine.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
