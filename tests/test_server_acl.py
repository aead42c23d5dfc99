"""Access control over real sockets: peer address rules, loopback-only admin, the log line."""

from __future__ import annotations

import logging
import re
import socket
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import pytest
import trio
from anyio.abc import SocketStream

from trio_gearman import Acl, AclRule, Client, GearmanServer, Identity, JobError, ServerConfig
from trio_gearman._proto._codec import Decoder, encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    Error,
    JobCreated,
    Magic,
    Message,
    SubmitJob,
)

from .gearmand_peer import free_port, require_tool, run_until_listening

PREFIX = b"H:acl"
DENIED_ADMIN = b"ERR PERMISSION_DENIED not+allowed+to+run+drop+function+from+this+peer\r\n"


def machine_address() -> str | None:
    """An IPv4 address of this machine that is not a loopback address, if it has one."""
    candidates = []
    with suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, suppress(OSError):
        probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
        candidates.append(probe.getsockname()[0])
    for address in candidates:
        if not address.startswith("127."):
            return address
    return None


@asynccontextmanager
async def running(host: str = "127.0.0.1", **options: Any) -> AsyncIterator[GearmanServer]:
    """A server listening on ``host`` (a free port), closed when the block exits."""
    async with anyio.create_task_group() as tg:
        server = GearmanServer(ServerConfig(job_handle_prefix=PREFIX), [(host, 0)], **options)
        await tg.start(server.run)
        try:
            yield server
        finally:
            await server.aclose()


