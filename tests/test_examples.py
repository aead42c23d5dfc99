"""The examples in ``examples/`` run as programs, against gearmand and trio-gearmand.

Each example takes the job server's address as its first argument; the tests run
it with a time limit and check what it prints. The production guide's list of
``trio-gearmand`` options is checked against the command too.
"""

from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from pathlib import Path

import anyio
import pytest
import trio
from anyio.streams.buffered import BufferedByteReceiveStream

import trio_gearman
from trio_gearman._cli.server import main as trio_gearmand

from .gearmand_peer import free_port, run_gearmand, run_until_listening

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = EXAMPLES.parent / "docs"
TIME_LIMIT = 30


@contextmanager
def run_trio_gearmand() -> Iterator[str]:
    """Run ``trio-gearmand`` on 127.0.0.1 with an ephemeral port; yield its address."""
    command = "import sys; from trio_gearman._cli.server import main; sys.exit(main())"
    args = [sys.executable, "-c", command, "-L", "127.0.0.1", "-p", "0", "--verbose", "INFO"]
    pattern = r"Listening on (127\.0\.0\.1:\d+)"
    with run_until_listening(args, "trio-gearmand", pattern) as (_, found):
        yield found.group(1)


@pytest.fixture(
    params=[pytest.param("gearmand", marks=pytest.mark.gearmand), "trio-gearmand"],
)
def job_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """The address of a fresh job server: gearmand 1.1.20, then ours."""
    if request.param == "gearmand":
        with run_gearmand() as gearmand:
            yield gearmand.address
    else:
        with run_trio_gearmand() as address:
            yield address


def example(name: str, *args: str) -> list[str]:
    return [sys.executable, str(EXAMPLES / name), *args]


async def run_example(name: str, *args: str) -> list[str]:
    """Run an example to its end; return the lines it printed."""
    with trio.fail_after(TIME_LIMIT):
        result = await anyio.run_process(example(name, *args), check=False)
    output = result.stdout.decode()
    assert result.returncode == 0, f"{name} failed:\n{output}{result.stderr.decode()}"
    assert not result.stderr, result.stderr.decode()
    return output.splitlines()


async def read_line(stdout: BufferedByteReceiveStream) -> str:
    return (await stdout.receive_until(b"\n", 65536)).decode()


async def test_tutorial_worker_and_client(job_server: str) -> None:
    async with await anyio.open_process(example("reverse_worker.py", job_server)) as worker:
        assert worker.stdout is not None
        stdout = BufferedByteReceiveStream(worker.stdout)
        with trio.fail_after(TIME_LIMIT):
            assert await read_line(stdout) == f"serving 'reverse' on {job_server}"
            lines = await run_example("tutorial_client.py", job_server, "Hello, Gearman")
            assert lines == ["namraeG ,olleH"]
            worker.send_signal(signal.SIGTERM)
            assert await worker.wait() == 0
            assert await read_line(stdout) == "stopped"


async def test_asyncio_program_with_a_worker_task_and_a_client(job_server: str) -> None:
    lines = await run_example("asyncio_app.py", job_server)
    assert lines == ["alpha -> ALPHA", "beta -> BETA", "gamma -> GAMMA"]


async def test_background_jobs_with_status_polling(job_server: str) -> None:
    lines = await run_example("background_status.py", job_server)
    queued = [line.removeprefix("queued ") for line in lines[:2]]
    assert all(line.startswith("queued ") for line in lines[:2]), lines
    reports: dict[str, list[str]] = {handle: [] for handle in queued}
    for line in lines[2:]:
        handle, _, report = line.rpartition(": ")
        reports[handle].append(report)
    for handle, steps in zip(queued, (4, 8), strict=True):
        states = reports[handle]
        # Known (queued or running) until it is finished, then unknown: "done".
        assert states[-1] == "done", (handle, states)
        assert states.count("done") == 1
        assert set(states[:-1]) <= {"queued", "running"} | {
            f"running, {step}/{steps}" for step in range(1, steps + 1)
        }, (handle, states)
        progress = [int(s.split()[1].split("/")[0]) for s in states if s.startswith("running,")]
        assert progress == sorted(progress), (handle, states)
    # The long job is polled while it runs: the server passes on the worker's progress.
    assert any(re.fullmatch(r"running, [1-8]/8", state) for state in reports[queued[1]]), reports


async def test_streaming_updates(job_server: str) -> None:
    lines = await run_example("streaming.py", job_server, "hello 4 streaming world")
    assert re.fullmatch(r"submitted \S+", lines[0]), lines
    assert lines[1:] == [
        "data: HELLO",
        "progress: 1/4",
        "warning: not a word: 4",
        "data: 4",
        "progress: 2/4",
        "data: STREAMING",
        "progress: 3/4",
        "data: WORLD",
        "progress: 4/4",
        "result: 4 words",
    ]


async def test_map_returns_results_in_order_and_raises_the_failure(job_server: str) -> None:
    lines = await run_example("map.py", job_server)
    assert lines == [
        f"squares: {[n * n for n in range(10)]}",
        "failed: -3 is negative",
    ]


