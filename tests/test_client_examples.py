"""The client and worker examples run as programs against gearmand."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import trio

import trio_gearman

from .gearmand_peer import GearmandProcess

pytestmark = pytest.mark.gearmand

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_reverse_worker_and_client(gearmand: GearmandProcess) -> None:
    if not hasattr(trio_gearman, "Worker"):  # pragma: no cover
        pytest.skip("trio_gearman does not export Client and Worker yet")
    worker_argv = [sys.executable, str(EXAMPLES / "reverse_worker.py"), gearmand.address]
    client_argv = [sys.executable, str(EXAMPLES / "reverse_client.py"), gearmand.address]
    async with await anyio.open_process(worker_argv, stderr=subprocess.STDOUT) as worker:
        assert worker.stdout is not None
        with trio.fail_after(30):
            client = await anyio.run_process([*client_argv, "hello", "abc", "xyz"])
            output = client.stdout.decode()
            assert "hello -> olleh" in output
            assert "update: WorkStatus(" in output
            assert output.endswith("abc -> cba\nxyz -> zyx\n")
            worker.send_signal(signal.SIGTERM)
            assert await worker.wait() == 0
            printed = b""
            async for chunk in worker.stdout:
                printed += chunk
    assert printed.decode().splitlines() == [f"serving 'reverse' on {gearmand.address}", "stopped"]
