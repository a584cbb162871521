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
answer. A step may also be SQL another client runs meanwhile (:func:`other`), a wait
until the standbys replayed the writes so far (``REPLAYED``), or send a CancelRequest
some time after its bytes (``Step.cancel``).
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
from helpers_clients import direct_dsn, superuser_dsn
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
from pooler.protocol.codec import build_cancel_request

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
    #: Instead of sending anything: SQL another client runs (see :func:`other`).
    other: str = ""
    #: ``other`` runs on a connection of its own to the primary, kept for the scenario,
    #: rather than through the pooler.
    direct: bool = False
    #: Instead of sending anything: wait until the standbys replayed what the primary
    #: has (so that a read routed to a standby sees the scenario's earlier writes).
    replayed: bool = False
    #: Seconds after sending ``data`` when a CancelRequest for the session is sent.
    cancel: float = 0.0

    def __repr__(self) -> str:
        if self.other:
            return f"other({self.other!r}, direct={self.direct})"
        if self.replayed:
            return "REPLAYED"
        data = self.data if len(self.data) <= 300 else self.data[:300] + b"..."
        return f"Step({data!r}, until={self.until!r})"


def q(sql: str | bytes, until: str = "Z") -> Step:
    return Step(Qb(sql), until)


def x(*parts: bytes, until: str = "Z", pause: float = 0.0) -> Step:
    return Step(b"".join(parts), until, pause)


def other(sql: str, direct: bool = False) -> Step:
    """``sql`` run by another client, as one simple Query: through the pooler on a new
    connection of its own (the holders let go first, so that it finds a server), or with
    ``direct`` on one connection to the primary kept for the whole scenario (a lock
    held across steps). Directly, both run on the primary."""
    return Step(b"", "", other=sql, direct=direct)


#: Wait until the standbys replayed every write so far (see ``Step.replayed``).
REPLAYED = Step(b"", "", replayed=True)


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


# === probe 2 ====================================================================================
# (Tables, functions and sequences these use are made in SETUP: probe_c, probe_ul, probe_lk,
# probe_counter, probe_seq3, probe_bump(), probe_imm(), probe_count_ul(), probe_notice_imm().)

C1 = "SELECT v FROM probe_c WHERE id = 1"
C2 = "SELECT v FROM probe_c WHERE id = 2"
C3 = "SELECT v FROM probe_c WHERE id = 3"
C4 = "SELECT v FROM probe_c WHERE id = 4"
CALL = "SELECT id, v FROM probe_c WHERE id <= 3 ORDER BY id"
SETTINGS_READ = (
    "SELECT '2020-01-02 03:04:05+00'::timestamptz, 0.1::float8, '\\x01ff'::bytea,"
    " '-1 day 02:03:04'::interval, '2020-01-02'::date"
)


def _copy_binary(rows: list[tuple[int, bytes]]) -> bytes:
    out = b"PGCOPY\n\xff\r\n\0" + struct.pack("!ii", 0, 0)
    for a, b in rows:
        out += struct.pack("!hii", 2, 4, a) + struct.pack("!i", len(b)) + b
    return out + struct.pack("!h", -1)


