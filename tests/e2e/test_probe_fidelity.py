"""A catalogue of protocol scenarios, each sent byte for byte to the primary directly and
through the pooler, whose answers must be equal (see :func:`_norm`).

Every scenario runs through three poolers of two servers per node: transaction pooling
without routing, transaction pooling with reads spread over the standbys, and session
pooling. In transaction pooling two other clients ("holders", see :class:`_Churn`) take
turns holding, in a transaction, the server the client under test used last, whenever
that client is idle between requests: each of its transactions lands on another server
connection than the one before.

A scenario is a list of steps: the bytes of one write, and the message types to read up
to, in turn ("Z" once per Sync or Query, "G" for CopyInResponse, "" for nothing). After
the last step a final query is sent, so that a stray message would show before its
answer.
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import PoolerProcess, launch_pooler
from helpers_clients import direct_dsn
from wire import (
    Closed,
    Msg,
    Wire,
    comparable,
    connect,
    copy_data,
    copy_done,
    flush,
    function_call,
    sync,
)

from pooler.localcluster import LocalCluster, find_free_ports
from pooler.protocol import messages as m

# --- messages --------------------------------------------------------------------------


def _msg(msg_type: str, body: bytes = b"") -> bytes:
    return msg_type.encode("latin-1") + struct.pack("!I", len(body) + 4) + body


def _cs(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\0"


def Qb(sql: str | bytes) -> bytes:
    """A Query message (``sql`` as bytes is sent as it is)."""
    return _msg("Q", _cs(sql))


def P(name: str | bytes, sql: str | bytes, types: tuple[int, ...] = ()) -> bytes:
    body = _cs(name) + _cs(sql) + struct.pack("!h", len(types))
    return _msg("P", body + b"".join(struct.pack("!I", t) for t in types))


def B(
    portal: str = "",
    stmt: str | bytes = "",
    params: tuple[bytes | None, ...] = (),
    formats: tuple[int, ...] = (),
    results: tuple[int, ...] = (),
) -> bytes:
    body = _cs(portal) + _cs(stmt) + struct.pack("!h", len(formats))
    body += b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    body += struct.pack("!h", len(results)) + b"".join(struct.pack("!h", f) for f in results)
    return _msg("B", body)


def D(kind: str, name: str | bytes = "") -> bytes:
    return _msg("D", kind.encode() + _cs(name))


def E(portal: str = "", max_rows: int = 0) -> bytes:
    return _msg("E", _cs(portal) + struct.pack("!i", max_rows))


def CL(kind: str, name: str | bytes = "") -> bytes:
    return _msg("C", kind.encode() + _cs(name))


def PBE(sql: str, max_rows: int = 0) -> bytes:
    return P("", sql) + B() + E("", max_rows)


def PBDE(sql: str) -> bytes:
    return P("", sql) + B() + D("P") + E()


S = sync()
H = flush()
COPY_DONE = copy_done()


def CF(reason: str) -> bytes:
    """A CopyFail."""
    return _msg("f", _cs(reason))


def CD(data: bytes) -> bytes:
    return copy_data(data)


ABS_INT4 = 1397  # pg_catalog.abs(int4), fixed in the catalog
UPPER_TEXT = 871  # pg_catalog.upper(text)


# --- scenarios -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    data: bytes
    until: str = "Z"
    #: Seconds to wait before sending.
    pause: float = 0.0

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 300 else self.data[:300] + b"..."
        return f"Step({data!r}, until={self.until!r})"


def q(sql: str | bytes, until: str = "Z") -> Step:
    return Step(Qb(sql), until)


def x(*parts: bytes, until: str = "Z", pause: float = 0.0) -> Step:
    return Step(b"".join(parts), until, pause)


@dataclass
class Scenario:
    name: str
    steps: list[Step]
    #: Startup parameters besides user and database.
    startup: tuple[tuple[str, str], ...] = ()
    #: SQL that two other clients of the pooler run at once, each in a transaction of
    #: its own (so on both servers of the pool), before the scenario: what another
    #: client may leave on a server. Not run directly: a new session has nothing.
    prelude: str = ""
    #: What the test does not promise for some configurations: config -> reason.
    xfail: dict[str, str] = field(default_factory=dict)


SCENARIOS: list[Scenario] = []


def scenario(
    name: str,
    *steps: Step | str | bytes,
    startup: tuple[tuple[str, str], ...] = (),
    prelude: str = "",
) -> None:
    SCENARIOS.append(
        Scenario(
            name,
            [s if isinstance(s, Step) else q(s) for s in steps],
            startup=startup,
            prelude=prelude,
        )
    )


BIG = b"x" * (1 << 20)

# --- extended protocol: errors mid-pipeline, Flush without Sync --------------------------
scenario(
    "ext-error-mid-pipeline",
    x(PBE("SELECT 1"), PBE("SELECT 1/0"), PBE("SELECT 2"), S),
    "SELECT 3",
)
scenario(
    "ext-parse-error-mid-pipeline",
    x(PBE("SELECT 1"), P("", "SELEC 2"), B(), E(), PBE("SELECT 3"), S),
)
scenario(
    "ext-bind-wrong-param-count",
    x(P("", "SELECT $1::int"), B(), E(), S),
    x(P("", "SELECT $1::int + $2::int"), B(params=(b"1",)), E(), S),
)
scenario(
    "ext-bind-invalid-input",
    x(P("", "SELECT $1::int"), B(params=(b"abc",)), E(), S),
    x(P("", "SELECT $1::int"), B(params=(b"\x00\x00\x00",), formats=(1,)), E(), S),
)
scenario(
    "ext-flush-without-sync",
    x(PBDE("SELECT 1 AS one"), H, until="C"),
    x(PBDE("SELECT 2 AS two"), H, until="C"),
    x(S),
)
scenario(
    "ext-flush-error-then-ignored-then-sync",
    x(PBE("SELECT 1/0"), H, until="E"),
    x(PBE("SELECT 2"), H, until=""),
    x(S),
    x(PBE("SELECT 3"), S),
)
scenario(
    "ext-flush-in-explicit-tx",
    "BEGIN",
    x(PBE("SELECT count(*) FROM probe_t"), H, until="C"),
    x(PBE("SELECT 1/0"), H, until="E"),
    x(S),
    "ROLLBACK",
)
scenario(
    "ext-query-after-flush-joins-implicit-tx",
    x(PBE("SET LOCAL statement_timeout = '7s'"), H, until="C"),
    q("SHOW statement_timeout"),
    "SHOW statement_timeout",
)
scenario(
    "ext-query-after-unsynced-batch",
    x(PBE("SELECT 1"), Qb("SELECT 2")),
    x(S),
)
scenario("ext-sync-alone-and-many", x(S), x(S, S, S, until="ZZZ"))
scenario("ext-flush-alone", x(H, until=""), "SELECT 1")
scenario(
    "ext-parse-multiple-commands",
    x(P("", "SELECT 1; SELECT 2"), S),
    x(P("s1", "SELECT 1; SELECT 2"), B("", "s1"), E(), S),
)
scenario("ext-parse-bad-type-oid", x(P("", "SELECT $1", (999999,)), S))
scenario(
    "ext-pipeline-of-200",
    x(*[PBE(f"SELECT {i}") for i in range(200)], S),
)
scenario(
    "ext-psycopg-pipeline-error",
    x(
        PBDE("SELECT 1"),
        H,
        PBDE("SELECT * FROM no_such_table"),
        H,
        PBDE("SELECT 3"),
        S,
        PBDE("SELECT 4"),
        S,
        until="ZZ",
    ),
)
scenario(
    "ext-begin-then-error-status-E",
    x(PBE("BEGIN"), PBE("SELECT 1/0"), S),
    x(PBE("SELECT 1"), S),
    x(PBE("ROLLBACK"), S),
)
scenario(
    "ext-transaction-across-syncs",
    x(PBE("BEGIN"), S),
    x(PBE("INSERT INTO probe_w VALUES (1, 'ext')"), S),
    x(PBE("SELECT count(*) FROM probe_w WHERE b = 'ext'"), S),
    x(PBE("ROLLBACK"), S),
    "SELECT count(*) FROM probe_w WHERE b = 'ext'",
)
scenario(
    "ext-binary-params-and-results",
    x(
        P("", "SELECT $1::int4 + 1, $2::text, $3::int8", (23, 25, 20)),
        D("S"),
        B(
            params=(struct.pack("!i", 41), b"txt", None),
            formats=(1, 0, 1),
            results=(1,),
        ),
        D("P"),
        E(),
        S,
    ),
)

# --- Describe and Close ---------------------------------------------------------------
scenario(
    "describe-unnamed-statement-with-params",
    x(P("", "SELECT $1::int, $2::text, $3"), D("S"), S),
    x(P("", "INSERT INTO probe_w VALUES ($1, $2)"), D("S"), S),
)
scenario("describe-nonexistent-statement-and-portal", x(D("S", "nope"), S), x(D("P", "nope"), S))
scenario(
    "close-nonexistent-statement-and-portal",
    x(CL("S", "nope"), CL("P", "nope"), CL("S"), CL("P"), S),
)
scenario(
    "describe-after-error-in-batch",
    x(P("s1", "SELECT 1 AS a"), P("", "SELEC"), D("S", "s1"), S),
    x(D("S", "s1"), S),
    x(B("", "s1"), D("P"), E(), S),
)
scenario(
    "named-statement-survives-failed-batch",
    x(P("s1", "SELECT 11"), PBE("SELECT 1/0"), P("s2", "SELECT 22"), S),
    x(B("", "s1"), E(), S),
    x(B("", "s2"), E(), S),
)
scenario(
    "named-statement-close-and-reparse",
    x(P("s1", "SELECT 1"), S),
    x(P("s1", "SELECT 2"), S),
    x(CL("S", "s1"), P("s1", "SELECT 3 AS three"), B("", "s1"), D("P"), E(), S),
    x(CL("S", "s1"), S),
    x(B("", "s1"), E(), S),
)
scenario(
    "unnamed-statement-across-sync",
    x(P("", "SELECT 5 AS five"), S),
    x(B(), E(), S),
    x(D("S"), S),
)
scenario(
    "unnamed-statement-described-then-bound-later",
    x(P("", "SELECT $1::int * 2"), D("S"), S),
    x(B(params=(b"21",)), D("P"), E(), S),
)
scenario(
    "unnamed-portal-gone-after-sync",
    x(P("", "SELECT 1"), B(), S),
    x(E(), S),
    x(D("P"), S),
)
scenario(
    "describe-portal-after-bind-error",
    x(P("", "SELECT $1::int"), B(), D("P"), S),
    x(D("P"), S),
)
scenario(
    "bind-nonexistent-statement-and-execute-nonexistent-portal",
    x(B("", "s9"), E(), S),
    x(E("p9"), S),
)

# --- portals with row limits -------------------------------------------------------------
scenario(
    "portal-max-rows-outside-tx",
    x(P("", "SELECT a FROM probe_t ORDER BY a"), B(), D("P"), E("", 3), E("", 3), E("", 0), S),
)
scenario(
    "portal-max-rows-then-sync-then-execute",
    x(P("", "SELECT a FROM probe_t ORDER BY a"), B(), E("", 2), S),
    x(E("", 2), S),
)
scenario(
    "named-portal-max-rows-across-syncs-in-tx",
    "BEGIN",
    x(P("", "SELECT a FROM probe_t ORDER BY a"), B("p1"), E("p1", 3), S),
    x(E("p1", 3), S),
    x(D("P", "p1"), S),
    x(E("p1", 0), S),
    x(E("p1", 1), S),
    x(CL("P", "p1"), E("p1"), S),
    "COMMIT",
)
scenario(
    "named-portal-gone-after-commit",
    "BEGIN",
    x(P("", "SELECT a FROM probe_t ORDER BY a"), B("p1"), E("p1", 2), S),
    "COMMIT",
    x(E("p1", 2), S),
)
scenario(
    "jdbc-fetch-size",
    x(
        PBE("BEGIN"),
        P("S_1", "SELECT a, b FROM probe_t WHERE a > $1 ORDER BY a", (23,)),
        B("C_1", "S_1", (b"3",)),
        D("P", "C_1"),
        E("C_1", 4),
        S,
    ),
    x(E("C_1", 4), S),
    x(E("C_1", 100), S),
    x(CL("P", "C_1"), PBE("COMMIT"), S),
)
scenario(
    "insert-returning-max-rows",
    "BEGIN",
    x(
        PBE("INSERT INTO probe_w SELECT g, 'ret' FROM generate_series(1, 5) g RETURNING a", 2),
        S,
    ),
    x(E("", 2), S),
    "ROLLBACK",
)
scenario(
    "bind-duplicate-named-portal",
    "BEGIN",
    x(P("s1", "SELECT 1"), B("p1", "s1"), S),
    x(B("p1", "s1"), S),
    "ROLLBACK",
)
scenario(
    "sql-fetch-from-protocol-portal",
    "BEGIN",
    x(P("", "SELECT a FROM probe_t ORDER BY a"), B("c1"), S),
    "FETCH 2 FROM c1",
    x(E("c1", 2), S),
    "SELECT name, statement, is_holdable, is_binary, is_scrollable FROM pg_cursors",
    "COMMIT",
)
scenario(
    "protocol-execute-of-sql-cursor",
    "BEGIN",
    "DECLARE c2 CURSOR FOR SELECT a FROM probe_t ORDER BY a",
    x(E("c2", 3), S),
    x(D("P", "c2"), E("c2", 2), S),
    "CLOSE ALL",
    "COMMIT",
)

# --- cursors ----------------------------------------------------------------------------------
scenario(
    "with-hold-cursor",
    "DECLARE hc CURSOR WITH HOLD FOR SELECT a, b FROM probe_t ORDER BY a",
    "FETCH 3 FROM hc",
    x(PBE("FETCH 2 FROM hc"), S),
    x(E("hc", 2), S),
    "MOVE FORWARD 5 IN hc",
    "FETCH ALL FROM hc",
    "CLOSE hc",
    "FETCH 1 FROM hc",
)
scenario(
    "declare-outside-tx-and-cursor-after-commit",
    "DECLARE c CURSOR FOR SELECT 1",
    "BEGIN",
    "DECLARE c SCROLL CURSOR FOR SELECT a FROM probe_t ORDER BY a",
    "FETCH LAST FROM c",
    "FETCH PRIOR FROM c",
    "COMMIT",
    "FETCH 1 FROM c",
)

# --- COPY -----------------------------------------------------------------------------------
scenario(
    "copy-in-simple",
    q("COPY probe_w FROM STDIN", "G"),
    x(CD(b"1\tone\n2\ttwo\n"), CD(b"3\tthree\n"), COPY_DONE),
)
scenario(
    "copy-in-bad-data",
    q("COPY probe_w FROM STDIN", "G"),
    x(CD(b"1\tone\nx\ttwo\n"), COPY_DONE),
)
scenario(
    "copy-in-copyfail",
    q("COPY probe_w FROM STDIN", "G"),
    x(CD(b"1\tone\n"), CF("client gave up")),
)
scenario(
    "copy-in-sync-and-flush-ignored",
    q("COPY probe_w FROM STDIN", "G"),
    x(CD(b"1\tone\n"), S, H, CD(b"2\ttwo\n"), COPY_DONE),
)
scenario(
    "copy-in-multi-statement",
    q("SELECT 1; COPY probe_w FROM STDIN; SELECT 2", "G"),
    x(CD(b"5\tfive\n"), COPY_DONE),
)
scenario(
    "copy-in-explicit-tx-error",
    "BEGIN",
    q("COPY probe_w FROM STDIN (FORMAT csv)", "G"),
    x(CD(b"1,a\n2,b,c\n"), COPY_DONE),
    "SELECT 1",
    "ROLLBACK",
)
scenario(
    "copy-out-simple-csv-header",
    "COPY (SELECT a, b FROM probe_t WHERE a <= 3 ORDER BY a) TO STDOUT (FORMAT csv, HEADER)",
    "COPY (SELECT a FROM probe_t WHERE a <= 2 ORDER BY a) TO STDOUT (FORMAT binary)",
)
scenario(
    "copy-out-error-midway",
    "COPY (SELECT 1 / (5 - g) FROM generate_series(1, 9) g) TO STDOUT",
)
scenario(
    "copy-in-extended-copyfail",
    x(PBE("COPY probe_w FROM STDIN"), H, until="G"),
    x(CD(b"1\tone\n"), CF("no more"), S),
)
scenario(
    "copy-in-extended-bad-data",
    x(PBE("COPY probe_w FROM STDIN"), H, until="G"),
    x(CD(b"1\tone\nbad\n"), COPY_DONE, S),
)
scenario(
    "copy-out-extended",
    x(PBDE("COPY (SELECT a FROM probe_t WHERE a <= 3 ORDER BY a) TO STDOUT"), S),
)
scenario(
    "copy-in-extended-then-more-in-batch",
    x(PBE("COPY probe_w FROM STDIN"), H, until="G"),
    x(CD(b"7\tseven\n"), COPY_DONE, PBE("SELECT 'after'"), S),
)
scenario(
    "copy-data-outside-copy",
    x(CD(b"stray\n"), COPY_DONE, S),
    x(CD(b"stray\n"), Qb("SELECT 1")),
)

# --- FunctionCall --------------------------------------------------------------------------
scenario(
    "function-call-variants",
    x(function_call(UPPER_TEXT, [b"abc"], binary=False)),
    x(function_call(ABS_INT4, [None])),
    x(function_call(ABS_INT4, [b"\x00\x01"])),
    x(function_call(ABS_INT4, [struct.pack("!i", -2), struct.pack("!i", 1)])),
)
scenario(
    "function-call-in-failed-tx",
    "BEGIN",
    "SELECT 1/0",
    x(function_call(ABS_INT4, [struct.pack("!i", -3)])),
    "ROLLBACK",
    x(function_call(ABS_INT4, [struct.pack("!i", -3)])),
)

# --- empty queries ---------------------------------------------------------------------------
scenario(
    "empty-queries",
    "",
    ";",
    " ; ;",
    "-- only a comment",
    "/* c */",
    x(P("", ""), B(), D("P"), E(), S),
    x(P("", ";"), D("S"), S),
)

# --- multi-statement simple queries ----------------------------------------------------------
scenario("multi-error-in-middle", "SELECT 1; SELECT 1/0; SELECT 2")
scenario(
    "multi-implicit-tx-rolls-back",
    "INSERT INTO probe_w VALUES (777, 'multi'); SELECT 1/0",
    "SELECT count(*) FROM probe_w WHERE b = 'multi'",
)
scenario(
    "multi-begin-commit-inside",
    "BEGIN; SELECT 1; COMMIT; SELECT 2",
    "BEGIN; SELECT 1",
    "SELECT 2; COMMIT; SELECT 3",
)
scenario(
    "multi-error-after-begin-status-E",
    "SELECT 1; BEGIN; SELECT 1/0; SELECT 2",
    "SELECT 3",
    "COMMIT",
)
scenario("multi-vacuum-in-implicit-tx", "SELECT 1; VACUUM probe_w", "VACUUM probe_w; VACUUM")
scenario(
    "tx-control-warnings",
    "COMMIT",
    "ROLLBACK",
    "BEGIN; BEGIN",
    "COMMIT",
    "SAVEPOINT s",
    "RELEASE s",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "LOCK TABLE probe_w",
)
scenario(
    "multi-set-then-error",
    "SET application_name = 'multi_err'; SELECT 1/0",
    "SHOW application_name",
    "SET application_name = 'multi_ok'; SELECT 1",
    "SHOW application_name",
)

# --- settings ------------------------------------------------------------------------------
scenario(
    "set-reset-show",
    "SET work_mem = '5MB'",
    "SHOW work_mem",
    "RESET work_mem",
    "SHOW work_mem",
    "SET work_mem TO DEFAULT",
    "SHOW work_mem",
)
scenario(
    "set-local",
    "SET LOCAL work_mem = '6MB'",
    "SHOW work_mem",
    "BEGIN",
    "SET LOCAL work_mem = '7MB'",
    "SHOW work_mem",
    "COMMIT",
    "SHOW work_mem",
)
scenario(
    "discard-all",
    "SET work_mem = '9MB'",
    "SET application_name = 'before_discard'",
    "PREPARE dq AS SELECT 1",
    x(P("ds", "SELECT 2"), S),
    "DISCARD ALL",
    "SHOW work_mem",
    "SHOW application_name",
    "EXECUTE dq",
    x(B("", "ds"), E(), S),
    "BEGIN",
    "DISCARD ALL",
    "ROLLBACK",
)
scenario(
    "reset-all-reported-params",
    "SET application_name = 'ra'",
    "SET TimeZone = 'Asia/Tokyo'",
    "SET DateStyle = 'German'",
    "SET IntervalStyle = 'iso_8601'",
    "SELECT '2020-01-02 03:04:05+00'::timestamptz, '1 day 2 hours'::interval, '2020-01-02'::date",
    "RESET ALL",
    "SELECT '2020-01-02 03:04:05+00'::timestamptz, '1 day 2 hours'::interval",
)
scenario(
    "set-time-zone-forms",
    "SET TIME ZONE 'America/New_York'",
    "SET TIME ZONE INTERVAL '+05:30' HOUR TO MINUTE",
    "SHOW TimeZone",
    "SET TIME ZONE LOCAL",
    "SHOW TimeZone",
)
scenario(
    "set-search-path-not-reported",
    "SET search_path TO pg_catalog, public",
    "SHOW search_path",
    "SELECT count(*) FROM probe_t",
    "RESET search_path",
)
scenario(
    "set-reported-in-rolled-back-tx",
    "BEGIN",
    "SET application_name = 'rolled'",
    "SHOW application_name",
    "ROLLBACK",
    "SHOW application_name",
    "BEGIN",
    "SAVEPOINT a",
    "SET DateStyle = 'SQL, MDY'",
    "ROLLBACK TO SAVEPOINT a",
    "COMMIT",
    "SHOW DateStyle",
)
scenario(
    "set-config-function-reported",
    "SELECT set_config('application_name', 'via_func', false)",
    "SELECT set_config('application_name', 'via_func_local', true)",
    "SHOW application_name",
)
scenario(
    "set-in-failed-tx",
    "BEGIN",
    "SELECT 1/0",
    "SET work_mem = '3MB'",
    "ROLLBACK",
    "SHOW work_mem",
)
scenario(
    "set-via-extended-protocol",
    x(PBE("SET application_name = 'ext_set'"), S),
    x(PBE("SHOW application_name"), S),
    x(PBE("SET application_name = 'ext_set2'"), PBE("SELECT 1/0"), S),
    "SHOW application_name",
)
scenario(
    "set-errors",
    "SET no_such_param = 1",
    "SET work_mem = 'lots'",
    "SET server_version = '1'",
    "RESET server_version",
    "SHOW no_such_param",
    "SHOW a.b",
)
scenario(
    "set-statement-timeout-fires",
    "SET statement_timeout = '50ms'",
    "SELECT pg_sleep(1)",
    "RESET statement_timeout",
    "SELECT 1",
)
scenario(
    "set-default-read-only",
    "SET default_transaction_read_only = on",
    "INSERT INTO probe_w VALUES (1, 'ro')",
    "SELECT count(*) FROM probe_t",
    "RESET default_transaction_read_only",
    "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "SHOW transaction_isolation",
    "COMMIT",
)
scenario(
    "set-role",
    "SET ROLE postgres",
    "SET ROLE app",
    "SELECT current_user, session_user",
    "RESET ROLE",
    "SELECT current_user",
)
scenario(
    "scs-off-literal-hides-a-set",
    "SET standard_conforming_strings = off",
    "SELECT 'a\\'; SET work_mem = 7777; SELECT '--'",
    "SHOW work_mem",
    "SHOW standard_conforming_strings",
    "RESET standard_conforming_strings",
)
scenario(
    "scs-off-literal-hides-a-write",
    "SET standard_conforming_strings = off",
    "SELECT '\\'' ; INSERT INTO probe_w VALUES (9, 'scs'); SELECT '--'",
    "RESET standard_conforming_strings",
)

# --- SQL PREPARE and protocol statements ------------------------------------------------------
scenario(
    "sql-prepare-and-protocol-views",
    x(P("s1", "SELECT $1::int", (23,)), S),
    "PREPARE q1(text) AS SELECT $1",
    "SELECT name, statement, from_sql, parameter_types::text FROM pg_prepared_statements"
    " ORDER BY name",
)
scenario(
    "sql-prepare-errors",
    "PREPARE q AS SELECT nosuch_col FROM probe_t",
    "PREPARE q2(int) AS SELECT $1",
    "EXECUTE q2",
    "EXECUTE q2(1, 2)",
    "EXECUTE q2('x')",
    "DEALLOCATE nope",
    "EXPLAIN (COSTS OFF) EXECUTE nope",
    "PREPARE q2 AS SELECT 2",
)
scenario(
    "protocol-parse-name-of-sql-prepare",
    "PREPARE shared AS SELECT 'sql'",
    x(P("shared", "SELECT 'proto'"), S),
    x(B("", "shared"), E(), S),
    x(D("S", "shared"), S),
    x(CL("S", "shared"), S),
    "EXECUTE shared",
)
scenario(
    "error-position-with-hint-comment",
    "/* pooler: primary */ SELECT nosuch",
    "/*NO LOAD BALANCE*/ SELECT 1 +",
    x(P("", "  SELECT nosuch2"), S),
)

# --- notices ------------------------------------------------------------------------------------
scenario(
    "notice-from-function",
    "SELECT probe_notice('hello')",
    "SELECT probe_warn()",
    x(PBE("SELECT probe_notice('ext')"), S),
)
scenario(
    "notice-from-do-block",
    "DO $$BEGIN RAISE NOTICE 'in do %', 1; END$$",
    "DO $$BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'd', HINT = 'h', ERRCODE = 'P0042'; END$$",
)
scenario(
    "client-min-messages",
    "SET client_min_messages = warning",
    "SELECT probe_notice('hidden')",
    "SELECT probe_warn()",
    "SET client_min_messages = error",
    "SELECT probe_warn()",
    "RESET client_min_messages",
    "SELECT probe_notice('shown')",
)
scenario(
    "constraint-violation-fields",
    "INSERT INTO probe_u VALUES (1)",
    "INSERT INTO probe_u VALUES (NULL)",
)

# --- LISTEN / NOTIFY ---------------------------------------------------------------------------
scenario(
    "listen-notify-self",
    "LISTEN probe_ch",
    "NOTIFY probe_ch, 'payload one'",
    "SELECT pg_notify('probe_ch', 'payload two')",
    "BEGIN; NOTIFY probe_ch, 'dup'; NOTIFY probe_ch, 'dup'; NOTIFY probe_ch, 'other'; COMMIT",
    "BEGIN; NOTIFY probe_ch, 'rolled back'; ROLLBACK",
    "UNLISTEN probe_ch",
    "NOTIFY probe_ch, 'unheard'",
    "UNLISTEN *",
)
scenario(
    "notify-errors",
    "NOTIFY probe_ch2, '" + "p" * 8000 + "'",
    "SELECT pg_notify('', 'x')",
    "NOTIFY probe_ch3",
)

# --- transactions ------------------------------------------------------------------------------
scenario(
    "tx-status-after-errors",
    "BEGIN",
    "SELECT 1/0",
    "SELECT 1",
    x(PBE("SELECT 1"), S),
    "COMMIT",
    "SELECT 1/0",
)
scenario(
    "savepoints",
    "BEGIN",
    "SAVEPOINT a",
    "SELECT 1/0",
    "ROLLBACK TO SAVEPOINT a",
    "SELECT 1",
    "SAVEPOINT a",
    "SAVEPOINT a",
    "RELEASE a",
    "ROLLBACK TO a",
    "RELEASE SAVEPOINT a",
    "ROLLBACK TO nope",
    "ROLLBACK",
)
scenario(
    "commit-and-rollback-and-chain",
    "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "COMMIT AND CHAIN",
    "SHOW transaction_isolation",
    "ROLLBACK AND CHAIN",
    "SHOW transaction_isolation",
    "COMMIT",
    "COMMIT AND CHAIN",
)
scenario(
    "two-phase-commit",
    "BEGIN",
    "INSERT INTO probe_w VALUES (1, '2pc')",
    "PREPARE TRANSACTION 'probe_gid'",
    "COMMIT PREPARED 'probe_gid'",
    "ROLLBACK PREPARED 'probe_gid'",
    "SELECT count(*) FROM pg_prepared_xacts",
)
scenario(
    "advisory-locks-session",
    "SELECT pg_advisory_lock(4242)",
    "SELECT pg_advisory_unlock(4242)",
    "SELECT pg_advisory_unlock(4242)",
    "SELECT pg_try_advisory_xact_lock(4243)",
)
scenario(
    "sequence-currval-lastval",
    "SELECT nextval('probe_seq') > 0",
    "SELECT currval('probe_seq') > 0",
    "SELECT lastval() > 0",
)
scenario(
    "another-clients-lastval",
    "SELECT currval('probe_seq2')",
    "SELECT lastval()",
    prelude="SELECT nextval('probe_seq2')",
)
scenario(
    "temp-table",
    "CREATE TEMP TABLE probe_tmp (a int)",
    "INSERT INTO probe_tmp VALUES (1), (2)",
    "SELECT sum(a) FROM probe_tmp",
    "DISCARD TEMP",
    "SELECT sum(a) FROM probe_tmp",
)

# --- large messages and encodings ---------------------------------------------------------------
scenario(
    "large-bind-parameter",
    x(P("", "SELECT length($1::text), md5($1::text)"), B(params=(BIG,)), E(), S),
)
scenario("large-simple-query", b"SELECT length('" + BIG + b"')")
scenario("large-result-row", "SELECT repeat('y', 1000000)")
scenario(
    "client-encoding-latin1",
    "SET client_encoding TO 'LATIN1'",
    b"SELECT '\xe9t\xe9' AS v, length('\xe9t\xe9')",
    x(P("", b"SELECT $1::text || '\xe0'"), B(params=(b"\xfc",)), E(), S),
    b"SELECT 'snowman \xe2\x98\x83'",
    "SELECT chr(9731)",
    b"SELECT 1/0 AS \xe9",
    "RESET client_encoding",
    "SELECT 'caf\u00e9'",
)
scenario(
    "invalid-utf8",
    b"SELECT '\xff'",
    x(P("", b"SELECT '\xc3'"), S),
    x(P("", "SELECT $1::text"), B(params=(b"\xfe",)), E(), S),
)
scenario("nul-in-query", x(_msg("Q", b"SELECT 1\0SELECT 2\0")))

# --- things that say where a query runs ------------------------------------------------------
scenario(
    "read-only-indicators",
    "SHOW transaction_read_only",
    "SELECT current_setting('transaction_read_only'), current_setting('in_hot_standby')",
    "SHOW in_hot_standby",
    "SELECT pg_is_in_recovery()",
    "SELECT pg_last_wal_replay_lsn() IS NULL",
)
scenario(
    "server-identity",
    "SELECT current_setting('port'), current_setting('cluster_name')",
    "SELECT count(*) FROM pg_stat_replication",
)
scenario(
    "xid-functions",
    "SELECT txid_current() > 0",
    "SELECT pg_current_xact_id_if_assigned() IS NULL",
)
scenario(
    "catalog-reads",
    "SELECT count(*) FROM pg_class WHERE relname = 'probe_t'",
    "SELECT relname FROM pg_class WHERE relname LIKE 'probe_%' ORDER BY 1",
)

# --- sessions that end -----------------------------------------------------------------------
scenario("terminate-own-backend", "SELECT pg_terminate_backend(pg_backend_pid())")
scenario(
    "idle-in-transaction-timeout",
    "SET idle_in_transaction_session_timeout = '200ms'",
    "BEGIN",
    Step(Qb("SELECT 1"), "Z", pause=0.6),
)

# --- more: statement names, unnamed statement lifetimes, pipelining ----------------------------
scenario(
    "named-statement-error-messages",
    x(P("s1", "SELECT $1::int"), S),
    x(B("", "s1"), E(), S),
    x(B("p1", "s1", (b"abc",)), E("p1"), S),
    x(B("", "s1", (b"abc",)), E(), S),
    x(P("s1", "SELECT 2"), S),
    x(D("S", "s2"), S),
)
scenario(
    "parse-same-name-same-text-twice",
    x(P("s1", "SELECT 1"), S),
    x(P("s1", "SELECT 1"), S),
    x(P("s1", "SELECT 1"), P("s1", "SELECT 1"), S),
    x(B("", "s1"), E(), S),
)
scenario(
    "close-and-reparse-in-one-batch",
    x(
        P("s1", "SELECT 1 AS a"),
        B("", "s1"),
        E(),
        CL("S", "s1"),
        P("s1", "SELECT 'two' AS b"),
        B("", "s1"),
        D("P"),
        E(),
        S,
    ),
    x(B("", "s1"), E(), S),
)
scenario(
    "unnamed-statement-dropped-by-failed-parse",
    x(P("", "SELECT 1"), S),
    x(P("", "SELEC"), S),
    x(B(), E(), S),
)
scenario(
    "unnamed-statement-dropped-by-simple-query",
    x(P("", "SELECT 1"), S),
    "SELECT 2",
    x(B(), E(), S),
)
scenario(
    "many-named-statements",
    x(*[P(f"m{i}", f"SELECT {i}") for i in range(100)], S),
    x(*[B("", f"m{i}") + E() for i in range(0, 100, 7)], S),
    x(*[CL("S", f"m{i}") for i in range(0, 100, 2)], S),
    x(*[B("", f"m{i}") + E() for i in range(0, 100, 11)], S),
)
scenario(
    "statement-names-like-the-poolers",
    x(P("_pooler_1", "SELECT 'mine'"), S),
    "PREPARE _pooler_2 AS SELECT 'mine too'",
    x(B("", "_pooler_1"), E(), S),
    "EXECUTE _pooler_2",
    "EXECUTE _pooler_3",
    x(B("", "_pooler_4"), E(), S),
)
scenario(
    "non-ascii-statement-names",
    x(P("s\u00e9", "SELECT 1"), S),
    x(B("", "s\u00e9"), E(), S),
    x(D("S", "n\u00e9"), S),
    "SET client_encoding TO 'LATIN1'",
    x(D("S", b"n\xe9"), S),
    x(P(b"l\xe9", "SELECT 2"), S),
    x(P(b"l\xe9", "SELECT 3"), S),
    "RESET client_encoding",
)
scenario(
    "pipelined-simple-queries",
    x(Qb("BEGIN"), Qb("INSERT INTO probe_w VALUES (1, 'pipe')"), Qb("ROLLBACK"), until="ZZZ"),
    x(Qb("SELECT 1/0"), Qb("SELECT 2"), until="ZZ"),
    x(Qb("BEGIN"), Qb("SELECT 1/0"), Qb("SELECT 2"), Qb("ROLLBACK"), until="ZZZZ"),
    x(PBE("SELECT 1"), S, Qb("SELECT 2"), PBE("SELECT 3"), S, until="ZZZ"),
)
scenario(
    "session-characteristics",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
    "SHOW default_transaction_isolation",
    "BEGIN",
    "SHOW transaction_isolation",
    "COMMIT",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "INSERT INTO probe_w VALUES (1, 'sc')",
    "RESET default_transaction_read_only",
    "RESET default_transaction_isolation",
)
scenario(
    "advisory-lock-extended",
    x(PBE("SELECT pg_advisory_lock(4244)"), S),
    x(PBE("SELECT pg_advisory_unlock(4244)"), S),
)
scenario(
    "function-call-advisory-lock",
    x(function_call(2880, [struct.pack("!q", 4245)])),
    "SELECT 1",
    x(function_call(2884, [struct.pack("!q", 4245)])),
)
scenario(
    "function-call-set-config",
    x(function_call(2078, [b"work_mem", b"3MB", b"f"], binary=False)),
    "SHOW work_mem",
    x(function_call(2078, [b"application_name", b"fc_app", b"f"], binary=False)),
    "SHOW application_name",
)
scenario(
    "hold-cursor-extended",
    x(PBE("DECLARE xc CURSOR WITH HOLD FOR SELECT a FROM probe_t ORDER BY a"), S),
    x(PBE("FETCH 2 FROM xc"), S),
    "CLOSE xc",
)
scenario(
    "temp-table-extended",
    x(PBE("CREATE TEMP TABLE probe_tmp2 (a int)"), S),
    x(PBE("INSERT INTO probe_tmp2 VALUES (5)"), S),
    x(PBE("SELECT a FROM probe_tmp2"), S),
)
scenario(
    "listen-extended-then-notify",
    x(PBE("LISTEN probe_ext"), S),
    "SELECT 1",
    "NOTIFY probe_ext, 'x'",
    "UNLISTEN *",
)
# (SHOW POOL_NODES, EXPLAIN ROUTE and PGPOOL are the pooler's own words, answered where
# PostgreSQL gives 42704 / 42601 on purpose: tests/admin covers them.)

# --- startup parameters --------------------------------------------------------------------
scenario(
    "startup-options-and-reset-all",
    "SHOW work_mem",
    "SHOW application_name",
    "SET work_mem = '1MB'",
    "SET application_name = 'changed'",
    "RESET ALL",
    "SHOW work_mem",
    "SHOW application_name",
    "DISCARD ALL",
    "SHOW work_mem",
    startup=(("application_name", "probe_app"), ("options", "-c work_mem=8MB")),
)
scenario(
    "startup-client-encoding-latin1",
    b"SELECT '\xe9' AS v",
    "SELECT chr(9731)",
    "RESET client_encoding",
    "SHOW client_encoding",
    startup=(("client_encoding", "LATIN1"),),
)
scenario(
    "startup-datestyle-and-timezone",
    "SELECT '2020-01-02 03:04:05+00'::timestamptz",
    "RESET ALL",
    "SELECT '2020-01-02 03:04:05+00'::timestamptz",
    startup=(("DateStyle", "SQL, DMY"), ("TimeZone", "Asia/Kolkata")),
)

# --- state changes the request's outcome hides; search_path of statements ------------------
scenario(
    "prepare-in-failed-implicit-tx",
    "PREPARE pf AS SELECT 'kept'; SELECT 1/0",
    "EXECUTE pf",
    "EXECUTE pf",
)
scenario(
    "deallocate-in-failed-implicit-tx",
    "PREPARE pd AS SELECT 'here'",
    "DEALLOCATE pd; SELECT 1/0",
    "EXECUTE pd",
    "EXECUTE pd",
)
scenario(
    "close-then-error-in-batch",
    x(P("s1", "SELECT 'one'"), S),
    x(CL("S", "s1"), PBE("SELECT 1/0"), S),
    x(B("", "s1"), E(), S),
    x(B("", "s1"), E(), S),
)
scenario(
    "close-skipped-after-error-in-batch",
    x(P("s1", "SELECT 'one'"), S),
    x(PBE("SELECT 1/0"), CL("S", "s1"), S),
    x(B("", "s1"), E(), S),
    x(B("", "s1"), E(), S),
)
scenario(
    "statement-keeps-its-search-path",
    "SET search_path TO probe_s1",
    x(P("sp", "SELECT v FROM probe_x"), S),
    "PREPARE spq AS SELECT v FROM probe_x",
    "SET search_path TO probe_s2",
    x(B("", "sp"), E(), S),
    "EXECUTE spq",
    x(B("", "sp"), E(), S),
    "EXECUTE spq",
    "RESET search_path",
)
scenario(
    "set-in-released-savepoint",
    "BEGIN",
    "SAVEPOINT a",
    "SET work_mem = '2MB'",
    "RELEASE a",
    "COMMIT",
    "SHOW work_mem",
    "SHOW work_mem",
)

# --- lone BEGIN, transaction start time ---------------------------------------------------------
scenario(
    "lone-begin-variants",
    "BEGIN",
    "BEGIN",
    "COMMIT",
    "BEGIN",
    "COMMIT",
    "START TRANSACTION",
    "ROLLBACK",
    "BEGIN WORK",
    "END",
    "begin;",
    "ABORT",
    "/* c */ BEGIN",
    "SAVEPOINT a",
    "ROLLBACK",
    "BEGIN ISOLATION LEVEL bogus",
    "BEGIN READ ONLY",
    "INSERT INTO probe_w VALUES (1, 'ro')",
    "ROLLBACK",
    "BEGIN",
    "SELECT 1/0",
    "COMMIT",
)
scenario(
    "now-is-the-start-of-the-transaction",
    "BEGIN",
    Step(Qb("SELECT now() = statement_timestamp()"), pause=0.1),
    "COMMIT",
    x(PBE("BEGIN"), S),
    Step(PBE("SELECT now() = statement_timestamp()") + S, pause=0.1),
    "COMMIT",
)
scenario(
    "snapshot-taken-at-first-statement",
    "BEGIN ISOLATION LEVEL REPEATABLE READ",
    "SELECT count(*) FROM probe_t",
    "SELECT pg_current_xact_id_if_assigned() IS NULL",
    "COMMIT",
)

# --- odd values and sizes ------------------------------------------------------------------
scenario(
    "application-name-odd-values",
    "SET application_name = '" + "n" * 100 + "'",
    "SHOW application_name",
    "SET application_name = 'caf\u00e9'",
    "SHOW application_name",
    "RESET application_name",
)
scenario("many-rows", "SELECT g FROM generate_series(1, 20000) g")
scenario(
    "cancel-own-query",
    "SELECT pg_cancel_backend(pg_backend_pid())",
    "SELECT 1",
)

# --- malformed message bodies ----------------------------------------------------------------
scenario(
    "bind-format-count-mismatches",
    x(P("", "SELECT $1::int"), B(params=(b"1",), formats=(0, 0)), E(), S),
    x(P("", "SELECT 1"), B(results=(0, 0)), E(), S),
    x(P("", "SELECT 1"), B(results=(7,)), E(), S),
    x(P("", "SELECT $1::int"), B(params=(b"1",), formats=(7,)), E(), S),
)
scenario(
    "malformed-extended-bodies",
    x(_msg("B", b"\0\0\0\0\0\x01\0\0\0\x05ab"), S),
    x(_msg("B", b"\0\0\0\0\0\0\0\0junk"), S),
    x(_msg("D", b"Xname\0"), S),
    x(_msg("C", b"Xname\0"), S),
    x(_msg("E", b"\0\xff\xff\xff\xff"), S),
    x(_msg("P", b"s\0SELECT 1"), S),
    x(_msg("P", b"\0SELECT $1\0\0\x02\0\0\0\x17"), S),
    x(_msg("D", b"S"), S),
)
scenario(
    "execute-negative-max-rows",
    x(P("", "SELECT a FROM probe_t WHERE a < 4 ORDER BY a"), B(), E("", -1), S),
)

# --- more: messages skipped after an error, statements on the primary's path ---------------
scenario(
    "query-skipped-after-ext-error",
    x(PBE("SELECT 1/0"), Qb("SELECT 2"), S),
    x(PBE("SELECT 1/0"), function_call(ABS_INT4, [struct.pack("!i", -4)]), S),
    x(PBE("SELECT 1/0"), CD(b"1\n"), COPY_DONE, CF("x"), S),
    x(PBE("SELECT 1/0"), H, until="E"),
    x(Qb("SELECT 3"), PBE("SELECT 4"), S),
)
scenario(
    "unnamed-write-statement-across-sync",
    x(P("", "SELECT nextval('probe_seq') > 0"), S),
    x(B(), E(), S),
    x(P("", "INSERT INTO probe_w VALUES (3, 'unnamed') RETURNING a"), D("S"), S),
    x(B(), E(), S),
)
scenario(
    "set-config-computed-extended",
    x(P("", "SELECT set_config('work_mem', $1, false)"), B(params=(b"3MB",)), E(), S),
    "SHOW work_mem",
    "SHOW work_mem",
)
scenario(
    "explain-and-ctas-execute-positions",
    "PREPARE ep(int) AS SELECT $1",
    "EXPLAIN (COSTS OFF) EXECUTE ep('x')",
    "CREATE TEMP TABLE probe_ctas AS EXECUTE ep('y')",
    "  /* c */ EXECUTE ep(1, 2)",
)
scenario(
    "pg-settings-sources",
    # In a transaction, so that it runs on the primary with routing too, where the
    # prelude ran.
    "BEGIN",
    "SELECT name, setting, source FROM pg_settings"
    " WHERE source NOT IN ('default', 'override', 'configuration file') ORDER BY 1",
    "COMMIT",
    "SHOW work_mem",
    prelude="SET work_mem = '77MB'; SET TimeZone = 'Asia/Tokyo'",
)


#: Scenarios whose answers through the pooler differ from PostgreSQL's, by configuration:
#: (scenario, configurations, why). Each is an xfail(strict=True): once fixed, remove it.
TX = ("tx", "tx-lb", "tx-cache")
KNOWN_DIFFERENCES: list[tuple[str, tuple[str, ...], str]] = [
    (
        "sql-prepare-and-protocol-views",
        TX,
        "pg_prepared_statements shows the pooler's names (_pooler_N), its rewritten"
        " PREPARE texts and other clients' statements",
    ),
    (
        "sql-prepare-errors",
        TX,
        "error positions (P) of PREPARE and EXECUTE count from the rewritten text"
        " (PREPARE _pooler_N ...): 30 for 21, 20 for 12",
    ),
    (
        "sequence-currval-lastval",
        TX,
        "currval/lastval are session state the pooler does not carry: on another server"
        " 55000 'currval of sequence ... is not yet defined in this session'",
    ),
    (
        "close-then-error-in-batch",
        ("tx", "tx-cache"),
        "a Close that ran before an error in its batch is forgotten: s1 is parsed again"
        " on the next server and runs where PostgreSQL says 26000",
    ),
    (
        "deallocate-in-failed-implicit-tx",
        TX,
        "DEALLOCATE in a multi-statement query that then fails still deallocates on"
        " PostgreSQL; the pooler prepares the statement again on the next server",
    ),
    (
        "explain-and-ctas-execute-positions",
        TX,
        "error positions of EXPLAIN EXECUTE and CREATE TABLE AS EXECUTE count from the"
        " rewritten statement name (39 for 32, 51 for 44)",
    ),
]
for _name, _configs, _why in KNOWN_DIFFERENCES:
    _found = [sc for sc in SCENARIOS if sc.name == _name]
    assert _found, _name
    for _config in _configs:
        _found[0].xfail[_config] = _why


NAMES = [s.name for s in SCENARIOS]
assert len(NAMES) == len(set(NAMES)), "scenario names must be unique"

# --- running them ------------------------------------------------------------------------------

Address = tuple[str, int]


def _norm(msg: Msg, own_pid: int | None) -> tuple[Any, ...]:
    """As wire.comparable, but the fields of errors and notices stay bytes (a LATIN1
    session's are not UTF-8), and a notification's pid reads "own" or "other"."""
    if msg.type in ("E", "N"):
        parts = [p for p in msg.body.split(b"\0") if p]
        return (msg.type, *((chr(p[0]), p[1:]) for p in parts if chr(p[0]) not in "FLR"))
    if msg.type in "KR":
        return comparable(msg)
    if msg.type == "A":
        pid = struct.unpack_from("!i", msg.body)[0]
        return ("A", "own" if pid == own_pid else "other", msg.body[4:])
    return (msg.type, msg.body)


def _wait_readable(wire: Wire, seconds: float) -> bool:
    if wire._buf:  # bytes already read: an answer is there
        return True
    return bool(select.select([wire.sock], [], [], seconds)[0])


class _Churn:
    """Two clients of the pooler taking turns to hold, in a transaction started by
    ``begin``, the server of one node that the client under test used last (the pool
    hands out the one checked in last): when the client is idle, one holder takes that
    server, then the other lets go of the one it held, which the client's next request
    on that node gets."""

    def __init__(self, address: Address, begin: str) -> None:
        self.begin = begin
        self.holders = [connect(address), connect(address)]
        self.holding = [False, False]
        self.turn = 0

    def rotate(self) -> None:
        a, b = self.turn, 1 - self.turn
        taker = self.holders[a]
        if self.holding[a]:
            self._release(a)
        taker.send(m.query(self.begin))
        if not _wait_readable(taker, 0.3) and self.holding[b]:
            # Both servers are taken (the client keeps one): let go first.
            self._release(b)
        answer = taker.read_until("Z")
        assert answer[-1].type == "Z" and answer[-1].body == b"T", answer
        self.holding[a] = True
        if self.holding[b]:
            self._release(b)
        self.turn = b

    def _release(self, i: int) -> None:
        answer = self.holders[i].query("COMMIT")
        assert answer[-1].type == "Z", answer
        self.holding[i] = False

    def release_all(self) -> None:
        for i in (0, 1):
            if self.holding[i]:
                self._release(i)

    def close(self) -> None:
        for wire in self.holders:
            wire.close()


class _Churns:
    """One :class:`_Churn` per node the client's requests may run on."""

    def __init__(self, address: Address, begins: list[str]) -> None:
        self.churns = [_Churn(address, begin) for begin in begins]

    def rotate(self) -> None:
        for churn in self.churns:
            churn.rotate()

    def release_all(self) -> None:
        for churn in self.churns:
            churn.release_all()

    def close(self) -> None:
        for churn in self.churns:
            churn.close()


def _login(address: Address, startup: tuple[tuple[str, str], ...]) -> tuple[Wire, list[Msg]]:
    wire = Wire(address)
    seen = wire.login(extra=startup)
    assert seen[-1].type == "Z", seen
    return wire, seen


def _prelude(address: Address, sql: str) -> None:
    """``sql`` on two servers of the pool at once, as other clients would leave it."""
    others = [connect(address), connect(address)]
    try:
        for wire in others:
            answer = wire.query(f"BEGIN; {sql}")
            assert answer[-1].body == b"T", answer
        for wire in others:
            wire.query("COMMIT")
    finally:
        for wire in others:
            wire.close()


def _converse(
    address: Address, sc: Scenario, churn: _Churns | None, pooled: bool = False
) -> list[Any]:
    seen: list[Any] = []
    if sc.prelude and pooled:
        _prelude(address, sc.prelude)
    wire, login = _login(address, sc.startup)
    seen.append(["login", *(_norm(msg, None) for msg in login)])
    with wire:
        own_pid = wire.backend_key[0] if wire.backend_key else None
        idle = True
        try:
            for step in [*sc.steps, q("SELECT 'the end'")]:
                if churn is not None and idle:
                    churn.rotate()
                if step.pause:
                    time.sleep(step.pause)
                wire.send(step.data)
                got: list[Msg] = []
                for until in step.until:
                    got += wire.read_until(until)
                    if got and got[-1].type == "E" and got[-1].fields().get("V") == "FATAL":
                        break
                seen.append([_norm(msg, own_pid) for msg in got])
                idle = bool(got) and got[-1].type == "Z" and got[-1].body == b"I"
                if got and got[-1].type == "E" and got[-1].fields().get("V") == "FATAL":
                    seen.append(("closed" if wire.is_closed(2.0) else "open",))
                    break
        except (Closed, BrokenPipeError, ConnectionResetError):
            seen.append(("closed",))
        finally:
            if churn is not None:
                churn.release_all()
    return seen


# --- fixtures --------------------------------------------------------------------------------

SETUP = [
    "DROP TABLE IF EXISTS probe_t, probe_w, probe_u",
    "DROP SEQUENCE IF EXISTS probe_seq, probe_seq2",
    "DROP SCHEMA IF EXISTS probe_s1, probe_s2 CASCADE",
    "CREATE SCHEMA probe_s1",
    "CREATE SCHEMA probe_s2",
    "CREATE TABLE probe_s1.probe_x (v text)",
    "INSERT INTO probe_s1.probe_x VALUES ('in s1')",
    "CREATE TABLE probe_s2.probe_x (v text)",
    "INSERT INTO probe_s2.probe_x VALUES ('in s2')",
    "CREATE TABLE probe_t (a int, b text)",
    "INSERT INTO probe_t SELECT g, 'row' || g FROM generate_series(1, 20) g",
    "CREATE TABLE probe_w (a int, b text)",
    "CREATE TABLE probe_u (a int PRIMARY KEY)",
    "INSERT INTO probe_u VALUES (1)",
    "CREATE SEQUENCE probe_seq",
    "CREATE SEQUENCE probe_seq2",
    """CREATE OR REPLACE FUNCTION probe_notice(msg text) RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        RAISE NOTICE 'notice: %', msg;
        RETURN 1;
    END$$""",
    """CREATE OR REPLACE FUNCTION probe_warn() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        RAISE WARNING 'a warning' USING DETAIL = 'some detail', HINT = 'a hint';
        RETURN 2;
    END$$""",
]
TEARDOWN = [
    "DROP SCHEMA IF EXISTS probe_s1, probe_s2 CASCADE",
    "DROP TABLE IF EXISTS probe_t, probe_w, probe_u",
    "DROP SEQUENCE IF EXISTS probe_seq, probe_seq2",
    "DROP FUNCTION IF EXISTS probe_notice(text), probe_warn()",
]


def _wait_for_replay(cluster: LocalCluster, timeout: float = 20.0) -> None:
    with psycopg.connect(cluster.primary.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    lsn = row[0]
    for node in cluster.standbys:
        with psycopg.connect(node.dsn(), autocommit=True) as conn:
            deadline = time.monotonic() + timeout
            while True:
                done = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn]
                ).fetchone()
                if done is not None and done[0]:
                    break
                assert time.monotonic() < deadline, f"{node.name} did not replay {lsn}"
                time.sleep(0.02)


