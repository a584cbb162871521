"""Whether a database's entries may be served: how fresh its change stream is (sans-IO).

Writes that bypass the pooler reach the cache only through each database's logical
decoding slot (``pooler.cache.decoding``). An entry of a database is served only if a
poll that began at most ``WINDOW`` seconds ago read every change the primary had when
it began: while the slot is being made (which waits for writing transactions), after
its connection is lost, or when a poll is slow, nothing of that database is served.
Answers are stored only while the slot exists (every entry stored before the slot was
made is dropped when it is). Where logical decoding is not available at all, entries
are served only while younger than ``ttl``, and none when ``ttl`` is 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable

#: Seconds a poll's reach stays good for.
WINDOW = 1.0


class Watch:
    """Freshness of each database's change stream."""

    __slots__ = ("_clock", "_fresh", "_slots", "available", "reason", "ttl", "wanted")

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        #: False once logical decoding is known not to work (``reason`` says why).
        self.available = True
        self.reason = ""
        #: Databases whose entries are wanted (a client of them logged in).
        self.wanted: set[str] = set()
        # Database -> when the last poll that reached the primary's position began.
        self._fresh: dict[str, float] = {}
        # Databases whose slot exists.
        self._slots: set[str] = set()

    def servable(self, database: str) -> bool:
        """Entries of ``database`` may be served now."""
        if not self.available:
            return self.ttl > 0
        began = self._fresh.get(database)
        return began is not None and self._clock() - began <= WINDOW

    def storable(self, database: str) -> bool:
        """Answers read from ``database`` now may be stored."""
        if not self.available:
            return self.ttl > 0
        return database in self._slots

    def slot_made(self, database: str) -> None:
        """The database's slot exists from now on (the caller drops its entries)."""
        self._slots.add(database)

    def polled(self, database: str, began: float) -> None:
        """A poll that began at ``began`` (this watch's clock) read every change up to the
        primary's position then."""
        self._fresh[database] = began

    def lost(self, database: str) -> None:
        """The database's slot is gone (its connection failed, a failover)."""
        self._slots.discard(database)
        self._fresh.pop(database, None)

    def unavailable(self, reason: str) -> None:
        """Logical decoding cannot be used here."""
        self.available = False
        self.reason = reason
        self._slots.clear()
        self._fresh.clear()

    def now(self) -> float:
        """This watch's clock."""
        return self._clock()
