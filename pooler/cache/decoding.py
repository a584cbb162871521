"""Writes that bypass the pooler (a cron job on the primary, a migration, another
pooler), read from the primary's committed changes through logical decoding.

Each database whose entries are wanted gets a temporary slot of its own (a pooler that
dies holds back no WAL), made and polled on one dedicated asyncpg connection (a
temporary slot belongs to the session that made it, and asyncpg cannot stream
replication), with ``test_decoding`` through ``pg_logical_slot_get_changes`` and
``skip-empty-xacts`` off, so that a transaction with no row changes (DDL, GRANT,
ANALYZE, temporary tables) still shows as a BEGIN and a COMMIT: each drops every entry
of the database. Each poll also reads a digest of the roles and their memberships,
which live in shared catalogs no slot decodes: when it changes the whole cache goes.

``Watch`` is told when each poll began, so that entries are served only while a poll
that began within the last second has read everything the primary had then. After a
slot is (re)made every entry of its database goes; after a failover the whole cache
goes and slots are made on the new primary.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from itertools import count

import asyncpg

from pooler.cache.query_cache import QueryCache
from pooler.cluster.control import CONTROL_ERRORS, control_connect
from pooler.cluster.nodes import Cluster, ClusterView
from pooler.config import Backend, HealthCheck

log = logging.getLogger("pooler.cache")

APPLICATION_NAME = "pooler cache"
#: Seconds between two polls of one slot (the window is one second).
POLL_INTERVAL = 0.2
#: Seconds before a failed slot connection is tried again.
RETRY_DELAY = 0.5

MAKE_SLOT_SQL = "SELECT pg_create_logical_replication_slot($1, 'test_decoding', true)"
# One round trip: the digest of the roles, the relations the changes wrote (each as
# quote_identifier wrote it; '' for a line that does not parse), how many
# transactions changed no row, and a position past every change decoded (taken once
# they are). Decoded lines are summed up here, so that a burst of writes costs the
# pooler a few names, not every line.
POLL_SQL = r"""
WITH changes AS (
    SELECT data, lag(data) OVER (ORDER BY n) AS previous
    FROM pg_logical_slot_get_changes(
        $1, NULL, NULL, 'include-xids', '0', 'skip-empty-xacts', '0'
    ) WITH ORDINALITY AS c(lsn, xid, data, n)
), written AS (
    SELECT substring(data FROM '^table (?:"(?:[^"]|"")*"|[^."]+)\.("(?:[^"]|"")*"|[^."\s:]+): ')
        AS name
    FROM changes WHERE data LIKE 'table %'
)
SELECT md5(coalesce((SELECT string_agg(r::text, ',' ORDER BY r.oid) FROM pg_roles AS r), '')
           || '|' || coalesce((SELECT string_agg(m::text, ',' ORDER BY m.roleid, m.member)
                               FROM pg_auth_members AS m), '')),
       (SELECT coalesce(array_agg(DISTINCT coalesce(name, '')), '{}') FROM written),
       (SELECT count(*) FROM changes WHERE data LIKE 'COMMIT%' AND previous LIKE 'BEGIN%'),
       (SELECT pg_current_wal_lsn() FROM (SELECT count(*) FROM changes) AS decoded)"""
# SQLSTATEs that say logical decoding cannot be used here (wal_level below logical, no
# test_decoding, a user that may not make slots, too few slots).
_UNAVAILABLE = frozenset({"55000", "58P01", "42501", "53400", "0A000"})

_slot_numbers = count(1)


def unquote(name: str) -> str:
    """A relation name as quote_identifier wrote it, as it is."""
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name


class Decoder:
    """A slot and its poll loop for each wanted database, on the current primary."""

    def __init__(
        self, cache: QueryCache, backends: Sequence[Backend], health: HealthCheck, cluster: Cluster
    ) -> None:
        self._cache = cache
        self._backends = backends
        self._health = health
        self._cluster = cluster
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._roles: str | None = None
        self._stopped = False
        self._check: asyncio.Task[None] | None = None
        #: Transactions with no row change seen (each dropped its database's entries).
        self.empty_transactions = 0
        cluster.on_change(self._view_changed)
        cache.on_database = self.wanted

    def start(self) -> None:
        """Say now whether logical decoding can be used; watch the databases wanted so
        far, and those wanted later."""
        self._check = asyncio.get_running_loop().create_task(self._check_wal_level())
        self._ensure()

    async def _check_wal_level(self) -> None:
        primary = self._cluster.view.primary
        if primary is None:
            return
        try:
            conn = await control_connect(self._backends[primary], self._health, APPLICATION_NAME)
            try:
                level = await conn.fetchval("SHOW wal_level")
            finally:
                conn.terminate()
        except CONTROL_ERRORS as exc:
            # The databases' own watchers will say what is wrong.
            log.debug("cannot read wal_level", extra={"why": str(exc)})
            return
        if level != "logical":
            self._unavailable(f"wal_level is {level}, not logical")

    def _ensure(self) -> None:
        if self._stopped or not self._cache.watch.available:
            return
        for database in self._cache.watch.wanted:
            if database not in self._tasks:
                task = asyncio.get_running_loop().create_task(self._watch(database))
                self._tasks[database] = task

    def wanted(self, database: str) -> None:
        """The first client of ``database`` logged in: watch it."""
        if database not in self._tasks:
            self._ensure()

    def _unavailable(self, reason: str) -> None:
        if not self._cache.watch.available:
            return
        log.warning(
            "logical decoding is not available: the query cache serves only entries"
            " younger than query_cache.ttl (none when it is 0)",
            extra={"why": reason},
        )
        self._cache.watch.unavailable(reason)
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    def _view_changed(self, old: ClusterView, new: ClusterView) -> None:
        if old.primary == new.primary:
            return
        # Another primary: what was cached may be ahead of it (asynchronous
        # replication) and the slots are gone with the old one.
        log.info("primary changed: the query cache is dropped", extra={"node": new.primary})
        self._cache.store.clear()
        for database in self._cache.watch.wanted:
            self._cache.watch.lost(database)
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        if not self._stopped:
            self._ensure()

    async def stop(self) -> None:
        """Stop polling; the slots go with their connections."""
        self._stopped = True
        tasks = [*self._tasks.values(), *([self._check] if self._check else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, database: str) -> None:
        watch = self._cache.watch
        while True:
            primary = self._cluster.view.primary
            if primary is None:
                await asyncio.sleep(RETRY_DELAY)
                continue
            try:
                await self._poll_loop(database, primary)
            except asyncpg.PostgresError as exc:
                watch.lost(database)
                if exc.sqlstate in _UNAVAILABLE:
                    self._unavailable(f"{exc.sqlstate}: {exc}")
                    return
                log.warning(
                    "query cache change stream failed; its entries are not served",
                    extra={"database": database, "why": str(exc)},
                )
            except CONTROL_ERRORS as exc:
                watch.lost(database)
                log.warning(
                    "query cache change stream lost; its entries are not served",
                    extra={"database": database, "why": str(exc) or type(exc).__name__},
                )
            await asyncio.sleep(RETRY_DELAY)

    async def _poll_loop(self, database: str, primary: int) -> None:
        cache = self._cache
        watch = cache.watch
        health = replace(self._health, database=database)
        conn = await control_connect(self._backends[primary], health, APPLICATION_NAME)
        try:
            slot = f"pooler_cache_{os.getpid()}_{next(_slot_numbers)}"
            # Waits for the transactions that were writing when it began.
            await conn.execute(MAKE_SLOT_SQL, slot)
            watch.slot_made(database)
            cache.store.drop_database(database)
            log.info("query cache watches changes", extra={"database": database, "slot": slot})
            while self._cluster.view.primary == primary:
                began = watch.now()
                # asyncio.timeout, not wait_for: in Python 3.11 wait_for may swallow the
                # cancel of a stop that comes as the poll ends, and this loop never ends.
                async with asyncio.timeout(self._health.timeout):
                    row = await conn.fetchrow(POLL_SQL, slot)
                self._apply(database, row[0], row[1], row[2], int(row[3]))
                watch.polled(database, began)
                await asyncio.sleep(POLL_INTERVAL)
        finally:
            watch.lost(database)
            conn.terminate()

    def _apply(self, database: str, roles: str, names: list[str], empty: int, lsn: int) -> None:
        cache = self._cache
        if self._roles is not None and roles != self._roles:
            log.info("roles changed: the query cache is dropped")
            cache.store.clear()
        self._roles = roles
        if names or empty:
            self.empty_transactions += empty
            # A line whose table could not be read ('') may have written anything.
            whole = empty > 0 or "" in names
            cache.changed(database, {unquote(name) for name in names}, whole, lsn)
