"""Jobs per second of trio_gearman's Client and Worker through gearmand.

Starts ``gearmand -t 4`` on a free loopback port and measures foreground jobs
(16 B payloads, no-op workers) in three setups:

* ``client``: our Client, one process, ``--concurrency`` jobs in flight, against
  no-op workers written in C (the shared load generator's ``--mode worker``, when
  ``--loadgen`` points at it) or else our own workers;
* ``worker``: our Worker in ``--procs`` processes, driven by ``--concurrency``
  foreground jobs of the C load generator (or else our own client);
* ``both``: our client against our workers.

For each it prints jobs/s and the CPU-seconds per 10,000 jobs of our process(es),
measured from ``/proc`` around the timed section.

Usage::

    python bench/client_worker.py                       # all three, 5 s each
    python bench/client_worker.py --mode client --seconds 10 --loadgen /path/loadgen
    python bench/client_worker.py --profile client      # cProfile our client's hot path
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
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from trio_gearman._client import Client
from trio_gearman._job import Job
from trio_gearman._worker import Worker

HOST = "127.0.0.1"
FUNCTION = "bench_noop"
PAYLOAD = b"0123456789abcdef"
DEFAULT_LOADGEN = "/tmp/gmbench-home/build/loadgen"


# --- measuring ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


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


# --- the roles, each run in a process of its own ----------------------------------------


async def role_client(port: int, concurrency: int, seconds: float, profile: bool) -> None:
    done = 0
    async with Client([f"{HOST}:{port}"]) as client:
        # warm up, then measure a fixed window
        for _ in range(200):
            await client.submit(FUNCTION, PAYLOAD)
        stop_at = trio.current_time() + seconds
        cpu0, t0 = time.process_time(), time.perf_counter()
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()

        async def loop() -> None:
            nonlocal done
            while trio.current_time() < stop_at:
                await client.submit(FUNCTION, PAYLOAD)
                done += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(loop)
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if profiler:
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    print(json.dumps({"jobs": done, "seconds": wall, "cpu": cpu}), flush=True)


async def role_worker(port: int, concurrency: int, profile: bool) -> None:
    worker = Worker([f"{HOST}:{port}"], concurrency=concurrency)
    done = 0

    @worker.function(FUNCTION)
    async def noop(job: Job) -> bytes:
        nonlocal done
        done += 1
        return job.data

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
    print(json.dumps({"jobs": done}), flush=True)


# --- the setups --------------------------------------------------------------------------


def spawn(*args: str, profile: bool = False) -> subprocess.Popen[str]:
    argv = [sys.executable, __file__, "--role", *args]
    if profile:
        argv.append("--profile-role")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def start_workers(
    port: int, ours: bool, procs: int, concurrency: int, loadgen: str | None, profile: bool
) -> list[subprocess.Popen[str]]:
    if ours or loadgen is None:
        workers = [
            spawn("worker", str(port), str(concurrency), profile=profile and i == 0)
            for i in range(procs)
        ]
    else:
        argv = [loadgen, "--mode", "worker", "--host", HOST, "--port", str(port)]
        argv += ["--workers", "4", "--function", FUNCTION, "--duration", "600"]
        argv += ["--grab", "uniq", "--no-wait-workers"]
        workers = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, text=True)]
        procs = 4
    wait_workers(port, procs)
    return workers


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(timeout=30)


def run_client(args: argparse.Namespace, ours_worker: bool) -> dict[str, Any]:
    with gearmand(args.threads) as port:
        workers = start_workers(
            port, ours_worker, args.procs, args.worker_concurrency, args.loadgen, False
        )
        try:
            client = spawn(
                "client",
                str(port),
                str(args.concurrency),
                str(args.seconds),
                profile=args.profile == "client",
            )
            out, _ = client.communicate(timeout=args.seconds + 60)
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        finally:
            stop(workers)
    jobs = result["jobs"]
    return {
        "jobs_per_s": jobs / result["seconds"],
        "client_cpu_s_per_10k": result["cpu"] / jobs * 1e4,
    }


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    with gearmand(args.threads) as port:
        workers = start_workers(
            port, True, args.procs, args.worker_concurrency, None, args.profile == "worker"
        )
        try:
            pids = [w.pid for w in workers]
            cpu0 = sum(cpu_seconds(pid) for pid in pids)
            t0 = time.perf_counter()
            if args.loadgen:
                argv = [args.loadgen, "--mode", "fg", "--host", HOST, "--port", str(port)]
                argv += ["--workers", "0", "--clients", str(args.concurrency), "--jobs", "0"]
                argv += ["--duration", str(args.seconds), "--function", FUNCTION]
                argv += ["--payload", str(len(PAYLOAD)), "--timeout", "30"]
                run = subprocess.run(argv, capture_output=True, text=True)
                if run.returncode:
                    raise RuntimeError(f"load generator failed: {run.stdout} {run.stderr}")
                out = run.stdout
                jobs = json.loads(out.strip().splitlines()[-1])["jobs"]
            else:
                client = spawn("client", str(port), str(args.concurrency), str(args.seconds))
                out, _ = client.communicate(timeout=args.seconds + 60)
                jobs = json.loads(out.strip().splitlines()[-1])["jobs"] + 200
            wall = time.perf_counter() - t0
            cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
        finally:
            stop(workers)
    return {"jobs_per_s": jobs / wall, "worker_cpu_s_per_10k": cpu / jobs * 1e4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["client", "worker", "both", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16, help="foreground jobs in flight")
    parser.add_argument("--procs", type=int, default=1, help="worker processes of ours")
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--threads", type=int, default=4, help="gearmand -t")
    parser.add_argument("--loadgen", default=DEFAULT_LOADGEN, help="the C load generator")
    parser.add_argument("--profile", choices=["client", "worker"])
    parser.add_argument("--role", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--profile-role", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        role, port, *rest = args.role
        if role == "client":
            trio.run(role_client, int(port), int(rest[0]), float(rest[1]), args.profile_role)
        else:
            trio.run(role_worker, int(port), int(rest[0]), args.profile_role)
        return

    if args.loadgen and not os.access(args.loadgen, os.X_OK):
        print(f"# {args.loadgen} not found: our own client/worker drive the load", flush=True)
        args.loadgen = None
    setups = ["client", "worker", "both"] if args.mode == "all" else [args.mode]
    for setup in setups:
        if setup == "client":
            peer = "C workers (4 threads)" if args.loadgen else f"{args.procs} worker proc(s)"
            result = run_client(args, ours_worker=False)
            label = f"our client c{args.concurrency} / {peer}"
        elif setup == "worker":
            peer = f"C client c{args.concurrency}" if args.loadgen else "our client"
            result = run_worker(args)
            label = f"our worker x{args.procs} (concurrency {args.worker_concurrency}) / {peer}"
        else:
            result = run_client(args, ours_worker=True)
            label = f"our client c{args.concurrency} / our worker x{args.procs}"
        figures = ", ".join(f"{key} {value:,.2f}" for key, value in result.items())
        print(f"{label}: {figures}", flush=True)


if __name__ == "__main__":
    main()
