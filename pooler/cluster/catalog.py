"""What routing needs from the primary's catalog: function volatility, unlogged tables and
view definitions, per database (parser_api's ``Catalog``).

The grammar cannot tell that ``SELECT f()`` writes or that ``SELECT * FROM v`` reads
an unlogged table through a view; the catalog can. Each database's catalog is read
from the primary on a control connection when its first client logs in, again every
``load_balance.catalog_refresh`` and soon after DDL went through the pooler. Until a
database's catalog is read (or while it cannot be), its statements run on the primary.

Names are resolved without the session's search_path: an unqualified name stands for
every schema's object of that name, the strictest of them (a volatile function of that
name anywhere makes the call a write). Overloads are not told apart either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from parser_api import Persistence, Volatility
from pooler.cluster.control import CONTROL_ERRORS, control_connect
from pooler.cluster.nodes import Cluster
from pooler.config import Backend, HealthCheck

log = logging.getLogger("pooler.cluster")

APPLICATION_NAME = "pooler catalog"

_SYSTEM = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema')"
    " AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'"
)
FUNCTIONS_SQL = f"""\
SELECT n.nspname::text, p.proname::text, p.provolatile::text
FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
WHERE {_SYSTEM}"""
RELATIONS_SQL = f"""\
SELECT n.nspname::text, c.relname::text, c.relpersistence::text,
       CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END AS definition
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE {_SYSTEM} AND (c.relkind = 'v' OR c.relpersistence <> 'p')
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"""

#: What the query cache needs to know which entries a write reaches, one row per fact
#: (kind, relation, other relation): ``inherits`` (parent, child: partitions and
#: inheritance), ``view`` (view, a relation its definition reads), ``cascade``
#: (referenced, referencing table of a foreign key with an ON DELETE/UPDATE action),
#: ``trigger`` (a table with user triggers or rules: what they write is not in the
#: catalog), ``uncached`` (what a cached result may not read: a table with row-level
#: security, a sequence, a foreign table). Bare relation names.
INVALIDATION_SQL = f"""\
SELECT 'inherits', p.relname::text, c.relname::text
FROM pg_inherits AS i JOIN pg_class AS p ON p.oid = i.inhparent
JOIN pg_class AS c ON c.oid = i.inhrelid
UNION ALL
SELECT DISTINCT 'view', v.relname::text, t.relname::text
FROM pg_rewrite AS r JOIN pg_class AS v ON v.oid = r.ev_class
JOIN pg_depend AS d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
  AND d.refclassid = 'pg_class'::regclass
JOIN pg_class AS t ON t.oid = d.refobjid
WHERE v.relkind = 'v' AND t.oid <> v.oid
UNION ALL
SELECT DISTINCT 'cascade', p.relname::text, c.relname::text
FROM pg_constraint AS k JOIN pg_class AS p ON p.oid = k.confrelid
JOIN pg_class AS c ON c.oid = k.conrelid
WHERE k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') OR k.confupdtype IN ('c', 'n', 'd'))
UNION ALL
SELECT DISTINCT 'trigger', c.relname::text, NULL
FROM pg_trigger AS t JOIN pg_class AS c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal
UNION ALL
SELECT DISTINCT 'trigger', c.relname::text, NULL
FROM pg_rewrite AS r JOIN pg_class AS c ON c.oid = r.ev_class
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE r.rulename <> '_RETURN' AND {_SYSTEM}
UNION ALL
SELECT 'uncached', c.relname::text, NULL FROM pg_class AS c
WHERE c.relrowsecurity OR c.relkind IN ('S', 'f')"""

_STRICTNESS = {Volatility.IMMUTABLE: 0, Volatility.STABLE: 1, Volatility.VOLATILE: 2}


def _keys(schema: str, name: str) -> tuple[str, str]:
    return name, f"{schema}.{name}"


def _key(schema: str | None, name: str) -> str:
    return name if schema is None else f"{schema}.{name}"


@dataclass(frozen=True, slots=True)
class DatabaseCatalog:
    """One database's catalog as read at one moment (parser_api ``Catalog``)."""

    functions: dict[str, Volatility] = field(default_factory=dict)
    persistence: dict[str, Persistence] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    #: Operator overrides (``load_balance.write_functions`` / ``read_only_functions``).
    write_functions: frozenset[str] = frozenset()
    read_only_functions: frozenset[str] = frozenset()
    #: The rows of ``INVALIDATION_SQL`` (for ``pooler.cache.relations``).
    invalidation: tuple[tuple[str, str, str | None], ...] = ()

    @classmethod
    def from_rows(
        cls,
        functions: Iterable[Sequence[str]],
        relations: Iterable[Sequence[str | None]],
        write_functions: frozenset[str] = frozenset(),
        read_only_functions: frozenset[str] = frozenset(),
    ) -> DatabaseCatalog:
        """From the rows of ``FUNCTIONS_SQL`` and ``RELATIONS_SQL``."""
        volatility: dict[str, Volatility] = {}
        for schema, name, letter in functions:
            value = Volatility(letter)
            for key in _keys(schema, name):
                known = volatility.get(key)
                if known is None or _STRICTNESS[value] > _STRICTNESS[known]:
                    volatility[key] = value
        persistence: dict[str, Persistence] = {}
        views: dict[str, str] = {}
        for where, what, kept, definition in relations:
            assert where is not None and what is not None
            for key in _keys(where, what):
                # Several schemas may have the name: the first is kept.
                if definition is not None:
                    views.setdefault(key, definition)
                elif kept is not None:
                    persistence.setdefault(key, Persistence(kept))
        return cls(volatility, persistence, views, write_functions, read_only_functions)

    def function_volatility(self, schema: str | None, name: str, nargs: int) -> Volatility | None:
        """The strictest volatility of the functions of that name."""
        key = _key(schema, name)
        if key in self.write_functions or name in self.write_functions:
            return Volatility.VOLATILE
        return self.functions.get(key)

    def function_is_read_only(self, schema: str | None, name: str, nargs: int) -> bool:
        """Listed in ``load_balance.read_only_functions``."""
        return _key(schema, name) in self.read_only_functions or name in self.read_only_functions

    def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
        """Unlogged or temporary (of the relations of that name), else None."""
        return self.persistence.get(_key(schema, name))

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """The SELECT of a view of that name."""
        return self.views.get(_key(schema, name))


