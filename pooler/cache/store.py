"""The cached answers: an LRU bounded in bytes, entry age, and the versions that keep
a result read before a write from being stored after it (sans-IO).

Every entry belongs to one database and lists the tables it read (views and their
tables, as ``pooler.cache.relations`` expands them). A write to a table drops every entry
that read it; a write whose tables cannot be known drops the whole database. A read
takes a ``Snapshot`` when it starts, and its answer is stored only if no drop since
touched what it read: a write that committed while the read ran may be missing from
the answer, and the drop that write caused came before the answer existed. (Each drop
is numbered and the recent ones are kept, so that a snapshot costs one number and a
store with no drop since costs one comparison; a read that outlived ``DROPS_KEPT`` drops
is not stored.)

Whether a database's entries may be served at all (its change stream is fresh) is the
``Watch``'s to say (``pooler.cache.watch``); the store keeps the entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

#: What an entry that read one table costs beyond its answer bytes and key text: the
#: objects holding them and the entry, its place in the LRU and in the indexes by
#: database and table (about 440 bytes on CPython 3.11, measured with tracemalloc);
#: each further table read adds its place in the index. Counted, so that ``max_size``
#: bounds the memory the store takes.
ENTRY_OVERHEAD = 450
TABLE_OVERHEAD = 100
# When an entry was stored, while there is no ttl: the clock is not read (an entry
# stored then counts as oldest if a reload sets a ttl, and goes).
_NO_CLOCK = 0.0
#: Drops remembered for the race rule.
DROPS_KEPT = 4096
# A drop of every database (``clear``).
_EVERYWHERE = ""


class Entry:
    """One cached answer."""

    # Not a dataclass: compiled (pooler.native), a dataclass keeps an __init__ that
    # dataclasses wrote in Python, run for every answer stored.
    __slots__ = ("created", "database", "size", "tables", "value")

    def __init__(
        self, value: bytes, database: str, tables: frozenset[str], created: float, size: int
    ) -> None:
        #: The answer bytes, replayed as they are.
        self.value = value
        self.database = database
        #: The tables (and views) it read; a write to any of them drops it.
        self.tables = tables
        #: When it was stored (the store's clock; ``_NO_CLOCK`` without a ttl).
        self.created = created
        #: Bytes counted against ``max_size``.
        self.size = size


class Snapshot(NamedTuple):
    """What a read depends on, and the number of the last drop when it started (a
    tuple: made on every miss, faster than a frozen dataclass)."""

    database: str
    tables: frozenset[str]
    drops: int


@dataclass(slots=True)
class CacheStats:
    """The counters SHOW POOL_CACHE shows (pgpool-II's names).

    ``num_cache_hits``: statements answered from the cache. ``num_selects``: cacheable
    statements that were not (pgpool-II counts SELECTs that missed), so
    ``cache_hit_ratio`` is ``num_cache_hits / (num_cache_hits + num_selects)``.
    ``entries`` and ``used_bytes`` are what is stored now; ``max_bytes`` the limit, so
    ``max_bytes - used_bytes`` is free. ``stores`` counts answers stored, ``refused``
    answers not stored because a write moved a version while they were read (the race
    rule), ``evictions`` entries dropped to make room, ``invalidations`` entries dropped
    by writes. ``whole_database_drops`` counts drops of all of a database's entries (a
    write whose tables are unknown, DDL seen in the change stream).
    """

    num_cache_hits: int = 0
    num_selects: int = 0
    entries: int = 0
    used_bytes: int = 0
    max_bytes: int = 0
    stores: int = 0
    refused: int = 0
    evictions: int = 0
    invalidations: int = 0
    whole_database_drops: int = 0

    @property
    def cache_hit_ratio(self) -> float:
        """Hits over cacheable statements seen (0 when none was)."""
        seen = self.num_cache_hits + self.num_selects
        return self.num_cache_hits / seen if seen else 0.0


class Store:
    """Cached answers by key, at most ``max_size`` bytes in all, each at most
    ``max_entry_size``, each at most ``ttl`` seconds old (0: no limit)."""

    __slots__ = (
        "_by_database",
        "_by_table",
        "_clock",
        "_drops",
        "_entries",
        "_log",
        "max_entry_size",
        "max_size",
        "stats",
        "ttl",
    )

    def __init__(
        self,
        max_size: int,
        max_entry_size: int,
        ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_size = max_size
        self.max_entry_size = max_entry_size
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._by_table: dict[tuple[str, str], set[Hashable]] = {}
        self._by_database: dict[str, set[Hashable]] = {}
        # How many drops there were, and the last DROPS_KEPT of them: (number,
        # database or _EVERYWHERE, tables or None for all).
        self._drops = 0
        self._log: deque[tuple[int, str, frozenset[str] | None]] = deque(maxlen=DROPS_KEPT)
        self.stats = CacheStats(max_bytes=max_size)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Entry | None:
        """The entry for ``key`` if it is there and young enough (it becomes the most
        recently used); an expired one is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.ttl and self._clock() - entry.created > self.ttl:
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def snapshot(self, database: str, tables: frozenset[str]) -> Snapshot:
        """What a read of ``tables`` of ``database`` starting now depends on."""
        return Snapshot(database, tables, self._drops)

    def unchanged(self, snapshot: Snapshot) -> bool:
        """No drop since ``snapshot`` touched what it read."""
        since = snapshot.drops
        if since == self._drops:
            return True
        log = self._log
        if not log or log[0][0] > since + 1:
            # Drops it may have missed are forgotten.
            return False
        for number, database, tables in reversed(log):
            if number <= since:
                break
            if database == _EVERYWHERE or (
                database == snapshot.database
                and (tables is None or not tables.isdisjoint(snapshot.tables))
            ):
                return False
        return True

    def _dropped(self, database: str, tables: frozenset[str] | None) -> None:
        self._drops += 1
        self._log.append((self._drops, database, tables))

    def put(self, key: Hashable, value: bytes, snapshot: Snapshot, key_size: int = 0) -> bool:
        """Store ``value`` read under ``snapshot``; False when it is too big, or when a
        write moved a version meanwhile (the race rule)."""
        size = len(value) + key_size + ENTRY_OVERHEAD
        if len(snapshot.tables) > 1:
            size += TABLE_OVERHEAD * (len(snapshot.tables) - 1)
        if len(value) > self.max_entry_size or size > self.max_size:
            return False
        if not self.unchanged(snapshot):
            self.stats.refused += 1
            return False
        if key in self._entries:
            self._remove(key)
        database = snapshot.database
        created = self._clock() if self.ttl else _NO_CLOCK
        entry = Entry(value, database, snapshot.tables, created, size)
        self._entries[key] = entry
        # (Not setdefault: its default, a new set, would be made on every store.)
        keys = self._by_database.get(database)
        if keys is None:
            keys = self._by_database[database] = set()
        keys.add(key)
        by_table = self._by_table
        for table in entry.tables:
            where = (database, table)
            keys = by_table.get(where)
            if keys is None:
                keys = by_table[where] = set()
            keys.add(key)
        stats = self.stats
        stats.used_bytes += size
        stats.entries += 1
        stats.stores += 1
        while stats.used_bytes > self.max_size:
            self._remove(next(iter(self._entries)))
            stats.evictions += 1
        return True

    def drop_tables(self, database: str, tables: Iterable[str]) -> None:
        """``tables`` of ``database`` were written: their entries go, and reads of them
        in flight are not stored."""
        tables = frozenset(tables)
        self._dropped(database, tables)
        for table in tables:
            keys = self._by_table.pop((database, table), None)
            if keys:
                for key in list(keys):
                    self._remove(key)
                self.stats.invalidations += len(keys)

    def drop_database(self, database: str) -> None:
        """Anything in ``database`` may have been written: all its entries go."""
        self._dropped(database, None)
        self.stats.whole_database_drops += 1
        keys = self._by_database.pop(database, None)
        if keys:
            self.stats.invalidations += len(keys)
            for key in list(keys):
                self._remove(key)

    def drop_where(self, match: Callable[[Hashable], bool]) -> int:
        """Drop every entry whose key ``match``es (``PGPOOL SET CACHE DELETE``, which
        looks at every entry); how many there were."""
        keys = [key for key in self._entries if match(key)]
        for key in keys:
            self._remove(key)
        return len(keys)

    def count_where(self, match: Callable[[Hashable], bool]) -> int:
        """How many entries' keys ``match``."""
        return sum(1 for key in self._entries if match(key))

    def clear(self) -> None:
        """Drop everything (a failover, a role change, ``PGPOOL CLEAR CACHE``)."""
        self._dropped(_EVERYWHERE, None)
        self._entries.clear()
        self._by_table.clear()
        self._by_database.clear()
        self.stats.entries = 0
        self.stats.used_bytes = 0

    def _remove(self, key: Hashable) -> None:
        entry = self._entries.pop(key)
        database = entry.database
        in_database = self._by_database.get(database)
        if in_database is not None:
            in_database.discard(key)
            if not in_database:
                del self._by_database[database]
        for table in entry.tables:
            where = (database, table)
            keys = self._by_table.get(where)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_table[where]
        self.stats.used_bytes -= entry.size
        self.stats.entries -= 1
