"""Admin text replies of gearmand 1.1.20+ds, captured byte for byte.

How they were captured: ``python -m tests.proto.admin_golden`` starts gearmand on a
free loopback port (``--job-handle-prefix=JH --verbose=INFO --threads=1``), sets up a
fixed scene with raw sockets and prints the dictionaries below (paste them back and
run ``ruff format``). The scene, in order:

1. connection "worker A": SET_CLIENT_ID ``worker-A``, CAN_DO ``resize``, CAN_DO ``thumb``;
2. connection "worker B": CAN_DO ``email`` (no id, so ``-``);
3. connection "worker C": SET_CLIENT_ID ``id with : spaces``, CAN_DO ``a:b``;
4. connection "worker D": SET_CLIENT_ID with an empty id, CAN_DO with an empty name;
5. connection "client": SUBMIT_JOB_BG resize ``img-1``; SUBMIT_JOB_BG resize without a
   unique; SUBMIT_JOB_HIGH_BG thumb ``img-2``; SUBMIT_JOB_LOW_BG resize without a
   unique; SUBMIT_JOB (foreground) ``newfn`` ``m-1`` (handles JH:1 to JH:5);
6. worker A sends GRAB_JOB and gets JH:3 (thumb: the last CAN_DO is served first);
7. an admin connection sends the commands of :data:`SCENE_LINES`, in order, then each line
   of :data:`ERROR_LINES` on a connection of its own.

Every packet-sending step waits for an ECHO_RES on the same connection, so gearmand
has handled it before the admin commands run. Every line is sent with ``\\r\\n``
(gearmand strips one ``\\r``), so the keys are the lines as the decoder hands them on.
The file descriptors in ``workers`` and the pid are those of that run.
"""

from __future__ import annotations

from typing import Final

SCENE: Final[dict[str, bytes]] = {
    "status": (
        b"\t0\t0\t1\n"
        b"newfn\t1\t0\t0\n"
        b"email\t0\t0\t1\n"
        b"thumb\t1\t1\t1\n"
        b"a:b\t0\t0\t1\n"
        b"resize\t3\t0\t1\n"
        b".\n"
    ),
    "prioritystatus": (
        b"\t0\t0\t0\t1\n"
        b"newfn\t0\t1\t0\t0\n"
        b"email\t0\t0\t0\t1\n"
        b"thumb\t0\t0\t0\t1\n"
        b"a:b\t0\t0\t0\t1\n"
        b"resize\t0\t2\t1\t1\n"
        b".\n"
    ),
    "workers": (
        b"23 127.0.0.1 - :\n"
        b"20 127.0.0.1 id with : spaces : a:b\n"
        b"21 127.0.0.1  : \n"
        b"22 127.0.0.1 - :\n"
        b"18 127.0.0.1 worker-A : thumb resize\n"
        b"19 127.0.0.1 - : email\n"
        b".\n"
    ),
    "show_jobs": (
        b"JH:5\t0\t0\t0\nJH:4\t0\t0\t1\nJH:1\t0\t0\t1\nJH:2\t0\t0\t1\nJH:3\t0\t0\t1\n.\n"
    ),
    "show_unique_jobs": b"\n\nimg-1\nimg-2\nm-1\n.\n",
    "cancel_ok": b"OK\r\n",
    "cancel_unknown": b"ERR UNKNOWN_JOB\r\n",
    "show_jobs_after_cancel": (
        b"JH:5\t0\t1\t0\nJH:4\t0\t0\t1\nJH:1\t0\t0\t1\nJH:2\t0\t0\t1\nJH:3\t0\t0\t1\n.\n"
    ),
    "show_jobs_trailing_space": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    "show_jobs_upper": (
        b"JH:5\t0\t1\t0\nJH:4\t0\t0\t1\nJH:1\t0\t0\t1\nJH:2\t0\t0\t1\nJH:3\t0\t0\t1\n.\n"
    ),
    "drop_busy": (b"ERR there are still connected workers or executing clients\r\n"),
    "drop_not_found": b"ERR function not found\r\n",
    "create": b"OK\r\n",
    "status_after_create": (
        b"\t0\t0\t1\n"
        b"newfn\t1\t0\t0\n"
        b"email\t0\t0\t1\n"
        b"thumb\t1\t1\t1\n"
        b"a:b\t0\t0\t1\n"
        b"made\t0\t0\t0\n"
        b"resize\t3\t0\t1\n"
        b".\n"
    ),
    "drop_ok": b"OK\r\n",
    "maxqueue": b"OK\r\n",
    "maxqueue_unknown_function": b"OK\r\n",
    "version": b"OK 1.1.20+ds\n",
    "getpid": b"OK 14689\n",
    "verbose": b"OK INFO\n",
}
"""Name (see :data:`SCENE_LINES`) -> gearmand's reply."""