# --- the query cache: repeated reads and what must change their answers --------------------
scenario(
    "cache-repeat-after-own-write",
    "UPDATE probe_c SET v = 'a' WHERE id = 1",
    REPLAYED,
    C1,
    C1,
    "UPDATE probe_c SET v = 'a2' WHERE id = 1",
    REPLAYED,
    C1,
    C1,
    x(PBE("UPDATE probe_c SET v = 'a3' WHERE id = 1"), S),
    REPLAYED,
    x(PBE(C1), S),
    C1,
    "UPDATE probe_c SET v = 'a' WHERE id = 1",
    REPLAYED,
    x(PBE(C1), S),
)
scenario(
    "cache-write-by-another-client",
    "UPDATE probe_c SET v = 'b' WHERE id = 2",
    REPLAYED,
    C2,
    C2,
    other("UPDATE probe_c SET v = 'b2' WHERE id = 2"),
    REPLAYED,
    C2,
    other("UPDATE probe_c SET v = 'b' WHERE id = 2"),
    REPLAYED,
    C2,
    C2,
)
scenario(
    "cache-write-in-own-transaction",
    "UPDATE probe_c SET v = 'c' WHERE id = 3",
    REPLAYED,
    C3,
    C3,
    "BEGIN",
    "UPDATE probe_c SET v = 'c2' WHERE id = 3",
    C3,
    "COMMIT",
    REPLAYED,
    C3,
    "BEGIN",
    "UPDATE probe_c SET v = 'c3' WHERE id = 3",
    "ROLLBACK",
    REPLAYED,
    C3,
    "UPDATE probe_c SET v = 'c' WHERE id = 3",
    REPLAYED,
    C3,
)
scenario(
    "cache-in-failed-transaction",
    C4,
    C4,
    "BEGIN",
    "SELECT 1/0",
    C4,
    x(PBE(C4), S),
    "ROLLBACK",
    "BEGIN READ ONLY",
    C4,
    "SELECT 1/0",
    C4,
    x(PBE(C4), S),
    "ROLLBACK",
    C4,
)
scenario(
    "cache-read-only-transactions",
    C4,
    "BEGIN READ ONLY",
    C4,
    C4,
    "SHOW transaction_read_only",
    "COMMIT",
    "START TRANSACTION READ ONLY, ISOLATION LEVEL READ COMMITTED",
    C4,
    x(PBE(C4), S),
    "ROLLBACK",
    "BEGIN",
    "SET TRANSACTION READ ONLY",
    C4,
    "SELECT pg_current_xact_id_if_assigned() IS NULL",
    "COMMIT",
    "BEGIN READ ONLY",
    C4,
    "COMMIT AND CHAIN",
    C4,
    "SHOW transaction_read_only",
    "COMMIT",
)
scenario(
    "cache-read-only-transaction-write-refused",
    C4,
    "BEGIN READ ONLY",
    C4,
    "INSERT INTO probe_w VALUES (1, 'ro-cache')",
    C4,
    "ROLLBACK",
    "BEGIN READ ONLY",
    C4,
    "SELECT probe_bump()",
    C4,
    "ROLLBACK",
)
scenario(
    "cache-read-only-transaction-savepoints",
    C4,
    "BEGIN READ ONLY",
    C4,
    "SAVEPOINT a",
    C4,
    "SELECT 1/0",
    C4,
    "ROLLBACK TO SAVEPOINT a",
    C4,
    "RELEASE a",
    C4,
    "COMMIT",
)
scenario(
    "cache-repeatable-read-sees-its-snapshot",
    "UPDATE probe_c SET v = 'd' WHERE id = 4",
    REPLAYED,
    C4,
    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    C4,
    other("UPDATE probe_c SET v = 'd2' WHERE id = 4"),
    REPLAYED,
    C4,
    "COMMIT",
    C4,
    "BEGIN READ ONLY",
    C4,
    other("UPDATE probe_c SET v = 'd' WHERE id = 4"),
    REPLAYED,
    C4,
    "COMMIT",
    C4,
)
scenario(
    "cache-result-formats",
    x(P("", CALL), B(results=(1,)), E(), S),
    x(P("", CALL), B(results=(1,)), E(), S),
    x(P("", CALL), B(results=(0, 1)), E(), S),
    x(P("", CALL), B(results=(0,)), E(), S),
    x(P("", CALL), B(), E(), S),
    x(P("", CALL), B(), D("P"), E(), S),
    x(P("", CALL), B(results=(1,)), D("P"), E(), S),
    x(P("", CALL), B(results=(1,)), D("P"), E(), S),
)
scenario(
    "cache-parameter-formats",
    x(P("", "SELECT v FROM probe_c WHERE id = $1", (23,)), B(params=(b"1",)), E(), S),
    x(P("", "SELECT v FROM probe_c WHERE id = $1", (23,)), B(params=(b"1",)), E(), S),
    x(
        P("", "SELECT v FROM probe_c WHERE id = $1", (23,)),
        B(params=(struct.pack("!i", 1),), formats=(1,)),
        E(),
        S,
    ),
    x(
        P("", "SELECT v FROM probe_c WHERE id = $1", (23,)),
        B(params=(struct.pack("!i", 2),), formats=(1,)),
        E(),
        S,
    ),
    x(P("", "SELECT v FROM probe_c WHERE id = $1", (23,)), B(params=(b"2",)), E(), S),
    x(P("", "SELECT v FROM probe_c WHERE id = $1"), B(params=(b"2",)), E(), S),
    x(P("", "SELECT v FROM probe_c WHERE id = $1", (20,)), B(params=(b"2",)), E(), S),
    x(P("", "SELECT v FROM probe_c WHERE id = $1"), B(params=(b"x",)), E(), S),
)
scenario(
    "cache-describe-variants",
    x(P("", C1), B(), E(), S),
    x(P("", C1), B(), D("P"), E(), S),
    x(P("", C1), B(), D("S"), E(), S),
    x(P("", C1), B(), D("S"), E(), S),
    x(P("", C1), D("S"), B(), E(), S),
    x(P("", C1), D("S"), B(), E(), S),
    x(P("", C1), B(), E(), S),
    x(P("", C1), B(), D("P"), E(), S),
)
scenario(
    "cache-named-statement-executions",
    x(P("cn1", "SELECT v FROM probe_c WHERE id = $1", (23,)), S),
    x(B("", "cn1", (b"1",)), E(), S),
    x(B("", "cn1", (b"1",)), E(), S),
    x(B("", "cn1", (b"1",)), D("P"), E(), S),
    x(B("", "cn1", (b"1",)), D("P"), E(), S),
    x(CL("S", "cn1"), S),
    x(B("", "cn1", (b"1",)), E(), S),
    x(P("cn1", "SELECT 'other: ' || v FROM probe_c WHERE id = $1", (23,)), S),
    x(B("", "cn1", (b"1",)), E(), S),
    x(B("", "cn1", (b"1",)), E(), S),
)
scenario(
    "cache-row-limit",
    x(P("", CALL), B(), E(), S),
    x(P("", CALL), B(), E("", 2), S),
    x(P("", CALL), B(), E("", 2), E("", 0), S),
    x(P("", CALL), B(), E(), S),
    x(P("", CALL), B(), E("", 1), S),
    x(P("rl", CALL), S),
    x(B("", "rl"), E(), S),
    x(B("", "rl"), E("", 1), S),
    x(B("", "rl"), E(), S),
)
scenario(
    "cache-settings-between-identical-reads",
    SETTINGS_READ,
    SETTINGS_READ,
    "SET TimeZone = 'Asia/Tokyo'",
    SETTINGS_READ,
    "SET DateStyle = 'SQL, DMY'",
    SETTINGS_READ,
    "SET extra_float_digits = 0",
    SETTINGS_READ,
    "SET bytea_output = 'escape'",
    SETTINGS_READ,
    "SET IntervalStyle = 'sql_standard'",
    SETTINGS_READ,
    x(PBE(SETTINGS_READ), S),
    "RESET ALL",
    SETTINGS_READ,
    x(PBE(SETTINGS_READ), S),
)
scenario(
    "cache-settings-set-config-between-identical-reads",
    SETTINGS_READ,
    "SELECT set_config('TimeZone', 'America/Sao_Paulo', false)",
    SETTINGS_READ,
    "SELECT set_config('extra_float_digits', '-2', false)",
    SETTINGS_READ,
    "SELECT set_config('bytea_output', 'escape', false)",
    SETTINGS_READ,
    "RESET ALL",
    SETTINGS_READ,
)
scenario(
    "cache-client-encoding-between-identical-reads",
    "SELECT chr(233), 'x' || chr(228)",
    "SELECT chr(233), 'x' || chr(228)",
    "SET client_encoding = 'LATIN1'",
    "SELECT chr(233), 'x' || chr(228)",
    "SELECT chr(233), 'x' || chr(228)",
    "SET client_encoding = 'WIN1252'",
    "SELECT chr(8364)",
    "SELECT chr(8364)",
    "RESET client_encoding",
    "SELECT chr(8364)",
    "SELECT chr(233), 'x' || chr(228)",
)
scenario(
    "cache-search-path-between-identical-reads",
    "SET search_path TO probe_s1",
    "SELECT v FROM probe_x",
    "SELECT v FROM probe_x",
    "SET search_path TO probe_s2",
    "SELECT v FROM probe_x",
    "SELECT v FROM probe_x",
    x(PBE("SELECT v FROM probe_x"), S),
    "SET search_path TO probe_s1, probe_s2",
    "SELECT v FROM probe_x",
    "SELECT set_config('search_path', 'probe_s2', false)",
    "SELECT v FROM probe_x",
    "RESET search_path",
    "SELECT v FROM probe_x",
    "SELECT v FROM probe_x",
)
scenario(
    "cache-named-statements-same-text-other-search-path",
    "SET search_path TO probe_s1",
    x(P("sp1", "SELECT v FROM probe_x"), S),
    "SET search_path TO probe_s2",
    x(B("", "sp1"), E(), S),
    x(P("sp2", "SELECT v FROM probe_x"), S),
    x(B("", "sp2"), E(), S),
    x(B("", "sp1"), E(), S),
    x(B("", "sp2"), E(), S),
    "RESET search_path",
)
scenario(
    "cache-volatile-function-repeated",
    "UPDATE probe_counter SET n = 0",
    "SELECT probe_bump()",
    "SELECT probe_bump()",
    x(PBE("SELECT probe_bump()"), S),
    x(PBE("SELECT probe_bump()"), S),
    REPLAYED,
    "SELECT n FROM probe_counter",
    "SELECT probe_bump()",
    REPLAYED,
    "SELECT n FROM probe_counter",
)
scenario(
    "cache-immutable-function-reading-a-table",
    "UPDATE probe_c SET v = 'e' WHERE id = 5",
    REPLAYED,
    "SELECT probe_imm(5)",
    "SELECT probe_imm(5)",
    "UPDATE probe_c SET v = 'e2' WHERE id = 5",
    REPLAYED,
    "SELECT probe_imm(5)",
    "UPDATE probe_c SET v = 'e' WHERE id = 5",
    REPLAYED,
    "SELECT probe_imm(5)",
)
scenario(
    "cache-notice-from-immutable-function",
    "SELECT probe_notice_imm('once')",
    "SELECT probe_notice_imm('once')",
    x(PBE("SELECT probe_notice_imm('ext')"), S),
    x(PBE("SELECT probe_notice_imm('ext')"), S),
)
scenario(
    "cache-empty-many-and-wide-results",
    "SELECT v FROM probe_c WHERE id < 0",
    "SELECT v FROM probe_c WHERE id < 0",
    x(PBDE("SELECT v FROM probe_c WHERE id < 0"), S),
    x(PBDE("SELECT v FROM probe_c WHERE id < 0"), S),
    "SELECT g, md5(g::text) FROM generate_series(1, 3000) g",
    "SELECT g, md5(g::text) FROM generate_series(1, 3000) g",
    "SELECT g, repeat(md5(g::text), 1000) FROM generate_series(1, 40) g",
    "SELECT g, repeat(md5(g::text), 1000) FROM generate_series(1, 40) g",
    "SELECT repeat('w', 300000)",
    "SELECT repeat('w', 300000)",
)
scenario(
    "cache-ddl-between-identical-reads",
    "DROP TABLE IF EXISTS probe_dd",
    "CREATE TABLE probe_dd (a int)",
    "INSERT INTO probe_dd VALUES (1)",
    REPLAYED,
    "SELECT to_json(d) FROM probe_dd AS d",
    "SELECT to_json(d) FROM probe_dd AS d",
    "ALTER TABLE probe_dd ADD COLUMN b text DEFAULT 'new'",
    REPLAYED,
    "SELECT to_json(d) FROM probe_dd AS d",
    "ALTER TABLE probe_dd RENAME COLUMN b TO c",
    REPLAYED,
    "SELECT to_json(d) FROM probe_dd AS d",
    "CREATE TABLE probe_s1.probe_dd (z int)",
    "SET search_path TO probe_s1, public",
    REPLAYED,
    "SELECT to_json(d) FROM probe_dd AS d",
    "DROP TABLE probe_s1.probe_dd",
    REPLAYED,
    "SELECT to_json(d) FROM probe_dd AS d",
    "RESET search_path",
    "DROP TABLE probe_dd",
    REPLAYED,
    "SELECT to_json(d) FROM probe_dd AS d",
)

