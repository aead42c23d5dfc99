"""The ``trio-gearman`` command: submit, status, admin and worker.

Most runs call :func:`execute` in-process (same event loop as the embedded job
server and the workers the tests steer); a few run the real command as a process,
against gearmand 1.1.20 and the ``gearman``/``gearadmin`` tools too.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib.metadata import entry_points
from pathlib import Path

import anyio
import attrs
import pytest
import trio
import trio.testing
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from trio_gearman import Client, JobException, JobFailed, Priority, Worker
from trio_gearman._cli.common import UsageError
from trio_gearman._cli.tools import execute
from trio_gearman._cli.worker import WorkerLoadError, load_worker, serve_worker
from trio_gearman._proto import CanDo, encode
from trio_gearman._worker.job import Handler, Job
from trio_gearman.testing import EmbeddedServer, open_test_server

from .gearmand_peer import GearmandProcess, free_port, run_gearmand

COMMAND = [
    sys.executable,
    "-c",
    "import sys; from trio_gearman._cli.tools import main; sys.exit(main())",
]


# --- running the command ------------------------------------------------------------------


@attrs.frozen
class Ran:
    """What a run of the command did."""

    status: int
    out: bytes
    err: str


async def cli(*args: str, stdin: bytes = b"") -> Ran:
    """Run ``trio-gearman ARGS`` in-process, with its own stdin, stdout and stderr."""
    saved = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.BytesIO()
    fake_in = io.TextIOWrapper(io.BytesIO(stdin))
    fake_out = io.TextIOWrapper(out, write_through=True)
    fake_err = io.TextIOWrapper(err, write_through=True)
    sys.stdin, sys.stdout, sys.stderr = fake_in, fake_out, fake_err
    try:
        with trio.fail_after(10):
            status = await execute(list(args))
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
    return Ran(status, out.getvalue(), err.getvalue().decode())


async def run_process(
    *args: str, stdin: bytes = b"", cwd: Path | None = None, env: dict[str, str] | None = None
) -> Ran:
    """Run the real command as a process."""
    with trio.fail_after(20):
        result = await anyio.run_process(
            [*COMMAND, *args], input=stdin, check=False, cwd=cwd, env=env
        )
    return Ran(result.returncode, result.stdout, result.stderr.decode())


def no_traceback(ran: Ran) -> None:
    assert "Traceback" not in ran.err, ran.err


@asynccontextmanager
async def running_worker(
    address: str, functions: dict[str, Handler], **options: object
) -> AsyncIterator[Worker]:
    """Our Worker serving ``functions`` for the duration of the block."""
    worker = Worker(address, **options)  # type: ignore[arg-type]
    for name, handler in functions.items():
        worker.register(name, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        worker.stop(0)


async def reverse(job: Job) -> bytes:
    return job.data[::-1]


async def fail(job: Job) -> bytes:
    raise JobFailed()


async def explode(job: Job) -> bytes:
    raise JobException(b"disk full on node-7")


def functions_status(ran: Ran) -> dict[str, list[str]]:
    """A ``status``-like listing, keyed by its first column."""
    lines = ran.out.decode().split("\n")
    assert lines[-2:] == [".", ""], ran.out
    return {line.split("\t")[0]: line.split("\t")[1:] for line in lines[:-2]}


# --- help and bad arguments --------------------------------------------------------------


async def test_help_lists_every_command_and_the_exit_statuses() -> None:
    ran = await cli("--help")
    assert ran.status == 0
    text = ran.out.decode()
    for command in ("submit", "status", "admin", "worker"):
        assert command in text
    assert "3 no job server reachable" in text


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("submit", "--background"),
        ("status", "GET_STATUS_UNIQUE"),
        ("admin", "maxqueue FUNCTION [N | HIGH NORMAL LOW]"),
        ("worker", "--drain-timeout"),
    ],
)
async def test_each_command_has_help(command: str, expected: str) -> None:
    ran = await cli(command, "--help")
    assert ran.status == 0
    assert expected in ran.out.decode()
    assert "--servers" in ran.out.decode()


async def test_version() -> None:
    ran = await cli("--version")
    assert (ran.status, ran.out.decode().split()[0]) == (0, "trio-gearman")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice"),
        (["submit"], "required: FUNCTION"),
        (["submit", "f", "--priority", "urgent"], "invalid choice"),
        (["submit", "f", "--servers", "host:notaport"], "--servers"),
        (["submit", "f", "--timeout", "-1"], "positive number of seconds"),
        (["admin", "restart"], "invalid choice"),
        (["admin", "status", "extra"], "status takes no arguments"),
        (["admin", "cancel-job"], "expected: admin cancel-job HANDLE"),
        (["admin", "maxqueue", "f", "1", "2"], "expected: admin maxqueue"),
        (["admin", "maxqueue", "f", "lots"], "'lots' is not a whole number"),
        (["worker", "no-colon"], "is not MODULE:OBJECT"),
        (["worker", "app:w", "--drain-timeout", "soon"], "not a number of seconds"),
    ],
)
async def test_bad_arguments_exit_2_with_the_usage(args: list[str], message: str) -> None:
    ran = await cli(*args)
    assert ran.status == 2
    assert ran.out == b""
    assert "usage: trio-gearman" in ran.err
    assert message in ran.err
    no_traceback(ran)


@pytest.mark.parametrize("value", ["127.0.0.1:99999", "a:b:c"])
async def test_malformed_gearman_servers_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("GEARMAN_SERVERS", value)
    ran = await cli("admin", "status")
    assert ran.status == 2
    assert f"GEARMAN_SERVERS={value!r}" in ran.err
    assert "bad " in ran.err or "out of range" in ran.err


async def test_bad_arguments_in_a_real_process() -> None:
    ran = await run_process("submit", "f", "--priority", "urgent")
    assert ran.status == 2
    assert "usage: trio-gearman submit" in ran.err
    no_traceback(ran)


def test_the_console_script_runs_main() -> None:
    [script] = entry_points(group="console_scripts", name="trio-gearman")
    assert script.value == "trio_gearman._cli.tools:main"


# --- unreachable servers ------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["submit", "reverse", "x"],
        ["submit", "reverse", "x", "--background"],
        ["status", "H:x:1"],
        ["admin", "status"],
        ["admin", "version", "--json"],
    ],
)
async def test_unreachable_server_exits_3_naming_it(command: list[str]) -> None:
    port = free_port()
    ran = await cli(*command, "--servers", f"127.0.0.1:{port}")
    assert ran.status == 3
    assert ran.out == b""
    [line] = ran.err.splitlines()
    assert line.startswith("trio-gearman: no Gearman server could be reached")
    assert f"127.0.0.1:{port}: cannot connect: Connection refused" in line


async def test_unreachable_servers_are_all_named_in_one_line() -> None:
    ports = [free_port(), free_port()]
    servers = ",".join(f"127.0.0.1:{port}" for port in ports)
    ran = await run_process("submit", "reverse", "x", "--servers", servers)
    assert ran.status == 3
    [line] = ran.err.splitlines()
    for port in ports:
        assert f"127.0.0.1:{port}: cannot connect" in line
    no_traceback(ran)


@pytest.mark.gearmand
async def test_a_worker_process_started_before_its_server_waits_for_it(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    process = await open_worker_process(tmp_path, address)
    async with process:
        assert process.stderr is not None
        stderr = BufferedByteReceiveStream(process.stderr)
        with trio.fail_after(10):
            said = (await stderr.receive_until(b"(pid ", 4096)).decode()
        assert f"{address}: cannot connect: Connection refused" in said
        assert f"worker serving reverse once a server is up (none is yet: {address})" in said
        with run_gearmand(port=port) as gearmand:
            async with Client(gearmand.address) as client:
                with trio.fail_after(20):
                    assert await client.submit("reverse", b"late server") == b"revres etal"
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await process.wait() == 0


# --- submit ------------------------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedServer]:
    async with open_test_server() as embedded:
        yield embedded


async def test_submit_prints_the_result_bytes(server: EmbeddedServer) -> None:
    async with running_worker(server.address, {"reverse": reverse}):
        ran = await cli("submit", "reverse", "hello world", "--servers", server.address)
    assert (ran.status, ran.out, ran.err) == (0, b"dlrow olleh", "")


@pytest.mark.parametrize("data_args", [[], ["-"]])
async def test_submit_reads_binary_data_from_stdin(
    server: EmbeddedServer, data_args: list[str]
) -> None:
    data = bytes(range(256)) + b"\0\r\n"
    async with running_worker(server.address, {"reverse": reverse}):
        ran = await cli("submit", "reverse", *data_args, "--servers", server.address, stdin=data)
    assert (ran.status, ran.out) == (0, data[::-1])
    assert server.history[0].data == data


async def test_submit_uses_gearman_servers_from_the_environment(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEARMAN_SERVERS", f"127.0.0.1:{free_port()}, {server.address}")
    async with running_worker(server.address, {"reverse": reverse}):
        ran = await cli("submit", "reverse", "abc")
    assert (ran.status, ran.out) == (0, b"cba")


async def test_submit_fails_over_to_a_live_server(server: EmbeddedServer) -> None:
    servers = f"127.0.0.1:{free_port()},{server.address}"
    async with running_worker(server.address, {"reverse": reverse}):
        ran = await cli("submit", "reverse", "abc", "--servers", servers)
    assert (ran.status, ran.out) == (0, b"cba")


async def test_submit_streams_data_and_reports_warnings_and_status(
    server: EmbeddedServer,
) -> None:
    async def chatty(job: Job) -> bytes:
        await job.send_data(b"part 1;")
        await job.send_warning(b"disk 91% full\n")
        await job.send_status(1, 2)
        await job.send_data(b"part 2;")
        return b"done"

    async with running_worker(server.address, {"chatty": chatty}):
        quiet = await cli("submit", "chatty", "x", "--servers", server.address)
        verbose = await cli("submit", "chatty", "x", "--servers", server.address, "-v")
    assert (quiet.status, quiet.out, quiet.err) == (0, b"part 1;part 2;done", "disk 91% full\n")
    assert verbose.out == quiet.out
    lines = verbose.err.splitlines()
    assert lines[0].startswith("trio-gearman: job H:localhost:")
    assert lines[0].endswith(f"accepted by {server.address}")
    assert "disk 91% full" in lines
    assert any(line.endswith(": 1/2") for line in lines)


async def test_work_data_reaches_stdout_before_the_job_ends(server: EmbeddedServer) -> None:
    release = trio.Event()

    async def slow(job: Job) -> bytes:
        await job.send_data(b"first chunk\n")
        await release.wait()
        return b"the end\n"

    async with running_worker(server.address, {"slow": slow}):
        process = await anyio.open_process(
            [*COMMAND, "submit", "slow", "x", "--servers", server.address]
        )
        async with process:
            assert process.stdout is not None
            stdout = BufferedByteReceiveStream(process.stdout)
            with trio.fail_after(10):
                # The job cannot end before this chunk was read: it waits for it.
                assert await stdout.receive_until(b"\n", 100) == b"first chunk"
                release.set()
                assert await stdout.receive_until(b"\n", 100) == b"the end"
                assert await process.wait() == 0


async def test_background_submit_prints_the_handle(server: EmbeddedServer) -> None:
    ran = await cli(
        "submit", "resize", "img", "-b", "--priority", "high", "--unique", "img-42",
        "--servers", server.address,
    )  # fmt: skip
    assert ran.status == 0
    [record] = server.history
    assert ran.out == record.handle.encode() + b"\n"
    assert (record.background, record.priority, record.unique) == (True, Priority.HIGH, b"img-42")
    assert server.queued("resize") == 1


async def test_background_jobs_with_one_unique_key_coalesce(server: EmbeddedServer) -> None:
    args = ("submit", "resize", "-b", "--unique", "same", "--servers", server.address)
    first = await cli(*args, stdin=b"one")
    second = await cli(*args, stdin=b"two")
    assert first.out == second.out
    assert server.queued("resize") == 1


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("high", Priority.HIGH), ("normal", Priority.NORMAL), ("low", Priority.LOW)],
)
async def test_foreground_priority(
    server: EmbeddedServer, priority: str, expected: Priority
) -> None:
    async with running_worker(server.address, {"reverse": reverse}):
        ran = await cli(
            "submit", "reverse", "ab", "--priority", priority, "--servers", server.address
        )
    assert ran.out == b"ba"
    assert server.history[0].priority == expected


async def test_a_failed_job_exits_1(server: EmbeddedServer) -> None:
    async with running_worker(server.address, {"fail": fail}):
        ran = await cli("submit", "fail", "x", "--servers", server.address)
    assert (ran.status, ran.out) == (1, b"")
    [line] = ran.err.splitlines()
    assert line.startswith("trio-gearman: the job failed (function 'fail', job H:localhost:")


async def test_a_job_exception_shows_the_workers_message(server: EmbeddedServer) -> None:
    async with running_worker(server.address, {"explode": explode}):
        ran = await cli("submit", "explode", "x", "--servers", server.address)
    assert (ran.status, ran.out) == (1, b"")
    [line] = ran.err.splitlines()
    assert line.startswith("trio-gearman: the job raised: disk full on node-7 (function 'explode'")


async def test_a_unique_key_too_long_is_a_usage_error(server: EmbeddedServer) -> None:
    ran = await cli("submit", "f", "x", "--unique", "u" * 65, "--servers", server.address)
    assert ran.status == 2
    assert "longer than 64" in ran.err
    assert server.history == []


async def test_timeout_exits_124_and_says_no_worker_is_there(server: EmbeddedServer) -> None:
    ran = await cli("submit", "nobody", "x", "--timeout", "0.2", "--servers", server.address)
    assert (ran.status, ran.out) == (124, b"")
    assert ran.err == (
        "trio-gearman: timed out after 0.2 s: no worker has registered 'nobody' on "
        f"{server.address}; the job waits in its queue\n"
    )
    assert server.queued("nobody") == 0  # the abandoned job left the queue


async def test_timeout_with_a_busy_worker_says_only_that_it_timed_out(
    server: EmbeddedServer,
) -> None:
    async with await anyio.connect_tcp(server.host, server.port) as worker:
        await worker.send(encode(CanDo(b"slow")))
        with trio.fail_after(5):
            while server.workers("slow") == 0:
                await trio.testing.wait_all_tasks_blocked()
        ran = await cli("submit", "slow", "x", "--timeout", "0.2", "--servers", server.address)
    assert ran.status == 124
    assert ran.err == "trio-gearman: timed out after 0.2 s\n"


async def test_sigint_while_waiting_exits_130_without_a_traceback(server: EmbeddedServer) -> None:
    process = await anyio.open_process(
        [*COMMAND, "submit", "-v", "nobody", "x", "--servers", server.address]
    )
    async with process:
        assert process.stderr is not None
        stderr = BufferedByteReceiveStream(process.stderr)
        with trio.fail_after(10):
            line = await stderr.receive_until(b"\n", 4096)
            assert line.endswith(b"accepted by " + server.address.encode())
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
            rest = await stderr.receive(4096)
    assert rest == b"trio-gearman: interrupted\n"


async def test_a_closed_stdout_ends_the_command_quietly(server: EmbeddedServer) -> None:
    await cli("submit", "-b", "f", "x", "--servers", server.address)
    process = await anyio.open_process([*COMMAND, "admin", "status", "--servers", server.address])
    async with process:
        assert process.stdout is not None
        assert process.stderr is not None
        await process.stdout.aclose()
        with trio.fail_after(10):
            assert await process.wait() == 1
            with pytest.raises(anyio.EndOfStream):
                await process.stderr.receive()


# --- status -----------------------------------------------------------------------------


async def test_status_of_a_queued_job(server: EmbeddedServer) -> None:
    submitted = await cli(
        "submit", "-b", "resize", "x", "--unique", "k1", "--servers", server.address
    )
    handle = submitted.out.decode().strip()
    ran = await cli("status", handle, "--servers", server.address)
    assert (ran.status, ran.out) == (0, f"{handle}\t1\t0\t0\t0\n".encode())
    ran = await cli("status", handle, "--json", "--servers", server.address)
    assert json.loads(ran.out) == {
        "handle": handle,
        "server": server.address,
        "known": True,
        "running": False,
        "numerator": 0,
        "denominator": 0,
    }
    ran = await cli("status", "k1", "--unique", "--servers", server.address)
    assert ran.out == b"k1\t1\t0\t0\t0\t0\n"


async def test_status_of_a_running_job_with_progress(server: EmbeddedServer) -> None:
    reported, release = trio.Event(), trio.Event()

    async def progress(job: Job) -> bytes:
        await job.send_status(3, 10)
        reported.set()
        await release.wait()
        return b""

    async with running_worker(server.address, {"progress": progress}):
        handle = (await cli("submit", "-b", "progress", "x", "--servers", server.address)).out
        with trio.fail_after(5):
            await reported.wait()
        ran = await cli("status", handle.decode().strip(), "--servers", server.address)
        release.set()
    assert ran.out == handle.strip() + b"\t1\t1\t3\t10\n"


async def test_status_asks_every_server_for_a_handle() -> None:
    async with open_test_server() as first, open_test_server() as second:
        submitted = await cli("submit", "-b", "f", "x", "--servers", second.address)
        handle = submitted.out.decode().strip()
        servers = f"{first.address},{second.address}"
        ran = await cli("status", handle, "--json", "--servers", servers)
        assert json.loads(ran.out)["server"] == second.address
        assert json.loads(ran.out)["known"] is True
        ran = await cli("status", "H:localhost:999", "--servers", servers)
        assert ran.out == b"H:localhost:999\t0\t0\t0\t0\n"


# --- admin against the embedded server ----------------------------------------------------


async def test_admin_listings_as_text_and_json(server: EmbeddedServer) -> None:
    for args in (
        ["-b", "resize", "a", "--priority", "high"],
        ["-b", "thumb", "b", "--unique", "u"],
    ):
        assert (await cli("submit", *args, "--servers", server.address)).status == 0
    ran = await cli("admin", "status", "--servers", server.address)
    assert functions_status(ran) == {"resize": ["1", "0", "0"], "thumb": ["1", "0", "0"]}
    ran = await cli("admin", "priority-status", "--json", "--servers", server.address)
    assert sorted(json.loads(ran.out), key=lambda row: row["function"]) == [
        {"server": server.address, "function": f, "high": h, "normal": n, "low": 0, "workers": 0}
        for f, h, n in (("resize", 1, 0), ("thumb", 0, 1))
    ]
    ran = await cli("admin", "show-unique-jobs", "--json", "--servers", server.address)
    assert sorted(row["unique"] for row in json.loads(ran.out)) == ["", "u"]
    ran = await cli("admin", "show-jobs", "--json", "--servers", server.address)
    assert [(row["retries"], row["ignore"], row["queued"]) for row in json.loads(ran.out)] == [
        (0, False, True),
        (0, False, True),
    ]


async def test_admin_err_exits_1(server: EmbeddedServer) -> None:
    ran = await cli("admin", "cancel-job", "H:nosuch:1", "--servers", server.address)
    assert (ran.status, ran.out) == (1, b"")
    assert ran.err == f"trio-gearman: {server.address}: ERR UNKNOWN_JOB\n"
    ran = await cli("admin", "drop-function", "nosuch", "--json", "--servers", server.address)
    assert (ran.status, json.loads(ran.out)) == (1, [])
    assert ran.err == f"trio-gearman: {server.address}: ERR function not found\n"


async def test_admin_maxqueue_limits_submissions(server: EmbeddedServer) -> None:
    assert (await cli("admin", "create-function", "limited", "--servers", server.address)).out == (
        b"OK\n"
    )
    ran = await cli("admin", "maxqueue", "limited", "1", "--json", "--servers", server.address)
    assert json.loads(ran.out) == [{"server": server.address, "result": "OK"}]
    assert (await cli("submit", "-b", "limited", "1", "--servers", server.address)).status == 0
    refused = await cli("submit", "-b", "limited", "2", "--servers", server.address)
    assert refused.status == 1
    assert "QUEUE_ERROR: Job queue is full" in refused.err
    ran = await cli("admin", "maxqueue", "limited", "0", "5", "0", "--servers", server.address)
    assert ran.out == b"OK\n"
    assert (await cli("submit", "-b", "limited", "3", "--servers", server.address)).status == 0


async def test_admin_goes_to_every_server() -> None:
    async with open_test_server() as first, open_test_server() as second:
        await cli("submit", "-b", "only-on-second", "x", "--servers", second.address)
        servers = f"{first.address},{second.address}"
        ran = await cli("admin", "status", "--servers", servers)
        assert ran.status == 0
        assert ran.out.decode().split("\n") == [
            f"==> {first.address} <==",
            ".",
            f"==> {second.address} <==",
            "only-on-second\t1\t0\t0",
            ".",
            "",
        ]
        ran = await cli("admin", "status", "--json", "--servers", servers)
        assert json.loads(ran.out) == [
            {
                "server": second.address,
                "function": "only-on-second",
                "total": 1,
                "running": 0,
                "workers": 0,
            }
        ]
        # The handle belongs to one server; the other's UNKNOWN_JOB is no error.
        handle = (await cli("admin", "show-jobs", "--json", "--servers", servers)).out
        [job] = json.loads(handle)
        ran = await cli("admin", "cancel-job", job["handle"], "--servers", servers)
        assert (ran.status, ran.err) == (0, "")


async def test_admin_with_one_server_down_reports_it_and_exits_1(server: EmbeddedServer) -> None:
    port = free_port()
    ran = await cli("admin", "version", "--servers", f"{server.address},127.0.0.1:{port}")
    assert ran.status == 1
    header, version, end = ran.out.split(b"\n")
    assert (header, end) == (f"==> {server.address} <==".encode(), b"")
    assert version
    assert ran.err == f"trio-gearman: 127.0.0.1:{port}: cannot connect: Connection refused\n"


# --- the worker subcommand: loading -------------------------------------------------------


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory, made the current one, for a user module ``jobs_<test>.py``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("cli_jobs"):
            del sys.modules[name]


WORKER_MODULE = """\
import trio_gearman

