"""TLS on the job server (``--ssl``): real sockets, real certificates from trustme."""

from __future__ import annotations

import datetime
import logging
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio
import trustme
from anyio.abc import ByteStream, SocketStream
from anyio.streams.tls import TLSAttribute, TLSStream
from cryptography.hazmat.primitives import serialization

from trio_gearman import Acl, AclRule, AdminClient, Client, Job, Worker
from trio_gearman._cli.server import main, parse_options
from trio_gearman._proto._codec import Decoder, encode
from trio_gearman._proto._packets import (
    CanDo,
    EchoReq,
    EchoRes,
    Error,
    GrabJobUniq,
    JobAssignUniq,
    JobCreated,
    Magic,
    Message,
    SubmitJob,
    WorkComplete,
)
from trio_gearman._server import server as server_module
from trio_gearman._server.connection import HAVE_EPOLL
from trio_gearman._server.server import GearmanServer
from trio_gearman._server.tls import certificate_names
from trio_gearman.testing import EmbeddedServer, open_test_server

from .test_cli_server import expect_exit, trio_gearmand
from .test_server_io import running_server, settle

TOOLS = "import sys; from trio_gearman._cli.tools import main; sys.exit(main())"
"""``trio-gearman`` as ``python -c`` runs it."""

# --- certificates and contexts ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """The CA that signs the server's and the good clients' certificates."""
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


def server_context(ca: trustme.CA, cert: trustme.LeafCert, *, mtls: bool) -> ssl.SSLContext:
    """What ``trio-gearmand --ssl`` builds, with ``--ssl-ca-file`` when ``mtls``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    cert.configure_cert(context)
    if mtls:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: trustme.CA,
    cert: trustme.LeafCert | None = None,
    version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED,
) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.maximum_version = version
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context


async def connect(port: int, context: ssl.SSLContext) -> ByteStream:
    """A TLS connection to the server on 127.0.0.1 (the handshake done)."""
    return await anyio.connect_tcp("127.0.0.1", port, ssl_context=context, tls_hostname="localhost")


async def exchange(
    stream: ByteStream, message: Message | None, count: int = 1, decoder: Decoder | None = None
) -> list[Message]:
    """Send ``message`` (if any); read until ``count`` packets have come back."""
    decoder = decoder or Decoder(expect=Magic.RES)
    if message is not None:
        await stream.send(encode(message))
    got: list[Message] = []
    with anyio.fail_after(10):
        while len(got) < count:
            decoder.feed(await stream.receive())
            got += [event for event in decoder if isinstance(event, Message)]
    return got


@asynccontextmanager
async def tls_server(
    context: ssl.SSLContext, handshake_timeout: float = 10.0
) -> AsyncIterator[EmbeddedServer]:
    async with open_test_server(
        ssl_context=context, ssl_handshake_timeout=handshake_timeout
    ) as server:
        yield server


async def wait_closed_by_server(stream: anyio.abc.SocketStream) -> None:
    """Read until the server closes the connection (end of stream or reset)."""
    try:
        while await stream.receive():
            pass
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        pass


# --- serving through TLS --------------------------------------------------------------------


@pytest.fixture(params=["poller", "task per connection"])
def serving_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Serve with the epoll poller, and again with one task per connection."""
    mode: str = request.param
    if mode == "poller" and not HAVE_EPOLL:
        pytest.skip("no epoll on this system")
    if mode != "poller":
        monkeypatch.setattr(server_module, "HAVE_EPOLL", False)
    return mode