# --- named statements keep what their Parse saw -------------------------------------------
scenario(
    "named-statement-parse-time-datestyle",
    "SET DateStyle = 'ISO, MDY'",
    x(P("ds1", "SELECT '01/02/2020'::date AS d"), S),
    "PREPARE dsq AS SELECT '01/02/2020'::date AS d",
    "SET DateStyle = 'ISO, DMY'",
    x(B("", "ds1"), E(), S),
    "EXECUTE dsq",
    x(P("ds2", "SELECT '01/02/2020'::date AS d"), S),
    x(B("", "ds2"), E(), S),
    x(B("", "ds1"), E(), S),
    "RESET DateStyle",
)
scenario(
    "named-statement-parse-time-timezone",
    "SET TimeZone = 'UTC'",
    x(P("tz1", "SELECT '2020-01-02 03:04:05'::timestamptz AS t"), S),
    "PREPARE tzq AS SELECT '2020-01-02 03:04:05'::timestamptz AS t",
    "SET TimeZone = 'Asia/Tokyo'",
    x(B("", "tz1"), E(), S),
    "EXECUTE tzq",
    x(B("", "tz1"), E(), S),
    "RESET TimeZone",
)
scenario(
    "named-statement-parse-time-now",
    x(P("nw1", "SELECT 'now'::timestamptz < now() AS parsed_earlier"), S),
    Step(B("", "nw1") + E() + S, pause=0.2),
    Step(B("", "nw1") + E() + S, pause=0.05),
)
scenario(
    "named-statement-parsed-in-latin1",
    "SET client_encoding = 'LATIN1'",
    x(P("l1", b"SELECT '\xe9' AS v"), S),
    "PREPARE lq AS SELECT chr(233) AS v",
    "RESET client_encoding",
    x(B("", "l1"), E(), S),
    "EXECUTE lq",
    x(B("", "l1"), D("P"), E(), S),
)

# --- routing: what a standby would answer otherwise ----------------------------------------
scenario(
    "routing-unlogged-table-reads",
    "SELECT count(*) FROM probe_ul",
    x(PBE("SELECT count(*) FROM probe_ul"), S),
    "SELECT probe_count_ul()",
    x(PBE("SELECT probe_count_ul()"), S),
    "COPY probe_ul TO STDOUT",
    "COPY (SELECT probe_count_ul()) TO STDOUT",
    "SELECT count(*) FROM probe_t, probe_ul",
)
scenario(
    "routing-sequence-reads",
    "SELECT setval('probe_seq3', 100)",
    "SELECT nextval('probe_seq3')",
    REPLAYED,
    "SELECT last_value, is_called FROM probe_seq3",
    x(PBE("SELECT last_value FROM probe_seq3"), S),
    "SELECT last_value FROM pg_sequences WHERE sequencename = 'probe_seq3'",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SELECT last_value, is_called FROM probe_seq3",
    "COMMIT",
)
scenario(
    "routing-read-only-transaction-then-node-questions",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SHOW in_hot_standby",
    "SELECT pg_is_in_recovery()",
    "SELECT pg_last_wal_replay_lsn() IS NULL",
    "SHOW transaction_read_only",
    "COMMIT",
)
scenario(
    "routing-read-only-transaction-then-unlogged",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SELECT count(*) FROM probe_ul",
    "COMMIT",
    "BEGIN READ ONLY",
    x(PBE("SELECT count(*) FROM probe_t"), S),
    x(PBE("SELECT probe_count_ul()"), S),
    "ROLLBACK",
)
scenario(
    "routing-read-only-transaction-then-xid",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SELECT pg_current_xact_id_if_assigned() IS NULL",
    "SELECT txid_current() > 0",
    "ROLLBACK",
)
scenario(
    "routing-read-only-transaction-then-listen-notify",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "LISTEN probe_ro",
    "COMMIT",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "NOTIFY probe_ro",
    "COMMIT",
    "UNLISTEN *",
)
scenario(
    "routing-read-only-transaction-then-advisory-lock",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SELECT pg_advisory_xact_lock(4270)",
    "SELECT pg_try_advisory_lock(4271)",
    "COMMIT",
    "SELECT pg_advisory_unlock(4271)",
)
scenario(
    "routing-row-locks",
    "SELECT a FROM probe_t WHERE a = 1 FOR SHARE",
    "SELECT a FROM probe_t WHERE a = 2 FOR UPDATE SKIP LOCKED",
    "SELECT a FROM probe_t WHERE a = 3 FOR KEY SHARE NOWAIT",
    x(PBE("SELECT a FROM probe_t WHERE a = 4 FOR NO KEY UPDATE"), S),
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SELECT a FROM probe_t WHERE a = 1 FOR SHARE",
    "ROLLBACK",
)
scenario(
    "routing-writes-inside-reads",
    "WITH w AS (INSERT INTO probe_w VALUES (1, 'cte') RETURNING a) SELECT count(*) FROM w",
    "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF)"
    " INSERT INTO probe_w VALUES (1, 'explained')",
    "SELECT count(*) > 0 FROM (SELECT probe_bump()) AS s",
    "SELECT * FROM probe_t WHERE a = 1 AND probe_bump() > 0",
    "SELECT nextval('probe_seq3') > 0",
    "SELECT pg_notify('probe_none', 'x')",
    "SELECT lo_unlink(lo_create(0)) = 1",
)
scenario(
    "routing-serializable-transactions",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SHOW transaction_isolation",
    "SELECT pg_is_in_recovery()",
    "COMMIT",
    "BEGIN READ ONLY",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SELECT count(*) FROM probe_t",
    "SELECT pg_is_in_recovery()",
    "COMMIT",
    "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
    "SELECT count(*) FROM probe_t",
    "COMMIT",
    "SET default_transaction_isolation = 'serializable'",
    "SELECT count(*) FROM probe_t",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SHOW transaction_isolation",
    "SELECT pg_is_in_recovery()",
    "COMMIT",
    "RESET default_transaction_isolation",
)
scenario(
    "routing-set-transaction-after-begin",
    "BEGIN",
    "SET TRANSACTION READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SET TRANSACTION READ WRITE",
    "ROLLBACK",
    "BEGIN",
    "SET transaction_read_only = on",
    "SELECT count(*) FROM probe_t",
    "COMMIT",
    "BEGIN",
    "SET LOCAL transaction_read_only = on",
    "SELECT count(*) FROM probe_t",
    "COMMIT",
    "BEGIN READ ONLY",
    "SET TRANSACTION READ WRITE",
    "SELECT count(*) FROM probe_t",
    "INSERT INTO probe_w VALUES (1, 'rw')",
    "ROLLBACK",
    "SET transaction_isolation = 'serializable'",
    "SET TRANSACTION READ ONLY",
)
scenario(
    "routing-savepoints-in-read-only-transaction",
    "BEGIN READ ONLY",
    "SELECT count(*) FROM probe_t",
    "SAVEPOINT a",
    "SELECT 1/0",
    "ROLLBACK TO SAVEPOINT a",
    "SELECT count(*) FROM probe_t",
    "RELEASE a",
    "SAVEPOINT b",
    "ROLLBACK TO b",
    "COMMIT",
    x(PBE("BEGIN READ ONLY"), PBE("SELECT 1"), PBE("SAVEPOINT c"), PBE("SELECT 1/0"), S),
    x(PBE("ROLLBACK TO c"), PBE("SELECT 2"), PBE("COMMIT"), S),
)
scenario(
    "routing-temp-table-reads",
    "CREATE TEMP TABLE probe_tmp3 AS SELECT 1 AS a",
    "SELECT a + 0 AS a FROM pg_temp.probe_tmp3",
    x(PBE("SELECT count(*) FROM probe_tmp3"), S),
    "BEGIN READ ONLY; SELECT a + 0 AS a FROM probe_tmp3; COMMIT",
    "COPY probe_tmp3 TO STDOUT",
)

