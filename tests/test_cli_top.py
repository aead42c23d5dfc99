"""``trio-gearman top``: one frame for scripts (``--once``), and the live view under a
real pseudo-terminal.

``--once`` runs in-process against the embedded server and against gearmand 1.1.20;
the live view runs as a process on a pty, driven by its keyboard.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from trio_gearman import Client, Priority
from trio_gearman._cli import top
from trio_gearman._worker.job import Job
from trio_gearman.testing import EmbeddedServer, open_test_server

from .gearmand_peer import GearmandProcess, free_port
from .test_cli_tools import COMMAND, Ran, cli, no_traceback, running_worker

HEADER = ["function", "waiting", "high/normal/low", "running", "workers", "change/s"]


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with open_test_server() as embedded:
        yield embedded


def frame_lines(ran: Ran) -> list[str]:
    text = ran.out.decode()
    assert "\x1b" not in text, text  # not a terminal: plain text
    return text.split("\n")


def table(ran: Ran, header: list[str] = HEADER) -> list[list[str]]:
    """The functions' table of a ``--once`` frame: its rows, split into columns."""
    lines = frame_lines(ran)
    start = next(i for i, line in enumerate(lines) if line.split() == header)
    rows = [line.split() for line in lines[start + 1 :]]
    assert rows[-1] == [], ran.out  # the frame ends with a newline
    return rows[:-1]


@asynccontextmanager
async def queue_and_hold(address: str) -> AsyncIterator[None]:
    """Queue jobs, and hold one ``resize`` job in a worker, for the block.

    Leaves ``resize``: 2 waiting (NORMAL), 1 running, 1 worker; ``thumb``: 1 waiting
    (LOW), no worker; ``idle``: a worker and no job.
    """
    async with Client(address) as client:
        await client.submit_background("resize", b"1", priority=Priority.HIGH)
        await client.submit_background("resize", b"2")
        await client.submit_background("resize", b"3")
        await client.submit_background("thumb", b"4", priority=Priority.LOW)
    started, release = trio.Event(), trio.Event()

    async def hold(job: Job) -> bytes:
        started.set()
        await release.wait()
        return b""

    async with running_worker(address, {"resize": hold, "idle": hold}):
        with trio.fail_after(5):
            await started.wait()
        yield
        release.set()


EXPECTED_ROWS = [
    ["resize", "2", "0/2/0", "1", "1", "-"],
    ["thumb", "1", "0/0/1", "0", "0", "-"],
    ["idle", "0", "0/0/0", "0", "1", "-"],
]


# --- --once against the embedded server ---------------------------------------------------


async def test_once_shows_each_function_busiest_first(server: EmbeddedServer) -> None:
    async with queue_and_hold(server.address):
        ran = await cli("top", "--once", server.address)
    assert (ran.status, ran.err) == (0, "")
    assert table(ran) == EXPECTED_ROWS
    first = frame_lines(ran)[0].split()
    # Our admin connection and the worker's.
    assert first == [server.address, "up", "version", first[3], "2", "connections", "(1", "worker)"]


async def test_servers_come_from_the_environment_too(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Client(server.address) as client:
        await client.submit_background("from-env", b"x")
    monkeypatch.setenv("GEARMAN_SERVERS", server.address)
    ran = await cli("top", "--once")
    assert ran.status == 0
    assert table(ran) == [["from-env", "1", "0/1/0", "0", "0", "-"]]


async def test_several_servers_get_a_server_column_and_a_line_each() -> None:
    down = f"127.0.0.1:{free_port()}"
    async with open_test_server() as first, open_test_server() as second:
        async with Client(second.address) as client:
            await client.submit_background("busy", b"x")
            await client.submit_background("busy", b"y")
        async with Client(first.address) as client:
            await client.submit_background("busy", b"z")
        ran = await cli("top", "--once", first.address, "--servers", f"{second.address},{down}")
    assert ran.status == 1  # one server did not answer
    assert ran.err == f"trio-gearman: {down}: cannot connect: Connection refused\n"
    header = ["function", "server", *HEADER[1:]]
    assert table(ran, header) == [
        ["busy", second.address, "2", "0/2/0", "0", "0", "-"],
        ["busy", first.address, "1", "0/1/0", "0", "0", "-"],
    ]
    servers = [line.split()[:2] for line in frame_lines(ran)[:3]]
    assert servers == [[first.address, "up"], [second.address, "up"], [down, "down"]]
    assert "cannot connect: Connection refused" in frame_lines(ran)[2]


async def test_a_server_without_functions(server: EmbeddedServer) -> None:
    ran = await cli("top", "--once", server.address)
    assert ran.status == 0
    assert table(ran) == [["(no", "functions)"]]


async def test_no_server_reachable_exits_3() -> None:
    down = f"127.0.0.1:{free_port()}"
    ran = await cli("top", "--once", down)
    assert (ran.status, ran.out) == (3, b"")
    assert ran.err == (
        f"trio-gearman: no Gearman server could be reached: {down}: cannot connect: "
        "Connection refused\n"
    )


@pytest.mark.gearmand
async def test_function_names_are_escaped(gearmand: GearmandProcess) -> None:
    # Our server refuses such a name (INVALID_FUNCTION_NAME); gearmand lists it as it is.
    try:
        async with Client(gearmand.address) as client:
            await client.submit_background(b"evil\x1b[2J", b"x")
        ran = await cli("top", "--once", "--servers", gearmand.address)
    finally:
        if gearmand.process.stderr is not None:
            gearmand.process.stderr.close()
    assert table(ran)[0][0] == "evil\\x1b[2J"


async def test_live_view_needs_a_terminal(server: EmbeddedServer) -> None:
    ran = await cli("top", server.address)
    assert ran.status == 2
    assert "stdout is not a terminal: use --once" in ran.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "0"], "is not a positive number of seconds"),
        (["host:port"], "argument SERVER"),
    ],
)
async def test_bad_arguments(args: list[str], message: str) -> None:
    ran = await cli("top", "--once", *args)
    assert ran.status == 2
    assert message in ran.err


