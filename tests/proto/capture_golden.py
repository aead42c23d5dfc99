"""Capture real gearmand 1.1.20 packets for the golden tests (run by hand, not a test).

It starts gearmand on a free loopback port (``--job-handle-prefix=H:golden``, so
the handles do not depend on the host name), plays a fixed conversation with raw
sockets (a client, a worker, a client with the ``exceptions`` option) and prints a
Python module holding every packet gearmand sent back, byte for byte. The
requests are built here with :mod:`struct`, not with the codec under test.

Usage, from the repository root::

    python -m tests.proto.capture_golden > tests/proto/golden_packets.py
    ruff format tests/proto/golden_packets.py
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from trio_gearman._proto import PacketType

from ..gearmand_peer import GearmandProcess, require_tool, run_gearmand

HEADER: Final = struct.Struct(">4sII")
REQ: Final = b"\0REQ"
RES: Final = b"\0RES"
PREFIX: Final = "H:golden"


class Peer:
    """One raw-socket connection to gearmand."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=5)

    def send(self, ptype: PacketType, *args: bytes, magic: bytes = REQ) -> None:
        """Send one packet whose body is ``args`` joined by NUL bytes."""
        body = b"\0".join(args)
        self.sock.sendall(HEADER.pack(magic, ptype, len(body)) + body)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError(f"gearmand closed the connection after {data!r}")
            data += chunk
        return data

    def recv(self, expected: PacketType) -> bytes:
        """Receive one whole packet (header and body) and check its type."""
        header = self._exactly(HEADER.size)
        magic, ptype, size = HEADER.unpack(header)
        packet = header + self._exactly(size)
        if magic != RES or ptype != expected:
            raise AssertionError(f"expected {expected.name}, got {packet!r}")
        return packet

    def barrier(self) -> None:
        """Wait until gearmand has handled everything sent so far on this connection."""
        self.send(PacketType.ECHO_REQ, b"barrier")
        self.recv(PacketType.ECHO_RES)

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


