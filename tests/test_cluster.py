"""``trio-gearmand --cluster``: several real servers serving one PostgreSQL queue.

Every test starts real ``trio-gearmand`` processes on the tests' throw-away
PostgreSQL (``tests/postgres_peer.py``), with a cluster name of its own, and
talks to them over raw Gearman connections as any client or worker would.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack

import anyio
import pytest
import trio

from trio_gearman._cli.options import UsageError
from trio_gearman._cli.server import parse_options
from trio_gearman._cli.server_cluster import make_cluster_store
from trio_gearman._proto import Event
from trio_gearman._proto._codec import Decoder, encode
from trio_gearman._proto._packets import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    NoJob,
    Noop,
    PreSleep,
    Priority,
    SubmitJob,
    SubmitJobEpoch,
    WorkComplete,
)
from trio_gearman._server.server import GearmanServer
from trio_gearman._server.store.cluster import DEFAULT_POLL, ClusterStore

from .gearmand_peer import free_port
from .postgres_peer import PostgresCluster
from .test_cli_server import ServerProcess, trio_gearmand

pytestmark = pytest.mark.postgres

FUNCTION = b"f"


class Peer:
    """A raw Gearman connection to one server."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.decoder = Decoder(expect=Magic.RES)
        self.pending: list[Event] = []

    async def send(self, *messages: Message) -> None:
        await self.stream.send(b"".join(encode(message) for message in messages))

    async def receive(self) -> Event:
        while not self.pending:
            self.decoder.feed(await self.stream.receive())
            self.pending.extend(self.decoder)
        return self.pending.pop(0)

    async def request(self, *messages: Message, replies: int | None = None) -> list[Event]:
        await self.send(*messages)
        wanted = len(messages) if replies is None else replies
        with trio.fail_after(5):
            return [await self.receive() for _ in range(wanted)]

    async def next_job(self) -> JobAssignUniq:
        """Grab a job, sleeping (PRE_SLEEP) until the server has one."""
        while True:
            (reply,) = await self.request(GrabJobUniq())
            if isinstance(reply, JobAssignUniq):
                return reply
            assert isinstance(reply, NoJob), reply
            await self.send(PreSleep())
            assert isinstance(await self.receive(), Noop)


class Cluster:
    """Servers of one cluster, and connections to them (closed at the end)."""

    def __init__(self, dsn: str, name: str, stack: AsyncExitStack) -> None:
        self.dsn = dsn
        self.name = name
        self._stack = stack

    async def server(self, *extra: str, lease: float = 30.0) -> ServerProcess:
        args = [
            "-L", "127.0.0.1", "-p", str(free_port()), "-q", "postgres",
            "--postgres-dsn", self.dsn, "--cluster", self.name,
            "--cluster-lease", str(lease), *extra,
        ]  # fmt: skip
        server = await self._stack.enter_async_context(trio_gearmand(args))
        await server.wait_for_line(b"Joined the cluster")
        return server

    async def connect(self, server: ServerProcess) -> Peer:
        stream = await anyio.connect_tcp("127.0.0.1", server.port)
        self._stack.push_async_callback(stream.aclose)
        return Peer(stream)

    async def worker(self, server: ServerProcess) -> Peer:
        peer = await self.connect(server)
        await peer.send(CanDo(FUNCTION))
        return peer

    def rows(self) -> list[tuple[bytes, int | None]]:
        """``(data, claimed_by)`` of every row of jobs of FUNCTION in the cluster's table."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            query = sql.SQL(
                "SELECT data, claimed_by FROM {} WHERE function = %s ORDER BY seq"
            ).format(sql.Identifier(f"gearman_queue_{self.name}"))
            return [(bytes(data), claimed) for data, claimed in conn.execute(query, (FUNCTION,))]


async def settle(worker: Peer) -> None:
    """Wait until the ends of the worker's jobs are committed (their rows deleted).

    A durable submission on the same connection is acknowledged only after every
    commit before it, the deletions included.
    """
    await worker.send(SubmitJob(b"barrier", b"", b"", background=True))
    with trio.fail_after(5):
        while not isinstance(reply := await worker.receive(), JobCreated):
            assert isinstance(reply, (Noop, NoJob)), reply  # from before the cancel


async def grab(worker: Peer) -> Event:
    """GRAB_JOB_UNIQ's reply (a NOOP still on its way from an earlier sleep skipped)."""
    await worker.send(GrabJobUniq())
    with trio.fail_after(5):
        while isinstance(reply := await worker.receive(), Noop):
            pass
    return reply