async def test_without_rich_it_says_which_extra_to_install(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in sys.modules if name.split(".")[0] == "rich"] + ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)
    ran = await cli("top", "--once", server.address)
    assert (ran.status, ran.out) == (1, b"")
    assert ran.err == (
        "trio-gearman: install the 'monitor' extra: pip install 'trio-gearman[monitor]'\n"
    )


async def test_help_describes_the_columns() -> None:
    ran = await cli("top", "--help")
    assert ran.status == 0
    assert "not a throughput" in ran.out.decode()
    assert "top" in (await cli("--help")).out.decode()


# --- --once against gearmand 1.1.20 -------------------------------------------------------


@pytest.mark.gearmand
async def test_once_against_gearmand(gearmand: GearmandProcess) -> None:
    try:
        async with queue_and_hold(gearmand.address):
            ran = await cli("top", "--once", "--servers", gearmand.address)
    finally:
        if gearmand.process.stderr is not None:
            gearmand.process.stderr.close()
    assert (ran.status, ran.err) == (0, "")
    assert table(ran) == EXPECTED_ROWS
    first = frame_lines(ran)[0].split()
    assert first[:3] == [gearmand.address, "up", "version"]
    assert first[3].startswith("1.1.")
    assert first[4:] == ["2", "connections", "(1", "worker)"]


# --- the live view on a pseudo-terminal ---------------------------------------------------

ALT_SCREEN_ON, ALT_SCREEN_OFF = b"\x1b[?1049h", b"\x1b[?1049l"
CURSOR_HIDDEN, CURSOR_SHOWN = b"\x1b[?25l", b"\x1b[?25h"


class Terminal:
    """A pseudo-terminal for a child process: what it wrote, and its keyboard."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
        os.set_blocking(self.master, False)
        self.output = bytearray()
        self._changed = trio.Event()

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)

    def mode(self) -> list[object]:
        """The terminal's attributes (what ``stty -a`` shows)."""
        return list(termios.tcgetattr(self.slave))

    def local_modes(self) -> int:
        """The terminal's local modes: ICANON, ECHO, ..."""
        flags: int = termios.tcgetattr(self.slave)[3]
        return flags

    def _read(self) -> bool:
        """Read what is there; False once nothing is left to read now."""
        try:
            data = os.read(self.master, 65536)
        except OSError:  # BlockingIOError: nothing now; EIO: the other side is closed
            return False
        self.output += data
        self._changed.set()
        self._changed = trio.Event()
        return bool(data)

    async def pump(self) -> None:
        """Read what the child writes, for as long as it runs (in a task)."""
        while True:
            await trio.lowlevel.wait_readable(self.master)
            self._read()

    def drain(self) -> None:
        """Read what is left once the child has exited."""
        while self._read():
            pass

    async def read_until(self, expected: bytes) -> None:
        """Wait until the child has written ``expected``."""
        with trio.fail_after(15):
            while expected not in self.output:
                await self._changed.wait()

    async def wait_shown(self, pattern: str) -> None:
        """Wait until the screen shows text that matches ``pattern`` (escapes left out)."""
        with trio.fail_after(15):
            while not re.search(pattern, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", self.text())):
                await self._changed.wait()

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)


@pytest.fixture
def terminal() -> Iterator[Terminal]:
    pseudo = Terminal()
    yield pseudo
    pseudo.close()


async def start_top(terminal: Terminal, address: str) -> trio.Process:
    env = {**os.environ, "TERM": "xterm-256color"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "COLUMNS", "LINES"):
        env.pop(name, None)
    return await trio.lowlevel.open_process(
        [*COMMAND, "top", "--interval", "0.2", address],
        stdin=terminal.slave,
        stdout=terminal.slave,
        stderr=terminal.slave,
        env=env,
    )


