"""The answer bytes of one cacheable request, as the server sent them (sans-IO).

A server engine with a ``Capture`` hands it everything it forwards to the client. When
the server is idle again the answer is complete, and it is kept only if it is what
a cache may replay: the answers of Parse, Bind and Describe, one RowDescription, its
rows and one CommandComplete (a Bind and Execute of a prepared statement without
Describe has no RowDescription: its key says so), then ReadyForQuery outside a
transaction (or inside a read-only one, when the read was made there). An error, a
notice, a notification, a parameter change, an empty query, a portal suspended by a
row limit, or a second result: not cached.
"""

from __future__ import annotations

from pooler.protocol.codec import Event

_COMMAND_COMPLETE = ord("C")
_READY_FOR_QUERY = ord("Z")
# ParseComplete, BindComplete, ParameterDescription, RowDescription, DataRow.
_BEFORE_END = frozenset(b"12tTD")
_IDLE = b"Z\x00\x00\x00\x05I"


class Capture:
    """Collects a server's forwarded bytes, up to ``limit`` of them."""

    __slots__ = ("_limit", "_parts", "_size", "failed")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        #: Not cacheable (too big, or the server broke the protocol): nothing is kept.
        self.failed = False

    def add(self, events: bytes | list[Event]) -> None:
        """What the server engine forwards (``feed``'s output)."""
        if self.failed:
            return
        if type(events) is bytes:
            self._take(events)
            return
        for event in events:
            if type(event) is bytes:
                self._take(event)
            else:
                self._fail()
                return

    def _take(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            self._fail()
        else:
            self._parts.append(data)

    def _fail(self) -> None:
        self.failed = True
        self._parts.clear()

    def answer(self, status: bytes = b"I") -> bytes | None:
        """The whole answer if it may be replayed, else None. ``status``: the transaction
        status its ReadyForQuery must have (b"T": a read inside a read-only transaction);
        the answer kept says b"I", as outside any."""
        if self.failed:
            return None
        data = b"".join(self._parts)
        if not replayable(data, status):
            return None
        return data if status == b"I" else data[:-1] + b"I"


def replayable(data: bytes, status: bytes = b"I") -> bool:
    """``data`` is one result (with what Parse, Bind and Describe answered before it)
    ending in ReadyForQuery with transaction status ``status``, and nothing else."""
    if not data.endswith(_IDLE[:-1] + status):
        return False
    end = len(data) - len(_IDLE)
    pos = 0
    while pos < end:
        t = data[pos]
        nxt = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if t == _COMMAND_COMPLETE:
            return nxt == end
        if t not in _BEFORE_END:
            return False
        pos = nxt
    return False
