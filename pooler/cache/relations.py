"""Which tables a statement reads and which entries a write reaches, from one database's
catalog (sans-IO).

Names are bare relation names (``app.t`` and ``t`` are both ``t``): the invalidation
facts are read without any session's search_path, so a write to one schema's ``t``
drops entries that read any ``t`` (more than needed, never less).

- A read of a view also reads the relations of its definition, views inside it too.
- A write to a table is a write to its partitions (or inheritance children) and to the
  tables it is a partition of: reading a partitioned table reads its partitions, and
  each partition can be read on its own.
- A write to a table whose rows a foreign key's ON DELETE / ON UPDATE action changes
  is a write to the referencing table too.
- A write to a table with user triggers or rules, or to a view that has them, may write
  anything (what a trigger function writes is not in the catalog): ``ALL``.
- Reading a table with row-level security is not cached: policies often depend on
  settings and roles that no key holds. Nor is reading a sequence (``nextval`` changes
  it and writes no row) or a foreign table (its rows change elsewhere).
- ``COMMIT PREPARED`` makes visible writes whose tables were dropped long before:
  ``ALL``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from functools import cache
from importlib import resources
from typing import Final

from parser_api import Classification, Route
from pooler.cluster.catalog import DatabaseCatalog

#: A write whose tables cannot be known: every entry of the database goes.
ALL: Final = None
#: What a write reaches: the tables, or ``ALL``.
Written = frozenset[str] | None

NOTHING: frozenset[str] = frozenset()
#: Lists of tables whose dependencies are remembered, per catalog.
_READS_KEPT = 10_000

# Statement kinds whose writes are exactly the tables the grammar names (plus what the
# catalog adds). Other utility statements (CREATE FUNCTION, CREATE VIEW, ALTER ROLE ...)
# change what statements mean: every entry of the database goes.
_TABLE_KINDS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "merge",
        "copy",
        "explain",
        "transaction",
        "utility:TruncateStmt",
        "utility:GrantStmt",
        "utility:AlterTableStmt",
        "utility:IndexStmt",
        "utility:VacuumStmt",
        "utility:ClusterStmt",
        "utility:RefreshMatViewStmt",
        "utility:DropStmt",
        "utility:CreateStmt",
        "utility:CreateTableAsStmt",
        "utility:LockStmt",
    }
)


def bare(name: str) -> str:
    """The relation name without its schema."""
    return name.rpartition(".")[2]


@cache
def _builtin_functions() -> frozenset[str]:
    data = resources.files("parser_api").joinpath("data/pg_proc.json").read_text("utf-8")
    return frozenset(json.loads(data)["functions"])


class Relations:
    """One catalog's relations, as the cache needs them."""

    __slots__ = (
        "_cascades",
        "_children",
        "_parents",
        "_reads",
        "_triggers",
        "_uncached",
        "_views",
        "catalog",
    )

    def __init__(self, catalog: DatabaseCatalog) -> None:
        #: The catalog these were read from.
        self.catalog = catalog
        self._children: dict[str, set[str]] = {}
        self._parents: dict[str, set[str]] = {}
        self._views: dict[str, set[str]] = {}
        self._cascades: dict[str, set[str]] = {}
        self._triggers: set[str] = set()
        self._uncached: set[str] = set()
        # What each list of tables read (as a classification gives it) depends on:
        # the same few lists come back with every statement of an application.
        self._reads: dict[tuple[str, ...], frozenset[str] | None] = {}
        for kind, name, other in catalog.invalidation:
            if kind == "inherits":
                assert other is not None
                self._children.setdefault(name, set()).add(other)
                self._parents.setdefault(other, set()).add(name)
            elif kind == "view":
                assert other is not None
                self._views.setdefault(name, set()).add(other)
            elif kind == "cascade":
                assert other is not None
                self._cascades.setdefault(name, set()).add(other)
            elif kind == "trigger":
                self._triggers.add(name)
            elif kind == "uncached":
                self._uncached.add(name)

    def reads(self, tables: tuple[str, ...]) -> frozenset[str] | None:
        """What a read of ``tables`` (as written) depends on: the names themselves and,
        through views, the relations under them; None when one of them may not be
        cached (row-level security, a sequence, a foreign table)."""
        memo = self._reads
        if tables in memo:
            return memo[tables]
        if len(memo) >= _READS_KEPT:
            memo.clear()
        found = memo[tables] = _closure(tables, self._uncached, (self._views,))
        return found

    def writes(self, classification: Classification) -> Written:
        """The tables a statement text may write, as entries name them (``NOTHING`` for
        a read, ``ALL`` when they cannot be known)."""
        if classification.route is not Route.WRITE:
            return NOTHING
        for statement in classification.statements:
            if statement.kind not in _TABLE_KINDS:
                return ALL
        if any(control.action == "commit_prepared" for control in classification.transaction):
            return ALL
        views = self.catalog.views
        if any(table in views or bare(table) in views for table in classification.reads_tables):
            # A read of a view that writes: its definition calls what writes.
            return ALL
        builtin = _builtin_functions()
        user = self.catalog.functions
        for function in classification.functions:
            if function in user or bare(function) not in builtin:
                # It may write anything (a function called by SELECT, a DO block's).
                return ALL
        return self.written(classification.writes_tables)

    def written(self, tables: Iterable[str]) -> Written:
        """What a write to ``tables`` reaches: their partition families, the tables
        their foreign-key actions change, and the tables of the views written through;
        ``ALL`` when any of them has triggers or rules."""
        return _closure(tables, self._triggers, (self._cascades, self._views), self._family)

    def _family(self, name: str) -> set[str]:
        """Every ancestor and descendant of ``name`` in the inheritance tree."""
        out: set[str] = set()
        for links in (self._parents, self._children):
            todo = [name]
            while todo:
                for other in links.get(todo.pop(), ()):
                    if other not in out:
                        out.add(other)
                        todo.append(other)
        return out


def _closure(
    tables: Iterable[str],
    stop: set[str],
    links: tuple[dict[str, set[str]], ...],
    more: Callable[[str], set[str]] | None = None,
) -> frozenset[str] | None:
    """``tables`` (bare names) and every name ``links`` (and ``more``) reach from them;
    None when any of them is in ``stop``."""
    out: set[str] = set()
    todo = [bare(table) for table in tables]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        if name in stop:
            return None
        out.add(name)
        for link in links:
            todo.extend(link.get(name, ()))
        if more is not None:
            todo.extend(more(name))
    return frozenset(out)