@asynccontextmanager
async def top_on(terminal: Terminal, server: EmbeddedServer) -> AsyncIterator[trio.Process]:
    """``trio-gearman top`` on the terminal, once it shows two queued jobs.

    The process is killed at the end if it still runs (a failed test leaves none).
    """
    async with Client(server.address) as client:
        await client.submit_background("on-the-screen", b"x")
        await client.submit_background("on-the-screen", b"y")
    assert terminal.local_modes() & termios.ICANON
    assert terminal.local_modes() & termios.ECHO
    async with trio.open_nursery() as nursery:
        nursery.start_soon(terminal.pump)
        process = await start_top(terminal, server.address)
        try:
            await terminal.read_until(b"on-the-screen")
            await terminal.read_until(b"change/s")
            # Keys one by one, not echoed, while it runs.
            assert not terminal.local_modes() & (termios.ICANON | termios.ECHO)
            yield process
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
            nursery.cancel_scope.cancel()
    terminal.drain()


async def test_live_view_quits_on_q_and_restores_the_terminal(
    server: EmbeddedServer, terminal: Terminal
) -> None:
    before = terminal.mode()
    async with top_on(terminal, server) as process:
        # The row, from the second poll on: 2 waiting, no change since the poll before.
        await terminal.wait_shown(r"on-the-screen +2 +0/2/0 +0 +0 +0 *\r\n")
        async with Client(server.address) as client:
            await client.submit_background("on-the-screen", b"z")
        # One job more since the poll before: a positive change per second.
        await terminal.wait_shown(r"on-the-screen +3 +0/3/0 +0 +0 +\+\d+\.\d *\r\n")
        terminal.type(b"q")
        with trio.fail_after(15):
            status = await process.wait()
    assert status == 0, bytes(terminal.output)
    output = bytes(terminal.output)
    assert b"Traceback" not in output
    # Into the alternate screen with the cursor hidden, and back out with it shown.
    assert ALT_SCREEN_ON in output
    assert CURSOR_HIDDEN in output
    assert ALT_SCREEN_OFF in output[output.rindex(ALT_SCREEN_ON) :]
    assert CURSOR_SHOWN in output[output.rindex(CURSOR_HIDDEN) :]
    assert terminal.mode() == before  # what `stty -a` shows: as it was


async def test_ctrl_c_restores_the_terminal_too(server: EmbeddedServer, terminal: Terminal) -> None:
    before = terminal.mode()
    async with top_on(terminal, server) as process:
        terminal.output.clear()  # what it writes from now on
        process.send_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        with trio.fail_after(15):
            status = await process.wait()
    assert status == 130, bytes(terminal.output)
    output = bytes(terminal.output)
    assert ALT_SCREEN_OFF in output
    assert CURSOR_SHOWN in output
    assert b"trio-gearman: interrupted" in output
    assert terminal.mode() == before
    no_traceback(Ran(status, b"", output.decode(errors="replace")))


# --- servers that answer badly or not at all ----------------------------------------------


@asynccontextmanager
async def scripted_server(replies: dict[bytes, bytes]) -> AsyncIterator[str]:
    """A TCP server answering each admin line from ``replies`` (nothing for the others)."""

    async def serve(stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            async for data in stream:
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    if line in replies:
                        await stream.send_all(replies[line])

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        yield f"127.0.0.1:{listener.socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def test_without_prioritystatus_waiting_is_status_total_less_running() -> None:
    replies = {
        b"status": b"old\t5\t2\t1\n.\n",
        # A server older than gearmand 1.1.15 (ERR lines end in CRLF).
        b"prioritystatus": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
        b"workers": b"7 10.0.0.9 - : old\n8 10.0.0.1 - :\n.\n",
        b"version": b"OK 1.1.8\n",
    }
    async with scripted_server(replies) as address:
        ran = await cli("top", "--once", address)
    assert (ran.status, ran.err) == (0, "")
    assert table(ran) == [["old", "3", "-", "2", "1", "-"]]
    assert frame_lines(ran)[0].split()[1:] == [
        "up",
        "version",
        "1.1.8",
        "2",
        "connections",
        "(1",
        "worker)",
    ]


async def test_a_server_that_does_not_answer_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(top, "POLL_TIMEOUT", 0.2)
    async with scripted_server({}) as address:
        ran = await cli("top", "--once", address)
    assert (ran.status, ran.out) == (3, b"")
    assert ran.err == (
        f"trio-gearman: no Gearman server could be reached: {address}: no answer within 0.2 s\n"
    )


async def test_a_broken_reply_is_reported() -> None:
    async with scripted_server({b"status": b"not a status line\n.\n"}) as address:
        ran = await cli("top", "--once", address)
    assert ran.status == 3
    assert ran.err.startswith(f"trio-gearman: no Gearman server could be reached: {address}: ")
    assert f"{address}: {address}" not in ran.err  # the address once
    no_traceback(ran)
