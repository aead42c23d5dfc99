"""Failover between several embedded job servers: kill one, watch the others carry on.

Every server here is our own GearmanServer in the test's Trio run, on a loopback
port. "Killing" one cancels the scope it runs in (its connections drop at once);
"restarting" it starts a new server on the same port, with a new handle prefix
so that its handles never collide with the old ones. Time is Trio's MockClock
(autojump): back-off, heartbeats and waits cost no real time.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import anyio.abc
import pytest
import trio
import trio.testing

from trio_gearman._client.client import Client
from trio_gearman._client.job import JobHandle
from trio_gearman._exceptions import (
    ConnectFailed,
    ConnectionLost,
    GearmanError,
    NoServersAvailable,
    ServerLost,
)
from trio_gearman._failover import Backoff, LinkState, ServerHealth, rendezvous_order
from trio_gearman._proto import WorkStatus
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer
from trio_gearman._worker.job import Job
from trio_gearman._worker.worker import Worker
from trio_gearman.testing import open_test_server

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]

BACKOFF = Backoff(initial=0.1, maximum=1.0)


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class Embedded:
    """An embedded job server that a test can kill and restart on the same port."""

    def __init__(self, nursery: trio.Nursery, name: str) -> None:
        self._nursery = nursery
        self.name = name
        self.port = 0
        self.generation = 0
        self.server: GearmanServer | None = None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def prefix(self) -> bytes:
        """The handle prefix of the current generation."""
        return f"H:{self.name}-{self.generation}".encode()

    async def start(self) -> None:
        self.generation += 1
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        config = ServerConfig(job_handle_prefix=self.prefix)
        self.server = await self._nursery.start(self._run, config)
        self.port = self.server.port

    async def _run(
        self, config: ServerConfig, *, task_status: anyio.abc.TaskStatus[GearmanServer]
    ) -> None:
        try:
            with self._scope:
                server = GearmanServer(config, [("127.0.0.1", self.port)])
                await server.run(task_status=task_status)
        finally:
            self._stopped.set()

    async def kill(self) -> None:
        """Stop the server at once: its listener closes, its connections drop."""
        self._scope.cancel()
        await self._stopped.wait()


@asynccontextmanager
async def cluster(count: int = 3) -> AsyncIterator[list[Embedded]]:
    async with trio.open_nursery() as nursery:
        servers = [Embedded(nursery, f"s{n}") for n in range(count)]
        for server in servers:
            await server.start()
        yield servers
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        worker.stop(0)


async def wait_until(
    links: Client[bytes] | Worker, predicate: Callable[[list[ServerHealth]], bool]
) -> None:
    """Wait (on link transitions, never polling) until the health satisfies ``predicate``."""
    while not predicate(links.servers()):
        await links.wait_servers_changed()


class Ledger:
    """What the workers did: each job started, by handle; an event per start."""

    def __init__(self) -> None:
        self.started: list[tuple[bytes, bytes]] = []  # (handle, data)
        self._changed = trio.Event()

    def record(self, job: Job) -> None:
        self.started.append((job.handle, job.data))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    def by_handle(self) -> Counter[bytes]:
        return Counter(handle for handle, _ in self.started)


# --- the big one: 1,000 background and 1,000 foreground jobs, one server killed ---------


async def test_killing_one_of_three_servers_under_load(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = Ledger()
    kill_now = trio.Event()

    async def work(job: Job) -> bytes:
        ledger.record(job)
        if len(ledger.started) == 300:
            kill_now.set()
        await trio.sleep(0.01)
        return job.data[::-1]

    async with cluster() as servers:
        addresses = [server.address for server in servers]
        victim = servers[1]
        workers = [
            Worker(addresses, client_id=f"w{n}", concurrency=50, backoff=BACKOFF) for n in range(2)
        ]
        for worker in workers:
            worker.register("work", work)
        async with (
            running(workers[0]),
            running(workers[1]),
            Client(addresses, wait_for_server=5.0, backoff=BACKOFF) as client,
        ):
            background: dict[int, JobHandle | GearmanError] = {}
            foreground: dict[int, bytes | GearmanError] = {}
            took: list[float] = []

            async def submit_background(n: int) -> None:
                start = trio.current_time()
                try:
                    background[n] = await client.submit_background("work", b"bg-%d" % n)
                except GearmanError as exc:
                    background[n] = exc
                took.append(trio.current_time() - start)

            async def submit(n: int) -> None:
                start = trio.current_time()
                try:
                    # every other call resubmits a job whose server died
                    foreground[n] = await client.submit(
                        "work", b"fg-%d" % n, retry_on_server_loss=n % 2 == 0
                    )
                except GearmanError as exc:
                    foreground[n] = exc
                took.append(trio.current_time() - start)

            async def kill_when_busy() -> None:
                await kill_now.wait()
                await victim.kill()

            with trio.fail_after(120):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(kill_when_busy)
                    for n in range(1000):
                        nursery.start_soon(submit_background, n)
                        nursery.start_soon(submit, n)
            assert victim.generation == 1
            assert kill_now.is_set()

            # every call returned or raised a typed error, within a bounded time
            assert len(background) == len(foreground) == 1000
            assert max(took) <= 30.0
            # foreground: with retry every job has its result; without, a job whose
            # server died after accepting it raised ServerLost
            for n, outcome in foreground.items():
                if n % 2 == 0:
                    assert outcome == (b"fg-%d" % n)[::-1], n
                elif isinstance(outcome, GearmanError):
                    assert isinstance(outcome, ServerLost), (n, outcome)
                    assert outcome.server == victim.address
                else:
                    assert outcome == (b"fg-%d" % n)[::-1], n
            lost = [n for n, outcome in foreground.items() if isinstance(outcome, ServerLost)]
            assert lost, "the kill should have caught foreground jobs in flight"
            # background: the transparent retry means every submission was acknowledged
            handles = {n: h for n, h in background.items() if isinstance(h, JobHandle)}
            assert len(handles) == 1000, [
                e for e in background.values() if not isinstance(e, JobHandle)
            ]
            survivors = {n: h for n, h in handles.items() if h.server != victim.address}
            on_victim = {n: h for n, h in handles.items() if h.server == victim.address}
            assert survivors
            assert on_victim
            # ...those on the survivors each run exactly once
            with trio.fail_after(60):
                await ledger.wait_for(
                    lambda: set(ledger.by_handle()) >= {h.handle for h in survivors.values()}
                )
            counts = ledger.by_handle()
            assert all(counts[h.handle] == 1 for h in survivors.values())
            # ...those on the dead server ran at most once; the API says so for the rest
            assert all(counts[h.handle] <= 1 for h in on_victim.values())
            never_ran = [h for h in on_victim.values() if counts[h.handle] == 0]
            assert never_ran
            with pytest.raises(NoServersAvailable):
                await client.get_status(never_ran[0])

            # the workers go on with the survivors
            health = {h.address: h for h in client.servers()}
            assert health[victim.address].state is not LinkState.UP
            assert isinstance(health[victim.address].last_error, (ConnectionLost, ConnectFailed))
            assert health[victim.address].failures >= 1
            assert [h.state for h in workers[0].servers()].count(LinkState.UP) == 2
            results = await client.map("work", [b"after-%d" % n for n in range(100)])
            assert results == [(b"after-%d" % n)[::-1] for n in range(100)]

            # the server comes back (without its queue): the workers register there
            # again within the back-off bound, and grab from it
            restarted_at = trio.current_time()
            await victim.start()
            for worker in workers:
                await wait_until(worker, lambda health: health[1].state is LinkState.UP)
                assert worker.servers()[1].since - restarted_at <= BACKOFF.maximum
            await wait_until(client, lambda health: health[1].state is LinkState.UP)
            async with Client(victim.address) as direct:
                handle = await direct.submit_background("work", b"on-the-restarted-one")
                assert handle.handle.startswith(victim.prefix)
                assert await direct.submit("work", b"abc") == b"cba"
                # the jobs it had acknowledged before it died are gone: reported unknown
                status = await client.get_status(never_ran[0])
                assert not status.known


async def test_background_jobs_of_a_server_back_with_its_queue_run_exactly_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ledger = Ledger()

    async def work(job: Job) -> bytes:
        ledger.record(job)
        return b""

    async with AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(open_test_server(job_handle_prefix=f"H:{name}"))
            for name in "abc"
        ]
        addresses = [server.address for server in servers]
        victim = servers[1]
        victim.hold("work")  # its jobs stay queued until it has gone down and come back
        worker = Worker(addresses, concurrency=4, backoff=BACKOFF)
        worker.register("work", work)
        async with running(worker), Client(addresses, backoff=BACKOFF) as client:
            handles = [await client.submit_background("work", b"%d" % n) for n in range(60)]
            kept = [h.handle for h in handles if h.server == victim.address]
            assert len(kept) == 20
            # down and up again with its queue, as a server with a persistent queue is
            await victim.restart(keep_jobs=True)
            await wait_until(worker, lambda health: health[1].up and health[1].failures == 1)
            victim.release()
            with trio.fail_after(60):
                await ledger.wait_for(lambda: len(ledger.started) == 60)
                await victim.wait_idle()
            assert ledger.by_handle() == Counter({h.handle: 1 for h in handles})


# --- where jobs go ---------------------------------------------------------------------


async def handshaken(client: Client[bytes]) -> None:
    """Let every connection that is up finish its handshake (in-process loopback)."""
    await trio.testing.wait_all_tasks_blocked()
    assert all(h.answered for h in client.servers() if h.state is LinkState.UP)


async def test_keyed_jobs_go_to_their_rendezvous_server_and_fall_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as servers:
        addresses = [server.address for server in servers]
        victim = servers[0]
        keys = [f"key-{n}" for n in range(40)]

        def preferred(key: str, live: list[str]) -> str:
            return next(a for a in rendezvous_order(key.encode(), addresses) if a in live)

        async with Client(addresses, backoff=BACKOFF) as client:
            await handshaken(client)
            placed = {key: await client.submit_background("f", b"", unique=key) for key in keys}
            assert {key: h.server for key, h in placed.items()} == {
                key: preferred(key, addresses) for key in keys
            }
            assert victim.address in {h.server for h in placed.values()}
            # the same key again coalesces on the same server: the same handle
            again = await client.submit_background("f", b"", unique=keys[0])
            assert again == placed[keys[0]]

            await victim.kill()
            await wait_until(client, lambda health: health[0].state is not LinkState.UP)
            live = addresses[1:]
            moved = {key: await client.submit_background("f", b"", unique=key) for key in keys}
            for key in keys:
                assert moved[key].server == preferred(key, live)
                if placed[key].server != victim.address:  # only the dead server's keys move
                    assert moved[key] == placed[key]

            await victim.start()
            await wait_until(client, lambda health: health[0].state is LinkState.UP)
            await handshaken(client)
            back = {key: await client.submit_background("f", b"", unique=key) for key in keys}
            assert {key: h.server for key, h in back.items()} == {
                key: preferred(key, addresses) for key in keys
            }


async def test_jobs_without_a_key_go_round_robin_over_the_live_servers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as servers:
        addresses = [server.address for server in servers]
        async with Client(addresses, backoff=BACKOFF) as client:
            await handshaken(client)
            handles = [await client.submit_background("f", b"") for _ in range(9)]
            assert Counter(h.server for h in handles) == dict.fromkeys(addresses, 3)
            await servers[2].kill()
            await wait_until(client, lambda health: health[2].state is not LinkState.UP)
            handles = [await client.submit_background("f", b"") for _ in range(8)]
            assert Counter(h.server for h in handles) == dict.fromkeys(addresses[:2], 4)
            assert client.server == addresses[0]


async def test_with_no_live_server_a_call_waits_then_raises_with_every_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with cluster() as servers:
        addresses = [server.address for server in servers]
        async with Client(addresses, backoff=BACKOFF, wait_for_server=3.0) as client:
            for server in servers:
                await server.kill()
            await wait_until(client, lambda health: LinkState.UP not in {h.state for h in health})
            assert client.server is None
            start = trio.current_time()
            with pytest.raises(NoServersAvailable) as info:
                await client.submit("f", b"")
            assert trio.current_time() - start == pytest.approx(3.0)
            assert info.value.servers == tuple(addresses)
            group = info.value.__cause__
            assert isinstance(group, ExceptionGroup)
            assert [e.server for e in group.exceptions] == addresses
            assert all(isinstance(e, (ConnectionLost, ConnectFailed)) for e in group.exceptions)

            # a server that comes up while a call waits takes it
            async with trio.open_nursery() as nursery:
                handles: list[JobHandle] = []

                async def submit() -> None:
                    handles.append(await client.submit_background("f", b""))

                nursery.start_soon(submit)
                await trio.testing.wait_all_tasks_blocked()
                assert handles == []
                await servers[1].start()
            assert [h.server for h in handles] == [servers[1].address]


# --- foreground jobs whose server dies ----------------------------------------------------


class Hang:
    """A worker function that runs until released, recording each start."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.changed = trio.Event()
        self.release = trio.Event()

    async def __call__(self, job: Job) -> bytes:
        self.started.append(job.handle)
        self.changed.set()
        self.changed = trio.Event()
        await job.send_status(1, 2)
        await self.release.wait()
        return b"done"

    async def wait_started(self, count: int) -> None:
        while len(self.started) < count:
            await self.changed.wait()


