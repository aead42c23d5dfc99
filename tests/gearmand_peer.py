"""Start the real gearmand 1.1.20 (Debian's ``gearman-job-server``) for tests.

Tests that need gearmand or the ``gearman``/``gearadmin`` tools ask for them through
the fixtures in ``conftest.py``. Where they are missing the test is skipped, except
under CI (``CI=true``), where a missing peer is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs
import pytest


def require_tool(name: str, packages: str = "gearman-job-server gearman-tools") -> str:
    """The path of a peer program, or skip (fail under CI) when it is missing.

    Args:
        name: the program.
        packages: the Debian packages that bring it, for the message.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (apt-get install {packages})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@attrs.frozen
class GearmandProcess:
    """A running gearmand: its address and process."""

    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        """``host:port``, as clients take it."""
        return f"{self.host}:{self.port}"


@contextmanager
def run_until_listening(
    args: Sequence[str], name: str, pattern: str = r"Listening on 127\.0\.0\.1:(\d+)"
) -> Iterator[tuple[subprocess.Popen[bytes], re.Match[str]]]:
    """Run a server process until the block exits; yield once its log says it listens.

    The process logs to stderr; the first line matching ``pattern`` is yielded with
    it (no sleeping, no polling). Its log is drained afterwards so it never blocks
    on a full pipe; the process is killed when the block exits.
    """
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert process.stderr is not None
    try:
        seen = []
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            seen.append(line)
            found = re.search(pattern, line)
            if found:
                break
        else:
            raise RuntimeError(f"{name} did not start: {''.join(seen)}")
        drain = subprocess.Popen(["cat"], stdin=process.stderr, stdout=subprocess.DEVNULL)
        try:
            yield process, found
        finally:
            process.kill()
            process.wait()
            drain.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


@contextmanager
def run_gearmand(
    extra_args: Sequence[str] = (), *, port: int | None = None
) -> Iterator[GearmandProcess]:
    """Run gearmand on 127.0.0.1 until the block exits; wait until it listens."""
    binary = require_tool("gearmand")
    port = port or free_port()
    # Never /dev/null: gearmand replaces its pid file with a regular file.
    pid_dir = tempfile.TemporaryDirectory(prefix="gearmand-")
    args = [
        binary,
        "--listen=127.0.0.1",
        f"--port={port}",
        "--log-file=stderr",
        "--verbose=INFO",
        f"--pid-file={pid_dir.name}/gearmand.pid",
        "--threads=1",
        *extra_args,
    ]
    try:
        with run_until_listening(args, "gearmand") as (process, _):
            yield GearmandProcess("127.0.0.1", port, process)
    finally:
        pid_dir.cleanup()
