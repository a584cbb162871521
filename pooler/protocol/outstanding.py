"""What a server still owes for the requests forwarded to it, in the order it owes it.

The server handles a client's messages one after the other, so the requests are kept
as a queue of message types in stream order: those owed a ReadyForQuery (Query, Sync,
FunctionCall), and those that decide how later ones are taken (Execute, which may
start a COPY; CopyDone and CopyFail, which end one). Each ReadyForQuery answers the
oldest request owed one; the messages before it were handled on the way.

COPY FROM STDIN is the one place where the server reads a message without answering
it as usual: in copy-in mode it ignores Sync and Flush (libpq sends a Sync right after
the Execute of a COPY, before it knows what the statement does). The Syncs that arrived
between the message that started a COPY and the CopyDone that ended it successfully
get no ReadyForQuery; every Sync after the CopyDone gets its own. When a COPY fails,
which Syncs the server had already read in copy-in mode depends on where it failed,
so they all stay counted: a count that is too high only keeps a server from being
reused, one that is too low would hand a busy server to the next client.
"""

from __future__ import annotations

from collections import deque

QUERY = 0x51  # Q
SYNC = 0x53  # S
FUNCTION_CALL = 0x46  # F
EXECUTE = 0x45  # E
COPY_DONE = 0x63  # c
COPY_FAIL = 0x66  # f

#: Frontend message types the queue must see, in order (a scanner's ``track`` set).
TRACKED = frozenset({QUERY, SYNC, FUNCTION_CALL, EXECUTE, COPY_DONE, COPY_FAIL})
#: Extended-protocol messages: after one of them nothing is settled until a Sync (an
#: implicit transaction may be open, or an error may have the server skip to Sync).
UNSYNCED = frozenset(b"PBEDC")
#: Messages that say nothing about that: COPY data and its end, and Flush.
NEUTRAL = frozenset(b"dcfH")

_OWES_READY = frozenset({QUERY, SYNC, FUNCTION_CALL})
_COPY_END = frozenset({COPY_DONE, COPY_FAIL})


class Outstanding:
    """The requests one server connection has not finished answering."""

    __slots__ = ("_queue", "answered", "copy_in", "owed", "unsynced")

    def __init__(self) -> None:
        self._queue: deque[int] = deque()
        #: How many ReadyForQuery messages are still to come.
        self.owed = 0
        #: How many requests owed one were answered (or, Syncs read in copy-in mode,
        #: will never be): ``answered + owed`` numbers the requests sent.
        self.answered = 0
        #: The server answered CopyInResponse and the COPY has not ended.
        self.copy_in = False
        #: Extended-protocol messages were sent after the last Sync.
        self.unsynced = False

    def idle(self) -> bool:
        """True when the server owes nothing and holds no half-finished batch or COPY."""
        return not self.owed and not self.unsynced and not self.copy_in

    def sent(self, types: list[int]) -> None:
        """The client's messages of these types (those in ``TRACKED``) were forwarded."""
        queue = self._queue
        queue.extend(types)
        for t in types:
            if t in _OWES_READY:
                self.owed += 1

    def ready(self) -> None:
        """A ReadyForQuery arrived: it answers the oldest request owed one."""
        queue = self._queue
        while queue:
            if queue.popleft() in _OWES_READY:
                self.owed -= 1
                self.answered += 1
                return

    def copy_started(self) -> None:
        """The server sent CopyInResponse."""
        self.copy_in = True

    def copy_done(self) -> None:
        """COPY IN ended with CommandComplete: the server read a CopyDone.

        The request that started it is the last Query or Execute before the first
        CopyDone; the Syncs between the two were read in copy-in mode and ignored.
        """
        self.copy_in = False
        queue = self._queue
        end = next((i for i, t in enumerate(queue) if t in _COPY_END), -1)
        if end < 0 or queue[end] != COPY_DONE:
            return  # not what a server that ended a COPY well has read: keep counting
        start = end
        while start > 0 and queue[start - 1] == SYNC:
            start -= 1
        if start == 0 or queue[start - 1] not in (QUERY, EXECUTE):
            return
        for _ in range(end - start):
            del queue[start]
        del queue[start]  # the CopyDone
        self.owed -= end - start
        self.answered += end - start

    def copy_failed(self) -> None:
        """COPY IN ended with an ErrorResponse: keep every Sync counted (see module)."""
        self.copy_in = False
