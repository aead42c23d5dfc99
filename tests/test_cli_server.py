"""The ``trio-gearmand`` command, run as a real process."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import trio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream

from trio_gearman._cli.server import LEVELS, _setup_logging, main, parse_options
from trio_gearman._proto import COMPILED
from trio_gearman._proto._codec import Decoder, encode
from trio_gearman._proto._packets import (
    CanDo,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Magic,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._version import __version__

from .gearmand_peer import free_port

COMMAND = [
    sys.executable,
    "-c",
    "import sys; from trio_gearman._cli.server import main; sys.exit(main())",
]
LISTENING = re.compile(rb"Listening on 127\.0\.0\.1:(\d+)")


class ServerProcess:
    """A running ``trio-gearmand`` and the log lines it wrote so far."""

    def __init__(self, process: Process, stderr: ByteReceiveStream) -> None:
        self.process = process
        self.log: list[bytes] = []
        self.port = 0
        self._stderr = BufferedByteReceiveStream(stderr)

    async def wait_for_line(self, pattern: bytes) -> bytes:
        """Read the log until a line contains ``pattern``."""
        for line in self.log:
            if pattern in line:
                return line
        with trio.fail_after(10):
            while True:
                try:
                    line = await self._stderr.receive_until(b"\n", 65536)
                except anyio.IncompleteRead:
                    raise AssertionError(
                        f"no {pattern!r} in the log: {b''.join(self.log)!r}"
                    ) from None
                self.log.append(line + b"\n")
                if pattern in line:
                    return line

    async def rest_of_log(self) -> bytes:
        """Everything the process writes to stderr until it exits."""
        chunks = []
        try:
            while True:
                chunks.append(await self._stderr.receive())
        except (anyio.EndOfStream, anyio.IncompleteRead):
            pass
        return b"".join(self.log) + b"".join(chunks)


@asynccontextmanager
async def trio_gearmand(
    args: Sequence[str],
    env: dict[str, str] | None = None,
    wait_listening: bool = True,
    wrapper: Sequence[str] = (),
) -> AsyncIterator[ServerProcess]:
    """Start ``trio-gearmand`` (INFO log on stderr); wait for its "Listening" line.

    ``wrapper`` is a command that runs it (``setpriv ... --``, say).
    """
    process = await anyio.open_process(
        [*wrapper, *COMMAND, "--verbose", "INFO", *args],
        stdin=None,
        stdout=None,
        env=env,
    )
    assert process.stderr is not None
    server = ServerProcess(process, process.stderr)
    try:
        if wait_listening:
            line = await server.wait_for_line(b"Listening on")
            match = LISTENING.search(line)
            assert match, line
            server.port = int(match.group(1))
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await process.aclose()


async def admin(port: int, command: bytes) -> bytes:
    """Send one admin command; return the first reply line."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(command + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            reply += await stream.receive()
        return reply


async def expect_exit(server: ServerProcess, code: int = 0) -> bytes:
    """Wait (briefly) for the process to exit with ``code``; return its log."""
    with trio.fail_after(10):
        log = await server.rest_of_log()
        assert await server.process.wait() == code, log
    assert b"Traceback" not in log, log
    return log


# --- the command line (in-process) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["-p", "http"], "argument -p/--port: 'http' is not a whole number"),
        (["-p", "70000"], "not a TCP port"),
        (["--verbose", "LOUD"], "'LOUD' is not one of FATAL"),
        (["-j", "-1"], "-1 is less than 0"),
        (["-q", "mysql"], "queue type 'mysql' is not supported;"),
        (["-q", "nosuch"], "unknown queue type 'nosuch'"),
        (["--graceful-timeout", "soon"], "not a number of seconds"),
        (["--config-file", "/nonexistent/gearmand.conf"], "cannot read the config file"),
        (["--job-handle-prefix", ""], "must not be empty"),
        (["--max-function-name", "0"], "0 is less than 1"),
        (["--max-function-name", "big"], "'big' is not a whole number"),
    ],
)
def test_bad_options_exit_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("trio-gearmand: error: ")
    assert "Traceback" not in err


def test_version_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-V"]) == 0
    build = "compiled with mypyc" if COMPILED else "pure Python"
    assert capsys.readouterr().out.strip() == f"trio-gearmand {__version__} ({build})"


def test_gearmand_options_are_accepted() -> None:
    options = parse_options(
        [
            "-p", "4731", "-L", "127.0.0.1", "-L", "::1", "-b", "64", "-j", "3",
            "--job-handle-prefix", "JH", "--exceptions", "-w", "2", "-l", "none",
            "--verbose", "debug", "--keepalive", "--keepalive-idle", "60", "-R", "-t", "4",
            "-f", "4096", "-q", "builtin", "--graceful-timeout", "1.5",
        ],
        environ={},
    )  # fmt: skip
    assert options.port == 4731
    assert options.listen == ["127.0.0.1", "::1"]
    assert (options.backlog, options.job_retries, options.worker_wakeup) == (64, 3, 2)
    assert options.job_handle_prefix == "JH"
    assert options.exceptions
    assert options.keepalive
    assert options.round_robin
    assert options.verbose == "DEBUG"
    assert options.file_descriptors == 4096
    assert options.graceful_timeout == 1.5


