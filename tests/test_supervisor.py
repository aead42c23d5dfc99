"""The failover policy: back-off, rendezvous hashing, and the supervised link."""

from __future__ import annotations

import logging
import random
import sys
from collections.abc import Callable

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from trio_gearman import GearmanError
from trio_gearman._exceptions import ConnectionLost, NoServersAvailable
from trio_gearman._failover import (
    Backoff,
    Heartbeat,
    Link,
    LinkSet,
    LinkState,
    rendezvous_order,
)

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


# --- Backoff -------------------------------------------------------------------------


def test_backoff_grows_exponentially_then_caps() -> None:
    policy = Backoff(initial=0.5, maximum=4.0, multiplier=2.0, jitter=0.0)
    rng = random.Random(1)
    assert [policy.delay(n, rng) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_backoff_survives_a_very_long_outage() -> None:
    assert Backoff(jitter=0.0).delay(10_000, random.Random(1)) == 10.0


@given(failures=st.integers(1, 200), seed=st.integers(0, 2**32), jitter=st.floats(0, 1))
def test_backoff_jitter_stays_within_its_band(failures: int, seed: int, jitter: float) -> None:
    policy = Backoff(initial=0.1, maximum=10.0, jitter=jitter)
    base = Backoff(initial=0.1, maximum=10.0, jitter=0.0).delay(failures, random.Random(0))
    delay = policy.delay(failures, random.Random(seed))
    assert base * (1 - jitter) - 1e-12 <= delay <= base + 1e-12


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": 5.0, "maximum": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        Backoff(**kwargs)


# --- rendezvous hashing ---------------------------------------------------------------

SERVERS = ["10.0.0.1:4730", "10.0.0.2:4730", "10.0.0.3:4730", "10.0.0.4:4730"]
KEYS = [f"job-{i}".encode() for i in range(2000)]


def test_rendezvous_is_stable_and_a_permutation() -> None:
    for key in KEYS[:50]:
        order = rendezvous_order(key, SERVERS)
        assert sorted(order) == sorted(SERVERS)
        assert rendezvous_order(key, list(reversed(SERVERS))) == order


def test_rendezvous_removing_a_server_moves_only_its_keys() -> None:
    before = {key: rendezvous_order(key, SERVERS)[0] for key in KEYS}
    removed = SERVERS[1]
    remaining = [s for s in SERVERS if s != removed]
    after = {key: rendezvous_order(key, remaining)[0] for key in KEYS}
    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == removed}
    # ...and each moved key goes to its second choice, so falling through to the
    # next live server and removing the dead one agree.
    for key in moved:
        assert after[key] == rendezvous_order(key, SERVERS)[1]


def test_rendezvous_spreads_keys() -> None:
    counts = dict.fromkeys(SERVERS, 0)
    for key in KEYS:
        counts[rendezvous_order(key, SERVERS)[0]] += 1
    assert all(350 < count < 650 for count in counts.values()), counts


# --- Link -------------------------------------------------------------------------------


