"""A socket-free harness for the job server's state machine, and checks of it.

:class:`Harness` owns a :class:`ServerState` and a clock; :meth:`Harness.connect`
gives a :class:`Peer` that feeds messages into the state and decodes what the
state appended to its outgoing buffer (``Decoder(expect=Magic.RES)``). Admin
replies are text, so :meth:`Peer.admin` returns their raw bytes.
"""

from __future__ import annotations

from typing import Any

from trio_gearman._proto import Decoder, Event, Magic, Message, TextLine, encode
from trio_gearman._proto._packets import CanDo, EchoReq, GrabJobUniq, Noop, PreSleep, SubmitJob
from trio_gearman._proto.server.state import ConnectionState, ServerConfig, ServerState

PREFIX = b"H:test"


def handle(n: int) -> bytes:
    """The handle of the n-th job of a harness (counting from 1)."""
    return PREFIX + b":%d" % n


class Peer:
    """One connection to the state machine, seen from the peer's side."""

    def __init__(self, harness: Harness, conn: ConnectionState) -> None:
        self.harness = harness
        self.conn = conn
        self._decoder = Decoder(expect=Magic.RES)

    def send(self, *events: Event) -> None:
        """Feed events to the state, as the I/O layer does, at the harness's time."""
        for event in events:
            self.harness.state.receive(self.conn, event, self.harness.now)

    def _take_bytes(self) -> bytes:
        conn = self.conn
        data = b""
        while True:  # as the I/O layer sends: the buffers given, then the next ones
            chunk = b"".join(conn.output_buffers())
            data += chunk
            if conn.shared is None:
                break
            conn.consume_output(len(chunk))
        if data:
            assert conn in self.harness.state.dirty, "output without marking dirty"
        conn.clear_output()
        self.harness.state.dirty.discard(self.conn)
        return data

    def received(self) -> list[Message]:
        """Every packet the state sent to this peer since the last call."""
        self._decoder.feed(self._take_bytes())
        messages: list[Message] = []
        for event in self._decoder:
            assert not isinstance(event, TextLine)
            messages.append(event)  # type: ignore[arg-type]
        return messages

    def raw(self) -> bytes:
        """The raw bytes the state sent to this peer since the last call."""
        return self._take_bytes()

    def admin(self, line: bytes) -> bytes:
        """Send one admin line and return the raw reply."""
        self.send(TextLine(line))
        return self._take_bytes()

    def request(self, *events: Event) -> list[Message]:
        """Send events and return what came back to this peer."""
        self.send(*events)
        return self.received()

    def close(self) -> None:
        """The connection went away."""
        self.harness.state.disconnect(self.conn, self.harness.now)


class Harness:
    """A state machine, a clock, and peers connected to it."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("job_handle_prefix", PREFIX)
        self.state = ServerState(ServerConfig(**config))
        self.now = 1000.0
        self._fd = 10

    def connect(self, address: bytes = b"127.0.0.1") -> Peer:
        """A new connection."""
        self._fd += 1
        return Peer(self, self.state.connect(address, self._fd))

    def worker(self, *functions: bytes) -> Peer:
        """A new connection registered for ``functions``."""
        peer = self.connect()
        peer.send(*(CanDo(function) for function in functions))
        return peer

    def advance(self, seconds: float) -> None:
        """Move the clock on and fire the timers due."""
        self.now += seconds
        self.state.advance(self.now)


def test_peer_decodes_what_the_state_sends() -> None:
    harness = Harness()
    client = harness.connect()
    client.send(EchoReq(b"one"), EchoReq(b"two"))
    assert client.conn in harness.state.dirty
    assert [m.data for m in client.received()] == [b"one", b"two"]  # type: ignore[union-attr]
    assert client.conn not in harness.state.dirty
    assert client.received() == []


def test_raw_bytes_are_the_encoded_packets() -> None:
    harness = Harness()
    worker = harness.worker(b"f")
    worker.send(GrabJobUniq())
    assert worker.raw() == b"\0RES\x00\x00\x00\x0a\x00\x00\x00\x00"
    client = harness.connect()
    client.send(SubmitJob(b"f", b"", b"x", background=True))
    worker.send(PreSleep())
    assert worker.raw() == encode(Noop(), Magic.RES)
