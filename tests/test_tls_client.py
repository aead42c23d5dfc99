"""TLS on the client side: our Client, Worker and AdminClient, and the ``trio-gearman``
tools, against gearmand 1.1.20 behind stunnel (tests/stunnel_peer.py), with real
certificates from a throw-away CA (trustme).

Also the failures a person must be able to act on: a certificate from an unknown CA,
a certificate for another host, a server that wants a client certificate, a
plaintext port spoken to over TLS, TLS option files that cannot be read.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from trio_gearman import (
    AdminClient,
    Client,
    ConnectFailed,
    ConnectionLost,
    Job,
    NoServersAvailable,
    Worker,
)
from trio_gearman._address import parse_server, server_list
from trio_gearman._cli.common import UsageError
from trio_gearman._cli.worker import load_worker
from trio_gearman._monitor import Poller
from trio_gearman._net.stream import os_error_text, tls_error_text

from .gearmand_peer import GearmandProcess
from .stunnel_peer import Certificates, StunnelProcess, make_certificates, run_stunnel

COMMAND = [
    sys.executable,
    "-c",
    "import sys; from trio_gearman._cli.tools import main; sys.exit(main())",
]
UNKNOWN_ISSUER = "certificate verify failed: unable to get local issuer certificate"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    """The CA our side trusts, the server certificate stunnel shows, a client one."""
    directory = tmp_path / "good"
    directory.mkdir()
    return make_certificates(directory)


@pytest.fixture
def strangers(tmp_path: Path) -> Certificates:
    """Another CA, that signed nothing stunnel shows."""
    directory = tmp_path / "other"
    directory.mkdir()
    return make_certificates(directory)


@pytest.fixture
def tls_server(gearmand: GearmandProcess, certificates: Certificates) -> Iterator[StunnelProcess]:
    """gearmand behind stunnel: TLS, no client certificate asked for."""
    with run_stunnel(gearmand.address, certificates) as stunnel:
        yield stunnel


@pytest.fixture
def mtls_server(gearmand: GearmandProcess, certificates: Certificates) -> Iterator[StunnelProcess]:
    """gearmand behind stunnel with ``verify = 2``: a client certificate is required."""
    with run_stunnel(gearmand.address, certificates, client_ca=certificates.ca_file) as stunnel:
        yield stunnel


async def reverse(job: Job) -> bytes:
    return job.data[::-1]


@asynccontextmanager
async def running_worker(address: str, context: ssl.SSLContext | None) -> AsyncIterator[Worker]:
    """Our Worker serving ``reverse`` over TLS for the duration of the block."""
    worker = Worker(address, ssl_context=context)
    worker.register("reverse", reverse)
    async with anyio.create_task_group() as tg:
        await tg.start(worker.run)
        yield worker
        worker.stop(0)


async def function_rows(address: str, context: ssl.SSLContext) -> dict[bytes, tuple[int, int]]:
    """``status`` through the admin protocol over TLS: total jobs and workers per function."""
    async with AdminClient(address, ssl_context=context) as admin:
        return {row.function: (row.total, row.workers) for row in await admin.status()}


# --- addresses and the error texts (no peer) ---------------------------------------------


@pytest.mark.parametrize(
    ("address", "default", "expected"),
    [
        ("tls://gearman.example.com:4731", False, ("gearman.example.com", 4731, True)),
        ("TLS://[::1]", False, ("::1", 4730, True)),
        ("tcp://10.0.0.1:4730", True, ("10.0.0.1", 4730, False)),
        ("10.0.0.1:4730", True, ("10.0.0.1", 4730, True)),
        ("10.0.0.1:4730", False, ("10.0.0.1", 4730, False)),
        (("10.0.0.1", 7), True, ("10.0.0.1", 7, True)),
    ],
)
def test_an_address_says_tls_or_follows_the_default(
    address: str | tuple[str, int], default: bool, expected: tuple[str, int, bool]
) -> None:
    assert parse_server(address, tls=default) == expected


@pytest.mark.parametrize("address", ["ssl://a:1", "https://a", "tls://", "tls://a:b"])
def test_a_bad_scheme_or_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="server address"):
        parse_server(address)


def test_normalised_lists_read_again_give_the_same_servers() -> None:
    assert server_list("tls://a, b, tcp://c") == ["tls://a:4730", "b:4730", "c:4730"]
    under_tls = server_list("tls://a, b, tcp://c", tls=True)
    assert under_tls == ["tls://a:4730", "tls://b:4730", "tcp://c:4730"]
    assert server_list(under_tls, tls=True) == under_tls


def test_a_client_given_a_context_names_its_servers_by_how_it_reaches_them() -> None:
    context = ssl.create_default_context()
    client = Client(["a:1", "tcp://b:2", "tls://c:3"], ssl_context=context)
    assert client.addresses == ["tls://a:1", "tcp://b:2", "tls://c:3"]
    assert Client(["a:1", "tls://c:3"]).addresses == ["a:1", "tls://c:3"]
    worker = Worker("a:1", ssl_context=context)
    assert worker.addresses == ["tls://a:1"]
    assert AdminClient("a:1", ssl_context=context).server == "tls://a:1"
    assert AdminClient("tcp://a:1", ssl_context=context).server == "tcp://a:1"


def test_tls_errors_are_told_without_openssls_decoration() -> None:
    text = "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
    error = ssl.SSLError(1, f"{text} (_ssl.c:2580)")
    assert tls_error_text(error) == "tlsv13 alert certificate required"
    wrapped = ConnectionLost("the connection broke", server="tls://h:1")
    wrapped.__cause__ = error
    # Its errno is OpenSSL's (1), not EPERM's "Operation not permitted".
    assert os_error_text(wrapped) == "TLS error: tlsv13 alert certificate required"


# --- our client and worker through stunnel ------------------------------------------------


@pytest.mark.anyio
async def test_client_and_worker_run_a_job_over_tls(
    tls_server: StunnelProcess, certificates: Certificates
) -> None:
    context = certificates.client_context()
    with anyio.fail_after(20):
        async with running_worker(tls_server.address, context) as worker:
            assert [health.address for health in worker.servers()] == [tls_server.address]
            async with Client(tls_server.address, ssl_context=context) as client:
                assert await client.submit("reverse", b"over tls") == b"slt revo"
                assert client.servers()[0].up
            rows = await function_rows(tls_server.address, context)
    assert rows[b"reverse"] == (0, 1)  # the worker registered through stunnel


async def test_a_context_makes_every_plain_address_tls_but_tcp(
    gearmand: GearmandProcess, tls_server: StunnelProcess, certificates: Certificates
) -> None:
    context = certificates.client_context()
    servers = [tls_server.plain_address, f"tcp://{gearmand.address}"]
    with anyio.fail_after(20):
        async with Client(servers, ssl_context=context) as client:
            assert client.addresses == [tls_server.address, f"tcp://{gearmand.address}"]
            assert all(health.up for health in client.servers())
            for unique in ("a", "b", "c", "d"):  # keys spread the jobs over both links
                await client.submit_background("queued", b"x", unique=unique)
        # The TLS port and the plaintext one are the same gearmand.
        rows = await function_rows(tls_server.plain_address, context)
    assert rows[b"queued"] == (4, 0)


@pytest.mark.anyio
async def test_mutual_tls_with_a_client_certificate(
    mtls_server: StunnelProcess, certificates: Certificates
) -> None:
    context = certificates.client_context(certificate=True)
    with anyio.fail_after(20):
        async with running_worker(mtls_server.address, context):
            async with Client(mtls_server.address, ssl_context=context) as client:
                assert await client.submit("reverse", b"mutual") == b"lautum"
            rows = await function_rows(mtls_server.address, context)
    assert rows[b"reverse"][1] == 1


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_certificate_from_an_unknown_ca_is_refused_naming_server_and_reason(
    tls_server: StunnelProcess, strangers: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_gearman.supervisor")
    with anyio.fail_after(20):
        async with Client(
            tls_server.address, ssl_context=strangers.client_context(), wait_for_server=0
        ) as client:
            with pytest.raises(NoServersAvailable) as caught:
                await client.submit("reverse", b"x")
            health = client.servers()[0]
    message = str(caught.value)
    assert tls_server.address in message
    assert UNKNOWN_ISSUER in message
    assert isinstance(health.last_error, ConnectFailed)
    assert health.last_error.server == tls_server.address
    assert isinstance(health.last_error.__cause__, ssl.SSLCertVerificationError)
    # Logged by the link like a refused connection, and retried after back-off.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"client link to {tls_server.address} down" in text and UNKNOWN_ISSUER in text
        for text in warnings
    ), warnings


async def test_verification_is_on_without_a_context(tls_server: StunnelProcess) -> None:
    # tls:// alone: the system's CAs, which never signed the test CA's certificates.
    with anyio.fail_after(20):
        async with Client(tls_server.address, wait_for_server=0) as client:
            with pytest.raises(NoServersAvailable, match=UNKNOWN_ISSUER):
                await client.submit("reverse", b"x")
        with pytest.raises(ConnectFailed, match=UNKNOWN_ISSUER) as caught:
            async with AdminClient(tls_server.address):
                pass
    assert caught.value.server == tls_server.address


async def test_a_certificate_for_another_host_is_refused(
    gearmand: GearmandProcess, tmp_path: Path
) -> None:
    elsewhere = make_certificates(tmp_path, server_names=("gearman.example.com",))
    with run_stunnel(gearmand.address, elsewhere) as stunnel, anyio.fail_after(20):
        worker = Worker(stunnel.address, ssl_context=elsewhere.client_context())
        worker.register("reverse", reverse)
        async with anyio.create_task_group() as tg:
            await tg.start(worker.run)
            health = worker.servers()[0]
            worker.stop(0)
    assert not health.up
    assert isinstance(health.last_error, ConnectFailed)
    assert (
        "certificate verify failed: IP address mismatch, certificate is not valid for "
        "'127.0.0.1'" in str(health.last_error)
    )


@pytest.mark.anyio
async def test_no_client_certificate_against_mutual_tls_is_refused_in_the_handshake(
    mtls_server: StunnelProcess, certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    # TLS 1.2: the server refuses a client without a certificate inside the handshake.
    caplog.set_level(logging.WARNING, "trio_gearman.supervisor")
    context = certificates.client_context()  # trusts the server, shows no certificate
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with anyio.fail_after(20):
        async with Client(mtls_server.address, ssl_context=context, wait_for_server=0) as client:
            with pytest.raises(NoServersAvailable) as caught:
                await client.submit("reverse", b"x")
            health = client.servers()[0]
    assert isinstance(health.last_error, ConnectFailed)
    message = str(caught.value)
    assert f"{mtls_server.address} (cannot connect: TLS error: " in message
    assert "handshake failure" in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"client link to {mtls_server.address} down" in text for text in warnings)


REFUSED_WITHOUT_CERTIFICATE = r"certificate required|does it require a client certificate\?"


@pytest.mark.anyio
async def test_no_client_certificate_against_mutual_tls_breaks_the_first_exchange(
    mtls_server: StunnelProcess, certificates: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    # TLS 1.3: the handshake ends on the client's side before the server has checked
    # the client, so the refusal breaks the first exchange: the server's alert
    # ("certificate required") when it is read before the connection is reset, else
    # the reset, with a hint.
    caplog.set_level(logging.WARNING, "trio_gearman.supervisor")
    context = certificates.client_context()
    with anyio.fail_after(20):
        async with Client(mtls_server.address, ssl_context=context, wait_for_server=0) as client:
            while client.servers()[0].last_error is None:
                await client.wait_servers_changed()
            health = client.servers()[0]
            with pytest.raises(NoServersAvailable, match=REFUSED_WITHOUT_CERTIFICATE):
                await client.submit("reverse", b"x")
        with pytest.raises(ConnectionLost, match=REFUSED_WITHOUT_CERTIFICATE) as caught:
            async with AdminClient(mtls_server.address, ssl_context=context) as admin:
                await admin.status()
    assert caught.value.server == mtls_server.address
    assert isinstance(health.last_error, ConnectionLost)
    assert health.last_error.server == mtls_server.address
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        f"client link to {mtls_server.address} down" in text
        and re.search(REFUSED_WITHOUT_CERTIFICATE, text)
        for text in warnings
    ), warnings


async def test_tls_to_a_plaintext_port_is_a_clear_connect_failure(
    gearmand: GearmandProcess,
) -> None:
    with anyio.fail_after(20), pytest.raises(ConnectFailed) as caught:
        async with AdminClient(f"tls://{gearmand.address}"):
            pass
    assert caught.value.server == f"tls://{gearmand.address}"
    assert str(caught.value) == (
        f"tls://{gearmand.address}: cannot connect: TLS error: the server closed the "
        "connection during the handshake (is the port a TLS one?)"
    )


async def test_the_monitor_polls_over_tls(
    tls_server: StunnelProcess, certificates: Certificates
) -> None:
    poller = Poller([tls_server.plain_address], ssl_context=certificates.client_context())
    assert poller.servers == (tls_server.address,)
    with anyio.fail_after(20):
        await poller.poll()
        await poller.aclose()
    shot = poller.history.latest(tls_server.address)
    assert shot is not None
    assert shot.error is None, shot
    assert shot.version is not None
    assert shot.version.startswith("1.1"), shot.version


# --- the trio-gearman tools, as processes -----------------------------------------------


async def tool(*args: str, cwd: Path | None = None) -> tuple[int, bytes, str]:
    """Run ``trio-gearman ARGS`` as a process: exit status, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if k != "GEARMAN_SERVERS"}
    with anyio.fail_after(20):
        done = await anyio.run_process([*COMMAND, *args], check=False, env=env, cwd=cwd)
    err = done.stderr.decode()
    assert "Traceback" not in err, err
    return done.returncode, done.stdout, err


