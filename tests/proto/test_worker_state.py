"""The worker's sans-IO protocol state: each transition, then random conversations.

No event loop, no sockets: the tests call the state's methods and read its outbox.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trio_gearman._exceptions import ProtocolError
from trio_gearman._proto import (
    CanDo,
    CanDoTimeout,
    CantDo,
    EchoReq,
    EchoRes,
    Error,
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
from trio_gearman._proto.worker import AssignedJob, Slots, WorkerConnectionState, wire_timeout


@attrs.frozen
class Spec:
    """A function as the state sees it."""

    wire: bytes
    timeout: float | None = None


F = Spec(b"f")
G = Spec(b"g", timeout=0.5)
State = WorkerConnectionState[Spec]


def take(state: State) -> list[Message]:
    """What the state queued since the last call."""
    out = list(state.outbox)
    state.outbox.clear()
    return out


def connected(
    slots: Slots | None = None, functions: tuple[Spec, ...] = (F,), **options: object
) -> State:
    state = State(slots or Slots(1), functions, **options)  # type: ignore[arg-type]
    state.connect()
    return state


def assign(state: State, handle: bytes, function: bytes = b"f") -> AssignedJob[Spec]:
    job = state.receive(JobAssignUniq(handle, function, b"u", b"data"))
    assert job is not None
    return job


GRAB = GrabJobUniq()


# --- connecting and abilities ------------------------------------------------------------


def test_connect_registers_then_grabs_as_many_as_slots_and_max_grabs_allow() -> None:
    state = State(Slots(5), [F, G], max_grabs=3, timeout_grace=1.0)
    assert take(state) == []  # nothing before the connection is up
    state.connect(b"me")
    assert take(state) == [SetClientId(b"me"), CanDo(b"f"), CanDoTimeout(b"g", 1500)] + [GRAB] * 3
    assert state.grabs == 3
    assert state.slots.grabbing == 3
    assert state.waiting
    with pytest.raises(RuntimeError, match="already connected"):
        state.connect()


def test_no_grab_without_a_function_or_a_free_slot() -> None:
    slots = Slots(1)
    assert take(connected(slots, ())) == []
    first = connected(slots)
    assert take(first) == [CanDo(b"f"), GRAB]
    second = connected(slots)
    assert take(second) == [CanDo(b"f")]  # the only slot is held by first's GRAB
    assert not second.waiting


def test_the_handshake_grabs_only_once_the_echo_is_answered() -> None:
    state = connected(Slots(2), handshake=True)
    assert take(state) == [CanDo(b"f"), EchoReq(b"heartbeat")]
    assert state.handshaking
    assert state.waiting  # the ECHO is owed
    state.receive(EchoRes(b"heartbeat"))
    assert not state.handshaking
    assert take(state) == [GRAB, GRAB]
    state.probe()
    assert take(state) == [EchoReq(b"heartbeat")]
    state.receive(EchoRes(b"heartbeat"))
    state.receive(EchoRes(b"unasked"))  # an extra answer changes nothing
    assert take(state) == []
    assert state.grabs == 2


def test_probe_before_connecting_sends_nothing() -> None:
    state = State(Slots(1), [F])
    state.probe()
    state.add(G)
    state.remove(b"f")
    assert take(state) == []
    assert not state.waiting
    assert list(state.functions) == [b"g"]


def test_a_new_ability_is_announced_and_wakes_a_sleeping_connection() -> None:
    state = connected(Slots(1), ())
    state.add(F)
    assert take(state) == [CanDo(b"f"), GRAB]
    state.receive(NoJob())
    assert take(state) == [PreSleep()]
    assert state.sleeping
    state.add(G)
    assert take(state) == [CanDoTimeout(b"g", 1500), GRAB]
    assert not state.sleeping


def test_a_removed_ability_gets_cant_do_and_its_grabbed_jobs_still_run() -> None:
    state = connected()
    take(state)
    state.remove(b"f")
    state.remove(b"never")  # not registered: nothing
    assert take(state) == [CantDo(b"f")]
    job = assign(state, b"H:1")  # answers the GRAB sent before the CANT_DO
    assert job.function == F
    assert state.finish(job, [WorkComplete(b"H:1", b"")])
    assert take(state) == [WorkComplete(b"H:1", b"")]  # no function left: no GRAB
    state.add(F)  # registered again: no longer retired
    assert take(state) == [CanDo(b"f"), GRAB]
    state.remove(b"f")
    take(state)
    state.receive(JobAssignUniq(b"H:2", b"f", b"", b""))
    assert take(state) == []


# --- the grab cycle ------------------------------------------------------------------------


def test_no_job_sleeps_once_every_grab_is_answered_and_noop_wakes() -> None:
    state = connected(Slots(2))
    assert take(state) == [CanDo(b"f"), GRAB, GRAB]
    state.receive(NoJob())
    assert take(state) == []  # one GRAB still in flight: no PRE_SLEEP yet
    assert state.drained
    assert not state.sleeping
    state.receive(NoJob())
    assert take(state) == [PreSleep()]
    assert state.sleeping
    assert state.slots.free == 2
    state.pump()  # asleep: a free slot sends nothing
    assert take(state) == []
    state.receive(Noop())
    assert take(state) == [GRAB, GRAB]
    assert not state.sleeping


def test_wake_grabs_again_without_a_noop() -> None:
    state = connected()
    take(state)
    state.receive(NoJob())
    assert take(state) == [PreSleep()]
    state.wake()
    assert take(state) == [GRAB]


def test_a_job_after_a_no_job_resumes_grabbing() -> None:
    state = connected(Slots(3))
    take(state)
    state.receive(NoJob())
    assert take(state) == []
    assert state.drained
    assign(state, b"H:1")
    assert not state.drained
    assert take(state) == [GRAB]  # the NO_JOB's freed slot


def test_a_stopped_worker_grabs_no_more_and_does_not_sleep() -> None:
    slots = Slots(2)
    state = connected(slots)
    take(state)
    slots.stop()
    job = assign(state, b"H:1")  # a GRAB in flight still brings a job
    state.receive(NoJob())
    assert take(state) == []  # no PRE_SLEEP, no GRAB
    state.finish(job, [WorkComplete(b"H:1", b"")])
    assert take(state) == [WorkComplete(b"H:1", b"")]
    state.receive(Noop())
    assert take(state) == []
    assert slots.used == 0


def test_answers_without_a_grab_break_the_protocol() -> None:
    state = connected(Slots(1), ())
    with pytest.raises(ProtocolError, match="NoJob with no GRAB in flight"):
        state.receive(NoJob())
    with pytest.raises(ProtocolError, match="JobAssignUniq with no GRAB in flight"):
        state.receive(JobAssignUniq(b"H:1", b"f", b"", b""))


def test_other_messages_change_nothing() -> None:
    state = connected()
    take(state)
    assert state.receive(Error(b"ERR", b"text")) is None
    assert take(state) == []
    assert state.grabs == 1


# --- jobs ---------------------------------------------------------------------------------


def test_each_assignment_packet_makes_a_job_that_keeps_the_grabs_slot() -> None:
    slots = Slots(3)
    state = connected(slots)
    take(state)
    uniq = state.receive(JobAssignUniq(b"H:1", b"f", b"u", b"d1"))
    plain = state.receive(JobAssign(b"H:2", b"f", b"d2"))
    full = state.receive(JobAssignAll(b"H:3", b"f", b"u3", b"r", b"d3"))
    assert uniq is not None
    assert plain is not None
    assert full is not None
    assert [attrs.astuple(job, recurse=False) for job in (uniq, plain, full)] == [
        (b"H:1", F, b"u", b"d1", None, False, False),
        (b"H:2", F, b"", b"d2", None, False, False),
        (b"H:3", F, b"u3", b"d3", b"r", False, False),
    ]
    assert state.jobs == [uniq, plain, full]
    assert (slots.running, slots.grabbing, state.grabs) == (3, 0, 0)
    assert take(state) == []  # every slot runs a job


def test_a_job_of_an_unknown_function_is_failed_and_its_slot_grabs_again() -> None:
    state = connected()
    take(state)
    assert state.receive(JobAssignUniq(b"H:1", b"other", b"", b"")) is None
    assert take(state) == [WorkFail(b"H:1"), GRAB]
    assert state.jobs == []


def test_finishing_a_job_sends_its_end_frees_its_slot_and_grabs() -> None:
    state = connected()
    take(state)
    job = assign(state, b"H:1")
    assert take(state) == []
    end: list[Message] = [WorkWarning(b"H:1", b"w"), WorkFail(b"H:1")]
    assert state.finish(job, end)
    assert take(state) == [*end, GRAB]
    assert job.finished
    assert state.jobs == []
    with pytest.raises(RuntimeError, match="finished"):
        state.finish(job, [WorkComplete(b"H:1", b"")])
    with pytest.raises(RuntimeError, match="finished"):
        state.check_progress(job, WorkData(b"H:1", b""))


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "last packet"),
        ([WorkData(b"H:1", b"")], "last packet"),
        ([WorkComplete(b"H:2", b"")], "names job b'H:2'"),
        ([CanDo(b"f"), WorkComplete(b"H:1", b"")], "names job None"),
        ([WorkFail(b"H:1"), WorkException(b"H:1", b"")], "WorkFail before a job's last packet"),
    ],
)
def test_a_jobs_end_must_be_its_own_packets(messages: list[Message], match: str) -> None:
    state = connected()
    take(state)
    job = assign(state, b"H:1")
    with pytest.raises(ValueError, match=match):
        state.finish(job, messages)
    assert not job.finished
    assert state.jobs == [job]


def test_a_jobs_end_holds_only_work_packets() -> None:
    state = connected()
    take(state)
    job = assign(state, b"H:1")

    @attrs.frozen
    class Odd:
        handle: bytes

    with pytest.raises(ValueError, match="Odd before a job's last packet"):
        state.finish(job, [Odd(b"H:1"), WorkFail(b"H:1")])  # type: ignore[list-item]
    assert not job.finished


def test_progress_only_for_a_running_job_of_this_connection() -> None:
    slots = Slots(2)
    mine, other = connected(slots), connected(slots)
    take(mine)
    job = assign(mine, b"H:1")
    mine.check_progress(job, WorkStatus(b"H:1", 1, 2))
    mine.check_progress(job, WorkData(b"H:1", b"x"))
    with pytest.raises(ValueError, match="not a progress report"):
        mine.check_progress(job, WorkComplete(b"H:1", b""))
    with pytest.raises(ValueError, match="names job"):
        mine.check_progress(job, WorkData(b"H:9", b""))
    with pytest.raises(RuntimeError, match="not owned by this connection"):
        other.check_progress(job, WorkData(b"H:1", b""))
    with pytest.raises(RuntimeError, match="not owned by this connection"):
        other.finish(job, [WorkComplete(b"H:1", b"")])


# --- shared slots and limits ------------------------------------------------------------------


def test_a_freed_slot_goes_to_the_other_connections_first() -> None:
    slots = Slots(1)
    first, second = connected(slots), connected(slots)
    assert take(first) == [CanDo(b"f"), GRAB]
    assert take(second) == [CanDo(b"f")]
    job = assign(first, b"H:1")
    first.finish(job, [WorkComplete(b"H:1", b"")])
    assert take(first) == [WorkComplete(b"H:1", b"")]
    assert take(second) == [GRAB]


def test_a_function_limit_caps_grabs_across_connections() -> None:
    slots, limit = Slots(4), Slots(1)
    first = connected(slots, limit=limit)
    second = connected(slots, limit=limit)
    assert take(first) == [CanDo(b"f"), GRAB]
    assert take(second) == [CanDo(b"f")]  # the limit is taken
    assert (slots.used, limit.used) == (1, 1)
    job = assign(first, b"H:1")
    assert limit.running == 1
    first.finish(job, [WorkComplete(b"H:1", b"")])
    assert take(second) == [GRAB]
    second.receive(NoJob())
    assert take(second) == [PreSleep()]
    assert take(first) == [WorkComplete(b"H:1", b""), GRAB]
    assert (slots.used, limit.used) == (1, 1)


# --- connection lost ---------------------------------------------------------------------------


def test_a_lost_connection_orphans_its_jobs_and_frees_its_grabs_for_others() -> None:
    slots = Slots(2)
    lost, other = connected(slots), connected(slots)
    assert take(lost) == [CanDo(b"f"), GRAB, GRAB]
    assert take(other) == [CanDo(b"f")]
    job = assign(lost, b"H:1")
    lost.outbox.append(WorkData(b"H:1", b"unsent"))
    assert lost.lose() == [job]
    assert job.orphaned
    assert lost.outbox == []
    assert take(other) == [GRAB]  # the lost GRAB's slot; the orphan keeps its own
    assert (slots.running, slots.grabbing) == (1, 1)
    assert not lost.finish(job, [WorkComplete(b"H:1", b"")])  # dropped
    assert take(lost) == []
    assert take(other) == [GRAB]
    assert lost.lose() == []  # once is enough
    assert lost.receive(Noop()) is None
    lost.pump()
    assert take(lost) == []
    assert slots.used == 2


def test_losing_a_connection_without_grabs_frees_nothing() -> None:
    slots = Slots(1)
    state = connected(slots)
    take(state)
    job = assign(state, b"H:1")
    assert state.lose() == [job]
    assert slots.used == 1


def test_slots_and_grabs_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
    with pytest.raises(ValueError, match="max_grabs"):
        State(Slots(1), max_grabs=0)


def test_wire_timeout_rounds_up_to_milliseconds() -> None:
    assert wire_timeout(0.5, 1.0) == 1500
    assert wire_timeout(0.0001, 0) == 1


def test_repr_names_the_state() -> None:
    assert repr(connected()) == (
        "<WorkerConnectionState grabs=1 jobs=0 sleeping=False drained=False lost=False>"
    )


# --- random conversations ---------------------------------------------------------------------

FINALS = st.sampled_from(["complete", "fail", "exception", "warned"])


class _Conn:
    """One connection of the machine, with what the fake server has seen of it."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.owed = 0  # GRABs the server has not answered
        self.asleep = False  # PRE_SLEEP seen, no wake-up since