class FakeServer:
    """Refuses the first ``refusals`` connections, then serves until told to break."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.attempts: list[float] = []
        self.breaks: list[trio.Event] = []

    async def connect(self, address: str) -> int:
        self.attempts.append(trio.current_time())
        if len(self.attempts) <= self.refusals:
            raise ConnectionRefusedError(f"{address}: refused #{len(self.attempts)}")
        return len(self.attempts)

    async def serve(self, connection: int) -> None:
        broken = trio.Event()
        self.breaks.append(broken)
        await broken.wait()
        raise GearmanError(f"connection {connection} lost")


async def _wait_for(link: Link[int], predicate: Callable[[], bool]) -> None:
    with trio.fail_after(3600):
        while not predicate():
            await link.wait_changed()


async def test_link_backs_off_between_refusals(autojump_clock: trio.testing.MockClock) -> None:
    server = FakeServer(refusals=3)
    link = Link("s1:4730", server.connect, server.serve, backoff=Backoff(1.0, 8.0, jitter=0.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await _wait_for(link, lambda: link.state is LinkState.UP)
        assert server.attempts == [0.0, 1.0, 3.0, 7.0]
        assert link.failures == 3
        assert isinstance(link.last_error, ConnectionRefusedError)
        assert link.connection == 4
        nursery.cancel_scope.cancel()
    assert link.state is LinkState.STOPPED


async def test_link_reconnects_after_loss_and_resets_when_healthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = FakeServer(refusals=0)
    policy = Backoff(2.0, 8.0, jitter=0.0, healthy_after=30.0)
    link = Link("s1:4730", server.connect, server.serve, backoff=policy)
    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        await _wait_for(link, lambda: link.state is LinkState.UP)
        # A quick loss counts as a failure: wait 2 s, then reconnect.
        server.breaks[-1].set()
        await _wait_for(link, lambda: link.state is LinkState.BACKING_OFF)
        assert link.failures == 1
        assert isinstance(link.last_error, GearmanError)
        await _wait_for(link, lambda: link.state is LinkState.UP)
        assert server.attempts == [0.0, 2.0]
        # Another quick loss: the delay doubles.
        server.breaks[-1].set()
        await _wait_for(link, lambda: link.state is LinkState.UP and len(server.attempts) == 3)
        assert server.attempts[2] - server.attempts[1] == 4.0
        # Up for longer than healthy_after: the next loss starts again from 2 s.
        await trio.sleep(31)
        server.breaks[-1].set()
        await _wait_for(link, lambda: link.state is LinkState.UP and len(server.attempts) == 4)
        assert server.attempts[3] - server.attempts[2] == 31.0 + 2.0
        assert link.health().failures == 1
        nursery.cancel_scope.cancel()


async def test_transitions_are_logged_once_per_outage(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "trio_gearman.supervisor")
    server = FakeServer(refusals=0)
    policy = Backoff(1.0, 8.0, jitter=0.0)
    link = Link("s1:4730", server.connect, server.serve, backoff=policy, role="client")

    def up_after(attempts: int) -> Callable[[], bool]:
        return lambda: link.state is LinkState.UP and len(server.attempts) == attempts

    async with trio.open_nursery() as nursery:
        await nursery.start(link.run)
        for attempts in (2, 3, 4):  # a link that flaps: up, lost at once, up again...
            await _wait_for(link, lambda: link.state is LinkState.UP)
            server.breaks[-1].set()
            await _wait_for(link, up_after(attempts))
        nursery.cancel_scope.cancel()
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [m for m in logged if m[0] != "DEBUG"] == [
        ("WARNING", "client link to s1:4730 down: connection 1 lost"),
        ("INFO", "client link to s1:4730 up again after 1 failed attempts"),
    ]
    assert [m for m in logged if m[0] == "DEBUG"] == [
        ("DEBUG", "client link to s1:4730: attempt 2 failed: connection 2 lost"),
        ("DEBUG", "client link to s1:4730: attempt 3 failed: connection 3 lost"),
    ]


async def test_link_lets_bugs_propagate(autojump_clock: trio.testing.MockClock) -> None:
    async def connect(address: str) -> int:
        raise KeyError("a bug, not a connection failure")

    async def serve(connection: int) -> None:
        raise AssertionError("unreachable")

    link = Link("s1:4730", connect, serve)
    with pytest.RaisesGroup(KeyError):
        async with anyio.create_task_group() as tg:
            await tg.start(link.run)
    assert link.state is LinkState.STOPPED


# --- LinkSet ----------------------------------------------------------------------------


class FakeConn:
    """A connection as LinkSet sees it: usable until broken, verified once heard from."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.broken = False
        self.heard = 0
        self.done = trio.Event()


class FakeCluster:
    """Servers that are up or down on command; each link serves until its server dies."""

    def __init__(self, addresses: list[str]) -> None:
        self.up = dict.fromkeys(addresses, True)
        self.conns: dict[str, FakeConn] = {}

    async def connect(self, address: str) -> FakeConn:
        if not self.up[address]:
            raise ConnectionRefusedError(f"{address}: refused")
        conn = self.conns[address] = FakeConn(address)
        conn.heard = 1
        return conn

    async def serve(self, conn: FakeConn) -> None:
        await conn.done.wait()
        raise GearmanError(f"{conn.address}: lost")

    def kill(self, address: str) -> None:
        self.up[address] = False
        conn = self.conns[address]
        conn.broken = True
        conn.done.set()

    def link_set(self, backoff: Backoff | None = None) -> LinkSet[FakeConn]:
        return LinkSet(
            [
                Link(address, self.connect, self.serve, backoff=backoff or Backoff(1.0, 1.0))
                for address in self.up
            ],
            usable=lambda conn: not conn.broken,
            verified=lambda conn: conn.heard > 0,
        )


