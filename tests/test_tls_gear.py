"""Interop over TLS: gear (Zuul's Gearman library) as client and worker of ``trio-gearmand --ssl``.

gear does TLS only with client certificates (its ``addServer(ssl_key, ssl_cert,
ssl_ca)``), TLS 1.2, as Zuul deploys it; so the server here requires them (mTLS).
gear runs in a child process (tests/gear_tls_peer.py).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import anyio
import pytest
import trustme

from .test_cli_server import expect_exit, trio_gearmand

PEER = Path(__file__).with_name("gear_tls_peer.py")


@pytest.fixture(scope="module")
def gear_installed() -> None:
    if importlib.util.find_spec("gear") is None:
        message = "gear is not installed (pip install 'trio-gearman[test]')"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def write_pems(ca: trustme.CA, leaf: trustme.LeafCert, directory: Path, name: str) -> list[str]:
    """``key, cert, ca`` file names of ``leaf`` (issued by ``ca``... or not)."""
    key, cert, ca_file = (directory / f"{name}.{ext}" for ext in ("key", "pem", "ca.pem"))
    leaf.private_key_pem.write_to_path(key)
    leaf.cert_chain_pems[0].write_to_path(cert)
    ca.cert_pem.write_to_path(ca_file)
    return [str(key), str(cert), str(ca_file)]


def server_args(ca: trustme.CA, directory: Path) -> list[str]:
    key, cert, ca_file = write_pems(ca, ca.issue_cert("127.0.0.1", "localhost"), directory, "srv")
    return [
        "-L", "127.0.0.1", "-p", "0", "--job-handle-prefix", "H:tls",
        "--ssl", "--ssl-certificate", cert, "--ssl-key", key, "--ssl-ca-file", ca_file,
    ]  # fmt: skip


async def run_gear(
    port: int, pems: list[str], jobs: int, connect_timeout: float = 10
) -> tuple[int, list[str]]:
    with anyio.fail_after(30):
        command = [sys.executable, str(PEER), str(port), *pems, str(jobs), str(connect_timeout)]
        result = await anyio.run_process(command, check=False)
    return result.returncode, result.stdout.decode().splitlines()


@pytest.mark.usefixtures("gear_installed")
async def test_gear_client_and_worker_run_jobs_over_mutual_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    async with trio_gearmand(server_args(ca, tmp_path)) as server:
        pems = write_pems(ca, ca.issue_cert("zuul-executor.example"), tmp_path, "gear")
        code, lines = await run_gear(server.port, pems, 20)
        assert code == 0, lines
        assert lines[-1] == "done"
        results = dict(line.split("\t") for line in lines[:-1])
        assert len(results) == 20  # 20 distinct handles
        assert all(handle.startswith("H:tls:") for handle in results)
        assert sorted(results.values()) == sorted(f"job {n}"[::-1] for n in range(20))
        server.process.terminate()
        await expect_exit(server)


@pytest.mark.usefixtures("gear_installed")
async def test_gear_with_a_certificate_of_another_ca_is_refused(tmp_path: Path) -> None:
    ca, other = trustme.CA(), trustme.CA()
    async with trio_gearmand(server_args(ca, tmp_path)) as server:
        # gear trusts our server (ca), but its own certificate is signed by another CA
        key, cert, _ = write_pems(other, other.issue_cert("intruder.example"), tmp_path, "bad")
        ca.cert_pem.write_to_path(tmp_path / "trust.pem")
        code, lines = await run_gear(server.port, [key, cert, str(tmp_path / "trust.pem")], 1, 2)
        assert (code, lines) == (1, ["no server"])
        line = await server.wait_for_line(b"certificate")
        assert b"127.0.0.1" in line
        server.process.terminate()
        await expect_exit(server)
