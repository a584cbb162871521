"""parser_api.classify: routes and every field of Classification, without a server.

The routes follow what a PostgreSQL 15 hot standby accepts and refuses (checked on a real
one; tests/test_parser_corpus.py holds the labelled oracle).
"""

from __future__ import annotations

import pytest

from parser_api import (
    NODE_IDENTITY_FUNCTIONS,
    NODE_IDENTITY_SETTINGS,
    NODE_IDENTITY_VIEWS,
    Classification,
    Dependency,
    EffectKind,
    ParseError,
    Route,
    SessionEffect,
    StaticCatalog,
    TransactionControl,
    Volatility,
    classify,
)

READ, SESSION, WRITE = Route.READ, Route.SESSION, Route.WRITE


def effects(sql: str) -> set[tuple[str, str | None]]:
    """The session effects of ``sql`` as (kind, name) pairs."""
    return {(effect.kind.value, effect.name) for effect in classify(sql).session_effects}


ROUTES = [
    # plain reads
    ("SELECT 1", READ),
    ("SELECT * FROM t WHERE id = 1", READ),
    ("VALUES (1), (2)", READ),
    ("TABLE t", READ),
    ("SELECT * FROM t JOIN u USING (id) WHERE EXISTS (SELECT 1 FROM w)", READ),
    ("SELECT lower(v), abs(n), now(), random(), clock_timestamp() FROM t", READ),
    ("SELECT count(*), string_agg(v, ','), json_agg(t) FROM t", READ),
    ("SELECT * FROM generate_series(1, 3)", READ),
    ("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY n), mode() WITHIN GROUP (ORDER BY v)"
     " FROM t", READ),
    ("SELECT concat_ws(',', VARIADIC ARRAY['a', 'b']), jsonb_set('{}', '{a}', '1')", READ),
    ("SELECT inet_server_addr(), inet_server_port()", READ),
    ("SELECT pg_wal_lsn_diff('0/3000000', '0/2000000')", READ),
    ("SELECT * FROM pg_stat_user_tables", READ),
    ("SHOW search_path", READ),
    ("SHOW ALL", READ),
    # data-modifying CTEs, SELECT INTO, CREATE TABLE AS
    ("WITH x AS (SELECT * FROM t) SELECT * FROM x", READ),
    ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", WRITE),
    ("WITH x AS (SELECT 1) SELECT * FROM (WITH y AS (INSERT INTO t VALUES (1)) SELECT 1) s", WRITE),
    ("SELECT * INTO new_t FROM t", WRITE),
    ("SELECT * INTO TEMP new_t FROM t", WRITE),
    ("CREATE TABLE new_t AS SELECT * FROM t", WRITE),
    ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t", WRITE),
    ("INSERT INTO t VALUES (1)", WRITE),
    ("UPDATE t SET v = 1", WRITE),
    ("DELETE FROM t", WRITE),
    ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", WRITE),
    # functions that write, or must run where the writes are
    ("SELECT nextval('s')", WRITE),
    ("SELECT pg_catalog.setval('s', 5)", WRITE),
    ("SELECT currval('s')", WRITE),
    ("SELECT pg_advisory_lock(1)", WRITE),
    ("SELECT pg_advisory_xact_lock(1)", WRITE),
    ("SELECT pg_notify('c', 'x')", WRITE),
    ("SELECT txid_current()", WRITE),
    ("SELECT pg_current_xact_id()", WRITE),
    ("SELECT pg_current_wal_lsn()", WRITE),
    # functions and views that answer for the node that runs them
    ("SELECT pg_is_in_recovery()", WRITE),
    ("SELECT pg_catalog.pg_is_in_recovery()", WRITE),
    ("SELECT pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn()", WRITE),
    ("SELECT txid_current_if_assigned()", WRITE),
    ("SELECT pg_backend_pid(), inet_server_port()", WRITE),
    ("SELECT pg_postmaster_start_time()", WRITE),
    ("SELECT * FROM pg_stat_replication", WRITE),
    ("SELECT * FROM pg_catalog.pg_stat_wal_receiver", WRITE),
    ("SELECT slot_name FROM pg_replication_slots WHERE active", WRITE),
    ("SELECT count(*) FROM pg_stat_activity", WRITE),
    ("SELECT * FROM t WHERE id IN (SELECT pid FROM pg_locks)", WRITE),
    ("EXPLAIN SELECT * FROM pg_stat_replication", READ),
    ("DO $$ BEGIN PERFORM pg_is_in_recovery(); END $$", WRITE),
    ("SHOW transaction_read_only", WRITE),
    ("SHOW in_hot_standby", WRITE),
    ("SELECT current_setting('in_hot_standby')", WRITE),
    ("SELECT current_setting('Transaction_Read_Only', true)", WRITE),
    ("SELECT current_setting('work_mem')", READ),
    ("SHOW default_transaction_read_only", READ),
    ("SELECT lo_create(0)", WRITE),
    ("SELECT pg_promote()", WRITE),
    ("SELECT pg_wal_replay_pause()", WRITE),
    ("SELECT pg_reload_conf()", WRITE),
    ("SELECT pg_stat_reset()", WRITE),
    ("SELECT loread(lo_open(42, 262144), 5)", READ),
    ("SELECT lo_open(42, 131072)", WRITE),
    ("SELECT id FROM t WHERE v = my_function(id)", WRITE),
    ("SELECT app.f()", WRITE),
    ("SELECT set_config('search_path', 'a', false)", SESSION),
    ("SELECT set_config('work_mem', '8MB', true)", SESSION),
    ("SELECT set_config('transaction_read_only', 'off', true)", WRITE),
    ("SELECT set_config(name, 'x', false) FROM settings", WRITE),
    ("SELECT setseed(0.5)", SESSION),
    # EXPLAIN, COPY
    ("EXPLAIN SELECT * FROM t", READ),
    ("EXPLAIN INSERT INTO t VALUES (1)", READ),
    ("EXPLAIN SELECT nextval('s')", READ),
    ("EXPLAIN (ANALYZE false) DELETE FROM t", READ),
    ("EXPLAIN ANALYZE SELECT * FROM t", READ),
    ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", WRITE),
    ("EXPLAIN (ANALYZE, BUFFERS) SELECT nextval('s')", WRITE),
    ("EXPLAIN (ANALYZE on) UPDATE t SET v = 1", WRITE),
    ("COPY t TO STDOUT", READ),
    ("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)", READ),
    ("COPY (INSERT INTO t VALUES (1) RETURNING *) TO STDOUT", WRITE),
    ("COPY t FROM STDIN", WRITE),
    # COPY TO a server file or program: the primary's file system is meant
    ("COPY t TO '/tmp/t.csv'", WRITE),
    ("COPY (SELECT * FROM t) TO '/tmp/t.csv' WITH (FORMAT csv)", WRITE),
    ("COPY t TO PROGRAM 'gzip > /tmp/t.gz'", WRITE),
    ("COPY (SELECT 1) TO PROGRAM 'cat > /dev/null'", WRITE),
    ("COPY (VALUES (1)) TO STDOUT", READ),
    # DO and CALL
    ("DO $$ BEGIN PERFORM 1; END $$", READ),
    ("DO $$ DECLARE n int; BEGIN SELECT count(*) INTO n FROM t; n := n + 1; END $$", READ),
    ("DO 'BEGIN RAISE NOTICE ''hi''; END'", READ),
    ("DO $$ BEGIN INSERT INTO t VALUES (1); END $$", WRITE),
    ("DO $$ BEGIN PERFORM nextval('s'); END $$", WRITE),
    ("DO $$ DECLARE n int := nextval('s'); BEGIN END $$", WRITE),
    ("DO $$ BEGIN EXECUTE 'SELECT 1'; END $$", WRITE),
    ("DO $$ BEGIN CREATE TEMP TABLE x (a int); END $$", WRITE),
    ("DO LANGUAGE plpython3u 'pass'", WRITE),
    ("DO $$ BEGIN SELEC 1; END $$", WRITE),
    ("CALL my_procedure(1)", WRITE),
    # LOCK TABLE: a standby grants the weak modes, but its lock blocks no writer on the
    # primary: every mode is the primary's
    ("LOCK TABLE t IN ACCESS SHARE MODE", WRITE),
    ("LOCK t IN ACCESS SHARE MODE NOWAIT", WRITE),
    ("LOCK TABLE t IN ROW SHARE MODE", WRITE),
    ("LOCK TABLE t IN ROW EXCLUSIVE MODE", WRITE),
    ("LOCK TABLE t IN SHARE UPDATE EXCLUSIVE MODE", WRITE),
    ("LOCK TABLE t IN SHARE MODE", WRITE),
    ("LOCK TABLE t IN SHARE ROW EXCLUSIVE MODE", WRITE),
    ("LOCK TABLE t IN EXCLUSIVE MODE", WRITE),
    ("LOCK TABLE t", WRITE),
    # LISTEN/NOTIFY
    ("LISTEN ch", WRITE),
    ("NOTIFY ch, 'x'", WRITE),
    ("UNLISTEN ch", SESSION),
    ("UNLISTEN *", SESSION),
    # maintenance
    ("VACUUM t", WRITE),
    ("VACUUM", WRITE),
    ("ANALYZE t", WRITE),
    ("CHECKPOINT", WRITE),
    ("REINDEX TABLE t", WRITE),
    ("CLUSTER t", WRITE),
    # DDL and temporary objects
    ("CREATE TEMP TABLE x (a int)", WRITE),
    ("CREATE TEMPORARY VIEW v AS SELECT 1", WRITE),
    ("CREATE TABLE x (a int)", WRITE),
    ("DROP TABLE t", WRITE),
    ("ALTER SYSTEM SET work_mem = '4MB'", WRITE),
    ("SELECT * FROM pg_temp.x", WRITE),
    # session state
    ("SET search_path TO a, b", SESSION),
    ("SET LOCAL work_mem = '8MB'", SESSION),
    ("SET ROLE bob", SESSION),
    ("SET SESSION AUTHORIZATION bob", SESSION),
    ("RESET ALL", SESSION),
    ("RESET search_path", SESSION),
    ("SET default_transaction_isolation = 'serializable'", SESSION),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", SESSION),
    ("SET transaction_read_only = off", WRITE),
    ("SET transaction_read_only = on", READ),
    ("SET transaction_isolation = 'serializable'", WRITE),
    ("SET LOCAL transaction_isolation TO serializable", WRITE),
    ("DISCARD ALL", SESSION),
    ("DISCARD TEMP", SESSION),
    ("LOAD 'auto_explain'", SESSION),
    ("SET CONSTRAINTS ALL DEFERRED", SESSION),
    # transaction control
    ("BEGIN", READ),
    ("START TRANSACTION", READ),
    ("BEGIN READ ONLY", READ),
    ("BEGIN ISOLATION LEVEL REPEATABLE READ", READ),
    ("BEGIN READ WRITE", WRITE),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE", WRITE),
    ("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE", WRITE),
    ("COMMIT", READ),
    ("ROLLBACK", READ),
    ("SAVEPOINT a", READ),
    ("RELEASE SAVEPOINT a", READ),
    ("ROLLBACK TO SAVEPOINT a", READ),
    ("COMMIT AND CHAIN", READ),
    ("PREPARE TRANSACTION 'g'", WRITE),
    ("COMMIT PREPARED 'g'", WRITE),
    ("ROLLBACK PREPARED 'g'", WRITE),
    ("SET TRANSACTION READ ONLY", READ),
    ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", READ),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", WRITE),
    ("SET TRANSACTION READ WRITE", WRITE),
    ("SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", WRITE),
    # prepared statements and cursors (names unknown to the library: see below)
    ("PREPARE q AS SELECT * FROM t", SESSION),
    ("PREPARE q AS INSERT INTO t VALUES (1)", SESSION),
    ("EXECUTE q", WRITE),
    ("DEALLOCATE q", SESSION),
    ("DEALLOCATE ALL", SESSION),
    ("DECLARE c CURSOR FOR SELECT * FROM t", READ),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t", SESSION),
    ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", WRITE),
    ("DECLARE c CURSOR FOR SELECT nextval('s')", WRITE),
    ("FETCH 10 FROM c", WRITE),
    ("MOVE c", WRITE),
    ("CLOSE c", WRITE),
    ("CLOSE ALL", SESSION),
    # row locks anywhere
    ("SELECT * FROM t FOR UPDATE", WRITE),
    ("SELECT * FROM t FOR KEY SHARE", WRITE),
    ("SELECT * FROM (SELECT * FROM t FOR SHARE) s", WRITE),
    ("WITH x AS (SELECT * FROM t FOR NO KEY UPDATE) SELECT * FROM x", WRITE),
    # comments and hints
    ("/* DELETE FROM t; */ SELECT 1", READ),
    ("SELECT 1 -- ; DELETE FROM t", READ),
    ("SELECT $$DROP TABLE t$$", READ),
    ("/*NO LOAD BALANCE*/ SELECT * FROM t", WRITE),
    # several statements: the strictest wins
    ("BEGIN; SELECT 1; COMMIT", READ),
    ("SET search_path = a; SELECT 1", SESSION),
    ("SELECT 1; INSERT INTO t VALUES (1)", WRITE),
    ("", READ),
    ("-- nothing", READ),
]