@pytest.fixture(scope="module")
def probe_tables(cluster: LocalCluster) -> Iterator[None]:
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
        for sql in SETUP:
            conn.execute(sql)
    _wait_for_replay(cluster)
    yield
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
        for sql in TEARDOWN:
            conn.execute(sql)


#: The pooler configurations. With routing, every read goes to the first standby (weights
#: 0, 1, 0, and no read-your-writes detour to the primary after a write, which would
#: depend on when the monitor sees the standby replay), so that where a request runs
#: does not depend on chance; writes and transactions go to the primary.
CONFIGS: dict[str, dict[str, Any]] = {
    "tx": {"pool": {"mode": "transaction"}, "load_balance": {"enabled": False}},
    "tx-lb": {
        "pool": {"mode": "transaction"},
        "load_balance": {"enabled": True, "read_your_writes": False},
        "weights": [0, 1, 0],
    },
    "session": {"pool": {"mode": "session"}, "load_balance": {"enabled": False}},
    # The query cache answers repeated reads from memory: they must be PostgreSQL's.
    "tx-cache": {
        "pool": {"mode": "transaction"},
        "load_balance": {"enabled": False},
        "query_cache": {"enabled": True, "ttl": 0},
    },
}
#: What the holders of each configuration start. With routing they hold the primary's
#: servers only: a read-only transaction meant to hold a standby's server lands on the
#: primary whenever the standby's one server is busy, and the holders would then take
#: both of the primary's.
HOLDS: dict[str, list[str]] = {
    "tx": ["BEGIN; SELECT 1"],
    "tx-cache": ["BEGIN; SELECT 1"],
    "tx-lb": ["BEGIN; SELECT 1"],
}


