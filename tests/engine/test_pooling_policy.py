"""Transaction pooling's policy, sans-IO: what pins a client, and how its prepared
statements follow it from server to server."""

from __future__ import annotations

from collections import Counter, OrderedDict

from parser_api import classify
from pooler.engine.server import ServerEngine
from pooler.engine.session_state import SessionState
from pooler.engine.statements import (
    ClientStatements,
    rewrite_bind,
    rewrite_describe_or_close,
    rewrite_parse,
    rewrite_sql,
    same_result,
)
from pooler.protocol.codec import frame


def test_state_that_outlives_a_transaction_pins() -> None:
    for sql, reason in [
        ("SET ROLE app", "set role"),
        ("SET SESSION AUTHORIZATION app", "set role"),
        ("LISTEN jobs", "listen"),
        ("CREATE TEMP TABLE scratch (a int)", "temporary object"),
        ("SELECT pg_advisory_lock(1)", "advisory lock"),
        ("DO $$ BEGIN PERFORM 1; END $$", "do block"),
    ]:
        state = SessionState()
        state.statement(classify(sql), errors=0)
        assert reason in state.pins, sql
    # Settings follow the client to its next server (pooler.engine.settings).
    for sql in (
        "SELECT 1",
        "SET LOCAL work_mem = '1MB'",
        "SET search_path TO app",
        "SELECT set_config('work_mem', '64MB', false)",
        # SQL prepared statements follow it too (pooler.engine.statements).
        "PREPARE q AS SELECT 1",
        "BEGIN",
        "UNLISTEN *",
    ):
        state = SessionState()
        state.statement(classify(sql), errors=0)
        assert not state.pins, sql


def test_discard_all_unpins_only_when_it_met_no_error_and_nothing_pinned_after() -> None:
    state = SessionState()
    state.statement(classify("LISTEN y"), errors=0)
    assert state.statement(classify("DISCARD ALL"), errors=0)
    state.settled(errors=1)  # it failed (inside a transaction block, say)
    assert state.pins
    state.statement(classify("DISCARD ALL"), errors=1)
    state.statement(classify("LISTEN x"), errors=1)
    state.settled(errors=1)
    assert state.pins["listen"] == 2
    state.statement(classify("DISCARD ALL"), errors=1)
    state.settled(errors=1)
    assert not state.pins


def test_deallocate_all_drops_prepared_statements_without_pinning() -> None:
    state = SessionState()
    assert state.statement(classify("DEALLOCATE ALL"), errors=0)
    assert not state.statement(classify("DEALLOCATE q"), errors=0)
    assert not state.pins


def _parse(name: bytes, sql: bytes) -> bytes:
    return name + b"\0" + sql + b"\0\0\0"


def test_a_server_lacking_the_clients_statements_gets_them_in_a_prelude() -> None:
    statements = ClientStatements()
    first: OrderedDict[bytes, None] = OrderedDict()
    raw, text = rewrite_parse(_parse(b"s1", b"SELECT 1"), statements, first)
    ours = statements.ours(b"s1")
    assert ours is not None and ours in first and ours in raw and text == b"SELECT 1"
    # Another server: one Parse and one Sync for it, then nothing more.
    other: OrderedDict[bytes, None] = OrderedDict()
    prelude, parsed, _ = statements.prelude(other)
    assert parsed == [ours]
    assert prelude == frame(ord("P"), _parse(ours, b"SELECT 1")) + frame(ord("S"), b"")
    assert statements.prelude(other) == (b"", [], {})
    # Bind names the pooler's statement; unnamed statements are left alone.
    bind = rewrite_bind(b"\0s1\0\0\0\0\0\0\0", statements)
    assert bind == frame(ord("B"), b"\0" + ours + b"\0\0\0\0\0\0\0")
    assert rewrite_parse(_parse(b"", b"SELECT 2"), statements, other)[0] == frame(
        ord("P"), _parse(b"", b"SELECT 2")
    )