scenario(
    "routing-settings-the-client-set",
    "SET work_mem = '3MB'",
    "SELECT current_setting('work_mem')",
    "SHOW work_mem",
    "SET probe.custom = 'v1'",
    "SELECT current_setting('probe.custom')",
    "SHOW probe.custom",
    "RESET probe.custom",
    "SHOW probe.custom",
    "SELECT current_setting('probe.custom', true)",
    "RESET ALL",
    "SHOW work_mem",
    "SHOW probe.custom",
)

# --- session state --------------------------------------------------------------------------
scenario(
    "custom-setting-placeholder-left-by-others",
    "SHOW probe.leak",
    "SELECT current_setting('probe.leak', true)",
    "SELECT count(*) FROM pg_settings WHERE name = 'probe.leak'",
    prelude="SET probe.leak = 'x'",
)
scenario(
    "statement-timeout-follows-the-client",
    "SET statement_timeout = '100ms'",
    "SELECT pg_sleep(0.3)",
    "SELECT pg_sleep(0.3)",
    x(PBE("SELECT pg_sleep(0.3)"), S),
    "BEGIN",
    "SELECT pg_sleep(0.3)",
    "ROLLBACK",
    "SHOW statement_timeout",
    "RESET statement_timeout",
)
scenario(
    "lock-timeout-against-another-client",
    other("BEGIN; LOCK TABLE probe_lk IN ACCESS EXCLUSIVE MODE", direct=True),
    "SET lock_timeout = '100ms'",
    "INSERT INTO probe_lk VALUES (1)",
    x(PBE("INSERT INTO probe_lk VALUES (2)"), S),
    other("ROLLBACK", direct=True),
    other("SELECT pg_advisory_lock(4280)", direct=True),
    "SELECT pg_advisory_xact_lock(4280)",
    "SELECT pg_advisory_lock(4280)",
    other("SELECT pg_advisory_unlock(4280)", direct=True),
)

scenario(
    "application-name-in-pg-stat-activity",
    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "SET application_name = 'probe_psa'",
    "SELECT application_name, state, query FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "RESET application_name",
    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
)
scenario(
    "startup-application-name-in-pg-stat-activity",
    "SELECT application_name, usename, datname, backend_type"
    " FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'probe_start'",
    startup=(("application_name", "probe_start"),),
)
scenario(
    "client-and-server-addresses",
    "SELECT inet_client_addr(), inet_server_addr(), inet_server_port() IS NOT NULL",
    "SELECT client_addr, client_hostname FROM pg_stat_activity WHERE pid = pg_backend_pid()",
    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
)
scenario(
    "default-read-only-then-begin-write",
    "SET default_transaction_read_only = on",
    "BEGIN",
    "SHOW transaction_read_only",
    "INSERT INTO probe_w VALUES (1, 'dro')",
    "ROLLBACK",
    x(PBE("BEGIN"), PBE("UPDATE probe_t SET b = b WHERE a = 0"), S),
    x(PBE("ROLLBACK"), S),
    "BEGIN READ WRITE",
    "UPDATE probe_t SET b = b WHERE a = 0",
    "ROLLBACK",
    "SELECT probe_bump()",
    "RESET default_transaction_read_only",
)
scenario(
    "session-characteristics-read-only-then-begin-write",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "SHOW default_transaction_read_only",
    "BEGIN",
    "UPDATE probe_t SET b = b WHERE a = 0",
    "ROLLBACK",
    "COPY probe_w FROM STDIN",
    "SELECT count(*) FROM probe_t",
    "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    "UPDATE probe_t SET b = b WHERE a = 0",
)
scenario(
    "role-and-authorization-resets",
    "RESET ROLE",
    "SET ROLE NONE",
    "SELECT current_user, session_user",
    "SET LOCAL ROLE app",
    "SET SESSION AUTHORIZATION app",
    "SELECT current_user, session_user",
    "RESET SESSION AUTHORIZATION",
)

scenario(
    "set-local-reported-and-search-path",
    "BEGIN",
    "SET LOCAL TimeZone = 'Asia/Tokyo'",
    "SET LOCAL application_name = 'local_app'",
    "SHOW TimeZone",
    "COMMIT",
    "SHOW TimeZone",
    "SHOW application_name",
    "BEGIN",
    "SET LOCAL search_path = probe_s2",
    "SELECT v FROM probe_x",
    "COMMIT",
    "SELECT v FROM probe_x",
)
scenario(
    "setseed-then-random",
    "SELECT setseed(0.25)",
    "SELECT random()",
    "SELECT random()",
    x(PBE("SELECT random()"), S),
)
scenario(
    "log-statement-messages",
    "SET client_min_messages = log",
    "SET log_statement = 'all'",
    "SELECT 1",
    "SELECT 2",
    x(PBE("SELECT 3"), S),
    x(P("lsx", "SELECT 4"), S),
    x(B("", "lsx"), E(), S),
    "PREPARE lsq AS SELECT 5",
    "EXECUTE lsq",
    "RESET log_statement",
    "RESET client_min_messages",
)