@pytest.fixture
async def cluster(postgres_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    """A cluster name of this test's own on the shared PostgreSQL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-30:]
    async with AsyncExitStack() as stack:
        yield Cluster(postgres_dsn, name, stack)


async def submit(
    peer: Peer, payloads: Sequence[bytes], priority: Priority = Priority.NORMAL
) -> None:
    replies = await peer.request(
        *(SubmitJob(FUNCTION, b"", data, priority, background=True) for data in payloads)
    )
    assert all(isinstance(reply, JobCreated) for reply in replies), replies


async def test_every_job_runs_exactly_once_across_three_servers(cluster: Cluster) -> None:
    servers = [await cluster.server() for _ in range(3)]
    workers = [await cluster.worker(servers[0]), await cluster.worker(servers[1])]
    payloads = [b"s%d-%d" % (n, i) for n in range(3) for i in range(40)]
    ran: list[tuple[int, bytes]] = []
    done = trio.Event()

    async def work(number: int, worker: Peer) -> None:
        while True:
            job = await worker.next_job()
            ran.append((number, job.data))
            await worker.send(WorkComplete(job.handle, b"ok"))
            if len(ran) == len(payloads):
                done.set()

    try:
        with trio.fail_after(8):
            async with trio.open_nursery() as nursery:
                for number, worker in enumerate(workers):
                    nursery.start_soon(work, number, worker)
                for n, server in enumerate(servers):  # the third one has no workers
                    await submit(await cluster.connect(server), payloads[n * 40 : (n + 1) * 40])
                await done.wait()
                nursery.cancel_scope.cancel()
    except BaseException:
        # What a failure needs to be understood: the table, and each server's log.
        print(f"{len(ran)} of {len(payloads)} jobs ran; rows left: {cluster.rows()}")
        for server in servers:
            server.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(5):
                print((await server.rest_of_log()).decode(errors="replace"))
        raise
    counts = Counter(data for _, data in ran)
    assert sorted(counts) == sorted(payloads)
    assert set(counts.values()) == {1}, [data for data, n in counts.items() if n > 1]
    assert {number for number, _ in ran} == {0, 1}  # both members' workers took part
    # Nothing is left for anybody: each job's row went with its end.
    for worker in workers:
        await settle(worker)
    assert cluster.rows() == []
    for worker in workers:
        assert await grab(worker) == NoJob()


async def test_a_job_submitted_where_no_worker_is_wakes_a_worker_elsewhere_at_once(
    cluster: Cluster,
) -> None:
    with_worker, without = await cluster.server(), await cluster.server()
    worker = await cluster.worker(with_worker)
    assert await worker.request(GrabJobUniq()) == [NoJob()]
    await worker.send(PreSleep())
    client = await cluster.connect(without)
    for attempt in range(3):
        started = trio.current_time()
        await submit(client, [b"job %d" % attempt])
        # A notification, not the poll every DEFAULT_POLL seconds, brings it.
        with trio.fail_after(DEFAULT_POLL / 5):
            assert isinstance(await worker.receive(), Noop)
            job = await worker.next_job()
        assert job.data == b"job %d" % attempt
        assert trio.current_time() - started < 1.0
        await worker.send(WorkComplete(job.handle, b""), PreSleep())


async def test_a_killed_servers_claimed_job_runs_elsewhere_after_the_lease(
    cluster: Cluster,
) -> None:
    lease = 1.5
    doomed = await cluster.server(lease=lease)
    survivor = await cluster.server(lease=lease)
    first = await cluster.worker(doomed)
    assert await first.request(GrabJobUniq()) == [NoJob()]
    await first.send(PreSleep())
    await submit(await cluster.connect(survivor), [b"long job"])
    with trio.fail_after(2):
        assert isinstance(await first.receive(), Noop)
        job = await first.next_job()
    assigned = trio.current_time()
    second = await cluster.worker(survivor)
    assert await second.request(GrabJobUniq()) == [NoJob()]
    await second.send(PreSleep())
    # While the first run lives its lease is renewed: nobody else gets the job,
    # though it outlasts the lease.
    with trio.move_on_after(lease + 1.0):
        await second.receive()
        pytest.fail("the job was given to a second worker while its first run lived")
    assert [claimed for _, claimed in cluster.rows()] != [None]
    doomed.process.send_signal(signal.SIGKILL)
    killed = trio.current_time()
    with trio.fail_after(lease + 2.0):
        assert isinstance(await second.receive(), Noop)
        again = await second.next_job()
    rerun = trio.current_time()
    assert (again.handle, again.data) == (job.handle, job.data)
    # Not before the lease lapsed: renewed at most a third of it before the kill.
    assert rerun - killed > lease * 2 / 3 - 0.1
    assert rerun - assigned > lease + 1.0
    await second.send(WorkComplete(again.handle, b"done"))
    await settle(second)
    assert cluster.rows() == []


async def test_a_stopping_server_gives_its_claims_back_at_once(cluster: Cluster) -> None:
    stopping = await cluster.server()  # the default lease: 30 s
    staying = await cluster.server()
    worker = await cluster.worker(stopping)
    # Two claimed (one running, one ready behind it), one left in the table.
    await submit(await cluster.connect(staying), [b"one", b"two", b"three"])
    job = await worker.next_job()
    stopping.process.send_signal(signal.SIGTERM)
    with trio.fail_after(10):
        await stopping.process.wait()
    other = await cluster.worker(staying)
    with trio.fail_after(3):  # well before the lease
        got = [await other.next_job() for _ in range(3)]
    assert sorted(j.data for j in got) == [b"one", b"three", b"two"]
    assert job.handle in {j.handle for j in got}
    for j in got:
        await other.send(WorkComplete(j.handle, b""))
    await settle(other)
    assert cluster.rows() == []


async def test_priorities_hold_across_the_cluster(cluster: Cluster) -> None:
    submitter, runner = await cluster.server(), await cluster.server()
    client = await cluster.connect(submitter)
    await submit(client, [b"low"], Priority.LOW)
    await submit(client, [b"normal"], Priority.NORMAL)
    await submit(client, [b"high"], Priority.HIGH)
    worker = await cluster.worker(runner)
    order = []
    with trio.fail_after(5):
        for _ in range(3):
            job = await worker.next_job()
            order.append(job.data)
            await worker.send(WorkComplete(job.handle, b""))
    assert order == [b"high", b"normal", b"low"]


async def test_servers_ride_out_a_postgresql_restart(
    cluster: Cluster, postgres_cluster: PostgresCluster
) -> None:
    servers = [await cluster.server(), await cluster.server()]
    workers = [await cluster.worker(server) for server in servers]
    clients = [await cluster.connect(server) for server in servers]
    acknowledged: list[bytes] = []
    refused: list[bytes] = []
    ran: list[bytes] = []
    submitted = False
    caught_up = trio.Event()

    def check() -> None:
        if submitted and len(ran) >= len(acknowledged):
            caught_up.set()

    async def work(worker: Peer) -> None:
        while True:
            job = await worker.next_job()
            ran.append(job.data)
            await worker.send(WorkComplete(job.handle, b""))
            check()

    async def submit_some(phase: str, count: int) -> None:
        for i in range(count):
            client = clients[i % 2]
            data = b"%s %d" % (phase.encode(), i)
            (reply,) = await client.request(SubmitJob(FUNCTION, b"", data, background=True))
            (acknowledged if isinstance(reply, JobCreated) else refused).append(data)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for worker in workers:
                nursery.start_soon(work, worker)
            await submit_some("before", 20)
            await trio.to_thread.run_sync(postgres_cluster.stop)
            try:
                await submit_some("during", 4)
            finally:
                await trio.to_thread.run_sync(postgres_cluster.start)
            await submit_some("after", 20)
            submitted = True
            check()
            await caught_up.wait()
            nursery.cancel_scope.cancel()
    assert [data for data in acknowledged if data.startswith(b"during")] == []
    assert len(refused) == 4
    counts = Counter(ran)
    assert sorted(counts) == sorted(acknowledged)
    assert set(counts.values()) == {1}
    for worker in workers:
        await settle(worker)
    assert cluster.rows() == []


async def test_an_epoch_job_runs_once_due_on_another_server(cluster: Cluster) -> None:
    submitter, runner = await cluster.server(), await cluster.server()
    worker = await cluster.worker(runner)
    assert await worker.request(GrabJobUniq()) == [NoJob()]
    await worker.send(PreSleep())
    due = int(time.time()) + 2
    client = await cluster.connect(submitter)
    (created,) = await client.request(SubmitJobEpoch(FUNCTION, b"", due, b"later"))
    assert isinstance(created, JobCreated)
    # Woken when it comes due, not at the next poll.
    with trio.fail_after(2 + DEFAULT_POLL / 2):
        assert isinstance(await worker.receive(), Noop)
        job = await worker.next_job()
    assert time.time() >= due - 0.01
    assert time.time() < due + 1.5
    assert (job.handle, job.data) == (created.handle, b"later")


def test_handles_are_unique_per_member(postgres_dsn: str) -> None:
    stores = [ClusterStore(postgres_dsn, "t_handles") for _ in range(2)]
    try:
        tags = [store.open().handle_tag for store in stores]
    finally:
        for store in stores:
            store.close()
    assert tags[0] != tags[1]
    assert all(tag.startswith(b"m") for tag in tags)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cluster", "a"], "--cluster needs --queue-type postgres"),
        (["-q", "sqlite", "--sqlite-db", "x", "--cluster", "a"], "--cluster needs"),
        (["--postgres-dsn", "host=x", "--cluster-lease", "3"], "--cluster-lease needs --cluster"),
        (["--postgres-dsn", "host=x", "--cluster", "no-dash"], "is not a cluster name"),
        (["--postgres-dsn", "host=x", "--cluster", "a", "--cluster-lease", "0"], "positive"),
        (["--postgres-dsn", "host=x", "--cluster", "a", "--cluster-lease", "inf"], "finite"),
    ],
)
def test_bad_cluster_options_are_usage_errors(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_options(args, environ={})


def test_cluster_options_are_folded_and_defaulted() -> None:
    options = parse_options(["--postgres-dsn", "host=x", "--cluster", "Prod"], environ={})
    assert (options.cluster, options.cluster_lease) == ("prod", 30.0)


# --- in-process members: what they log when PostgreSQL goes away, and how they recover ---


class LogWatch(logging.Handler):
    """Records the messages of the cluster's and the store's loggers; waits for one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        self._waiting: list[tuple[str, trio.Event]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        self.messages.append(message)
        for text, event in self._waiting:
            if text in message:
                event.set()

    async def wait_for(self, text: str) -> None:
        if any(text in message for message in self.messages):
            return
        event = trio.Event()
        self._waiting.append((text, event))
        with trio.fail_after(5):
            await event.wait()


@pytest.fixture
def log_watch() -> Iterator[LogWatch]:
    watch = LogWatch()
    loggers = [logging.getLogger(name) for name in ("trio_gearman.server", "trio_gearman")]
    old = [(logger.level, logger.propagate) for logger in loggers]
    loggers[0].addHandler(watch)
    for logger in loggers:
        logger.setLevel(logging.DEBUG)
    yield watch
    loggers[0].removeHandler(watch)
    for logger, (level, _) in zip(loggers, old, strict=True):
        logger.setLevel(level)


async def test_members_log_and_recover_when_postgresql_goes_away(
    cluster: Cluster, postgres_cluster: PostgresCluster, log_watch: LogWatch
) -> None:
    def member() -> GearmanServer:
        store = ClusterStore(cluster.dsn, cluster.name, lease=1.5, poll=0.2)
        return GearmanServer(listen=[("127.0.0.1", 0)], store=store)

    async with trio.open_nursery() as nursery:
        runner: GearmanServer = await nursery.start(member().run)
        submitter: GearmanServer = await nursery.start(member().run)
        worker = Peer(await anyio.connect_tcp("127.0.0.1", runner.port))
        client = Peer(await anyio.connect_tcp("127.0.0.1", submitter.port))
        await worker.send(CanDo(FUNCTION))
        await submit(client, [b"one", b"two"])
        with trio.fail_after(5):
            job = await worker.next_job()  # "two" is claimed too, ready behind it
        assert job.data == b"one"
        await trio.to_thread.run_sync(postgres_cluster.stop)
        try:
            await log_watch.wait_for("Cannot renew this member's leases")
            await log_watch.wait_for("Not listening for new jobs")
            await log_watch.wait_for("Cannot claim jobs")
            # Once the lease lapsed, other members may run "two": not here as well.
            await log_watch.wait_for("Gave up 1 queued jobs whose leases lapsed")
            # The job ends while the database is away: its deletion waits.
            await worker.send(WorkComplete(job.handle, b""))
            await log_watch.wait_for("durable submissions get QUEUE_ERROR")
        finally:
            await trio.to_thread.run_sync(postgres_cluster.start)
        await log_watch.wait_for("Claiming jobs works again")
        await log_watch.wait_for("Renewing this member's leases works again")
        await log_watch.wait_for("Listening for new jobs again")
        with trio.fail_after(5):  # its lease lapsed: claimed again
            second = await worker.next_job()
        assert second.data == b"two"
        await worker.send(WorkComplete(second.handle, b""))
        await settle(worker)
        assert cluster.rows() == []
        # A member that stops while the database is away cannot give its claims back.
        await submit(client, [b"three"])
        with trio.fail_after(5):
            third = await worker.next_job()
        await trio.to_thread.run_sync(postgres_cluster.stop)
        try:
            await runner.aclose()
            await log_watch.wait_for("Cannot give back this member's claims")
        finally:
            await trio.to_thread.run_sync(postgres_cluster.start)
        assert [data for data, _ in cluster.rows()] == [third.data]
        await worker.stream.aclose()
        await client.stream.aclose()
        await submitter.aclose()


def test_a_cluster_table_name_that_is_too_long_is_a_usage_error() -> None:
    options = parse_options(
        ["--postgres-dsn", "host=x", "--postgres-table", "q" * 30, "--cluster", "c" * 30],
        environ={},
    )
    with pytest.raises(UsageError, match="longer than 57 characters"):
        make_cluster_store(options)


async def test_a_unique_key_coalesces_background_jobs_across_the_cluster(
    cluster: Cluster,
) -> None:
    one, two = await cluster.server(), await cluster.server()
    client_one, client_two = await cluster.connect(one), await cluster.connect(two)

    def bg(unique: bytes, data: bytes) -> SubmitJob:
        return SubmitJob(FUNCTION, unique, data, background=True)

    # No worker anywhere: the first job waits in the table while the others come.
    (first,) = await client_one.request(bg(b"key", b"first"))
    replies = await client_two.request(bg(b"key", b"second"), bg(b"key", b"third"))
    replies += await client_one.request(bg(b"key", b"fourth"))
    assert isinstance(first, JobCreated)
    assert replies == [first, first, first]
    # The unique "-" coalesces by payload, across the servers too; no unique never.
    dashed = await client_one.request(bg(b"-", b"same"), bg(b"-", b"other"))
    dashed += await client_two.request(bg(b"-", b"same"), bg(b"", b"same"), bg(b"", b"same"))
    assert dashed[2] == dashed[0]
    assert len(set(dashed)) == 4
    assert [data for data, _ in cluster.rows()] == [b"first", b"same", b"other", b"same", b"same"]
    worker = await cluster.worker(two)
    job = await worker.next_job()
    assert (job.handle, job.data) == (first.handle, b"first")
    # While it runs it is live: it still takes submissions of its key.
    assert await client_one.request(bg(b"key", b"while it runs")) == [first]
    await worker.send(WorkComplete(job.handle, b""))
    await settle(worker)
    # Once it ended, the key makes a new job.
    (later,) = await client_one.request(bg(b"key", b"later"))
    assert isinstance(later, JobCreated)
    assert later.handle != first.handle
    ran = []
    for _ in range(5):
        job = await worker.next_job()
        ran.append(job.data)
        await worker.send(WorkComplete(job.handle, b""))
    assert sorted(ran) == sorted([b"same", b"other", b"same", b"same", b"later"])
    await settle(worker)
    assert cluster.rows() == []
    assert await grab(worker) == NoJob()


async def test_a_draining_server_claims_nothing_more_and_gives_back_what_waits(
    cluster: Cluster,
) -> None:
    draining, staying = await cluster.server(), await cluster.server()  # leases of 30 s
    worker = await cluster.worker(draining)
    client = await cluster.connect(staying)
    await submit(client, [b"one", b"two"])
    running = await worker.next_job()  # "two" is claimed too, ready behind it
    assert running.data == b"one"
    assert all(claimed is not None for _, claimed in cluster.rows())
    draining.process.send_signal(signal.SIGUSR1)
    await draining.wait_for_line(b"Draining: claiming no more jobs from the cluster")
    await draining.wait_for_line(b"Draining: giving back 1 queued jobs")
    # A job submitted now, while its worker there could take another: not claimed.
    await submit(client, [b"three"])
    await worker.send(PreSleep())
    with trio.move_on_after(1.5):
        reply = await worker.receive()
        pytest.fail(f"the draining server claimed a job and woke its worker: {reply}")
    rows = cluster.rows()
    assert [data for data, _ in rows] == [b"one", b"two", b"three"]
    assert rows[0][1] is not None
    assert [claimed for _, claimed in rows[1:]] == [None, None]
    # The other server's workers run them, long before any lease lapses.
    other = await cluster.worker(staying)
    with trio.fail_after(3):
        got = [await other.next_job() for _ in range(2)]
    assert sorted(job.data for job in got) == [b"three", b"two"]
    for job in got:
        await other.send(WorkComplete(job.handle, b""))
    # The draining server finishes what its worker runs, then stops.
    assert draining.process.returncode is None
    await worker.send(WorkComplete(running.handle, b"done"))
    with trio.fail_after(10):
        assert await draining.process.wait() == 0
    await settle(other)
    assert cluster.rows() == []


async def listing(server: ServerProcess, command: bytes) -> list[bytes]:
    """The lines of one admin listing (without its ``.`` line)."""
    async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
        await stream.send(command + b"\n")
        data = b""
        with trio.fail_after(5):
            while not (data == b".\n" or data.endswith(b"\n.\n")):
                data += await stream.receive()
    return data.splitlines()[:-1]


async def wait_for_listing(server: ServerProcess, command: bytes, expected: list[bytes]) -> None:
    """Ask until the listing is ``expected``.

    A member's view of the shared queue is read again within a second of a
    change: its listings are the only sign of it from outside, so this asks
    again, 20 times a second for 5 seconds at most, until they show the change.
    """
    got: list[bytes] = []
    for _ in range(100):
        got = await listing(server, command)
        if got == expected:
            return
        await trio.sleep(0.05)
    raise AssertionError(f"{command!r} kept answering {got}, not {expected}")


async def test_the_admin_commands_of_any_member_show_the_clusters_queue(cluster: Cluster) -> None:
    one, two = await cluster.server(), await cluster.server()
    client = await cluster.connect(one)
    created = await client.request(
        SubmitJob(FUNCTION, b"", b"1", background=True),
        SubmitJob(FUNCTION, b"", b"2", background=True),
        SubmitJob(FUNCTION, b"", b"3", Priority.HIGH, background=True),
    )
    handles = [reply.handle for reply in created if isinstance(reply, JobCreated)]
    assert len(handles) == 3
    # No worker anywhere: the jobs wait in the table, and every member shows them.
    for server in (two, one):
        await wait_for_listing(server, b"status", [b"f\t3\t0\t0"])
        await wait_for_listing(server, b"prioritystatus", [b"f\t1\t2\t0\t0"])
    assert sorted(await listing(two, b"show jobs")) == sorted(h + b"\t0\t0\t1" for h in handles)
    # A worker of the first server runs the HIGH job, with two ready behind it:
    # the other member counts all three as running there, the first knows better.
    worker = await cluster.worker(one)
    job = await worker.next_job()
    assert job.data == b"3"
    await wait_for_listing(two, b"status", [b"f\t3\t3\t0"])
    await wait_for_listing(one, b"status", [b"f\t3\t1\t1"])
    await wait_for_listing(one, b"prioritystatus", [b"f\t0\t2\t0\t1"])
    # A foreground job stays where it was submitted, and counts there.
    foreground = await cluster.connect(two)
    (waiting,) = await foreground.request(SubmitJob(FUNCTION, b"", b"fg"))
    assert isinstance(waiting, JobCreated)
    await wait_for_listing(two, b"status", [b"f\t4\t3\t0"])
    shown = await listing(two, b"show jobs")
    assert shown[0] == waiting.handle + b"\t0\t0\t0"
    assert sorted(shown[1:]) == sorted(h + b"\t0\t0\t1" for h in handles)
    await wait_for_listing(one, b"status", [b"f\t3\t1\t1"])
    # "workers" stays each server's own.
    assert not any(b" f" in line for line in await listing(two, b"workers"))
    # A job that ends elsewhere leaves the view within a second or so.
    await worker.send(WorkComplete(job.handle, b""))
    await wait_for_listing(two, b"status", [b"f\t3\t2\t0"])