def key_preferring(address: str, addresses: list[str]) -> str:
    """A unique key whose first rendezvous choice is ``address``."""
    return next(
        key
        for key in (f"k{n}" for n in range(1000))
        if rendezvous_order(key.encode(), addresses)[0] == address
    )


@pytest.mark.parametrize("retry", [False, True])
async def test_a_foreground_job_whose_server_dies_fails_promptly_or_is_resubmitted(
    autojump_clock: trio.testing.MockClock, retry: bool
) -> None:
    hang = Hang()
    async with cluster() as servers:
        addresses = [server.address for server in servers]
        victim = servers[0]
        key = key_preferring(victim.address, addresses)
        worker = Worker(addresses, concurrency=4, backoff=BACKOFF)
        worker.register("hang", hang)
        async with (
            running(worker),
            Client(addresses, backoff=BACKOFF, retry_on_server_loss=retry) as client,
            trio.open_nursery() as nursery,
        ):
            outcome: list[bytes | GearmanError] = []

            async def submit() -> None:
                try:
                    outcome.append(await client.submit("hang", b"", unique=key))
                except GearmanError as exc:
                    outcome.append(exc)

            nursery.start_soon(submit)
            await hang.wait_started(1)
            assert hang.started[0].startswith(victim.prefix)
            killed_at = trio.current_time()
            await victim.kill()
            if not retry:
                await trio.testing.wait_all_tasks_blocked()
                (error,) = outcome
                assert isinstance(error, ServerLost)
                assert error.server == victim.address
                assert error.handle == hang.started[0].decode()
                assert trio.current_time() == killed_at  # at once, not after a time-out
                hang.release.set()
            else:
                await hang.wait_started(2)  # submitted again, to the key's next server
                second = rendezvous_order(key.encode(), addresses)[1]
                assert not hang.started[1].startswith(victim.prefix)
                assert outcome == []
                hang.release.set()
                await trio.testing.wait_all_tasks_blocked()
                assert outcome == [b"done"]
                assert any(
                    s.prefix == hang.started[1].rsplit(b":", 1)[0] and s.address == second
                    for s in servers
                )