# --- statement names and parameter types -------------------------------------------------------
N70 = "s" + "x" * 69
N63 = N70[:63]
scenario(
    "statement-names-odd-characters",
    x(P("my stmt", "SELECT 'spaced'"), P('a"b', "SELECT 'quoted'"), P("it's", "SELECT 'apos'"), S),
    x(P("\u2603", "SELECT 'snow'"), S),
    x(B("", "my stmt"), E(), B("", 'a"b'), E(), B("", "it's"), E(), B("", "\u2603"), E(), S),
    'PREPARE "my stmt" AS SELECT 1',
    'EXECUTE "my stmt"',
    'EXECUTE "a""b"',
    'DEALLOCATE "it\'s"',
    x(B("", "it's"), E(), S),
    'DEALLOCATE "\u2603"',
    x(D("S", "\u2603"), S),
)
scenario(
    "statement-names-longer-than-identifiers",
    x(P(N70, "SELECT 'proto70'"), S),
    x(B("", N70), E(), S),
    x(B("", N63), E(), S),
    f"PREPARE {N70} AS SELECT 'sql70'",
    x(B("", N63), E(), S),
    f"EXECUTE {N70}",
    f"EXECUTE {N63}",
    f"DEALLOCATE {N70}",
    x(B("", N63), E(), S),
    x(B("", N70), E(), S),
    f"EXECUTE {N70}",
)
scenario(
    "same-text-under-many-names",
    x(*[P(f"dup{i}", "SELECT $1::int + 1", (23,)) for i in range(30)], S),
    x(*[B("", f"dup{i}", (str(i).encode(),)) + E() for i in range(0, 30, 3)], S),
    x(*[B("", f"dup{i}", (str(i).encode(),)) + E() for i in range(1, 30, 7)], S),
    x(*[CL("S", f"dup{i}") for i in range(0, 30, 2)], S),
    x(*[B("", f"dup{i}", (b"0",)) + E() for i in range(0, 6)], S),
)
scenario(
    "deallocate-all-variants",
    x(P("da1", "SELECT 'p1'"), S),
    "PREPARE daq AS SELECT 'q1'",
    "DEALLOCATE PREPARE ALL",
    x(B("", "da1"), E(), S),
    "EXECUTE daq",
    x(P("da1", "SELECT 'p2'"), S),
    x(B("", "da1"), E(), S),
    "DEALLOCATE ALL",
    x(D("S", "da1"), S),
    "PREPARE daq AS SELECT 'q2'",
    "EXECUTE daq",
)
scenario(
    "sql-statements-on-protocol-statements",
    x(P("ps1", "SELECT $1::int * 3", (23,)), S),
    "EXECUTE ps1(5)",
    "EXPLAIN (COSTS OFF) EXECUTE ps1(5)",
    "DEALLOCATE ps1",
    x(B("", "ps1", (b"1",)), E(), S),
    "DEALLOCATE PREPARE ps1",
    "PREPARE ps1(int) AS SELECT $1 * 4",
    x(B("", "ps1", (b"2",)), E(), S),
    x(D("S", "ps1"), S),
)
scenario(
    "parameter-types-given-and-inferred",
    x(P("t1", "SELECT $1", (0,)), D("S", "t1"), S),
    x(P("t2", "SELECT $1 + 1"), D("S", "t2"), S),
    x(P("t3", "SELECT $1::int", (20,)), D("S", "t3"), S),
    x(P("t4", "SELECT $1, $2", (23,)), D("S", "t4"), S),
    x(P("t5", "SELECT $1::text, $2", (0, 1700)), D("S", "t5"), S),
    x(D("S", "t1"), D("S", "t2"), D("S", "t3"), D("S", "t4"), D("S", "t5"), S),
    x(B("", "t4", (b"1", b"x")), D("P"), E(), S),
    x(B("", "t3", (b"99999999999",)), E(), S),
    x(B("", "t5", (b"a", b"1.50")), D("P"), E(), S),
)
scenario(
    "parameter-types-undeterminable",
    x(P("", "SELECT $2::int"), D("S"), S),
    x(P("", "SELECT $1 = $2"), D("S"), S),
    x(P("u1", "SELECT $1 IS NULL"), D("S", "u1"), S),
    x(P("u2", "SELECT $1::unknown"), D("S", "u2"), S),
    x(P("", "SELECT $1", (705,)), D("S"), S),
    x(P("", "SELECT $1 FROM probe_t WHERE a = $1"), D("S"), S),
)

# --- pipelines ------------------------------------------------------------------------------------
scenario(
    "pipeline-queries-and-batches-with-errors",
    x(
        Qb("SELECT 1"),
        PBE("SELECT 1/0"),
        PBE("SELECT 2"),
        S,
        Qb("SELECT 3"),
        PBE("SELECT 4"),
        S,
        until="ZZZZ",
    ),
    x(PBE("SELECT 1"), S, PBE("SELECT 1/0"), S, PBE("SELECT 3"), S, until="ZZZ"),
    x(Qb("SELECT 1/0; SELECT 2"), PBE("SELECT 3"), S, Qb("SELECT 4"), until="ZZZ"),
)
scenario(
    "pipeline-transaction-over-several-syncs",
    x(
        PBE("BEGIN"),
        S,
        PBE("INSERT INTO probe_w VALUES (8, 'pipe2')"),
        S,
        PBE("SELECT count(*) FROM probe_w WHERE b = 'pipe2'"),
        S,
        PBE("ROLLBACK"),
        S,
        until="ZZZZ",
    ),
    x(PBE("BEGIN"), S, PBE("SELECT 1/0"), S, PBE("SELECT 2"), S, PBE("ROLLBACK"), S, until="ZZZZ"),
    x(Qb("BEGIN"), PBE("SELECT 1"), S, Qb("COMMIT"), PBE("SELECT 2"), S, until="ZZZZ"),
)
scenario(
    "pipeline-set-then-show",
    x(Qb("SET work_mem = '4MB'"), Qb("SHOW work_mem"), until="ZZ"),
    x(PBE("SET application_name = 'pp'"), S, PBE("SHOW application_name"), S, until="ZZ"),
    x(Qb("RESET ALL"), Qb("SHOW work_mem"), Qb("SHOW application_name"), until="ZZZ"),
    x(PBE("SET search_path TO probe_s2"), S, PBE("SELECT v FROM probe_x"), S, until="ZZ"),
    "RESET search_path",
)
scenario(
    "pipeline-flush-then-sync-later",
    x(P("f1", "SELECT 1 AS one"), H, until="1"),
    x(B("", "f1"), E(), H, until="C"),
    x(P("f2", "SELECT 2 AS two"), B("", "f2"), D("P"), E(), H, until="C"),
    x(S),
    x(B("", "f1"), E(), B("", "f2"), E(), S),
)
scenario(
    "pipeline-copy-in-without-waiting",
    x(Qb("COPY probe_w FROM STDIN"), CD(b"1\tpipecopy\n"), COPY_DONE, Qb("SELECT 1"), until="ZZ"),
    x(PBE("COPY probe_w FROM STDIN"), CD(b"2\tpc\n"), COPY_DONE, S, PBE("SELECT 2"), S, until="ZZ"),
    x(Qb("COPY probe_w FROM STDIN"), CD(b"bad\n"), COPY_DONE, Qb("SELECT 3"), until="ZZ"),
)
scenario(
    "pipeline-describe-after-execute-error",
    x(P("", "SELECT 1/(a - 1) FROM probe_t WHERE a = 1"), B(), E(), D("P"), S),
    x(P("", "SELECT 1/(a - 1) FROM probe_t WHERE a = 1"), B("pe"), D("P", "pe"), S),
    x(D("P", "pe"), S),
)

