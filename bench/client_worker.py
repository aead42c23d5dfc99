"""Jobs per second of trio_gearman's Client and Worker, side by side with C, gear and gearman3.

Every measurement starts ``gearmand -t 4`` fresh on a free loopback port and runs
foreground jobs (16 B payloads, no-op workers) with 16 jobs in flight:

* ``clients``: a client of each library against the same no-op C workers (the
  shared load generator's ``--mode worker``, 4 threads): the C client (libgearman,
  one thread per job in flight), gear (16 threads; ``submitJob`` blocks until
  JOB_CREATED), gearman3 (one poll loop, a window of 16 requests) and ours (one
  Trio process, 16 tasks);
* ``workers``: the C client with 16 jobs in flight against the workers of each
  library: C (4 threads, one process), gear (4 processes), gearman3 (16 processes),
  ours (one process, concurrency 16). The peers' process counts are the better of 4
  and 16 in a trial here;
* ``both`` (only when asked for): our client against our worker.

Each measurement warms up (``--warmup`` seconds under the same load), then counts
the jobs completed in ``--seconds``; jobs/s and the CPU-seconds per 10,000 jobs of
the measured side's process(es) (utime + stime from ``/proc``, every thread and
child) are reported. The setups are interleaved, their order rotated in each of
``--repeats`` repeats, and the medians are reported with ratios to the targets.

gear and gearman3 run in a virtual environment of their own (``--venv``, created
with ``python -m venv`` + pip on first use); see ``_peers.py``.

Usage::

    python bench/client_worker.py                        # everything, 3 repeats
    python bench/client_worker.py --mode clients --seconds 10 --repeats 5
    python bench/client_worker.py --only ours --mode workers --profile worker
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from _loadgen_servers import tree_cpu_seconds
from _peers import DEFAULT_VENV, ensure_venv

from trio_gearman._client.client import Client
from trio_gearman._worker.job import Job
from trio_gearman._worker.worker import Worker

HOST = "127.0.0.1"
FUNCTION = "bench_noop"
PAYLOAD = b"0123456789abcdef"
DEFAULT_LOADGEN = "/tmp/gmbench-home/build/loadgen"
PEERS = Path(__file__).with_name("_peers.py")
LIBS = ("C", "gear", "gearman3", "ours")
C_WORKER_THREADS = 4
PEER_WORKER_PROCS = {"gear": 4, "gearman3": 16}

Results = dict[tuple[str, str], list[dict[str, float]]]


# --- measuring ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def gearmand(threads: int) -> Iterator[int]:
    port = free_port()
    binary = shutil.which("gearmand") or "/usr/sbin/gearmand"
    # A pid file of its own: gearmand deletes it when it exits.
    pid_file = Path(tempfile.mkdtemp(prefix="bench-gearmand-")) / "gearmand.pid"
    argv = [binary, "-L", HOST, "-p", str(port), "-l", "none", "-P", str(pid_file)]
    proc = subprocess.Popen([*argv, "-t", str(threads)], stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.1):
                break
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(pid_file.parent, ignore_errors=True)


def admin_workers(port: int, function: str) -> int:
    with socket.create_connection((HOST, port), 2) as sock:
        sock.sendall(b"status\n")
        data = b""
        while not data.endswith(b".\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    for line in data.decode().splitlines():
        parts = line.split("\t")
        if parts[0] == function and len(parts) == 4:
            return int(parts[3])
    return 0


def wait_workers(port: int, count: int) -> None:
    deadline = time.monotonic() + 20
    while admin_workers(port, FUNCTION) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not register")
        time.sleep(0.05)


# --- our client and worker, each run in a process of its own -----------------------------


async def role_client(
    port: int, concurrency: int, warmup: float, seconds: float, profile: bool
) -> None:
    done = 0
    start: tuple[float, float, int] | None = None
    profiler = cProfile.Profile() if profile else None
    async with Client([f"{HOST}:{port}"]) as client:
        warm_until = trio.current_time() + warmup
        stop_at = warm_until + seconds

        async def loop() -> None:
            nonlocal done, start
            while (now := trio.current_time()) < stop_at:
                if start is None and now >= warm_until:
                    start = (time.perf_counter(), time.process_time(), done)
                    if profiler:
                        profiler.enable()
                await client.submit(FUNCTION, PAYLOAD)
                done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(loop)
        if profiler:
            profiler.disable()
        assert start is not None
        wall, cpu = time.perf_counter() - start[0], time.process_time() - start[1]
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    print(json.dumps({"jobs": done - start[2], "seconds": wall, "cpu": cpu}), flush=True)


async def role_worker(port: int, concurrency: int, profile: bool) -> None:
    worker = Worker([f"{HOST}:{port}"], concurrency=concurrency)

    @worker.function(FUNCTION)
    async def noop(job: Job) -> bytes:
        return b""

    profiler = cProfile.Profile() if profile else None
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            if profiler:
                profiler.enable()
            async for _ in signals:
                worker.stop(1)
                break
    if profiler:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def spawn_ours(*args: str, profile: bool = False) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--role", *args]
    if profile:
        argv.append("--profile-role")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


# --- the setups --------------------------------------------------------------------------


class Bench:
    """Runs the measurements of one invocation."""

    def __init__(self, args: argparse.Namespace, python: str | None) -> None:
        self.args = args
        self.peer_python = python

    def loadgen(self, port: int, *extra: str) -> list[str]:
        argv = [self.args.loadgen, "--host", HOST, "--port", str(port)]
        return [*argv, "--function", FUNCTION, *extra]

    def c_client(self, port: int, seconds: float) -> dict[str, Any]:
        argv = self.loadgen(port, "--mode", "fg", "--workers", "0", "--jobs", "0")
        argv += ["--clients", str(self.args.concurrency), "--duration", str(seconds)]
        argv += ["--payload", str(len(PAYLOAD)), "--timeout", "60"]
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"load generator failed: {run.stdout} {run.stderr}")
        result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
        return result

    def start_workers(self, port: int, lib: str) -> tuple[list[subprocess.Popen[str]], str]:
        args = self.args
        if lib == "C":
            argv = self.loadgen(port, "--mode", "worker", "--workers", str(C_WORKER_THREADS))
            argv += ["--duration", "600", "--grab", "uniq", "--no-wait-workers"]
            procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, text=True)]
            count, label = C_WORKER_THREADS, f"{C_WORKER_THREADS} threads"
        elif lib == "ours":
            procs = [
                spawn_ours(
                    "worker",
                    str(port),
                    str(args.worker_concurrency),
                    profile=args.profile == "worker" and i == 0,
                )
                for i in range(args.procs)
            ]
            count = args.procs
            label = f"{args.procs} process(es), concurrency {args.worker_concurrency}"
        else:
            assert self.peer_python
            count = PEER_WORKER_PROCS[lib]
            argv = [self.peer_python, str(PEERS), "worker", lib, str(port), str(count)]
            procs = [subprocess.Popen(argv, text=True)]
            label = f"{count} processes"
        wait_workers(port, count)
        return procs, label

    def client(self, lib: str, port: int) -> dict[str, float]:
        args = self.args
        if lib == "C":
            self.c_client(port, args.warmup)
            c_result = self.c_client(port, args.seconds)
            jobs, seconds = c_result["jobs"], c_result["elapsed_s"]
            return {"jobs": jobs, "seconds": seconds, "cpu": c_result["loadgen_cpu_s"]}
        timing = [str(port), str(args.concurrency), str(args.warmup), str(args.seconds)]
        if lib == "ours":
            proc = spawn_ours("client", *timing, profile=args.profile == "client")
        else:
            assert self.peer_python
            argv = [self.peer_python, str(PEERS), "client", lib, *timing]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        out, _ = proc.communicate(timeout=args.warmup + args.seconds + 120)
        if proc.returncode:
            raise RuntimeError(f"{lib} client failed ({proc.returncode})")
        result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return result

    def measure_client(self, lib: str, worker_lib: str = "C") -> dict[str, float]:
        with gearmand(self.args.threads) as port:
            workers, _ = self.start_workers(port, worker_lib)
            try:
                result = self.client(lib, port)
            finally:
                stop(workers)
        return {
            "jobs_per_s": result["jobs"] / result["seconds"],
            "cpu_per_10k": result["cpu"] / result["jobs"] * 1e4,
        }

    def measure_worker(self, lib: str) -> dict[str, float]:
        with gearmand(self.args.threads) as port:
            workers, _ = self.start_workers(port, lib)
            try:
                self.c_client(port, self.args.warmup)
                cpu0 = sum(tree_cpu_seconds(w.pid) for w in workers)
                result = self.c_client(port, self.args.seconds)
                cpu = sum(tree_cpu_seconds(w.pid) for w in workers) - cpu0
            finally:
                stop(workers)
        return {"jobs_per_s": result["jobs_per_s"], "cpu_per_10k": cpu / result["jobs"] * 1e4}


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)


def setup_label(kind: str, lib: str, args: argparse.Namespace) -> str:
    c = args.concurrency
    if kind == "client":
        what = {"C": f"C client c{c} ({c} threads)", "gear": f"gear client c{c} ({c} threads)"}
        return what.get(lib, f"{lib} client c{c}") + f" / C workers ({C_WORKER_THREADS} threads)"
    if kind == "both":
        return f"ours client c{c} / ours worker x{args.procs}"
    if lib == "C":
        procs = f"{C_WORKER_THREADS} threads"
    elif lib == "ours":
        procs = f"x{args.procs}, concurrency {args.worker_concurrency}"
    else:
        procs = f"{PEER_WORKER_PROCS[lib]} processes"
    return f"C client c{c} / {lib} worker ({procs})"


def report(results: Results, args: argparse.Namespace) -> None:
    medians: dict[tuple[str, str], tuple[float, float]] = {}
    print(f"\n{'setup':<58} {'jobs/s':>9} {'CPU-s/10k':>10}   runs (jobs/s)")
    for key, runs in results.items():
        rate = statistics.median(r["jobs_per_s"] for r in runs)
        cpu = statistics.median(r["cpu_per_10k"] for r in runs)
        medians[key] = (rate, cpu)
        each = " ".join(f"{r['jobs_per_s']:,.0f}" for r in runs)
        print(f"{setup_label(*key, args):<58} {rate:>9,.0f} {cpu:>10.3f}   {each}")
    targets = [
        ("client", "ours", "client", "gearman3", "our client ÷ gearman3 client (target >= 1)"),
        ("client", "ours", "client", "C", "our client ÷ C client (aim 1)"),
        ("client", "ours", "client", "gear", "our client ÷ gear client"),
        ("worker", "ours", "worker", "gear", "our worker ÷ gear worker (target >= 1.5)"),
        ("worker", "ours", "worker", "gearman3", "our worker ÷ gearman3 worker"),
        ("worker", "ours", "worker", "C", "our worker ÷ C worker"),
    ]
    print()
    for kind, ours, peer_kind, peer, text in targets:
        if (kind, ours) in medians and (peer_kind, peer) in medians:
            ratio = medians[kind, ours][0] / medians[peer_kind, peer][0]
            print(f"{text}: {ratio:.2f}")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["clients", "workers", "both", "all"], default="all")
    parser.add_argument("--only", default=",".join(LIBS), help="libraries, e.g. ours,gear")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured time")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16, help="foreground jobs in flight")
    parser.add_argument("--procs", type=int, default=1, help="processes of our worker")
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4, help="gearmand -t")
    parser.add_argument("--loadgen", default=DEFAULT_LOADGEN, help="the C load generator")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv of gear, gearman3")
    parser.add_argument("--json", type=Path, help="write every measurement there")
    parser.add_argument("--profile", choices=["client", "worker"], help="cProfile ours")
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--profile-role", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        role, port, *rest = args.role
        if role == "client":
            timing = int(rest[0]), float(rest[1]), float(rest[2])
            trio.run(role_client, int(port), *timing, args.profile_role)
        else:
            trio.run(role_worker, int(port), int(rest[0]), args.profile_role)
        return

    if not os.access(args.loadgen, os.X_OK):
        sys.exit(f"{args.loadgen} not found: build it with /work/shared/bench/build.sh")
    libs = [lib for lib in LIBS if lib in args.only.split(",")]
    python = ensure_venv(args.venv) if {"gear", "gearman3"} & set(libs) else None
    bench = Bench(args, python)
    kinds = {"clients": ["client"], "workers": ["worker"], "both": ["both"]}
    setups = [
        (kind, lib)
        for kind in kinds.get(args.mode, ["client", "worker"])
        for lib in (["ours"] if kind == "both" else libs)
    ]
    results: Results = {key: [] for key in setups}
    print(f"# {len(os.sched_getaffinity(0))} CPUs, load average {loadavg()}", flush=True)
    for repeat in range(args.repeats):
        shift = repeat % len(setups)
        for kind, lib in setups[shift:] + setups[:shift]:
            if kind == "client":
                result = bench.measure_client(lib)
            elif kind == "worker":
                result = bench.measure_worker(lib)
            else:
                result = bench.measure_client("ours", worker_lib="ours")
            results[kind, lib].append(result)
            print(
                f"{setup_label(kind, lib, args)}: {result['jobs_per_s']:,.0f} jobs/s, "
                f"{result['cpu_per_10k']:.3f} CPU-s/10k jobs",
                flush=True,
            )
    print(f"# load average {loadavg()}")
    report(results, args)
    if args.json:
        rows = [{"kind": k, "lib": lib, "runs": runs} for (k, lib), runs in results.items()]
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
