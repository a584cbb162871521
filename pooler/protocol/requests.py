"""Which of a client's requests a server still owes an answer for.

A server connection may pass to another client only when it owes nothing: every
Query, Sync and FunctionCall sent has had its ReadyForQuery, no extended-protocol
batch is waiting for its Sync (an implicit transaction may be open, or an error may
have the server skip everything up to the next Sync), and no COPY FROM STDIN is open.

COPY makes the count subtle: a server in COPY IN ignores Sync (libpq sends one right
after the Execute of a COPY, before it knows what the statement was). Those Syncs get
no ReadyForQuery, so they are dropped from the queue when the COPY ends.
"""

from __future__ import annotations

from collections import deque

QUERY = ord("Q")
SYNC = ord("S")
FUNCTION_CALL = ord("F")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
#: Extended-protocol messages: after one of them, nothing is settled until a Sync.
UNSYNC = frozenset(b"PBEDCH")
#: The frontend message types whose order a tracker needs, via ``sent``.
TRACKED = frozenset({QUERY, SYNC, FUNCTION_CALL, COPY_DONE, COPY_FAIL})
_ANSWERED = frozenset({QUERY, SYNC, FUNCTION_CALL})
_COPY_END = frozenset({COPY_DONE, COPY_FAIL})


class RequestTracker:
    """Outstanding requests of one server connection, fed from both directions."""

    __slots__ = ("_queue", "copy_in", "unsynced")

    def __init__(self) -> None:
        # Requests owed a ReadyForQuery, oldest first; during COPY IN also the
        # CopyDone/CopyFail that ends it, as a marker.
        self._queue: deque[int] = deque()
        #: The server answered CopyInResponse and the COPY has not ended.
        self.copy_in = False
        #: Extended-protocol messages were sent after the last Sync (kept up to date by
        #: whoever scans the client's stream).
        self.unsynced = False

    @property
    def pending(self) -> int:
        """How many ReadyForQuery messages are still to come."""
        return sum(1 for t in self._queue if t in _ANSWERED)

    def idle(self) -> bool:
        """True when the server owes nothing and holds no half-finished batch."""
        return not self._queue and not self.unsynced and not self.copy_in

    def sent(self, types: list[int]) -> None:
        """The client sent messages of these types (those in ``TRACKED``), in order."""
        queue = self._queue
        for t in types:
            if t in _ANSWERED or self.copy_in:
                queue.append(t)

    def ready(self) -> None:
        """A ReadyForQuery arrived: it answers the oldest request."""
        queue = self._queue
        while queue:
            if queue.popleft() in _ANSWERED:
                return

    def copy_started(self) -> None:
        """The server sent CopyInResponse."""
        self.copy_in = True

    def copy_ended(self) -> None:
        """The server ended COPY IN (CommandComplete, or an ErrorResponse).

        Syncs sent before the CopyDone/CopyFail that ended it reached a server in COPY
        IN and were ignored; a Query at the head started the COPY and is still owed
        its ReadyForQuery.
        """
        items = list(self._queue)
        end = next((i for i, t in enumerate(items) if t in _COPY_END), len(items))
        kept = [t for t in items[:end] if t != SYNC]
        self._queue = deque(kept + items[end + 1 :])
        self.copy_in = False
