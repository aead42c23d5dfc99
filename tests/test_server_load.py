"""Bad input and load against the job server: one bad peer never hurts the others.

Oversized headers, endless admin lines and too many admin words close only their own
connection, without buffering what they announce; 10,000 concurrent connections are
served; a storm of CAN_DO from workers does not hold back another client's submit.
"""

from __future__ import annotations

import resource
import socket
import struct
import sys
import threading

import anyio
import pytest
import trio

from trio_gearman._proto._codec import encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    Error,
    JobCreated,
    PacketType,
    SubmitJob,
)
from trio_gearman._proto.server.state import ServerConfig
from trio_gearman._server.server import GearmanServer

from .test_server_io import PREFIX, Peer, StateSpy, round_trip, running_server


async def _still_serves(server: GearmanServer) -> None:
    """Another connection still gets answers."""
    other = await Peer.connect(server)
    await other.send(EchoReq(b"still here"))
    assert await other.packet() == EchoRes(b"still here")


async def test_a_4_gib_header_is_refused_from_the_header_alone() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        # Only the 12-byte header: the server must answer without waiting for 4 GiB.
        await peer.send(b"\0REQ" + struct.pack(">II", PacketType.SUBMIT_JOB, 0xFFFFFFFF))
        reply = await peer.packet()
        assert isinstance(reply, Error)
        assert reply.code == b"ARGUMENT_TOO_LARGE"
        assert b"4294967295" in reply.text
        assert await peer.closed_by_server()
        await _still_serves(server)
        assert server.statistics().jobs_queued == 0


async def test_an_endless_admin_line_is_cut_off() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        chunk = b"x" * 65536
        with trio.fail_after(10):
            try:
                for _ in range(16):  # 1 MiB without a newline
                    await peer.send(chunk)
            except (anyio.BrokenResourceError, OSError):
                pass  # the server may close before the whole MiB is sent
            assert await peer.closed_by_server()
        await _still_serves(server)


async def test_six_admin_words_close_the_connection_after_saying_why() -> None:
    async with running_server() as server:
        peer = await Peer.connect(server)
        await peer.send(b"status a b c d e\n")
        assert (await peer.line()).startswith(b"ERR TOO_MANY_ARGS")
        assert await peer.closed_by_server()
        await _still_serves(server)


async def test_garbage_in_many_forms_leaves_the_server_unharmed() -> None:
    bad_inputs = [
        b"\0XYZ" + b"\0" * 20,
        b"\0REQ" + struct.pack(">II", 0, 0),
        b"\0REQ" + struct.pack(">II", 2**31, 0),
        b"\0REQ" + struct.pack(">II", PacketType.SUBMIT_JOB, 3) + b"f\0u",
        b"\0REQ" + struct.pack(">II", PacketType.PRE_SLEEP, 1) + b"x",
    ]
    async with running_server() as server:
        for bad in bad_inputs:
            peer = await Peer.connect(server)
            await peer.send(bad)
            assert await peer.closed_by_server(), bad
        await _still_serves(server)
        assert await round_trip(server, b"after the garbage") == b"egabrag eht retfa"


_IDLE_CLIENTS = """
import resource, socket, sys
port, count = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
echo, reply = bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])
socks = []
for _ in range(count):
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock.sendall(echo)
    socks.append(sock)
for sock in socks:
    got = b""
    while len(got) < len(reply):
        data = sock.recv(len(reply) - len(got))
        assert data, "the server closed an idle connection"
        got += data
    assert got == reply, got
print("open", len(socks), flush=True)
sys.stdin.read()
"""


async def test_ten_thousand_concurrent_connections() -> None:
    """10,000 connections held by another process, each answered; jobs still flow."""
    count = 10_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < count + 1000:
        pytest.skip(f"the hard open-file limit ({hard}) is below {count + 1000}")
    async with running_server(backlog=4096) as server:
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard  # raised at start
        args = [
            sys.executable,
            "-c",
            _IDLE_CLIENTS,
            str(server.port),
            str(count),
            encode(EchoReq(b"idle")).hex(),
            encode(EchoRes(b"idle")).hex(),
        ]
        with trio.fail_after(120):
            async with await anyio.open_process(args) as process:
                assert process.stdout is not None
                assert process.stdin is not None
                line = b""
                async for chunk in process.stdout:
                    line += chunk
                    if b"\n" in line:
                        break
                assert line.strip() == b"open %d" % count
                assert server.statistics().connections >= count
                # With all of them open, jobs still flow.
                assert await round_trip(server, b"busy server") == b"revres ysub"
                await process.stdin.aclose()
                assert await process.wait() == 0
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_can_do_storm_does_not_hold_back_a_submit() -> None:
    """Workers flooding CAN_DO; a client's SUBMIT is handled long before they end.

    The server reads every readable connection once per round (64 KiB at most), so
    the client waits for at most one round of the storm, not for all of it.
    """
    storms, per_storm = 8, 20_000
    total = storms * per_storm
    async with running_server(config=ServerConfig(job_handle_prefix=PREFIX)) as server:
        handled = {"can_do": 0, "before_submit": -1, "at_send": -1}
        storm_started = trio.Event()
        original = server.state.receive

        def counting_receive(conn: object, event: object, now: float) -> None:
            if isinstance(event, CanDo):
                handled["can_do"] += 1
                if handled["can_do"] == 1:
                    storm_started.set()
            elif isinstance(event, SubmitJob):
                handled["before_submit"] = handled["can_do"]
            original(conn, event, now)  # type: ignore[arg-type]

        StateSpy(server, receive=counting_receive)
        payloads = [
            b"".join(encode(CanDo(b"storm-%d-%d" % (s, i))) for i in range(per_storm))
            for s in range(storms)
        ]

        def flood(payload: bytes) -> None:
            with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
                sock.sendall(payload)
                sock.sendall(encode(EchoReq(b"done")))
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass

        threads = [threading.Thread(target=flood, args=(p,), daemon=True) for p in payloads]
        for thread in threads:
            thread.start()
        client = await Peer.connect(server)
        with trio.fail_after(60):
            await storm_started.wait()
            handled["at_send"] = handled["can_do"]
            await client.send(SubmitJob(b"urgent", b"", b"now"))
            assert isinstance(await client.packet(), JobCreated)
            for thread in threads:
                await trio.to_thread.run_sync(thread.join)
        assert handled["can_do"] == total
        # Between sending the SUBMIT and its handling, at most two rounds of reads
        # (64 KiB from each storming connection per round), never the whole storm.
        per_round = storms * (65536 // len(encode(CanDo(b"storm-0-0"))) + 1)
        waited = handled["before_submit"] - handled["at_send"]
        assert 0 <= waited <= 2 * per_round, handled
        assert handled["before_submit"] < total, handled