async def test_a_followed_job_starts_over_on_another_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hang = Hang()
    async with cluster() as servers:
        addresses = [server.address for server in servers]
        victim = servers[2]
        key = key_preferring(victim.address, addresses)
        worker = Worker(addresses, concurrency=4, backoff=BACKOFF)
        worker.register("hang", hang)
        async with running(worker), Client(addresses, backoff=BACKOFF) as client:
            async with client.submit_job("hang", b"", unique=key, retry_on_server_loss=True) as job:
                assert job.handle.server == victim.address
                assert await job.__anext__() == WorkStatus(job.handle.handle, 1, 2)
                await victim.kill()
                # the loss is noticed; the job is submitted again and followed there
                update = await job.__anext__()
                assert job.handle.server != victim.address
                assert update == WorkStatus(job.handle.handle, 1, 2)
                hang.release.set()
                assert await job.wait() == b"done"
            # without retry the loss ends the iteration
            hang.release = trio.Event()
            await victim.start()
            await wait_until(client, lambda health: health[2].state is LinkState.UP)
            await handshaken(client)
            async with client.submit_job("hang", b"", unique=key) as job:
                assert job.handle.server == victim.address
                assert await job.__anext__() == WorkStatus(job.handle.handle, 1, 2)
                await victim.kill()
                with pytest.raises(ServerLost):
                    await job.__anext__()
            hang.release.set()


