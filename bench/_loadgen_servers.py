"""The servers under test, started fresh on free loopback ports, and what /proc says of them."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs

HOST: Final = "127.0.0.1"
GEARMAND: Final = "/usr/sbin/gearmand"
SERVERS: Final = ("ours", "gearmand-t4", "gearmand-t1")
"""The servers measured by default, the first is the one compared with the others."""
QUEUES: Final = ("sqlite", "postgres")
"""Persistent queues a server name may end with (``ours-sqlite``, ``gearmand-t1-sqlite``)."""
KNOWN_SERVERS: Final = (
    *SERVERS,
    *(f"{name}-{queue}" for name in SERVERS for queue in QUEUES if queue != "postgres"),
    "ours-postgres",
    "ours-metrics",
)
"""Every server name the benchmark knows (gearmand's PostgreSQL queue is not built in
Debian's package)."""
POSTGRES_DSN_ENV: Final = "BENCH_POSTGRES_DSN"
START_TIMEOUT: Final = 20.0
BACKLOG: Final = "1024"
_TICK: Final = os.sysconf("SC_CLK_TCK")


REPOSITORY: Final = Path(__file__).resolve().parent.parent


class ServerFailed(RuntimeError):
    """A server did not start, or died during a measurement."""


@attrs.frozen
class RunningServer:
    """A server process under test.

    Attributes:
        name: one of :data:`SERVERS`.
        pid: its process id (for /proc).
        port: the loopback port it listens on.
        argv: how it was started.
    """

    name: str
    pid: int
    port: int
    argv: tuple[str, ...]


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def ours_command() -> list[str]:
    """The ``trio-gearmand`` console script next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "trio-gearmand"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("trio-gearmand")
    if found is None:
        raise ServerFailed("trio-gearmand is not installed (pip install -e .)")
    return [found]


def server_argv(
    name: str, port: int, workdir: Path, extra: Sequence[str] = (), table: str | None = None
) -> list[str]:
    """The command line that starts server ``name`` on ``port``.

    Every server gets the same listen backlog, :data:`BACKLOG`: with the default of
    32, a burst of thousands of connections waits for SYN retransmissions (seconds).
    A ``-postgres`` server keeps its jobs in the table ``table``, by default
    ``bench_<port>`` (a fresh one for every server started).
    """
    base, queue = name, ""
    if name == "ours-metrics":  # metrics counted and served (the 'monitor' extra)
        base, extra = "ours", ["--http-port", str(free_port()), *extra]
    for suffix in QUEUES:
        if name.endswith(f"-{suffix}"):
            base, queue = name.removesuffix(f"-{suffix}"), suffix
    if queue == "sqlite":
        extra = ["-q", "libsqlite3", "--libsqlite3-db", str(workdir / "queue.db"), *extra]
    elif queue == "postgres":
        dsn = os.environ.get(POSTGRES_DSN_ENV)
        if not dsn:
            raise ServerFailed(f"{name} needs ${POSTGRES_DSN_ENV} (bench/server.py sets it)")
        extra = ["-q", "postgres", "--postgres-dsn", dsn, "--postgres-table",
                 table or f"bench_{port}", *extra]  # fmt: skip
    name = base
    extra = list(extra)
    if name == "ours":
        return [*ours_command(), "-L", HOST, "-p", str(port), "-b", BACKLOG, "-l", "none", *extra]
    if name.startswith("gearmand-t"):
        threads = name.removeprefix("gearmand-t")
        pid_file = workdir / "gearmand.pid"
        return [
            GEARMAND,
            "-L",
            HOST,
            "-p",
            str(port),
            "-t",
            threads,
            "-l",
            "none",
            "-P",
            str(pid_file),
            "-b",
            BACKLOG,
            *extra,
        ]
    raise ValueError(f"unknown server {name!r}; known: {', '.join(KNOWN_SERVERS)}")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1) as sock:
            sock.sendall(b"version\n")
            return sock.recv(100).startswith(b"OK")
    except OSError:
        return False


@contextlib.contextmanager
def run_server(
    name: str, extra: Sequence[str] = (), table: str | None = None
) -> Iterator[RunningServer]:
    """Start server ``name`` on a free loopback port; stop it (SIGTERM) on the way out.

    ``table``: a ``-postgres`` server's table (see :func:`server_argv`).

    Raises:
        ServerFailed: it exited or did not answer ``version`` within 20 s.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-server-"))
    port = free_port()
    argv = server_argv(name, port, workdir, extra, table)
    with (workdir / "stderr").open("wb") as stderr:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                output = (workdir / "stderr").read_text(errors="replace")[-2000:]
                raise ServerFailed(f"{name} did not start ({' '.join(argv)}):\n{output}")
            time.sleep(0.02)
        yield RunningServer(name, proc.pid, port, tuple(argv))
        if proc.poll() is not None:
            raise ServerFailed(f"{name} exited with status {proc.returncode} during the run")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


# --- PostgreSQL ---------------------------------------------------------------------------


@attrs.frozen
class Database:
    """The PostgreSQL database of the ``-postgres`` servers.

    Attributes:
        dsn: its connection string (also in ``$BENCH_POSTGRES_DSN`` while it is in use).
        pid: the PostgreSQL server's main process (its CPU is measured with
            :func:`tree_cpu_seconds`), or ``None`` when it runs elsewhere.
    """

    dsn: str
    pid: int | None


@contextlib.contextmanager
def postgres_database() -> Iterator[Database]:
    """The database named by ``$BENCH_POSTGRES_DSN``, or else a throw-away cluster's.

    The throw-away cluster is the tests' (``tests/postgres_peer.py``: initdb and
    pg_ctl on a free loopback port, PostgreSQL's defaults, fsync on); its DSN is put
    in ``$BENCH_POSTGRES_DSN`` for :func:`run_server` until the block ends, and the
    cluster is removed afterwards.
    """
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if dsn:
        yield Database(dsn, None)
        return
    if str(REPOSITORY) not in sys.path:
        sys.path.insert(0, str(REPOSITORY))
    from tests.postgres_peer import running_cluster

    with running_cluster() as cluster:
        pid = int((cluster.directory / "data" / "postmaster.pid").read_text().split()[0])
        os.environ[POSTGRES_DSN_ENV] = cluster.dsn
        try:
            yield Database(cluster.dsn, pid)
        finally:
            del os.environ[POSTGRES_DSN_ENV]


def drop_tables(dsn: str, *tables: str) -> None:
    """Drop the queue tables ``tables`` and their ``_meta`` tables, where they exist."""
    import psycopg
    from psycopg import sql

    names = [sql.Identifier(name + suffix) for name in tables for suffix in ("", "_meta")]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.SQL(", ").join(names)))


