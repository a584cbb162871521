"""Names resolved along a client's search_path, sans-IO: the catalog's rules
(``PathCatalog``), the path a session has (``routing.search_path``) and when it is read
again (``ClientSettings.on_search_path``)."""

from __future__ import annotations

import pytest

from parser_api import Catalog, Route, classify
from pooler.cluster.catalog import DatabaseCatalog, PathCatalog
from pooler.engine.settings import ClientSettings, operations
from pooler.routing.search_path import (
    SessionCatalog,
    session_path,
    split_list,
    startup_value,
    statement_value,
)

# a.t unlogged, b.t permanent; a.f writes, b.f immutable; a.v calls a.f, b.v is plain;
# c holds only a permanent t; r (PUBLIC may not use it, owned by "owner") an unlogged t.
CATALOG = DatabaseCatalog.from_rows(
    [("a", "f", "v"), ("b", "f", "i"), ("b", "f", "s"), ("b", "g", "i")],
    [
        ("a", "t", "u", None),
        ("b", "t", "p", None),
        ("c", "t", "p", None),
        ("r", "t", "u", None),
        ("a", "v", "p", "SELECT a.f() AS v;"),
        ("b", "v", "p", " SELECT 2 AS v;"),
        ("c", "v", "p", None),
    ],
    read_only_functions=frozenset({"b.g"}),
    restricted=[("r", "owner")],
)
READS = ("SELECT * FROM t", "SELECT f()", "SELECT * FROM v")


def _routes(catalog: Catalog) -> list[str]:
    return [classify(sql, catalog).route.value for sql in READS]


def _on(*path: str, user: str = "app") -> PathCatalog:
    return PathCatalog.of(CATALOG, ("pg_catalog", *path), user)


def test_without_a_path_a_name_is_the_strictest_of_its_objects() -> None:
    assert _routes(CATALOG) == ["write", "write", "write"]
    assert CATALOG.function_volatility(None, "f", 0) == "v"
    # Both views count, whatever order the rows came in.
    assert CATALOG.views["v"] == "SELECT a.f() AS v;\n SELECT 2 AS v;"
    harmless_first = DatabaseCatalog.from_rows(
        [("a", "f", "v")], [("b", "v", "p", "SELECT 2;"), ("a", "v", "p", "SELECT a.f();")]
    )
    assert classify("SELECT * FROM v", harmless_first).route is Route.WRITE


@pytest.mark.parametrize(
    ("path", "routes"),
    [
        (("a",), ["write", "write", "write"]),
        (("b",), ["read", "read", "read"]),
        (("b", "a"), ["read", "read", "read"]),
        (("a", "b"), ["write", "write", "write"]),
        # c has t and v (a table): they decide; f is a's, the next on the path.
        (("c", "a"), ["read", "write", "read"]),
        # Not on the path at all (or in no schema of it): the strictest of all.
        (("nowhere",), ["write", "write", "write"]),
        ((), ["write", "write", "write"]),
    ],
)
def test_the_first_schema_on_the_path_decides(path: tuple[str, ...], routes: list[str]) -> None:
    assert _routes(_on(*path)) == routes


def test_qualified_names_are_not_resolved() -> None:
    catalog = _on("b")
    assert classify("SELECT * FROM a.t", catalog).route is Route.WRITE
    assert classify("SELECT a.f()", catalog).route is Route.WRITE
    assert catalog.function_volatility("a", "f", 0) == "v"


def test_overloads_of_one_schema_take_the_strictest() -> None:
    assert _on("b").function_volatility(None, "f", 0) == "s"
    assert _on("b").function_volatility(None, "f", 3) == "s"


def test_a_schema_the_session_may_not_use_counts_with_the_next_one() -> None:
    # PUBLIC may not use r: another role's session may skip it, so b.t counts too.
    assert _on("r", "b").relation_persistence(None, "t") == "u"
    assert _on("r", "b", user="owner").relation_persistence(None, "t") == "u"
    assert _on("b", "r").relation_persistence(None, "t") is None
    # Its owner's session uses it.
    assert PathCatalog.of(CATALOG, ("b",), "owner").unsure == frozenset()
    assert _on("r", "b").unsure == frozenset({"r"})