async def test_blocking_function_runs_in_a_thread(job_server: str) -> None:
    lines = await run_example("blocking_worker.py", job_server)
    assert "ping: pong" in lines
    progress = [line for line in lines if line.startswith("compressed ")]
    chunks = len(progress)
    assert chunks > 1
    assert progress == [f"compressed {n}/{chunks} MiB" for n in range(1, chunks + 1)]
    found = re.fullmatch(r"([\d,]+) bytes -> ([\d,]+) bytes", lines[-1])
    assert found, lines
    original, compressed = (int(group.replace(",", "")) for group in found.groups())
    assert -(-original // (1 << 20)) == chunks
    assert compressed < original // 10


async def test_tutorial_test_passes_with_the_fixtures() -> None:
    registered = any(
        entry.value == "trio_gearman.pytest_plugin" for entry in entry_points(group="pytest11")
    )
    plugin = [] if registered else ["-p", "trio_gearman.pytest_plugin"]
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin]
    with trio.fail_after(TIME_LIMIT):
        result = await anyio.run_process(
            [*argv, str(EXAMPLES / "test_tutorial.py")], cwd=EXAMPLES.parent, check=False
        )
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    assert "1 passed" in output, output


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
async def test_embedded_test_server(backend: str) -> None:
    lines = await run_example("embedded_server.py", backend)
    assert lines == [
        "reverse b'queued first' -> b'tsrif deueuq'",
        "reverse b'hello' -> b'olleh'",
    ]


def parse_metrics(lines: list[str]) -> dict[str, float]:
    """Prometheus text lines as ``{'name{labels}': value}``, checking HELP/TYPE lines."""
    samples: dict[str, float] = {}
    typed: set[str] = set()
    for line in lines:
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:]
            assert kind == "gauge"
            typed.add(name)
        elif not line.startswith("# HELP "):
            key, value = line.rsplit(" ", 1)
            assert key.partition("{")[0] in typed, line
            samples[key] = float(value)
    return samples


async def queue_resize_jobs(server: str) -> None:
    async with trio_gearman.Client([server]) as client:
        await client.submit_background("resize", b"img-1")
        await client.submit_background("resize", b"img-2")
        await client.submit_background("resize", b"img-3", priority=trio_gearman.Priority.HIGH)


async def test_admin_report_and_maxqueue(job_server: str) -> None:
    with trio.fail_after(TIME_LIMIT):
        await queue_resize_jobs(job_server)
    lines = await run_example("admin_report.py", job_server, "--maxqueue", "resize=3")
    assert lines[0] == "maxqueue resize 3: OK"
    assert re.fullmatch(rf"server {job_server}, version \S+", lines[1]), lines
    assert lines[2].split() == ["function", "jobs", "running", "high/normal/low", "workers"]
    assert lines[3].split() == ["resize", "3", "0", "1/2/0", "0"]
    assert "connection 127.0.0.1 -: -" in lines[4:]  # the report's own admin connection
    with trio.fail_after(TIME_LIMIT):
        async with trio_gearman.Client([job_server]) as client:
            with pytest.raises(trio_gearman.JobError) as refused:
                await client.submit_background("resize", b"img-4")
    assert refused.value.code == "QUEUE_ERROR"


async def http_get(url: str, path: str) -> bytes:
    host, port = url.removeprefix("http://").partition("/")[0].split(":")
    async with await anyio.connect_tcp(host, int(port)) as stream:
        await stream.send(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        response = b""
        with anyio.fail_after(TIME_LIMIT):
            async for chunk in stream:
                response += chunk
    return response


def test_production_guide_lists_every_server_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert trio_gearmand(["--help"]) == 0
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", capsys.readouterr().out))
    assert "--job-retries" in options
    guide = (DOCS / "howto" / "production.rst").read_text()
    assert {option for option in options if f"``{option}" not in guide} == set()


@pytest.mark.parametrize(
    "option",
    ["--daemon", "--user=gearman", "--syslog", "--coredump", "--protocol=http",
     "--hashtable-buckets=10", "--queue-type=mysql", "--queue-type=redis",
     "--queue-type=libmemcached"],
)  # fmt: skip
def test_gearmand_options_the_guides_say_are_refused(
    option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trio_gearmand([option]) == 2
    assert "error" in capsys.readouterr().err


async def test_scrape_metrics_lists_functions_and_warns_of_jobs_without_workers() -> None:
    command = "import sys; from trio_gearman._cli.server import main; sys.exit(main())"
    port = free_port()
    args = [sys.executable, "-c", command, "-L", "127.0.0.1", "-p", str(port)]
    args += ["--http-port", "0", "--verbose", "INFO"]
    with run_until_listening(args, "trio-gearmand", r"Metrics on (http://\S+)") as (_, found):
        with trio.fail_after(TIME_LIMIT):
            await queue_resize_jobs(f"127.0.0.1:{port}")
            result = await anyio.run_process(
                example("scrape_metrics.py", found.group(1)), check=False
            )
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["function", "waiting", "running", "workers", "done"]
    assert lines[1].split() == ["resize", "3", "0", "0", "0"]
    assert result.stderr.decode() == "warning: resize: jobs wait and no worker can take them\n"
    assert result.returncode == 1
