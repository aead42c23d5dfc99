"""The job server under load, side by side with gearmand 1.1.20, in one run.

Every measurement starts its server fresh on a free loopback port and drives it with
raw-protocol clients and workers in child processes (see ``_loadgen.py``); the same
load runs against each server in turn, and the tables give ratios to gearmand.

Modes:

* ``bg``: background jobs (16-byte payloads, distinct 36-byte uniques) from 2
  clients pipelining submits, done by 4 no-op workers that keep several
  GRAB_JOB_UNIQ in flight and answer WORK_COMPLETE at once. jobs/s runs from the
  first submit to the last completion; latency is submit -> the worker's receipt of
  the job (when it sends WORK_COMPLETE); at most ``--max-backlog`` jobs are queued.
* ``fg16``: 16 foreground clients, each with one job in flight, 4 no-op workers
  with one grab each (as libgearman's worker). Latency is submit -> WORK_COMPLETE
  at the client.
* ``fg16-flood``: ``fg16`` while 2 more clients flood the server with background jobs
  of another function that no worker takes (they pile up; with a persistent queue,
  every one is committed): the foreground latency under a persistence load.
* ``idle``: ``fg16`` on one server with no idle connection, then with 5,000 open
  (plain TCP connections that send nothing).
* ``rss-queue``: 1,000,000 background jobs queued, no worker: the server's RSS
  growth (VmRSS minus its value before the first job).
* ``rss-idle``: RSS growth per idle connection, 5,000 of them.

Server CPU-seconds come from /proc/PID/stat (utime + stime, every thread) around the
timed section. The load generator runs on the same machine and competes with the
server for its cores.

Usage (from the repository root)::

    python bench/server.py                       # every mode, every server, 3 repeats
    python bench/server.py --quick               # a ~30 s smoke run
    python bench/server.py --modes bg,fg16 --servers ours,gearmand-t4 --jobs 50000 --repeats 5
    python bench/server.py --modes bg,fg16 --servers ours --profile /tmp/prof
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import datetime
import functools
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import attrs
from _loadgen import (
    LoadError,
    admin,
    close_all,
    connection_count,
    open_idle,
    raise_fd_limit,
    registered_workers,
    run_bg_client,
    run_fg_clients,
    run_workers,
)
from _loadgen_servers import (
    KNOWN_SERVERS,
    POSTGRES_DSN_ENV,
    SERVERS,
    RunningServer,
    ServerFailed,
    cpu_seconds,
    machine,
    machine_busy,
    postgres_database,
    rss_kib,
    run_server,
    tree_cpu_seconds,
)

MODES: Final = ("bg", "fg16", "fg16-flood", "idle", "rss-queue", "rss-idle")
THROUGHPUT_MODES: Final = ("bg", "fg16", "fg16-flood")
FLOOD: Final = b"flood"
FUNCTION: Final = b"bench_noop"
REFERENCE: Final = "gearmand-t4"
_ctx = multiprocessing.get_context("fork")


@attrs.define
class Options:
    """Everything a measurement needs to know (from the command line)."""

    bg_jobs: int = 150_000
    fg_jobs: int = 50_000
    gearmand_buckets: int = 1_000_003
    queue_jobs: int = 1_000_000
    idle_conns: int = 5_000
    clients: int = 2
    workers: int = 4
    fg_clients: int = 16
    client_procs: int = 2
    worker_procs: int = 2
    batch: int = 100
    window: int = 2_000
    max_backlog: int = 2_000
    bg_grabs: int = 8
    fg_grabs: int = 1
    fg_inflight: int = 1
    timeout: float = 120.0
    max_other_load: float = 0.35
    retries: int = 1
    settle: float = 5.0
    profile: Path | None = None
    db_pid: int | None = None
    """The PostgreSQL server whose CPU is measured too (a ``-postgres`` server's database)."""


DEFAULTS: Final = Options()


@attrs.define
class Throughput:
    """One timed run of jobs through one server."""

    jobs: int
    seconds: float
    server_cpu: float
    server_sys: float
    loadgen_cpu: float
    machine_cpu: float
    softirq: float
    p50: float
    p99: float
    noops: int = 0
    """NOOPs the workers received (wake-ups from PRE_SLEEP)."""
    db_cpu: float = 0.0
    """CPU-seconds of the PostgreSQL server (every process), when it was measured."""
    attempts: int = 1
    """Measurements taken to get this one (more when other work disturbed them)."""
    note: str = ""

    @property
    def rate(self) -> float:
        """Jobs per second."""
        return self.jobs / self.seconds

    @property
    def others(self) -> float:
        """Cores busy with neither the servers, their database, the load generator nor
        softirq (other work)."""
        rest = self.machine_cpu - self.server_cpu - self.db_cpu - self.loadgen_cpu - self.softirq
        return max(0.0, rest) / self.seconds


@attrs.define
class Memory:
    """RSS growth of one server under a standing load."""

    count: int
    rss_kib: int
    seconds: float

    @property
    def per_item(self) -> float:
        """RSS growth in bytes per job or connection."""
        return self.rss_kib * 1024 / self.count


# --- child processes --------------------------------------------------------------------------


class Children:
    """The load generator's processes of one measurement, each with a pipe for its results."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.go = _ctx.Event()
        self.stop = _ctx.Event()

    def start(self, target: Callable[..., None], *args: object) -> Connection:
        """Run ``target(*args, pipe)`` in a child process; return the pipe's reading end."""
        reader, writer = _ctx.Pipe(duplex=False)
        proc = _ctx.Process(target=target, args=(*args, writer), daemon=True)
        proc.start()
        writer.close()
        self.procs.append(proc)
        return reader

    def expect(self, pipe: Connection) -> dict[str, Any]:
        """The next message of one child; raises its error or a timeout."""
        if not pipe.poll(max(0.0, self.deadline - time.monotonic())):
            raise LoadError("the load generator timed out")
        try:
            message: dict[str, Any] = pipe.recv()
        except EOFError:
            raise LoadError("a load generator process died") from None
        if "error" in message:
            raise LoadError(message["error"])
        return message

    def wait_until(self, what: str, ready: Callable[[], bool], pause: float = 0.002) -> None:
        """Poll ``ready`` until it is true, up to the deadline."""
        while not ready():
            if time.monotonic() > self.deadline:
                raise LoadError(f"timed out waiting for {what}")
            time.sleep(pause)

    def close(self) -> None:
        """Release every child and end it (killed if it does not end within the deadline)."""
        self.stop.set()
        self.go.set()
        for proc in self.procs:
            proc.join(max(0.1, min(5.0, self.deadline - time.monotonic())))
            if proc.is_alive():
                proc.kill()
                proc.join()


@contextlib.contextmanager
def children(timeout: float) -> Iterator[Children]:
    """The child processes of one measurement, ended on the way out."""
    group = Children(timeout)
    try:
        yield group
    finally:
        group.close()


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as whole numbers allow."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentiles(samples: array[float]) -> tuple[float, float]:
    """p50 and p99 of latencies in seconds (nearest rank)."""
    if not samples:
        return float("nan"), float("nan")
    ordered = sorted(samples)
    last = len(ordered) - 1
    return ordered[round(0.50 * last)], ordered[round(0.99 * last)]


@attrs.frozen
class Placement:
    """The servers of one measurement, and which of them each client and worker uses.

    Client ``i`` connects to ``clients[i % len(clients)]``; worker connections go to
    ``workers`` in turn, so every worker process has connections to each of them.

    Attributes:
        servers: every server measured (their CPU is summed).
        clients: the servers the clients connect to, in turn.
        workers: the servers the worker connections go to, in turn.
    """

    servers: tuple[RunningServer, ...]
    clients: tuple[RunningServer, ...]
    workers: tuple[RunningServer, ...]

    @classmethod
    def on(cls, server: RunningServer) -> Placement:
        """Every client and worker on the one server ``server``."""
        return cls((server,), (server,), (server,))

    def client_port(self, client: int) -> int:
        """The port client number ``client`` connects to."""
        return self.clients[client % len(self.clients)].port

    def worker_ports(self, connections: int) -> list[int]:
        """The port of each of ``connections`` worker connections."""
        return [self.workers[i % len(self.workers)].port for i in range(connections)]


def start_workers(
    group: Children, placement: Placement, opts: Options, grabs: int, measure: bool
) -> tuple[list[Connection], SharedCounters]:
    """Start the no-op workers and wait until each server lists all of its own."""
    ports = placement.worker_ports(opts.workers)
    counts = [c for c in split(opts.workers, opts.worker_procs) if c]
    counters = SharedCounters(len(counts))
    pipes = []
    first = 0
    for slot, count in enumerate(counts):
        pipes.append(
            group.start(
                run_workers,
                ports[first : first + count],
                FUNCTION,
                grabs,
                measure,
                slot,
                counters.done,
                counters.last,
                group.stop,
            )
        )
        first += count
    for pipe in pipes:
        group.expect(pipe)
    wanted = collections.Counter(ports)
    group.wait_until(
        "the workers to register",
        lambda: all(registered_workers(port, FUNCTION) >= n for port, n in wanted.items()),
        pause=0.02,
    )
    return pipes, counters


class SharedCounters:
    """Per worker process: jobs done and the time of the last completion."""

    def __init__(self, slots: int) -> None:
        self.done = _ctx.RawArray(ctypes.c_longlong, slots)
        self.last = _ctx.RawArray(ctypes.c_double, slots)

    def total(self) -> int:
        """Jobs done by every worker process."""
        return sum(self.done)


class Sampler:
    """CPU of the servers, their database and the whole machine, from here to :meth:`finish`.

    ``profile``: record the first server with py-spy into that file.
    """

    def __init__(
        self,
        servers: Sequence[RunningServer],
        profile: Path | None = None,
        db_pid: int | None = None,
    ) -> None:
        self.pids = [server.pid for server in servers]
        self.db_pid = db_pid
        self.spy: subprocess.Popen[bytes] | None = None
        if profile is not None:
            self.spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-r",
                    "200",
                    "-f",
                    "raw",
                    "-o",
                    str(profile),
                    "--pid",
                    str(self.pids[0]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches before the load starts
        self.user, self.system = self.servers_cpu()
        self.db = self.db_cpu()
        self.busy, self.softirq = machine_busy()

    def servers_cpu(self) -> tuple[float, float]:
        """User and system CPU-seconds of every server so far."""
        times = [cpu_seconds(pid) for pid in self.pids]
        return sum(t[0] for t in times), sum(t[1] for t in times)

    def db_cpu(self) -> float:
        """CPU-seconds of the database server so far (0 when it is not measured)."""
        return 0.0 if self.db_pid is None else tree_cpu_seconds(self.db_pid)

    def finish(self) -> tuple[float, float, float, float, float]:
        """CPU-seconds since the start: servers (user + system), servers' system, machine,
        softirq, database."""
        busy, softirq = machine_busy()
        user, system = self.servers_cpu()
        db = self.db_cpu() - self.db
        user -= self.user
        system -= self.system
        result = (user + system, system, busy - self.busy, softirq - self.softirq, db)
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(30)
        return result


# --- measurements -----------------------------------------------------------------------------


def start_bg_clients(
    group: Children,
    placement: Placement,
    opts: Options,
    function: bytes,
    jobs: int,
    max_backlog: int,
    done: Any,
) -> list[Connection]:
    """``opts.clients`` clients submitting ``jobs`` background jobs of ``function``
    between them once ``group.go`` is set; returns their pipes, each one ready."""
    submitted = _ctx.RawArray(ctypes.c_longlong, opts.clients)
    pipes = [
        group.start(
            run_bg_client,
            placement.client_port(client),
            function,
            client,
            count,
            opts.batch,
            opts.window,
            max_backlog,
            submitted,
            done,
            group.go,
        )
        for client, count in enumerate(split(jobs, opts.clients))
    ]
    for pipe in pipes:
        group.expect(pipe)
    return pipes


def measure_bg(placement: Placement, opts: Options, jobs: int) -> Throughput:
    """Background jobs, submit to completion."""
    with children(opts.timeout) as group:
        worker_pipes, counters = start_workers(group, placement, opts, opts.bg_grabs, True)
        client_pipes = start_bg_clients(
            group, placement, opts, FUNCTION, jobs, opts.max_backlog, counters.done
        )
        sampler = Sampler(
            placement.servers, opts.profile and opts.profile / "ours-bg.txt", opts.db_pid
        )
        group.go.set()
        client_results = [group.expect(pipe) for pipe in client_pipes]
        group.wait_until("the workers to finish", lambda: counters.total() >= jobs)
        server_cpu, server_sys, machine_cpu, softirq, db_cpu = sampler.finish()
        group.stop.set()
        worker_results = [group.expect(pipe) for pipe in worker_pipes]
    start = min(r["start"] for r in client_results)
    end = max(counters.last)
    latencies = array("d")
    for result in worker_results:
        latencies.frombytes(result["latencies"])
    p50, p99 = percentiles(latencies)
    done = counters.total()
    note = "" if done == jobs else f"{done - jobs} extra completions"
    return Throughput(
        jobs=jobs,
        seconds=end - start,
        server_cpu=server_cpu,
        server_sys=server_sys,
        loadgen_cpu=sum(r["cpu"] for r in client_results + worker_results),
        machine_cpu=machine_cpu,
        softirq=softirq,
        p50=p50,
        p99=p99,
        noops=sum(r["noops"] for r in worker_results),
        db_cpu=db_cpu,
        note=note,
    )


def measure_fg(
    server: RunningServer, opts: Options, jobs: int, label: str = "fg16", flood: int = 0
) -> Throughput:
    """Foreground jobs from ``opts.fg_clients`` clients, submit to result.

    With ``flood``, ``opts.clients`` more clients submit that many background jobs
    of :data:`FLOOD` (which no worker takes) meanwhile.
    """
    placement = Placement.on(server)
    with children(opts.timeout) as group:
        worker_pipes, _ = start_workers(group, placement, opts, opts.fg_grabs, False)
        flood_pipes = []
        if flood:  # nobody takes the flood's jobs: no backlog limit, nothing done
            nothing_done = _ctx.RawArray(ctypes.c_longlong, 1)
            flood_pipes = start_bg_clients(group, placement, opts, FLOOD, flood, 0, nothing_done)
        ids = list(range(opts.fg_clients))
        per_proc = split(len(ids), opts.client_procs)
        jobs_each = max(1, jobs // opts.fg_clients)
        client_pipes = []
        first = 0
        for count in per_proc:
            client_pipes.append(
                group.start(
                    run_fg_clients,
                    server.port,
                    FUNCTION,
                    ids[first : first + count],
                    jobs_each,
                    opts.fg_inflight,
                    group.go,
                )
            )
            first += count
        for pipe in client_pipes:
            group.expect(pipe)
        sampler = Sampler(
            placement.servers, opts.profile and opts.profile / f"ours-{label}.txt", opts.db_pid
        )
        group.go.set()
        client_results = [group.expect(pipe) for pipe in client_pipes]
        server_cpu, server_sys, machine_cpu, softirq, db_cpu = sampler.finish()
        flooded = [group.expect(pipe) for pipe in flood_pipes]
        group.stop.set()
        worker_results = [group.expect(pipe) for pipe in worker_pipes]
    start = min(r["start"] for r in client_results)
    end = max(r["end"] for r in client_results)
    if flooded and max(r["end"] for r in flooded) < end:
        print(f"  note: the flood ended before the foreground load ({label})", file=sys.stderr)
    latencies = array("d")
    for result in client_results:
        latencies.frombytes(result["latencies"])
    p50, p99 = percentiles(latencies)
    return Throughput(
        jobs=len(latencies),
        seconds=end - start,
        server_cpu=server_cpu,
        server_sys=server_sys,
        loadgen_cpu=sum(r["cpu"] for r in client_results + worker_results),
        machine_cpu=machine_cpu,
        softirq=softirq,
        p50=p50,
        p99=p99,
        noops=sum(r["noops"] for r in worker_results),
        db_cpu=db_cpu,
    )


def wait_connections(server: RunningServer, count: int, timeout: float) -> None:
    """Wait until the admin ``workers`` list shows ``count`` connections besides its own."""
    deadline = time.monotonic() + timeout
    while connection_count(server.port) < count + 1:
        if time.monotonic() > deadline:
            raise LoadError(f"{server.name} did not accept {count} connections")
        time.sleep(0.05)


def measure_idle(server: RunningServer, opts: Options) -> tuple[Throughput, Throughput]:
    """fg16 with no idle connection, then with ``opts.idle_conns`` open, on one server."""
    without = measure_fg(server, opts, opts.fg_jobs)
    idle = open_idle(server.port, opts.idle_conns)
    try:
        wait_connections(server, opts.idle_conns, opts.timeout)
        with_idle = measure_fg(server, opts, opts.fg_jobs, label="idle")
    finally:
        close_all(idle)
    return without, with_idle


def baseline_rss(server: RunningServer) -> int:
    """The server's RSS once it has served one admin connection (its first allocations)."""
    connection_count(server.port)
    return rss_kib(server.pid)


def measure_rss_queue(server: RunningServer, opts: Options) -> Memory:
    """RSS growth with ``opts.queue_jobs`` background jobs queued and no worker."""
    before = baseline_rss(server)
    jobs = opts.queue_jobs
    with children(opts.timeout) as group:
        submitted = _ctx.RawArray(ctypes.c_longlong, opts.clients)
        done = _ctx.RawArray(ctypes.c_longlong, 1)
        pipes = [
            group.start(
                run_bg_client,
                server.port,
                FUNCTION,
                client,
                count,
                1000,
                20_000,
                0,
                submitted,
                done,
                group.go,
            )
            for client, count in enumerate(split(jobs, opts.clients))
        ]
        for pipe in pipes:
            group.expect(pipe)
        start = time.perf_counter()
        group.go.set()
        for pipe in pipes:
            group.expect(pipe)
        seconds = time.perf_counter() - start
    queued = queued_jobs(server)
    if queued != jobs:
        raise LoadError(f"{server.name} reports {queued} queued jobs, {jobs} were submitted")
    return Memory(count=jobs, rss_kib=rss_kib(server.pid) - before, seconds=seconds)


def queued_jobs(server: RunningServer) -> int:
    """The total (queued + running) jobs of the benchmark's function, from ``status``."""
    for line in admin(server.port, b"status"):
        parts = line.split(b"\t")
        if parts[0] == FUNCTION:
            return int(parts[1])
    return 0


def measure_rss_idle(server: RunningServer, opts: Options) -> Memory:
    """RSS growth per idle connection, ``opts.idle_conns`` of them."""
    before = baseline_rss(server)
    start = time.perf_counter()
    idle = open_idle(server.port, opts.idle_conns)
    try:
        wait_connections(server, opts.idle_conns, opts.timeout)
        seconds = time.perf_counter() - start
        after = rss_kib(server.pid)
    finally:
        close_all(idle)
    return Memory(count=opts.idle_conns, rss_kib=after - before, seconds=seconds)


# --- the run ----------------------------------------------------------------------------------


Results = dict[str, dict[str, list[Any]]]  # mode -> server -> one entry per repeat


def run(modes: Sequence[str], servers: Sequence[str], opts: Options, repeats: int) -> Results:
    """Every mode against every server, servers interleaved within each repeat.

    A throughput measurement during which other work kept more than
    ``opts.max_other_load`` cores busy is taken again (``opts.retries`` times at
    most, each on a fresh server), and the least disturbed attempt is kept.
    """
    results: Results = collections.defaultdict(lambda: collections.defaultdict(list))
    for repeat in range(repeats):
        for mode in modes:
            if repeat and mode.startswith("rss-"):
                continue  # memory figures do not vary between runs
            for name in servers:
                profile = (
                    opts.profile / name
                    if opts.profile is not None
                    and name.startswith("ours")
                    and mode in THROUGHPUT_MODES
                    else None
                )
                if profile is not None:
                    profile.mkdir(parents=True, exist_ok=True)
                db_pid = opts.db_pid if name.endswith("-postgres") else None
                step = attrs.evolve(opts, profile=profile, db_pid=db_pid)
                started = time.perf_counter()
                kept = least_disturbed(
                    f"{mode} {name}",
                    opts,
                    opts.retries if mode in (*THROUGHPUT_MODES, "idle") else 0,
                    functools.partial(measure_fresh, mode, name, step),
                )
                results[mode][name].append(kept)
                print(
                    f"  [{repeat + 1}/{repeats}] {mode:9} {name:12} {describe(kept)}"
                    f"  ({time.perf_counter() - started:.1f} s)",
                    file=sys.stderr,
                )
    return results


def least_disturbed(label: str, opts: Options, retries: int, take: Callable[[], object]) -> object:
    """The least disturbed of up to ``1 + retries`` measurements made by ``take``.

    Each waits for a quiet machine first; another is taken only while other work
    kept more than ``opts.max_other_load`` cores busy. A failed measurement is
    reported (``label``) and counts as an attempt; ``None`` when every one failed.
    """
    kept: object = None
    for attempt in range(1 + retries):
        wait_quiet(opts)
        try:
            entry = take()
        except (LoadError, ServerFailed) as exc:
            print(f"  {label}: FAILED: {exc}", file=sys.stderr)
            continue
        mark_attempts(entry, attempt + 1)
        if kept is None or other_load(entry) < other_load(kept):
            kept = entry
        if other_load(entry) <= opts.max_other_load:
            break
    return kept


def measure_fresh(mode: str, name: str, opts: Options) -> object:
    """One measurement of ``mode`` on a freshly started server ``name``."""
    with run_server(name, server_options(mode, name, opts)) as server:
        return measure(mode, server, opts)


def other_load(entry: object) -> float:
    """Cores that other work kept busy during a measurement (the worst part of an idle pair)."""
    if isinstance(entry, Throughput):
        return entry.others
    if isinstance(entry, tuple):
        return max(other_load(e) for e in entry)
    return 0.0


def mark_attempts(entry: object, attempts: int) -> None:
    """Record on a measurement how many attempts it took."""
    for part in entry if isinstance(entry, tuple) else (entry,):
        if isinstance(part, Throughput):
            part.attempts = attempts


def disturbance(results: Results, opts: Options) -> str:
    """A sentence on the measurements that other work on the machine disturbed."""
    kept = [
        part
        for by_server in results.values()
        for entries in by_server.values()
        for entry in entries
        for part in (entry if isinstance(entry, tuple) else (entry,))
        if isinstance(part, Throughput)
    ]
    again = sum(part.attempts > 1 for part in kept)
    still = sum(part.others > opts.max_other_load for part in kept)
    return (
        f"Other work on the machine: {again} of {len(kept)} throughput measurements were "
        f"taken again because it kept more than {opts.max_other_load} cores busy; in {still} "
        f"of the {len(kept)} kept it still did (the last column gives the medians)."
    )


def wait_quiet(opts: Options) -> None:
    """Wait (``opts.settle`` seconds at most) until the machine is about idle."""
    deadline = time.monotonic() + opts.settle
    while True:
        busy, _ = machine_busy()
        time.sleep(0.25)
        load = (machine_busy()[0] - busy) / 0.25
        if load <= opts.max_other_load or time.monotonic() > deadline:
            return


def server_options(mode: str, name: str, opts: Options) -> list[str]:
    """Extra options of one server for one mode.

    gearmand keeps its jobs and unique keys in hash tables of a fixed bucket count
    (991 by default): queueing a million jobs into them takes minutes, as each
    submit walks a chain of about a thousand jobs. For ``rss-queue`` it gets about
    one bucket per job (16 MB of bucket arrays, a few % of the queue's memory).
    """
    if mode == "rss-queue" and name.startswith("gearmand") and opts.gearmand_buckets:
        return ["--hashtable-buckets", str(opts.gearmand_buckets)]
    return []


def measure(mode: str, server: RunningServer, opts: Options) -> object:
    """One measurement of ``mode`` on a freshly started server."""
    if mode == "bg":
        return measure_bg(Placement.on(server), opts, opts.bg_jobs)
    if mode == "fg16":
        return measure_fg(server, opts, opts.fg_jobs)
    if mode == "fg16-flood":
        return measure_fg(server, opts, opts.fg_jobs, label="flood", flood=opts.bg_jobs)
    if mode == "idle":
        return measure_idle(server, opts)
    if mode == "rss-queue":
        return measure_rss_queue(server, opts)
    if mode == "rss-idle":
        return measure_rss_idle(server, opts)
    raise ValueError(mode)


def describe(entry: object) -> str:
    """A measurement in a few words, for the progress lines."""
    if isinstance(entry, Throughput):
        return f"{entry.rate:,.0f} jobs/s"
    if isinstance(entry, tuple):
        return " / ".join(describe(e) for e in entry)
    if isinstance(entry, Memory):
        return f"{entry.rss_kib / 1024:,.1f} MiB"
    return "failed"


# --- tables -----------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def summarize(runs: Sequence[Throughput]) -> dict[str, float]:
    """Medians over repeats."""
    return {
        "rate": median([r.rate for r in runs]),
        "min": min(r.rate for r in runs),
        "max": max(r.rate for r in runs),
        "p50": median([r.p50 for r in runs]),
        "p99": median([r.p99 for r in runs]),
        "server_cpu": median([r.server_cpu / r.jobs * 10_000 for r in runs]),
        "loadgen_cpu": median([r.loadgen_cpu / r.jobs * 10_000 for r in runs]),
        "server_cores": median([r.server_cpu / r.seconds for r in runs]),
        "server_sys": median([r.server_sys / r.server_cpu for r in runs if r.server_cpu]),
        "softirq": median([r.softirq / r.seconds for r in runs]),
        "others": median([r.others for r in runs]),
        "db_cpu": median([r.db_cpu / r.jobs * 10_000 for r in runs]),
        "db_cores": median([r.db_cpu / r.seconds for r in runs]),
    }


def ratio(value: float, reference: float) -> str:
    """``value / reference`` as ``1.23x``, a dash where either is missing."""
    if not reference or value != value or reference != reference:
        return "-"
    return f"{value / reference:.2f}x"


def throughput_rows(
    results: Results, servers: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """mode -> server -> summary, for the throughput modes (idle split in two)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for mode in ("bg", "fg16", "fg16-flood", "idle"):
        for name in servers:
            entries = [e for e in results.get(mode, {}).get(name, []) if e is not None]
            if not entries:
                continue
            if mode == "idle":
                table.setdefault("fg16, no idle", {})[name] = summarize([e[0] for e in entries])
                label = "fg16, idle connections open"
                table.setdefault(label, {})[name] = summarize([e[1] for e in entries])
            else:
                table.setdefault(mode, {})[name] = summarize(entries)
    return table


def format_tables(results: Results, servers: Sequence[str], opts: Options) -> str:
    """Every result as markdown tables."""
    lines: list[str] = []
    out = lines.append
    rows = throughput_rows(results, servers)
    if rows:
        out(
            "| mode | server | jobs/s (min-max) | / gearmand-t4 | p50 ms | p99 ms "
            "| server CPU-s / 10k jobs | in kernel | server cores | load gen CPU-s / 10k jobs "
            "| softirq, cores | other load, cores |"
        )
        out("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode, by_server in rows.items():
            reference = by_server.get(REFERENCE, {}).get("rate", float("nan"))
            for name, s in by_server.items():
                out(
                    f"| {mode} | {name} | {s['rate']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f}) "
                    f"| {ratio(s['rate'], reference)} "
                    f"| {s['p50'] * 1e3:.2f} | {s['p99'] * 1e3:.2f} "
                    f"| {s['server_cpu']:.3f} | {s['server_sys']:.0%} | {s['server_cores']:.2f} "
                    f"| {s['loadgen_cpu']:.3f} "
                    f"| {s['softirq']:.2f} | {s['others']:.2f} |"
                )
        out("")
    idle = results.get("idle", {})
    if idle:
        out(
            f"| server | fg16 jobs/s, no idle | with {opts.idle_conns:,} idle "
            "| with / without (median of the runs' ratios) |"
        )
        out("|---|---:|---:|---:|")
        for name in servers:
            entries = [e for e in idle.get(name, []) if e is not None]
            if entries:
                a = median([e[0].rate for e in entries])
                b = median([e[1].rate for e in entries])
                change = median([e[1].rate / e[0].rate for e in entries])
                out(f"| {name} | {a:,.0f} | {b:,.0f} | {change:.2f}x |")
        out("")
    memory = [
        (m, unit) for m, unit in (("rss-queue", "B/job"), ("rss-idle", "KiB/conn")) if m in results
    ]
    if memory:
        out("| mode | server | count | RSS growth, MiB | per item | / gearmand-t4 | fill time, s |")
        out("|---|---|---:|---:|---:|---:|---:|")
        for mode, unit in memory:
            memories: dict[str, Memory] = {
                name: entries[0]
                for name, entries in results[mode].items()
                if entries and entries[0] is not None
            }
            ref = memories.get(REFERENCE)
            for name in servers:
                m = memories.get(name)
                if m is None:
                    continue
                per = m.per_item / 1024 if unit == "KiB/conn" else m.per_item
                out(
                    f"| {mode} | {name} | {m.count:,} | {m.rss_kib / 1024:,.1f} "
                    f"| {per:,.1f} {unit} | {ratio(m.rss_kib, ref.rss_kib if ref else 0)} "
                    f"| {m.seconds:.1f} |"
                )
        out("")
    out(summary_table(results, servers, opts))
    return "\n".join(lines)


def summary_table(results: Results, servers: Sequence[str], opts: Options) -> str:
    """Ours against each gearmand, figure by figure, with the issue's targets."""
    if "ours" not in servers:
        return ""
    others = [s for s in servers if s != "ours"]
    rows = throughput_rows(results, servers)
    lines = [
        "| figure | ours | " + " | ".join(f"ours / {s}" for s in others) + " | target |",
        "|---|---:|" + "---:|" * len(others) + "---|",
    ]

    def add(label: str, ours: float, theirs: dict[str, float], fmt: str, target: str) -> None:
        cells = " | ".join(ratio(ours, theirs.get(s, float("nan"))) for s in others)
        lines.append(f"| {label} | {format(ours, fmt)} | {cells} | {target} |")

    for mode, target in (
        ("bg", "at least 0.5x gearmand-t4"),
        ("fg16", "at least 0.5x gearmand-t4"),
        ("fg16-flood", ""),
    ):
        if mode in rows and "ours" in rows[mode]:
            by = rows[mode]
            add(
                f"{mode} jobs/s", by["ours"]["rate"], {s: by[s]["rate"] for s in by}, ",.0f", target
            )
            add(
                f"{mode} p99 ms",
                by["ours"]["p99"] * 1e3,
                {s: by[s]["p99"] * 1e3 for s in by},
                ".2f",
                "",
            )
            add(
                f"{mode} server CPU-s / 10k jobs",
                by["ours"]["server_cpu"],
                {s: by[s]["server_cpu"] for s in by},
                ".3f",
                "",
            )
    idle = [e for e in results.get("idle", {}).get("ours", []) if e is not None]
    if idle:
        change = median([e[1].rate / e[0].rate for e in idle])
        lines.append(
            f"| fg16 with {opts.idle_conns:,} idle / without | {change:.2f}x |"
            + " |" * len(others)
            + " within 10% (at least 0.90x) |"
        )
    memory = (
        ("rss-queue", "RSS growth, bytes per queued job", 1.0, ",.0f", "at most 2x gearmand"),
        ("rss-idle", "RSS growth, KiB per idle connection", 1 / 1024, ".1f", "at most 5 KiB"),
    )
    for mode, label, scale, fmt, target in memory:
        entries = {n: e[0] for n, e in results.get(mode, {}).items() if e and e[0] is not None}
        if "ours" in entries:
            per = {n: m.per_item * scale for n, m in entries.items()}
            add(f"{mode} {label}", per["ours"], per, fmt, target)
    return "\n".join(lines) + "\n"


# --- profiles -----------------------------------------------------------------------------------


def hot_spots(path: Path, top: int = 15) -> str:
    """Self and inclusive time per function from a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return f"{path.name}: no samples\n"
    lines = [
        f"{path.name}: {total:,} samples (busy only)",
        "",
        "| self % | function |",
        "|---:|---|",
    ]
    lines += [f"| {100 * n / total:.1f} | {f} |" for f, n in own.most_common(top)]
    lines += ["", "| inclusive % | function |", "|---:|---|"]
    lines += [f"| {100 * n / total:.1f} | {f} |" for f, n in inclusive.most_common(top + 10)]
    return "\n".join(lines) + "\n"


def _function(frame: str) -> str:
    """``name (path/to/file.py:12)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1] if where else ""
    return f"{name} ({file})" if file else name


# --- command line -------------------------------------------------------------------------------


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of how measurements are taken, shared with ``bench/cluster.py``:
    ``--timeout``, ``--max-other-load``, ``--retries`` and ``--json``."""
    add = parser.add_argument
    add(
        "--timeout",
        type=float,
        default=DEFAULTS.timeout,
        help="seconds one measurement may take (default %(default)s)",
    )
    add(
        "--max-other-load",
        type=float,
        default=DEFAULTS.max_other_load,
        metavar="CORES",
        help="take a measurement again when other work kept more than CORES cores busy "
        "during it (default %(default)s)",
    )
    add(
        "--retries",
        type=int,
        help="how many times at most (default 1; --quick 0); the least disturbed is kept",
    )
    add("--json", type=Path, metavar="FILE", help="also write every measurement to FILE")


def _names(known: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(known)}")
        return names

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; print the tables on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add = parser.add_argument
    add("--modes", type=_names(MODES), default=list(MODES), help=",".join(MODES))
    add(
        "--servers",
        type=_names(KNOWN_SERVERS),
        default=list(SERVERS),
        help=f"default {','.join(SERVERS)}; also {','.join(KNOWN_SERVERS[len(SERVERS) :])} "
        "(with a persistent queue; -postgres on a throw-away cluster unless "
        f"${POSTGRES_DSN_ENV} names one)",
    )
    add(
        "--jobs",
        type=int,
        help="jobs per bg, fg16 and idle run (default 150,000 for bg and "
        "50,000 for fg16 and idle; --quick 30,000 and 10,000)",
    )
    add("--repeats", type=int, help="runs of bg, fg16 and idle per server (default 3; --quick 1)")
    add("--queue-jobs", type=int, help="jobs queued by rss-queue (default 1,000,000)")
    add("--idle-conns", type=int, help="idle connections of idle and rss-idle (default 5,000)")
    add("--quick", action="store_true", help="a short smoke run (about 30 s)")
    add(
        "--gearmand-buckets",
        type=int,
        default=DEFAULTS.gearmand_buckets,
        help="rss-queue: gearmand's --hashtable-buckets (default %(default)s; 0: its own "
        "default of 991, which takes minutes for 1,000,000 jobs)",
    )
    add(
        "--max-backlog",
        type=int,
        default=DEFAULTS.max_backlog,
        help="bg: jobs queued at most (default %(default)s; 0: no limit)",
    )
    add(
        "--bg-grabs",
        type=int,
        default=DEFAULTS.bg_grabs,
        help="bg: GRAB_JOB_UNIQ in flight per worker (default %(default)s)",
    )
    add(
        "--fg-grabs",
        type=int,
        default=DEFAULTS.fg_grabs,
        help="fg16: GRAB_JOB_UNIQ in flight per worker (default %(default)s)",
    )
    add(
        "--fg-inflight",
        type=int,
        default=DEFAULTS.fg_inflight,
        help="fg16: jobs in flight per client (default %(default)s)",
    )
    add_run_options(parser)
    add(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record our server with py-spy during bg and fg16 into DIR, print hot spots "
        "(slows it down: its figures are not comparable)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    opts = Options(
        bg_jobs=args.jobs or (30_000 if quick else DEFAULTS.bg_jobs),
        fg_jobs=args.jobs or (10_000 if quick else DEFAULTS.fg_jobs),
        queue_jobs=args.queue_jobs or (100_000 if quick else DEFAULTS.queue_jobs),
        idle_conns=args.idle_conns or (1_000 if quick else DEFAULTS.idle_conns),
        gearmand_buckets=args.gearmand_buckets,
        max_backlog=args.max_backlog,
        bg_grabs=args.bg_grabs,
        fg_grabs=args.fg_grabs,
        fg_inflight=args.fg_inflight,
        timeout=args.timeout,
        max_other_load=args.max_other_load,
        retries=args.retries if args.retries is not None else (0 if quick else DEFAULTS.retries),
        settle=1.0 if quick else DEFAULTS.settle,
        profile=args.profile,
    )
    repeats = args.repeats or (1 if quick else 3)
    if opts.profile is not None:
        if shutil.which("py-spy") is None:
            print("--profile needs py-spy (pip install py-spy)", file=sys.stderr)
            return 1
        opts.profile.mkdir(parents=True, exist_ok=True)
    limit = raise_fd_limit(opts.idle_conns + 1024)
    if limit < opts.idle_conns + 100:
        print(
            f"open-file limit {limit} is too low for {opts.idle_conns} idle connections",
            file=sys.stderr,
        )
        return 1
    started = time.perf_counter()
    header = (
        f"Run {datetime.datetime.now().isoformat(timespec='seconds')}: {machine()}; "
        f"load average {os.getloadavg()[0]:.2f} at start. "
        f"Command: python bench/server.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    )
    print(header, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        if any(name.endswith("-postgres") for name in args.servers):
            opts.db_pid = stack.enter_context(postgres_database()).pid
        results = run(args.modes, args.servers, opts, repeats)
    print(f"\n{header}")
    print(
        f"Jobs per run: bg {opts.bg_jobs:,}, fg16 {opts.fg_jobs:,}; "
        f"repeats: {repeats} (medians shown); "
        f"rss-queue: {opts.queue_jobs:,} jobs; idle connections: {opts.idle_conns:,}; "
        f"wall time {time.perf_counter() - started:.0f} s.\n"
    )
    print(disturbance(results, opts) + "\n")
    print(format_tables(results, args.servers, opts))
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(results), indent=1))
    if opts.profile is not None:
        for path in sorted(opts.profile.glob("*/ours-*.txt")):
            print(f"{path.parent.name}: ", end="")
            print(hot_spots(path))
    return 0


def to_json(results: Results) -> dict[str, Any]:
    """The results as plain JSON data (one entry per repeat)."""

    def plain(entry: object) -> object:
        if isinstance(entry, tuple):
            return [plain(e) for e in entry]
        if isinstance(entry, Throughput | Memory):
            return attrs.asdict(entry)
        return entry

    return {
        m: {s: [plain(e) for e in entries] for s, entries in by.items()}
        for m, by in results.items()
    }


if __name__ == "__main__":
    sys.exit(main())
