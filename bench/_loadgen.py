"""The load generator's roles: raw-protocol clients and workers, each run in a child process.

Every role speaks the binary protocol over plain blocking sockets (TCP_NODELAY, big
receive buffers) and handles many packets per ``recv``: it is built to cost the
server's machine as little CPU per job as Python allows, so that the server is what
is measured. Packets are built with the project's codec (:func:`encode`) where they
are rare, and hand-packed on the hot path (SUBMIT_JOB*, WORK_COMPLETE), checked
against the codec once at import.

Times come from :func:`time.perf_counter` (``CLOCK_MONOTONIC`` on Linux, shared by
every process of the machine), so a submit time written into a job's payload by a
client can be compared with the time a worker receives it.
"""

from __future__ import annotations

import ctypes
import resource
import selectors
import socket
import struct
import time
from array import array
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Final

from trio_gearman._proto import (
    CanDo,
    GrabJobUniq,
    PreSleep,
    Priority,
    SubmitJob,
    WorkComplete,
    encode,
)

HOST: Final = "127.0.0.1"
RECV_SIZE: Final = 256 * 1024
SOCKET_BUFFER: Final = 1024 * 1024
UNIQUE_SIZE: Final = 36
PAYLOAD_SIZE: Final = 16

# Packet type numbers the roles read or hand-pack.
NOOP: Final = 6
SUBMIT_JOB: Final = 7
JOB_CREATED: Final = 8
NO_JOB: Final = 10
WORK_COMPLETE: Final = 13
SUBMIT_JOB_BG: Final = 18
ERROR: Final = 19
JOB_ASSIGN_UNIQ: Final = 31

_HEADER: Final = struct.Struct(">4sII")
_TYPE_SIZE: Final = struct.Struct(">II")  # a header's type and size, after the magic
_TIME: Final = struct.Struct("<d")
_REQ: Final = b"\0REQ"

GRAB: Final = encode(GrabJobUniq())
SLEEP: Final = encode(PreSleep())

SharedInts = ctypes.Array[ctypes.c_longlong]
"""A RawArray of counters shared with the parent (no lock: one writer per slot)."""
SharedFloats = ctypes.Array[ctypes.c_double]


class LoadError(RuntimeError):
    """The server answered something a role cannot go on from (an ERROR, a closed socket)."""


# --- packets --------------------------------------------------------------------------------


def unique(client: int, seq: int) -> bytes:
    """A distinct 36-byte unique key, shaped like a UUID (as libgearman sends)."""
    return b"%08x-0000-4000-8000-%012x" % (client, seq)


def submit_prefix(function: bytes, background: bool) -> bytes:
    """Header and function of a SUBMIT_JOB(_BG) with a 36-byte unique and 16-byte payload.

    The body's size is fixed, so the 12-byte header is too: a submit is this prefix,
    the unique, a NUL and the payload.
    """
    ptype = SUBMIT_JOB_BG if background else SUBMIT_JOB
    size = len(function) + 1 + UNIQUE_SIZE + 1 + PAYLOAD_SIZE
    return _HEADER.pack(_REQ, ptype, size) + function + b"\0"


def payload(now: float) -> bytes:
    """A 16-byte payload carrying the submit time (read back by the workers)."""
    return _TIME.pack(now) + b"payload!"


def work_complete(handle: bytes) -> bytes:
    """WORK_COMPLETE for ``handle`` with an empty result."""
    return _HEADER.pack(_REQ, WORK_COMPLETE, len(handle) + 1) + handle + b"\0"


def _check_against_codec() -> None:
    """The hand-packed packets are byte for byte what the codec encodes."""
    fn, uq, data = b"bench_noop", unique(1, 2), payload(0.5)
    for background in (False, True):
        mine = submit_prefix(fn, background) + uq + b"\0" + data
        codec = encode(SubmitJob(fn, uq, data, Priority.NORMAL, background))
        assert mine == codec, (mine, codec)
    assert work_complete(b"H:x:1") == encode(WorkComplete(b"H:x:1", b""))


