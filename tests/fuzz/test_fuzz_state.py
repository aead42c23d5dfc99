"""The server state fed hostile byte streams on several connections at once.

Each example is a few sessions (what each peer sends: a client's, a worker's or
anyone's packets, some broken, with admin lines and garbage, from ``strategies.py``;
where its bytes are split into reads; when it hangs up) and a schedule of steps: the
next read of one session (so packets are split and interleaved across connections),
time advancing, and on a durable server the store taking its transaction and
committing or failing it. Then every session sends the rest, taking turns, and all
hang up. Each read goes through a decoder into the state exactly as the server's
I/O layer does it (``trio_gearman/_server/connection.py``): events until the
connection is closing, a ``ProtocolError`` handed to ``state.protocol_error``, then
the connection closed. Nothing else may escape; after every step the state's
invariants hold (``tests/proto/server_invariants.py``) and every binary connection's
replies decode as well-formed packets; at the end only background jobs are left.

``TRIO_GEARMAN_FUZZ_EXAMPLES=100000`` runs a long fuzz (docs/design.rst, "Fuzzing").
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from hypothesis import HealthCheck, event, given, settings, strategies as st

from trio_gearman._exceptions import ProtocolError
from trio_gearman._proto import DEFAULT_MAX_PACKET_SIZE, Decoder, Magic
from trio_gearman._proto.server.acl import Acl, AclRule
from trio_gearman._proto.server.model import StoreWrite

from ..proto.server_invariants import check_state
from ..proto.test_server_state_harness import Harness, Peer
from .strategies import PREFIX, WALL, Piece, fuzz_examples, session_pieces, weighted

CONFIGS: list[dict[str, Any]] = [
    {},
    {"durable": True},
    {"durable": True, "job_retries": 2, "metrics": True},
    {"worker_wakeup": 1, "job_retries": 1, "exceptions": True},
    {"max_unique": 4, "metrics": True},
    {
        "durable": True,
        "acl": Acl([AclRule(address="127.0.0.1", register=("a",), submit=("a", "b"))]),
    },
]


# --- the steps --------------------------------------------------------------------------------


@attrs.frozen
class Session:
    """One peer: the bytes it sends, split into reads, and when it hangs up.

    Attributes:
        pieces: what it sends, in order.
        cuts: where its bytes are split into reads (taken modulo their length).
        leaves_after: it hangs up after this many reads (the rest is never sent);
            ``None``: after its last read it stays until the end.
    """

    pieces: list[Piece]
    cuts: list[int]
    leaves_after: int | None


@attrs.frozen
class Advance:
    """Time passes; timers due fire."""

    seconds: float


@attrs.frozen
class TakeWrite:
    """The store takes its next transaction (when none is being committed)."""


@attrs.frozen
class StoreDone:
    """The store's transaction is committed, or fails."""

    ok: bool


Step = int | Advance | TakeWrite | StoreDone
"""A number is a session, whose next read arrives (it connects with its first)."""

SESSIONS = st.builds(
    Session,
    session_pieces(),
    st.lists(st.integers(0, 10_000), max_size=8),
    st.one_of(st.none(), st.none(), st.integers(0, 8)),
)
STEPS = weighted(
    (12, st.integers(0, 4)),
    (1, st.builds(Advance, st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0, 3600.0]))),
    (1, st.just(TakeWrite())),
    (1, st.builds(StoreDone, st.booleans())),
)


# --- the server, as its I/O layer drives it ---------------------------------------------------


class Connection:
    """One fuzzed connection: its reads to come and the server's decoder of it."""

    def __init__(self, peer: Peer, session: Session, max_packet_size: int) -> None:
        self.peer = peer
        data = b"".join(session.pieces)
        points = sorted({cut % (len(data) + 1) for cut in session.cuts})
        bounds = [0, *points, len(data)]
        self.reads = [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]
        self.read = 0
        self.leaves_after = session.leaves_after
        self.decoder = Decoder(expect=Magic.REQ, allow_text=True, max_packet_size=max_packet_size)
        self.replies = Decoder(expect=Magic.RES)