async def reverse(job):
    return job.data[::-1]

worker = trio_gearman.Worker("127.0.0.1:4730")
worker.register("reverse", reverse)

class holder:
    worker = worker

def make(servers):
    made = trio_gearman.Worker(servers, client_id="made")
    made.register("reverse", reverse)
    return made

def make_with_default(servers="10.0.0.9:4730"):
    return make(servers)

def make_fixed():
    return worker

def make_nothing():
    return 42

def make_bare():
    return trio_gearman.Worker("127.0.0.1:4730")

def make_broken():
    raise RuntimeError("no config")

def make_needs(config):
    return worker

not_a_worker = "hello"
"""


async def test_load_a_worker_or_a_factory(user_module: Path) -> None:
    (user_module / "cli_jobs_a.py").write_text(WORKER_MODULE)
    default = ["127.0.0.1:4730"]
    worker = load_worker("cli_jobs_a:worker", default, "default")
    assert (worker.functions, worker.addresses) == (["reverse"], ["127.0.0.1:4730"])
    assert load_worker("cli_jobs_a:holder.worker", default, "default") is worker
    assert load_worker("cli_jobs_a:worker", ["10.0.0.1:4730"], "env") is worker
    assert load_worker("cli_jobs_a:make_fixed", default, "env") is worker
    made = load_worker("cli_jobs_a:make", ["10.0.0.1:4730", "10.0.0.2:4730"], "option")
    assert (made.client_id, made.addresses) == (b"made", ["10.0.0.1:4730", "10.0.0.2:4730"])
    assert load_worker("cli_jobs_a:make", default, "default").addresses == default
    own = load_worker("cli_jobs_a:make_with_default", default, "default")
    assert own.addresses == ["10.0.0.9:4730"]
    given = load_worker("cli_jobs_a:make_with_default", ["10.0.0.3:4730"], "env")
    assert given.addresses == ["10.0.0.3:4730"]


@pytest.mark.parametrize(
    ("target", "source", "message"),
    [
        ("cli_jobs_b:worker", "option", "is a Worker made with its own servers (127.0.0.1:4730)"),
        ("cli_jobs_b:make_fixed", "option", "takes no 'servers' parameter"),
        ("cli_jobs_b:make_nothing", "default", "returned int, not a trio_gearman.Worker"),
        ("cli_jobs_b:make_bare", "env", "has no functions registered"),
        ("cli_jobs_b:make_needs", "default", "cannot be called without arguments"),
        (
            "cli_jobs_b:reverse",
            "default",
            "cli_jobs_b:reverse is an async function, a job function perhaps; the command runs "
            "a Worker: give it a Worker, or a function that returns one, e.g. 'worker = "
            'Worker(); worker.register("reverse", reverse)\' in cli_jobs_b, then '
            "'trio-gearman worker cli_jobs_b:worker'",
        ),
        ("cli_jobs_b:not_a_worker", "default", "is a str, not a trio_gearman.Worker"),
        ("cli_jobs_b:missing", "default", "'cli_jobs_b' has no attribute 'missing'"),
        ("cli_jobs_b:holder.missing", "default", "'cli_jobs_b.holder' has no attribute 'missing'"),
        ("cli_jobs_none:worker", "default", "no module named 'cli_jobs_none'"),
    ],
)
async def test_load_refuses_what_it_cannot_run(
    user_module: Path, target: str, source: str, message: str
) -> None:
    (user_module / "cli_jobs_b.py").write_text(WORKER_MODULE)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_worker(target, ["10.0.0.1:4730"], source)


async def test_errors_of_user_code_are_one_line_with_the_place(user_module: Path) -> None:
    (user_module / "cli_jobs_c.py").write_text(WORKER_MODULE)
    (user_module / "cli_jobs_broken.py").write_text("import os\n\nvalue = 1 / 0\n")
    (user_module / "cli_jobs_imports.py").write_text("import cli_jobs_not_there\n")
    with pytest.raises(WorkerLoadError) as info:
        load_worker("cli_jobs_c:make_broken", [], "default")
    assert str(info.value) == (
        "cli_jobs_c:make_broken() failed: RuntimeError: no config (cli_jobs_c.py, line 30)"
    )
    with pytest.raises(WorkerLoadError) as info:
        load_worker("cli_jobs_broken:worker", [], "default")
    assert str(info.value) == (
        "importing 'cli_jobs_broken' failed: ZeroDivisionError: division by zero "
        "(cli_jobs_broken.py, line 3)"
    )
    with pytest.raises(WorkerLoadError, match="No module named 'cli_jobs_not_there'"):
        load_worker("cli_jobs_imports:worker", [], "default")
    ran = await cli("worker", "cli_jobs_c:make_broken")
    assert ran.status == 1
    assert ran.err.splitlines()[-1].startswith("trio-gearman: cli_jobs_c:make_broken() failed")
    no_traceback(ran)


# --- the worker subcommand: serving and stopping ------------------------------------------


async def test_serve_worker_drains_running_jobs_on_the_first_signal(
    server: EmbeddedServer,
) -> None:
    started, stopping = trio.Event(), trio.Event()

    async def slow(job: Job) -> bytes:
        started.set()
        await stopping.wait()
        return b"finished"

    async def signals() -> AsyncIterator[int]:
        await started.wait()
        yield signal.SIGTERM
        # serve_worker asks for the next signal: it has handled the first one.
        stopping.set()
        await trio.sleep_forever()

    worker = Worker(server.address)
    worker.register("slow", slow)
    ran: list[Ran] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_worker, worker, 30.0, signals())

            async def submit() -> None:
                ran.append(await cli("submit", "slow", "x", "--servers", server.address))

            nursery.start_soon(submit)
    # The job ran to its end after the stop request, and its client got the result.
    [done] = ran
    assert (done.status, done.out) == (0, b"finished")
    assert worker.running_jobs == 0


async def test_serve_worker_cancels_running_jobs_on_a_second_signal(
    server: EmbeddedServer,
) -> None:
    started = trio.Event()

    async def stuck(job: Job) -> bytes:
        started.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def signals() -> AsyncIterator[int]:
        await started.wait()
        yield signal.SIGTERM
        yield signal.SIGINT
        await trio.sleep_forever()

    worker = Worker(server.address)
    worker.register("stuck", stuck)
    ran: list[Ran] = []
    # Far less than the hour the first signal gives the job to finish.
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_worker, worker, 3600.0, signals())

            async def submit() -> None:
                ran.append(await cli("submit", "stuck", "x", "--servers", server.address))

            nursery.start_soon(submit)
    [failed] = ran
    assert failed.status == 1
    assert "the job failed (function 'stuck'" in failed.err


# --- against gearmand 1.1.20 and its tools ------------------------------------------------


@pytest.fixture
def gearmand_server(gearmand: GearmandProcess) -> Iterator[GearmandProcess]:
    yield gearmand
    if gearmand.process.stderr is not None:
        gearmand.process.stderr.close()


async def gearadmin_output(gearadmin: str, address: str, *args: str) -> bytes:
    host, port = address.rsplit(":", 1)
    with trio.fail_after(20):
        result = await anyio.run_process([gearadmin, "-h", host, "-p", port, *args])
    return result.stdout


@pytest.fixture(params=["gearmand", "trio-gearman"])
async def any_server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The address of gearmand 1.1.20, then of our embedded server."""
    if request.param == "gearmand":
        yield request.getfixturevalue("gearmand_server").address
    else:
        async with open_test_server() as embedded:
            yield embedded.address