class Peer:
    """A raw connection to the server: packets and admin lines, answered in order."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._decoder = Decoder(expect=Magic.RES)
        self._text = b""

    async def request(self, *messages: Message) -> list[Message]:
        """Send ``messages``; return every reply up to the ECHO sent after them."""
        await self.stream.send(b"".join(encode(m) for m in (*messages, EchoReq(b"end"))))
        replies: list[Message] = []
        with trio.fail_after(10):
            while True:
                self._decoder.feed(await self.stream.receive())
                for event in self._decoder:
                    if event == EchoRes(b"end"):
                        return replies
                    replies.append(event)  # type: ignore[arg-type]

    async def admin(self, line: bytes) -> bytes:
        """Send an admin line; return the first reply line."""
        await self.stream.send(line + b"\n")
        with trio.fail_after(10):
            while b"\n" not in self._text:
                self._text += await self.stream.receive()
        reply, _, self._text = self._text.partition(b"\n")
        return reply + b"\n"


@asynccontextmanager
async def peer(server: GearmanServer, source: str = "127.0.0.1") -> AsyncIterator[Peer]:
    """A connection to ``server`` from the local address ``source``."""
    host, port = server.addresses[0]
    async with await anyio.connect_tcp(host, port, local_host=source) as stream:
        yield Peer(stream)


RULES = Acl(
    [
        AclRule(address="127.0.0.2", register=["*"], submit=["*"], admin=True, name="trusted"),
        AclRule(address="127.0.0.0/8", submit=["report_*"], name="loopback"),
        AclRule(certificate="worker-*.example.com", register=["resize_*"], name="workers"),
    ]
)


async def test_address_rules_tell_two_loopback_peers_apart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "trio_gearman.server")
    async with (
        running(acl=RULES) as server,
        peer(server) as plain,
        peer(server, "127.0.0.2") as trusted,
    ):
        assert await plain.request(CanDo(b"resize")) == [
            Error(b"PERMISSION_DENIED", b"not allowed to register the function resize")
        ]
        assert await trusted.request(CanDo(b"resize")) == []
        # The refused peer stays connected and may do what it is granted.
        assert await plain.request(SubmitJob(b"report_daily", b"", b"x", background=True)) == [
            JobCreated(PREFIX + b":1")
        ]
        assert await plain.request(SubmitJob(b"resize", b"", b"x", background=True)) == [
            Error(b"PERMISSION_DENIED", b"not allowed to submit jobs of resize")
        ]
        assert await plain.admin(b"drop function report_daily") == DENIED_ADMIN
        assert await plain.admin(b"status") != DENIED_ADMIN  # read-only stays open
        assert await trusted.admin(b"create function made") == b"OK\r\n"
    records = [r for r in caplog.records if r.getMessage().startswith("Permission denied")]
    assert [r.getMessage() for r in records] == [
        "Permission denied: 127.0.0.1 may not register the function 'resize': "
        "not granted by the rules that match the peer (loopback)",
        "Permission denied: 127.0.0.1 may not submit jobs of 'resize': "
        "not granted by the rules that match the peer (loopback)",
        "Permission denied: 127.0.0.1 may not run the admin command 'drop function report_daily': "
        "not granted by the rules that match the peer (loopback)",
    ]
    assert all(r.levelno == logging.WARNING for r in records)
    assert [(r.peer, r.function) for r in records] == [  # type: ignore[attr-defined]
        ("127.0.0.1", b"resize"),
        ("127.0.0.1", b"resize"),
        ("127.0.0.1", None),
    ]


async def test_without_rules_loopback_peers_may_change_the_server() -> None:
    async with running() as server, peer(server) as local, peer(server, "127.0.0.9") as other:
        assert await local.admin(b"create function f") == b"OK\r\n"
        assert await other.admin(b"drop function f") == b"OK\r\n"


async def test_without_rules_a_remote_peer_may_only_read() -> None:
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no address but loopback ones")
    async with running(address) as server, peer(server, address) as remote:
        assert await remote.admin(b"create function f") == (
            b"ERR PERMISSION_DENIED not+allowed+to+run+create+function+from+this+peer\r\n"
        )
        assert await remote.admin(b"drop function f") == DENIED_ADMIN
        assert (await remote.admin(b"version")).startswith(b"OK ")
        assert await remote.request(CanDo(b"f")) == []  # workers and clients are not affected
    async with (
        running(address, admin_from_anywhere=True) as server,
        peer(server, address) as remote,
    ):
        assert await remote.admin(b"create function f") == b"OK\r\n"


async def test_an_adopted_connection_is_judged_by_the_identity_given() -> None:
    async with running() as server:
        ours, theirs = socket.socketpair()
        server.adopt(ours, "10.0.0.9", identity=Identity("10.0.0.9"))
        async with await _stream(theirs) as stream:
            assert await Peer(stream).admin(b"drop function f") == DENIED_ADMIN
        ours, theirs = socket.socketpair()
        server.adopt(ours, "memory")  # a Unix socket without an identity: a local peer
        async with await _stream(theirs) as stream:
            assert await Peer(stream).admin(b"create function f") == b"OK\r\n"


async def test_certificate_names_given_at_adoption_select_the_rules() -> None:
    async with running(acl=RULES) as server:
        ours, theirs = socket.socketpair()
        server.adopt(ours, "10.0.0.9", identity=Identity("10.0.0.9", ("worker-1.example.com",)))
        async with await _stream(theirs) as stream:
            worker = Peer(stream)
            assert await worker.request(CanDo(b"resize_png")) == []
            assert await worker.request(CanDo(b"email")) == [
                Error(b"PERMISSION_DENIED", b"not allowed to register the function email")
            ]
        ours, theirs = socket.socketpair()
        server.adopt(ours, "10.0.0.9", identity=Identity("10.0.0.9", ("intruder.example.com",)))
        async with await _stream(theirs) as stream:
            assert await Peer(stream).request(CanDo(b"resize_png")) == [
                Error(b"PERMISSION_DENIED", b"not allowed to register the function resize_png")
            ]


async def _stream(sock: socket.socket) -> SocketStream:
    """An anyio stream over one end of a socket pair."""
    return await SocketStream.from_socket(sock)


async def test_the_client_raises_job_error_for_a_refused_submission() -> None:
    acl = Acl([AclRule(address="127.0.0.1", submit=["report_*"])])
    async with running(acl=acl) as server, Client(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(JobError) as caught:
            await client.submit_background("resize", b"x")
        assert caught.value.code == "PERMISSION_DENIED"
        assert caught.value.text == "not allowed to submit jobs of resize"
        # The same client goes on submitting what it may.
        job = await client.submit_background("report_daily", b"x")
        assert job.handle == PREFIX + b":1"


def _admin_line(address: str, port: int, line: bytes) -> bytes:
    """One admin command to ``address:port`` from ``address``; the first reply line."""
    with socket.create_connection((address, port), timeout=5, source_address=(address, 0)) as s:
        s.sendall(line + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            assert chunk, reply
            reply += chunk
        return reply


@pytest.mark.gearmand
async def test_gearmand_runs_a_remote_peers_create_function_and_we_refuse_it() -> None:
    """The difference the compatibility page names, against gearmand 1.1.20 itself."""
    address = machine_address()
    if address is None:
        pytest.skip("this machine has no address but loopback ones")
    binary = require_tool("gearmand")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="gearmand-") as pid_dir:
        args = [
            binary,
            f"--listen={address}",
            f"--port={port}",
            "--log-file=stderr",
            "--verbose=INFO",
            f"--pid-file={pid_dir}/gearmand.pid",
            "--threads=1",
        ]
        with run_until_listening(args, "gearmand", rf"Listening on {re.escape(address)}:\d+"):
            theirs = _admin_line(address, port, b"create function f")
    async with running(address) as server, peer(server, address) as remote:
        ours = await remote.admin(b"create function f")
    assert theirs == b"OK\r\n"
    assert ours == b"ERR PERMISSION_DENIED not+allowed+to+run+create+function+from+this+peer\r\n"
