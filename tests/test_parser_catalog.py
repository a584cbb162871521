"""parser_api's Catalog: what the grammar alone can't know, and the shipped pg_proc table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from parser_api import (
    Catalog,
    Persistence,
    Route,
    StaticCatalog,
    Volatility,
    classify,
)
from parser_api import builtin_functions as builtins
from parser_api.catalog import builtin_volatility

ROOT = Path(__file__).resolve().parent.parent


class TestBuiltinTable:
    """data/pg_proc.json, generated from a PostgreSQL 15 pg_proc."""

    @pytest.mark.parametrize(
        ("name", "nargs", "volatility"),
        [
            ("lower", 1, Volatility.IMMUTABLE),
            ("now", 0, Volatility.STABLE),
            ("random", 0, Volatility.VOLATILE),
            ("nextval", 1, Volatility.VOLATILE),
            ("count", 0, Volatility.IMMUTABLE),
            ("to_char", 2, Volatility.STABLE),
            # VARIADIC: any count from the minimum up
            ("concat", 1, Volatility.STABLE),
            ("concat", 12, Volatility.STABLE),
            # defaults: every count between the required and all arguments
            ("make_interval", 0, Volatility.IMMUTABLE),
            ("make_interval", 7, Volatility.IMMUTABLE),
            # overloads with different volatility: the most volatile answers
            ("generate_series", 3, Volatility.STABLE),
        ],
    )
    def test_volatility(self, name: str, nargs: int, volatility: Volatility) -> None:
        assert builtin_volatility(name, nargs) is volatility

    @pytest.mark.parametrize(("name", "nargs"), [("lower", 3), ("no_such_function", 0)])
    def test_unknown(self, name: str, nargs: int) -> None:
        assert builtin_volatility(name, nargs) is None

    def test_reviewed_lists_name_real_builtins(self) -> None:
        """The reviewed lists only name functions pg_proc has, with the volatility assumed."""
        table = json.loads((ROOT / "parser_api/data/pg_proc.json").read_text())["functions"]
        for name in builtins.SIDE_EFFECT_FREE_VOLATILE:
            assert "v" in table[name].values(), name
        for name in builtins.TIME_DEPENDENT | builtins.STATE_DEPENDENT:
            assert "s" in table[name].values(), name
        missing = (builtins.PRIMARY_ONLY | builtins.SESSION_ADVISORY_LOCKS) - table.keys()
        assert not missing
        assert not builtins.SIDE_EFFECT_FREE_VOLATILE & builtins.PRIMARY_ONLY
        assert not builtins.NODE_IDENTITY_FUNCTIONS - table.keys()
        reviewed = builtins.SIDE_EFFECT_FREE_VOLATILE | builtins.PRIMARY_ONLY
        assert not builtins.NODE_IDENTITY_FUNCTIONS & reviewed

    def test_source_is_postgresql_15(self) -> None:
        data = json.loads((ROOT / "parser_api/data/pg_proc.json").read_text())
        assert "PostgreSQL 15." in data["source"]


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_pg_proc", ROOT / "scripts/gen_pg_proc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_merges_overloads_defaults_and_variadics() -> None:
    """scripts/gen_pg_proc.py turns pg_proc rows into the shipped table format."""
    gen = _generator()
    rows = "\n".join(
        [
            "f\t1\t0\tf\ti",
            "f\t1\t0\tf\tv",  # an overload with the same count: the more volatile wins
            "g\t3\t2\tf\ts",  # two defaults: 1, 2 or 3 arguments
            "h\t2\t0\tt\ti",  # VARIADIC: 2 or more
        ]
    )
    table = gen.build_table(rows)
    assert table == {"f": {"1": "v"}, "g": {"1": "s", "2": "s", "3": "s"}, "h": {"2+": "i"}}
    rendered = json.loads(gen.render("test", table))
    assert rendered == {"source": "test", "functions": table}


CATALOG = StaticCatalog(
    functions={
        "stable_f": Volatility.STABLE,
        "pure_f": Volatility.IMMUTABLE,
        "noisy_f": Volatility.VOLATILE,
        "quiet_f": Volatility.VOLATILE,
        ("sized_f", 2): Volatility.IMMUTABLE,
        "app.qualified_f": Volatility.STABLE,
    },
    read_only_functions=frozenset({"quiet_f", "pg_stat_reset", "nextval"}),
    relations={
        "t": Persistence.TEMPORARY,
        "u": Persistence.UNLOGGED,
        "p": Persistence.PERMANENT,
        "app.t": Persistence.PERMANENT,
    },
)


@pytest.mark.parametrize(
    ("sql", "route", "reason"),
    [
        # function volatility the caller's catalog knows
        ("SELECT stable_f()", Route.READ, "function stable_f may read other tables"),
        ("SELECT pure_f(1)", Route.READ, None),
        ("SELECT noisy_f()", Route.WRITE, "volatile function noisy_f"),
        ("SELECT quiet_f()", Route.READ, "volatile function quiet_f"),
        ("SELECT sized_f(1, 2)", Route.READ, None),
        ("SELECT sized_f(1)", Route.WRITE, "unknown function sized_f"),
        ("SELECT app.qualified_f()", Route.READ, "function app.qualified_f may read other tables"),
        ("SELECT other.pure_f(1)", Route.READ, None),
        ("SELECT missing_f()", Route.WRITE, "unknown function missing_f"),
        # a VOLATILE built-in the caller vouches for
        ("SELECT pg_stat_reset()", Route.READ, "volatile function pg_stat_reset"),
        # never for what a standby refuses or what lives where the writes are
        ("SELECT nextval('s')", Route.WRITE, "volatile function nextval"),
        ("CALL quiet_f()", Route.READ, "not a plain read"),
        ("CALL noisy_f()", Route.WRITE, "not a plain read"),
        ("EXPLAIN SELECT noisy_f()", Route.READ, "not a plain read"),
        # a standby has no temporary tables of the session and cannot read unlogged ones
        ("SELECT * FROM t", Route.WRITE, "temporary table t"),
        ("SELECT * FROM u", Route.WRITE, "unlogged table u"),
        ("SELECT * FROM p", Route.READ, None),
        ("SELECT * FROM app.t", Route.READ, None),
        ("SELECT * FROM p WHERE id IN (SELECT id FROM t)", Route.WRITE, "temporary table t"),
        ("EXPLAIN SELECT * FROM u", Route.WRITE, "not a plain read"),
        ("LOCK TABLE t IN ACCESS SHARE MODE", Route.WRITE, "not a plain read"),
        ("COPY u TO STDOUT", Route.WRITE, "not a plain read"),
    ],
)
def test_with_catalog(sql: str, route: Route, reason: str | None) -> None:
    """What the catalog adds to the grammar's answer."""
    result = classify(sql, catalog=CATALOG)
    assert (result.route, result.uncacheable_reason) == (route, reason)


