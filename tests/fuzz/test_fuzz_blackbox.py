"""Mutated real conversations against a ``trio-gearmand`` process, over many connections.

For a bounded time (``TRIO_GEARMAN_FUZZ_SECONDS``, 5 s by default, once with the
in-memory queue and once with SQLite's, the latter with ``--exceptions``, ``-w 1``,
metrics and access rules) parallel peers connect, send a client's, a worker's or an
admin tool's conversation, mutated (``conversations.py``), in random chunks, read
what comes back (or never read), and hang up (or half-close, or reset). The process
must never exit, must log no internal error, must still serve a normal client
afterwards (a full submit, work, result round trip and admin ``status`` and
``workers``), must hold no connection of the fuzz any more, and must stop cleanly on
SIGTERM.

``TRIO_GEARMAN_FUZZ_GEARMAND=1`` plays the same conversations against gearmand
1.1.20 as well (a long run, never in CI: gearmand crashes under this fuzz; the test
then reports the crash as an expected failure, with the seed that reproduces it).
``TRIO_GEARMAN_FUZZ_SEED`` replays a run. See docs/design.rst, "Fuzzing".
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
from collections import deque
from pathlib import Path
from typing import Final

import anyio
import pytest
import trio

import trio_gearman
from trio_gearman._proto import EchoReq, encode

from ..gearmand_peer import run_gearmand
from ..test_cli_server import trio_gearmand
from .conversations import HANDLE_PREFIX, HANDLES, chunks, conversation, mutate

SECONDS: Final = float(os.environ.get("TRIO_GEARMAN_FUZZ_SECONDS") or 5)
"""How long each black-box fuzz sends (``TRIO_GEARMAN_FUZZ_SECONDS``)."""
SEED: Final = int(os.environ.get("TRIO_GEARMAN_FUZZ_SEED") or random.randrange(2**32))
"""The seed of this run's conversations (``TRIO_GEARMAN_FUZZ_SEED`` replays one)."""
PEERS: Final = 12
"""Connections at once."""
WITH_GEARMAND: Final = os.environ.get("TRIO_GEARMAN_FUZZ_GEARMAND", "") not in ("", "0")

# A long run needs more than the suite's 60 s per test.
pytestmark = pytest.mark.timeout(SECONDS + 60)


_ACL: Final = """
[[rule]]
address = "127.0.0.1"
register = ["a", "fuzz-check"]
submit = ["a", "b", "fuzz-check"]
"""


class Fuzzer:
    """Parallel peers sending mutated conversations to one server, for a while."""

    def __init__(self, port: int, seed: int) -> None:
        self.port = port
        self.seed = seed
        self.handles: deque[bytes] = deque(maxlen=64)
        self.sent = 0
        self.refused = 0

    async def run(self, seconds: float) -> None:
        """Send until ``seconds`` have passed."""
        with anyio.move_on_after(seconds):
            async with anyio.create_task_group() as tg:
                for index in range(PEERS):
                    tg.start_soon(self._peer, random.Random(self.seed * PEERS + index))

    async def _peer(self, rng: random.Random) -> None:
        while True:
            said = conversation(rng, list(self.handles))
            if rng.random() < 0.85:
                said = mutate(rng, said, conversation(rng, list(self.handles)))
            reads = rng.random() < 0.9
            if not reads:
                # A peer that never reads, asking for a lot: its replies back up.
                said += [encode(EchoReq(b"e" * 32768))] * rng.randrange(40)
            try:
                stream = await anyio.connect_tcp("127.0.0.1", self.port)
            except OSError:
                self.refused += 1  # the backlog is full for a moment
                await anyio.sleep(0.01)
                continue
            ended = anyio.Event()
            async with stream, anyio.create_task_group() as tg:
                if reads:
                    tg.start_soon(self._read, stream, ended)
                ending = rng.random()
                try:
                    with anyio.move_on_after(1):
                        for chunk in chunks(rng, b"".join(said)):
                            await stream.send(chunk)
                            if rng.random() < 0.1:
                                await anyio.lowlevel.checkpoint()
                    if ending < 0.2:
                        _reset_on_close(stream)
                    elif ending < 0.35 and reads:
                        # Done sending: the server answers, then closes too.
                        await stream.send_eof()
                        with anyio.move_on_after(0.2):
                            await ended.wait()
                    elif ending < 0.7:
                        # Wait for the replies a little (or hang up at once).
                        await anyio.sleep(rng.choice([0, 0.001, 0.02]))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass  # the server closed this connection: a broken stream
                self.sent += 1
                tg.cancel_scope.cancel()

    async def _read(self, stream: anyio.abc.SocketStream, ended: anyio.Event) -> None:
        try:
            while True:
                data = await stream.receive()
                self.handles.extend(HANDLES.findall(data))
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            ended.set()