async def test_cli_submit_and_admin_over_tls_through_stunnel(
    tls_server: StunnelProcess, certificates: Certificates
) -> None:
    ca = str(certificates.ca_file)
    async with running_worker(tls_server.address, certificates.client_context()):
        status, out, err = await tool(
            "submit", "--ssl-ca-file", ca, "--servers", tls_server.address, "reverse", "hello"
        )
        assert (status, out) == (0, b"olleh"), err
        # The plain address: --ssl-ca-file (like -S) makes it TLS.
        status, out, err = await tool(
            "admin", "status", "--ssl-ca-file", ca, "--servers", tls_server.plain_address
        )
        assert status == 0, err
        assert out.decode().split("\n")[0].split("\t") == ["reverse", "0", "0", "1"]
        status, out, err = await tool(
            "admin", "-S", "--ssl-ca-file", ca, "--json", "version", "--servers",
            tls_server.plain_address,
        )  # fmt: skip
    assert status == 0, err
    assert json.loads(out)[0]["server"] == tls_server.address


async def test_cli_mutual_tls_with_a_client_certificate(
    mtls_server: StunnelProcess, certificates: Certificates
) -> None:
    ca, client = str(certificates.ca_file), str(certificates.client_file)
    common = ["--ssl-ca-file", ca, "--servers", mtls_server.plain_address]
    status, out, err = await tool(
        "submit", "--background", *common, "--ssl-certificate", client, "queued", "x"
    )
    assert status == 0, err
    assert out.startswith(b"H:")
    status, out, err = await tool("admin", "status", *common, "--ssl-certificate", client)
    assert (status, out.decode().split("\t")[:2]) == (0, ["queued", "1"]), err
    # The key in a file of its own.
    cert_file, key_file = str(certificates.client_cert_file), str(certificates.client_key_file)
    status, _, err = await tool(
        "admin", "status", *common, "--ssl-certificate", cert_file, "--ssl-key", key_file
    )
    assert status == 0, err
    # Without a certificate, the server's refusal in words.
    status, _, err = await tool("admin", "status", *common)
    assert status in (1, 3), err
    assert mtls_server.address in err
    assert re.search(REFUSED_WITHOUT_CERTIFICATE, err), err