@pytest.mark.parametrize(("sql", "route"), ROUTES)
def test_route(sql: str, route: Route) -> None:
    """Each statement gets the route a hot standby and the pooler need."""
    assert classify(sql).route is route


def test_classification_is_immutable_and_hashable() -> None:
    """A frozen value the pooler can share between sessions."""
    result = classify("SELECT * FROM t")
    with pytest.raises(AttributeError):
        result.route = Route.WRITE  # type: ignore[misc]
    assert hash(result) == hash(classify("SELECT * FROM t"))
    assert result == classify("SELECT * FROM t")


@pytest.mark.parametrize(
    ("sql", "kinds"),
    [
        ("SELECT 1", ["select"]),
        ("VALUES (1)", ["select"]),
        ("INSERT INTO t VALUES (1)", ["insert"]),
        ("UPDATE t SET a = 1", ["update"]),
        ("DELETE FROM t", ["delete"]),
        ("MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE", ["merge"]),
        ("COPY t TO STDOUT", ["copy"]),
        ("EXPLAIN SELECT 1", ["explain"]),
        ("BEGIN; COMMIT", ["transaction", "transaction"]),
        ("SET a.b = 1", ["utility:VariableSetStmt"]),
        ("CREATE TABLE x (a int)", ["utility:CreateStmt"]),
        ("PREPARE q AS SELECT 1", ["utility:PrepareStmt"]),
    ],
)
def test_statement_kinds(sql: str, kinds: list[str]) -> None:
    """Kinds name the statement types the pooler cares about, pglast's node otherwise."""
    assert [statement.kind for statement in classify(sql).statements] == kinds


