"""What is never answered from the cache: statements whose result changes with each run
or with the session, reads inside an aborted transaction (PostgreSQL's 25P02 is the
answer), after SET ROLE, with the NO QUERY CACHE hint, and a portal read in parts."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from conftest import PoolerProcess
from helpers_clients import superuser_dsn, unique_name
from wire import address_of, bind, connect, execute, parse, sync

from cache.conftest import made, reset_statements, runs
from cache.test_never_stale import assert_hit, read, side_by_side
from pooler.localcluster import LocalCluster


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT v, now() FROM {t} WHERE id = 1",
        "SELECT v + random() FROM {t} WHERE id = 1",
        "SELECT v FROM {t} WHERE id = 1 FOR UPDATE",
        "/*NO QUERY CACHE*/ SELECT v FROM {t} WHERE id = 1",
        "SELECT v, current_setting('search_path') FROM {t} WHERE id = 1",
    ],
)
def test_statements_run_each_time(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str, sql: str
) -> None:
    text = sql.format(t=table)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        read(conn, text)
        reset_statements(cache_cluster)
        for _ in range(3):
            read(conn, text)
    assert runs(cache_cluster, table) == 3


def test_temporary_tables(cache_cluster: LocalCluster, pooler: PoolerProcess) -> None:
    name = unique_name("tmp")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE TEMP TABLE {name} AS SELECT 1 AS v")
        read(conn, f"SELECT v FROM {name}")
        reset_statements(cache_cluster)
        for _ in range(3):
            assert read(conn, f"SELECT v FROM {name}") == [(1,)]
    assert runs(cache_cluster, name) == 3


@pytest.mark.parametrize("begin", ["BEGIN", "BEGIN READ ONLY"])
def test_aborted_transaction_gets_postgresql_error(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str, begin: str
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 1"
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert_hit(cache_cluster, conn, sql, table)
        conn.execute(begin)
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            read(conn, sql)
        conn.execute("ROLLBACK")
        assert read(conn, sql) == [(0,)]


@pytest.fixture
def no_rights_role(cache_cluster: LocalCluster) -> Iterator[str]:
    """A role app may SET ROLE to, with no right on anything."""
    role = unique_name("nobody")
    create = [f"CREATE ROLE {role}", f"GRANT {role} TO app"]
    with made(superuser_dsn(cache_cluster), create, [f"DROP ROLE {role}"]):
        yield role


def test_set_role(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str, no_rights_role: str
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 1"
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert_hit(cache_cluster, conn, sql, table)
        conn.execute(f"SET ROLE {no_rights_role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            read(conn, sql)
        conn.execute("RESET ROLE")
        assert read(conn, sql) == [(0,)]


def test_a_portal_read_in_parts(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    sql = f"SELECT id FROM {table} ORDER BY id"
    with connect(address_of(pooler)) as wire:
        reset_statements(cache_cluster)
        for _ in range(3):
            wire.send(parse("", sql) + bind() + execute(max_rows=4) + sync())
            answer = wire.read_until("Z")
            assert [msg.type for msg in answer] == ["1", "2", "D", "D", "D", "D", "s", "Z"]
    assert runs(cache_cluster, table) == 3


@pytest.mark.parametrize(
    "begin",
    [
        "BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY",
        "BEGIN",
    ],
)
def test_transactions_with_one_snapshot_or_that_may_write(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str, begin: str
) -> None:
    """Reads in them run on PostgreSQL each time, and see what PostgreSQL shows (a
    REPEATABLE READ transaction keeps its first snapshot after a write commits)."""
    sql = f"SELECT v FROM {table} WHERE id = 1"
    with side_by_side(cache_cluster, pooler, sql, table, begin) as (conn, pg, writer):
        assert read(conn, sql) == read(pg, sql) == [(0,)]
        writer.execute(f"UPDATE {table} SET v = 8 WHERE id = 1")
        assert read(conn, sql) == read(pg, sql)
    assert runs(cache_cluster, table) == 4 + 1, "two reads each, and the UPDATE"