def test_a_statement_parsed_while_waiting_is_not_parsed_twice() -> None:
    statements = ClientStatements()
    rewrite_parse(_parse(b"s1", b"SELECT 1"), statements, None)  # held: no server yet
    server: OrderedDict[bytes, None] = OrderedDict()
    # The held Parse creates it: the prelude must not (PostgreSQL would answer 42P05).
    assert statements.prelude(server) == (b"", [], {})
    assert statements.ours(b"s1") in server


def test_a_close_is_forgotten_only_once_it_ran() -> None:
    statements = ClientStatements()
    rewrite_parse(_parse(b"s1", b"SELECT 1"), statements, OrderedDict())
    ours = statements.close(b"s1", errors=3)
    statements.settled(errors=4)  # an error: the Close may have been skipped
    assert statements.ours(b"s1") == ours
    statements.close(b"s1", errors=4)
    statements.settled(errors=4)
    assert statements.ours(b"s1") is None
    # Errors about it that were on their way still name it as the client did.
    assert ours is not None and statements.theirs[ours] == b"s1"


def test_sql_prepared_statements_take_the_pooler_names() -> None:
    statements = ClientStatements()
    server: OrderedDict[bytes, None] = OrderedDict()

    def rewrite(sql: str) -> str:
        return rewrite_sql(sql, classify(sql), statements, server, 0)

    prepared = rewrite('PREPARE "Q" (int) AS SELECT $1; /* c */ EXECUTE "Q"(1)')
    ours = statements.ours(b"Q")
    assert ours is not None and ours in server
    name = ours.decode()
    assert prepared == f"PREPARE {name} (int) AS SELECT $1; /* c */ EXECUTE {name}(1)"
    assert rewrite("EXPLAIN EXECUTE q") == "EXPLAIN EXECUTE q"  # not the client's
    assert rewrite('DEALLOCATE PREPARE "Q"') == f"DEALLOCATE PREPARE {name}"
    assert rewrite("DEALLOCATE ALL") == "DEALLOCATE ALL"
    # Another server lacking it gets the PREPARE, by its own text.
    prelude, parsed, _ = statements.prelude(OrderedDict())
    assert parsed == [ours]
    assert prelude == frame(ord("Q"), f"PREPARE {name} (int) AS SELECT $1\0".encode())


def _row_description(*columns: tuple[bytes, int, int, int]) -> bytes:
    """A RowDescription body: (name, table OID, type OID, type modifier) per column."""
    body = len(columns).to_bytes(2, "big")
    for name, table, type_oid, typmod in columns:
        body += name + b"\0" + table.to_bytes(4, "big") + b"\0\1" + type_oid.to_bytes(4, "big")
        body += b"\0\4" + typmod.to_bytes(4, "big", signed=True) + b"\0\0"
    return body


def test_a_result_type_is_its_column_names_types_and_modifiers() -> None:
    a_int = _row_description((b"a", 16384, 23, -1))
    # A table dropped and made again with the same columns: PostgreSQL runs it.
    assert same_result(a_int, _row_description((b"a", 16999, 23, -1)))
    # A column renamed, another type, another modifier, one more, no rows: 0A000.
    for changed in (
        _row_description((b"z", 16384, 23, -1)),
        _row_description((b"a", 16384, 20, -1)),
        _row_description((b"a", 16384, 23, 14)),
        _row_description((b"a", 16384, 23, -1), (b"b", 16384, 23, -1)),
        b"",
    ):
        assert not same_result(a_int, changed)


def test_a_first_parse_is_described_to_the_pooler_only() -> None:
    statements = ClientStatements()
    server = ServerEngine({}, b"I")
    raw, _ = rewrite_parse(_parse(b"s1", b"SELECT 1"), statements, server.prepared, True)
    ours = statements.ours(b"s1")
    assert ours is not None and raw.endswith(frame(ord("D"), b"S" + ours + b"\0"))
    server.requests.sent([ord("S")])
    server.keep_description(1, ours, statements)
    rows = _row_description((b"?column?", 0, 23, -1))
    answers = frame(ord("1"), b"") + frame(ord("t"), b"\0\0") + frame(ord("T"), rows)
    # Answers cut anywhere come out whole, without those of the pooler's Describe.
    out = [server.feed(answers[:7]), server.feed(answers[7:] + frame(ord("Z"), b"I"))]
    assert out == [frame(ord("1"), b""), frame(ord("Z"), b"I")]
    assert statements.shapes == {ours: (b"\0\0", rows)}
    # Not the first Parse of its request: not described (its answers are not found).
    raw, _ = rewrite_parse(_parse(b"s2", b"SELECT 2"), statements, server.prepared, False)
    assert raw == frame(ord("P"), _parse(statements.ours(b"s2") or b"", b"SELECT 2"))