def capture(host: str, port: int) -> dict[str, bytes]:
    """Play the conversation against gearmand at ``host:port``; return the replies."""
    out: dict[str, bytes] = {}
    client = Peer(host, port)
    worker = Peer(host, port)
    options = Peer(host, port)
    exc_client = Peer(host, port)
    P = PacketType

    # Echo and options.
    client.send(P.ECHO_REQ, b"ping\0pong")
    out["echo_res"] = client.recv(P.ECHO_RES)
    client.send(P.ECHO_REQ, b"")
    out["echo_res_empty"] = client.recv(P.ECHO_RES)
    options.send(P.OPTION_REQ, b"exceptions")
    out["option_res"] = options.recv(P.OPTION_RES)
    options.send(P.OPTION_REQ, b"EXCEPTIONS")
    out["option_res_upper"] = options.recv(P.OPTION_RES)
    options.send(P.OPTION_REQ, b"bogus")
    out["error_unknown_option"] = options.recv(P.ERROR)

    # Requests gearmand refuses but answers.
    client.send(P.ECHO_REQ, b"x", magic=RES)
    out["error_invalid_magic"] = client.recv(P.ERROR)
    client.send(P.NOOP)
    out["error_invalid_command"] = client.recv(P.ERROR)
    worker.send(P.WORK_COMPLETE, b"H:golden:999", b"result")
    out["error_job_not_found_result"] = worker.recv(P.ERROR)
    worker.send(P.WORK_DATA, b"H:golden:999", b"chunk")
    out["error_job_not_found_data"] = worker.recv(P.ERROR)
    worker.send(P.WORK_EXCEPTION, b"H:golden:999", b"boom")
    out["error_job_not_found_exception"] = worker.recv(P.ERROR)

    # Status of jobs that do not exist.
    client.send(P.GET_STATUS, b"H:golden:999")
    out["status_res_unknown"] = client.recv(P.STATUS_RES)
    client.send(P.GET_STATUS_UNIQUE, b"nope")
    out["status_res_unique_unknown"] = client.recv(P.STATUS_RES_UNIQUE)

    # A sleeping worker is woken by a background submission.
    worker.send(P.CAN_DO, b"reverse")
    worker.send(P.GRAB_JOB)
    out["no_job"] = worker.recv(P.NO_JOB)
    worker.send(P.PRE_SLEEP)
    worker.barrier()
    client.send(P.SUBMIT_JOB_BG, b"reverse", b"u-bg", b"queued")
    out["job_created"] = client.recv(P.JOB_CREATED)  # H:golden:1
    out["noop"] = worker.recv(P.NOOP)
    client.send(P.GET_STATUS, f"{PREFIX}:1".encode())
    out["status_res_queued"] = client.recv(P.STATUS_RES)
    client.send(P.GET_STATUS_UNIQUE, b"u-bg")
    out["status_res_unique_queued"] = client.recv(P.STATUS_RES_UNIQUE)

    # Running, with progress 7/9.
    worker.send(P.GRAB_JOB)
    out["job_assign"] = worker.recv(P.JOB_ASSIGN)
    worker.send(P.WORK_STATUS, f"{PREFIX}:1".encode(), b"7", b"9")
    worker.barrier()
    client.send(P.GET_STATUS, f"{PREFIX}:1".encode())
    out["status_res_running"] = client.recv(P.STATUS_RES)
    client.send(P.GET_STATUS_UNIQUE, b"u-bg")
    out["status_res_unique_running"] = client.recv(P.STATUS_RES_UNIQUE)
    worker.send(P.WORK_COMPLETE, f"{PREFIX}:1".encode(), b"")
    worker.barrier()

    # A foreground job with every kind of update forwarded to its client.
    client.send(P.SUBMIT_JOB, b"reverse", b"u-fg", b"hello")
    client.recv(P.JOB_CREATED)  # H:golden:2
    client.send(P.GET_STATUS_UNIQUE, b"u-fg")
    out["status_res_unique_waiting_client"] = client.recv(P.STATUS_RES_UNIQUE)
    worker.send(P.GRAB_JOB_UNIQ)
    out["job_assign_uniq"] = worker.recv(P.JOB_ASSIGN_UNIQ)
    handle = f"{PREFIX}:2".encode()
    worker.send(P.WORK_DATA, handle, b"chunk\0with nul")
    out["work_data"] = client.recv(P.WORK_DATA)
    worker.send(P.WORK_WARNING, handle, b"careful")
    out["work_warning"] = client.recv(P.WORK_WARNING)
    worker.send(P.WORK_STATUS, handle, b"7", b"9")
    out["work_status"] = client.recv(P.WORK_STATUS)
    worker.send(P.WORK_COMPLETE, handle, b"olleh")
    out["work_complete"] = client.recv(P.WORK_COMPLETE)

    # WORK_FAIL; an empty unique and empty data give JOB_ASSIGN with both NULs.
    client.send(P.SUBMIT_JOB, b"reverse", b"", b"")
    client.recv(P.JOB_CREATED)  # H:golden:3
    worker.send(P.GRAB_JOB)
    out["job_assign_empty_data"] = worker.recv(P.JOB_ASSIGN)
    worker.send(P.WORK_FAIL, f"{PREFIX}:3".encode())
    out["work_fail"] = client.recv(P.WORK_FAIL)

    # WORK_EXCEPTION to a client without the exceptions option.
    client.send(P.SUBMIT_JOB, b"reverse", b"", b"x")
    client.recv(P.JOB_CREATED)  # H:golden:4
    worker.send(P.GRAB_JOB)
    worker.recv(P.JOB_ASSIGN)
    worker.send(P.WORK_EXCEPTION, f"{PREFIX}:4".encode(), b"boom")
    out["work_fail_from_exception"] = client.recv(P.WORK_FAIL)

    # WORK_EXCEPTION to a client with the exceptions option.
    exc_client.send(P.OPTION_REQ, b"exceptions")
    exc_client.recv(P.OPTION_RES)
    exc_client.send(P.SUBMIT_JOB, b"reverse", b"", b"x")
    exc_client.recv(P.JOB_CREATED)  # H:golden:5
    worker.send(P.GRAB_JOB)
    worker.recv(P.JOB_ASSIGN)
    worker.send(P.WORK_EXCEPTION, f"{PREFIX}:5".encode(), b"boom")
    out["work_exception"] = exc_client.recv(P.WORK_EXCEPTION)

    # A worker's WORK_FAIL with a trailing NUL is forwarded as it came.
    client.send(P.SUBMIT_JOB, b"reverse", b"", b"x")
    client.recv(P.JOB_CREATED)  # H:golden:6
    worker.send(P.GRAB_JOB)
    worker.recv(P.JOB_ASSIGN)
    worker.send(P.WORK_FAIL, f"{PREFIX}:6\0".encode())
    out["work_fail_worker_nul"] = client.recv(P.WORK_FAIL)

    # A reducer job: GRAB_JOB_ALL gets JOB_ASSIGN_ALL.
    client.send(P.SUBMIT_REDUCE_JOB, b"reverse", b"u-red", b"count", b"", b"map me")
    client.recv(P.JOB_CREATED)  # H:golden:7
    worker.send(P.GRAB_JOB_ALL)
    out["job_assign_all"] = worker.recv(P.JOB_ASSIGN_ALL)
    worker.send(P.WORK_COMPLETE, f"{PREFIX}:7".encode(), b"")
    client.recv(P.WORK_COMPLETE)

    # Without a reducer, GRAB_JOB_ALL gets JOB_ASSIGN_UNIQ.
    client.send(P.SUBMIT_JOB, b"reverse", b"u-plain", b"data")
    client.recv(P.JOB_CREATED)  # H:golden:8
    worker.send(P.GRAB_JOB_ALL)
    out["job_assign_uniq_from_grab_all"] = worker.recv(P.JOB_ASSIGN_UNIQ)
    worker.send(P.WORK_COMPLETE, f"{PREFIX}:8".encode(), b"")
    client.recv(P.WORK_COMPLETE)

    for peer in (client, worker, options, exc_client):
        peer.close()
    return out


