"""The query cache of one pooler: the store, the freshness of each database's change
stream, and each database's relations; the client sessions' and the decoder's shared
state (sans-IO)."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable

from pooler.cache.key import KeySpaces, statement_text
from pooler.cache.positions import WritePositions
from pooler.cache.relations import ALL, Relations, Written
from pooler.cache.session import CacheSession
from pooler.cache.store import CacheStats, Store
from pooler.cache.watch import Watch
from pooler.cluster.catalog import DatabaseCatalog
from pooler.config import QueryCache as QueryCacheConfig

#: Keys remembered by ``QueryCache.admits``.
_SEEN_KEPT = 100_000


class QueryCache:
    """Cached answers of every database, and what decides whether they may be served."""

    def __init__(
        self,
        config: QueryCacheConfig,
        catalog: Callable[[str], DatabaseCatalog | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = Store(config.max_size, config.max_entry_size, config.ttl, clock)
        self.watch = Watch(config.ttl, clock)
        self._catalog = catalog
        self._spaces = KeySpaces()
        self._relations: dict[str, Relations] = {}
        self._positions = WritePositions()
        # Hashes of keys that missed while the store was full (``admits``).
        self._seen: set[int] = set()
        #: Asks the primary's WAL position after writes (``WalPositions.after_write``);
        #: None: results read on standbys are not stored.
        self.place: Callable[[Callable[[int], None]], None] | None = None
        #: Told of each database when its first client logs in (the change stream).
        self.on_database: Callable[[str], None] | None = None

    def admits(self, key: Hashable) -> bool:
        """Whether the answer of a miss of ``key`` is stored: always while the store has
        room; once it is full, only a key that missed before (a key seen once would
        evict one that may be read again, and storing costs a miss more than anything
        else)."""
        store = self.store
        if store.stats.used_bytes + store.max_entry_size <= store.max_size:
            return True
        seen = self._seen
        digest = hash(key)
        if digest in seen:
            seen.discard(digest)
            return True
        if len(seen) >= _SEEN_KEPT:
            seen.clear()
        seen.add(digest)
        return False

    @property
    def stats(self) -> CacheStats:
        """The counters SHOW POOL_CACHE shows (see ``CacheStats``)."""
        return self.store.stats

    def session(
        self, database: str, user: str, params: tuple[tuple[str, str], ...]
    ) -> CacheSession:
        """The cache for a client of ``database`` that logged in as ``user`` with the
        startup parameters ``params``; its database's changes are watched from now on."""
        if database not in self.watch.wanted:
            self.watch.wanted.add(database)
            if self.on_database is not None:
                self.on_database(database)
        # (A default isolation given at startup, even READ COMMITTED, is not looked into.)
        default_isolation = not any(
            "default_transaction_isolation" in f"{name}={value}".lower() for name, value in params
        )
        space = self._spaces.of(database, user, params)
        return CacheSession(self, database, space, default_isolation)

    def delete(self, database: str, user: str, text: str) -> int:
        """Drop every entry of ``user`` in ``database`` whose statement text is exactly
        ``text`` (pgpool-II's ``PGPOOL SET CACHE DELETE``); how many there were."""
        return self.store.drop_where(self._of_text(database, user, text))

    def stored(self, database: str, user: str, text: str) -> int:
        """How many entries of ``user`` in ``database`` have exactly ``text`` (EXPLAIN
        ROUTE)."""
        return self.store.count_where(self._of_text(database, user, text))

    def _of_text(self, database: str, user: str, text: str) -> Callable[[Hashable], bool]:
        spaces = self._spaces.of_user(database, user)
        raw = text.encode()

        def match(key: Hashable) -> bool:
            if not isinstance(key, tuple):
                return False
            space = key[0]
            if isinstance(space, tuple):
                # (space, settings): a client that changed a setting.
                space = space[0]
            return space in spaces and statement_text(key) == raw

        return match

    def pool_cache_row(self) -> list[tuple[str, str]]:
        """SHOW POOL_CACHE's one row, column by column: pgpool-II's columns (0 where one
        has no meaning here: there is no fixed hash table and no fragmentation), then
        ``decoding``, ours."""
        stats = self.stats
        return [
            ("num_cache_hits", str(stats.num_cache_hits)),
            ("num_selects", str(stats.num_selects)),
            ("cache_hit_ratio", f"{stats.cache_hit_ratio:.2f}"),
            ("num_hash_entries", "0"),
            ("used_hash_entries", str(stats.entries)),
            ("num_cache_entries", str(stats.entries)),
            ("used_cache_entries_size", str(stats.used_bytes)),
            ("free_cache_entries_size", str(stats.max_bytes - stats.used_bytes)),
            ("fragment_cache_entries_size", "0"),
            ("decoding", self.decoding),
        ]

    @property
    def decoding(self) -> str:
        """Whether writes that bypass the pooler are seen, for SHOW POOL_CACHE: "on",
        or why not (then only entries younger than ``ttl`` are served)."""
        watch = self.watch
        return "on" if watch.available else f"not available: {watch.reason}"

    def relations(self, database: str) -> Relations | None:
        """The database's relations from its current catalog; None while it is not
        read (then nothing is stored, and every write drops the whole database)."""
        catalog = self._catalog(database)
        if catalog is None:
            return None
        relations = self._relations.get(database)
        if relations is None or relations.catalog is not catalog:
            relations = self._relations[database] = Relations(catalog)
        return relations

    def drop(self, database: str, written: Written) -> None:
        """Drop what ``written`` reaches in ``database``."""
        if written is ALL:
            self.store.drop_database(database)
        else:
            self.store.drop_tables(database, written)

    def changed(self, database: str, tables: set[str], whole: bool, lsn: int) -> None:
        """The change stream says ``tables`` (bare names) of ``database`` were written
        (``whole``: and a transaction that changed no row, DDL say), at or before the
        primary's position ``lsn``."""
        written: Written = ALL
        if not whole:
            relations = self.relations(database)
            if relations is not None:
                written = relations.written(tables)
        self.drop(database, written)
        self._positions.seen(database, written, lsn)

    def settled(self, database: str, written: Written) -> None:
        """The transaction of a write through the pooler ended: its position is asked."""
        place = self.place
        if place is not None:
            keys = self._positions.writing(database, written)
            place(lambda lsn: self._positions.placed(keys, lsn))

    def standby_may_store(
        self, database: str, tables: frozenset[str], replayed: int | None
    ) -> bool:
        """A read of ``tables`` starting on a standby that had replayed up to
        ``replayed`` may be stored (see ``pooler.cache.positions``)."""
        return self.place is not None and self._positions.allows(database, tables, replayed)