class WorkerMachine(RuleBasedStateMachine):
    """Several connections sharing slots, driven by a random fake server.

    Invariants:

    * running jobs (and GRABs in flight plus running jobs) stay within the slots;
    * each connection's GRABs in flight stay within ``max_grabs``, and its
      PRE_SLEEP goes out only with none in flight;
    * a sleeping connection asks for nothing (no GRAB, no second PRE_SLEEP) until a
      NOOP, the re-grab timer or a new CAN_DO wakes it (the ends of its running
      jobs still go out);
    * after ``Slots.stop()`` no connection grabs;
    * every assigned job ends exactly once (its end on the wire once, unless it
      was orphaned on a lost connection, whose end goes nowhere).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conns: list[_Conn] = []
        self.jobs: list[tuple[_Conn, AssignedJob[Spec]]] = []
        self.ends: dict[bytes, int] = {}
        self.refused: set[bytes] = set()
        self.next_handle = 0

    @initialize(
        size=st.integers(1, 4),
        max_grabs=st.integers(1, 3),
        limited=st.booleans(),
        count=st.integers(1, 3),
    )
    def start(self, size: int, max_grabs: int, limited: bool, count: int) -> None:
        self.slots = Slots(size)
        self.limit = Slots(1) if limited else None
        self.max_grabs = max_grabs
        for _ in range(count):
            self._open()

    def _open(self) -> None:
        state = State(self.slots, [F], limit=self.limit, max_grabs=self.max_grabs)
        conn = _Conn(state)
        self.conns.append(conn)
        state.connect()
        self._drain()

    def _live(self) -> list[_Conn]:
        return [conn for conn in self.conns if not conn.state.lost]

    def _pick(self, i: int) -> _Conn:
        live = self._live()
        return live[i % len(live)]

    def _drain(self) -> None:
        """The fake servers read every outbox; the sleep and end rules are checked."""
        for conn in self.conns:
            for message in take(conn.state):
                if isinstance(message, GrabJobUniq):
                    assert not conn.asleep, "a sleeping connection grabbed without a NOOP"
                    assert not self.slots.stopped, "a GRAB after stop()"
                    conn.owed += 1
                elif isinstance(message, PreSleep):
                    assert conn.owed == 0, "PRE_SLEEP with a GRAB in flight"
                    assert not conn.asleep, "PRE_SLEEP twice"
                    conn.asleep = True
                elif isinstance(message, (WorkComplete, WorkFail, WorkException)):
                    self.ends[message.handle] = self.ends.get(message.handle, 0) + 1

    # --- rules ------------------------------------------------------------------------------

    @precondition(lambda self: any(conn.owed for conn in self._live()))
    @rule(i=st.integers(0, 10), known=st.booleans(), kind=st.integers(0, 2))
    def assign_job(self, i: int, known: bool, kind: int) -> None:
        conn = next(c for c in self._live()[i % len(self._live()) :] + self._live() if c.owed)
        conn.owed -= 1
        self.next_handle += 1
        handle = b"H:%d" % self.next_handle
        function = b"f" if known else b"nope"
        message: JobAssign | JobAssignUniq | JobAssignAll
        if kind == 0:
            message = JobAssignUniq(handle, function, b"u", b"")
        elif kind == 1:
            message = JobAssign(handle, function, b"")
        else:
            message = JobAssignAll(handle, function, b"u", b"r", b"")
        job = conn.state.receive(message)
        if job is None:
            assert not known
            self.refused.add(handle)  # failed at once
        else:
            assert known
            assert job in conn.state.jobs
            self.jobs.append((conn, job))
        self._drain()
        if job is None:
            assert self.ends[handle] == 1

    @precondition(lambda self: any(conn.owed for conn in self._live()))
    @rule(i=st.integers(0, 10))
    def no_job(self, i: int) -> None:
        conn = next(c for c in self._live()[i % len(self._live()) :] + self._live() if c.owed)
        conn.owed -= 1
        conn.state.receive(NoJob())
        self._drain()

    @precondition(lambda self: self._live())
    @rule(i=st.integers(0, 10))
    def noop(self, i: int) -> None:
        conn = self._pick(i)
        conn.asleep = False
        conn.state.receive(Noop())
        self._drain()

    @precondition(lambda self: self._live())
    @rule(i=st.integers(0, 10))
    def regrab_timer(self, i: int) -> None:
        conn = self._pick(i)
        conn.asleep = False
        conn.state.wake()
        self._drain()

    @precondition(lambda self: any(not job.finished for _, job in self.jobs))
    @rule(i=st.integers(0, 100), final=FINALS)
    def finish(self, i: int, final: str) -> None:
        running = [(conn, job) for conn, job in self.jobs if not job.finished]
        conn, job = running[i % len(running)]
        handle = job.handle
        endings: dict[str, list[Message]] = {
            "complete": [WorkData(handle, b"d"), WorkComplete(handle, b"")],
            "fail": [WorkFail(handle)],
            "exception": [WorkException(handle, b"e")],
            "warned": [WorkWarning(handle, b"w"), WorkFail(handle)],
        }
        messages = endings[final]
        delivered = conn.state.finish(job, messages)
        assert delivered == (not job.orphaned)
        assert job.finished
        self._drain()

    @precondition(lambda self: self._live())
    @rule(i=st.integers(0, 10))
    def add_function(self, i: int) -> None:
        conn = self._pick(i)
        conn.asleep = False  # a CAN_DO wakes the connection
        conn.state.add(F)
        self._drain()

    @precondition(lambda self: self._live())
    @rule(i=st.integers(0, 10))
    def remove_function(self, i: int) -> None:
        self._pick(i).state.remove(b"f")
        self._drain()

    @precondition(lambda self: self._live())
    @rule(i=st.integers(0, 10), reconnect=st.booleans())
    def lose_connection(self, i: int, reconnect: bool) -> None:
        conn = self._pick(i)
        orphans = conn.state.lose()
        assert orphans == [job for c, job in self.jobs if c is conn and not job.finished]
        assert all(job.orphaned for job in orphans)
        conn.owed = 0
        self._drain()
        if reconnect or not self._live():
            self._open()

    @rule()
    def stop(self) -> None:
        self.slots.stop()
        self._drain()

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def running_jobs_within_the_slots(self) -> None:
        if not self.conns:
            return
        running = sum(1 for _, job in self.jobs if not job.finished)
        assert self.slots.running == running <= self.slots.size
        assert self.slots.used <= self.slots.size
        assert self.slots.grabbing == sum(conn.state.grabs for conn in self.conns)
        if self.limit is not None:
            assert self.limit.used <= self.limit.size
            assert self.limit.running == running

    @invariant()
    def grabs_in_flight_within_max_grabs(self) -> None:
        for conn in self.conns:
            assert conn.state.grabs <= self.max_grabs
            if not conn.state.lost:
                assert conn.state.grabs == conn.owed

    @invariant()
    def every_job_ends_exactly_once(self) -> None:
        for _, job in self.jobs:
            seen = self.ends.get(job.handle, 0)
            if job.finished and not job.orphaned:
                assert seen == 1
            else:
                assert seen == 0
        for handle, count in self.ends.items():
            assert count <= 1, handle

    def teardown(self) -> None:
        for conn in self._live():
            conn.state.lose()
        for _, job in self.jobs:
            assert job.finished or job.orphaned


TestWorkerMachine = WorkerMachine.TestCase
TestWorkerMachine.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_losing_a_connection_never_connected_orphans_nothing() -> None:
    slots = Slots(1)
    state = State(slots, [F])
    assert state.lose() == []
    with pytest.raises(RuntimeError, match="already connected"):
        state.connect()
    assert take(state) == []
    assert slots.used == 0