def test_kind_of_the_whole_text() -> None:
    """``kind`` is the only statement's, or says there are none or several."""
    assert classify("SELECT 1").kind == "select"
    assert classify("SELECT 1; SELECT 2").kind == "multiple"
    assert classify(" ; ").kind == "empty"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  SELECT 1 ;  ",
        "SELECT 1; SELECT 2;",
        "/* a */ SELECT 'é'; -- b\n  INSERT INTO t VALUES ('ü') ;",
        "SELECT '日本'; SELECT 2 -- trailing comment",
        "SELECT '😀x'; SELECT 'é' -- four-byte characters",
        "BEGIN;\n\tUPDATE t SET v = '€';\nCOMMIT",
    ],
)
def test_statement_offsets_are_characters(sql: str) -> None:
    """Offsets count characters (pglast's fast forms count UTF-8 bytes) and match split."""
    from parser_api import split

    statements = classify(sql).statements
    assert [(s.start, s.end) for s in statements] == [(p.start, p.end) for p in split(sql)]
    for statement in statements:
        text = sql[statement.start : statement.end]
        assert text == text.strip() and not text.endswith(";")


def test_statement_offsets_example() -> None:
    """Leading comments and the semicolon stay outside a statement."""
    sql = "/* a */ SELECT 'é';  SELECT 2"
    assert [(s.start, s.end) for s in classify(sql).statements] == [(8, 18), (21, 29)]


