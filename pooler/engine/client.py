"""What to do with a logged-in client's bytes: forward them, hold them until a server is
assigned, or end the session as PostgreSQL would have ended it.

PostgreSQL reads a client's messages one by one and answers each in turn, so how a
session ends depends on what is still in flight. When the server owes nothing, the
pooler can answer an ending itself (a Terminate closes; an unknown message type gets
FATAL 08P01; a length out of range closes without a word). When it owes answers, only
the server knows what it would still have sent (answers up to the last Sync or Flush,
pending rows, the error of a COPY cut short), so it is handed the same ending and its
answers are relayed until it closes.

In transaction pooling the client has a server only from the first message of a
transaction to the ReadyForQuery that ends it with nothing owed; bytes that arrive in
between are held until the next server is assigned. Query and Parse texts are
classified to see the session state that pins a client to its server.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from parser_api import Classification
from pooler.engine.actions import Action, Close, HandOver, NeedServer
from pooler.engine.server import ServerEngine
from pooler.engine.session_state import SessionState
from pooler.engine.statements import (
    ClientStatements,
    rewrite_bind,
    rewrite_describe_or_close,
    rewrite_parse,
)
from pooler.protocol import messages as m
from pooler.protocol.codec import Event, FramingError, Message, Scanner, frame
from pooler.protocol.outstanding import NEUTRAL, TRACKED, UNSYNCED

_STOP = frozenset({m.TERMINATE})
_TERMINATE = b"X\x00\x00\x00\x04"
# Transaction pooling looks inside these: statement texts to classify, and statement
# names to rewrite.
_POOLED = frozenset({m.QUERY, m.PARSE, m.BIND, m.DESCRIBE, m.CLOSE})

#: Classifies a statement text; None when it does not parse (PostgreSQL will say why).
Classify = Callable[[str], Classification | None]

_NEED_SERVER = NeedServer()


class ClientEngine:
    """One client's stream after login."""

    __slots__ = (
        "_classify",
        "_ending",
        "_forget_prepared",
        "_held",
        "ended",
        "scanner",
        "server",
        "session",
        "statements",
    )

    def __init__(self, limits: Mapping[int, int], classify: Classify | None = None) -> None:
        split = _POOLED if classify is not None else frozenset()
        self.scanner = Scanner(
            split=split, limits=limits, track=TRACKED, stop=_STOP, transparent=NEUTRAL
        )
        self._classify = classify
        #: The server this client's requests go to, while it has one.
        self.server: ServerEngine | None = None
        #: What the session holds that pins it to its server (transaction pooling).
        self.session = SessionState()
        #: The stream ended (Terminate, bad framing, end of input): nothing more is read.
        self.ended = False
        #: Its named prepared statements, carried from server to server.
        self.statements = ClientStatements()
        # Bytes waiting for a server, and the ending that came after them.
        self._held: list[bytes] = []
        self._ending: tuple[bytes, bytes] | None = None
        # A DEALLOCATE ALL or DISCARD ALL is held: the next server drops its statements.
        self._forget_prepared = False

    @property
    def pooling(self) -> bool:
        """Transaction pooling: the server changes between transactions."""
        return self._classify is not None

    def feed(self, data: bytes) -> bytes | list[bytes | Action]:
        """Take the client's bytes: what to forward to the server, in order, and at most
        one action at the end (``NeedServer`` when there is none to forward to).

        Returns the input itself when all of it is to be forwarded (the common case).
        """
        scanner = self.scanner
        events = scanner.feed(data)
        server = self.server
        if server is None:
            return self._hold(events)
        # _tell, written out: this runs once per read of every client.
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
            elif type(event) is Message and event.type != m.TERMINATE:
                out.append(self._pooled(event, server))
            else:
                to_server, reply = _ending_of(event)  # type: ignore[arg-type]
                out.append(self._end(server, to_server, reply))
        return out

    def _tell(self, server: ServerEngine) -> None:
        """Tell the server's queue what was scanned for it since the last time."""
        scanner = self.scanner
        requests = server.requests
        if scanner.tracked:
            requests.sent(scanner.tracked)
            scanner.tracked.clear()
        requests.unsynced = scanner.last_type in UNSYNCED

    def _pooled(self, msg: Message, server: ServerEngine | None) -> bytes:
        """A message transaction pooling looks inside: classify its text, rename its
        statement; the bytes to forward."""
        t = msg.type
        body = msg.body
        if t == m.QUERY:
            self._classified(body[:-1], server)
            return frame(t, body)
        if t == m.PARSE:
            raw, text = rewrite_parse(
                body, self.statements, server.prepared if server is not None else None
            )
            self._classified(text, server)
            return raw
        if t == m.BIND:
            return rewrite_bind(body, self.statements)
        errors = server.errors if server is not None else None
        return rewrite_describe_or_close(t, body, self.statements, errors)

    def _classified(self, text: bytes, server: ServerEngine | None) -> None:
        classify = self._classify
        assert classify is not None
        classification = classify(text.decode("utf-8", "replace"))
        if classification is None:
            return
        errors = server.errors if server is not None else 0
        if self.session.statement(classification, errors):
            self.statements.clear()
            if server is not None:
                server.prepared.clear()
            else:
                self._forget_prepared = True

    def _hold(self, events: bytes | list[Event]) -> list[bytes | Action]:
        if isinstance(events, bytes):
            self._held.append(events)
        else:
            for event in events:
                if type(event) is bytes:
                    self._held.append(event)
                elif type(event) is Message and event.type != m.TERMINATE:
                    self._held.append(self._pooled(event, None))
                else:
                    self._ending = _ending_of(event)  # type: ignore[arg-type]
                    self.ended = True
        if self._held:
            return [_NEED_SERVER]
        if self._ending is not None:
            return [Close(self._ending[1])]
        return []

    def attach(self, server: ServerEngine) -> list[bytes | Action]:
        """A server was assigned: what to send it now (the held bytes), and the held
        ending if the stream ended meanwhile."""
        self.server = server
        server.names = self.statements.theirs
        out: list[bytes | Action] = []
        # The statements this client has and the server lacks come first.
        prelude, parsed = self.statements.prelude(server.prepared)
        if prelude:
            out.append(prelude)
            server.prelude_sent(parsed)
        if self._forget_prepared:
            server.prepared.clear()
            self._forget_prepared = False
        self.statements.sent_to(server.errors)
        self._tell(server)
        out.extend(self._held)
        self._held.clear()
        if self._ending is not None:
            to_server, reply = self._ending
            out.append(self._end(server, to_server, reply))
        return out

    def detach(self) -> None:
        """Give the server up (at the end of a transaction, or of the session)."""
        server = self.server
        self.server = None
        if server is not None:
            server.names = None

    def releasable(self) -> bool:
        """Transaction pooling: the server may go back to its pool now (idle outside a
        transaction, owing nothing, no message half forwarded, nothing pinned)."""
        server = self.server
        if server is None or self.ended or not server.idle():
            return False
        self.statements.settled(server.errors)
        session = self.session
        if session.pins:
            session.settled(server.errors)
            if session.pins:
                return False
        return not self.scanner.passed_partial()

    def eof(self) -> Action:
        """The client closed its side: PostgreSQL still answers what it had read."""
        self.ended = True
        server = self.server
        if server is None:
            if self._held:
                self._ending = (b"", b"")
                return _NEED_SERVER
            return Close(b"")
        return self._end(server, b"", b"")

    def _end(self, server: ServerEngine, to_server: bytes, reply: bytes) -> Action:
        self.ended = True
        if server.requests.idle():
            return Close(reply)
        return HandOver(to_server)

    def partial(self) -> bool:
        """Part of a message was forwarded and the rest never came."""
        return self.scanner.passed_partial()


def _ending_of(event: Message | FramingError) -> tuple[bytes, bytes]:
    """What to hand a server that owes answers, and what to answer when none does."""
    if type(event) is Message:
        return _TERMINATE, b""
    assert isinstance(event, FramingError)
    reply = b""
    if event.fatal_message is not None:
        reply = m.error_response("FATAL", "08P01", event.fatal_message)
    return event.raw, reply