# --- COPY ---------------------------------------------------------------------------------------
scenario(
    "copy-in-read-only-transaction",
    "BEGIN READ ONLY",
    "COPY probe_w FROM STDIN",
    "ROLLBACK",
    "BEGIN READ ONLY",
    "COPY (SELECT a FROM probe_t WHERE a < 3 ORDER BY a) TO STDOUT",
    "COPY probe_c (id) TO STDOUT",
    "COMMIT",
    "SET default_transaction_read_only = on",
    "COPY probe_w FROM STDIN",
    "RESET default_transaction_read_only",
)
scenario(
    "copy-in-column-count",
    q("COPY probe_w FROM STDIN", "G"),
    x(CD(b"1\n"), COPY_DONE),
    q("COPY probe_w (a) FROM STDIN", "G"),
    x(CD(b"1\textra\n"), COPY_DONE),
    q("COPY probe_w FROM STDIN (FORMAT csv)", "G"),
    x(CD(b'1,"open\n'), COPY_DONE),
)
scenario(
    "copy-in-binary",
    q("COPY probe_w FROM STDIN (FORMAT binary)", "G"),
    x(CD(_copy_binary([(1, b"bin1"), (2, b"bin2")])), COPY_DONE),
    q("COPY probe_w FROM STDIN (FORMAT binary)", "G"),
    x(CD(b"PGCOPY\n\xff\r\n\1" + b"\0" * 8), COPY_DONE),
    q("COPY probe_w FROM STDIN (FORMAT binary)", "G"),
    x(CD(_copy_binary([(3, b"bin3")])[:-2]), COPY_DONE),
    "COPY (SELECT DISTINCT a, b FROM probe_w WHERE b LIKE 'bin%' ORDER BY a)"
    " TO STDOUT (FORMAT binary)",
)
scenario(
    "copy-out-many-rows-and-routed",
    "COPY (SELECT g FROM generate_series(1, 5000) g) TO STDOUT",
    "COPY probe_t TO STDOUT (FORMAT csv, HEADER, FORCE_QUOTE *)",
    x(PBE("COPY probe_t (a) TO STDOUT", 3), S),
)

# --- several statements in one Query --------------------------------------------------------------
scenario(
    "multi-mixed-results",
    "SELECT 1 AS a; INSERT INTO probe_w VALUES (1, 'mixed') RETURNING a;"
    " SET work_mem = '2MB'; SHOW work_mem; SELECT 2 AS b",
    "SHOW work_mem",
    "SHOW work_mem; SHOW application_name; SELECT current_setting('work_mem')",
    "RESET work_mem; SHOW work_mem",
    "SELECT 1; SELECT pg_is_in_recovery()",
    "SELECT count(*) FROM probe_t; SELECT count(*) FROM probe_ul",
)
scenario(
    "multi-empty-statements-and-comments",
    ";;SELECT 1;;;SELECT 2;",
    "SELECT 1;;",
    "-- c1\n;-- c2\n",
    "/* a */;/* b */",
    "SELECT 1; -- trailing comment",
    "; BEGIN; ; COMMIT;",
    "/* x */ ; /* y */ SELECT 3 /* z */ ;",
    x(P("", "-- only\n"), B(), D("P"), E(), S),
    x(P("", "SELECT 4; "), B(), E(), S),
)

# --- what other clients leave on a server --------------------------------------------------
scenario(
    "left-by-others-temp-schema",
    "SELECT pg_my_temp_schema() = 0",
    "SELECT current_schemas(true)",
    "CREATE TEMP TABLE probe_leak_tmp (a int)",
    "SELECT count(*) FROM probe_leak_tmp",
    prelude="CREATE TEMP TABLE probe_leak_tmp (a int)",
)
scenario(
    "left-by-others-listen",
    "SELECT pg_listening_channels()",
    "NOTIFY probe_leak, 'x'",
    "SELECT 1",
    prelude="LISTEN probe_leak",
)
scenario(
    "left-by-others-advisory-lock",
    "SELECT pg_try_advisory_lock(4260)",
    "SELECT pg_advisory_unlock(4260)",
    "SELECT pg_advisory_unlock(4260)",
    prelude="SELECT pg_try_advisory_lock(4260)",
)
scenario(
    "left-by-others-hold-cursor",
    "FETCH probe_leak_c",
    "SELECT count(*) FROM pg_cursors",
    "DECLARE probe_leak_c CURSOR WITH HOLD FOR SELECT 2",
    "FETCH probe_leak_c",
    "CLOSE probe_leak_c",
    prelude="DECLARE probe_leak_c CURSOR WITH HOLD FOR SELECT 1",
)
scenario(
    "left-by-others-sql-prepare",
    "EXECUTE probe_leak_p",
    "PREPARE probe_leak_p AS SELECT 2",
    "EXECUTE probe_leak_p",
    prelude="PREPARE probe_leak_p AS SELECT 1",
)
scenario(
    "left-by-others-role-and-seed",
    "SELECT current_user, session_user",
    "SELECT random() = random()",
    prelude="SET ROLE app; SELECT setseed(0.5)",
)

# --- questions about the node, asked other ways than the routing knows ------------------------
scenario(
    "routing-node-settings-through-views",
    "SELECT name, setting FROM pg_settings"
    " WHERE name IN ('in_hot_standby', 'transaction_read_only', 'port') ORDER BY 1",
    "SELECT current_setting(n) FROM (VALUES ('in_hot_standby')) AS v(n)",
    "SELECT current_setting('IN_HOT_STANDBY'), pg_catalog.current_setting('port') IS NOT NULL",
    "SELECT setting FROM pg_show_all_settings() WHERE name = 'in_hot_standby'",
)
scenario(
    "routing-node-statistics-and-sizes",
    "SELECT pg_relation_size('probe_ul') > 0, pg_table_size('probe_ul') > 0",
    "SELECT n_live_tup > 0 FROM pg_stat_user_tables WHERE relname = 'probe_u'",
    "SELECT count(*) FROM pg_stat_wal_receiver",
    "SELECT backend_type, count(*) FROM pg_stat_activity"
    " WHERE backend_type IN ('walsender', 'walreceiver', 'startup') GROUP BY 1 ORDER BY 1",
)
scenario(
    "routing-recovery-and-wal-functions",
    "SELECT pg_is_wal_replay_paused()",
    "SELECT pg_last_xact_replay_timestamp() IS NULL",
    "SELECT pg_current_wal_lsn() > '0/0'",
    "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0') > 0",
    "SELECT pg_get_wal_replay_pause_state()",
)

