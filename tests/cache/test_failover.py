"""A failover drops the whole cache: after the primary dies and the pooler promotes a
standby, an entry read on the old primary is not served, and a value changed on the new
primary (directly, so that only the failover can have dropped the entry in time) is
read through the pooler."""

from __future__ import annotations

import time

import psycopg
from conftest import ClusterFactory, StartPooler

from cache.test_never_stale import Conn, read

#: The primary is seen down within about 1.7 s (as in tests/cluster/test_failover.py).
HEALTH = {"period": 0.5, "timeout": 0.5, "max_retries": 1, "retry_delay": 0.2}
SQL = "SELECT v FROM t WHERE id = 1"


def hits(conn: Conn) -> int:
    """SHOW POOL_CACHE's num_cache_hits."""
    row = conn.execute("SHOW POOL_CACHE").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_a_failover_drops_the_whole_cache(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    local = cluster_factory(standbys=1)
    old, new = local.nodes
    old.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL); INSERT INTO t VALUES (1, 0)",
        user="app",
        dbname="app",
    )
    pooler = start_pooler(
        local,
        query_cache={"enabled": True, "ttl": 0},
        load_balance={"enabled": False},
        health_check=HEALTH,
    )
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while True:
            read(conn, SQL)
            before = hits(conn)
            assert read(conn, SQL) == [(0,)]
            if hits(conn) > before:
                break
            assert time.monotonic() < deadline, "never served from the cache"
            time.sleep(0.05)
    local.stop_node(old, "immediate")
    deadline = time.monotonic() + 20
    while new.psql("SELECT pg_is_in_recovery()") == "t":
        assert time.monotonic() < deadline, "the pooler promoted no standby"
        time.sleep(0.1)
    new.psql("UPDATE t SET v = 1 WHERE id = 1", user="app", dbname="app")
    while True:
        try:
            with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=2) as conn:
                rows = read(conn, SQL)
                break
        except psycopg.OperationalError:
            # (No primary yet as the pooler sees it.)
            assert time.monotonic() < deadline, "no read through the pooler after the failover"
            time.sleep(0.1)
    assert rows == [(1,)], "served what the old primary had"
