"""TLS in front of a job server, the way operators deploy it with gearmand: stunnel.

gearmand 1.1.20 as Debian builds it has no TLS of its own; TLS clients reach it
through stunnel (Debian's ``stunnel4``) in server mode, which ends TLS on one
loopback port and forwards the plaintext to gearmand's. The certificates are real
ones from a throw-away CA (trustme). Where stunnel is missing the test is
skipped, except under CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import trustme

from .gearmand_peer import free_port, require_tool, run_until_listening


@attrs.frozen
class Certificates:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate.

    Attributes:
        ca: the CA that signed both certificates.
        ca_file: its certificate (PEM), what clients and stunnel trust.
        server_file: the server's key and certificate chain (PEM), for stunnel.
        client_file: the client's key and certificate chain (PEM), for mutual TLS.
        client_key_file: the client's key alone (PEM).
        client_cert_file: the client's certificate chain alone (PEM).
    """

    ca: trustme.CA
    ca_file: Path
    server_file: Path
    client_file: Path
    client_key_file: Path
    client_cert_file: Path

    def client_context(self, *, certificate: bool = False) -> ssl.SSLContext:
        """A verifying client context trusting ``ca``; with the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if certificate:
            context.load_cert_chain(str(self.client_file))
        return context


def make_certificates(
    directory: Path, server_names: Sequence[str] = ("127.0.0.1", "localhost")
) -> Certificates:
    """Issue a CA, a server certificate for ``server_names`` and a client certificate."""
    ca = trustme.CA()
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server_file = directory / "server.pem"
    ca.issue_cert(*server_names).private_key_and_cert_chain_pem.write_to_path(str(server_file))
    client = ca.issue_cert("worker-1@example.com")
    client_file = directory / "client.pem"
    client.private_key_and_cert_chain_pem.write_to_path(str(client_file))
    client_key_file = directory / "client.key"
    client.private_key_pem.write_to_path(str(client_key_file))
    client_cert_file = directory / "client.crt"
    for index, pem in enumerate(client.cert_chain_pems):
        pem.write_to_path(str(client_cert_file), append=index > 0)
    for path in (server_file, client_file, client_key_file):
        path.chmod(0o600)
    return Certificates(ca, ca_file, server_file, client_file, client_key_file, client_cert_file)


@attrs.frozen
class StunnelProcess:
    """A running stunnel: the TLS port it accepts on, forwarding to ``target``."""

    port: int
    target: str

    @property
    def address(self) -> str:
        """``tls://127.0.0.1:port``, as our clients take it."""
        return f"tls://127.0.0.1:{self.port}"

    @property
    def plain_address(self) -> str:
        """``127.0.0.1:port``, for clients given TLS by an option."""
        return f"127.0.0.1:{self.port}"


@contextmanager
def run_stunnel(
    target: str, certificates: Certificates, *, client_ca: Path | None = None
) -> Iterator[StunnelProcess]:
    """Run stunnel in server mode, TLS on a free loopback port forwarded to ``target``.

    Args:
        target: ``host:port`` of the plaintext server (gearmand).
        certificates: the server certificate stunnel presents.
        client_ca: require a client certificate signed by this CA (``verify = 2``):
            mutual TLS.
    """
    binary = require_tool("stunnel", "stunnel4")
    port = free_port()
    lines = [
        "foreground = yes",
        "pid =",
        "debug = info",
        "[gearman]",
        f"accept = 127.0.0.1:{port}",
        f"connect = {target}",
        f"cert = {certificates.server_file}",
    ]
    if client_ca is not None:
        lines += ["verify = 2", f"CAfile = {client_ca}"]
    with tempfile.TemporaryDirectory(prefix="stunnel-") as directory:
        config = Path(directory) / "stunnel.conf"
        config.write_text("\n".join(lines) + "\n")
        with run_until_listening(
            [binary, str(config)], "stunnel", r"Service \[gearman\] \(FD=\d+\) bound to"
        ):
            yield StunnelProcess(port, target)