ERROR_LINES: Final[dict[bytes, bytes]] = {
    b"": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b" ": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b"  status  ": b"ERR UNKNOWN_COMMAND Unknown+server+command\r\n",
    b"foo": b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo\r\n",
    b"FOO bar": b"ERR UNKNOWN_COMMAND Unknown+server+commandFOO\r\n",
    b"foo+bar": b"ERR UNKNOWN_COMMAND Unknown+server+commandfoo+bar\r\n",
    b"\tstatus": b"ERR UNKNOWN_COMMAND Unknown+server+command\tstatus\r\n",
    b"status\r": b"ERR UNKNOWN_COMMAND Unknown+server+commandstatus\r\r\n",
    b"a\x00b": b"ERR UNKNOWN_COMMAND Unknown+server+commanda\r\n",
    b"show": b"ERR UNKNOWN_COMMAND Unknown+server+commandshow\r\n",
    b"show foo": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show jobs x": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show unique": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"show unique jobs x": b"ERR UNKNOWN_SHOW_ARGUMENTS\r\n",
    b"cancel": b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n",
    b"cancel job": b"ERR UNKNOWN_COMMAND Unknown+server+commandcancel\r\n",
    b"cancel foo bar": b"ERR UNKNOWN_ERROR\r\n",
    b"cancel job JH:99 x": b"ERR UNKNOWN_ERROR\r\n",
    b"create": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"
    ),
    b"create function": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"
    ),
    b"create foo bar": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"
    ),
    b"create function a b": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+create\r\n"
    ),
    b"drop": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n"
    ),
    b"Drop function": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+Drop\r\n"
    ),
    b"drop foo bar": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+of+arguments+was+sent+to+this+command+drop\r\n"
    ),
    b"maxqueue": (
        b"ERR INVALID_ARGUMENTS An+incomplete+set+"
        b"of+arguments+was+sent+to+this+command+ma"
        b"xqueue\r\n"
    ),
    b"shutdown": b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n",
    b"shutdown graceful": b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n",
    b"shutdown now": b"ERR UNKNOWN_COMMAND Unknown+server+commandshutdown\r\n",
    b"SHUTDOWN": b"ERR UNKNOWN_COMMAND Unknown+server+commandSHUTDOWN\r\n",
    b"a b c d e f": b"",
    b"status a b c d ": b"",
    b" status a b c d": b"",
}
"""Admin line -> gearmand's reply on a fresh connection; ``b""`` means it closed it."""

GETPID: Final = 14689
"""The pid of the captured gearmand (its ``getpid`` reply is in :data:`SCENE`)."""


# --- the capture (run by hand: python -m tests.proto.admin_golden) -------------------

SCENE_LINES: Final[dict[str, bytes]] = {
    "status": b"status",
    "prioritystatus": b"prioritystatus",
    "workers": b"workers",
    "show_jobs": b"show jobs",
    "show_unique_jobs": b"show unique jobs",
    "cancel_ok": b"cancel job JH:5",
    "cancel_unknown": b"cancel job JH:99",
    "show_jobs_after_cancel": b"show jobs",
    "show_jobs_trailing_space": b"show jobs ",
    "show_jobs_upper": b"SHOW  JOBS",
    "drop_busy": b"drop function resize",
    "drop_not_found": b"drop function nosuch",
    "create": b"create function made",
    "status_after_create": b"status",
    "drop_ok": b"drop function MADE",
    "maxqueue": b"maxqueue resize 10",
    "maxqueue_unknown_function": b"maxqueue nosuch 1 2 3",
    "version": b"version",
    "getpid": b"getpid",
    "verbose": b"verbose",
}
"""The admin connection's commands, by name, in the order sent."""

