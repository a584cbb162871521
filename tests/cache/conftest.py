"""Fixtures of the query cache's feature tests: a cluster of their own with
``pg_stat_statements`` loaded (a primary and one standby, ``wal_level = logical``), and
helpers that say how often the nodes ran a statement."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import superuser_dsn, unique_name

from pooler.localcluster import LocalCluster, server_tempdir

#: Short monitor checks, so that replay positions are fresh.
FAST_CHECKS = {"period": 0.2, "timeout": 2, "retry_delay": 0.2}


@pytest.fixture(scope="module")
def cache_cluster() -> Iterator[LocalCluster]:
    """A primary and one streaming standby with pg_stat_statements, for this module."""
    local = LocalCluster(
        server_tempdir("pooler-cache-"),
        standbys=1,
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
        },
    )
    try:
        local.start()
        local.primary.psql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", dbname="app")
        yield local
    finally:
        local.destroy()


@pytest.fixture
def table(cache_cluster: LocalCluster) -> Iterator[str]:
    """A table ``(id int PRIMARY KEY, v int)`` with rows 1..10 (v = 0), owned by app."""
    name = unique_name("c")
    with made(
        direct(cache_cluster),
        [
            f"CREATE TABLE {name} (id int PRIMARY KEY, v int NOT NULL)",
            f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 10) AS g",
        ],
        [f"DROP TABLE IF EXISTS {name} CASCADE"],
    ):
        yield name


@pytest.fixture
def pooler(cache_cluster: LocalCluster, start_pooler: StartPooler, table: str) -> PoolerProcess:
    """A pooler with the cache on, reads on the primary, serving ``table`` already."""
    started = cached_pooler(start_pooler, cache_cluster)
    wait_serving(cache_cluster, started.dsn(), f"SELECT v FROM {table} WHERE id = 1", table)
    return started


def run_sql(dsn: str, *statements: str) -> None:
    """Run ``statements`` on ``dsn`` (directly, not through a pooler), in autocommit."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


@contextlib.contextmanager
def made(dsn: str, create: list[str], drop: list[str]) -> Iterator[None]:
    """Objects made by ``create`` on ``dsn`` for the block, then dropped by ``drop``."""
    run_sql(dsn, *create)
    try:
        yield
    finally:
        run_sql(dsn, *drop)


def direct(cluster: LocalCluster) -> str:
    """The primary itself, as app."""
    node = cluster.primary
    return f"host={node.host} port={node.port} user=app password=app dbname=app"


def cached_pooler(start: StartPooler, cluster: LocalCluster, **overrides: Any) -> PoolerProcess:
    """A pooler for ``cluster`` with the cache on (ttl 0), reads on the primary unless
    ``overrides`` say otherwise."""
    config: dict[str, Any] = {
        "query_cache": {"enabled": True, "ttl": 0},
        "load_balance": {"enabled": False},
        "health_check": FAST_CHECKS,
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return start(cluster, **config)


def reset_statements(cluster: LocalCluster) -> None:
    """Forget what every node ran (pg_stat_statements)."""
    for node in cluster.nodes:
        with psycopg.connect(superuser_dsn_of(cluster, node.port), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_statements_reset()")


def superuser_dsn_of(cluster: LocalCluster, port: int) -> str:
    """A node of ``cluster`` (by port) as the superuser, database app."""
    return superuser_dsn(cluster).replace(f"port={cluster.primary.port}", f"port={port}")


def runs(cluster: LocalCluster, needle: str) -> int:
    """How many times the nodes ran statements whose text holds ``needle`` (excluding
    pg_stat_statements' own queries)."""
    total = 0
    for node in cluster.nodes:
        with psycopg.connect(superuser_dsn_of(cluster, node.port), autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE query LIKE %s AND query NOT LIKE %s",
                (f"%{needle}%", "%pg_stat_statements%"),
            ).fetchone()
            assert row is not None
            total += int(row[0])
    return total


def wait_until(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Call ``check`` until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def wait_serving(cluster: LocalCluster, dsn: str, sql: str, needle: str) -> None:
    """Wait until ``sql`` through the pooler is answered from the cache (its change
    stream is up): two runs in a row and the nodes ran it once."""

    def served() -> bool:
        reset_statements(cluster)
        with psycopg.connect(dsn, autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            cur.execute(sql)
            cur.execute(sql)
        return runs(cluster, needle) <= 1

    wait_until(served, 15, f"{sql} served from the cache")