def test_per_statement_routes() -> None:
    """Each statement carries its own route; the text the strictest."""
    result = classify("SET a.b = 1; SELECT 1; DELETE FROM t")
    assert [s.route for s in result.statements] == [SESSION, READ, WRITE]
    assert result.route is WRITE


def test_transaction_control() -> None:
    """Transaction statements in order, with their options."""
    result = classify(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE; SAVEPOINT s1;"
        " RELEASE s1; ROLLBACK TO s1; COMMIT AND CHAIN; ROLLBACK; START TRANSACTION READ WRITE;"
        " PREPARE TRANSACTION 'g1'; COMMIT PREPARED 'g1'; ROLLBACK PREPARED 'g2'; END; ABORT"
    )
    assert result.transaction == (
        TransactionControl("begin", "repeatable read", True, True),
        TransactionControl("savepoint", name="s1"),
        TransactionControl("release", name="s1"),
        TransactionControl("rollback_to", name="s1"),
        TransactionControl("commit", chain=True),
        TransactionControl("rollback"),
        TransactionControl("begin", read_only=False),
        TransactionControl("prepare", name="g1"),
        TransactionControl("commit_prepared", name="g1"),
        TransactionControl("rollback_prepared", name="g2"),
        TransactionControl("commit"),
        TransactionControl("rollback"),
    )
    assert classify("SELECT 1").transaction == ()


@pytest.mark.parametrize(
    ("sql", "control"),
    [
        ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", TransactionControl("set", "serializable")),
        ("SET TRANSACTION READ ONLY", TransactionControl("set", read_only=True)),
        ("SET transaction_read_only = off", TransactionControl("set", read_only=False)),
        ("SET transaction_deferrable TO true", TransactionControl("set", deferrable=True)),
        ("SET TRANSACTION SNAPSHOT 'snap'", TransactionControl("set", name="snap")),
    ],
)
def test_set_transaction_is_transaction_control(sql: str, control: TransactionControl) -> None:
    """SET TRANSACTION and SET transaction_*: options of the current transaction only."""
    result = classify(sql)
    assert result.transaction == (control,)
    assert result.session_effects == ()


@pytest.mark.parametrize(
    ("sql", "reads", "writes"),
    [
        ("SELECT * FROM t, s.u, db.s.v", ("t", "s.u", "db.s.v"), ()),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM u) AND EXISTS (SELECT 1 FROM v)",
         ("t", "u", "v"), ()),
        ("WITH x AS (SELECT * FROM t) SELECT * FROM x, y", ("t", "y"), ()),
        ("WITH RECURSIVE r AS (SELECT 1 UNION SELECT n FROM r) SELECT * FROM r", (), ()),
        # a plain WITH list item sees only the items before it: here t is a table
        ("WITH t AS (SELECT * FROM t) SELECT * FROM t", ("t",), ()),
        ("INSERT INTO t SELECT * FROM u", ("u",), ("t",)),
        ("UPDATE s.t SET a = 1 FROM u WHERE t.id = u.id", ("u",), ("s.t",)),
        ("DELETE FROM t USING u WHERE t.id = u.id", ("u",), ("t",)),
        ("MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", ("u",), ("t",)),
        ("WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d",
         (), ("archive", "t")),
        ("SELECT * INTO new_t FROM t", ("t",), ("new_t",)),
        ("CREATE TABLE new_t AS SELECT * FROM t", ("t",), ("new_t",)),
        ("COPY t TO STDOUT", ("t",), ()),
        ("COPY t FROM STDIN", (), ("t",)),
        ("TRUNCATE t, s.u", (), ("t", "s.u")),
        ("DROP TABLE t, s.u", (), ("t", "s.u")),
        ("ALTER TABLE t ADD COLUMN b int", (), ("t",)),
        ("VACUUM t", (), ("t",)),
        ("LOCK TABLE t IN ACCESS SHARE MODE", ("t",), ()),
        ("SELECT * FROM t TABLESAMPLE SYSTEM (5) REPEATABLE (1)", ("t",), ()),
        ("EXPLAIN INSERT INTO t SELECT * FROM u", ("u", "t"), ()),
        ("DECLARE c CURSOR FOR SELECT * FROM t", ("t",), ()),
        ("PREPARE q AS SELECT * FROM t", (), ()),
        ('SELECT * FROM "Mixed Case"', ("Mixed Case",), ()),
    ],
)
def test_tables(sql: str, reads: tuple[str, ...], writes: tuple[str, ...]) -> None:
    """Tables read and written, schema-qualified as written, in text order, once each."""
    result = classify(sql)
    assert (result.reads_tables, result.writes_tables) == (reads, writes)


