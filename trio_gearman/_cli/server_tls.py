"""``trio-gearmand``'s TLS options (gearmand's names) and the SSL context they make.

``--ssl`` makes every connection on the server's ports TLS (there is no
plaintext fallback, as in gearmand). ``--ssl-certificate`` and ``--ssl-key``
are then required; with ``--ssl-ca-file`` clients must also present a
certificate signed by that CA (mutual TLS), which gearmand never checks.
TLS 1.2 is the oldest version accepted.

The other ``--ssl-*`` options without ``--ssl`` are a usage error, not
ignored: a server meant to be TLS must never come up plaintext because one
option was forgotten. Like gearmand, the certificate, key and CA paths may
come from ``GEARMAND_SERVER_PEM``, ``GEARMAND_SERVER_KEY`` and
``GEARMAND_CA_CERTIFICATE`` when ``--ssl`` is given; the command line wins.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Mapping
from typing import Final

from .._server.tls import DEFAULT_HANDSHAKE_TIMEOUT
from .options import UsageError, seconds

__all__ = ["add_tls_options", "check_tls_options", "tls_context"]

_FILES: Final = (
    ("ssl_certificate", "--ssl-certificate", "GEARMAND_SERVER_PEM"),
    ("ssl_key", "--ssl-key", "GEARMAND_SERVER_KEY"),
    ("ssl_ca_file", "--ssl-ca-file", "GEARMAND_CA_CERTIFICATE"),
)


def add_tls_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--ssl``, ``--ssl-certificate``, ``--ssl-key``, ``--ssl-ca-file`` and the timeout."""
    group = parser.add_argument_group("TLS")
    add = group.add_argument
    add(
        "--ssl",
        action="store_true",
        help="serve every connection through TLS (1.2 or newer); needs "
        "--ssl-certificate and --ssl-key. Plaintext clients are turned away",
    )
    add(
        "--ssl-certificate",
        metavar="FILE",
        help="with --ssl: the server's certificate (PEM, the chain after it; "
        "default $GEARMAND_SERVER_PEM)",
    )
    add(
        "--ssl-key",
        metavar="FILE",
        help="with --ssl: the certificate's private key (PEM, unencrypted; "
        "default $GEARMAND_SERVER_KEY)",
    )
    add(
        "--ssl-ca-file",
        metavar="FILE",
        help="with --ssl: require client certificates signed by a CA in FILE (PEM) "
        "and refuse other clients (default $GEARMAND_CA_CERTIFICATE; "
        "without one, client certificates are not asked for)",
    )
    add(
        "--ssl-handshake-timeout",
        type=seconds(zero=False),
        metavar="SECONDS",
        help=f"with --ssl: seconds a client has to finish the TLS handshake "
        f"(default {DEFAULT_HANDSHAKE_TIMEOUT:g})",
    )


def check_tls_options(options: argparse.Namespace, environ: Mapping[str, str]) -> None:
    """Check the TLS options together; fill in the paths from the environment.

    Raises:
        UsageError: an ``--ssl-*`` option without ``--ssl``, or ``--ssl`` without
            a certificate or key.
    """
    if not options.ssl:
        given = [name for attr, name, _ in _FILES if getattr(options, attr)]
        if options.ssl_handshake_timeout is not None:
            given.append("--ssl-handshake-timeout")
        if given:
            raise UsageError(f"{' and '.join(given)} need --ssl (TLS is off without it)")
        return
    for attr, _, variable in _FILES:
        if not getattr(options, attr):
            setattr(options, attr, environ.get(variable) or None)
    missing = [name for attr, name, _ in _FILES[:2] if not getattr(options, attr)]
    if missing:
        raise UsageError(f"--ssl needs {' and '.join(missing)} FILE")
    if options.ssl_handshake_timeout is None:
        options.ssl_handshake_timeout = DEFAULT_HANDSHAKE_TIMEOUT


def _read(name: str, path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise UsageError(f"{name} {path}: cannot read it: {exc.strerror or exc}") from None


def _no_password() -> bytes:
    raise ValueError("the key is encrypted")


def _chain_problem(certificate: str, key: str) -> str:
    """Say what is wrong with a certificate and key that OpenSSL would not load."""
    cert_text = _read("--ssl-certificate", certificate)
    key_text = _read("--ssl-key", key)
    if b"-----BEGIN CERTIFICATE-----" not in cert_text:
        return f"--ssl-certificate {certificate}: no PEM certificate in it"
    if b"PRIVATE KEY-----" not in key_text:
        return f"--ssl-key {key}: no PEM private key in it"
    if b"ENCRYPTED" in key_text:
        return f"--ssl-key {key}: the key is encrypted; give it unencrypted (mode 0600)"
    return f"--ssl-key {key} does not belong to --ssl-certificate {certificate}"


def tls_context(options: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's SSL context that the options ask for, or ``None`` without ``--ssl``.

    Raises:
        UsageError: a file cannot be read or holds no usable certificate or key.
    """
    if not options.ssl:
        return None
    for attr, name, _ in _FILES:
        path = getattr(options, attr)
        if path:
            _read(name, path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(options.ssl_certificate, options.ssl_key, password=_no_password)
    except (ssl.SSLError, ValueError):
        raise UsageError(_chain_problem(options.ssl_certificate, options.ssl_key)) from None
    if options.ssl_ca_file:
        try:
            context.load_verify_locations(cafile=options.ssl_ca_file)
        except ssl.SSLError as exc:
            raise UsageError(
                f"--ssl-ca-file {options.ssl_ca_file}: no PEM CA certificate in it "
                f"({exc.reason or exc})"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context
