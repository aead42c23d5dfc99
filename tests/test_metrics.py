"""Prometheus metrics on the job server's HTTP port (the ``monitor`` extra)."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_gearman import Client, JobFailed, Priority, Worker
from trio_gearman._cli.http import serve_http
from trio_gearman._cli.server import main as trio_gearmand
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer
from trio_gearman._server.store import SqliteStore
from trio_gearman._worker.job import Job

from . import monitor_helpers
from .test_cli_server import trio_gearmand as trio_gearmand_process


async def http_get(address: str, path: str) -> tuple[int, bytes]:
    """``GET path`` of ``host:port``: the status and the body."""
    reply = await monitor_helpers.http_get(f"http://{address}", path)
    return reply.status, reply.body


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels)."""
    found = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@asynccontextmanager
async def metered_server(**options: object) -> AsyncIterator[tuple[GearmanServer, str]]:
    server = GearmanServer(ServerConfig(metrics=True), [("127.0.0.1", 0)], **options)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        http = await nursery.start(serve_http, server, "127.0.0.1", 0)
        yield server, http
        nursery.cancel_scope.cancel()


async def test_metrics_count_jobs_functions_connections_and_bytes() -> None:
    async with metered_server() as (server, http):
        address = f"127.0.0.1:{server.port}"
        worker = Worker(address)

        async def reverse(job: Job) -> bytes:
            return job.data[::-1]

        async def fail(job: Job) -> bytes:
            raise JobFailed()

        worker.register("reverse", reverse)
        worker.register("fail", fail)
        async with Client(address) as client, trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            for _ in range(3):
                assert await client.submit("reverse", b"abc") == b"cba"
            with pytest.raises(JobFailed):
                await client.submit("fail", b"")
            await client.submit_background("queued", b"", priority=Priority.HIGH)
            await client.submit_background("queued", b"u", unique="u")
            await client.submit_background("queued", b"u", unique="u")  # coalesces
            status, body = await http_get(http, "/metrics")
            worker.stop(0)
    assert status == 200
    found = samples(body)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert (
        value(
            "gearman_jobs_submitted_total", function="reverse", kind="foreground", priority="normal"
        )
        == 3
    )
    assert value("gearman_jobs_ended_total", function="reverse", outcome="completed") == 3
    assert value("gearman_jobs_ended_total", function="fail", outcome="failed") == 1
    assert value("gearman_jobs_waiting", function="queued", priority="high") == 1
    assert value("gearman_jobs_waiting", function="queued", priority="normal") == 1
    assert value("gearman_jobs_coalesced_total", function="queued") == 1
    assert value("gearman_workers", function="reverse") == 1
    assert value("gearman_workers", function="queued") == 0
    assert value("gearman_job_run_seconds_count", function="reverse") == 3
    assert value("gearman_job_queue_wait_seconds_count", function="reverse") == 3
    assert value("gearman_job_queue_wait_seconds_bucket", function="reverse", le="+Inf") == 3
    assert value("gearman_connections", role="worker") == 1
    assert value("gearman_connections", role="client") >= 1
    assert value("gearman_received_bytes_total") > 0
    assert value("gearman_sent_bytes_total") > 0
    assert value("gearman_connections_accepted_total") >= 2


async def test_a_durable_server_reports_its_commits(tmp_path: Path) -> None:
    async with metered_server(store=SqliteStore(tmp_path / "q.db")) as (server, http):
        async with Client(f"127.0.0.1:{server.port}") as client:
            for n in range(5):
                await client.submit_background("f", b"%d" % n)
        _, body = await http_get(http, "/metrics")
    found = samples(body)
    commits = found[("gearman_store_commit_seconds_count", ())]
    assert 1 <= commits <= 6  # the handle reservation, then the jobs
    assert found[("gearman_store_commit_jobs_sum", ())] == 5
    assert found[("gearman_store_commit_failures_total", ())] == 0


async def test_trio_gearmand_serves_metrics_on_its_http_port() -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--http-port", "0"]
    async with trio_gearmand_process(args) as server:
        line = await server.wait_for_line(b"Metrics on http://")
        address = line.split(b"http://", 1)[1].split(b"/", 1)[0].decode()
        status, body = await http_get(address, "/metrics")
        assert status == 200
        assert b"gearman_connections" in body
        status, _ = await http_get(address, "/nothing")
        assert status == 404
        server.process.terminate()


def test_the_http_port_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "hypercorn", None)
    assert trio_gearmand(["-L", "127.0.0.1", "-p", "0", "--http-port", "0"]) == 1
    assert "pip install 'trio-gearman[monitor]'" in capsys.readouterr().err


async def test_the_http_port_serves_the_dashboard_of_the_server_itself() -> None:
    server = GearmanServer(ServerConfig(metrics=True), [("127.0.0.1", 0)])
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        async with Client(f"127.0.0.1:{server.port}") as client:
            await client.submit_background("thumbnail", b"x")
        # the dashboard's first poll comes after the job
        http = await nursery.start(serve_http, server, "127.0.0.1", 0)
        status, page = await http_get(http, "/")
        assert status == 200
        assert b"<html" in page.lower()
        status, body = await http_get(http, "/api/status")
        assert status == 200
        nursery.cancel_scope.cancel()
    text = json.dumps(json.loads(body))
    assert f"127.0.0.1:{server.port}" in text
    assert "thumbnail" in text
