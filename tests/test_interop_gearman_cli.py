"""The ``gearman`` command-line tool (libgearman 1.1.20) as client and worker of our server."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trio
from anyio.abc import Process

from trio_gearman._server.server import GearmanServer

from .test_server_io import Peer, running_server

pytestmark = pytest.mark.gearmand


def address(server: GearmanServer) -> list[str]:
    return ["-h", "127.0.0.1", "-p", str(server.port)]


async def run_client(
    gearman: str, server: GearmanServer, *args: str
) -> subprocess.CompletedProcess[bytes]:
    """Run ``gearman`` in client mode; it must finish (never hang)."""
    with trio.fail_after(20):
        return await anyio.run_process(
            [gearman, *address(server), *args], check=False, stdin=subprocess.DEVNULL
        )


@asynccontextmanager
async def worker(gearman: str, server: GearmanServer, *args: str) -> AsyncIterator[Process]:
    """Run ``gearman -w`` until the block exits."""
    process = await anyio.open_process(
        [gearman, *address(server), "-w", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()


async def admin_status(server: GearmanServer) -> dict[bytes, list[bytes]]:
    peer = await Peer.connect(server)
    await peer.send(b"status\n")
    rows = {}
    while (line := await peer.line()) != b".\n":
        name, *counts = line.rstrip(b"\n").split(b"\t")
        rows[name] = counts
    await peer.aclose()
    return rows


async def test_foreground_and_background_jobs(gearman_cli: str) -> None:
    async with (
        running_server() as server,
        worker(gearman_cli, server, "-f", "reverse", "--", "rev"),
    ):
        result = await run_client(gearman_cli, server, "-f", "reverse", "hello world")
        assert (result.returncode, result.stdout) == (0, b"dlrow olleh")

        result = await run_client(gearman_cli, server, "-b", "-f", "reverse", "in the background")
        assert result.returncode == 0
        # One worker runs jobs in order: once a later foreground job is done, the
        # background job before it is done too.
        result = await run_client(gearman_cli, server, "-f", "reverse", "after")
        assert result.stdout == b"retfa"
        assert await admin_status(server) == {b"reverse": [b"0", b"0", b"1"]}


async def test_priorities_high_normal_low(gearman_cli: str, tmp_path: Path) -> None:
    record = tmp_path / "order"
    async with running_server() as server:
        for args in (["-L"], [], ["-I"]):
            result = await run_client(gearman_cli, server, "-b", *args, "-f", "order", f"job{args}")
            assert result.returncode == 0
        assert await admin_status(server) == {b"order": [b"3", b"0", b"0"]}
        command = ["sh", "-c", f"cat >> {record}; echo >> {record}"]
        async with worker(gearman_cli, server, "-c", "3", "-f", "order", "--", *command) as proc:
            with trio.fail_after(20):
                await proc.wait()
        assert record.read_text().split() == ["job['-I']", "job[]", "job['-L']"]


async def test_unique_jobs_coalesce(gearman_cli: str) -> None:
    async with running_server() as server:
        for data in ("first", "second"):
            result = await run_client(gearman_cli, server, "-b", "-u", "key-1", "-f", "uq", data)
            assert result.returncode == 0
        result = await run_client(gearman_cli, server, "-b", "-u", "key-2", "-f", "uq", "third")
        assert await admin_status(server) == {b"uq": [b"2", b"0", b"0"]}
        async with worker(gearman_cli, server, "-f", "uq", "--", "rev"):
            result = await run_client(gearman_cli, server, "-u", "key-3", "-f", "uq", "fg")
            assert result.stdout == b"gf"


async def test_failing_worker_makes_the_client_fail(gearman_cli: str) -> None:
    async with running_server() as server, worker(gearman_cli, server, "-f", "fail", "--", "false"):
        result = await run_client(gearman_cli, server, "-f", "fail", "data")
        assert result.returncode != 0
        assert b"Job failed" in result.stderr + result.stdout
        assert server.state.jobs_running == 0


async def test_worker_data_packets_reach_the_client(gearman_cli: str) -> None:
    async with (
        running_server() as server,
        worker(gearman_cli, server, "-n", "-f", "lines", "--", "printf", "a\\nb\\n"),
    ):
        result = await run_client(gearman_cli, server, "-f", "lines", "x")
        assert result.returncode == 0
        # What the tool prints against gearmand 1.1.20 too: the WORK_DATA of the
        # first line, then the rest.
        assert result.stdout == b"a\na\nb\n"