CAPTURED_ERROR_LINES: Final = (
    b"",
    b" ",
    b"  status  ",
    b"foo",
    b"FOO bar",
    b"foo+bar",
    b"\tstatus",
    b"status\r",
    b"a\0b",
    b"show",
    b"show foo",
    b"show jobs x",
    b"show unique",
    b"show unique jobs x",
    b"cancel",
    b"cancel job",
    b"cancel foo bar",
    b"cancel job JH:99 x",
    b"create",
    b"create function",
    b"create foo bar",
    b"create function a b",
    b"drop",
    b"Drop function",
    b"drop foo bar",
    b"maxqueue",
    b"shutdown",
    b"shutdown graceful",
    b"shutdown now",
    b"SHUTDOWN",
    b"a b c d e f",
    b"status a b c d ",
    b" status a b c d",
)


def _capture() -> tuple[dict[str, bytes], dict[bytes, bytes], int]:
    import socket
    import struct

    from ..gearmand_peer import run_gearmand

    header = struct.Struct(">4sII")

    def packet(ptype: int, *args: bytes) -> bytes:
        body = b"\0".join(args)
        return header.pack(b"\0REQ", ptype, len(body)) + body

    def read_until(sock: socket.socket, done: bytes | None) -> bytes:
        data = b""
        while done is None or not data.endswith(done):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data

    def sync(sock: socket.socket, *packets: bytes) -> bytes:
        sock.sendall(b"".join(packets) + packet(16, b"sync"))
        return read_until(sock, b"sync")

    def ask(sock: socket.socket, line: bytes) -> bytes:
        sock.sendall(line + b"\r\n")
        data = read_until(sock, b"\n")
        if not data.startswith((b"OK", b"ERR")):
            while not (data == b".\n" or data.endswith(b"\n.\n")):
                data += read_until(sock, b"\n")
        return data

    with run_gearmand(["--job-handle-prefix=JH"]) as server:

        def connect() -> socket.socket:
            return socket.create_connection((server.host, server.port), timeout=5)

        worker_a, worker_b, worker_c, worker_d, client = (connect() for _ in range(5))
        sync(worker_a, packet(22, b"worker-A"), packet(1, b"resize"), packet(1, b"thumb"))
        sync(worker_b, packet(1, b"email"))
        sync(worker_c, packet(22, b"id with : spaces"), packet(1, b"a:b"))
        sync(worker_d, packet(22, b""), packet(1, b""))
        created = sync(
            client,
            packet(18, b"resize", b"img-1", b"x"),
            packet(18, b"resize", b"", b"x"),
            packet(32, b"thumb", b"img-2", b"x"),
            packet(34, b"resize", b"", b"y"),
            packet(7, b"newfn", b"m-1", b"z"),
        )
        assert created.count(b"JH:") == 5, created
        assert b"JH:3\0thumb" in sync(worker_a, packet(9))
        admin = connect()
        scene = {name: ask(admin, line) for name, line in SCENE_LINES.items()}
        errors = {}
        for line in CAPTURED_ERROR_LINES:
            with connect() as sock:
                sock.sendall(line + b"\r\n")
                errors[line] = read_until(sock, b"\n")
        return scene, errors, server.process.pid


def _literal(value: bytes, indent: str = "        ") -> str:
    """``value`` as a Python literal, split after each newline and into short pieces."""
    if len(repr(value)) <= 60:
        return repr(value)
    pieces: list[bytes] = []
    for line in value.splitlines(keepends=True):
        pieces.extend(line[i : i + 40] for i in range(0, len(line), 40))
    return "(\n" + "".join(f"{indent}{piece!r}\n" for piece in pieces) + indent[:-4] + ")"


def main() -> None:
    """Capture the replies and print them as Python literals."""
    scene, errors, pid = _capture()
    print("SCENE: Final[dict[str, bytes]] = {")
    for name, reply in scene.items():
        print(f"    {name!r}: {_literal(reply)},")
    print("}")
    print("ERROR_LINES: Final[dict[bytes, bytes]] = {")
    for line, reply in errors.items():
        print(f"    {line!r}: {_literal(reply)},")
    print("}")
    print(f"GETPID: Final = {pid}")


if __name__ == "__main__":
    main()