# --- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU-seconds of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU-seconds of a process and its descendants, every thread.

    Counts the live processes of the tree and, through each one's ``cutime`` and
    ``cstime``, the children it has waited for: a child that ends between two
    readings (a PostgreSQL backend or autovacuum worker) is still counted.
    """
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            pid = int(entry.name)
            parent[pid] = int(fields[1])
            ticks[pid] = sum(int(value) for value in fields[11:15])
    total = 0
    for pid, count in ticks.items():
        ancestor = pid
        while ancestor not in (root, 0, 1) and ancestor in parent:
            ancestor = parent[ancestor]
        if ancestor == root:
            total += count
    return total / _TICK


def rss_kib(pid: int) -> int:
    """Resident set size of a process in KiB (VmRSS in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ServerFailed(f"no VmRSS for pid {pid}")


def machine_busy() -> tuple[float, float]:
    """CPU-seconds the whole machine has been busy (every core), and of that in softirq.

    From /proc/stat: user nice system idle iowait irq softirq steal (guest time is
    already in user). Loopback TCP is mostly processed in softirq, which the kernel
    charges to no process.
    """
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / _TICK, fields[6] / _TICK


def machine() -> str:
    """This machine in one line: cores, CPU model, Python, gearmand."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs (nproc), {model}, CPython {platform.python_version()}, "
        f"Linux {platform.release()}"
    )
