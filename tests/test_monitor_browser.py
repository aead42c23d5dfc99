"""The monitor's page in a real browser: headless Chromium against two live job servers.

gearmand 1.1.20 holds queued ``resize`` jobs that no worker serves and a running
``email`` job; trio_gearman's embedded server holds ``render`` jobs, one running,
for a worker that also serves ``thumbnail``. The page is loaded with
``--dump-dom`` after its script ran; the test reads the tables it drew. Then
gearmand is killed, the monitor polls once more, and the page shows it down.

The poller is driven by the test (``poll()``), on a clock of the test's, so the
rates are exact. Set ``TRIO_GEARMAN_SCREENSHOT=docs/_static/monitor.png`` to
refresh the documentation's screenshot from this run.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import trio

from trio_gearman import Client, Job, Priority, Worker, __version__
from trio_gearman._monitor import Poller
from trio_gearman._monitor.web import create_app
from trio_gearman.testing import EmbeddedServer, open_test_server

from .gearmand_peer import GearmandProcess
from .monitor_helpers import Tables, chromium, require_chromium, serving

pytestmark = [pytest.mark.gearmand, pytest.mark.timeout(60)]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def held_jobs(address: str, client_id: str, *functions: str) -> AsyncIterator[None]:
    """A worker that registers ``functions`` and holds the first job it gets, running."""
    started = anyio.Event()
    release = anyio.Event()

    async def hold(job: Job) -> bytes:
        started.set()
        await release.wait()
        return b""

    worker = Worker(address, client_id=client_id)
    for function in functions:
        worker.register(function, hold)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with Client(address) as client:
            await client.submit_background(functions[0], b"first")
        with trio.fail_after(5):
            await started.wait()
        yield
        tg.cancel_scope.cancel()


@pytest.fixture
def browser() -> str:
    """Headless Chromium's path (skip, or fail under CI, where it is missing)."""
    return require_chromium()


@pytest.fixture
def profile(tmp_path: Path) -> Iterator[Path]:
    """A fresh browser profile directory."""
    path = tmp_path / "chromium-profile"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def load(browser: str, profile: Path, url: str) -> Tables:
    """The page's tables once its script has fetched the API and drawn them."""
    return Tables(await chromium(browser, profile, "--dump-dom", url, budget_ms=1500))


async def test_the_page_shows_two_live_servers_and_one_going_down(
    gearmand: GearmandProcess, browser: str, profile: Path, tmp_path: Path
) -> None:
    ours: EmbeddedServer
    async with (
        open_test_server() as ours,
        held_jobs(gearmand.address, "mailer-1", "email"),
        held_jobs(ours.address, "render-1", "render", "thumbnail"),
        Client(gearmand.address) as gearmand_client,
        Client(ours.address) as our_client,
    ):
        await gearmand_client.submit_background("resize", b"a", priority=Priority.HIGH)
        await gearmand_client.submit_background("resize", b"b")
        await gearmand_client.submit_background("resize", b"c")
        await our_client.submit_background("render", b"2")
        await our_client.submit_background("render", b"3")

        clock = Clock()
        poller = Poller([gearmand.address, ours.address], interval=30, clock=clock)
        await poller.poll()
        # One second later, two more resize jobs wait: +2 jobs/s.
        await gearmand_client.submit_background("resize", b"d", priority=Priority.LOW)
        await gearmand_client.submit_background("resize", b"e", priority=Priority.LOW)
        clock.now += 1.0
        await poller.poll()

        async with serving(create_app(poller)) as base:
            page = await load(browser, profile, f"{base}/")

            servers = {row[0]: row for row in page.rows("servers-table")}
            assert list(servers) == [gearmand.address, ours.address]
            assert servers[gearmand.address][1].startswith("up")
            assert servers[gearmand.address][2].startswith("1.1.")
            assert servers[ours.address][1].startswith("up")
            assert servers[ours.address][2] == __version__

            # Function, Waiting, High, Normal, Low, Running, Workers, Backlog/s, Servers
            functions = {row[0]: row for row in page.rows("functions-table")[:-1]}
            assert functions["resize"][1:9] == [
                "5",
                "1",
                "2",
                "2",
                "0",
                "0",
                "+2.00",
                gearmand.address,
            ]
            assert functions["render"][1:8] == ["2", "0", "2", "0", "1", "1", "0.00"]
            assert functions["email"][5:7] == ["1", "1"]
            assert functions["thumbnail"][6] == "1"
            total = page.rows("functions-table")[-1]
            assert total[0] == "Total"
            assert total[1] == "7"  # waiting: 5 resize + 2 render
            assert total[5:7] == ["2", "3"]  # running: email, render; workers
            assert total[8] == "2 of 2 servers up"

            workers = {row[3]: row for row in page.rows("workers-table")}
            assert workers["mailer-1"][0] == gearmand.address
            assert workers["mailer-1"][4] == "email"
            assert workers["render-1"][0] == ours.address
            assert workers["render-1"][4] == "render thumbnail"
            assert page.text("total-servers") == "2/2 servers up"
            assert page.text("total-waiting") == "waiting 7"

            # Filters: a function pattern and one server, from the address bar.
            narrowed = await load(
                browser, profile, f"{base}/?function=r*&server={quote(ours.address)}"
            )
            assert [row[0] for row in narrowed.rows("servers-table")] == [ours.address]
            assert [row[:2] for row in narrowed.rows("server-functions-table")] == [
                [ours.address, "render"]
            ]
            assert [row[3] for row in narrowed.rows("workers-table")] == ["render-1"]

            screenshot = tmp_path / "monitor.png"
            await chromium(
                browser,
                profile,
                f"--screenshot={screenshot}",
                "--window-size=1280,800",
                f"{base}/",
                budget_ms=1500,
            )
            assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            wanted = os.environ.get("TRIO_GEARMAN_SCREENSHOT")
            if wanted:
                shutil.copyfile(screenshot, wanted)

            # gearmand goes away; the next poll finds it down.
            gearmand.process.kill()
            gearmand.process.wait()
            clock.now += 1.0
            await poller.poll()
            after = await load(browser, profile, f"{base}/")
            servers = {row[0]: row for row in after.rows("servers-table")}
            state = servers[gearmand.address][1]
            assert state.startswith("down")
            assert "Connection refused" in state
            assert servers[ours.address][1].startswith("up")
            assert after.text("total-servers") == "1/2 servers up"
            functions = {row[0]: row for row in after.rows("functions-table")[:-1]}
            assert "resize" not in functions
            assert functions["render"][1] == "2"
        await poller.aclose()