@pytest.mark.parametrize(
    ("sql", "functions"),
    [
        ("SELECT lower(v), pg_catalog.upper(v) FROM t", ("lower", "pg_catalog.upper")),
        ("WITH x AS (SELECT f1()) SELECT * FROM x WHERE f2() IN (SELECT f3())",
         ("f1", "f2", "f3")),
        ("INSERT INTO t VALUES (nextval('s'), now()) RETURNING g()", ("nextval", "now", "g")),
        ("SELECT * FROM generate_series(1, f(2))", ("generate_series", "f")),
        ("SELECT count(*) FILTER (WHERE h(x) > 0) OVER (PARTITION BY k(y)) FROM t",
         ("count", "h", "k")),
        ("SELECT CURRENT_TIMESTAMP, current_user, EXTRACT(year FROM d) FROM t",
         ("current_timestamp", "current_user", "extract")),
        ("SELECT f(1); SELECT f(2)", ("f",)),
        ("EXECUTE q(nextval('s'))", ("nextval",)),
        ("CALL app.proc(1)", ("app.proc",)),
    ],
)
def test_functions(sql: str, functions: tuple[str, ...]) -> None:
    """Every function called anywhere, as written, once each."""
    assert classify(sql).functions == functions


@pytest.mark.parametrize(
    ("sql", "locks"),
    [
        ("SELECT * FROM t FOR UPDATE", True),
        ("SELECT * FROM t FOR UPDATE OF t NOWAIT", True),
        ("SELECT * FROM t WHERE id IN (SELECT id FROM u FOR SHARE SKIP LOCKED)", True),
        ("WITH x AS (SELECT * FROM t FOR KEY SHARE) SELECT * FROM x", True),
        ("DECLARE c CURSOR FOR SELECT * FROM t FOR NO KEY UPDATE", True),
        ("SELECT * FROM t", False),
        ("EXPLAIN SELECT * FROM t FOR UPDATE", False),
    ],
)
def test_locks_rows(sql: str, locks: bool) -> None:
    """FOR UPDATE/SHARE anywhere, also in subqueries, CTEs and cursors."""
    assert classify(sql).locks_rows is locks


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SET search_path TO a", {("setting", "search_path")}),
        ('SET "Work_Mem" = 64', {("setting", "work_mem")}),
        ("SET TIME ZONE 'UTC'", {("setting", "timezone")}),
        ("SET ROLE bob", {("setting", "role")}),
        ("RESET ROLE", {("setting", "role")}),
        ("SET SESSION AUTHORIZATION DEFAULT", {("setting", "session_authorization")}),
        ("SET LOCAL search_path TO a", set()),
        ("RESET ALL", {("reset_all", None)}),
        ("SET default_transaction_isolation = 'serializable'",
         {("setting", "default_transaction_isolation"),
          ("standby_unsafe", "default_transaction_isolation")}),
        ("SET default_transaction_isolation = 'repeatable read'",
         {("setting", "default_transaction_isolation")}),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
         {("setting", "default_transaction_isolation"),
          ("setting", "default_transaction_read_only"),
          ("standby_unsafe", "default_transaction_isolation")}),
        ("SELECT set_config('search_path', 'a', false)", {("setting", "search_path")}),
        ("SELECT set_config('search_path', 'a', true)", set()),
        ("SELECT set_config('default_transaction_isolation', 'serializable', false)",
         {("setting", "default_transaction_isolation"),
          ("standby_unsafe", "default_transaction_isolation")}),
        ("SELECT set_config(k, v, false) FROM settings", {("setting", None)}),
        ("PREPARE q AS SELECT 1", {("prepare", "q")}),
        ("DEALLOCATE q", {("deallocate", "q")}),
        ("DEALLOCATE ALL", {("deallocate", None)}),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", {("hold_cursor", "c")}),
        ("DECLARE c CURSOR FOR SELECT 1", set()),
        ("CLOSE c", {("close_cursor", "c")}),
        ("CLOSE ALL", {("close_cursor", None)}),
        ('LISTEN "Mixed Case"', {("listen", "Mixed Case")}),
        ("UNLISTEN ch", {("unlisten", "ch")}),
        ("UNLISTEN *", {("unlisten", None)}),
        ("CREATE TEMP TABLE x (a int)", {("temp_object", "x")}),
        ("CREATE TABLE pg_temp.x (a int)", {("temp_object", "pg_temp.x")}),
        ("CREATE TEMP VIEW v AS SELECT 1", {("temp_object", "v")}),
        ("CREATE TEMP SEQUENCE s", {("temp_object", "s")}),
        ("CREATE TEMP TABLE x AS SELECT 1", {("temp_object", "x")}),
        ("SELECT 1 INTO TEMP x", {("temp_object", "x")}),
        ("CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
         {("temp_object", "pg_temp.f")}),
        ("CREATE TABLE x (a int)", set()),
        ("SELECT pg_advisory_lock(1), pg_try_advisory_lock_shared(2)",
         {("advisory_lock", "pg_advisory_lock"), ("advisory_lock", "pg_try_advisory_lock_shared")}),
        ("SELECT pg_advisory_xact_lock(1)", set()),
        ("SELECT pg_advisory_unlock_all()", {("advisory_unlock", "pg_advisory_unlock_all")}),
        ("DISCARD ALL", {("discard", "all")}),
        ("DISCARD SEQUENCES", {("discard", "sequences")}),
        ("LOAD 'auto_explain'", {("load", "auto_explain")}),
        ("SELECT setseed(0.1)", {("random_seed", None)}),
        ("DO $$ BEGIN SET search_path = a; END $$", {("setting", "search_path")}),
        ("SELECT * FROM t", set()),
        ("BEGIN READ ONLY", set()),
    ],
)
def test_session_effects(sql: str, expected: set[tuple[str, str | None]]) -> None:
    """What state a statement leaves behind for the pooler to replay or pin."""
    assert effects(sql) == expected