# --- the cache and locks ------------------------------------------------------------------------
scenario(
    "cache-read-while-another-client-locks-the-table",
    # (Keeps reads on the primary with routing too, as no standby is sure to hold the
    # primary's lock.)
    "SET default_transaction_isolation = 'serializable'",
    C1,
    C1,
    other("BEGIN; LOCK TABLE probe_c IN ACCESS EXCLUSIVE MODE", direct=True),
    C1,
    x(PBE(C1), S),
    other("ROLLBACK", direct=True),
    C1,
    startup=(("options", "-c lock_timeout=100"),),
)
scenario(
    "setting-made-inside-a-function",
    "SELECT probe_setter()",
    "SHOW work_mem",
    "SHOW work_mem",
    "BEGIN",
    "SELECT probe_setter()",
    "COMMIT",
    "SELECT current_setting('work_mem')",
    "RESET work_mem",
)
scenario(
    "advisory-lock-taken-inside-a-function",
    "SELECT probe_locker()",
    "SELECT pg_advisory_unlock(4290)",
    "SELECT pg_advisory_unlock(4290)",
)
scenario(
    "temp-table-made-inside-a-function",
    "SELECT probe_temp_maker()",
    "SELECT count(*) FROM tmp_from_fn",
    "SELECT count(*) FROM tmp_from_fn",
    "DROP TABLE tmp_from_fn",
)

# --- cancel requests, time, timeouts ------------------------------------------------------------
scenario(
    "cancel-request-variants",
    Step(Qb("SELECT pg_sleep(3)"), cancel=0.2),
    Step(PBE("SELECT pg_sleep(3)") + PBE("SELECT 1") + S, cancel=0.2),
    "BEGIN",
    Step(Qb("SELECT pg_sleep(3)"), cancel=0.2),
    "SELECT 1",
    "ROLLBACK",
    Step(Qb("COPY probe_w FROM STDIN"), until="G", cancel=0.2),
    x(CD(b"1\tcancelled\n"), COPY_DONE),
    Step(Qb("SELECT 1"), cancel=0.2),
)
scenario(
    "transaction-start-time-after-a-pause",
    "BEGIN",
    Step(Qb("SELECT statement_timestamp() - now() > interval '0.2 s'"), pause=0.3),
    "COMMIT",
    "BEGIN",
    Step(
        Qb(
            "SELECT now() < query_start - interval '0.2 s' FROM pg_stat_activity"
            " WHERE pid = pg_backend_pid()"
        ),
        pause=0.3,
    ),
    "COMMIT",
)
scenario(
    "idle-session-timeout",
    "SET idle_session_timeout = '200ms'",
    Step(Qb("SELECT 1"), pause=0.5),
)