def test_overrides_follow_the_resolution() -> None:
    assert _on("b").function_is_read_only(None, "g", 0)
    assert not _on("a").function_is_read_only(None, "g", 0)
    # A built-in is pg_catalog's, first on the path unless placed.
    assert _on("b").function_volatility(None, "now", 0) is None
    assert not _on("b").function_is_read_only(None, "random", 0)


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("a, b", ["a", "b"]),
        (' A , "B""c", "x, y" ', ["a", 'B"c', "x, y"]),
        ('"$user", public', ["$user", "public"]),
        ("", []),
        ("a,", None),
        ("a b", None),
        ('"a', None),
        ('""', None),
    ],
)
def test_a_list_splits_as_postgresql_splits_it(value: str, names: list[str] | None) -> None:
    assert split_list(value) == names


@pytest.mark.parametrize(
    ("statement", "value"),
    [
        ("SET search_path = b", ["b"]),
        ("SET SESSION search_path TO \"$user\", Public, 'x, y'", ["$user", "public", "x, y"]),
        ("SET search_path TO DEFAULT", "default"),
        ("SET search_path = ''", [""]),
        ("SELECT pg_catalog.set_config('search_path', 'a, \"B\"', false)", ["a", "B"]),
        ("SET search_path FROM CURRENT", None),
        ("SET search_path = E'a'", None),
        ("SET search_path = a,", None),
    ],
)
def test_what_a_kept_statement_sets(statement: str, value: list[str] | str | None) -> None:
    assert statement_value(statement) == value


def test_the_startup_packet_sets_it_directly_or_in_options() -> None:
    assert startup_value([("options", "-c search_path=a")]) == "a"
    assert startup_value([("options", "-c geqo=off -csearch_path=a\\ b --search-path=c")]) == "c"
    assert startup_value([("options", "-c search_path=x\\,\\ y")]) == "x, y"
    assert startup_value([("search_path", "y"), ("options", "-c search_path=x")]) == "y"
    assert startup_value([("options", "-c geqo=off")]) is None
    assert startup_value([]) is None


def test_the_path_a_session_has() -> None:
    login = [("search_path", '"$user", b')]
    assert session_path({}, login, "app") == ("pg_catalog", "app", "b")
    assert session_path({"search_path": "SET search_path = a"}, login, "u") == ("pg_catalog", "a")
    assert session_path({"search_path": "SET search_path = b, pg_catalog"}, [], "u") == (
        "b",
        "pg_catalog",
    )
    # DEFAULT goes back to the startup packet's.
    assert session_path({"search_path": "SET search_path TO DEFAULT"}, login, "u") == (
        "pg_catalog",
        "u",
        "b",
    )
    # The server's default, or what the statement does not show: not known.
    assert session_path({}, [], "u") is None
    assert session_path({"search_path": "SET search_path TO DEFAULT"}, [], "u") is None
    assert session_path({"search_path": "SET search_path FROM CURRENT"}, login, "u") is None


def test_a_session_without_a_path_asks_the_database_catalog_itself() -> None:
    catalogs: list[DatabaseCatalog | None] = [CATALOG]
    paths: list[tuple[str, ...] | None] = [None]

    def read() -> DatabaseCatalog | None:
        return catalogs[0]

    session = SessionCatalog(read, lambda: paths[0], "app")
    assert session.current() is CATALOG
    assert session.current is read
    assert not session.update()
    paths[0] = ("pg_catalog", "b")
    assert session.update() and not session.update()
    first = session.current()
    assert isinstance(first, PathCatalog) and first.base is CATALOG
    assert session.current() is first
    catalogs[0] = DatabaseCatalog()
    again = session.current()
    assert isinstance(again, PathCatalog) and again.base is catalogs[0]
    catalogs[0] = None
    assert session.current() is None


def test_settings_say_when_search_path_committed() -> None:
    settings = ClientSettings()
    calls: list[str] = []
    settings.on_search_path = lambda: calls.append(settings.committed.get("search_path", ""))
    for number, sql in enumerate(
        ["SET work_mem = '1MB'", "SET search_path = b", "DISCARD ALL", "DISCARD ALL"], start=1
    ):
        settings.record(number, operations(sql, classify(sql), lambda text: classify(text)))
        assert settings.settle([(number - 1, b"I", 0, 0), (number, b"I", 0, 0)])
    # Not for work_mem, nor for a RESET ALL with no search_path to reset.
    assert calls == ["SET search_path = b", ""]