async def test_echo_over_tls(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    async with (
        tls_server(server_context(ca, server_cert, mtls=False)) as server,
        await connect(server.port, client_context(ca)) as stream,
    ):
        assert await exchange(stream, EchoReq(b"hello")) == [EchoRes(b"hello")]
        [connection] = server.server.connections
        assert connection.cert_names == ()  # no client certificate asked for


@pytest.mark.usefixtures("serving_mode")
async def test_large_packets_cross_many_records(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    # 16 MiB each way: many TLS records in, and replies that the server's socket
    # cannot take at once while the client is still sending (its sends block).
    data = bytes(range(256)) * 4096
    async with (
        tls_server(server_context(ca, server_cert, mtls=False)) as server,
        await connect(server.port, client_context(ca)) as stream,
    ):
        await stream.send(encode(EchoReq(data)) * 16)
        assert await exchange(stream, None, count=16) == [EchoRes(data)] * 16
        assert await exchange(stream, EchoReq(b"after")) == [EchoRes(b"after")]


class Dribble(ByteStream):
    """A socket stream that sends a few bytes at a time, yielding in between."""

    def __init__(self, inner: SocketStream, step: int) -> None:
        self.inner = inner
        self.step = step

    async def send(self, item: bytes) -> None:
        for start in range(0, len(item), self.step):
            await self.inner.send(item[start : start + self.step])
            await anyio.lowlevel.checkpoint()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.usefixtures("serving_mode")
async def test_records_in_small_pieces(ca: trustme.CA, server_cert: trustme.LeafCert) -> None:
    async with tls_server(server_context(ca, server_cert, mtls=False)) as server:
        transport = Dribble(await anyio.connect_tcp("127.0.0.1", server.port), step=7)
        async with await TLSStream.wrap(
            transport, hostname="localhost", ssl_context=client_context(ca)
        ) as stream:
            message = EchoReq(b"piece by piece " * 20)
            assert await exchange(stream, message) == [EchoRes(message.data)]


async def test_job_from_tls_client_to_tls_worker(
    ca: trustme.CA, server_cert: trustme.LeafCert, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "trio_gearman.server")
    worker_cert = ca.issue_cert("worker-1.example", "10.0.0.7", common_name="worker-1")
    client_cert = ca.issue_cert("client-1.example", "ops@example.org")
    async with tls_server(server_context(ca, server_cert, mtls=True)) as server:
        client = await connect(server.port, client_context(ca, client_cert))
        worker = await connect(server.port, client_context(ca, worker_cert))
        async with client, worker:
            [created] = await exchange(client, SubmitJob(b"reverse", b"", b"abc"))
            assert isinstance(created, JobCreated)
            await worker.send(encode(CanDo(b"reverse")))
            assert await exchange(worker, GrabJobUniq()) == [
                JobAssignUniq(created.handle, b"reverse", b"", b"abc")
            ]
            await worker.send(encode(WorkComplete(created.handle, b"cba")))
            assert await exchange(client, None) == [WorkComplete(created.handle, b"cba")]
            connections = server.server.connections
            assert {conn.cert_names for conn in connections} == {
                ("worker-1", "worker-1.example", "10.0.0.7"),
                ("client-1.example", "ops@example.org"),
            }
        assert "client certificate: worker-1, worker-1.example, 10.0.0.7" in caplog.text
        # A close_notify (or the TCP close after it) ends the connections.
        with anyio.fail_after(5):
            for connection in connections:
                await connection.wait_closed()
        assert not server.server.connections


async def reverse(job: Job) -> bytes:
    return job.data[::-1]


async def test_our_client_worker_and_admin_client_over_mtls(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    context = client_context(ca, ca.issue_cert("app.example"))
    async with tls_server(server_context(ca, server_cert, mtls=True)) as server:
        address = f"tls://localhost:{server.port}"
        worker = Worker(address, ssl_context=context)
        worker.register("reverse", reverse)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            async with Client(address, ssl_context=context) as client:
                assert await client.submit("reverse", b"abc") == b"cba"
                names = [conn.cert_names for conn in server.server.connections]
                assert names == [("app.example",)] * 2  # the worker and the client
            async with AdminClient(address, ssl_context=context) as admin:
                [row] = [row for row in await admin.status() if row.function == b"reverse"]
                assert row.workers == 1
            worker.stop(0)


async def test_access_rules_match_the_client_certificate(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    acl = Acl(
        [
            AclRule(certificate="worker-*.example", register=["resize"]),
            AclRule(certificate="client-*.example", submit=["resize"]),
        ]
    )
    context = server_context(ca, server_cert, mtls=True)
    async with anyio.create_task_group() as tg:
        server = await tg.start(
            GearmanServer(listen=[("127.0.0.1", 0)], ssl_context=context, acl=acl).run
        )
        worker = await connect(server.port, client_context(ca, ca.issue_cert("worker-1.example")))
        client = await connect(server.port, client_context(ca, ca.issue_cert("client-1.example")))
        async with worker, client:
            assert await exchange(client, CanDo(b"resize")) == [
                Error(b"PERMISSION_DENIED", b"not allowed to register the function resize")
            ]
            [created] = await exchange(client, SubmitJob(b"resize", b"", b"img", background=True))
            assert isinstance(created, JobCreated)
            await worker.send(encode(CanDo(b"resize")))
            assert await exchange(worker, GrabJobUniq()) == [
                JobAssignUniq(created.handle, b"resize", b"", b"img")
            ]
        await server.aclose()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("none", "it sent no client certificate"),
        ("unknown CA", "its certificate was refused: unable to get local issuer certificate"),
        ("expired", "its certificate was refused: certificate has expired"),
    ],
)
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_mtls_refuses_bad_client_certificates(
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    caplog: pytest.LogCaptureFixture,
    kind: str,
    reason: str,
    version: ssl.TLSVersion,
) -> None:
    if kind == "none":
        cert = None
    elif kind == "unknown CA":
        cert = trustme.CA().issue_cert("intruder.example")
    else:
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = ca.issue_cert(
            "old.example",
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
    caplog.set_level(logging.INFO, "trio_gearman.server")
    async with tls_server(server_context(ca, server_cert, mtls=True)) as server:
        refused = False
        try:
            # TLS 1.3: the client's handshake ends before the server has checked its
            # certificate; the refusal arrives as an alert instead of the reply.
            async with await connect(server.port, client_context(ca, cert, version)) as stream:
                await exchange(stream, EchoReq(b"x"))
        except (ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream, OSError):
            refused = True
        assert refused
        assert not server.server.connections
        assert server.server.statistics().accepted == 0
        assert any(reason in record.getMessage() for record in caplog.records), caplog.text
        # A good client is still served.
        good = ca.issue_cert("good.example")
        async with await connect(server.port, client_context(ca, good, version)) as stream:
            assert await exchange(stream, EchoReq(b"ok")) == [EchoRes(b"ok")]
            assert stream.extra(TLSAttribute.tls_version) == (
                "TLSv1.2" if version == ssl.TLSVersion.TLSv1_2 else "TLSv1.3"
            )


async def test_plaintext_client_is_closed_at_once(
    ca: trustme.CA, server_cert: trustme.LeafCert, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_gearman.server")
    async with (
        tls_server(server_context(ca, server_cert, mtls=False)) as server,
        await connect(server.port, client_context(ca)) as tls,
    ):
        for plaintext in (encode(EchoReq(b"hi")), b"status\n"):
            async with await anyio.connect_tcp("127.0.0.1", server.port) as plain:
                start = trio.current_time()
                await plain.send(plaintext)
                with anyio.fail_after(1):
                    await wait_closed_by_server(plain)
                assert trio.current_time() - start < 1
            # The TLS client on the same server keeps getting results.
            assert await exchange(tls, EchoReq(b"still")) == [EchoRes(b"still")]
    assert "does not speak TLS (it sent b'\\x00REQ" in caplog.text
    assert "does not speak TLS (it sent b'status\\n'" in caplog.text


@pytest.mark.parametrize(
    ("start", "reason"),
    [
        (b"", "it closed the connection before the TLS handshake"),
        (b"\x16\x03\x01\x02\x00\x01", "it closed the connection during the TLS handshake"),
        (b"\x16\x03\x01\x00\x05hello", "TLS handshake failed: "),
    ],
    ids=["nothing", "half a ClientHello", "a bad ClientHello"],
)
async def test_broken_handshakes_are_logged(
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    caplog: pytest.LogCaptureFixture,
    start: bytes,
    reason: str,
) -> None:
    caplog.set_level(logging.INFO, "trio_gearman.server")
    async with tls_server(server_context(ca, server_cert, mtls=False)) as server:
        async with await anyio.connect_tcp("127.0.0.1", server.port) as peer:
            if start:
                await peer.send(start)
            await peer.send_eof()
            with anyio.fail_after(2):
                await wait_closed_by_server(peer)
        # The server logs as it closes (no checkpoint between): the line is there.
        assert "Closing the connection from 127.0.0.1: " + reason in caplog.text
        assert server.server.statistics().accepted == 0


async def test_silent_peer_is_closed_at_the_handshake_timeout(
    ca: trustme.CA, server_cert: trustme.LeafCert, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_gearman.server")
    timeout = 0.5
    context = server_context(ca, server_cert, mtls=False)
    async with (
        tls_server(context, handshake_timeout=timeout) as server,
        await anyio.connect_tcp("127.0.0.1", server.port) as silent,
    ):
        start = trio.current_time()
        # Meanwhile another client connects, shakes hands and is served.
        async with await connect(server.port, client_context(ca)) as stream:
            assert await exchange(stream, EchoReq(b"meanwhile")) == [EchoRes(b"meanwhile")]
        assert trio.current_time() - start < timeout
        with anyio.fail_after(timeout + 2):
            await wait_closed_by_server(silent)
        assert trio.current_time() - start >= timeout * 0.9
    assert "no TLS handshake within 0.5 s" in caplog.text


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_address"])
async def test_handshakes_in_progress_count_toward_the_connection_limits(
    ca: trustme.CA, server_cert: trustme.LeafCert, caplog: pytest.LogCaptureFixture, limit: str
) -> None:
    # Peers that open a socket and never shake hands must not hold more sockets
    # than the limits allow while they wait for the handshake timeout.
    context = server_context(ca, server_cert, mtls=False)
    options: dict[str, Any] = {"ssl_context": context, limit: 2}
    async with running_server(**options) as server:
        silent = [await anyio.connect_tcp("127.0.0.1", server.port) for _ in range(2)]
        await settle(lambda: server.statistics().handshaking == 2)
        assert server.statistics().connections == 0
        async with await anyio.connect_tcp("127.0.0.1", server.port) as extra:
            with anyio.fail_after(5):
                await wait_closed_by_server(extra)
        assert server.statistics().refused == 1
        assert "are open (the maximum)" in caplog.text
        # A handshake that ends (here: the peer leaves) frees its place.
        await silent.pop().aclose()
        await settle(lambda: server.statistics().handshaking == 1)
        async with await connect(server.port, client_context(ca)) as stream:
            assert await exchange(stream, EchoReq(b"served")) == [EchoRes(b"served")]
            assert server.statistics().handshaking == 1
        for sock in silent:
            await sock.aclose()


def test_server_refuses_a_client_side_context() -> None:
    with pytest.raises(ValueError, match="client-side context"):
        GearmanServer(ssl_context=ssl.create_default_context())
    with pytest.raises(ValueError, match="client-side context"):
        GearmanServer(ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    with pytest.raises(ValueError, match="must be positive"):
        GearmanServer(ssl_handshake_timeout=0)


async def test_memory_connections_stay_plaintext(
    ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    async with (
        tls_server(server_context(ca, server_cert, mtls=False)) as server,
        await server.connect_memory() as stream,
    ):
        assert await exchange(stream, EchoReq(b"m")) == [EchoRes(b"m")]


def test_certificate_names() -> None:
    cert = {
        "subject": ((("countryName", "DE"),), (("commonName", "a.example"),)),
        "subjectAltName": (
            ("DNS", "a.example"),
            ("DNS", "b.example"),
            ("URI", "spiffe://example.org/worker"),
            ("email", "ops@example.org"),
            ("IP Address", "0:0:0:0:0:0:0:1\n"),
            ("IP Address", "192.0.2.1"),
            ("othername", "<unsupported>"),
            ("DirName", ((("commonName", "x"),),)),
        ),
    }
    assert certificate_names(cert) == (
        "a.example",
        "b.example",
        "spiffe://example.org/worker",
        "ops@example.org",
        "::1",
        "192.0.2.1",
    )
    assert certificate_names({}) == ()
    assert certificate_names(None) == ()


# --- the command line -----------------------------------------------------------------------


@pytest.fixture
def pem_files(ca: trustme.CA, server_cert: trustme.LeafCert, tmp_path: Path) -> dict[str, str]:
    files = {
        "cert": tmp_path / "server.pem",
        "key": tmp_path / "server.key",
        "ca": tmp_path / "ca.pem",
    }
    server_cert.cert_chain_pems[0].write_to_path(files["cert"])
    server_cert.private_key_pem.write_to_path(files["key"])
    ca.cert_pem.write_to_path(files["ca"])
    return {name: str(path) for name, path in files.items()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ssl-certificate", "x.pem"], "--ssl-certificate need --ssl"),
        (["--ssl-key", "k", "--ssl-ca-file", "c"], "--ssl-key and --ssl-ca-file need --ssl"),
        (["--ssl-handshake-timeout", "3"], "--ssl-handshake-timeout need --ssl"),
        (["--ssl"], "--ssl needs --ssl-certificate and --ssl-key FILE"),
        (["--ssl", "--ssl-certificate", "x.pem"], "--ssl needs --ssl-key FILE"),
        (["--ssl", "--ssl-handshake-timeout", "0"], "0 is not a positive number of seconds"),
    ],
)
def test_tls_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("trio-gearmand: error: ")
    assert err.count("\n") == 1


def test_tls_paths_from_gearmands_environment(pem_files: dict[str, str]) -> None:
    env = {
        "GEARMAND_SERVER_PEM": pem_files["cert"],
        "GEARMAND_SERVER_KEY": pem_files["key"],
        "GEARMAND_CA_CERTIFICATE": pem_files["ca"],
    }
    options = parse_options(["--ssl"], env)
    assert (options.ssl_certificate, options.ssl_key, options.ssl_ca_file) == (
        pem_files["cert"],
        pem_files["key"],
        pem_files["ca"],
    )
    assert options.ssl_handshake_timeout == 10.0
    # The command line wins; without --ssl the variables are not looked at.
    options = parse_options(["--ssl", "--ssl-key", "mine.key"], env)
    assert options.ssl_key == "mine.key"
    assert parse_options([], env).ssl_certificate is None


def test_bad_certificate_files(
    pem_files: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other_key = tmp_path / "other.key"
    trustme.CA().issue_cert("x").private_key_pem.write_to_path(other_key)
    encrypted = tmp_path / "encrypted.key"
    key_object = serialization.load_pem_private_key(Path(pem_files["key"]).read_bytes(), None)
    encrypted.write_bytes(
        key_object.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    cert, key = pem_files["cert"], pem_files["key"]
    cases = [
        (["--ssl-certificate", str(tmp_path / "missing.pem"), "--ssl-key", key],
         f"--ssl-certificate {tmp_path / 'missing.pem'}: cannot read it: No such file"),
        (["--ssl-certificate", cert, "--ssl-key", cert], f"--ssl-key {cert}: no PEM private key"),
        (["--ssl-certificate", key, "--ssl-key", key], f"--ssl-certificate {key}: no PEM cert"),
        (["--ssl-certificate", cert, "--ssl-key", str(other_key)], "does not belong to"),
        (["--ssl-certificate", cert, "--ssl-key", str(encrypted)], "the key is encrypted"),
        (["--ssl-certificate", cert, "--ssl-key", key, "--ssl-ca-file", key],
         f"--ssl-ca-file {key}: no PEM CA certificate"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(["--ssl", *args]) == 2
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert err.count("\n") == 1


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
async def test_cli_serves_tls(ca: trustme.CA, pem_files: dict[str, str], *, mtls: bool) -> None:
    args = ["-L", "127.0.0.1", "-p", "0", "--ssl"]
    args += ["--ssl-certificate", pem_files["cert"], "--ssl-key", pem_files["key"]]
    if mtls:
        args += ["--ssl-ca-file", pem_files["ca"]]
    async with trio_gearmand(args) as server:
        good = client_context(ca, ca.issue_cert("client.example") if mtls else None)
        async with await connect(server.port, good) as stream:
            assert await exchange(stream, EchoReq(b"cli")) == [EchoRes(b"cli")]
        if mtls:
            with pytest.raises((ssl.SSLError, anyio.BrokenResourceError, anyio.EndOfStream)):
                async with await connect(server.port, client_context(ca)) as stream:
                    await exchange(stream, EchoReq(b"x"))
            await server.wait_for_line(b"it sent no client certificate")
        server.process.terminate()
        await expect_exit(server)


async def test_trio_gearman_tools_talk_to_trio_gearmand_over_mtls(
    ca: trustme.CA, pem_files: dict[str, str], tmp_path: Path
) -> None:
    client = ca.issue_cert("ops.example")
    client.private_key_and_cert_chain_pem.write_to_path(tmp_path / "client.pem")
    args = ["-L", "127.0.0.1", "-p", "0", "--ssl", "--ssl-ca-file", pem_files["ca"]]
    args += ["--ssl-certificate", pem_files["cert"], "--ssl-key", pem_files["key"]]
    tool = [
        sys.executable,
        "-c",
        "import sys; from trio_gearman._cli.tools import main; sys.exit(main())",
    ]
    async with trio_gearmand(args) as server:
        tls = ["--ssl-ca-file", pem_files["ca"], "--ssl-certificate", str(tmp_path / "client.pem")]
        servers = ["--servers", f"localhost:{server.port}"]
        with anyio.fail_after(20):
            submitted = await anyio.run_process(
                [*tool, "submit", *servers, *tls, "--background", "resize", "img-1"], check=False
            )
            assert submitted.returncode == 0, submitted.stderr
            status = await anyio.run_process([*tool, "admin", *servers, *tls, "status"])
        assert b"resize" in status.stdout
        server.process.terminate()
        await expect_exit(server)


async def test_debian_gearadmin_is_turned_away(
    pem_files: dict[str, str], gearadmin_cli: str
) -> None:
    # Debian's libgearman has no TLS: its -S quietly talks plaintext, so the TLS
    # port refuses it at once and gearadmin must give up rather than hang.
    args = ["-L", "127.0.0.1", "-p", "0", "--ssl"]
    args += ["--ssl-certificate", pem_files["cert"], "--ssl-key", pem_files["key"]]
    async with trio_gearmand(args) as server:
        for extra in ([], ["-S"]):
            command = [gearadmin_cli, "--status", "-h", "127.0.0.1", "-p", str(server.port), *extra]
            start = trio.current_time()
            with anyio.fail_after(5):
                result = await anyio.run_process(command, check=False)
            assert trio.current_time() - start < 3
            assert result.returncode != 0 or not result.stdout.strip(), result
            assert b"OK" not in result.stdout
            await server.wait_for_line(b"does not speak TLS")
        server.process.terminate()
        await expect_exit(server)


def test_help_lists_the_tls_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--ssl ", "--ssl-certificate", "--ssl-key", "--ssl-ca-file",
                   "--ssl-handshake-timeout"):  # fmt: skip
        assert option in out
