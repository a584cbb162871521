"""What routing needs from the primary's catalog: function volatility, unlogged tables and
view definitions, per database (parser_api's ``Catalog``).

The grammar cannot tell that ``SELECT f()`` writes or that ``SELECT * FROM v`` reads
an unlogged table through a view; the catalog can. Each database's catalog is read
from the primary on a control connection when its first client logs in, again every
``load_balance.catalog_refresh`` and soon after DDL went through the pooler. Until a
database's catalog is read (or while it cannot be), its statements run on the primary.

An unqualified name is resolved along the client's search_path when the pooler knows it
(``PathCatalog``, see ``pooler.routing.search_path``): the first schema on the path with
an object of that name decides, as in PostgreSQL. A schema PUBLIC may not use, owned by
someone else than the client's user, may be one the session cannot use, which
PostgreSQL then skips: its object and the next one along the path both count, the
strictest wins. Where the path is not known (the server's default, which a role or
database setting may change) or holds no object of that name, the name stands for every
schema's object of that name, the strictest of them: a volatile function of that name
anywhere makes the call a write, an unlogged table of that name anywhere makes the read
the primary's, and views of that name in several schemas count as all of their
definitions. Overloads of one schema are not told apart: the strictest answers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from parser_api import Persistence, Volatility
from parser_api.catalog import builtin_volatility
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
#: Every relation a statement can read (permanent ones too: on a search_path, the first
#: schema holding the name decides). A sequence counts as unlogged: a standby's copy runs
#: ahead of the primary's (nextval WAL-logs values 32 at a time), so its reads go to the
#: primary.
RELATIONS_SQL = f"""\
SELECT n.nspname::text, c.relname::text,
       CASE WHEN c.relkind = 'S' THEN 'u' ELSE c.relpersistence::text END,
       CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END AS definition
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE {_SYSTEM} AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')"""
#: Schemas PUBLIC may not use, with their owners (who may).
RESTRICTED_SQL = f"""\
SELECT n.nspname::text, pg_get_userbyid(n.nspowner)::text
FROM pg_namespace AS n
WHERE {_SYSTEM} AND NOT has_schema_privilege('public', n.oid, 'USAGE')"""

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

#: One schema's relation of a name: its persistence, and a view's definition.
Relation = tuple[Persistence, str | None]


def _key(schema: str | None, name: str) -> str:
    return name if schema is None else f"{schema}.{name}"


def _stricter(known: Volatility | None, value: Volatility) -> Volatility:
    return value if known is None or _STRICTNESS[value] > _STRICTNESS[known] else known


def _definitions(definitions: list[str]) -> str | None:
    """The definition of a view, or of several views one name may stand for as one text
    of several statements, whose classification is the strictest of theirs."""
    if len(definitions) < 2:
        return definitions[0] if definitions else None
    return "\n".join(definition.rstrip().rstrip(";") + ";" for definition in definitions)


# (weakref_slot: the Classifier remembers, weakly, which catalog it last checked a
# text against; a catalog is never changed once made.)
@dataclass(frozen=True, slots=True, weakref_slot=True)
class DatabaseCatalog:
    """One database's catalog as read at one moment (parser_api ``Catalog``), for a
    session whose search_path is not known; ``PathCatalog`` for one whose path is."""

    functions: dict[str, Volatility] = field(default_factory=dict)
    persistence: dict[str, Persistence] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    #: Operator overrides (``load_balance.write_functions`` / ``read_only_functions``).
    write_functions: frozenset[str] = frozenset()
    read_only_functions: frozenset[str] = frozenset()
    #: The rows of ``INVALIDATION_SQL`` (for ``pooler.cache.relations``).
    invalidation: tuple[tuple[str, str, str | None], ...] = ()
    #: Function name -> schema -> the strictest volatility of its functions of that name.
    function_schemas: dict[str, dict[str, Volatility]] = field(default_factory=dict)
    #: Relation name -> schema -> its relation of that name.
    relation_schemas: dict[str, dict[str, Relation]] = field(default_factory=dict)
    #: The rows of ``RESTRICTED_SQL``: schema -> owner.
    restricted: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_rows(
        cls,
        functions: Iterable[Sequence[str]],
        relations: Iterable[Sequence[str | None]],
        write_functions: frozenset[str] = frozenset(),
        read_only_functions: frozenset[str] = frozenset(),
        restricted: Iterable[Sequence[str]] = (),
    ) -> DatabaseCatalog:
        """From the rows of ``FUNCTIONS_SQL``, ``RELATIONS_SQL`` and ``RESTRICTED_SQL``."""
        function_schemas: dict[str, dict[str, Volatility]] = {}
        for schema, name, letter in functions:
            schemas = function_schemas.setdefault(name, {})
            schemas[schema] = _stricter(schemas.get(schema), Volatility(letter))
        volatility: dict[str, Volatility] = {}
        for name, schemas in function_schemas.items():
            for schema, value in schemas.items():
                volatility[f"{schema}.{name}"] = value
                volatility[name] = _stricter(volatility.get(name), value)
        relation_schemas: dict[str, dict[str, Relation]] = {}
        for where, what, kept, definition in relations:
            assert where is not None and what is not None and kept is not None
            relation_schemas.setdefault(what, {})[where] = (Persistence(kept), definition)
        persistence: dict[str, Persistence] = {}
        views: dict[str, str] = {}
        for name, by_schema in relation_schemas.items():
            for schema, (kept, definition) in by_schema.items():
                if kept != Persistence.PERMANENT:
                    persistence[f"{schema}.{name}"] = kept
                    # A name alone: unlogged if any schema's relation of that name is.
                    persistence.setdefault(name, kept)
                if definition is not None:
                    views[f"{schema}.{name}"] = definition
            combined = _definitions([d for _, d in by_schema.values() if d is not None])
            if combined is not None:
                views[name] = combined
        return cls(
            volatility,
            persistence,
            views,
            write_functions,
            read_only_functions,
            function_schemas=function_schemas,
            relation_schemas=relation_schemas,
            restricted={schema: owner for schema, owner in restricted},
        )

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
        """The SELECT of a view of that name (of each, where several schemas have one)."""
        return self.views.get(_key(schema, name))