async def test_link_set_picks_in_order_round_robin_and_prefers_verified(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster = FakeCluster(["a", "b", "c"])
    links = cluster.link_set()
    async with trio.open_nursery() as nursery:
        for link in links.links:
            await nursery.start(link.run)
        await links.wait_settled()
        assert [conn.address for conn in links.live()] == ["a", "b", "c"]
        assert links.pick(["c", "a"]).address == "c"  # type: ignore[union-attr]
        turns = [links.pick(["a", "b", "c"], turn).address for turn in range(6)]  # type: ignore[union-attr]
        assert turns == ["a", "b", "c", "a", "b", "c"]
        # a server that has not answered yet is used only when no other one is live
        cluster.conns["a"].heard = 0
        assert links.pick(["a", "b"]).address == "b"  # type: ignore[union-attr]
        assert links.pick(["a"]).address == "a"  # type: ignore[union-attr]
        # a dead server drops out of the rotation at once
        cluster.kill("b")
        turns = [links.pick(["a", "b", "c"], turn).address for turn in range(4)]  # type: ignore[union-attr]
        assert turns == ["c", "c", "c", "c"]  # "a" is unverified: "c" is preferred
        cluster.conns["a"].heard = 1
        turns = [links.pick(["a", "b", "c"], turn).address for turn in range(4)]  # type: ignore[union-attr]
        assert turns == ["a", "c", "a", "c"]
        assert links.pick(["b"]) is None
        nursery.cancel_scope.cancel()


async def test_link_set_waits_for_a_server_then_gives_every_servers_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster = FakeCluster(["a", "b"])
    links = cluster.link_set(Backoff(1.0, 1.0, jitter=0.0))
    async with trio.open_nursery() as nursery:
        for link in links.links:
            await nursery.start(link.run)
        await links.wait_settled()
        cluster.kill("a")
        cluster.kill("b")
        start = trio.current_time()
        with pytest.raises(NoServersAvailable) as info:
            await links.acquire(
                ["a", "b"], within=5.0, errors={"b": ConnectionLost("x", server="b")}
            )
        assert trio.current_time() - start == pytest.approx(5.0)
        group = info.value.__cause__
        assert isinstance(group, ExceptionGroup)
        assert [type(e) for e in group.exceptions] == [ConnectionRefusedError, ConnectionLost]
        # a server that comes back within the wait is taken
        cluster.up["b"] = True
        start = trio.current_time()
        conn = await links.acquire(["a", "b"], within=5.0)
        assert conn.address == "b"
        assert trio.current_time() - start <= 1.0  # the next attempt, after the back-off
        nursery.cancel_scope.cancel()


def test_link_set_refuses_a_server_listed_twice() -> None:
    async def never(address: str) -> int:
        raise AssertionError

    async def serve(conn: int) -> None:
        raise AssertionError

    with pytest.raises(ValueError, match="twice"):
        LinkSet(
            [Link("a", never, serve), Link("a", never, serve)],
            usable=lambda conn: True,
            verified=lambda conn: True,
        )


# --- Heartbeat ----------------------------------------------------------------------------


class Silent:
    """A connection whose server answers probes only while ``answers`` is set."""

    def __init__(self, *, answers: bool, heard: int = 0) -> None:
        self.answers = answers
        self.heard = heard
        self.waiting = True
        self.probes: list[float] = []

    def probe(self) -> None:
        self.probes.append(trio.current_time())
        if self.answers:
            self.heard += 1


async def test_a_silent_new_connection_is_given_up_after_the_handshake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = Silent(answers=False)
    reason = await Heartbeat(first_check=4.0, interval=10.0, timeout=5.0).watch(conn)
    assert reason == "no answer within 9 s of connecting"
    assert conn.probes == [4.0]
    assert trio.current_time() == 9.0


async def test_a_server_that_stops_answering_is_probed_then_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = Silent(answers=True, heard=1)
    heartbeat = Heartbeat(first_check=4.0, interval=10.0, timeout=5.0)
    async with trio.open_nursery() as nursery:
        reasons: list[tuple[str, float]] = []

        async def watch() -> None:
            reasons.append((await heartbeat.watch(conn), trio.current_time()))

        nursery.start_soon(watch)
        await trio.sleep(30)
        # a live server answers every probe: never given up
        assert conn.probes == [4.0, 19.0]
        assert reasons == []
        conn.answers = False
        await trio.sleep(30)
    assert reasons == [("no answer to ECHO within 5 s", 39.0)]
    assert conn.probes == [4.0, 19.0, 34.0]


async def test_an_idle_or_chatty_connection_is_never_probed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    idle = Silent(answers=False, heard=1)
    idle.waiting = False
    chatty = Silent(answers=False, heard=1)
    heartbeat = Heartbeat(first_check=1.0, interval=1.0, timeout=1.0)

    async def talk() -> None:
        while True:
            chatty.heard += 1
            await trio.sleep(0.5)

    with trio.move_on_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat.watch, idle)
            nursery.start_soon(heartbeat.watch, chatty)
            nursery.start_soon(talk)
    assert idle.probes == chatty.probes == []


def test_heartbeat_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        Heartbeat(interval=0)