def test_session_effects_keep_text_order_without_repeats() -> None:
    """Several statements: their effects in order, each once."""
    result = classify("SET a.b = 1; PREPARE q AS SELECT 1; SET a.b = 2")
    assert result.session_effects == (
        SessionEffect(EffectKind.SETTING, "a.b"),
        SessionEffect(EffectKind.PREPARE, "q"),
    )


@pytest.mark.parametrize(
    ("sql", "depends_on"),
    [
        ("EXECUTE q1", (Dependency("prepared", "q1"),)),
        ("EXECUTE q1(1, 'a')", (Dependency("prepared", "q1"),)),
        ("FETCH 10 FROM c1", (Dependency("cursor", "c1"),)),
        ("FETCH ALL IN c1", (Dependency("cursor", "c1"),)),
        ("MOVE NEXT IN c1", (Dependency("cursor", "c1"),)),
        ("CLOSE c1", (Dependency("cursor", "c1"),)),
        ("EXPLAIN EXECUTE q1", (Dependency("prepared", "q1"),)),
        ("CREATE TABLE x AS EXECUTE q1", (Dependency("prepared", "q1"),)),
        ("CLOSE ALL", ()),
        ("DEALLOCATE q1", ()),
        ("SELECT 1", ()),
    ],
)
def test_depends_on(sql: str, depends_on: tuple[Dependency, ...]) -> None:
    """EXECUTE, FETCH, MOVE and CLOSE name what decides their route."""
    assert classify(sql).depends_on == depends_on