@contextmanager
def golden_gearmand() -> Iterator[GearmandProcess]:
    """gearmand on a free loopback port with the handle prefix the captures use."""
    with run_gearmand([f"--job-handle-prefix={PREFIX}"]) as server:
        yield server
    # run_gearmand leaves its log pipe open; close it so no ResourceWarning follows.
    if server.process.stderr is not None:
        server.process.stderr.close()


def _literal(packet: bytes) -> str:
    """A bytes literal split into pieces short enough for the line length."""
    pieces = [repr(packet[:12])]
    body = packet[12:]
    while body:
        pieces.append(repr(body[:40]))
        body = body[40:]
    return "(" + " ".join(pieces) + ")" if len(pieces) > 1 else pieces[0]


def render(captured: dict[str, bytes], version: str) -> str:
    """The source of ``golden_packets.py``."""
    lines = [
        f'"""Packets sent by {version}, captured byte for byte.',
        "",
        "Made by ``python -m tests.proto.capture_golden`` (gearmand started on 127.0.0.1",
        "with ``--job-handle-prefix=H:golden``, spoken to with raw sockets). Do not edit by",
        "hand: capture again.",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "from typing import Final",
        "",
        "GOLDEN: Final[dict[str, bytes]] = {",
    ]
    lines += [f"    {name!r}: {_literal(packet)}," for name, packet in captured.items()]
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Capture and print the module."""
    with golden_gearmand() as server:
        version = subprocess.run(
            [require_tool("gearmand"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split(" - ")[0]
        captured = capture(server.host, server.port)
    sys.stdout.write(render(captured, version.strip()))


if __name__ == "__main__":
    main()
