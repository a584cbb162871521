"""Reading during a connection's handshake, before it switches to relaying.

A handshake (startup packet, TLS, authentication, a server login) is a short
conversation, so it is written as a coroutine awaiting bytes; once it is done the
connection relays from ``data_received`` directly, with no task per message.
"""

from __future__ import annotations

import asyncio

from pooler.protocol.codec import Message, unpack_int32

# Bytes a peer may send ahead of what a handshake asked for before we stop reading
# from it; the largest message a handshake accepts (a password) is 64 kB.
_HANDSHAKE_READ_AHEAD = 70_000


class ConnectionClosed(Exception):
    """The peer went away during a handshake."""


class MessageTooLong(Exception):
    """A handshake message over its limit; carries the type byte."""

    def __init__(self, msg_type: int, length: int) -> None:
        super().__init__(f"message type {msg_type} of length {length} over its limit")
        self.msg_type = msg_type


class HandshakeReader:
    """Buffers incoming bytes for a handshake coroutine."""

    __slots__ = ("_closed", "_inbuf", "_paused", "_transport", "_waiter")

    def __init__(self) -> None:
        self._inbuf = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._paused = False
        self._transport: asyncio.Transport | None = None

    def attach(self, transport: asyncio.Transport) -> None:
        """Read from ``transport`` (replaced after a TLS upgrade)."""
        self._transport = transport

    def feed(self, data: bytes) -> None:
        """Bytes arrived."""
        self._inbuf += data
        if len(self._inbuf) > _HANDSHAKE_READ_AHEAD and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        self._wake()

    def feed_eof(self) -> None:
        """The peer closed."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> int:
        """Bytes received and not yet read."""
        return len(self._inbuf)

    def take_rest(self) -> bytes:
        """Everything received and not read: handed to the relay after the handshake."""
        rest = bytes(self._inbuf)
        self._inbuf.clear()
        return rest

    async def read(self, n: int) -> bytes:
        """Exactly ``n`` bytes; raises ConnectionClosed if the peer goes first."""
        while len(self._inbuf) < n:
            if self._closed:
                raise ConnectionClosed
            self._waiter = asyncio.get_running_loop().create_future()
            if self._paused and self._transport is not None:
                self._paused = False
                self._transport.resume_reading()
            await self._waiter
            self._waiter = None
        data = bytes(self._inbuf[:n])
        del self._inbuf[:n]
        return data

    async def read_message(self, limit: int = 0x7FFFFFFF) -> Message:
        """One typed message whose length is at most ``limit``.

        The header is checked before the body is read, so an oversized length costs
        nothing. Raises MessageTooLong, or ConnectionClosed.
        """
        header = await self.read(5)
        length = unpack_int32(header, 1)[0]
        if length < 4 or length > limit:
            raise MessageTooLong(header[0], length)
        return Message(header[0], await self.read(length - 4))