class TestPreparedAndCursors:
    """The caller says what a name refers to; the library routes by it."""

    read = classify("PREPARE q AS SELECT * FROM t WHERE id = $1")
    write = classify("PREPARE q AS INSERT INTO t VALUES ($1)")

    def test_prepare_records_its_body(self) -> None:
        (statement,) = self.read.statements
        assert statement.name == "q"
        assert statement.body is not None
        assert statement.body.route is READ and statement.body.reads_tables == ("t",)
        assert statement.body.statements[0].kind == "select"
        sql = "PREPARE q AS SELECT * FROM t WHERE id = $1"
        body = statement.body.statements[0]
        assert sql[body.start : body.end] == "SELECT * FROM t WHERE id = $1"

    def test_execute_of_a_read_reads(self) -> None:
        result = classify("EXECUTE q(1)", prepared={"q": self.read})
        assert result.route is READ
        assert result.reads_tables == ("t",)
        assert not result.cacheable

    def test_execute_of_a_write_writes(self) -> None:
        result = classify("EXECUTE q(1)", prepared={"q": self.write})
        assert result.route is WRITE
        assert result.writes_tables == ("t",)

    def test_execute_accepts_the_query_classification(self) -> None:
        query = classify("SELECT 1")
        assert classify("EXECUTE q", prepared={"q": query}).route is READ

    def test_execute_of_an_unknown_name_writes(self) -> None:
        assert classify("EXECUTE other", prepared={"q": self.read}).route is WRITE
        assert classify("EXECUTE q", cursors={"q": self.read}).route is WRITE

    def test_namespaces_are_separate(self) -> None:
        cursor = classify("DECLARE q CURSOR FOR SELECT * FROM t FOR UPDATE")
        prepared, cursors = {"q": self.read}, {"q": cursor}
        assert classify("EXECUTE q", prepared=prepared, cursors=cursors).route is READ
        assert classify("FETCH q", prepared=prepared, cursors=cursors).route is WRITE

    def test_fetch_move_close_follow_the_cursor(self) -> None:
        cursor = classify("DECLARE c CURSOR FOR SELECT * FROM t")
        locking = classify("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE")
        holdable = classify("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t")
        for sql in ("FETCH c", "MOVE c", "CLOSE c"):
            assert classify(sql, cursors={"c": cursor}).route is READ
            assert classify(sql, cursors={"c": locking}).route is WRITE
        assert classify("FETCH c", cursors={"c": holdable}).route is READ
        assert classify("CLOSE c", cursors={"c": holdable}).route is SESSION
        assert classify("FETCH c", cursors={"c": locking}).locks_rows

    def test_execute_carries_the_prepared_session_effects(self) -> None:
        prepared = classify("PREPARE q AS SELECT set_config('a.b', 'c', false)")
        result = classify("EXECUTE q", prepared={"q": prepared})
        assert result.route is SESSION
        assert result.session_effects == (SessionEffect(EffectKind.SETTING, "a.b", "c"),)

    def test_explain_execute_only_needs_the_name(self) -> None:
        assert classify("EXPLAIN EXECUTE q", prepared={"q": self.write}).route is READ
        assert classify("EXPLAIN EXECUTE q").route is WRITE
        assert classify("EXPLAIN ANALYZE EXECUTE q", prepared={"q": self.write}).route is WRITE

    def test_parameters_of_execute_count(self) -> None:
        assert classify("EXECUTE q(nextval('s'))", prepared={"q": self.read}).route is WRITE


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT * FROM t WHERE id = 1", None),
        ("SELECT lower(v), count(*) FROM t GROUP BY 1", None),
        ("SELECT * FROM t TABLESAMPLE SYSTEM (5) REPEATABLE (7)", None),
        ("SELECT random()", "volatile function random"),
        ("SELECT now()", "time-dependent function now"),
        ("SELECT CURRENT_DATE", "time-dependent function current_date"),
        ("SELECT * FROM t WHERE d > 'today'", "time-dependent value 'today'"),
        ("SELECT current_setting('work_mem')", "function current_setting reads server state"),
        ("SELECT inet_server_port()", "function inet_server_port reads server state"),
        ("SELECT pg_backend_pid()", "function pg_backend_pid answers for the node that runs it"),
        ("SELECT * FROM t TABLESAMPLE SYSTEM (5)", "TABLESAMPLE without REPEATABLE"),
        ("SELECT * FROM t FOR UPDATE", "row locks"),
        ("SELECT * FROM pg_class", "system catalog pg_class"),
        ("SELECT * FROM information_schema.tables", "system catalog information_schema.tables"),
        ("SELECT * FROM pg_temp.x", "temporary table pg_temp.x"),
        ("SELECT f()", "unknown function f"),
        ("/*NO QUERY CACHE*/ SELECT * FROM t", "NO QUERY CACHE hint"),
        ("SELECT * FROM t /* no query cache */", "NO QUERY CACHE hint"),
        ("/*NO LOAD BALANCE*/ SELECT * FROM t", "NO LOAD BALANCE hint"),
        ("SELECT 1 INTO x", "not a plain read"),
        ("INSERT INTO t VALUES (1)", "not a plain read"),
        ("SHOW work_mem", "not a plain read"),
        ("EXPLAIN SELECT 1", "not a plain read"),
        ("COPY t TO STDOUT", "not a plain read"),
        ("SELECT set_config('a.b', 'c', false)", "volatile function set_config"),
        ("SELECT 1; SELECT 2", "several statements"),
        ("", "no statement"),
        ("EXECUTE q", "depends on prepared statement q"),
        ("FETCH c", "depends on cursor c"),
    ],
)
def test_cacheable(sql: str, reason: str | None) -> None:
    """Only a single plain read with nothing volatile, locked, temporary or hinted."""
    result = classify(sql)
    assert (result.cacheable, result.uncacheable_reason) == (reason is None, reason)


def test_a_quoted_hint_is_no_hint() -> None:
    """A hint in a string literal is text, not a comment."""
    assert classify("SELECT '/*NO QUERY CACHE*/'").cacheable


class TestFingerprint:
    """pglast's fingerprint: for statistics and grouping only, never a cache key."""

    def test_equal_for_other_constants(self) -> None:
        assert (
            classify("SELECT * FROM t WHERE id = 1").fingerprint
            == classify("SELECT * FROM t WHERE id = 2").fingerprint
        )

    @pytest.mark.parametrize(
        ("a", "b"),
        [
            ("EXECUTE q1", "EXECUTE q2"),
            ("SAVEPOINT a", "SAVEPOINT b"),
            ("BEGIN READ ONLY", "BEGIN READ WRITE"),
            ("/*NO QUERY CACHE*/ SELECT * FROM t", "SELECT * FROM t"),
        ],
    )
    def test_equal_where_classification_differs(self, a: str, b: str) -> None:
        """Why it must never key a cache: these texts share it but differ in meaning."""
        first, second = classify(a), classify(b)
        assert first.fingerprint == second.fingerprint
        assert first != second

    def test_is_pglasts(self) -> None:
        import pglast.parser

        sql = "SELECT * FROM t WHERE id = 1; SELECT 2"
        assert classify(sql).fingerprint == pglast.parser.fingerprint(sql)

    def test_differs_for_other_tables(self) -> None:
        assert classify("SELECT * FROM t").fingerprint != classify("SELECT * FROM u").fingerprint


