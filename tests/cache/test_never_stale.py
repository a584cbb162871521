"""The cache is never stale for a write through the pooler: through its port, against
real PostgreSQL, with pg_stat_statements showing first that the read is a hit (a
cache that stores nothing is never stale)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import superuser_dsn, unique_name

from cache.conftest import cached_pooler, direct, made, reset_statements, runs, wait_serving
from pooler.localcluster import LocalCluster

Conn = psycopg.Connection[tuple[object, ...]]


def read(conn: Conn, sql: str) -> list[tuple[object, ...]]:
    """``sql`` as a simple Query (the text is the key)."""
    return psycopg.ClientCursor(conn).execute(sql).fetchall()


def assert_hit(
    cluster: LocalCluster, conn: Conn, sql: str, needle: str
) -> list[tuple[object, ...]]:
    """Read ``sql`` until a read is a hit (no node runs it; after DDL the catalog is
    read again and the change stream drops the database's entries once more). Its rows."""
    deadline = time.monotonic() + 5
    while True:
        read(conn, sql)
        reset_statements(cluster)
        rows = read(conn, sql)
        if runs(cluster, needle) == 0:
            return rows
        assert time.monotonic() < deadline, f"{sql} is not answered from the cache"
        time.sleep(0.1)


Write = Callable[[Conn, str], None]


def _autocommit(conn: Conn, table: str) -> None:
    conn.execute(f"UPDATE {table} SET v = 7 WHERE id = 1")


def _committed(conn: Conn, table: str) -> None:
    conn.execute("BEGIN")
    conn.execute(f"UPDATE {table} SET v = 7 WHERE id = 1")
    conn.execute("COMMIT")


def _extended_prepared(conn: Conn, table: str) -> None:
    for value in (3, 7):
        conn.execute(f"UPDATE {table} SET v = %s WHERE id = 1", (value,), prepare=True)


def _do_block(conn: Conn, table: str) -> None:
    conn.execute(f"DO $$BEGIN UPDATE {table} SET v = 7 WHERE id = 1; END$$")


@pytest.mark.parametrize(
    "write", [_autocommit, _committed, _extended_prepared, _do_block], ids=lambda f: f.__name__
)
def test_write_then_read(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str, write: Write
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 1"
    with psycopg.connect(pooler.dsn(), autocommit=True) as reader:
        assert assert_hit(cache_cluster, reader, sql, table) == [(0,)]
        with psycopg.connect(pooler.dsn(), autocommit=True) as writer:
            write(writer, table)
        assert read(reader, sql) == [(7,)]


def test_rolled_back_write_keeps_the_old_value_and_is_never_seen(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 1"
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as reader,
        psycopg.connect(pooler.dsn(), autocommit=True) as writer,
    ):
        assert_hit(cache_cluster, reader, sql, table)
        writer.execute("BEGIN")
        writer.execute(f"UPDATE {table} SET v = 9 WHERE id = 1")
        # Another session never sees the uncommitted value, through the cache or not.
        assert read(reader, sql) == [(0,)]
        assert read(writer, sql) == [(9,)]
        assert read(reader, sql) == [(0,)]
        writer.execute("ROLLBACK")
        assert read(reader, sql) == [(0,)]
        assert read(writer, sql) == [(0,)]


def test_truncate_and_alter_table(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    sql = f"SELECT * FROM {table} WHERE id = 2"
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert assert_hit(cache_cluster, conn, sql, table) == [(2, 0)]
        conn.execute(f"ALTER TABLE {table} ADD COLUMN w int DEFAULT 5")
        assert read(conn, sql) == [(2, 0, 5)]
        assert assert_hit(cache_cluster, conn, sql, table) == [(2, 0, 5)]
        conn.execute(f"TRUNCATE {table}")
        assert read(conn, sql) == []


@pytest.fixture
def objects(cache_cluster: LocalCluster) -> Iterator[str]:
    """A function that writes, a view, a partitioned table and a cascading foreign key,
    all named after one prefix, made before the pooler reads the catalog."""
    p = unique_name("o")
    create = [
        f"CREATE TABLE {p}_t (id int PRIMARY KEY, v int NOT NULL)",
        f"INSERT INTO {p}_t VALUES (1, 0)",
        f"CREATE FUNCTION {p}_bump() RETURNS int LANGUAGE sql"
        f" AS 'UPDATE {p}_t SET v = v + 1 RETURNING v'",
        f"CREATE VIEW {p}_v AS SELECT id, v FROM {p}_t",
        f"CREATE TABLE {p}_p (id int, v int) PARTITION BY RANGE (id)",
        f"CREATE TABLE {p}_p1 PARTITION OF {p}_p FOR VALUES FROM (0) TO (100)",
        f"CREATE TABLE {p}_p2 PARTITION OF {p}_p FOR VALUES FROM (100) TO (200)",
        f"INSERT INTO {p}_p VALUES (1, 0), (150, 0)",
        f"CREATE TABLE {p}_parent (id int PRIMARY KEY)",
        f"CREATE TABLE {p}_child (id int, parent int REFERENCES {p}_parent ON DELETE CASCADE)",
        f"INSERT INTO {p}_parent VALUES (1)",
        f"INSERT INTO {p}_child VALUES (1, 1), (2, 1)",
    ]
    drop = [
        f"DROP VIEW {p}_v",
        f"DROP FUNCTION {p}_bump",
        f"DROP TABLE {p}_t, {p}_p, {p}_child, {p}_parent",
    ]
    with made(direct(cache_cluster), create, drop):
        yield p


@pytest.fixture
def catalog_pooler(
    cache_cluster: LocalCluster, start_pooler: StartPooler, objects: str
) -> PoolerProcess:
    started = cached_pooler(start_pooler, cache_cluster)
    sql = f"SELECT v FROM {objects}_t WHERE id = 1"
    wait_serving(cache_cluster, started.dsn(), sql, f"{objects}_t")
    return started


@pytest.mark.parametrize(
    ("reading", "writing", "before", "after"),
    [
        ("SELECT v FROM {p}_t", "SELECT {p}_bump()", [(0,)], [(1,)]),
        ("SELECT v FROM {p}_v", "UPDATE {p}_t SET v = 4", [(0,)], [(4,)]),
        ("SELECT v FROM {p}_t", "UPDATE {p}_v SET v = 5", [(0,)], [(5,)]),
        ("SELECT v FROM {p}_p WHERE id = 1", "UPDATE {p}_p1 SET v = 6", [(0,)], [(6,)]),
        ("SELECT v FROM {p}_p2", "UPDATE {p}_p SET v = 8", [(0,)], [(8,)]),
        ("SELECT count(*) FROM {p}_child", "DELETE FROM {p}_parent", [(2,)], [(0,)]),
    ],
    ids=["writing function", "view read", "view written", "partition", "parent", "cascade"],
)
def test_writes_the_catalog_explains(
    cache_cluster: LocalCluster,
    catalog_pooler: PoolerProcess,
    objects: str,
    reading: str,
    writing: str,
    before: list[tuple[object, ...]],
    after: list[tuple[object, ...]],
) -> None:
    sql = reading.format(p=objects)
    with psycopg.connect(catalog_pooler.dsn(), autocommit=True) as conn:
        assert assert_hit(cache_cluster, conn, sql, objects) == before
        conn.execute(writing.format(p=objects))
        assert read(conn, sql) == after


@pytest.mark.slow
def test_writers_and_readers_never_see_an_older_value(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    """8 writers bump counters while 16 readers read them, all through the pooler, for
    12 s (the issue's 30 s: ``POOLER_STALE_SECONDS=30``; the suite has a 10-minute
    budget): every read returns a value at least as new as the last write acknowledged
    before it was sent, and the cache answered a share of the reads."""
    writers, readers = 8, 16
    seconds = float(os.environ.get("POOLER_STALE_SECONDS", "12"))
    acked = [0] * (writers + 1)
    stale: list[str] = []
    reads = [0]
    stop = threading.Event()
    reset_statements(cache_cluster)

    def write(row: int) -> None:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            while not stop.is_set():
                cur.execute(f"UPDATE {table} SET v = v + 1 WHERE id = {row} RETURNING v")
                value = cur.fetchone()
                assert value is not None
                acked[row] = int(value[0])
                time.sleep(0.02)

    def read_all(first: int) -> None:
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            cur = psycopg.ClientCursor(conn)
            row = first
            while not stop.is_set():
                row = row % writers + 1
                floor = acked[row]
                cur.execute(f"SELECT v FROM {table} WHERE id = {row}")
                got = cur.fetchone()
                assert got is not None
                reads[0] += 1
                if int(got[0]) < floor:
                    stale.append(f"row {row}: read {got[0]} after {floor} was acknowledged")

    threads = [threading.Thread(target=write, args=(w + 1,)) for w in range(writers)]
    threads += [threading.Thread(target=read_all, args=(r,)) for r in range(readers)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    assert not stale, stale[:10]
    ran = runs(cache_cluster, f"SELECT v FROM {table}")
    hits = reads[0] - ran
    print(f"{reads[0]} reads, {ran} ran on PostgreSQL, {hits} from the cache")
    assert hits > 0.05 * reads[0]


def test_a_hit_is_counted_in_show_pool_cache(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 2"

    def counters(conn: Conn) -> dict[str, str]:
        cur = conn.execute("SHOW POOL_CACHE")
        assert cur.description is not None
        row = cur.fetchone()
        assert row is not None
        return {col.name: str(value) for col, value in zip(cur.description, row, strict=True)}

    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        before = counters(conn)
        assert_hit(cache_cluster, conn, sql, table)
        after = counters(conn)
    assert int(after["num_cache_hits"]) > int(before["num_cache_hits"])
    assert int(after["num_cache_entries"]) >= 1
    assert after["decoding"] == "on"


def test_explain_route_says_what_the_cache_would_do(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    sql = f"SELECT v FROM {table} WHERE id = 3"

    def cache_row(conn: Conn) -> str:
        rows = psycopg.ClientCursor(conn).execute(f"EXPLAIN ROUTE {sql}").fetchall()
        return next(str(value) for name, value in rows if name == "cache")

    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert cache_row(conn).startswith("cacheable: no answer to this text is stored yet")
        psycopg.ClientCursor(conn).execute(sql)
        assert cache_row(conn).startswith("cacheable: an answer to this text is stored")
        conn.execute("BEGIN")
        assert cache_row(conn).startswith("not served or stored inside this transaction")
        conn.execute("ROLLBACK")
        conn.execute("BEGIN READ ONLY")
        assert cache_row(conn).startswith("cacheable: an answer to this text is stored")
        conn.execute("COMMIT")


def test_clients_with_other_settings_read_their_own_rows(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    """search_path decides which table a name reads: a client that SET it (settings
    follow clients instead of pinning them) never gets another client's entry."""
    schema = unique_name("s")
    with made(
        direct(cache_cluster),
        [
            f"CREATE SCHEMA {schema} AUTHORIZATION app",
            f"CREATE TABLE {schema}.{table} (id int PRIMARY KEY, v int NOT NULL)",
            f"INSERT INTO {schema}.{table} VALUES (1, 42)",
        ],
        [f"DROP SCHEMA {schema} CASCADE"],
    ):
        sql = f"SELECT v FROM {table} WHERE id = 1"
        with (
            psycopg.connect(pooler.dsn(), autocommit=True) as plain,
            psycopg.connect(pooler.dsn(), autocommit=True) as other,
        ):
            assert assert_hit(cache_cluster, plain, sql, table) == [(0,)]
            other.execute(f"SET search_path TO {schema}, public")
            for _ in range(3):
                assert read(other, sql) == [(42,)]
                assert read(plain, sql) == [(0,)]


@pytest.fixture
def other_database_table(cache_cluster: LocalCluster, table: str) -> Iterator[None]:
    """A table of the same name in the database postgres, which app may read."""
    dsn = superuser_dsn(cache_cluster, dbname="postgres")
    create = [
        f"CREATE TABLE {table} (id int PRIMARY KEY, v int NOT NULL)",
        f"INSERT INTO {table} VALUES (1, 0)",
        f"GRANT SELECT ON {table} TO app",
    ]
    with made(dsn, create, [f"DROP TABLE {table}"]):
        yield


def test_pgpool_set_cache_delete_and_clear_cache(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str, other_database_table: None
) -> None:
    """PGPOOL SET CACHE DELETE drops the caller's entries of that exact text in its
    database (the next read runs), not another user's or another database's; PGPOOL
    CLEAR CACHE is for admin users and drops everything."""
    sql = f"SELECT v FROM {table} WHERE id = 1;"
    notices: list[str] = []
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as app,
        psycopg.connect(pooler.dsn("postgres", "postgres"), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(dbname="postgres"), autocommit=True) as elsewhere,
    ):
        app.add_notice_handler(lambda diag: notices.append(str(diag.message_primary)))
        for conn in (app, admin, elsewhere):
            assert_hit(cache_cluster, conn, sql, table)
        # Extended protocol (psycopg binds server-side), the text quoted as SQL quotes it.
        cur = app.execute(f"PGPOOL SET CACHE DELETE '{sql}'")
        assert cur.statusmessage == "SET"
        assert notices == [f'query cache deleted. query: "{sql}"']
        reset_statements(cache_cluster)
        for conn in (app, admin, elsewhere):
            read(conn, sql)
        assert runs(cache_cluster, table) == 1, "only app's own entry in app was deleted"
        # Simple protocol; a text with no entry (one more space) says so.
        psycopg.ClientCursor(app).execute(f"PGPOOL SET CACHE DELETE $q${sql} $q$")
        assert notices[-1] == f'query cache does not exist for query: "{sql} "'
        for malformed in (
            "PGPOOL SET CACHE DELETE 12",
            "PGPOOL SET CACHE DELETE 'a' 'b'",
            "PGPOOL SET CACHE 'a'",
            "PGPOOL CLEAR CACHE now",
        ):
            with pytest.raises(psycopg.errors.SyntaxError):
                app.execute(malformed)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("PGPOOL CLEAR CACHE")
        read(app, sql)
        assert_hit(cache_cluster, app, sql, table)
        assert psycopg.ClientCursor(admin).execute("PGPOOL CLEAR CACHE").statusmessage == (
            "CLEAR CACHE"
        )
        row = admin.execute("SHOW POOL_CACHE").fetchone()
        assert row is not None and row[5] == "0", "num_cache_entries"
        reset_statements(cache_cluster)
        for conn in (app, admin, elsewhere):
            read(conn, sql)
        assert runs(cache_cluster, table) == 3, "every entry was dropped"


@contextlib.contextmanager
def side_by_side(
    cluster: LocalCluster, pooler: PoolerProcess, sql: str, needle: str, begin: str
) -> Iterator[tuple[Conn, Conn, Conn]]:
    """A client of the pooler and one of PostgreSQL itself, each in a transaction
    ``begin`` started once ``sql`` was a hit (and the nodes' statements were reset),
    and a writer through the pooler in autocommit; both transactions commit after."""
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
        psycopg.connect(direct(cluster), autocommit=True) as pg,
        psycopg.connect(pooler.dsn(), autocommit=True) as writer,
    ):
        assert_hit(cluster, conn, sql, needle)
        reset_statements(cluster)
        for session in (conn, pg):
            session.execute(begin)
        yield conn, pg, writer
        for session in (conn, pg):
            session.execute("COMMIT")


def test_reads_in_a_read_only_transaction_at_read_committed(
    cache_cluster: LocalCluster, pooler: PoolerProcess, table: str
) -> None:
    """Each statement of a READ ONLY transaction at READ COMMITTED sees what committed
    before it, as one in autocommit does: cached reads are served and stored there, and
    a write committed meanwhile is seen, as directly on PostgreSQL."""
    warm = f"SELECT v FROM {table} WHERE id = 4"
    cold = f"SELECT v FROM {table} WHERE id = 5"
    with side_by_side(cache_cluster, pooler, warm, table, "BEGIN READ ONLY") as (conn, pg, writer):
        assert read(conn, warm) == read(pg, warm) == [(0,)]
        assert read(conn, cold) == read(pg, cold) == [(0,)]
        assert read(conn, cold) == [(0,)]
        assert read(writer, cold) == [(0,)]
        assert runs(cache_cluster, table) == 3, "a hit, a miss stored, a hit, one outside"
        writer.execute(f"UPDATE {table} SET v = 6 WHERE id = 4")
        assert read(conn, warm) == read(pg, warm) == [(6,)]
