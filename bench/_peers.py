"""Peer Gearman libraries (gear, gearman3) as clients and workers, for client_worker.py.

Run with the interpreter of a dedicated virtual environment that has ``gear`` and
``gearman3`` installed (:func:`ensure_venv` creates it); they are measuring peers,
never dependencies of the project, so they are imported only when this file runs
as a script. Importing the module itself needs only the standard library.

Roles::

    python _peers.py client gear PORT CONCURRENCY WARMUP SECONDS [THREADS]
    python _peers.py client gearman3 PORT CONCURRENCY WARMUP SECONDS
    python _peers.py worker gear|gearman3 PORT PROCS

A client keeps CONCURRENCY foreground jobs in flight, warms up for WARMUP seconds,
then counts the jobs completed in the next SECONDS (plus the drain of the last ones)
and prints one JSON line: jobs, seconds, cpu (this process, every thread). A worker
forks PROCS no-op worker processes and serves until SIGTERM.

Two adjustments, both outside the measured libraries' logic: gear leaves Nagle's
algorithm on, which stalls each WORK_COMPLETE behind a delayed ACK (about 40 ms per
job), so TCP_NODELAY is set on its sockets; gearman3 0.2.1 reads with
``array.fromstring``, removed in Python 3.9, so its socket read is given the
``frombytes`` equivalent.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

FUNCTION = "bench_noop"
PAYLOAD = b"0123456789abcdef"
DEFAULT_VENV = Path("/tmp/trio-gearman-bench-venv")
PEER_PACKAGES = ("gear", "gearman3")


def ensure_venv(venv: Path) -> str:
    """Return the interpreter of ``venv``, creating it with gear and gearman3 if needed.

    Args:
        venv: Directory of the virtual environment.

    Returns:
        The path of its ``python``.
    """
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import gear, gearman"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return str(python)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES]
    subprocess.run(pip, check=True)
    return str(python)


def _import(name: str) -> Any:
    return importlib.import_module(name)


# --- clients -----------------------------------------------------------------------------


class _Window:
    """Counts completions; marks the start and end of the measured window."""

    def __init__(self, warmup: float, seconds: float) -> None:
        self.lock = threading.Lock()
        self.done = 0
        self.warm_until = time.perf_counter() + warmup
        self.stop_at = self.warm_until + seconds
        self.start: tuple[float, float, int] | None = None

    def mark_start(self) -> None:
        """Record time, CPU and count at the end of the warm-up (once)."""
        with self.lock:
            if self.start is None:
                self.start = (time.perf_counter(), time.process_time(), self.done)

    def result(self) -> dict[str, float]:
        """The figures of the window, taken once every job has completed."""
        assert self.start is not None
        t0, cpu0, done0 = self.start
        return {
            "jobs": self.done - done0,
            "seconds": time.perf_counter() - t0,
            "cpu": time.process_time() - cpu0,
        }


def gear_client(port: int, concurrency: int, window: _Window, threads: int) -> dict[str, float]:
    """gear's Client: ``threads`` submitting threads keep ``concurrency`` jobs in flight.

    ``submitJob`` blocks until JOB_CREATED, so several threads submit; a semaphore of
    ``concurrency`` slots is released as each WORK_COMPLETE arrives (on gear's
    connection thread).
    """
    gear = _import("gear")
    _gear_nodelay(gear)
    slots = threading.Semaphore(concurrency)
    idle = threading.Condition(window.lock)
    inflight = [0]

    def finished() -> None:
        with idle:
            window.done += 1
            inflight[0] -= 1
            idle.notify_all()
        slots.release()

    base: Any = gear.Client

    class Client(base):  # type: ignore[misc]
        def handleWorkComplete(self, packet: Any) -> Any:
            job = super().handleWorkComplete(packet)
            finished()
            return job

        def handleWorkFail(self, packet: Any) -> Any:
            raise RuntimeError("job failed")

    client = Client("bench-client")
    client.addServer("127.0.0.1", port)
    client.waitForServer()

    def submitter() -> None:
        while True:
            slots.acquire()
            now = time.perf_counter()
            if now >= window.stop_at:
                slots.release()
                return
            if now >= window.warm_until:
                window.mark_start()
            with idle:
                inflight[0] += 1
            client.submitJob(gear.Job(FUNCTION, PAYLOAD))

    workers = [threading.Thread(target=submitter, daemon=True) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    with idle:
        while inflight[0]:
            idle.wait(1)
    result = window.result()
    client.shutdown()
    return result


def _gear_nodelay(gear: Any) -> None:
    connect = gear.Connection.connect

    def connect_nodelay(self: Any) -> None:
        connect(self)
        self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    gear.Connection.connect = connect_nodelay


def gearman3_client(port: int, concurrency: int, window: _Window) -> dict[str, float]:
    """gearman3's GearmanClient: one poll loop, a completed request replaced at once.

    ``submit_multiple_jobs`` waits for a whole batch, so the window of ``concurrency``
    requests is kept full with the building blocks it is made of
    (``_create_request_from_dictionary`` + ``send_job_request``) and
    ``poll_connections_until_stopped``.
    """
    gearman = _import("gearman")
    _gearman3_compat(_import("gearman.connection"))
    complete = _import("gearman.constants").JOB_COMPLETE
    client = gearman.GearmanClient([f"127.0.0.1:{port}"])
    client.establish_connection(client.connection_list[0])
    info = {"task": FUNCTION, "data": PAYLOAD, "unique": None}

    def submit() -> Any:
        request = client._create_request_from_dictionary(info)
        client.send_job_request(request)
        return request

    requests = [submit() for _ in range(concurrency)]

    def after_poll(_activity: bool) -> bool:
        now = time.perf_counter()
        if now >= window.warm_until:
            window.mark_start()
        live = 0
        for i, request in enumerate(requests):
            if request is None:
                continue
            if request.complete:
                if request.state != complete:
                    raise RuntimeError("job failed")
                window.done += 1
                requests[i] = request = submit() if now < window.stop_at else None
            live += request is not None
        return live > 0

    client.poll_connections_until_stopped(client.connection_list, after_poll, timeout=600)
    return window.result()


def _gearman3_compat(connection_module: Any) -> None:
    def read_data_from_socket(self: Any, bytes_to_read: int = 4096) -> int:
        if not self.connected:
            self.throw_exception(message="disconnected")
        try:
            data = self.gearman_socket.recv(bytes_to_read)
        except OSError as exc:
            self.throw_exception(exception=exc)
        if not data:
            self.throw_exception(message="remote disconnected")
        self._incoming_buffer.frombytes(data)
        return len(self._incoming_buffer)

    connection_module.GearmanConnection.read_data_from_socket = read_data_from_socket


# --- workers -----------------------------------------------------------------------------


def gear_worker(port: int) -> None:
    """One gear Worker: GRAB, no-op, WORK_COMPLETE, until killed."""
    gear = _import("gear")
    _gear_nodelay(gear)
    worker = gear.Worker(f"bench-worker-{os.getpid()}")
    worker.addServer("127.0.0.1", port)
    worker.waitForServer()
    worker.registerFunction(FUNCTION)
    while True:
        worker.getJob().sendWorkComplete(b"")


def gearman3_worker(port: int) -> None:
    """One gearman3 GearmanWorker with a no-op task, until killed."""
    gearman = _import("gearman")
    _gearman3_compat(_import("gearman.connection"))
    worker = gearman.GearmanWorker([f"127.0.0.1:{port}"])
    # JOB_ASSIGN's function name arrives as bytes and is looked up as such.
    worker.register_task(FUNCTION.encode(), lambda _worker, _job: b"")
    worker.work(poll_timeout=1.0)


def serve_workers(lib: str, port: int, procs: int) -> None:
    """Fork ``procs`` workers of ``lib``; on SIGTERM, end them and return."""
    run = gear_worker if lib == "gear" else gearman3_worker
    children = []
    for _ in range(procs):
        pid = os.fork()
        if pid == 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            try:
                run(port)
            finally:
                os._exit(1)
        children.append(pid)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    for pid in children:
        os.kill(pid, signal.SIGTERM)
    for pid in children:
        os.waitpid(pid, 0)


def main(argv: list[str]) -> None:
    """Run one role (see the module docstring)."""
    role, lib, port = argv[0], argv[1], int(argv[2])
    if role == "worker":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        serve_workers(lib, port, int(argv[3]))
        return
    concurrency, warmup, seconds = int(argv[3]), float(argv[4]), float(argv[5])
    window = _Window(warmup, seconds)
    if lib == "gear":
        threads = int(argv[6]) if len(argv) > 6 else concurrency
        result = gear_client(port, concurrency, window, threads)
    else:
        result = gearman3_client(port, concurrency, window)
    print(json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
