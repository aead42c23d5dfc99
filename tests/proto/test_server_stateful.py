"""Random conversations with the job server state machine, checked after every step.

A hypothesis rule-based machine drives clients and workers (submit, grab, results,
abilities, sleep, disconnect, cancel, time) and checks the state's invariants:

* every job is in exactly one place: queued once in its function's queue, held by
  exactly one worker, or waiting in the timer heap; gone jobs are nowhere;
* the per-function and global counters, and the admin ``status`` listing, equal
  the numbers recounted from the jobs themselves;
* the function table holds exactly the functions in use (with a job or a worker),
  and every job and registration refers to the table's entry;
* the unique-key index holds exactly the live, uncancelled jobs with a unique;
* no queued job waits while a sleeping worker that can run it has had no NOOP
  (with ``worker_wakeup`` N: while no worker that can run it is awake or woken);
* a NOOP is only sent when the woken worker could grab a job, and NO_JOB only when
  it could not.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trio_gearman._proto._packets import (
    CanDo,
    CanDoTimeout,
    CantDo,
    Error,
    GetStatus,
    GrabJob,
    GrabJobAll,
    GrabJobUniq,
    JobAssign,
    JobAssignAll,
    JobAssignUniq,
    Message,
    NoJob,
    Noop,
    PreSleep,
    Priority,
    ResetAbilities,
    StatusRes,
    SubmitJob,
    SubmitJobEpoch,
    SubmitReduceJob,
    WorkComplete,
    WorkException,
    WorkFail,
    WorkStatus,
)
from trio_gearman._proto.server.model import FUTURE, QUEUED, RUNNING, ConnectionState, Job

from .test_server_state_harness import Harness, Peer

FUNCTIONS = st.sampled_from([b"a", b"b", b"c"])
UNIQUES = st.sampled_from([b"", b"", b"-", b"u1", b"u2"])
DATA = st.sampled_from([b"", b"x", b"y"])
PEER = st.integers(0, 5)
PICK = st.integers(0, 1000)


class ServerMachine(RuleBasedStateMachine):
    """Drives one :class:`Harness`; subclasses pick the server configuration."""

    config: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        super().__init__()
        self.harness = Harness(**self.config)
        self.state = self.harness.state
        self.peers: list[Peer] = []
        self.handles: list[bytes] = []

    # --- helpers ------------------------------------------------------------------------

    def _peer(self, i: int) -> Peer:
        return self.peers[i % len(self.peers)]

    def _runnable_for(self, conn: ConnectionState) -> bool:
        return self.state._find(conn, rotate=False) is not None

    def _drain(self) -> dict[ConnectionState, list[Message]]:
        received = {peer.conn: peer.received() for peer in self.peers}
        for conn, messages in received.items():
            if Noop() in messages:
                assert self._runnable_for(conn), "NOOP sent for work the worker cannot get"
            for message in messages:
                if hasattr(message, "handle") and not isinstance(message, StatusRes):
                    handle = message.handle
                    assert handle.rstrip(b"\0") == handle, f"trailing NUL in {message!r}"
        return received

    def _request(self, peer: Peer, message: Message) -> list[Message]:
        """Send one message; every peer's output is checked; return ``peer``'s."""
        self._drain()
        peer.send(message)
        return self._drain()[peer.conn]

    def _reply(self, peer: Peer, message: Message) -> Message:
        """The one reply to ``message`` (a NOOP to the same peer aside)."""
        replies = [m for m in self._request(peer, message) if m != Noop()]
        assert len(replies) == 1, replies
        return replies[0]

    # --- rules ------------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        self.admin = self.harness.connect()
        self.peers = [self.harness.connect(), self.harness.connect()]

    @rule(i=PEER, join=st.booleans())
    def churn(self, i: int, join: bool) -> None:
        if join or len(self.peers) == 1:
            if len(self.peers) < 6:
                self.peers.append(self.harness.connect())
            return
        peer = self._peer(i)
        self.peers.remove(peer)
        peer.close()
        assert peer.conn not in self.state.dirty

    @rule(
        i=PEER,
        function=FUNCTIONS,
        action=st.sampled_from(["can_do"] * 4 + ["timeout", "no_timeout", "cant_do", "reset"]),
    )
    def abilities(self, i: int, function: bytes, action: str) -> None:
        messages: dict[str, Message] = {
            "can_do": CanDo(function),
            "timeout": CanDoTimeout(function, 1500),
            "no_timeout": CanDoTimeout(function, 0),
            "cant_do": CantDo(function),
            "reset": ResetAbilities(),
        }
        self._request(self._peer(i), messages[action])

    @rule(i=PEER)
    def pre_sleep(self, i: int) -> None:
        peer = self._peer(i)
        replies = self._request(peer, PreSleep())
        assert replies in ([], [Noop()])
        assert (replies == [Noop()]) == self._runnable_for(peer.conn)

    @rule(i=PEER, kind=st.sampled_from([GrabJob, GrabJobUniq, GrabJobAll]))
    def grab(self, i: int, kind: type[GrabJob | GrabJobUniq | GrabJobAll]) -> None:
        peer = self._peer(i)
        self._drain()
        could = self._runnable_for(peer.conn)
        reply = self._reply(peer, kind())
        if isinstance(reply, NoJob):
            assert not could
            assert not self._runnable_for(peer.conn)
        else:
            assert could
            assert isinstance(reply, JobAssign | JobAssignUniq | JobAssignAll)
            job = self.state.get_job(reply.handle)
            assert job is not None
            assert job.state == RUNNING
            assert job.worker is peer.conn
            expected = {GrabJob: JobAssign, GrabJobUniq: JobAssignUniq}.get(kind)
            if expected is None:
                expected = JobAssignAll if job.reducer else JobAssignUniq
            assert type(reply) is expected

    @rule(
        i=PEER,
        function=FUNCTIONS,
        unique=UNIQUES,
        data=DATA,
        priority=st.sampled_from(list(Priority)),
        kind=st.sampled_from(["fg", "fg", "bg", "bg", "reduce", "epoch-now", "epoch-later"]),
    )
    def submit(
        self, i: int, function: bytes, unique: bytes, data: bytes, priority: Priority, kind: str
    ) -> None:
        message: Message
        if kind == "reduce":
            message = SubmitReduceJob(function, unique, b"r", b"", data)
        elif kind.startswith("epoch"):
            later = int(self.harness.now + self.state.wall_offset) + 2
            message = SubmitJobEpoch(function, unique, later if kind == "epoch-later" else 0, data)
        else:
            message = SubmitJob(function, unique, data, priority, kind == "bg")
        reply = self._reply(self._peer(i), message)
        handle = reply.handle  # type: ignore[union-attr]
        if handle not in self.handles:
            self.handles.append(handle)

    @rule(
        i=PEER,
        pick=PICK,
        kind=st.sampled_from(["complete", "fail", "exception", "status", "bogus"]),
    )
    def work_result(self, i: int, pick: int, kind: str) -> None:
        peer = self._peer(i)
        running = sorted(peer.conn.running)
        if kind == "bogus" or not running:
            handle = self.handles[pick % len(self.handles)] if self.handles else b"H:none"
        else:
            handle = running[pick % len(running)]
        messages: dict[str, Message] = {
            "complete": WorkComplete(handle, b"r"),
            "fail": WorkFail(handle),
            "exception": WorkException(handle, b"e"),
            "status": WorkStatus(handle, 1, 2),
            "bogus": WorkComplete(handle, b"r"),
        }
        message = messages[kind]
        held = handle in peer.conn.running
        job = self.state.get_job(handle)
        clients = list(job.clients or ()) if job is not None else []
        self._drain()
        peer.send(message)
        received = self._drain()
        replies = received[peer.conn]
        if not held:
            assert Error(b"JOB_NOT_FOUND", _not_found_text(message)) in replies
            return
        assert all(not isinstance(r, Error) for r in replies)
        if kind != "status":
            assert self.state.get_job(handle) is None
        for client in set(clients):
            forwarded = [m for m in received[client] if getattr(m, "handle", None) == handle]
            assert len(forwarded) == clients.count(client)

    @precondition(lambda self: self.handles)
    @rule(pick=PICK)
    def cancel(self, pick: int) -> None:
        handle = self.handles[pick % len(self.handles)]
        known = self.state.get_job(handle) is not None
        reply = self.admin.admin(b"cancel job " + handle)
        assert reply == (b"OK\r\n" if known else b"ERR UNKNOWN_JOB\r\n")

    @precondition(lambda self: self.handles)
    @rule(i=PEER, pick=PICK)
    def get_status(self, i: int, pick: int) -> None:
        handle = self.handles[pick % len(self.handles)]
        reply = self._reply(self._peer(i), GetStatus(handle))
        job = self.state.get_job(handle)
        assert isinstance(reply, StatusRes)
        assert reply.known == (job is not None)
        assert reply.running == (job is not None and job.state == RUNNING)

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
    def advance(self, seconds: float) -> None:
        deadline = self.state.next_deadline()
        self.harness.advance(seconds)
        next_deadline = self.state.next_deadline()
        if next_deadline is not None:
            assert next_deadline > self.harness.now
        if deadline is not None and deadline <= self.harness.now:
            assert next_deadline != deadline or next_deadline is None

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def outputs_are_valid(self) -> None:
        self._drain()

    @invariant()
    def every_job_is_in_exactly_one_place(self) -> None:
        state = self.state
        jobs = {job.handle: job for job in state.jobs}
        queued: Counter[int] = Counter()
        for function in state.functions:
            for priority, queue in enumerate(function.queues):
                for job in queue or ():
                    if job.state == QUEUED:
                        assert job.priority == priority
                        assert job.function is function
                        queued[id(job)] += 1
        running: Counter[int] = Counter()
        for conn in state.connections:
            assert not conn.closed
            for handle, job in conn.running.items():
                assert job.handle == handle
                assert job.worker is conn
                running[id(job)] += 1
        timers = {id(job) for _, seq, job in state._timers if job.timer == seq}
        for job in jobs.values():
            places = (queued[id(job)], running[id(job)], id(job) in timers and job.state == FUTURE)
            if job.state == QUEUED:
                assert places == (1, 0, False)
            elif job.state == RUNNING:
                assert places[:2] == (0, 1)
            else:
                assert job.state == FUTURE
                assert places == (0, 0, True)
        assert sum(queued.values()) + sum(running.values()) <= len(jobs)
        assert set(queued) | set(running) <= {id(job) for job in jobs.values()}

    @invariant()
    def counters_match_the_jobs(self) -> None:
        state = self.state
        jobs = list(state.jobs)
        per_function: dict[bytes, list[Job]] = {f.name: [] for f in state.functions}
        for job in jobs:
            per_function[job.function.name].append(job)
        for function in state.functions:
            mine = per_function[function.name]
            for priority in range(3):
                count = sum(1 for j in mine if j.state == QUEUED and j.priority == priority)
                assert function.counts[priority] == count
                assert (function in state._ready[priority]) == (count > 0)
            assert function.running == sum(1 for j in mine if j.state == RUNNING)
            assert function.future == sum(1 for j in mine if j.state == FUTURE)
            assert set(function.workers) == {
                c for c in state.connections if function in c.abilities
            }
        assert state.jobs_running == sum(1 for j in jobs if j.state == RUNNING)
        assert state.jobs_queued == sum(1 for j in jobs if j.state in (QUEUED, FUTURE))
        expected = b"".join(
            b"%s\t%d\t%d\t%d\n"
            % (
                function.name,
                len(per_function[function.name]),
                sum(1 for j in per_function[function.name] if j.state == RUNNING),
                sum(1 for c in state.connections if function in c.abilities),
            )
            for function in state.functions
        )
        assert self.admin.admin(b"status") == expected + b".\n"

    @invariant()
    def only_functions_in_use_are_kept(self) -> None:
        state = self.state
        for function in state.functions:
            assert function.total or function.workers or function.max_queue or function.pinned
        for job in state.jobs:
            assert state.get_function(job.function.name) is job.function
        for conn in state.connections:
            for function in conn.ability_list:
                assert state.get_function(function.name) is function

    @invariant()
    def unique_index_matches_live_jobs(self) -> None:
        state = self.state
        live = {id(job) for job in state.jobs}
        indexed = []
        for function in state.functions:
            for key, job in function.uniques.items():
                assert id(job) in live
                assert not job.cancelled
                assert job.function is function
                assert job.unique == key
                indexed.append(job)
            for key, job in function.by_data.items():
                assert id(job) in live
                assert not job.cancelled
                assert job.function is function
                assert job.unique == b"-"
                assert job.data == key
                indexed.append(job)
        expected = [job for job in state.jobs if job.unique and not job.cancelled]
        assert sorted(id(j) for j in indexed) == sorted(id(j) for j in expected)

    @invariant()
    def attachments_are_consistent(self) -> None:
        state = self.state
        for job in state.jobs:
            for client in job.clients or ():
                assert not client.closed
                assert job in client.attached
            if job.state == QUEUED and not job.background:
                assert job.clients, "an abandoned foreground job is still queued"
        for conn in state.connections:
            for job in conn.attached:
                assert state.get_job(job.handle) is job
                assert job.clients is not None
                assert conn in job.clients

    @invariant()
    def no_sleeper_misses_a_queued_job(self) -> None:
        for function in self.state.functions:
            if not any(function.counts):
                continue
            capable = list(function.workers)
            if self.config.get("worker_wakeup", 0) == 0:
                for conn in capable:
                    assert not (conn.sleeping and not conn.noop_sent), (conn, function)
            elif capable:
                assert any(not c.sleeping or c.noop_sent for c in capable), function


def _not_found_text(message: Message) -> bytes:
    if isinstance(message, WorkException):
        return b"An exception was received for a job that does not exist"
    return b"Job given in work result not found"


_SETTINGS = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class DefaultServer(ServerMachine):
    config: ClassVar[dict[str, Any]] = {}


class LimitedServer(ServerMachine):
    config: ClassVar[dict[str, Any]] = {"worker_wakeup": 1, "job_retries": 2}


TestDefaultServer = DefaultServer.TestCase
TestDefaultServer.settings = _SETTINGS
TestLimitedServer = LimitedServer.TestCase
TestLimitedServer.settings = _SETTINGS
