"""Where logical decoding is not available (``wal_level = replica``): the pooler says so
at startup, and serves only entries younger than ``ttl``, none when it is 0."""

from __future__ import annotations

import time

import psycopg
from conftest import ClusterFactory, StartPooler
from helpers_clients import unique_name

from cache.conftest import cached_pooler, direct, made, reset_statements, runs
from cache.test_never_stale import read


def test_without_logical_decoding(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    cluster = cluster_factory(
        standbys=0,
        settings={"wal_level": "replica", "shared_preload_libraries": "pg_stat_statements"},
    )
    cluster.primary.psql("CREATE EXTENSION pg_stat_statements", dbname="app")
    name = unique_name("nd")
    create = [f"CREATE TABLE {name} AS SELECT 1 AS v"]
    with made(direct(cluster), create, [f"DROP TABLE {name}"]):
        sql = f"SELECT v FROM {name}"
        never = cached_pooler(start_pooler, cluster)
        young = cached_pooler(start_pooler, cluster, query_cache={"ttl": 1})
        for pooler, served in ((never, False), (young, True)):
            deadline = time.monotonic() + 5
            while "logical decoding is not available" not in pooler.log_text():
                assert time.monotonic() < deadline, "not said at startup"
                time.sleep(0.05)
            with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                read(conn, sql)
                reset_statements(cluster)
                for _ in range(3):
                    assert read(conn, sql) == [(1,)]
                assert runs(cluster, name) == (0 if served else 3)
                time.sleep(1.1)
                reset_statements(cluster)
                read(conn, sql)
                assert runs(cluster, name) == 1, "older than ttl: not served"