class Catalogs:
    """The catalog of each database clients use, read from the primary and kept fresh."""

    def __init__(
        self,
        backends: Sequence[Backend],
        health: HealthCheck,
        cluster: Cluster,
        refresh: float,
        write_functions: frozenset[str] = frozenset(),
        read_only_functions: frozenset[str] = frozenset(),
    ) -> None:
        self._backends = backends
        self._health = health
        self._cluster = cluster
        self._refresh = refresh
        self._overrides = (write_functions, read_only_functions)
        self._catalogs: dict[str, DatabaseCatalog | None] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._stale: set[str] = set()
        self._timer: asyncio.Task[None] | None = None

    def get(self, database: str) -> DatabaseCatalog | None:
        """The database's catalog, or None while it is not read (then it is being read)."""
        catalog = self._catalogs.get(database)
        if catalog is None and database not in self._loading:
            self._load(database)
        return catalog

    async def wait(self, database: str) -> None:
        """Return once the database's catalog is read, or could not be."""
        self.get(database)
        task = self._loading.get(database)
        if task is not None:
            await asyncio.shield(task)

    def reader(self, database: str) -> Callable[[], DatabaseCatalog | None]:
        """``get`` for one database, for a client's hot path."""
        self.get(database)
        catalogs = self._catalogs

        def current() -> DatabaseCatalog | None:
            return catalogs.get(database)

        return current

    def changed(self, database: str) -> None:
        """DDL went through: the catalog is read again, and until then not trusted."""
        self._catalogs[database] = None
        if database in self._loading:
            self._stale.add(database)
        else:
            self._load(database)

    def start(self) -> None:
        """Read every known catalog again each refresh period."""
        if self._refresh > 0:
            self._timer = asyncio.get_running_loop().create_task(self._refresh_all())

    async def stop(self) -> None:
        """Stop reading."""
        tasks = [*self._loading.values(), *([self._timer] if self._timer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh_all(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            for database in list(self._catalogs):
                if database not in self._loading:
                    self._load(database)

    def _load(self, database: str) -> None:
        task = asyncio.get_running_loop().create_task(self._read(database))
        self._loading[database] = task

    async def _read(self, database: str) -> None:
        try:
            catalog = await self._fetch(database)
            if database in self._stale:
                # DDL came while this was read: what was read may miss it.
                self._stale.discard(database)
                catalog = await self._fetch(database)
            if catalog is not None or database in self._stale:
                self._catalogs[database] = catalog
            # Else a refresh failed (no primary during a failover, say): what was read
            # before still holds, unless DDL made it None meanwhile.
        finally:
            del self._loading[database]

    async def _fetch(self, database: str) -> DatabaseCatalog | None:
        primary = self._cluster.view.primary
        if primary is None:
            return None
        health = self._health
        try:
            async with asyncio.timeout(health.timeout * 2):
                conn = await control_connect(
                    self._backends[primary], replace(health, database=database), APPLICATION_NAME
                )
                try:
                    functions = await conn.fetch(FUNCTIONS_SQL)
                    relations = await conn.fetch(RELATIONS_SQL)
                    invalidation = await conn.fetch(INVALIDATION_SQL)
                finally:
                    conn.terminate()
        except CONTROL_ERRORS as exc:
            log.warning(
                "cannot read the catalog; its statements run on the primary",
                extra={"database": database, "why": str(exc)},
            )
            return None
        catalog = DatabaseCatalog.from_rows(
            [tuple(row) for row in functions], [tuple(row) for row in relations], *self._overrides
        )
        return replace(catalog, invalidation=tuple(tuple(row) for row in invalidation))