def test_a_statement_whose_result_type_changed_fails_as_on_postgresql() -> None:
    statements = ClientStatements()
    rewrite_parse(_parse(b"s1", b"SELECT * FROM t"), statements, OrderedDict(), True)
    ours = statements.ours(b"s1")
    assert ours is not None
    statements.described(ours, b"\0\0", _row_description((b"a", 1, 23, -1)))
    classes: Counter[str] = Counter()
    server = ServerEngine({}, b"I", owners={}, error_classes=classes)
    server.statements = statements  # as ClientEngine.attach does
    prelude, parsed, checks = statements.prelude(server.prepared)
    assert prelude.endswith(frame(ord("D"), b"S" + ours + b"\0") + frame(ord("S"), b""))
    sent: list[bytes] = []
    server.send_held = sent.append
    server.prelude_sent(parsed, checks=(checks, statements))
    bind = rewrite_bind(b"\0s1\0\0\0\0\0\0\0", statements)
    server.holding = (bind, statements)
    server.requests.sent([ord("S")])
    now = _row_description((b"a", 1, 23, -1), (b"b", 1, 23, -1))
    answers = frame(ord("1"), b"") + frame(ord("t"), b"\0\0") + frame(ord("T"), now)
    assert server.feed(answers + frame(ord("Z"), b"I")) == b""
    # The held Bind goes out naming a statement no server has; the server's error
    # about it reaches the client as PostgreSQL's.
    stale = statements.ours(b"s1")
    assert stale is not None and stale != ours
    assert sent == [rewrite_bind(b"\0s1\0\0\0\0\0\0\0", statements)] and stale in sent[0]
    missing = b'SERROR\0C26000\0Mprepared statement "' + stale + b'" does not exist\0\0'
    out = server.feed(frame(ord("E"), missing) + frame(ord("Z"), b"I"))
    assert isinstance(out, list)
    error = b"".join(part for part in out if isinstance(part, bytes))
    assert b"C0A000\0Mcached plan must not change result type\0" in error
    # Counted (metrics) as the client's error, not the server's.
    assert +classes == Counter({"0A": 1})
    # Later Describes fail too, after the parameters, as on PostgreSQL.
    describe = rewrite_describe_or_close(ord("D"), b"Ss1\0", statements, 0)
    assert describe != frame(ord("D"), b"S" + stale + b"\0") and stale in describe


def test_a_name_closed_then_parsed_again_is_a_new_statement() -> None:
    """Close s1 then Parse s1 with another text, in one batch: PostgreSQL has the new
    s1, which must follow the client (under a new name of the pooler's: servers that
    had the old text keep it under the old)."""
    statements = ClientStatements()
    server: OrderedDict[bytes, None] = OrderedDict()
    rewrite_parse(_parse(b"s1", b"SELECT 1"), statements, server)
    old = statements.ours(b"s1")
    assert statements.settled(errors=0) is False
    close = rewrite_describe_or_close(ord("C"), b"Ss1\0", statements, 0)
    assert old is not None and old in close
    rewrite_parse(_parse(b"s1", b"SELECT 'two'"), statements, server)
    new = statements.ours(b"s1")
    assert new is not None and new != old
    statements.settled(errors=0)
    assert statements.ours(b"s1") == new and statements.text(b"s1") == b"SELECT 'two'"
    # Without the Close, a second Parse of the name keeps the first (PostgreSQL: 42P05).
    rewrite_parse(_parse(b"s1", b"SELECT 3"), statements, server)
    assert statements.ours(b"s1") == new