@dataclass(frozen=True, slots=True, weakref_slot=True)
class PathCatalog:
    """A database's catalog as a session with a known search_path sees it (parser_api
    ``Catalog``): an unqualified name is the object of the first schema on ``path``
    that has one of that name; qualified names, and names no schema on the path has,
    are answered by ``base``."""

    base: DatabaseCatalog
    #: Schema names in PostgreSQL's order, pg_catalog in its place, ``$user`` replaced.
    path: tuple[str, ...]
    #: Schemas on the path the session may be unable to use: PostgreSQL may skip them.
    unsure: frozenset[str]

    @classmethod
    def of(cls, base: DatabaseCatalog, path: tuple[str, ...], user: str) -> PathCatalog:
        """``base`` for a session of ``user`` with search_path ``path``."""
        restricted = base.restricted
        return cls(base, path, frozenset(s for s in path if restricted.get(s, user) != user))

    def _along(self, holders: Mapping[str, object], also: str | None = None) -> tuple[str, ...]:
        """The schemas whose object of a name the session may reach: the first on the
        path among ``holders`` (or ``also``), and before it those it may not use."""
        found: tuple[str, ...] = ()
        unsure = self.unsure
        for schema in self.path:
            if schema in holders or schema == also:
                found += (schema,)
                if schema not in unsure:
                    break
        return found

    def _functions(self, name: str, nargs: int) -> tuple[str, ...]:
        holders = self.base.function_schemas.get(name)
        if holders is None:
            return ()
        # A built-in of that name is pg_catalog's (parser_api knows it).
        builtin = "pg_catalog" if builtin_volatility(name, nargs) is not None else None
        return self._along(holders, builtin)

    def _relations(self, name: str) -> list[Relation]:
        holders = self.base.relation_schemas.get(name)
        if holders is None:
            return []
        return [holders[schema] for schema in self._along(holders)]

    def function_volatility(self, schema: str | None, name: str, nargs: int) -> Volatility | None:
        """The volatility of the function the name calls on this path."""
        base = self.base
        found = self._functions(name, nargs) if schema is None else ()
        if not found:
            return base.function_volatility(schema, name, nargs)
        answer = None
        for where in found:
            volatility = base.function_volatility(where, name, nargs)
            if volatility is not None:
                answer = _stricter(answer, volatility)
        return answer

    def function_is_read_only(self, schema: str | None, name: str, nargs: int) -> bool:
        """Listed in ``load_balance.read_only_functions``, as the name resolves here."""
        base = self.base
        found = self._functions(name, nargs) if schema is None else ()
        if not found:
            return base.function_is_read_only(schema, name, nargs)
        return all(base.function_is_read_only(where, name, nargs) for where in found)

    def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
        """Unlogged or temporary, for the relation the name reads on this path."""
        found = self._relations(name) if schema is None else []
        if not found:
            return self.base.relation_persistence(schema, name)
        for persistence, _ in found:
            if persistence != Persistence.PERMANENT:
                return persistence
        return None

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """The SELECT of the view the name reads on this path, if it is one."""
        found = self._relations(name) if schema is None else []
        if not found:
            return self.base.view_definition(schema, name)
        return _definitions([definition for _, definition in found if definition is not None])


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
                    restricted = await conn.fetch(RESTRICTED_SQL)
                finally:
                    conn.terminate()
        except CONTROL_ERRORS as exc:
            log.warning(
                "cannot read the catalog; its statements run on the primary",
                extra={"database": database, "why": str(exc)},
            )
            return None
        catalog = DatabaseCatalog.from_rows(
            [tuple(row) for row in functions],
            [tuple(row) for row in relations],
            *self._overrides,
            restricted=[tuple(row) for row in restricted],
        )
        return replace(catalog, invalidation=tuple(tuple(row) for row in invalidation))
