"""Micro-benchmark of the job server state machine, no I/O: ``python bench/server_state.py``."""

import gc
import os
import time
import tracemalloc

from trio_gearman._proto import (
    COMPILED,
    CanDo,
    GrabJobUniq,
    PreSleep,
    Priority,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._proto.server.state import ServerConfig, ServerState


def cycles(n: int, functions: int = 1, wakeup: int = 0, sleepers: int = 0) -> float:
    s = ServerState(ServerConfig(job_handle_prefix=b"H:bench", worker_wakeup=wakeup))
    c = s.connect(b"127.0.0.1", 5)
    w = s.connect(b"127.0.0.1", 6)
    names = [b"fn-%d" % i for i in range(functions)]
    for name in names:
        s.receive(w, CanDo(name), 0.0)
    idle = [s.connect(b"127.0.0.1", 7 + i) for i in range(sleepers)]
    for conn in idle:
        s.receive(conn, CanDo(names[-1]), 0.0)
        s.receive(conn, PreSleep(), 0.0)
    idle_set = set(idle)
    subs = [SubmitJob(names[-1], b"%036d" % i, b"x" * 16, Priority.NORMAL, True) for i in range(n)]
    done = [WorkComplete(b"H:bench:%d" % (i + 1), b"") for i in range(n)]
    grab, sleep, rcv = GrabJobUniq(), PreSleep(), s.receive
    t = time.perf_counter()
    for i in range(n):
        rcv(c, subs[i], 0.0)
        for conn in idle_set & s.dirty:  # woken sleepers grab (NO_JOB) and sleep again
            s.dirty.discard(conn)
            conn.outgoing.clear()
            rcv(conn, grab, 0.0)
            rcv(conn, sleep, 0.0)
            s.dirty.discard(conn)
            conn.outgoing.clear()
        rcv(w, grab, 0.0)
        rcv(w, done[i], 0.0)
        if i % 256 == 0:
            for conn in s.connections:
                conn.outgoing.clear()
            s.dirty.clear()
    return n / (time.perf_counter() - t)


def rounds(n: int, durable: bool, size: int = 500) -> float:
    """Background jobs in rounds of ``size``: submit, (commit,) grab and complete each.

    With ``durable``, each round's jobs go through one store transaction (committed at
    once, no store) before they are queued, and their rows' deletion through the next.
    """
    s = ServerState(ServerConfig(job_handle_prefix=b"H:bench", durable=durable))
    if durable:  # the first handle reservation
        s.store_written(s.take_store_write(), 0.0)  # type: ignore[arg-type]
    c = s.connect(b"127.0.0.1", 5)
    w = s.connect(b"127.0.0.1", 6)
    s.receive(w, CanDo(b"f"), 0.0)
    subs = [SubmitJob(b"f", b"%036d" % i, b"x" * 16, Priority.NORMAL, True) for i in range(n)]
    done = [WorkComplete(b"H:bench:%d" % (i + 1), b"") for i in range(n)]
    grab, rcv = GrabJobUniq(), s.receive
    t = time.perf_counter()
    for first in range(0, n, size):
        last = min(first + size, n)
        for i in range(first, last):
            rcv(c, subs[i], 0.0)
        if durable:
            write = s.take_store_write()
            assert write is not None
            s.store_written(write, 0.0)
        for i in range(first, last):
            rcv(w, grab, 0.0)
            rcv(w, done[i], 0.0)
        c.outgoing.clear()
        w.outgoing.clear()
        s.dirty.clear()
    return (time.perf_counter() - t) / n * 1e6


def memory(n: int) -> float:
    s = ServerState(ServerConfig(job_handle_prefix=b"H:bench"))
    c = s.connect(b"127.0.0.1", 5)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(n):
        unique = os.urandom(18).hex().encode()  # 36 bytes
        s.receive(c, SubmitJob(b"f", unique, os.urandom(16), Priority.NORMAL, True), 0.0)
        if i % 1024 == 0:
            c.outgoing.clear()
    c.outgoing.clear()
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert s.jobs_queued == n
    return used / n


if __name__ == "__main__":
    print(f"trio_gearman {'compiled with mypyc' if COMPILED else 'pure Python'}")
    print(f"SUBMIT_JOB_BG+GRAB_JOB_UNIQ+WORK_COMPLETE, 100k: {cycles(100_000):,.0f} jobs/s")
    print(f"same, worker with 3,000 functions: {cycles(100_000, functions=3000):,.0f} jobs/s")
    print(
        f"same, 1,000 sleeping workers, -w 1: {cycles(50_000, wakeup=1, sleepers=1000):,.0f} jobs/s"
    )
    print(
        f"same, 1,000 sleeping workers, -w 0: {cycles(5_000, wakeup=0, sleepers=1000):,.0f} jobs/s"
    )
    print(
        "background jobs in rounds of 500, 50k: "
        f"{rounds(50_000, False):.2f} µs/job in memory, {rounds(50_000, True):.2f} µs/job durable"
    )
    print(f"1,000,000 queued jobs: {memory(1_000_000):.0f} bytes/job (tracemalloc)")
