"""With reads on the standby: results read there are cached once it has replayed the
last write to what they read, and each client always reads its own writes."""

from __future__ import annotations

import threading
import time

import psycopg
from conftest import PoolerProcess, StartPooler

from cache.conftest import cached_pooler, reset_statements, runs, wait_serving
from cache.test_never_stale import read
from pooler.localcluster import LocalCluster


def balanced(start: StartPooler, cluster: LocalCluster) -> PoolerProcess:
    """Reads on the standby only (weight 0 for the primary)."""
    backends = [
        {"name": node.name, "host": node.host, "port": node.port, "weight": weight}
        for node, weight in zip(cluster.nodes, (0, 1), strict=True)
    ]
    return cached_pooler(start, cluster, load_balance={"enabled": True}, backends=backends)


def test_reads_on_the_standby_are_cached(
    cache_cluster: LocalCluster, start_pooler: StartPooler, table: str
) -> None:
    pooler = balanced(start_pooler, cache_cluster)
    sql = f"SELECT v FROM {table} WHERE id = 3"
    wait_serving(cache_cluster, pooler.dsn(), sql, table)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET v = 2 WHERE id = 3")
        assert read(conn, sql) == [(2,)]
    wait_serving(cache_cluster, pooler.dsn(), sql, table)


def test_each_client_reads_its_own_writes(
    cache_cluster: LocalCluster, start_pooler: StartPooler, table: str
) -> None:
    """4 clients each write their row and read it back while 4 others read every row
    (filling the cache from the standby), for 10 s: each reads what it wrote."""
    pooler = balanced(start_pooler, cache_cluster)
    wait_serving(cache_cluster, pooler.dsn(), f"SELECT v FROM {table} WHERE id = 1", table)
    stop = threading.Event()
    wrong: list[str] = []
    reads = [0]
    reset_statements(cache_cluster)

    def own(row: int) -> None:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            value = 0
            while not stop.is_set():
                value += 1
                conn.execute(f"UPDATE {table} SET v = {value} WHERE id = {row}")
                for _ in range(5):
                    got = read(conn, f"SELECT v FROM {table} WHERE id = {row}")
                    reads[0] += 1
                    if got != [(value,)]:
                        wrong.append(f"row {row}: wrote {value}, read {got}")

    def other(first: int) -> None:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            row = first
            while not stop.is_set():
                row = row % 4 + 1
                read(conn, f"SELECT v FROM {table} WHERE id = {row}")
                reads[0] += 1

    threads = [threading.Thread(target=own, args=(row,)) for row in range(1, 5)]
    threads += [threading.Thread(target=other, args=(row,)) for row in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(4)
    stop.set()
    for thread in threads:
        thread.join()
    assert not wrong, wrong[:10]
    ran = runs(cache_cluster, f"SELECT v FROM {table}")
    print(f"{reads[0]} reads, {ran} ran on PostgreSQL")
    assert ran < reads[0], "the cache answered none"


def test_a_read_only_transaction_served_from_the_cache_needs_no_server(
    cache_cluster: LocalCluster, start_pooler: StartPooler, table: str
) -> None:
    """With routing, the pooler answers a lone BEGIN itself: a READ ONLY transaction
    whose reads are hits runs nowhere until its COMMIT."""
    pooler = balanced(start_pooler, cache_cluster)
    sql = f"SELECT v FROM {table} WHERE id = 2"
    wait_serving(cache_cluster, pooler.dsn(), sql, table)
    reset_statements(cache_cluster)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("BEGIN READ ONLY")
        for _ in range(3):
            assert read(conn, sql) == [(0,)]
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.execute("COMMIT")
    assert runs(cache_cluster, table) == 0