@pytest.mark.gearmand
async def test_admin_matches_gearadmin(any_server: str, gearadmin_cli: str) -> None:
    address = any_server
    handles = []
    for args in (
        ["resize", "a", "--unique", "img-1"],
        ["resize", "b", "--unique", "img-2", "--priority", "high"],
        ["thumb", "c", "--priority", "low"],
    ):
        ran = await cli("submit", "-b", *args, "--servers", address)
        assert ran.status == 0
        handles.append(ran.out.decode().strip())
    started, release = trio.Event(), trio.Event()

    async def hold(job: Job) -> bytes:
        started.set()
        await release.wait()
        return b""

    async with running_worker(address, {"resize": hold}, client_id="cli-worker"):
        with trio.fail_after(5):
            await started.wait()
        same = {
            "status": "--status",
            "priority-status": "--priority-status",
            "show-jobs": "--show-jobs",
            "show-unique-jobs": "--show-unique-jobs",
            "version": "--server-version",
            "getpid": "--getpid",
            "verbose": "--server-verbose",
        }
        for command, option in same.items():
            ran = await cli("admin", command, "--servers", address)
            assert ran.status == 0
            assert ran.out == await gearadmin_output(gearadmin_cli, address, option), command
        assert functions_status(await cli("admin", "status", "--servers", address)) == {
            "resize": ["2", "1", "1"],
            "thumb": ["1", "0", "0"],
        }
        pid = int((await cli("admin", "getpid", "--servers", address)).out)
        ran = await cli("admin", "getpid", "--json", "--servers", address)
        assert json.loads(ran.out) == [{"server": address, "pid": pid}]

        # workers: the same lines but for the admin tool's own connection (its fd).
        ran = await cli("admin", "workers", "--servers", address)
        theirs = await gearadmin_output(gearadmin_cli, address, "--workers")
        ours = [line for line in ran.out.split(b"\n") if b"cli-worker" in line]
        assert len(ours) == 1
        assert ours == [line for line in theirs.split(b"\n") if b"cli-worker" in line]
        ran = await cli("admin", "workers", "--json", "--servers", address)
        [named] = [row for row in json.loads(ran.out) if row["client_id"] == "cli-worker"]
        assert named["functions"] == ["resize"]
        assert named["address"] == "127.0.0.1"

        ran = await cli("admin", "cancel-job", handles[0], "--servers", address)
        assert (ran.status, ran.out) == (0, b"OK\n")
        ran = await cli("admin", "cancel-job", "H:nosuch:1", "--servers", address)
        assert (ran.status, ran.err) == (1, f"trio-gearman: {address}: ERR UNKNOWN_JOB\n")
        ran = await cli("admin", "create-function", "newfn", "--servers", address)
        assert ran.out == b"OK\n"
        theirs = await gearadmin_output(gearadmin_cli, address, "--status")
        assert b"newfn\t0\t0\t0\n" in theirs
        ran = await cli("admin", "drop-function", "newfn", "--servers", address)
        assert ran.out == b"OK\n"
        assert b"newfn" not in await gearadmin_output(gearadmin_cli, address, "--status")
        release.set()


