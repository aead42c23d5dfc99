"""A throw-away PostgreSQL cluster for the tests of the PostgreSQL queue.

:func:`running_cluster` runs ``initdb`` into a fresh directory under ``/tmp`` and
starts the server with ``pg_ctl`` on a free loopback port (its Unix socket, log and
data all in that directory); leaving the block stops it and removes the directory.
Run as root (as the CI does), the programs run as the ``postgres`` user, which
Debian's ``postgresql`` package creates.

The programs come from ``PATH``, ``pg_config --bindir`` or Debian's
``/usr/lib/postgresql/<version>/bin``. Where they, the ``postgres`` user (as root)
or psycopg are missing, the tests that need the cluster are skipped, except under
CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import attrs
import pytest

from .gearmand_peer import free_port

DATABASE = "gearman_test"
SUPERUSER = "postgres"
INSTALL_HINT = "apt-get install postgresql; pip install 'trio-gearman[postgres]'"


def _missing(message: str) -> NoReturn:
    """Skip the test, or fail it under CI."""
    message = f"{message} ({INSTALL_HINT})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or ``None``."""
    candidates: list[Path] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        candidates.append(Path(pg_ctl).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        found = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        ).stdout.strip()
        if found:
            candidates.append(Path(found))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    candidates.extend(debian)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return bindir
    return None


def require_psycopg() -> None:
    """Skip the test (fail it under CI) when psycopg 3 (or its libpq) cannot be imported."""
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        _missing(f"psycopg 3 cannot be imported: {exc}")


def require_postgres() -> tuple[Path, str | None]:
    """Where the PostgreSQL programs are, and which user runs them (``None``: this one).

    Skips the test (fails it under CI) when psycopg, the programs, or (as root) the
    ``postgres`` user are missing.
    """
    require_psycopg()
    bindir = find_bindir()
    if bindir is None:
        _missing("initdb and pg_ctl are not installed")
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return bindir, None
    import pwd  # Unix only, like running as root

    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        _missing("running as root, but there is no 'postgres' user to run PostgreSQL as")
    return bindir, SUPERUSER


@attrs.define
class PostgresCluster:
    """A PostgreSQL server of the tests' own, on 127.0.0.1.

    Attributes:
        bindir: where ``initdb`` and ``pg_ctl`` are.
        directory: the cluster's directory: ``data/``, the socket, ``server.log``.
        port: the TCP port it listens on.
        password: the password of the ``postgres`` superuser (TCP connections need it).
        run_as: the user the programs run as, or ``None`` for the current one.
        running: whether the server is up.
    """

    bindir: Path
    directory: Path
    port: int
    password: str
    run_as: str | None
    running: bool = False

    @property
    def dsn(self) -> str:
        """A libpq connection string for the test database, over TCP, with the password."""
        return self.dsn_for(DATABASE)

    def dsn_for(self, dbname: str) -> str:
        """A connection string for the database ``dbname``."""
        return (
            f"host=127.0.0.1 port={self.port} user={SUPERUSER}"
            f" password={self.password} dbname={dbname} connect_timeout=5"
        )

    @property
    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as, "--", *command]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.directory,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n{self.log}"
            )

    def init(self) -> None:
        """Create the cluster (``initdb``) and configure where it listens."""
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.run_as is not None:
            import pwd

            user = pwd.getpwnam(self.run_as)
            for path in (self.directory, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.directory / "data"),
            "--username",
            SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local",
            "trust",
            "--auth-host",
            "scram-sha-256",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": "20",
            "shared_buffers": "32MB",
        }
        with (self.directory / "data" / "postgresql.conf").open("a") as conf:
            conf.write("".join(f"{key} = {value}\n" for key, value in settings.items()))

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run(
            "pg_ctl",
            "start",
            "--pgdata",
            str(self.directory / "data"),
            "--log",
            str(self.directory / "server.log"),
            "--wait",
            "--timeout",
            "60",
        )
        self.running = True

    def stop(self) -> None:
        """Stop the server (``-m fast``: its connections are cut) and wait until it is down."""
        self._run(
            "pg_ctl", "stop", "--pgdata", str(self.directory / "data"), "--mode", "fast", "--wait"
        )
        self.running = False

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """Stop the server for the block; start it again afterwards, whatever happened."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def create_database(self, dbname: str) -> None:
        """Create the database ``dbname``."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


@contextmanager
def running_cluster() -> Iterator[PostgresCluster]:
    """A fresh cluster, running, with the database :data:`DATABASE`; removed afterwards."""
    bindir, run_as = require_postgres()
    directory = Path(tempfile.mkdtemp(prefix="trio-gearman-pg-", dir="/tmp"))
    cluster = PostgresCluster(bindir, directory, free_port(), secrets.token_hex(12), run_as)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database(DATABASE)
        yield cluster
    finally:
        try:
            if cluster.running:
                cluster.stop()
        finally:
            shutil.rmtree(directory, ignore_errors=True)
