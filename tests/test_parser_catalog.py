"""parser_api's Catalog: what the grammar alone can't know, and the shipped pg_proc table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from parser_api import (
    Catalog,
    Classifier,
    EffectKind,
    Persistence,
    Route,
    SessionEffect,
    StaticCatalog,
    Volatility,
    classify,
)
from parser_api import builtin_functions as builtins
from parser_api.catalog import builtin_volatility
from parser_api.classify import MAX_VIEW_DEPTH

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


class OlderCatalog:
    """A session catalog written before views were looked through (no view_definition)."""

    def function_volatility(self, schema: str | None, name: str, nargs: int) -> Volatility | None:
        return Volatility.IMMUTABLE if name == "f" else None

    def function_is_read_only(self, schema: str | None, name: str, nargs: int) -> bool:
        return False

    def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
        return Persistence.TEMPORARY if (schema, name) == ("pg_temp", "x") else None


def test_any_object_with_the_methods_is_a_catalog() -> None:
    """Catalog is a Protocol: the pooler implements it over its own pg_proc cache."""

    class SessionCatalog(OlderCatalog):
        def view_definition(self, schema: str | None, name: str) -> str | None:
            return "SELECT pg_is_in_recovery()" if name == "v" else None

    catalog = SessionCatalog()
    assert isinstance(catalog, Catalog)
    assert isinstance(StaticCatalog(), Catalog)
    assert classify("SELECT f()", catalog=catalog).cacheable
    assert classify("SELECT g()", catalog=catalog).route is Route.WRITE
    assert classify("SELECT * FROM v", catalog=catalog).route is Route.WRITE


def test_a_catalog_without_view_definition_knows_no_views() -> None:
    """Catalogs written before views were looked through keep working."""
    older = OlderCatalog()
    sql = "SELECT * FROM v WHERE id = 1"
    # The type checker rightly says it lacks a method: this is the run-time promise.
    assert classify(sql, catalog=older) == classify(sql)  # type: ignore[arg-type]
    assert Classifier().classify(sql, catalog=older) == classify(sql)  # type: ignore[arg-type]
    assert classify("SELECT * FROM pg_temp.x", catalog=older).route is Route.WRITE  # type: ignore[arg-type]


VIEWS = StaticCatalog(
    functions={"log_note": Volatility.VOLATILE, "lookup_f": Volatility.STABLE},
    relations={"scratch": Persistence.UNLOGGED, "app.scratch": Persistence.PERMANENT},
    views={
        "plain_v": "SELECT id, owner FROM accounts WHERE balance > 300",
        "notes_v": "SELECT log_note('viewed') AS id",
        "scratch_v": "SELECT id, payload FROM scratch",
        "app.scratch_v": "SELECT id, payload FROM app.scratch",
        "nested_v": "SELECT id FROM scratch_v",
        "nested_plain_v": "SELECT p.id FROM plain_v p JOIN app.scratch_v s USING (id)",
        "deep_v": "SELECT * FROM nested_v",
        "lock_v": "SELECT pg_advisory_lock(1) AS locked",
        "node_v": "SELECT pg_is_in_recovery() AS standby",
        "replication_v": "SELECT client_addr FROM pg_stat_replication",
        "clock_v": "SELECT now() AS at",
        "lookup_v": "SELECT lookup_f(1) AS n",
        "loop_a": "SELECT * FROM loop_b",
        "loop_b": "SELECT * FROM loop_a",
        "bad_v": "SELEC 1",
        "temp_v": "SELECT * FROM pg_temp.x",
    },
)


class TestViews:
    """A view runs its SELECT: the catalog's definition decides what reading it does."""

    @pytest.mark.parametrize(
        ("sql", "route", "reason"),
        [
            ("SELECT * FROM plain_v", Route.READ, None),
            ("SELECT * FROM nested_plain_v WHERE id = 3", Route.READ, None),
            ("SELECT * FROM app.scratch_v", Route.READ, None),
            ("SELECT * FROM notes_v", Route.WRITE, "view notes_v: volatile function log_note"),
            ("SELECT * FROM scratch_v", Route.WRITE, "view scratch_v: unlogged table scratch"),
            ("SELECT count(*) FROM accounts WHERE id IN (SELECT id FROM nested_v)", Route.WRITE,
             "view nested_v: view scratch_v: unlogged table scratch"),
            ("SELECT * FROM deep_v", Route.WRITE,
             "view deep_v: view nested_v: view scratch_v: unlogged table scratch"),
            ("SELECT * FROM temp_v", Route.WRITE, "view temp_v: temporary table pg_temp.x"),
            ("SELECT * FROM node_v", Route.WRITE,
             "view node_v: function pg_is_in_recovery answers for the node that runs it"),
            ("SELECT * FROM replication_v", Route.WRITE,
             "view replication_v: system catalog pg_stat_replication"),
            ("SELECT * FROM clock_v", Route.READ, "view clock_v: time-dependent function now"),
            ("SELECT * FROM lookup_v", Route.READ,
             "view lookup_v: function lookup_f may read other tables"),
            ("SELECT * FROM loop_a", Route.WRITE,
             "view loop_a: view loop_b: view loop_a refers to itself"),
            ("SELECT * FROM bad_v", Route.WRITE, "view bad_v does not parse"),
            ("WITH plain_v AS (SELECT 1) SELECT * FROM plain_v", Route.READ, None),
            # planned, not run: only what a standby refuses to plan counts
            ("EXPLAIN SELECT * FROM notes_v", Route.READ, "not a plain read"),
            ("EXPLAIN SELECT * FROM nested_v", Route.WRITE, "not a plain read"),
            ("EXPLAIN ANALYZE SELECT * FROM notes_v", Route.WRITE, "not a plain read"),
            ("COPY (SELECT * FROM notes_v) TO STDOUT", Route.WRITE, "not a plain read"),
            ("DECLARE c CURSOR FOR SELECT * FROM scratch_v", Route.WRITE, "not a plain read"),
        ],
    )
    def test_route(self, sql: str, route: Route, reason: str | None) -> None:
        result = classify(sql, catalog=VIEWS)
        assert (result.route, result.uncacheable_reason) == (route, reason)
        assert Classifier().classify(sql, catalog=VIEWS) == result

    def test_what_the_view_leaves_in_the_session_counts(self) -> None:
        result = classify("SELECT * FROM lock_v", catalog=VIEWS)
        assert result.route is Route.WRITE
        assert result.session_effects == (
            SessionEffect(EffectKind.ADVISORY_LOCK, "pg_advisory_lock"),
        )

    def test_tables_are_those_the_text_names(self) -> None:
        result = classify("SELECT * FROM nested_v", catalog=VIEWS)
        assert (result.reads_tables, result.functions) == (("nested_v",), ())

    def test_without_the_catalog_a_view_is_a_table(self) -> None:
        assert classify("SELECT * FROM notes_v").route is Route.READ

    def test_nesting_deeper_than_the_limit_is_the_primarys(self) -> None:
        depth = MAX_VIEW_DEPTH + 1
        views = {f"v{n}": f"SELECT * FROM v{n + 1}" for n in range(depth)}
        views[f"v{depth}"] = "SELECT 1"
        catalog = StaticCatalog(views=views)
        result = classify("SELECT * FROM v0", catalog=catalog)
        assert result.route is Route.WRITE
        assert result.uncacheable_reason is not None
        assert result.uncacheable_reason.endswith("nests too deeply")
        shallow = StaticCatalog(views={**views, "v3": "SELECT 1"})
        assert classify("SELECT * FROM v0", catalog=shallow).cacheable

    def test_the_classifier_asks_the_catalog_on_every_call(self) -> None:
        """A cached text is resolved again against each session's views."""
        classifier = Classifier()
        sql = "SELECT * FROM report WHERE id = 1"
        harmless = StaticCatalog(views={"report": "SELECT * FROM accounts"})
        writing = StaticCatalog(views={"report": "SELECT log_note('x') AS id"})
        assert classifier.classify(sql, catalog=harmless).route is Route.READ
        assert classifier.classify(sql, catalog=writing).route is Route.WRITE
        assert classifier.classify(sql, catalog=harmless).route is Route.READ
        other = "SELECT * FROM report WHERE id = 2"
        assert classifier.classify(other, catalog=writing, offsets=False).route is Route.WRITE
        assert classifier.classify(other).route is Route.READ