async def test_cli_refuses_a_server_its_cas_did_not_sign(
    tls_server: StunnelProcess, strangers: Certificates
) -> None:
    for command in (["submit", "reverse", "x"], ["admin", "status"]):
        # -S: the system's CAs; --ssl-ca-file: another CA.
        for trust in (["-S"], ["--ssl-ca-file", str(strangers.ca_file)]):
            status, _, err = await tool(*command, *trust, "--servers", tls_server.plain_address)
            assert status == 3, err
            assert f"{tls_server.address}: cannot connect: TLS error: certificate verify " in err


async def test_cli_top_watches_a_server_over_tls(
    tls_server: StunnelProcess, certificates: Certificates
) -> None:
    async with running_worker(tls_server.address, certificates.client_context()):
        status, out, err = await tool(
            "top", "--once", "--ssl-ca-file", str(certificates.ca_file), tls_server.plain_address
        )
    assert status == 0, err
    text = out.decode()
    assert text.split("\n")[0].split()[:2] == [tls_server.address, "up"], text
    assert re.search(r"^reverse +0 .* 1 ", text, re.MULTILINE), text  # one worker


async def test_cli_worker_process_gets_the_tls_context(
    tls_server: StunnelProcess, certificates: Certificates, tmp_path: Path
) -> None:
    (tmp_path / "tls_jobs.py").write_text(
        "import trio_gearman\n\n"
        "async def reverse(job):\n    return job.data[::-1]\n\n"
        "def make(servers, ssl_context=None):\n"
        "    worker = trio_gearman.Worker(servers, ssl_context=ssl_context)\n"
        "    worker.register('reverse', reverse)\n"
        "    return worker\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GEARMAN_SERVERS"}
    args = ["worker", "tls_jobs:make", "--ssl-ca-file", str(certificates.ca_file)]
    args += ["--servers", tls_server.plain_address]
    process = await anyio.open_process(
        [*COMMAND, *args], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL
    )
    async with process:
        assert process.stderr is not None
        stderr = BufferedByteReceiveStream(process.stderr)
        with anyio.fail_after(20):
            line = await stderr.receive_until(b"\n", 4096)
            serving = f"trio-gearman: worker serving reverse on {tls_server.address}"
            assert line.decode().startswith(serving), line
            context = certificates.client_context()
            async with Client(tls_server.address, ssl_context=context) as client:
                assert await client.submit("reverse", b"from a process") == b"ssecorp a morf"
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0


