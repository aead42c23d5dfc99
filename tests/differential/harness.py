"""Play one scripted packet conversation against a job server; record what came back.

A scenario is a list of steps over named connections. ``Send`` writes a packet (or an
admin text line, or raw bytes); ``Sync`` is a barrier: on each named connection it sends
``ECHO_REQ`` with a fresh token and reads until the matching ``ECHO_RES``, recording
every packet that arrived before it. Since a server processes one connection's requests
in order and queues its replies in order, the barrier makes the transcript exact without
any sleeping. Syncing the sender first, then the receivers, also orders effects that
cross connections (a worker's WORK_COMPLETE forwarded to a client).

Transcripts are normalised before comparison: job handles are replaced by ``H1``,
``H2``, ... in order of first appearance, so servers with different handle schemes
compare equal.
"""

from __future__ import annotations

import itertools
import re
import socket
from collections.abc import Iterable, Sequence

import attrs

from trio_gearman._proto import (
    Decoder,
    EchoReq,
    EchoRes,
    Event,
    JobCreated,
    Magic,
    Message,
    TextLine,
    encode,
)

TIMEOUT = 10.0


@attrs.frozen
class Send:
    """Write ``what`` on connection ``conn``: a packet, an admin line, or raw bytes."""

    conn: str
    what: Message | str | bytes


@attrs.frozen
class Sync:
    """Barrier on each connection in order; record what each received meanwhile."""

    conns: tuple[str, ...]


@attrs.frozen
class Close:
    """Close connection ``conn`` (the server sees a disconnect)."""

    conn: str


@attrs.frozen
class ExpectClosed:
    """The server closes ``conn``: record what it sent first, then EOF."""

    conn: str


@attrs.frozen
class Recv:
    """Wait for ``count`` events on ``conn`` and record them.

    The way to order an effect that has no request of its own on that connection,
    such as the NOOP a sleeping worker gets when a disconnect requeues a job.
    """

    conn: str
    count: int = 1


Step = Send | Sync | Recv | Close | ExpectClosed

CLOSED = "<connection closed by the server>"
"""Recorded in a transcript where the server closed the connection."""

REF = b"@"
"""A handle written as ``b"@N"`` in a step means the N-th JOB_CREATED handle (1-based)."""


def sync(*conns: str) -> Sync:
    """A barrier over ``conns``, in that order."""
    return Sync(conns)


Transcript = list[tuple[str, tuple[object, ...]]]