@pytest.fixture(scope="module")
def poolers(
    cluster: LocalCluster, probe_tables: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, PoolerProcess]]:
    started: dict[str, PoolerProcess] = {}
    try:
        for name, overrides in CONFIGS.items():
            config = cluster.pooler_config(find_free_ports(1)[0])
            pool = {**overrides["pool"], "size": 2, "checkout_timeout": 10}
            config.update(pool=pool, load_balance=overrides["load_balance"])
            if "query_cache" in overrides:
                config["query_cache"] = overrides["query_cache"]
            backends: list[dict[str, Any]] = config["backends"]  # type: ignore[assignment]
            for backend, weight in zip(backends, overrides.get("weights", []), strict=False):
                backend["weight"] = weight
            workdir: Path = tmp_path_factory.mktemp(f"probe-{name}")
            started[name] = launch_pooler(config, workdir)
        yield started
    finally:
        for pooler in started.values():
            pooler.stop()


@pytest.fixture(scope="module")
def churns(poolers: dict[str, PoolerProcess]) -> Iterator[dict[str, _Churns]]:
    made = {
        name: _Churns((pooler.host, pooler.port), HOLDS[name])
        for name, pooler in poolers.items()
        if name in HOLDS
    }
    yield made
    for churn in made.values():
        churn.close()