def test_port_defaults_and_environment() -> None:
    assert parse_options([], environ={}).port == 4730
    assert parse_options([], environ={"GEARMAND_PORT": "4999"}).port == 4999
    assert parse_options(["-p", "5000"], environ={"GEARMAND_PORT": "4999"}).port == 5000
    assert parse_options([], environ={}).job_handle_prefix == "H:" + socket.gethostname()


def test_config_file_in_gearmand_format(tmp_path: Path) -> None:
    config = tmp_path / "gearmand.conf"
    config.write_text(
        "# trio-gearmand settings\n"
        "--port=4800 --job-retries=2\r\n--listen=127.0.0.1\n--exceptions\n"
    )
    options = parse_options([f"--config-file={config}", "-j", "5"], environ={})
    assert options.port == 4800
    assert options.listen == ["127.0.0.1"]
    assert options.exceptions
    assert options.job_retries == 5  # the command line wins
    assert parse_options([f"@{config}"], environ={}).port == 4800


def test_log_file_and_levels(tmp_path: Path) -> None:
    package_logger = logging.getLogger("trio_gearman")
    saved = package_logger.handlers[:], package_logger.level, package_logger.propagate
    log_file = tmp_path / "gearmand.log"
    try:
        _setup_logging(str(log_file), "NOTICE")
        server_logger = logging.getLogger("trio_gearman.server")
        server_logger.info("not at NOTICE")
        server_logger.log(LEVELS["NOTICE"], "a notice")
        server_logger.warning("a warning")
        lines = log_file.read_text().splitlines()
        assert [line.split("] ", 1)[1] for line in lines] == ["a notice", "a warning"]
        assert re.match(r" NOTICE \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6} \[  main \] ", lines[0])
        assert lines[1].startswith("WARNING ")
        _setup_logging("none", "DEBUG")
        server_logger.error("dropped")
        assert len(log_file.read_text().splitlines()) == 2
    finally:
        for handler in package_logger.handlers:
            handler.close()
        package_logger.handlers[:], package_logger.level, package_logger.propagate = saved


# --- the running process ----------------------------------------------------------------------


async def test_bad_option_in_a_real_process_exits_2() -> None:
    result = await anyio.run_process([*COMMAND, "--no-such-option"], check=False)
    assert result.returncode == 2
    assert b"unrecognized arguments: --no-such-option" in result.stderr
    assert b"Traceback" not in result.stderr


async def test_starts_and_answers_version_then_stops_on_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "trio-gearmand.pid"
    port = free_port()
    async with trio_gearmand(["-L", "127.0.0.1", "-p", str(port), "-P", str(pid_file)]) as server:
        assert server.port == port
        assert pid_file.read_text().strip() == str(server.process.pid)
        assert await admin(server.port, b"version") == f"OK {__version__}\n".encode()
        assert await admin(server.port, b"getpid") == f"OK {server.process.pid}\n".encode()
        server.process.send_signal(signal.SIGTERM)
        log = await expect_exit(server)
    assert b"Received SIGTERM, shutting down" in log
    assert not pid_file.exists()


async def test_max_function_name_refuses_longer_names() -> None:
    assert parse_options([], environ={}).max_function_name == 8192
    async with trio_gearmand(["-L", "127.0.0.1", "-p", "0", "--max-function-name", "4"]) as server:
        assert await admin(server.port, b"create function abcd") == b"OK\r\n"
        assert await admin(server.port, b"create function abcde") == (
            b"ERR ARGUMENT_TOO_LARGE Function+name+longer+than+4+bytes\r\n"
        )
        server.process.terminate()
        await server.rest_of_log()


async def test_sigint_stops_cleanly() -> None:
    async with trio_gearmand(["-L", "127.0.0.1", "-p", "0"]) as server:
        server.process.send_signal(signal.SIGINT)
        assert b"Received SIGINT" in await expect_exit(server)


async def test_port_from_the_environment() -> None:
    port = free_port()
    env = {**os.environ, "GEARMAND_PORT": str(port)}
    async with trio_gearmand(["-L", "127.0.0.1"], env=env) as server:
        assert server.port == port
        server.process.terminate()
        await expect_exit(server)


async def test_listen_failure_exits_1_with_a_message() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        async with trio_gearmand(
            ["-L", "127.0.0.1", "-p", str(port)], wait_listening=False
        ) as server:
            log = await expect_exit(server, 1)
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use".encode() in log
    assert b"(--listen 127.0.0.1)" in log


async def test_listen_failure_names_which_of_several_addresses_failed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        async with trio_gearmand(
            ["-L", "localhost", "-L", "127.0.0.1", "-p", str(port)], wait_listening=False
        ) as server:
            log = await expect_exit(server, 1)
    # localhost comes first and holds 127.0.0.1, which is taken.
    assert f"cannot listen on 127.0.0.1:{port}".encode() in log
    assert b"(--listen localhost)" in log


