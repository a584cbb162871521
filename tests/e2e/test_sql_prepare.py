"""SQL PREPARE, EXECUTE and DEALLOCATE through transaction pooling: one namespace with
the protocol's named statements, as on PostgreSQL, and statements that follow the
client from server to server instead of pinning it.

Each case sends the same messages to the primary directly and through the pooler
(while another client keeps the pool's servers busy, so that the client changes
servers between requests) and compares every answer.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from wire import Msg, bind, connect, execute, message, parse, sync

from pooler.localcluster import LocalCluster
from pooler.protocol import messages as m

#: Requests of a case: SQL texts (simple protocol), (name, text) protocol batches:
#: Parse of ``text`` as ``name``, Bind, Execute, Sync (text None: Bind and Execute
#: only), or messages as they are (ending with a Sync).
Request = str | tuple[str, str | None] | bytes


def _comparable(msg: Msg) -> tuple[Any, ...]:
    if msg.type == "E":
        fields = msg.fields()
        return ("E", fields.get("C"), fields.get("M"))
    if msg.type in "DCTZ12":
        return (msg.type, msg.body)
    return (msg.type,)


def _converse(address: tuple[str, int], requests: list[Request], churn: Any) -> list[Any]:
    seen: list[Any] = []
    with connect(address) as wire:
        for request in requests:
            if isinstance(request, str):
                wire.send(m.query(request))
            elif isinstance(request, bytes):
                wire.send(request)
            else:
                name, text = request
                head = parse(name, text) if text is not None else b""
                wire.send(head + bind("", name) + execute() + sync())
            seen.append([_comparable(msg) for msg in wire.read_until("Z")])
            if churn is not None:
                churn()
    return seen


CASES: list[list[Request]] = [
    # PREPARE then a protocol Parse of the same name: 42P05, as on PostgreSQL.
    ["PREPARE q3 AS SELECT 3", ("q3", "SELECT 4"), "EXECUTE q3", ("q3", None)],
    # A protocol statement, then SQL PREPARE of its name, EXECUTE and DEALLOCATE of it.
    [("p1", "SELECT 1"), "PREPARE p1 AS SELECT 2", "EXECUTE p1", "DEALLOCATE p1", "EXECUTE p1"],
    # Statements survive a rolled-back transaction; case folding; quoted names.
    [
        "BEGIN",
        'PREPARE "Mixed"(int) AS SELECT $1 * 2',
        "PREPARE lower_one AS SELECT 'l'",
        "ROLLBACK",
        'EXECUTE "Mixed"(21)',
        "EXECUTE LOWER_ONE",
        "DEALLOCATE PREPARE lower_one",
        "EXECUTE lower_one",
        ("lower_one", "SELECT 'again'"),
    ],
    # DEALLOCATE ALL drops both kinds; EXPLAIN EXECUTE and CREATE TABLE AS EXECUTE name
    # the statement too.
    [
        "PREPARE a AS SELECT 1 AS x",
        ("b", "SELECT 2"),
        "EXPLAIN (COSTS OFF) EXECUTE a",
        "CREATE TEMP TABLE t_from_execute AS EXECUTE a",
        "DEALLOCATE ALL",
        "EXECUTE a",
        ("b", None),
    ],
    # A PREPARE that fails leaves nothing; an unknown name is reported as the client
    # gave it.
    ["PREPARE bad AS SELECT * FROM no_such_table", "EXECUTE bad", "EXECUTE never_made"],
    # Protocol statements: described and never executed, then executed elsewhere; a
    # Parse that fails; a Parse skipped after an error before its Sync.
    [
        parse("d1", "SELECT 41 + 1") + message("D", b"Sd1\0") + sync(),
        ("d1", None),
        ("bad1", "SELEC 1"),
        ("bad1", None),
        parse("e1", "SELECT 1/0")
        + bind("", "e1")
        + execute()
        + parse("skipped", "SELECT 2")
        + sync(),
        ("skipped", None),
        ("e1", None),
    ],
]


@pytest.fixture
def two_servers(start_pooler: StartPooler) -> PoolerProcess:
    return start_pooler(pool={"mode": "transaction", "size": 2})


@pytest.mark.parametrize("requests", CASES)
def test_sql_and_protocol_statements_share_one_namespace(
    cluster: LocalCluster, two_servers: PoolerProcess, requests: list[Request]
) -> None:
    primary = cluster.primary
    direct = _converse((primary.host, primary.port), requests, None)
    others = [psycopg.connect(two_servers.dsn(), autocommit=True) for _ in range(2)]

    def churn() -> None:
        for conn in others:
            conn.execute("SELECT 1")

    try:
        # Where the next server is the same one is up to the pool: protocol statements
        # (the last case) are run several times, so that some land elsewhere.
        for _ in range(8 if requests is CASES[-1] else 1):
            pooled = _converse((two_servers.host, two_servers.port), requests, churn)
            for i, (want, got) in enumerate(zip(direct, pooled, strict=True)):
                assert got == want, f"request {i}: {requests[i]!r}"
    finally:
        for conn in others:
            conn.close()


def test_a_prepared_statement_does_not_pin(start_pooler: StartPooler) -> None:
    """Three clients with SQL prepared statements share one server: none is pinned."""
    pooler = start_pooler(
        pool={"mode": "transaction", "size": 1, "checkout_timeout": 2},
        load_balance={"enabled": False},
    )
    conns = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(3)]
    try:
        for n, conn in enumerate(conns):
            conn.execute(f"PREPARE mine AS SELECT {n}")
        for _ in range(3):
            for n, conn in enumerate(conns):
                assert conn.execute("EXECUTE mine").fetchone() == (n,)
    finally:
        for conn in conns:
            conn.close()