_direct_answers: dict[str, list[Any]] = {}


def _params() -> list[Any]:
    out = []
    for config in CONFIGS:
        for sc in SCENARIOS:
            marks = []
            if config in sc.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=sc.xfail[config]))
            out.append(pytest.param(config, sc, id=f"{config}-{sc.name}", marks=marks))
    return out


@pytest.mark.parametrize(("config", "sc"), _params())
def test_probe_scenario_answers_as_postgres(
    cluster: LocalCluster,
    poolers: dict[str, PoolerProcess],
    churns: dict[str, _Churns],
    config: str,
    sc: Scenario,
) -> None:
    if sc.name not in _direct_answers:
        primary = cluster.primary
        _direct_answers[sc.name] = _converse((primary.host, primary.port), sc, None)
    want = _direct_answers[sc.name]
    pooler = poolers[config]
    got = _converse((pooler.host, pooler.port), sc, churns.get(config), pooled=True)
    differing = [
        f"step {i} ({(['login', *sc.steps, 'final query'] + ['?'] * 99)[i]!r}):"
        f"\n  direct: {w}\n  pooled: {g}"
        for i, (w, g) in enumerate(zip(want, got, strict=False))
        if g != w
    ]
    if len(got) != len(want):
        differing.append(f"{len(want)} answers directly, {len(got)} through the pooler")
    assert not differing, "\n".join(differing)