class _Peer:
    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder(expect=Magic.RES, allow_text=True)
        self.pending: list[Event] = []

    def send(self, what: Message | str | bytes) -> None:
        if isinstance(what, str):
            data = what.encode()
        elif isinstance(what, bytes):
            data = what
        else:
            data = encode(what)
        self.sock.sendall(data)

    def _read_more(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.decoder.feed(data)
        self.pending.extend(self.decoder)
        return True

    def until_echo(self, token: bytes) -> tuple[list[Event], bool]:
        """Events before the echo of ``token``, and whether the server closed instead."""
        received: list[Event] = []
        while True:
            while self.pending:
                event = self.pending.pop(0)
                if event == EchoRes(token):
                    return received, False
                received.append(event)
            try:
                if not self._read_more():
                    return received, True
            except ConnectionResetError:
                return received, True

    def take(self, count: int) -> list[Event]:
        while len(self.pending) < count:
            if not self._read_more():
                raise ConnectionError(f"closed while waiting for {count} events")
        taken, self.pending = self.pending[:count], self.pending[count:]
        return taken

    def until_closed(self) -> list[Event]:
        received: list[Event] = []
        try:
            while self._read_more():
                pass
        except ConnectionResetError:
            pass
        received.extend(self.pending)
        self.pending.clear()
        return received

    def close(self) -> None:
        self.sock.close()


def _resolve(what: Message | str | bytes, created: list[bytes]) -> Message | str | bytes:
    """Replace ``@N`` handle references by the N-th handle created so far."""
    if isinstance(what, str):
        return re.sub(r"@([0-9]+)", lambda m: created[int(m.group(1)) - 1].decode(), what)
    handle = getattr(what, "handle", None)
    if isinstance(handle, bytes) and handle.startswith(REF):
        return attrs.evolve(what, handle=created[int(handle[1:]) - 1])  # type: ignore[misc]
    return what


def play(address: tuple[str, int], steps: Iterable[Step]) -> Transcript:
    """Run the steps against the server at ``address``; return the raw transcript."""
    peers: dict[str, _Peer] = {}
    tokens = (b"sync-%d" % i for i in itertools.count())
    transcript: Transcript = []
    created: list[bytes] = []

    def peer(name: str) -> _Peer:
        if name not in peers:
            peers[name] = _Peer(address)
        return peers[name]

    try:
        for step in steps:
            if isinstance(step, Send):
                peer(step.conn).send(_resolve(step.what, created))
            elif isinstance(step, Sync):
                for name in step.conns:
                    p = peer(name)
                    token = next(tokens)
                    p.send(EchoReq(token))
                    events, closed = p.until_echo(token)
                    created.extend(e.handle for e in events if isinstance(e, JobCreated))
                    record: tuple[object, ...] = tuple(events)
                    if closed:
                        record += (CLOSED,)
                        peers.pop(name).close()
                    transcript.append((name, record))
            elif isinstance(step, Recv):
                events = peer(step.conn).take(step.count)
                created.extend(e.handle for e in events if isinstance(e, JobCreated))
                transcript.append((step.conn, tuple(events)))
            elif isinstance(step, Close):
                peers.pop(step.conn).close()
            else:
                p = peers.pop(step.conn)
                transcript.append((step.conn + " closed", tuple(p.until_closed())))
                p.close()
    finally:
        for p in peers.values():
            p.close()
    return transcript


def normalise(transcript: Transcript) -> Transcript:
    """Make transcripts of different servers comparable.

    Job handles become H1, H2, ... in order of first appearance (also in the first
    column of ``show jobs``), and the lines of each admin listing (text lines up to a
    lone ``.``) are sorted, since servers list functions in hash order.
    """
    names: dict[bytes, bytes] = {}

    def rename(handle: bytes) -> bytes:
        if handle not in names:
            names[handle] = b"H%d" % (len(names) + 1)
        return names[handle]

    out: Transcript = []
    for conn, events in transcript:
        fixed: list[object] = []
        listing: list[bytes] = []
        for event in events:
            if isinstance(event, TextLine):
                head, sep, rest = event.line.partition(b"\t")
                line = names[head] + sep + rest if sep and head in names else event.line
                if line == b".":
                    fixed.extend(TextLine(x) for x in sorted(listing))
                    listing.clear()
                    fixed.append(TextLine(line))
                elif _is_listing_line(line):
                    listing.append(_FD.sub(b"FD ", line, count=1))
                else:
                    fixed.extend(TextLine(x) for x in listing)
                    listing.clear()
                    fixed.append(TextLine(line))
                continue
            fixed.extend(TextLine(x) for x in listing)
            listing.clear()
            handle = getattr(event, "handle", None)
            if isinstance(handle, bytes):
                event = attrs.evolve(event, handle=rename(handle))  # type: ignore[misc]
            fixed.append(event)
        fixed.extend(TextLine(x) for x in listing)
        out.append((conn, tuple(fixed)))
    return out


_FD = re.compile(rb"^[0-9]+ ")


def _is_listing_line(line: bytes) -> bool:
    return not (line.startswith((b"OK", b"ERR ")) or line == b".")


def format_transcript(transcript: Sequence[tuple[str, tuple[object, ...]]]) -> str:
    """A readable multi-line rendering, for assertion messages."""
    return "\n".join(f"{conn}: {list(events)}" for conn, events in transcript)
