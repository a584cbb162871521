"""What the grammar alone cannot know: function volatility, temporary and unlogged tables,
what a view runs.

The caller implements `Catalog` for its session (search_path decides which function a
name calls, and a session's temporary ``t`` hides the permanent ``t``). Without one,
built-in functions are looked up in a table generated from a real ``pg_proc`` by
``scripts/gen_pg_proc.py`` (``data/pg_proc.json``) and every other function is presumed
to write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Protocol, TypeVar, runtime_checkable

_T = TypeVar("_T")


class Volatility(StrEnum):
    """``pg_proc.provolatile``: the values are PostgreSQL's own letters."""

    IMMUTABLE = "i"
    STABLE = "s"
    VOLATILE = "v"


class Persistence(StrEnum):
    """``pg_class.relpersistence``: the values are PostgreSQL's own letters."""

    PERMANENT = "p"
    UNLOGGED = "u"
    TEMPORARY = "t"


@runtime_checkable
class Catalog(Protocol):
    """What the caller knows about its session's functions and tables.

    ``schema`` is the schema written in the text, or None for an unqualified name (the
    caller resolves it with its search_path). Answer None for "don't know": parser_api
    then assumes the safe thing (an unknown function writes).
    """

    def function_volatility(self, schema: str | None, name: str, nargs: int) -> Volatility | None:
        """The volatility of the function called with ``nargs`` arguments, if known."""
        ...

    def function_is_read_only(self, schema: str | None, name: str, nargs: int) -> bool:
        """True for a VOLATILE function the caller vouches has no side effects."""
        ...

    def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
        """Whether the relation is permanent, unlogged or temporary, if known."""
        ...

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """The SELECT a view runs (``pg_get_viewdef``) when the relation is a view.

        None for anything else, materialized views included (they are read from their
        own storage), or when unknown. A catalog written before this method existed
        (without it) is taken to know no views.
        """
        ...


@dataclass(frozen=True)
class StaticCatalog:
    """A `Catalog` from fixed mappings, for tests, tools and callers with static schemas.

    Keys are names as the text writes them: ``"f"`` or ``"app.f"`` (a qualified lookup
    falls back to the bare name). ``functions`` maps a name to its volatility for any
    argument count, or ``(name, nargs)`` to it for one count; ``views`` maps a view's
    name to its SELECT text.
    """

    functions: Mapping[str | tuple[str, int], Volatility] = field(default_factory=dict)
    read_only_functions: frozenset[str] = frozenset()
    relations: Mapping[str, Persistence] = field(default_factory=dict)
    views: Mapping[str, str] = field(default_factory=dict)

    def function_volatility(self, schema: str | None, name: str, nargs: int) -> Volatility | None:
        """Look the function up by (name, nargs), then by name alone."""
        for key in _names(schema, name):
            volatility = self.functions.get((key, nargs), self.functions.get(key))
            if volatility is not None:
                return volatility
        return None

    def function_is_read_only(self, schema: str | None, name: str, nargs: int) -> bool:
        """Whether the name is listed in ``read_only_functions``."""
        return any(key in self.read_only_functions for key in _names(schema, name))

    def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
        """Look the relation up by its qualified name, then by its bare name."""
        return _lookup(self.relations, schema, name)

    def view_definition(self, schema: str | None, name: str) -> str | None:
        """Look the view up by its qualified name, then by its bare name."""
        return _lookup(self.views, schema, name)


def _lookup(mapping: Mapping[str, _T], schema: str | None, name: str) -> _T | None:
    # Unrolled _names: a pooler asks this twice per relation of every text it classifies
    # with a catalog.
    if schema is not None:
        found = mapping.get(f"{schema}.{name}")
        if found is not None:
            return found
    return mapping.get(name)


def _names(schema: str | None, name: str) -> tuple[str, ...]:
    return (name,) if schema is None else (f"{schema}.{name}", name)


# A name's overloads: volatility by exact argument count, and (minimum count,
# volatility) pairs for VARIADIC overloads.
_Overloads = tuple[dict[int, Volatility], tuple[tuple[int, Volatility], ...]]


@cache
def _builtin_table() -> dict[str, _Overloads]:
    data = json.loads(
        resources.files("parser_api").joinpath("data/pg_proc.json").read_text("utf-8")
    )
    table: dict[str, _Overloads] = {}
    for name, counts in data["functions"].items():
        exact: dict[int, Volatility] = {}
        variadic: list[tuple[int, Volatility]] = []
        for key, letter in counts.items():
            if key.endswith("+"):
                variadic.append((int(key[:-1]), Volatility(letter)))
            else:
                exact[int(key)] = Volatility(letter)
        table[name] = (exact, tuple(variadic))
    return table


_RANK = {Volatility.IMMUTABLE: 0, Volatility.STABLE: 1, Volatility.VOLATILE: 2}


def builtin_volatility(name: str, nargs: int) -> Volatility | None:
    """The volatility of ``pg_catalog.name`` called with ``nargs`` arguments, or None.

    Several overloads that accept the call: the most volatile one answers (the safe
    side, since argument types are unknown here).
    """
    overloads = _builtin_table().get(name)
    if overloads is None:
        return None
    exact, variadic = overloads
    found = exact.get(nargs)
    for minimum, volatility in variadic:
        if nargs >= minimum and (found is None or _RANK[volatility] > _RANK[found]):
            found = volatility
    return found
