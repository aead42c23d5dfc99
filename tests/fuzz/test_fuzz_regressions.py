"""What the fuzzing found, each kept as a test.

A finding that is not fixed yet is a strict ``xfail``: it fails the suite once the
fix lands, so that the mark comes off with it. On a durable server both of these
failed: a request that waits behind a commit and ends the connection (an admin line
of too many words, a broken packet) now closes it once the commit is answered, and
its error comes after the JOB_CREATED it waited behind.
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import pytest
import trio

from trio_gearman._proto import SubmitJob, encode

from ..test_cli_server import trio_gearmand


@pytest.mark.parametrize(
    "queue",
    [
        "memory",
        "sqlite",
    ],
)
async def test_an_admin_line_of_too_many_words_closes_the_connection(
    queue: str, tmp_path: Path
) -> None:
    # On a durable server the admin line waits behind the JOB_CREATED, which waits
    # for the commit.
    received = await _converse(queue, tmp_path, _SUBMIT + b"status a b c d e f\n")
    assert received.endswith(b"ERR TOO_MANY_ARGS Too+many+arguments\r\n")


@pytest.mark.parametrize(
    "queue",
    [
        "memory",
        "sqlite",
    ],
)
async def test_a_protocol_error_after_a_submission_comes_after_its_job_created(
    queue: str, tmp_path: Path
) -> None:
    unknown = struct.pack(">4sII", b"\0REQ", 99, 0)
    received = await _converse(queue, tmp_path, _SUBMIT + unknown)
    assert received.startswith(b"\0RES\0\0\0\x08\0\0\0\x06H:fz:1\0RES\0\0\0\x13")
    assert b"unknown packet type 99" in received


_SUBMIT = encode(SubmitJob(b"f", b"", b"x", background=True))


async def _converse(queue: str, tmp_path: Path, request: bytes) -> bytes:
    """Send ``request`` to a fresh server; what it answers until it closes (2 s at most)."""
    args = ["-L", "127.0.0.1", "-p", "0", "--job-handle-prefix", "H:fz"]
    if queue == "sqlite":
        args += ["--sqlite-db", str(tmp_path / "queue.db")]
    async with trio_gearmand(args) as server, anyio.create_task_group() as tg:
        tg.start_soon(server.rest_of_log)  # the process never blocks on a full pipe
        async with await anyio.connect_tcp("127.0.0.1", server.port) as stream:
            await stream.send(request)
            received = b""
            with trio.fail_after(2):
                while True:
                    try:
                        received += await stream.receive()
                    except anyio.EndOfStream:
                        break
        server.process.terminate()
    return received