# --- workers --------------------------------------------------------------------------------


async def test_the_concurrency_limits_hold_across_all_servers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    running_now: Counter[str] = Counter()
    peak: Counter[str] = Counter()

    async def work(job: Job) -> bytes:
        running_now[job.function] += 1
        peak[job.function] = max(peak[job.function], running_now[job.function])
        peak["all"] = max(peak["all"], running_now.total())
        await trio.sleep(0.01)
        running_now[job.function] -= 1
        return b""

    async with cluster() as servers:
        addresses = [server.address for server in servers]
        worker = Worker(addresses, concurrency=3, backoff=BACKOFF)
        worker.register("free", work)
        worker.register("limited", work, concurrency=1)
        async with running(worker):
            for server in servers:
                async with Client(server.address) as client:
                    for _n in range(20):
                        await client.submit_background("free", b"")
                        await client.submit_background("limited", b"")
            async with Client(addresses) as client:
                with trio.fail_after(60):
                    await client.map("free", [b""] * 30)
                    await client.map("limited", [b""] * 10)
            assert worker.running_jobs == 0
    assert peak["limited"] == 1
    assert peak["all"] == 3  # reached, never passed, with jobs from three servers


async def test_a_black_hole_is_detected_and_gets_no_work(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hold(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()  # accepts, never reads, never writes

    async with (
        cluster(1) as (good,),
        await anyio.create_tcp_listener(local_host="127.0.0.1") as listener,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(listener.serve, hold)
        hole = f"127.0.0.1:{listener.extra(anyio.abc.SocketAttribute.local_port)}"
        addresses = [hole, good.address]
        worker = Worker(addresses, concurrency=1, backoff=BACKOFF)

        @worker.function("f")
        async def f(job: Job) -> bytes:
            return job.data.upper()

        opened = trio.current_time()
        async with (
            running(worker),
            Client(addresses, backoff=BACKOFF, connect_timeout=4, heartbeat_timeout=5) as client,
        ):
            # the black hole accepted both connections, but answers nothing: entering
            # the client waited the connect time-out for its answer; then all the work
            # goes to the good server, and the worker's one slot is not held there
            assert trio.current_time() - opened == pytest.approx(4, abs=0.01)
            with trio.fail_after(1):
                assert await client.map("f", [b"a", b"b", b"c"]) == [b"A", b"B", b"C"]
            health = client.servers()
            assert health[0].state is LinkState.UP
            assert not health[0].answered
            assert health[1].answered
            # after the handshake time-out and an unanswered ECHO it counts as down
            for side in (client, worker):
                await wait_until(side, lambda health: health[0].last_error is not None)
                error = side.servers()[0].last_error
                assert isinstance(error, ConnectionLost)
                assert "no answer within 9 s of connecting" in str(error)
            assert trio.current_time() - opened == pytest.approx(9, abs=0.01)
            assert await client.submit("f", b"d") == b"D"
        nursery.cancel_scope.cancel()
