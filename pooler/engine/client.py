"""What to do with a logged-in client's bytes: forward them, or end its session as
PostgreSQL would have ended it.

PostgreSQL reads a client's messages one by one and answers each in turn, so how a
session ends depends on what is still in flight. When the server owes nothing, the
pooler can answer an ending itself (a Terminate closes; an unknown message type gets
FATAL 08P01; a length out of range closes without a word). When it owes answers, only
the server knows what it would still have sent (answers up to the last Sync or Flush,
pending rows, the error of a COPY cut short), so it is handed the same ending and its
answers are relayed until it closes.
"""

from __future__ import annotations

from collections.abc import Mapping

from pooler.engine.actions import Action, Close, HandOver
from pooler.engine.server import ServerEngine
from pooler.protocol import messages as m
from pooler.protocol.codec import FramingError, Message, Scanner
from pooler.protocol.outstanding import NEUTRAL, TRACKED, UNSYNCED

_STOP = frozenset({m.TERMINATE})
_TERMINATE = b"X\x00\x00\x00\x04"


class ClientEngine:
    """One client's stream after login, relayed to one server (session mode)."""

    __slots__ = ("ended", "scanner", "server")

    def __init__(self, limits: Mapping[int, int]) -> None:
        self.scanner = Scanner(limits=limits, track=TRACKED, stop=_STOP, transparent=NEUTRAL)
        #: The server this client's requests go to.
        self.server: ServerEngine | None = None
        #: The stream ended (Terminate, bad framing, end of input): nothing more is read.
        self.ended = False

    def feed(self, data: bytes) -> bytes | list[bytes | Action]:
        """Take the client's bytes: what to forward to the server, in order, and at most
        one closing action at the end.

        Returns the input itself when all of it is to be forwarded (the common case).
        """
        server = self.server
        assert server is not None
        scanner = self.scanner
        events = scanner.feed(data)
        requests = server.requests
        if scanner.tracked:
            requests.sent(scanner.tracked)
            scanner.tracked.clear()
        requests.unsynced = scanner.last_type in UNSYNCED
        if isinstance(events, bytes):
            return events
        out: list[bytes | Action] = []
        for event in events:
            if type(event) is bytes:
                out.append(event)
            elif type(event) is Message:
                out.append(self._end(server, _TERMINATE, b""))
            elif isinstance(event, FramingError):
                reply = b""
                if event.fatal_message is not None:
                    reply = m.error_response("FATAL", "08P01", event.fatal_message)
                out.append(self._end(server, event.raw, reply))
        return out

    def eof(self) -> Action:
        """The client closed its side: PostgreSQL still answers what it had read."""
        server = self.server
        assert server is not None
        return self._end(server, b"", b"")

    def _end(self, server: ServerEngine, to_server: bytes, reply: bytes) -> Action:
        self.ended = True
        if server.requests.idle():
            return Close(reply)
        return HandOver(to_server)

    def partial(self) -> bool:
        """Part of a message was forwarded and the rest never came."""
        return self.scanner.passed_partial()
