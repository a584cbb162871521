"""Writes that do not go through the pooler are no longer served from the cache 1 s
after they committed (logical decoding), with ``ttl: 0``; while the change stream is
down, nothing of its database is served."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import superuser_dsn, unique_name

from cache.conftest import (
    cached_pooler,
    direct,
    made,
    reset_statements,
    run_sql,
    runs,
    wait_serving,
)
from cache.test_never_stale import assert_hit, read
from pooler.localcluster import LocalCluster

#: How long after its commit a write may still be served from the cache.
WINDOW = 1.0


def read_after(
    cluster: LocalCluster, through: str, sql: str, needle: str, where: str, write: str
) -> list[tuple[object, ...]]:
    """Read ``sql`` through the pooler at ``through`` until it is a hit, run ``write`` on
    ``where`` (not that pooler), and read ``sql`` again WINDOW after the commit: its rows."""
    wait_serving(cluster, through, sql, needle)
    with psycopg.connect(through, autocommit=True) as conn:
        assert_hit(cluster, conn, sql, needle)
        with psycopg.connect(where, autocommit=True) as other:
            other.execute(write)
        committed = time.monotonic()
        time.sleep(max(0.0, committed + WINDOW - time.monotonic()))
        return read(conn, sql)


def test_direct_write(cache_cluster: LocalCluster, pooler: PoolerProcess, table: str) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 1"
    write = f"UPDATE {table} SET v = 3 WHERE id = 1"
    assert read_after(cache_cluster, pooler.dsn(), sql, table, direct(cache_cluster), write) == [
        (3,)
    ]


def test_direct_write_to_a_partition_read_through_its_parent(
    cache_cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    p = unique_name("part")
    create = [
        f"CREATE TABLE {p} (id int, v int) PARTITION BY LIST (id)",
        f"CREATE TABLE {p}_1 PARTITION OF {p} FOR VALUES IN (1)",
        f"INSERT INTO {p} VALUES (1, 0)",
    ]
    with made(direct(cache_cluster), create, [f"DROP TABLE {p}"]):
        pooler = cached_pooler(start_pooler, cache_cluster)
        sql = f"SELECT v FROM {p} WHERE id = 1"
        write = f"UPDATE {p}_1 SET v = 4"
        rows = read_after(cache_cluster, pooler.dsn(), sql, p, direct(cache_cluster), write)
        assert rows == [(4,)]


@pytest.fixture
def reader_role(cache_cluster: LocalCluster) -> Iterator[str]:
    """A login role ``reader`` (password ``reader``) in a group that may read."""
    role = unique_name("reader")
    admin = superuser_dsn(cache_cluster, "postgres")
    create = [f"CREATE ROLE {role} LOGIN PASSWORD '{role}'", f"CREATE ROLE {role}_group"]
    drop_owned = f"DROP OWNED BY {role}, {role}_group CASCADE"
    with made(admin, create, [drop_owned, f"DROP ROLE {role}, {role}_group"]):
        yield role
        run_sql(superuser_dsn(cache_cluster, "app"), drop_owned)


@pytest.mark.parametrize("how", ["revoke", "membership"])
def test_privileges_taken_away_on_the_primary(
    cache_cluster: LocalCluster, start_pooler: StartPooler, table: str, reader_role: str, how: str
) -> None:
    group = f"{reader_role}_group"
    admin = superuser_dsn(cache_cluster, "postgres")
    if how == "revoke":
        run_sql(direct(cache_cluster), f"GRANT SELECT ON {table} TO {reader_role}")
        take_away, where = f"REVOKE SELECT ON {table} FROM {reader_role}", direct(cache_cluster)
    else:
        run_sql(direct(cache_cluster), f"GRANT SELECT ON {table} TO {group}")
        run_sql(admin, f"GRANT {group} TO {reader_role}")
        # Made in another database: no slot of database app decodes it.
        take_away, where = f"REVOKE {group} FROM {reader_role}", admin
    users = {**cache_cluster.users, reader_role: reader_role}
    pooler = cached_pooler(start_pooler, cache_cluster, users=users)
    dsn = pooler.dsn(reader_role, reader_role)
    sql = f"SELECT v FROM {table} WHERE id = 1"
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        read_after(cache_cluster, dsn, sql, table, where, take_away)


def test_a_write_through_one_pooler_is_seen_through_another(
    cache_cluster: LocalCluster, start_pooler: StartPooler, table: str, pooler: PoolerProcess
) -> None:
    other = cached_pooler(start_pooler, cache_cluster)
    sql = f"SELECT v FROM {table} WHERE id = 1"
    write = f"UPDATE {table} SET v = 5 WHERE id = 1"
    assert read_after(cache_cluster, other.dsn(), sql, table, pooler.dsn(), write) == [(5,)]


def decoding_backend(conn: psycopg.Connection[tuple[object, ...]], pooler: PoolerProcess) -> int:
    """The pid of the backend that decodes database app for ``pooler`` (its slot is
    named after the pooler's process id)."""
    row = conn.execute(
        "SELECT active_pid FROM pg_replication_slots WHERE database = 'app'"
        " AND slot_name LIKE %s AND active_pid IS NOT NULL",
        (f"pooler\\_cache\\_{pooler.proc.pid}\\_%",),
    ).fetchone()
    assert row is not None, "no decoding backend"
    return int(str(row[0]))


def test_nothing_is_served_while_the_change_stream_is_down(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    """The decoding connection is killed, and its slot cannot be made again while a
    writing transaction is open: no entry is served until it is."""
    sql = f"SELECT v FROM {table} WHERE id = 1"
    admin = superuser_dsn(cache_cluster, "app")
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
        psycopg.connect(direct(cache_cluster)) as blocker,
        psycopg.connect(admin, autocommit=True) as killer,
    ):
        assert assert_hit(cache_cluster, conn, sql, table) == [(0,)]
        blocker.execute(f"UPDATE {table} SET v = v WHERE id = 2")  # holds an xid, open
        assert killer.execute(
            "SELECT pg_terminate_backend(%s)", (decoding_backend(killer, pooler),)
        ).fetchone() == (True,)
        time.sleep(WINDOW + 0.1)
        reset_statements(cache_cluster)
        for _ in range(3):
            assert read(conn, sql) == [(0,)]
        assert runs(cache_cluster, table) == 3, "served while the change stream was down"
        blocker.rollback()
        assert assert_hit(cache_cluster, conn, sql, table) == [(0,)]


def test_nothing_is_served_while_a_poll_is_late(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    """The decoding backend stops answering (SIGSTOP): one second after the last poll
    began, entries are no longer served, before the poll times out."""
    sql = f"SELECT v FROM {table} WHERE id = 1"
    admin = superuser_dsn(cache_cluster, "app")
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
        psycopg.connect(admin, autocommit=True) as look,
    ):
        assert assert_hit(cache_cluster, conn, sql, table) == [(0,)]
        pid = decoding_backend(look, pooler)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(WINDOW + 0.1)
            reset_statements(cache_cluster)
            for _ in range(3):
                assert read(conn, sql) == [(0,)]
            assert runs(cache_cluster, table) == 3, "served with no poll for a second"
        finally:
            os.kill(pid, signal.SIGCONT)
        assert assert_hit(cache_cluster, conn, sql, table) == [(0,)]


def test_direct_write_to_a_table_whose_name_needs_quotes(
    cache_cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    name = '"' + unique_name("Odd.Name") + '"" x"'
    create = [f"CREATE TABLE {name} (v int)", f"INSERT INTO {name} VALUES (0)"]
    with made(direct(cache_cluster), create, [f"DROP TABLE {name}"]):
        pooler = cached_pooler(start_pooler, cache_cluster)
        sql = f"SELECT v FROM {name}"
        write = f"UPDATE {name} SET v = 6"
        needle = name.split(".")[0][1:]
        rows = read_after(cache_cluster, pooler.dsn(), sql, needle, direct(cache_cluster), write)
        assert rows == [(6,)]
