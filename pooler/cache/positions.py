"""Where the last write to each table is in the primary's WAL, so that a result read on a
standby is stored only if that standby had replayed past it (sans-IO).

A standby that has not replayed a write answers as the primary did before it, and its
answer would be stored after the write's drop, stale until the next write. So a
standby's answer is stored only if, when the read started, the monitor had seen that
standby replay past the last write to each table it read, and no write to them is
still waiting for its position. A write through the pooler waits from the end of its
transaction until the primary told its position (``pooler.cluster.wal``); a write the
change stream reports is placed at the primary's position when the poll ran, which is
at or past its commit. The monitor's replay positions lag behind the standby's own, so
the rule errs on the side of not storing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pooler.cache.relations import ALL, Written

# Stands for "every table of the database" (no table has an empty name).
_WHOLE = ""


class WritePositions:
    """Last write position of each (database, table), and writes not placed yet."""

    __slots__ = ("_last", "_pending")

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self._pending: Counter[tuple[str, str]] = Counter()

    def writing(self, database: str, written: Written) -> list[tuple[str, str]]:
        """A write's transaction ended; its position is not known yet. What to pass
        to ``placed`` once it is."""
        keys = _keys(database, written)
        self._pending.update(keys)
        return keys

    def placed(self, keys: list[tuple[str, str]], lsn: int) -> None:
        """The write of ``keys`` (from ``writing``) is at or before ``lsn``."""
        self._pending.subtract(keys)
        for key in keys:
            if self._pending[key] <= 0:
                del self._pending[key]
        self.seen_at(keys, lsn)

    def seen(self, database: str, written: Written, lsn: int) -> None:
        """The change stream showed a write of ``written`` at or before ``lsn``."""
        self.seen_at(_keys(database, written), lsn)

    def seen_at(self, keys: Iterable[tuple[str, str]], lsn: int) -> None:
        """Writes of ``keys`` are at or before ``lsn``."""
        last = self._last
        for key in keys:
            if lsn > last.get(key, 0):
                last[key] = lsn

    def allows(self, database: str, tables: Iterable[str], replayed: int | None) -> bool:
        """A standby that had replayed up to ``replayed`` (None: unknown) when a read of
        ``tables`` started answered as the primary would have."""
        if replayed is None:
            return False
        pending = self._pending
        last = self._last
        for table in (_WHOLE, *tables):
            key = (database, table)
            if key in pending or last.get(key, 0) > replayed:
                return False
        return True


def _keys(database: str, written: Written) -> list[tuple[str, str]]:
    if written is ALL:
        return [(database, _WHOLE)]
    return [(database, table) for table in written]