async def test_the_default_level_says_where_it_listens_and_which_queue() -> None:
    async with trio_gearmand(["-L", "127.0.0.1", "-p", "0", "--verbose", "ERROR"]) as server:
        server.process.terminate()
        log = await expect_exit(server)
    assert b"Listening on 127.0.0.1:" in log
    assert b"Queue: in memory" in log
    assert b"Starting up" not in log  # the other INFO lines stay quiet


async def test_config_file_sets_the_job_handle_prefix(tmp_path: Path) -> None:
    config = tmp_path / "gearmand.conf"
    config.write_text("--listen=127.0.0.1 --port=0\n--job-handle-prefix=CF\n")
    async with trio_gearmand(["--config-file", str(config)]) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(encode(SubmitJob(b"f", b"", b"x", background=True)))
            decoder = Decoder(expect=Magic.RES)
            decoder.feed(await stream.receive())
            assert list(decoder) == [JobCreated(b"CF:1")]
        server.process.terminate()
        await expect_exit(server)


async def test_sigusr1_drains_running_jobs_then_exits() -> None:
    async with trio_gearmand(["-L", "127.0.0.1", "-p", "0"]) as server:
        client = await anyio.connect_tcp("127.0.0.1", server.port)
        worker = await anyio.connect_tcp("127.0.0.1", server.port)
        async with client, worker:
            client_decoder = Decoder(expect=Magic.RES)
            worker_decoder = Decoder(expect=Magic.RES)
            await client.send(encode(SubmitJob(b"f", b"", b"data")))
            client_decoder.feed(await client.receive())
            [created] = list(client_decoder)
            assert isinstance(created, JobCreated)
            await worker.send(encode(CanDo(b"f")) + encode(GrabJobUniq()))
            worker_decoder.feed(await worker.receive())
            assert list(worker_decoder) == [JobAssignUniq(created.handle, b"f", b"", b"data")]

            server.process.send_signal(signal.SIGUSR1)
            await server.wait_for_line(b"Stopped listening")
            with pytest.raises(OSError, match="All connection attempts failed"):
                await anyio.connect_tcp("127.0.0.1", server.port)
            assert server.process.returncode is None
            # The running job may still finish, and its client hears of it.
            await worker.send(encode(WorkComplete(created.handle, b"atad")))
            client_decoder.feed(await client.receive())
            assert list(client_decoder) == [WorkComplete(created.handle, b"atad")]
            await expect_exit(server)


async def test_sigusr1_gives_up_after_the_graceful_timeout() -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--graceful-timeout", "0.2"]
    async with (
        trio_gearmand(args) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as worker,
    ):
        await worker.send(
            encode(SubmitJob(b"f", b"", b"data", background=True))
            + encode(CanDo(b"f"))
            + encode(GrabJobUniq())
        )
        received = b""
        while b"data" not in received:
            received += await worker.receive()
        server.process.send_signal(signal.SIGUSR1)
        log = await expect_exit(server)
    assert b"1 jobs were still running after 0.2 s" in log


async def test_json_log_lines_carry_the_peer() -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--log-format", "json", "--verbose", "DEBUG"]
    async with trio_gearmand(args) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(b"\0REQ\x00\x00\x00\x63\x00\x00\x00\x00")  # unknown packet type
            with trio.fail_after(10):
                line = await server.wait_for_line(b"Closing the connection from")
        server.process.terminate()
        rest = await server.rest_of_log()
    record = json.loads(line)
    assert record["level"] == "INFO"
    assert record["logger"] == "trio_gearman.server"
    assert record["peer"] == "127.0.0.1"
    assert record["message"].startswith("Closing the connection from 127.0.0.1")
    assert record["time"].endswith("+00:00")
    for text in rest.decode().splitlines():
        if text.strip():
            json.loads(text)  # every line is one JSON object


async def test_json_log_lines_about_a_job_carry_its_handle_function_and_peer() -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--log-format", "json", "--job-handle-prefix", "H:log"]
    async with trio_gearmand(args) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as client:
            await client.send(encode(SubmitJob(b"resize", b"", b"x", background=True)))
            worker = await anyio.connect_tcp("127.0.0.1", server.port)
            async with worker:
                await worker.send(encode(CanDo(b"resize")) + encode(GrabJobUniq()))
                received = b""
                while b"resize" not in received:  # JOB_ASSIGN
                    received += await worker.receive()
            # the worker went away with the job: it is queued again, and the log says so
            with trio.fail_after(10):
                line = await server.wait_for_line(b"its worker went away")
        server.process.terminate()
        await expect_exit(server)
    record = json.loads(line)
    assert record["level"] == "INFO"
    assert (record["handle"], record["function"], record["peer"]) == (
        "H:log:1",
        "resize",
        "127.0.0.1",
    )
    assert record["message"] == (
        "Job H:log:1 (resize, from 127.0.0.1): its worker went away; queued again (attempt 2)"
    )