# --- the TLS options, in-process ----------------------------------------------------------


async def test_cli_tls_option_mistakes_are_usage_errors(
    certificates: Certificates, tmp_path: Path
) -> None:
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    cases = [
        (["--ssl-key", str(certificates.client_file)], "--ssl-key needs --ssl-certificate"),
        (["--ssl-ca-file", str(tmp_path / "missing.pem")], "No such file or directory"),
        (["--ssl-ca-file", str(not_pem)], f"--ssl-ca-file {not_pem}: not a usable PEM file"),
        (["--ssl-certificate", str(not_pem)], f"--ssl-certificate {not_pem}: not a usable"),
    ]
    for options, message in cases:
        status, out, err = await tool("admin", "status", *options, "--servers", "127.0.0.1:9")
        assert status == 2, (options, err)
        assert message in err, (options, err)
        assert out == b""


async def test_cli_worker_takes_tls_only_through_an_ssl_context_parameter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tls_loading.py").write_text(
        "import trio_gearman\n\n"
        "async def reverse(job):\n    return job.data[::-1]\n\n"
        "def make(servers, ssl_context=None):\n"
        "    worker = trio_gearman.Worker(servers, ssl_context=ssl_context)\n"
        "    worker.register('reverse', reverse)\n"
        "    return worker\n\n"
        "def make_plain(servers):\n    return make(servers)\n\n"
        "fixed = make('127.0.0.1:4730')\n"
    )
    context = ssl.create_default_context()
    servers = server_list("127.0.0.1:4730", tls=True)
    worker = load_worker("tls_loading:make", servers, "option", context)
    assert worker.ssl_context is context
    assert worker.addresses == ["tls://127.0.0.1:4730"]
    with pytest.raises(UsageError, match="takes no 'ssl_context' parameter"):
        load_worker("tls_loading:make_plain", servers, "option", context)
    with pytest.raises(UsageError, match="made with its own TLS settings"):
        load_worker("tls_loading:fixed", servers, "default", context)
    # tls:// servers need no option: the factory gets them as they are.
    plain = load_worker("tls_loading:make_plain", ["tls://127.0.0.1:4730"], "option")
    assert plain.addresses == ["tls://127.0.0.1:4730"]