@pytest.mark.gearmand
async def test_submit_against_gearmand_with_the_gearman_tool_as_worker(
    gearmand_server: GearmandProcess, gearman_cli: str
) -> None:
    address = gearmand_server.address
    host, port = address.rsplit(":", 1)
    ran = await cli(
        "submit", "-b", "rev", "queued first", "--priority", "low", "--servers", address
    )
    assert ran.status == 0
    command = [gearman_cli, "-h", host, "-p", port, "-w", "-c", "2", "-f", "rev", "--", "rev"]
    async with await anyio.open_process(command) as worker:
        ran = await cli("submit", "rev", "--priority", "high", "--servers", address, stdin=b"hello")
        assert (ran.status, ran.out) == (0, b"olleh")
        with trio.fail_after(10):
            assert await worker.wait() == 0  # it ran both jobs
    ran = await cli("admin", "status", "--servers", address)
    assert functions_status(ran) == {"rev": ["0", "0", "0"]}


@pytest.mark.gearmand
async def test_a_failed_job_on_gearmand_exits_1(
    gearmand_server: GearmandProcess, gearman_cli: str
) -> None:
    address = gearmand_server.address
    async with running_worker(address, {"explode": explode}):
        ran = await cli("submit", "explode", "x", "--servers", address)
    assert ran.status == 1
    assert "the job raised: disk full on node-7" in ran.err