class TestConstantFreeKey:
    """A key that keeps everything but the constants, where no constant matters."""

    def test_plain_dml_gets_a_key(self) -> None:
        assert (
            classify("SELECT abalance FROM pgbench_accounts WHERE aid = 42;").constant_free_key
            == "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
        )
        for sql in (
            "INSERT INTO t VALUES (1, 'x')",
            "UPDATE t SET v = 2 WHERE id = 3",
            "DELETE FROM t WHERE id = 4",
            "MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN UPDATE SET v = 5",
            "SELECT 1; SELECT 2",
        ):
            assert classify(sql).constant_free_key is not None, sql

    def test_keeps_names_keywords_and_comments(self) -> None:
        keys = {
            classify(sql).constant_free_key
            for sql in (
                "SELECT * FROM t WHERE id = 1",
                "SELECT * FROM u WHERE id = 1",
                "select * from t where id = 1",
                "/*NO QUERY CACHE*/ SELECT * FROM t WHERE id = 1",
                "SELECT * FROM t WHERE id = 1 FOR UPDATE",
            )
        }
        assert len(keys) == 5

    def test_equal_for_other_constants(self) -> None:
        assert (
            classify("SELECT * FROM t WHERE id = 1 AND v = 'a'").constant_free_key
            == classify("SELECT * FROM t WHERE id = 22 AND v = 'bb'").constant_free_key
        )

    @pytest.mark.parametrize(
        "sql",
        [
            "SET ROLE bob",
            "SET transaction_read_only = on",
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "DO 'BEGIN END'",
            "EXECUTE q1",
            "SAVEPOINT a",
            "BEGIN READ ONLY",
            "EXPLAIN SELECT 1",
            "SHOW work_mem",
            "SELECT set_config('search_path', 'a', false)",
            "SELECT pg_catalog.set_config('transaction_read_only', 'off', false)",
            "SELECT lo_open(42, 262144)",
            "SELECT current_setting('work_mem')",
            "SELECT '2024-01-01'::date",
            "SELECT * FROM t WHERE d > timestamp 'now'",
            "SELECT * FROM t WHERE d > 'yesterday'",
            "SELECT 1; SET search_path = a",
            "",
        ],
    )
    def test_none_where_a_constant_can_matter(self, sql: str) -> None:
        assert classify(sql).constant_free_key is None


def test_to_dict_is_json_ready() -> None:
    """to_dict gives plain JSON types, bodies included."""
    import json

    data = classify("PREPARE q AS SELECT * FROM t; LISTEN ch").to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["route"] == "write"
    assert data["statements"][0]["body"]["reads_tables"] == ["t"]
    assert data["session_effects"] == [
        {"kind": "prepare", "name": "q"},
        {"kind": "listen", "name": "ch"},
    ]


def test_parse_errors_raise() -> None:
    """Text the grammar rejects raises ParseError (the pooler forwards it untouched)."""
    with pytest.raises(ParseError):
        classify("SELEC 1")


def test_returns_a_classification() -> None:
    """The public type."""
    assert isinstance(classify("SELECT 1"), Classification)


class TestNodeIdentity:
    """What answers for the node that runs it goes to the primary, whatever the catalog."""

    @pytest.mark.parametrize("name", sorted(NODE_IDENTITY_FUNCTIONS))
    def test_every_listed_function_writes(self, name: str) -> None:
        nargs = {"pg_walfile_name": 1, "pg_walfile_name_offset": 1, "pg_stat_get_activity": 1,
                 "pg_blocking_pids": 1, "pg_safe_snapshot_blocking_pids": 1,
                 "pg_stat_get_progress_info": 1, "pg_stat_get_replication_slot": 1,
                 "pg_stat_get_subscription": 1}.get(name, 0)
        sql = f"SELECT {name}({', '.join(['NULL'] * nargs)})"
        catalog = StaticCatalog(
            functions={name: Volatility.IMMUTABLE}, read_only_functions=frozenset({name})
        )
        for result in (classify(sql), classify(sql, catalog=catalog)):
            assert result.route is WRITE, sql
            assert result.uncacheable_reason == f"function {name} answers for the node that runs it"

    @pytest.mark.parametrize("name", sorted(NODE_IDENTITY_VIEWS))
    def test_every_listed_view_writes(self, name: str) -> None:
        assert classify(f"SELECT * FROM {name}").route is WRITE
        assert classify(f"SELECT * FROM pg_catalog.{name}").route is WRITE

    @pytest.mark.parametrize("name", sorted(NODE_IDENTITY_SETTINGS))
    def test_every_listed_setting_writes(self, name: str) -> None:
        assert classify(f"SHOW {name}").route is WRITE
        assert classify(f"SELECT current_setting('{name}')").route is WRITE

    def test_a_view_of_the_same_name_in_another_schema_is_not_it(self) -> None:
        assert classify("SELECT * FROM app.pg_stat_activity").route is READ

    @pytest.mark.parametrize(
        "sql", ["SELECT inet_server_addr()", "SELECT inet_server_port()",
                "SELECT pg_wal_lsn_diff('0/2', '0/1')", "SELECT pg_control_init()"],
    )
    def test_what_stays_a_read(self, sql: str) -> None:
        """inet_server_*: clients check the spread over nodes with them."""
        assert classify(sql).route is READ
