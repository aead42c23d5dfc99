"""``trio-gearman monitor``: the command, as a process and in-process."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import pytest
import trio
from anyio.streams.buffered import BufferedByteReceiveStream

from trio_gearman import Client
from trio_gearman._cli.monitor import EXTRA_MISSING
from trio_gearman._cli.tools import build_parser, execute
from trio_gearman.testing import EmbeddedServer, open_test_server

from .gearmand_peer import free_port
from .monitor_helpers import http_get

COMMAND = [
    sys.executable,
    "-c",
    "import sys; from trio_gearman._cli.tools import main; sys.exit(main())",
]


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    """An embedded job server."""
    async with open_test_server() as embedded:
        yield embedded


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The command configures the package's logger: put it back after each test."""
    logger = logging.getLogger("trio_gearman")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@asynccontextmanager
async def monitoring(
    *args: str, env: dict[str, str] | None = None, stop: signal.Signals = signal.SIGINT
) -> AsyncIterator[tuple[str, str, anyio.abc.Process]]:
    """Run ``trio-gearman monitor ARGS --port 0`` as a process until it says where it
    serves; yield that line, the base URL and the process. Then ``stop`` stops it:
    SIGINT with exit status 130 and "interrupted", SIGTERM with 0 and nothing said."""
    process = await anyio.open_process(
        [*COMMAND, "monitor", *args, "--port", "0"],
        env={**os.environ, **(env or {})},
    )
    async with process:
        assert process.stderr is not None
        stderr = BufferedByteReceiveStream(process.stderr)
        try:
            with trio.fail_after(20):
                line = (await stderr.receive_until(b"\n", 4096)).decode()
            found = re.search(r" on (http://127\.0\.0\.1:\d+)/$", line)
            assert found, line
            yield line, found.group(1), process
        except BaseException:
            process.kill()  # never wait for a process left running
            raise
        with trio.fail_after(20):
            process.send_signal(stop)
            status = await process.wait()
            rest = await stderr.receive(4096) if stop == signal.SIGINT else b""
        if stop == signal.SIGINT:
            assert (status, rest) == (130, b"trio-gearman: interrupted\n")
        else:
            assert status == 0
            with pytest.raises(anyio.EndOfStream):
                await stderr.receive(4096)


async def test_the_command_serves_the_dashboard_until_interrupted() -> None:
    async with open_test_server() as server:
        async with Client(server.address) as client:
            await client.submit_background("resize", b"x")
        down = f"127.0.0.1:{free_port()}"
        command = [server.address, "--servers", down, "--interval", "0.2"]
        async with monitoring(*command) as (line, base, _):
            assert line == f"trio-gearman: monitoring {server.address}, {down} on {base}/"
            data = (await http_get(base, "/api/status")).json()
            page = await http_get(base, "/")
    servers = data["servers"]
    assert isinstance(servers, list)
    assert [(entry["server"], entry["up"]) for entry in servers] == [
        (server.address, True),
        (down, False),
    ]
    assert data["interval"] == 0.2
    functions = data["functions"]
    assert isinstance(functions, list)
    assert [(row["function"], row["waiting"]) for row in functions] == [("resize", 1)]
    assert page.status == 200
    assert "Gearman monitor" in page.text


async def test_servers_default_to_the_environment_and_sigterm_stops_quietly(
    server: EmbeddedServer,
) -> None:
    servers = f"{server.address},127.0.0.1:1"
    env = {"GEARMAN_SERVERS": servers}
    async with monitoring(env=env, stop=signal.SIGTERM) as (line, base, _):
        assert line.startswith(f"trio-gearman: monitoring {server.address}, 127.0.0.1:1 on ")
        data = (await http_get(base, "/api/status?server=127.0.0.1:1")).json()
    assert data["filters"] == {"servers": ["127.0.0.1:1"], "function": ""}


async def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run ``trio-gearman ARGS`` in-process; its exit status and stderr."""
    with trio.fail_after(10):
        status = await execute(list(args))
    return status, capsys.readouterr().err


@pytest.mark.parametrize("missing", ["hypercorn", "starlette", "jinja2"])
async def test_without_the_extra_the_command_says_what_to_install(
    missing: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "trio_gearman._monitor.web", raising=False)
    for name in [name for name in sys.modules if name.startswith(f"{missing}.")]:
        monkeypatch.delitem(sys.modules, name)  # imported by other tests: forget them
    monkeypatch.setitem(sys.modules, missing, None)
    status, err = await run(capsys, "monitor", "127.0.0.1:1", "--port", "0")
    assert (status, err) == (1, f"trio-gearman: {EXTRA_MISSING}\n")
    assert EXTRA_MISSING == "install the 'monitor' extra: pip install 'trio-gearman[monitor]'"


async def test_other_import_errors_are_not_taken_for_a_missing_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "trio_gearman._monitor.web", None)
    with pytest.raises(ImportError, match=r"trio_gearman\._monitor\.web"):
        await execute(["monitor", "127.0.0.1:1"])


# A failed bind leaves Hypercorn's socket to the garbage collector (a ResourceWarning,
# an error under this suite's filterwarnings): these run as processes.


async def test_a_port_in_use_is_reported(server: EmbeddedServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(20):
            done = await anyio.run_process(
                [*COMMAND, "monitor", server.address, "--port", str(port)], check=False
            )
    assert done.returncode == 1
    assert done.stderr == (
        f"trio-gearman: cannot serve on 127.0.0.1:{port}: Address already in use\n".encode()
    )


async def test_a_bad_listen_address_is_reported(server: EmbeddedServer) -> None:
    with trio.fail_after(20):
        done = await anyio.run_process(
            [*COMMAND, "monitor", server.address, "--listen", "256.0.0.1"], check=False
        )
    assert done.returncode == 1
    assert done.stderr.startswith(b"trio-gearman: cannot serve on 256.0.0.1:8080: ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "'70000' is not a port number"),
        (["--port", "-1"], "'-1' is not a port number"),
        (["--interval", "0"], "0 is not a positive number of seconds"),
        (["--interval", "inf"], "the poll interval must be a positive number"),
        (["--window", "0"], "0 is not a positive number of seconds"),
        (["a:b:c"], "a:b:c"),
    ],
)
async def test_bad_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = await run(capsys, "monitor", *args)
    assert status == 2
    assert message in err


def test_the_command_is_listed() -> None:
    help_text = build_parser().format_help()
    assert re.search(r"^\s+monitor\s+a live dashboard", help_text, re.MULTILINE)
    monitor = build_parser().parse_args(["monitor", "h1", "h2:4731,h3"])
    assert (monitor.addresses, monitor.servers) == (["h1", "h2:4731,h3"], None)
    assert (monitor.port, monitor.listen, monitor.interval) == (8080, "127.0.0.1", 2.0)
