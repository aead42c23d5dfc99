"""The failover policy: back-off, rendezvous hashing, and the supervised link."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from trio_gearman import GearmanError
from trio_gearman._supervisor import Backoff, Link, LinkState, rendezvous_order


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