_check_against_codec()


def server_error(buf: bytes, start: int, stop: int) -> LoadError:
    """The error to raise for an ERROR packet whose body is ``buf[start:stop]``."""
    code, _, text = buf[start:stop].partition(b"\0")
    return LoadError(f"server sent ERROR {code.decode(errors='replace')}: {text!r}")


# --- sockets and measuring -------------------------------------------------------------------


def connect(port: int) -> socket.socket:
    """A blocking loopback connection tuned for many small packets."""
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    sock.settimeout(None)
    return sock


def own_cpu() -> float:
    """CPU-seconds (user + system) this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receive(sock: socket.socket) -> bytes:
    """Whatever the socket has (up to 256 KiB), waiting for at least one byte.

    Raises:
        LoadError: the server closed the connection.
    """
    data = sock.recv(RECV_SIZE)
    if not data:
        raise LoadError("the server closed the connection")
    return data


# --- workers ----------------------------------------------------------------------------------


class NoopWorker:
    """One worker connection: GRAB_JOB_UNIQ ``grabs`` at a time, WORK_COMPLETE at once.

    When every grab in flight came back NO_JOB it sends PRE_SLEEP, and on NOOP it
    grabs again (as libgearman does, with several grabs in flight).
    """

    __slots__ = (
        "buf",
        "done",
        "grabs",
        "last",
        "latencies",
        "no_jobs",
        "noops",
        "outstanding",
        "sleeping",
        "sock",
    )

    def __init__(self, port: int, function: bytes, grabs: int, measure: bool) -> None:
        self.sock = connect(port)
        self.grabs = grabs
        self.buf = b""
        self.done = 0
        self.last = 0.0
        self.outstanding = grabs
        self.sleeping = False
        self.no_jobs = 0
        self.noops = 0
        self.latencies: array[float] | None = array("d") if measure else None
        self.sock.sendall(encode(CanDo(function)) + GRAB * grabs)

    def on_data(self, data: bytes) -> None:
        """Handle every complete packet received; send the replies in one go."""
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        out: list[bytes] = []
        now = time.perf_counter()
        unpack = _TYPE_SIZE.unpack_from
        latencies = self.latencies
        assigned = 0
        while end - pos >= 12:
            ptype, size = unpack(buf, pos + 4)
            start = pos + 12
            stop = start + size
            if stop > end:
                break
            if ptype == JOB_ASSIGN_UNIQ:
                out.append(work_complete(buf[start : buf.index(b"\0", start, stop)]))
                out.append(GRAB)
                assigned += 1
                if latencies is not None:
                    latencies.append(now - _TIME.unpack_from(buf, stop - PAYLOAD_SIZE)[0])
            elif ptype == NO_JOB:
                self.no_jobs += 1
                self.outstanding -= 1
                if self.outstanding == 0:
                    out.append(SLEEP)
                    self.sleeping = True
            elif ptype == NOOP:
                self.noops += 1
                if self.sleeping:
                    self.sleeping = False
                    self.outstanding = self.grabs
                    out.append(GRAB * self.grabs)
            elif ptype == ERROR:
                raise server_error(buf, start, stop)
            pos = stop
        self.buf = buf[pos:] if pos < end else b""
        if out:
            self.sock.sendall(b"".join(out))
        if assigned:
            self.done += assigned
            self.last = now


def run_workers(
    ports: Sequence[int],
    function: bytes,
    grabs: int,
    measure: bool,
    slot: int,
    done: SharedInts,
    last: SharedFloats,
    stop: Event,
    results: Connection,
) -> None:
    """Serve one no-op worker connection per port of ``ports`` until ``stop`` is set.

    A port may come several times (several connections to one server), and the
    ports may be those of different servers (workers spread over a cluster).
    Publishes the jobs done and the time of the last completion in ``done[slot]``
    and ``last[slot]`` after every batch, then sends a result dict on ``results``.
    """
    try:
        workers = [NoopWorker(port, function, grabs, measure) for port in ports]
        selector = selectors.DefaultSelector()
        for worker in workers:
            selector.register(worker.sock, selectors.EVENT_READ, worker)
        cpu0 = own_cpu()
        results.send({"ready": True})
        total = 0
        while True:
            events = selector.select(0.05)
            if not events:
                if stop.is_set():
                    break
                continue
            for key, _ in events:
                worker = key.data
                worker.on_data(receive(worker.sock))
            count = sum(w.done for w in workers)
            if count != total:
                total = count
                done[slot] = count
                last[slot] = max(w.last for w in workers)
        latencies = array("d")
        for worker in workers:
            if worker.latencies is not None:
                latencies.extend(worker.latencies)
            worker.sock.close()
        results.send(
            {
                "done": total,
                "cpu": own_cpu() - cpu0,
                "latencies": latencies.tobytes(),
                "no_jobs": sum(w.no_jobs for w in workers),
                "noops": sum(w.noops for w in workers),
            }
        )
    except Exception as exc:
        results.send({"error": f"worker: {exc!r}"})


# --- background clients -----------------------------------------------------------------------


def run_bg_client(
    port: int,
    function: bytes,
    client: int,
    jobs: int,
    batch: int,
    window: int,
    max_backlog: int,
    submitted: SharedInts,
    done: SharedInts,
    go: Event,
    results: Connection,
) -> None:
    """Submit ``jobs`` background jobs, pipelining ``batch`` per send.

    At most ``window`` submits wait for their JOB_CREATED, and no batch is sent
    while more than ``max_backlog`` jobs (over every client, as published in
    ``submitted`` and ``done``) are queued or running (0: no limit).
    """
    try:
        sock = connect(port)
        prefix = submit_prefix(function, True)
        results.send({"ready": True})
        go.wait()
        cpu0 = own_cpu()
        start = time.perf_counter()
        sent = acked = 0
        buf = b""
        unpack = _TYPE_SIZE.unpack_from
        while acked < jobs:
            while sent < jobs and sent - acked < window:
                if max_backlog and sum(submitted) - sum(done) >= max_backlog:
                    break
                count = min(batch, jobs - sent, window - (sent - acked))
                data = payload(time.perf_counter())
                sock.sendall(
                    b"".join(
                        [
                            prefix + unique(client, seq) + b"\0" + data
                            for seq in range(sent, sent + count)
                        ]
                    )
                )
                sent += count
                submitted[client] = sent
            if sent == acked:
                # Held back by the backlog limit with nothing in flight: let the workers run.
                time.sleep(0.0002)
                continue
            buf = buf + receive(sock) if buf else receive(sock)
            end = len(buf)
            pos = 0
            while end - pos >= 12:
                ptype, size = unpack(buf, pos + 4)
                stop = pos + 12 + size
                if stop > end:
                    break
                if ptype == JOB_CREATED:
                    acked += 1
                elif ptype == ERROR:
                    raise server_error(buf, pos + 12, stop)
                pos = stop
            buf = buf[pos:] if pos < end else b""
        elapsed_cpu = own_cpu() - cpu0
        sock.close()
        results.send(
            {"start": start, "acked": acked, "end": time.perf_counter(), "cpu": elapsed_cpu}
        )
    except Exception as exc:
        results.send({"error": f"bg client {client}: {exc!r}"})


# --- foreground clients -----------------------------------------------------------------------


class ForegroundClient:
    """One client connection with ``inflight`` foreground jobs outstanding at a time."""

    __slots__ = (
        "buf",
        "client",
        "created",
        "finished",
        "handles",
        "jobs",
        "latencies",
        "prefix",
        "sent",
        "sock",
    )

    def __init__(self, port: int, function: bytes, client: int, jobs: int) -> None:
        self.sock = connect(port)
        self.client = client
        self.jobs = jobs
        self.prefix = submit_prefix(function, False)
        self.buf = b""
        self.sent = 0
        self.finished = 0
        self.created: deque[float] = deque()  # send times of submits awaiting JOB_CREATED
        self.handles: dict[bytes, float] = {}  # handle -> send time
        self.latencies = array("d")

    def submit(self, count: int) -> None:
        count = min(count, self.jobs - self.sent)
        if count <= 0:
            return
        now = time.perf_counter()
        data = payload(now)
        parts = []
        for seq in range(self.sent, self.sent + count):
            parts.append(self.prefix + unique(self.client, seq) + b"\0" + data)
            self.created.append(now)
        self.sent += count
        self.sock.sendall(b"".join(parts))

    def on_data(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        now = time.perf_counter()
        unpack = _TYPE_SIZE.unpack_from
        completed = 0
        while end - pos >= 12:
            ptype, size = unpack(buf, pos + 4)
            start = pos + 12
            stop = start + size
            if stop > end:
                break
            if ptype == JOB_CREATED:
                self.handles[buf[start:stop]] = self.created.popleft()
            elif ptype == WORK_COMPLETE:
                handle = buf[start : buf.index(b"\0", start, stop)]
                self.latencies.append(now - self.handles.pop(handle))
                completed += 1
            elif ptype == ERROR:
                raise server_error(buf, start, stop)
            pos = stop
        self.buf = buf[pos:] if pos < end else b""
        if completed:
            self.finished += completed
            self.submit(completed)


def run_fg_clients(
    port: int,
    function: bytes,
    clients: Sequence[int],
    jobs_each: int,
    inflight: int,
    go: Event,
    results: Connection,
) -> None:
    """Run one foreground client connection per id in ``clients``, ``jobs_each`` jobs each."""
    try:
        conns = [ForegroundClient(port, function, client, jobs_each) for client in clients]
        selector = selectors.DefaultSelector()
        for conn in conns:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
        results.send({"ready": True})
        go.wait()
        cpu0 = own_cpu()
        start = time.perf_counter()
        for conn in conns:
            conn.submit(inflight)
        running = len(conns)
        while running:
            events = selector.select(30.0)
            if not events:
                raise LoadError("no reply for 30 s")
            for key, _ in events:
                conn = key.data
                conn.on_data(receive(conn.sock))
                if conn.finished == conn.jobs:
                    selector.unregister(conn.sock)
                    running -= 1
        end = time.perf_counter()
        latencies = array("d")
        for conn in conns:
            latencies.extend(conn.latencies)
            conn.sock.close()
        results.send(
            {"start": start, "end": end, "cpu": own_cpu() - cpu0, "latencies": latencies.tobytes()}
        )
    except Exception as exc:
        results.send({"error": f"fg clients {list(clients)}: {exc!r}"})


# --- idle connections ---------------------------------------------------------------------


def open_idle(port: int, count: int) -> list[socket.socket]:
    """Open ``count`` connections that never send anything (plain TCP, no Gearman traffic)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.connect((HOST, port))
            socks.append(sock)
    except BaseException:
        close_all(socks)
        raise
    return socks


def close_all(socks: Sequence[socket.socket]) -> None:
    """Close every socket of ``socks``."""
    for sock in socks:
        sock.close()


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (soft) towards ``wanted``; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


# --- admin --------------------------------------------------------------------------------------


def admin(port: int, command: bytes) -> list[bytes]:
    """One admin text command's reply lines (up to the ``.`` line), without terminators."""
    with socket.create_connection((HOST, port), timeout=10) as sock:
        sock.sendall(command + b"\n")
        data = b""
        while not (data.endswith(b"\n.\n") or data == b".\n"):
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                break
            data += chunk
    return data.split(b"\n")[:-2]


def registered_workers(port: int, function: bytes) -> int:
    """The worker count of ``function`` in the admin ``status`` reply."""
    for line in admin(port, b"status"):
        parts = line.split(b"\t")
        if parts[0] == function and len(parts) == 4:
            return int(parts[3])
    return 0


def connection_count(port: int) -> int:
    """Connections the server lists in the admin ``workers`` reply (this one included)."""
    return len(admin(port, b"workers"))
