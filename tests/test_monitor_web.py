"""The monitor's poller against live servers, and its web app served by Hypercorn.

The app is read over raw HTTP on a real socket (no test client library); the page in
a real browser is ``tests/test_monitor_browser.py``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.resources import files
from pathlib import Path

import anyio
import anyio.abc
import pytest
import trio
from anyio.streams.buffered import BufferedByteReceiveStream
from starlette.applications import Starlette
from starlette.routing import Mount

from trio_gearman import Client, Job, Priority, Worker, __version__
from trio_gearman._monitor import Filters, Poller
from trio_gearman._monitor.web import create_app, serve
from trio_gearman.testing import EmbeddedServer, open_test_server

from .gearmand_peer import GearmandProcess, free_port
from .monitor_helpers import http_get, serving

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent


def rows(value: object) -> list[dict[str, object]]:
    assert isinstance(value, list)
    return value


@asynccontextmanager
async def busy(server: EmbeddedServer) -> AsyncIterator[None]:
    """One worker (``render-1``) running a ``render`` job, two more queued, and an
    idle ``thumbnail`` function on the same worker."""
    started = anyio.Event()
    release = anyio.Event()

    async def render(job: Job) -> bytes:
        started.set()
        await release.wait()
        return b"done"

    worker = Worker(server.address, client_id="render-1")
    worker.register("render", render)
    worker.register("thumbnail", render)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        async with Client(server.address) as client:
            for n in range(3):
                await client.submit_background("render", f"frame-{n}")
        with trio.fail_after(5):
            await started.wait()
        yield
        tg.cancel_scope.cancel()


# --- the poller ------------------------------------------------------------------------------


async def test_the_poller_reads_a_server_and_keeps_its_connection() -> None:
    async with open_test_server() as server, busy(server):
        poller = Poller([server.address], interval=60)
        try:
            await poller.poll()
            connections = len(list(server.state.connections))
            await poller.poll()
            assert len(list(server.state.connections)) == connections  # the same admin connection
        finally:
            await poller.aclose()
        assert poller.polls == 2
    (entry,) = rows(poller.view()["servers"])
    assert entry["up"] is True
    assert entry["version"] == __version__
    assert entry["priorities"] is True
    functions = {row["function"]: row for row in rows(entry["functions"])}
    render = functions["render"]
    assert (render["waiting"], render["normal"], render["running"], render["workers"]) == (
        2,
        2,
        1,
        1,
    )
    assert functions["thumbnail"]["workers"] == 1
    assert [(w["client_id"], w["functions"]) for w in rows(poller.view()["workers"])] == [
        ("render-1", ["render", "thumbnail"])
    ]


async def test_a_server_that_is_down_is_shown_with_the_reason() -> None:
    port = free_port()
    poller = Poller([f"127.0.0.1:{port}"], interval=1)
    await poller.poll()
    (entry,) = rows(poller.view()["servers"])
    assert entry["up"] is False
    assert entry["error"] == "cannot connect: Connection refused"


async def test_a_restarted_server_is_read_again_in_the_same_poll() -> None:
    async with open_test_server() as server:
        poller = Poller([server.address], interval=60)
        await poller.poll()
        await server.restart()  # the kept admin connection is gone
        async with Client(server.address) as client:
            await client.submit_background("after", b"x")
        await poller.poll()
        await poller.aclose()
    (entry,) = rows(poller.view()["servers"])
    assert entry["up"] is True
    assert [row["function"] for row in rows(entry["functions"])] == ["after"]


async def test_a_server_that_hangs_up_at_once_is_down() -> None:
    async def hang_up(stream: anyio.abc.SocketStream) -> None:
        await stream.aclose()

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, hang_up)
            poller = Poller([f"127.0.0.1:{port}"], interval=1)
            with trio.fail_after(5):
                await poller.poll()
            tg.cancel_scope.cancel()
    (entry,) = rows(poller.view()["servers"])
    assert entry["up"] is False
    assert entry["error"] == "the server closed the connection before answering Version()"


async def test_a_server_that_does_not_answer_times_out() -> None:
    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)

        async def silent(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                await trio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, silent)
            poller = Poller([f"127.0.0.1:{port}"], interval=1, timeout=0.2)
            with trio.fail_after(5):
                await poller.poll()
            tg.cancel_scope.cancel()
    (entry,) = rows(poller.view()["servers"])
    assert (entry["up"], entry["error"]) == (False, "no answer within 0.2 s")


async def test_a_server_without_prioritystatus_falls_back_to_status() -> None:
    asked: list[bytes] = []
    answers = {
        b"version": b"OK 1.0.6\n",
        b"status": b"old\t5\t2\t1\n.\n",
        b"prioritystatus": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
        b"workers": b"30 10.0.0.9 w : old\n31 10.0.0.8 - :\n.\n",
    }

    async def old_server(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            buffered = BufferedByteReceiveStream(stream)
            while True:
                try:
                    line = await buffered.receive_until(b"\n", 100)
                except anyio.IncompleteRead:  # the poller closed its connection
                    return
                asked.append(line.rstrip(b"\r"))
                await stream.send(answers[asked[-1]])

    async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, old_server)
            poller = Poller([f"127.0.0.1:{port}"], interval=1)
            with trio.fail_after(5):
                await poller.poll()
                await poller.poll()
            await poller.aclose()
            tg.cancel_scope.cancel()
    # prioritystatus is asked once per connection; version too.
    assert asked == [
        b"version",
        b"status",
        b"prioritystatus",
        b"workers",
        b"status",
        b"workers",
    ]
    (entry,) = rows(poller.view()["servers"])
    assert (entry["version"], entry["priorities"], entry["connections"]) == ("1.0.6", False, 2)
    (old,) = rows(entry["functions"])
    assert (old["waiting"], old["high"], old["running"], old["total"]) == (3, None, 2, 5)


@pytest.mark.gearmand
async def test_the_poller_reads_gearmand(gearmand: GearmandProcess) -> None:
    async with Client(gearmand.address) as client:
        await client.submit_background("resize", b"a", priority=Priority.HIGH)
        await client.submit_background("resize", b"b")
        await client.submit_background("resize", b"c", priority=Priority.LOW)
    poller = Poller([gearmand.address], interval=60)
    await poller.poll()
    await poller.aclose()
    (entry,) = rows(poller.view()["servers"])
    assert entry["up"] is True
    assert str(entry["version"]).startswith("1.1.")
    (resize,) = rows(entry["functions"])
    assert (resize["high"], resize["normal"], resize["low"], resize["waiting"]) == (1, 1, 1, 3)
    assert (resize["running"], resize["workers"], resize["no_workers"]) == (0, 0, True)


async def test_run_polls_before_it_reports_started_then_every_interval() -> None:
    async with open_test_server() as server:
        poller = Poller([server.address, server.address.replace("127.0.0.1", "localhost")])
        assert len(poller.servers) == 2
        poller = Poller([server.address, server.address], interval=0.05)
        assert poller.servers == (server.address,)  # each server once
        async with anyio.create_task_group() as tg:
            await tg.start(poller.run)
            assert poller.polls == 1
            with trio.fail_after(5):
                await poller.wait_polled()
            assert poller.polls >= 2
            tg.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Poller([]), "at least one server"),
        (lambda: Poller(["h"], interval=0), "positive number"),
        (lambda: Poller(["h"], interval=float("inf")), "positive number"),
        (lambda: Poller(["h"], timeout=0), "timeout must be positive"),
        (lambda: Poller(["h"], window=-1), "window must be positive"),
    ],
)
def test_the_poller_refuses_bad_settings(make: Callable[[], Poller], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_servers_get_the_default_port() -> None:
    assert Poller(["10.0.0.1", "[::1]:4731"]).servers == ("10.0.0.1:4730", "[::1]:4731")


def test_a_poll_may_take_the_interval_within_one_to_five_seconds() -> None:
    timeouts = [Poller(["h"], interval=interval).timeout for interval in (0.2, 2, 60)]
    assert timeouts == [1.0, 2, 5.0]


# --- the app -------------------------------------------------------------------------------------


async def test_the_page_the_api_and_the_static_files() -> None:
    async with open_test_server() as server, busy(server):
        poller = Poller([server.address, f"127.0.0.1:{free_port()}"], interval=3)
        await poller.poll()
        async with serving(create_app(poller)) as base:
            page = await http_get(base, "/?function=%3Cb%3E&server=" + server.address)
            api = await http_get(base, "/api/status")
            filtered = await http_get(base, "/api/status?function=thumb&server=" + server.address)
            script = await http_get(base, "/static/monitor.js")
            style = await http_get(base, "/static/monitor.css")
            missing = await http_get(base, "/nothing-here")
            no_file = await http_get(base, "/static/nothing.js")
        await poller.aclose()

    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-store"
    html = page.text
    assert f'{base}/static/monitor.js"' in html
    assert f'{base}/static/monitor.css"' in html
    assert f'data-api="{base}/api/status"' in html
    assert 'data-interval="3000"' in html
    assert 'value="&lt;b&gt;"' in html  # the filter comes back, escaped
    # The servers filtered on are ticked, the others not.
    assert re.search(rf'value="{re.escape(server.address)}"\s+checked', html)
    assert len(re.findall(r'name="server"', html)) == 2
    assert html.count(" checked>") == 1

    assert api.status == 200
    assert api.headers["content-type"] == "application/json"
    assert api.headers["cache-control"] == "no-store"
    data = api.json()
    assert [entry["up"] for entry in rows(data["servers"])] == [True, False]
    assert {row["function"] for row in rows(data["functions"])} == {"render", "thumbnail"}

    narrowed = filtered.json()
    assert narrowed["filters"] == {"servers": [server.address], "function": "thumb"}
    assert [row["function"] for row in rows(narrowed["functions"])] == ["thumbnail"]
    assert [entry["server"] for entry in rows(narrowed["servers"])] == [server.address]

    assert script.status == 200
    assert "javascript" in script.headers["content-type"]
    assert "fetch(" in script.text
    assert "textContent" in script.text
    assert style.status == 200
    assert style.headers["content-type"].startswith("text/css")
    assert missing.status == 404
    assert no_file.status == 404


async def test_the_app_can_be_mounted_under_a_path() -> None:
    async with open_test_server() as server:
        poller = Poller([server.address], interval=1)
        await poller.poll()
        outer = Starlette(routes=[Mount("/monitor", app=create_app(poller))])
        async with serving(outer) as base:
            page = await http_get(base, "/monitor/")
            api = await http_get(base, "/monitor/api/status")
            script = await http_get(base, "/monitor/static/monitor.js")
        await poller.aclose()
    assert f'{base}/monitor/static/monitor.js"' in page.text
    assert f'data-api="{base}/monitor/api/status"' in page.text
    assert rows(api.json()["servers"])[0]["up"] is True
    assert script.status == 200


async def test_serve_polls_first_then_serves() -> None:
    async with open_test_server() as server:
        poller = Poller([server.address], interval=60)
        async with anyio.create_task_group() as tg:
            urls = await tg.start(partial(serve, poller, port=0))
            assert poller.polls == 1
            (url,) = urls
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
            data = (await http_get(url, "/api/status")).json()
            tg.cancel_scope.cancel()
    assert rows(data["servers"])[0]["up"] is True
    assert data["interval"] == 60


def test_the_page_is_package_data() -> None:
    """Every template, script and style sheet is where the app reads it, and matches
    the package-data globs, so wheels and sdists carry it."""
    package = files("trio_gearman._monitor")
    shipped = sorted(
        f"{folder}/{item.name}"
        for folder in ("templates", "static")
        for item in (package / folder).iterdir()
        if item.is_file()
    )
    assert shipped == ["static/monitor.css", "static/monitor.js", "templates/index.html"]
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["trio_gearman._monitor"]
    for name in shipped:
        assert any(Path(name).match(pattern) for pattern in globs), name


def test_filters_from_a_request_query() -> None:
    assert Filters.from_query(["a:1,b:2"], "x") == Filters(frozenset({"a:1", "b:2"}), "x")