@pytest.mark.parametrize(
    ("config", "sql"),
    [
        ("tx", "SELECT pg_backend_pid()"),
        ("tx-lb", "BEGIN; SELECT pg_backend_pid(); COMMIT"),
    ],
)
def test_the_churn_moves_the_client_from_server_to_server(
    poolers: dict[str, PoolerProcess], churns: dict[str, _Churns], config: str, sql: str
) -> None:
    """The premise of the scenarios in transaction pooling: each request of an idle
    client lands on another server connection than the one before (with routing, for
    what runs on the primary)."""
    pooler = poolers[config]
    pids: list[bytes | None] = []
    churn = churns[config]
    with connect((pooler.host, pooler.port)) as wire:
        try:
            for _ in range(4):
                churn.rotate()
                answer = wire.query(sql)
                pids.extend(msg.row()[0] for msg in answer if msg.type == "D")
        finally:
            churn.release_all()
    assert len(pids) == 4 and all(pids[i] != pids[i + 1] for i in range(3)), pids


def test_the_cache_served_some_of_the_answers(poolers: dict[str, PoolerProcess]) -> None:
    """The premise of tx-cache (run after the scenarios): some reads of theirs were
    answered from the cache, not only stored."""
    pooler = poolers["tx-cache"]
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        row = conn.execute("SHOW POOL_CACHE").fetchone()
    assert row is not None
    hits = int(row[0])
    assert hits > 0, row