@pytest.mark.parametrize(
    "sql", ["SELECT stable_f()", "SELECT pure_f(1)", "SELECT quiet_f()", "CALL quiet_f()"]
)
def test_without_catalog_unknown_functions_write(sql: str) -> None:
    assert classify(sql).route is Route.WRITE


def test_body_of_prepare_uses_the_catalog() -> None:
    result = classify("PREPARE q AS SELECT pure_f(1)", catalog=CATALOG)
    body = result.statements[0].body
    assert body is not None and body.route is Route.READ


def test_the_same_text_differs_by_session() -> None:
    """A session's temporary t hides the permanent t: the catalog decides, per call."""
    assert classify("SELECT * FROM t").route is Route.READ
    assert classify("SELECT * FROM t", catalog=CATALOG).route is Route.WRITE


def test_any_object_with_the_methods_is_a_catalog() -> None:
    """Catalog is a Protocol: the pooler implements it over its own pg_proc cache."""

    class SessionCatalog:
        def function_volatility(
            self, schema: str | None, name: str, nargs: int
        ) -> Volatility | None:
            return Volatility.IMMUTABLE if name == "f" else None

        def function_is_read_only(self, schema: str | None, name: str, nargs: int) -> bool:
            return False

        def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
            return Persistence.TEMPORARY if (schema, name) == ("pg_temp", "x") else None

    catalog = SessionCatalog()
    assert isinstance(catalog, Catalog)
    assert isinstance(StaticCatalog(), Catalog)
    assert classify("SELECT f()", catalog=catalog).cacheable
    assert classify("SELECT g()", catalog=catalog).route is Route.WRITE
