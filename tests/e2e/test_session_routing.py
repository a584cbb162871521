"""Routing in session mode: reads spread over the nodes as in transaction pooling, and
each client keeps one server of its own per node it used, shared with nobody, until it
disconnects (then they are reset and pooled)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import direct_dsn, scratch_table

from pooler.localcluster import LocalCluster

#: Short checks, so that the standbys are seen up at once.
FAST_CHECKS = {"period": 0.2, "timeout": 2, "retry_delay": 0.2}


@pytest.fixture
def routed_session(start_pooler: StartPooler) -> PoolerProcess:
    return start_pooler(
        pool={"mode": "session", "size": 2},
        load_balance={"enabled": True},
        health_check=FAST_CHECKS,
    )


@pytest.fixture
def table(cluster: LocalCluster) -> Iterator[str]:
    with scratch_table(cluster, "id int PRIMARY KEY, v text") as name:
        with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
            # The backend's pid, where the read runs: pg_backend_pid() itself would keep
            # the statement on the primary (it says which node runs it).
            direct.execute(
                f"CREATE FUNCTION {name}_pid() RETURNS int STABLE LANGUAGE sql"
                " AS 'SELECT pg_backend_pid()'"
            )
        try:
            yield name
        finally:
            with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
                direct.execute(f"DROP FUNCTION IF EXISTS {name}_pid()")


def _read(conn: psycopg.Connection[tuple[int, int]], table: str, how: str) -> tuple[int, int]:
    sql = f"SELECT inet_server_port(), {table}_pid()"
    if how == "simple":
        row = psycopg.ClientCursor(conn).execute(sql).fetchone()
    else:
        row = conn.execute(sql, prepare=how == "prepared").fetchone()
    assert row is not None
    return row


def test_reads_spread_and_each_client_keeps_its_own_server_per_node(
    cluster: LocalCluster, routed_session: PoolerProcess, table: str
) -> None:
    ports = [node.port for node in cluster.nodes]
    counts: Counter[int] = Counter()
    pids: dict[str, dict[int, set[int]]] = {"a": defaultdict(set), "b": defaultdict(set)}
    with (
        psycopg.connect(routed_session.dsn(), autocommit=True) as a,
        psycopg.connect(routed_session.dsn(), autocommit=True) as b,
    ):
        for i in range(300):
            how = ("simple", "extended", "prepared")[i % 3]
            for name, conn in (("a", a), ("b", b)):
                port, pid = _read(conn, table, how)
                counts[port] += 1
                pids[name][port].add(pid)
        # One server per node for each client, the same one all along ...
        for name in pids:
            assert set(pids[name]) == set(ports), f"client {name} read on {dict(pids[name])}"
            assert all(len(found) == 1 for found in pids[name].values()), pids[name]
        # ... and never the other client's.
        for port in ports:
            assert pids["a"][port] != pids["b"][port], f"a server on {port} was shared"
        # Writes go to the primary, on the server the client keeps there.
        row = a.execute(
            f"INSERT INTO {table} VALUES (1, 'a') RETURNING inet_server_port(), {table}_pid()"
        ).fetchone()
        assert row == (cluster.primary.port, *pids["a"][cluster.primary.port])
    total = sum(counts.values())
    for port in ports:
        assert abs(counts[port] / total - 1 / 3) <= 0.10, f"{port}: {counts}"


def test_settings_follow_and_session_state_pins_to_the_primary(
    cluster: LocalCluster, routed_session: PoolerProcess, table: str
) -> None:
    with psycopg.connect(routed_session.dsn(), autocommit=True) as conn:
        conn.execute("SET work_mem = '7MB'")
        seen = set()
        for _ in range(30):
            row = conn.execute("SELECT current_setting('work_mem'), inet_server_port()").fetchone()
            assert row is not None and row[0] == "7MB", row
            seen.add(row[1])
        assert seen != {cluster.primary.port}, "no read left the primary"
        # A temporary table lives on the primary's server: the session stays there.
        conn.execute(f"CREATE TEMP TABLE {table}_temp (x int)")
        for _ in range(10):
            row = conn.execute(f"SELECT inet_server_port(), count(*) FROM {table}_temp").fetchone()
            assert row == (cluster.primary.port, 0)
            assert conn.execute("SELECT inet_server_port()").fetchone() == (cluster.primary.port,)


def test_kept_servers_are_reset_before_another_client_gets_them(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    """Pool size 1 per node: each next client gets the same servers, reset by DISCARD
    ALL; a client that sets what the last one had set must still have it made."""
    pooler = start_pooler(
        pool={"mode": "session", "size": 1},
        load_balance={"enabled": True},
        health_check=FAST_CHECKS,
    )
    sql = "/* pooler: standby */ SELECT current_setting('work_mem'), inet_server_port()"
    standbys = {node.port for node in cluster.standbys}
    for sets, expected in ((True, "7MB"), (True, "7MB"), (False, "4MB")):
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            if sets:
                conn.execute("SET work_mem = '7MB'")
            for _ in range(6):
                row = conn.execute(sql).fetchone()
                assert row is not None and row[1] in standbys
                assert row[0] == expected, f"work_mem {row[0]} where the session has {expected}"