WORKER_PROCESS_MODULE = """\
import trio_gearman

def make(servers):
    worker = trio_gearman.Worker(servers, client_id="cli-process")

    @worker.function("reverse")
    async def reverse(job):
        return job.data[::-1]

    return worker
"""


async def open_worker_process(directory: Path, servers: str) -> Process:
    """``trio-gearman worker`` serving WORKER_PROCESS_MODULE's worker, as a process."""
    (directory / "cli_process_jobs.py").write_text(WORKER_PROCESS_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "GEARMAN_SERVERS"}
    return await anyio.open_process(
        [*COMMAND, "worker", "cli_process_jobs:make", "--servers", servers],
        cwd=directory,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.gearmand
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
async def test_worker_process_serves_the_gearman_tool_and_stops_on_a_signal(
    gearmand_server: GearmandProcess, gearman_cli: str, tmp_path: Path, stop: signal.Signals
) -> None:
    address = gearmand_server.address
    host, port = address.rsplit(":", 1)
    process = await open_worker_process(tmp_path, address)
    async with process:
        assert process.stderr is not None
        stderr = BufferedByteReceiveStream(process.stderr)
        with trio.fail_after(10):
            line = await stderr.receive_until(b"\n", 4096)
        assert line.startswith(b"trio-gearman: worker serving reverse on " + address.encode())
        with trio.fail_after(10):
            result = await anyio.run_process(
                [gearman_cli, "-h", host, "-p", port, "-f", "reverse", "hello gearman"]
            )
        assert result.stdout == b"namraeg olleh"
        process.send_signal(stop)
        with trio.fail_after(10):
            assert await process.wait() == 0
            rest = b""
            try:
                while True:
                    rest += await stderr.receive()
            except (anyio.EndOfStream, anyio.IncompleteRead):
                pass
        text = rest.decode()
        assert f"{stop.name}: stopping" in text
        assert text.rstrip().endswith("trio-gearman: worker stopped")
        assert "Traceback" not in text