# --- statements outlive the transactions that made them -------------------------------------
scenario(
    "prepare-and-deallocate-outlive-rolled-back-transactions",
    "BEGIN",
    "PREPARE ptx AS SELECT 'kept'",
    "ROLLBACK",
    "EXECUTE ptx",
    x(P("dtx", "SELECT 'proto'"), S),
    "BEGIN",
    "DEALLOCATE dtx",
    "ROLLBACK",
    x(B("", "dtx"), E(), S),
    "BEGIN",
    x(P("ptr", "SELECT 'parsed in tx'"), S),
    "ROLLBACK",
    x(B("", "ptr"), E(), S),
    "BEGIN",
    "SAVEPOINT a",
    "PREPARE pts AS SELECT 'savepoint'",
    "ROLLBACK TO a",
    "COMMIT",
    "EXECUTE pts",
)
scenario(
    "notice-at-parse-of-a-named-statement",
    x(P("nt", "SELECT 1 AS " + "a" * 70), S),
    x(B("", "nt"), E(), S),
    x(B("", "nt"), D("P"), E(), S),
    "PREPARE ntq AS SELECT 2 AS " + "b" * 70,
    "EXECUTE ntq",
)
scenario(
    "notification-from-another-client",
    "LISTEN probe_other",
    other("NOTIFY probe_other, 'from another'"),
    Step(Qb("SELECT 1"), pause=0.1),
    other("BEGIN; NOTIFY probe_other, 'a'; NOTIFY probe_other, 'b'; COMMIT"),
    Step(Qb("SELECT 2"), pause=0.1),
    "UNLISTEN *",
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
    # --- probe 2 ---
    (
        "custom-setting-placeholder-left-by-others",
        ("tx", "session", "tx-cache"),
        "a custom setting another client SET stays a placeholder on the server after the"
        " pooler's reset: SHOW probe.leak gives '' for 42704, current_setting(.., true) ''"
        " for NULL",
    ),
    (
        "left-by-others-temp-schema",
        ("tx", "session", "tx-cache"),
        "the temporary schema of another client's temp table stays the server's:"
        " pg_my_temp_schema() <> 0, current_schemas(true) = {pg_temp_N,pg_catalog,public}",
    ),
    (
        "log-statement-messages",
        TX,
        "log_statement's LOG messages name the pooler's statements: 'execute _pooler_N:"
        " SELECT 4' for 'execute lsx: ...', 'statement: PREPARE _pooler_N AS ...'",
    ),
    (
        "statement-names-longer-than-identifiers",
        TX,
        "PostgreSQL truncates statement names to 63 bytes (a Bind of the 63-byte prefix"
        " runs the 70-byte one; SQL names with NOTICE 42622): the pooler gives 26000, no"
        " NOTICE, and a 42P05 naming the 70 bytes",
    ),
    (
        "routing-read-only-transaction-then-node-questions",
        ("tx-lb",),
        "a READ ONLY transaction runs whole on the standby its first read went to:"
        " SHOW in_hot_standby 'on', pg_is_in_recovery() t, pg_last_wal_replay_lsn() set",
    ),
    (
        "routing-read-only-transaction-then-unlogged",
        ("tx-lb",),
        "an unlogged table read later in a READ ONLY transaction on the standby: 0A000"
        " 'cannot access temporary or unlogged relations during recovery', COMMIT -> ROLLBACK",
    ),
    (
        "routing-read-only-transaction-then-xid",
        ("tx-lb",),
        "txid_current() later in a READ ONLY transaction on the standby: 25006 'cannot"
        " execute pg_current_xact_id() during recovery' (PostgreSQL gives t)",
    ),
    (
        "routing-read-only-transaction-then-listen-notify",
        ("tx-lb",),
        "LISTEN / NOTIFY later in a READ ONLY transaction on the standby: 25006 'cannot"
        " execute LISTEN during recovery', COMMIT -> ROLLBACK, no notification",
    ),
    (
        "routing-sequence-reads",
        ("tx-lb",),
        "a sequence read through pg_sequences, or inside a READ ONLY transaction placed"
        " on the standby, shows the standby's value, WAL-logged ahead: 133 where nextval"
        " gave 101 (a plain read of the sequence goes to the primary)",
    ),
    (
        "routing-unlogged-table-reads",
        ("tx-lb",),
        "COPY (SELECT f()) TO STDOUT, f a STABLE function reading an unlogged table, runs"
        " on the standby: 0A000 (SELECT f() alone runs on the primary)",
    ),
    (
        "routing-node-settings-through-views",
        ("tx-lb",),
        "pg_settings, pg_show_all_settings() and current_setting(<computed name>) run on"
        " the standby: in_hot_standby / transaction_read_only 'on', the standby's port",
    ),
    (
        "routing-node-statistics-and-sizes",
        ("tx-lb",),
        "pg_relation_size/pg_table_size of an unlogged table (0 on a standby) and"
        " pg_stat_user_tables.n_live_tup (not replicated) run on the standby: f for t",
    ),
    (
        "transaction-start-time-after-a-pause",
        ("tx-lb",),
        "a lone BEGIN the pooler answers starts the transaction with the next statement:"
        " now() is that statement's time, not BEGIN's (f for t after 0.3 s)",
    ),
    (
        "cache-immutable-function-reading-a-table",
        ("tx-cache",),
        "a read calling an IMMUTABLE user function is cached without the tables the"
        " function reads: 'e' is served after an UPDATE made it 'e2'",
    ),
    (
        "cache-read-while-another-client-locks-the-table",
        ("tx-cache",),
        "a cached read is answered while another session holds ACCESS EXCLUSIVE on its"
        " table, where PostgreSQL waits (here: 55P03 lock timeout)",
    ),
    (
        "setting-made-inside-a-function",
        TX,
        "a setting made inside a function (plpgsql set_config) does not follow the"
        " client: SHOW work_mem on the next server says 4MB for 7MB",
    ),
    (
        "advisory-lock-taken-inside-a-function",
        TX,
        "a session advisory lock taken inside a function does not keep the client on its"
        " server: the unlock runs elsewhere (WARNING, f for t), and the lock leaks",
    ),
    (
        "temp-table-made-inside-a-function",
        TX,
        "a temporary table made inside a function does not keep the client on its"
        " server: the next read on another server gets 42P01",
    ),
    (
        "cancel-request-variants",
        ("tx", "tx-lb", "session", "tx-cache"),
        "a CancelRequest sent while the client is in COPY FROM STDIN is lost: the COPY"
        " completes (COPY 1) where PostgreSQL fails it with 57014",
    ),
    (
        "idle-session-timeout",
        TX,
        "idle_session_timeout never ends the client's session: PostgreSQL sends FATAL"
        " 57P05 and closes, the pooler answers the next query",
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
    address: Address,
    sc: Scenario,
    churn: _Churns | None,
    pooled: bool = False,
    primary: Address | None = None,
    replay: Any = None,
) -> list[Any]:
    seen: list[Any] = []
    if sc.prelude and pooled:
        _prelude(address, sc.prelude)
    wire, login = _login(address, sc.startup)
    seen.append(["login", *(_norm(msg, None) for msg in login)])
    side: Wire | None = None
    with wire:
        own_pid = wire.backend_key[0] if wire.backend_key else None
        idle = True
        try:
            for step in [*sc.steps, q("SELECT 'the end'")]:
                if step.replayed:
                    if replay is not None:
                        replay()
                    seen.append(["replayed"])
                    continue
                if step.other:
                    if step.direct:
                        if side is None:
                            side = connect(primary or address)
                        answer = side.query(step.other)
                    else:
                        if churn is not None:
                            churn.release_all()
                        with connect(address) as another:
                            answer = another.query(step.other)
                    seen.append(["other", *(_norm(msg, None) for msg in answer)])
                    continue
                if churn is not None and idle:
                    churn.rotate()
                if step.pause:
                    time.sleep(step.pause)
                wire.send(step.data)
                if step.cancel:
                    time.sleep(step.cancel)
                    assert wire.backend_key is not None
                    with Wire(address) as canceller:
                        canceller.send(build_cancel_request(*wire.backend_key))
                        canceller.is_closed()
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
            if side is not None:
                side.close()
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
    "DROP TABLE IF EXISTS probe_c, probe_ul, probe_lk, probe_counter, probe_dd",
    "DROP SEQUENCE IF EXISTS probe_seq3",
    "CREATE TABLE probe_c (id int PRIMARY KEY, v text)",
    "INSERT INTO probe_c VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd'), (5, 'e')",
    "CREATE UNLOGGED TABLE probe_ul (a int)",
    "INSERT INTO probe_ul SELECT generate_series(1, 7)",
    "CREATE TABLE probe_lk (a int)",
    "CREATE TABLE probe_counter (n int)",
    "INSERT INTO probe_counter VALUES (0)",
    "CREATE SEQUENCE probe_seq3",
    """CREATE OR REPLACE FUNCTION probe_bump() RETURNS int LANGUAGE sql AS
    'UPDATE probe_counter SET n = n + 1 RETURNING n'""",
    # Declared IMMUTABLE, though it reads a table (a common mistake).
    """CREATE OR REPLACE FUNCTION probe_imm(k int) RETURNS text IMMUTABLE LANGUAGE plpgsql AS $$
    BEGIN
        RETURN (SELECT v FROM probe_c WHERE id = k);
    END$$""",
    """CREATE OR REPLACE FUNCTION probe_count_ul() RETURNS bigint STABLE LANGUAGE plpgsql AS $$
    BEGIN
        RETURN (SELECT count(*) FROM probe_ul);
    END$$""",
    """CREATE OR REPLACE FUNCTION probe_notice_imm(msg text) RETURNS int IMMUTABLE
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE NOTICE 'immutable notice: %', msg;
        RETURN 3;
    END$$""",
    # Session state that the text of the statement calling them does not show.
    """CREATE OR REPLACE FUNCTION probe_setter() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM set_config('work_mem', '7MB', false);
        RETURN 1;
    END$$""",
    """CREATE OR REPLACE FUNCTION probe_locker() RETURNS bool LANGUAGE plpgsql AS $$
    BEGIN
        RETURN pg_try_advisory_lock(4290);
    END$$""",
    """CREATE OR REPLACE FUNCTION probe_temp_maker() RETURNS int LANGUAGE plpgsql AS $$
    BEGIN
        CREATE TEMP TABLE IF NOT EXISTS tmp_from_fn (a int);
        INSERT INTO tmp_from_fn VALUES (1);
        RETURN 1;
    END$$""",
]
#: Run as the superuser (the scenarios' user, app, is not one).
SUPERUSER_SETUP = ["GRANT SET ON PARAMETER log_statement TO app"]
SUPERUSER_TEARDOWN = ["REVOKE SET ON PARAMETER log_statement FROM app"]
TEARDOWN = [
    "DROP SCHEMA IF EXISTS probe_s1, probe_s2 CASCADE",
    "DROP TABLE IF EXISTS probe_t, probe_w, probe_u",
    "DROP SEQUENCE IF EXISTS probe_seq, probe_seq2",
    "DROP FUNCTION IF EXISTS probe_notice(text), probe_warn()",
    "DROP FUNCTION IF EXISTS probe_bump(), probe_imm(int), probe_count_ul(),"
    " probe_notice_imm(text), probe_setter(), probe_locker(), probe_temp_maker()",
    "DROP TABLE IF EXISTS probe_c, probe_ul, probe_lk, probe_counter, probe_dd",
    "DROP SEQUENCE IF EXISTS probe_seq3",
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
    with psycopg.connect(superuser_dsn(cluster), autocommit=True) as conn:
        for sql in SUPERUSER_SETUP:
            conn.execute(sql)
    _wait_for_replay(cluster)
    yield
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
        for sql in TEARDOWN:
            conn.execute(sql)
    with psycopg.connect(superuser_dsn(cluster), autocommit=True) as conn:
        for sql in SUPERUSER_TEARDOWN:
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
    primary = (cluster.primary.host, cluster.primary.port)

    def replay() -> None:
        _wait_for_replay(cluster)

    if sc.name not in _direct_answers:
        _direct_answers[sc.name] = _converse(primary, sc, None, replay=replay)
    want = _direct_answers[sc.name]
    pooler = poolers[config]
    got = _converse(
        (pooler.host, pooler.port),
        sc,
        churns.get(config),
        pooled=True,
        primary=primary,
        replay=replay,
    )
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