def _reset_on_close(stream: anyio.abc.SocketStream) -> None:
    """Make closing ``stream`` send a TCP RST instead of a FIN."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _round_trip(port: int, others: int = 0) -> None:
    """A normal client and worker, then admin ``status`` and ``workers``, all answered
    properly, and no connection of the fuzz left behind (``others``: connections
    that are not the fuzz's, such as the dashboard's poller of ``--http-port``)."""
    address = f"127.0.0.1:{port}"

    async def reverse(job: trio_gearman.Job) -> bytes:
        return job.data[::-1]

    with trio.fail_after(20):
        worker = trio_gearman.Worker(address)
        worker.register("fuzz-check", reverse)
        async with trio_gearman.Client(address) as client, anyio.create_task_group() as tg:
            await tg.start(worker.run)
            assert await client.submit("fuzz-check", b"after the fuzz") == b"zzuf eht retfa"
            # (while the worker is registered: a function nothing uses is forgotten)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                status = await _admin(stream, b"status")
                workers = await _admin(stream, b"workers")
            worker.stop()
    assert b"fuzz-check\t0\t0\t1" in status, status
    # Every fuzzing peer has hung up, and the server has let go of its connection:
    # left are this one, the round trip's client and its worker, and the others.
    assert len(workers) <= 3 + others, workers


async def _admin(stream: anyio.abc.SocketStream, command: bytes) -> list[bytes]:
    """The lines of the reply to an admin command, without the final ``.``."""
    await stream.send(command + b"\n")
    reply = b""
    while not reply.endswith(b"\n.\n") and reply != b".\n":
        reply += await stream.receive()
    return reply.split(b"\n")[:-2]


@pytest.mark.parametrize("queue", ["memory", "sqlite"])
async def test_mutated_conversations_never_bring_trio_gearmand_down(
    queue: str, tmp_path: Path
) -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--job-handle-prefix", HANDLE_PREFIX.decode()]
    if queue == "sqlite":
        # With the other settings that change how requests are handled, too: some
        # registrations, submissions and admin commands are refused.
        args += ["--sqlite-db", str(tmp_path / "queue.db"), "--exceptions", "-w", "1"]
        acl = tmp_path / "acl.toml"
        acl.write_text(_ACL)
        args += ["--http-port", "0", "--acl", str(acl)]
    async with trio_gearmand([*args, "-j", "3"]) as server, anyio.create_task_group() as tg:
        log: list[bytes] = []
        log_ended = anyio.Event()

        async def keep_log() -> None:  # the process must never block on a full pipe
            log.append(await server.rest_of_log())
            log_ended.set()

        tg.start_soon(keep_log)
        fuzzer = Fuzzer(server.port, SEED)
        await fuzzer.run(SECONDS)
        if server.process.returncode is not None:
            with trio.move_on_after(5):
                await log_ended.wait()
            raise AssertionError(f"seed {SEED}: trio-gearmand exited: {b''.join(log)[-4000:]!r}")
        assert fuzzer.sent > 100, fuzzer.sent
        # with --http-port, the dashboard's poller has an admin connection of its own
        await _round_trip(server.port, others=1 if queue == "sqlite" else 0)
        server.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await server.process.wait() == 0
    text = b"".join(log)
    assert b"Internal error" not in text, f"seed {SEED}: {text[-4000:]!r}"
    assert b"Traceback" not in text, f"seed {SEED}: {text[-4000:]!r}"
    assert b"Closing the connection from" in text  # the fuzz did break the protocol


@pytest.mark.skipif(not WITH_GEARMAND, reason="a long run: TRIO_GEARMAN_FUZZ_GEARMAND=1")
async def test_the_same_conversations_against_gearmand() -> None:
    with run_gearmand([f"--job-handle-prefix={HANDLE_PREFIX.decode()}"]) as gearmand:
        fuzzer = Fuzzer(gearmand.port, SEED)
        await fuzzer.run(SECONDS)
        code = gearmand.process.poll()
        if code is not None:
            pytest.xfail(f"gearmand 1.1.20 exited ({code}) under the fuzz, seed {SEED}")
        await _round_trip(gearmand.port)
