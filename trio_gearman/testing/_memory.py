"""In-memory connections: a Gearman connection without a socket, for tests.

A :class:`Pipe` carries bytes one way; two make a connection, whose ends are
:class:`MemoryByteStream` objects (an :class:`anyio.abc.ByteStream`): for tests
of code that speaks a protocol over any byte stream. (The embedded job server's
own portless connections are socket pairs, so that the server serves them with
the code that serves TCP: see ``EmbeddedServer.connect_memory``.)
"""

from __future__ import annotations

import anyio
import anyio.abc
import anyio.lowlevel

__all__ = ["MemoryByteStream", "Pipe", "memory_stream_pair"]

_RECEIVE_SIZE = 65536


class Pipe:
    """Bytes one way, in order, unbounded: writes never block.

    Attributes:
        writer_closed: the writing end is closed; reading ends once it is empty.
        reader_closed: the reading end is closed; writing is refused.
    """

    def __init__(self) -> None:
        self.writer_closed = False
        self.reader_closed = False
        self._buffer = bytearray()
        self._readable: anyio.Event | None = None

    def write(self, data: bytes | bytearray) -> None:
        """Append bytes for the reader.

        Raises:
            anyio.ClosedResourceError: the writing end is closed.
            anyio.BrokenResourceError: the reading end is closed.
        """
        if self.writer_closed:
            raise anyio.ClosedResourceError
        if self.reader_closed:
            raise anyio.BrokenResourceError
        self._buffer += data
        self._wake()

    async def read(self, max_bytes: int) -> bytes:
        """Take at most ``max_bytes`` bytes, waiting for at least one.

        Raises:
            anyio.EndOfStream: the writing end is closed and everything was read.
            anyio.ClosedResourceError: the reading end is closed.
        """
        if self._buffer and not self.reader_closed:
            await anyio.lowlevel.checkpoint()
        while not self._buffer:
            if self.reader_closed:
                raise anyio.ClosedResourceError
            if self.writer_closed:
                raise anyio.EndOfStream
            self._readable = anyio.Event()
            await self._readable.wait()
        if self.reader_closed:
            raise anyio.ClosedResourceError
        data = bytes(self._buffer[:max_bytes])
        del self._buffer[:max_bytes]
        return data

    def close_writer(self) -> None:
        """No more bytes will come; the reader gets EndOfStream once it has read all."""
        self.writer_closed = True
        self._wake()

    def close_reader(self) -> None:
        """Nobody reads any more: drop what waits and refuse more."""
        self.reader_closed = True
        self._buffer.clear()
        self._wake()

    def _wake(self) -> None:
        event, self._readable = self._readable, None
        if event is not None:
            event.set()


class MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory connection, behaving like a TCP connection.

    What one end sends, the other receives, in order, in chunks of at most
    ``max_bytes``. After the peer closes, receiving raises
    :class:`anyio.EndOfStream` once everything sent before has been read, and
    sending raises :class:`anyio.BrokenResourceError`.

    Args:
        incoming: the pipe this end reads.
        outgoing: the pipe this end writes.
    """

    def __init__(self, incoming: Pipe, outgoing: Pipe) -> None:
        self._incoming = incoming
        self._outgoing = outgoing

    async def receive(self, max_bytes: int = _RECEIVE_SIZE) -> bytes:
        """Receive at most ``max_bytes`` bytes (at least one).

        Raises:
            anyio.EndOfStream: the peer closed (or sent EOF) and nothing is left.
            anyio.ClosedResourceError: this end was closed.
        """
        return await self._incoming.read(max_bytes)

    async def send(self, item: bytes) -> None:
        """Send bytes to the peer.

        Raises:
            anyio.BrokenResourceError: the peer closed its end.
            anyio.ClosedResourceError: this end was closed or sent EOF.
        """
        await anyio.lowlevel.checkpoint()
        if item:
            self._outgoing.write(item)

    async def send_eof(self) -> None:
        """Tell the peer that nothing more will be sent; receiving goes on."""
        await anyio.lowlevel.checkpoint()
        self._outgoing.close_writer()

    async def aclose(self) -> None:
        """Close both directions."""
        self._outgoing.close_writer()
        self._incoming.close_reader()
        await anyio.lowlevel.checkpoint()


def memory_stream_pair() -> tuple[MemoryByteStream, MemoryByteStream]:
    """Two connected in-memory byte streams: what one sends, the other receives.

    Example:
        >>> async def main():
        ...     left, right = memory_stream_pair()
        ...     await left.send(b"ping")
        ...     assert await right.receive() == b"ping"
    """
    one, two = Pipe(), Pipe()
    return MemoryByteStream(one, two), MemoryByteStream(two, one)
