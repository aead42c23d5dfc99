"""Start the real gearmand 1.1.20 (Debian's ``gearman-job-server``) for tests.

Tests that need gearmand or the ``gearman``/``gearadmin`` tools ask for them through
the fixtures in ``conftest.py``. Where they are missing the test is skipped, except
under CI (``CI=true``), where a missing peer is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs
import pytest


def require_tool(name: str) -> str:
    """The path of a peer program, or skip (fail under CI) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (apt-get install gearman-job-server gearman-tools)"
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
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert process.stderr is not None
        seen = []
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            seen.append(line)
            if "Listening on 127.0.0.1" in line:
                break
        else:
            raise RuntimeError(f"gearmand did not start: {''.join(seen)}")
        # Keep draining its log so it never blocks on a full pipe.
        drain = subprocess.Popen(["cat"], stdin=process.stderr, stdout=subprocess.DEVNULL)
        try:
            yield GearmandProcess("127.0.0.1", port, process)
        finally:
            process.kill()
            process.wait()
            drain.wait()
            process.stderr.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        pid_dir.cleanup()