class FuzzedServer:
    """A :class:`ServerState` with connections, a clock and a store, driven by steps."""

    def __init__(self, config: dict[str, Any], max_packet_size: int) -> None:
        self.config = config
        self.max_packet_size = max_packet_size
        self.harness = Harness(job_handle_prefix=PREFIX, **config)
        self.state = self.harness.state
        self.state.wall_offset = WALL - self.harness.now
        self.admin = self.harness.connect()
        self.connections: dict[int, Connection] = {}
        self.write: StoreWrite | None = None

    def step(self, step: Step, sessions: list[Session]) -> None:
        """Take one step (a step that does not apply now does nothing)."""
        if isinstance(step, Advance):
            self.harness.advance(step.seconds)
            deadline = self.state.next_deadline()
            assert deadline is None or deadline > self.harness.now
        elif isinstance(step, TakeWrite):
            if self.write is None:
                work = self.state.store_work
                self.write = self.state.take_store_write()
                assert (self.write is not None) == work
                assert self.config.get("durable") or self.write is None
        elif isinstance(step, StoreDone):
            write, self.write = self.write, None
            if write is None:
                pass
            elif step.ok:
                self.state.store_written(write, self.harness.now)
            else:
                self.state.store_failed(write, b"disk full", self.harness.now)
        elif step < len(sessions):
            connection = self.connections.get(step)
            if connection is None:
                connection = Connection(
                    self.harness.connect(), sessions[step], self.max_packet_size
                )
                self.connections[step] = connection
            if connection.peer.conn.closed:
                return
            if connection.read == connection.leaves_after:
                connection.peer.close()
            elif connection.read < len(connection.reads):
                connection.read += 1
                self._deliver(connection, connection.reads[connection.read - 1])

    def finish(self, sessions: list[Session]) -> None:
        """The sessions send the rest of their reads, taking turns, and the store
        commits what is left."""
        while True:
            waiting = [
                index
                for index in range(len(sessions))
                if (connection := self.connections.get(index)) is None
                or not (connection.peer.conn.closed or connection.read >= len(connection.reads))
            ]
            if not waiting:
                break
            for index in waiting:
                self.step(index, sessions)
                self.check()
        for connection in self.connections.values():
            connection.peer.close()
        for step in (StoreDone(True), TakeWrite(), StoreDone(True), Advance(3600.0)):
            self.step(step, sessions)
            self.check()
        # Everyone has left: no job runs and no client waits, the background jobs wait.
        state = self.state
        assert list(state.connections) == [self.admin.conn]
        assert state.jobs_running == 0
        assert all(job.background and not job.clients for job in state.jobs)
        assert all(not function.workers for function in state.functions)

    def _deliver(self, connection: Connection, chunk: bytes) -> None:
        """What ``ServerConnection._handle`` does with one read."""
        conn = connection.peer.conn
        state = self.state
        now = self.harness.now
        decoder = connection.decoder
        decoder.feed(chunk)
        try:
            for item in decoder:
                state.receive(conn, item, now)
                if conn.closing:
                    break
        except ProtocolError as exc:
            event(f"protocol error: {type(exc).__name__}")
            state.protocol_error(conn, exc, now)
            conn.closing = True
        if conn.closing:
            # The server stops reading, sends the last replies and closes.
            self._drain(connection)
            connection.peer.close()

    def _drain(self, connection: Connection) -> None:
        """Take a connection's replies; those of a binary-only peer must be packets."""
        conn = connection.peer.conn
        data = connection.peer.raw()
        if conn.admin:
            return  # admin replies are text, and can hold anything a peer named
        connection.replies.feed(data)
        list(connection.replies)  # raises on a malformed reply

    def check(self) -> None:
        """The replies so far are well formed and the state is consistent."""
        for connection in self.connections.values():
            if not connection.peer.conn.closed:
                self._drain(connection)
        self.admin.raw()
        self.state.take_denials()  # the I/O layer logs them
        self.state.dirty.clear()  # closed connections' leftovers, as the hub drops them
        check_state(self.state, self.admin, self.config.get("worker_wakeup", 0))


@settings(
    max_examples=fuzz_examples(100),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    config=st.sampled_from(CONFIGS),
    max_packet_size=st.sampled_from([DEFAULT_MAX_PACKET_SIZE, 256]),
    sessions=st.lists(SESSIONS, min_size=2, max_size=5),
    steps=st.lists(STEPS, max_size=60),
)
def test_hostile_streams_on_many_connections_keep_the_state_consistent(
    config: dict[str, Any], max_packet_size: int, sessions: list[Session], steps: list[Step]
) -> None:
    server = FuzzedServer(config, max_packet_size)
    server.check()
    for step in steps:
        server.step(step, sessions)
        server.check()
    server.finish(sessions)
    issued = server.state.handles_issued
    event(f"jobs submitted: {'0' if not issued else '1-9' if issued < 10 else '10+'}")
