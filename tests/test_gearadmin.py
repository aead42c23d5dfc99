"""``gearadmin`` (gearman-tools 1.1.20) against our job server: every option it has."""

from __future__ import annotations

import os

import anyio
import pytest
import trio

from trio_gearman._proto._packets import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Priority,
    SetClientId,
    SubmitJob,
)
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer
from trio_gearman._version import __version__

from .test_server_io import Peer, running_server

pytestmark = pytest.mark.gearmand


async def gearadmin(path: str, server: GearmanServer, *args: str) -> tuple[str, str]:
    """Run gearadmin against ``server``; return its stdout and stderr."""
    with trio.fail_after(20):
        result = await anyio.run_process(
            [path, "-h", "127.0.0.1", "-p", str(server.port), *args], check=False
        )
    assert result.returncode == 0, result
    return result.stdout.decode(), result.stderr.decode()


def table(output: str) -> dict[str, list[str]]:
    """A tab-separated listing ending with ``.``, keyed by its first column."""
    lines = output.split("\n")
    assert lines[-2:] == [".", ""], output
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines[:-2]}


async def populate(server: GearmanServer) -> tuple[Peer, Peer, list[bytes]]:
    """A named worker for resize and thumb running one job; three background jobs."""
    worker = await Peer.connect(server)
    await worker.send(SetClientId(b"worker-A"), CanDo(b"resize"), CanDo(b"thumb"))
    client = await Peer.connect(server)
    await client.send(
        SubmitJob(b"resize", b"img-1", b"a", background=True),
        SubmitJob(b"resize", b"img-2", b"b", Priority.HIGH, background=True),
        SubmitJob(b"thumb", b"", b"c", Priority.LOW, background=True),
    )
    handles = []
    for _ in range(3):
        created = await client.packet()
        assert isinstance(created, JobCreated)
        handles.append(created.handle)
    await worker.send(GrabJobUniq())
    assert await worker.packet() == JobAssignUniq(handles[1], b"resize", b"img-2", b"b")
    return worker, client, handles


async def test_status_and_priority_status(gearadmin_cli: str) -> None:
    async with running_server() as server:
        await populate(server)
        out, _ = await gearadmin(gearadmin_cli, server, "--status")
        assert table(out) == {"resize": ["2", "1", "1"], "thumb": ["1", "0", "1"]}
        out, _ = await gearadmin(gearadmin_cli, server, "--priority-status")
        assert table(out) == {"resize": ["0", "1", "0", "1"], "thumb": ["0", "0", "1", "1"]}


async def test_workers_lists_every_connection(gearadmin_cli: str) -> None:
    async with running_server() as server:
        await populate(server)
        out, _ = await gearadmin(gearadmin_cli, server, "--workers")
        lines = out.split("\n")
        assert lines[-2:] == [".", ""]
        rows = [line.split(" ") for line in lines[:-2]]
        # the worker, the client and gearadmin's own connection
        assert len(rows) == 3
        named = [row for row in rows if row[2] == "worker-A"]
        assert len(named) == 1
        fd, address, _, colon, *functions = named[0]
        assert fd.isdigit()
        assert (address, colon) == ("127.0.0.1", ":")
        assert sorted(functions) == ["resize", "thumb"]
        assert all(row[1:4] == ["127.0.0.1", "-", ":"] for row in rows if row is not named[0])


async def test_show_jobs_and_unique_jobs(gearadmin_cli: str) -> None:
    async with running_server() as server:
        _, _, handles = await populate(server)
        out, _ = await gearadmin(gearadmin_cli, server, "--show-jobs")
        assert table(out) == {handle.decode(): ["0", "0", "1"] for handle in handles}
        out, _ = await gearadmin(gearadmin_cli, server, "--show-unique-jobs")
        assert sorted(out.split("\n")[:-2]) == ["", "img-1", "img-2"]
        assert out.endswith("\n.\n")


async def test_server_version_and_getpid(gearadmin_cli: str) -> None:
    config = ServerConfig(version=__version__.encode(), pid=os.getpid())
    async with running_server(config=config) as server:
        out, _ = await gearadmin(gearadmin_cli, server, "--server-version")
        assert out == f"{__version__}\n"
        out, _ = await gearadmin(gearadmin_cli, server, "--getpid")
        assert out == f"{os.getpid()}\n"
        out, _ = await gearadmin(gearadmin_cli, server, "--server-verbose")
        assert out == "ERROR\n"


async def test_cancel_job(gearadmin_cli: str) -> None:
    async with running_server() as server:
        _, _, handles = await populate(server)
        out, _ = await gearadmin(gearadmin_cli, server, "--cancel-job", handles[0].decode())
        assert out == "OK\n"
        assert server.state.jobs_queued == 1
        out, err = await gearadmin(gearadmin_cli, server, "--cancel-job", "H:nosuch:1")
        assert (out, err) == ("", "Error: UNKNOWN_JOB\r\n")
        out, _ = await gearadmin(gearadmin_cli, server, "--status")
        assert table(out)["resize"] == ["1", "1", "1"]


async def test_create_and_drop_function(gearadmin_cli: str) -> None:
    async with running_server() as server:
        await populate(server)
        out, _ = await gearadmin(gearadmin_cli, server, "--create-function", "newfn")
        assert out == "OK\n"
        out, _ = await gearadmin(gearadmin_cli, server, "--status")
        assert table(out)["newfn"] == ["0", "0", "0"]
        out, _ = await gearadmin(gearadmin_cli, server, "--drop-function", "newfn")
        assert out == "OK\n"
        out, _ = await gearadmin(gearadmin_cli, server, "--status")
        assert "newfn" not in table(out)
        out, err = await gearadmin(gearadmin_cli, server, "--drop-function", "resize")
        assert (out, err) == (
            "",
            "Error: there are still connected workers or executing clients\r\n",
        )
        out, err = await gearadmin(gearadmin_cli, server, "--drop-function", "nosuch")
        assert (out, err) == ("", "Error: function not found\r\n")
