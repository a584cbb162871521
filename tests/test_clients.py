"""Real clients through the pooler: psql, psycopg 3 (sync, async, pipeline), asyncpg, JDBC
and pgbench, COPY both ways, and cancelling a running query.

Where PostgreSQL's own behaviour is the reference (pipelines with an error), the same
client code runs against the primary directly and the outcomes must be equal.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import (
    JDBC_EXPECTED,
    count_rows,
    direct_dsn,
    run_jdbc,
    scratch_table,
    superuser_dsn,
    unique_name,
)

from pooler.localcluster import LocalCluster

CLIENT_TIMEOUT = 60.0


def _where(host: str, port: int, user: str = "app") -> list[str]:
    """libpq programs' options to reach ``host:port`` as ``user``."""
    return ["-h", host, "-p", str(port), "-U", user]


def _client_env(password: str = "app") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = password
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


# --- psql -----------------------------------------------------------------------------


def _psql(
    pooler: PoolerProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-A",
            "-t",
            *_where(pooler.host, pooler.port),
            "-d",
            "app",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        env=_client_env(),
        timeout=CLIENT_TIMEOUT,
    )


def test_psql_multi_statement_strings_and_copy(
    cluster: LocalCluster, pooler: PoolerProcess, tmp_path: Path
) -> None:
    source = tmp_path / "in.csv"
    source.write_text("".join(f"{i},line {i}\n" for i in range(1001, 1301)))
    target = tmp_path / "out.csv"
    with scratch_table(cluster, "id int PRIMARY KEY, v text") as table:
        # -c sends its whole string as one Query message: three statements, three results.
        done = _psql(
            pooler,
            "-c",
            f"INSERT INTO {table} SELECT g, 'line ' || g FROM generate_series(1, 500) g;"
            f" SELECT count(*) FROM {table}; SELECT sum(id) FROM {table}",
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["INSERT", "0", "500", "500", "125250"]
        script = (
            f"\\copy {table} FROM '{source}' WITH (FORMAT csv)\n"
            f"SELECT count(*) FROM {table} \\; SELECT max(id) FROM {table};\n"
            f"\\copy (SELECT id, v FROM {table} ORDER BY id) TO '{target}' WITH (FORMAT csv)\n"
            f"BEGIN;\nDELETE FROM {table} WHERE id > 1000;\nROLLBACK;\n"
            f"SELECT count(*) FROM {table};\n"
        )
        done = _psql(pooler, stdin=script)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [
            "COPY",
            "300",
            "800",
            "1300",
            "COPY",
            "800",
            "BEGIN",
            "DELETE",
            "300",
            "ROLLBACK",
            "800",
        ]
        lines = target.read_text().splitlines()
        assert len(lines) == 800
        assert lines[0] == "1,line 1"
        assert lines[-1] == "1300,line 1300"
        assert count_rows(cluster, table) == 800


def test_psql_on_error_stop_runs_nothing_after_the_error(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    with scratch_table(cluster, "id int") as table:
        script = f"INSERT INTO {table} VALUES (1);\nSELECT 1/0;\nINSERT INTO {table} VALUES (2);\n"
        done = _psql(pooler, stdin=script)
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert "division by zero" in done.stderr
        assert count_rows(cluster, table) == 1
        # The next psql gets a working session.
        done = _psql(pooler, "-c", f"SELECT count(*) FROM {table}")
        assert (done.returncode, done.stdout.strip()) == (0, "1"), done.stderr


# --- psycopg 3 ------------------------------------------------------------------------


def test_psycopg_sync_queries_transactions_and_prepared_statements(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    with (
        scratch_table(cluster, "id int PRIMARY KEY, v text") as table,
        psycopg.connect(pooler.dsn()) as conn,
    ):
        # Parameters, a transaction that commits and one that rolls back.
        with conn.transaction():
            conn.cursor().executemany(
                f"INSERT INTO {table} VALUES (%s, %s)", [(i, f"v{i}") for i in range(100)]
            )
        with conn.transaction(force_rollback=True):
            conn.execute(f"DELETE FROM {table}")
        conn.commit()
        assert count_rows(cluster, table) == 100
        # psycopg prepares a statement on the server after 5 executions.
        for i in range(8):
            row = conn.execute(f"SELECT v FROM {table} WHERE id = %s", [i]).fetchone()
            assert row == (f"v{i}",)
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            [f"SELECT v FROM {table}%"],
        ).fetchone()
        assert prepared == (1,)
        conn.commit()
        # A server-side cursor (DECLARE / FETCH) read in chunks.
        with conn.transaction(), conn.cursor(name="big") as cur:
            cur.itersize = 1000
            cur.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
            total = sum(row[0] for row in cur)
        assert total == 20000 * 20001 // 2
        # One 16 MB value each way: messages far larger than any socket buffer.
        big = "0123456789abcdef" * 1024 * 1024
        row = conn.execute("SELECT length(%s::text), md5(%s::text)", [big, big]).fetchone()
        assert row == (len(big), hashlib.md5(big.encode()).hexdigest())
        row = conn.execute("SELECT repeat('0123456789abcdef', 1024 * 1024)").fetchone()
        assert row == (big,)
        conn.commit()
        # A session that notifies itself sees the pid it was given in BackendKeyData.
        conn.autocommit = True
        channel = unique_name("chan")
        notes: list[psycopg.Notify] = []
        conn.add_notify_handler(notes.append)
        conn.execute(f"LISTEN {channel}")
        conn.execute(f"NOTIFY {channel}, 'to myself'")
        assert [(n.channel, n.payload, n.pid) for n in notes] == [
            (channel, "to myself", conn.info.backend_pid)
        ]
        conn.execute(f"UNLISTEN {channel}")
        conn.autocommit = False
        # An error inside a transaction: 25P02 until ROLLBACK, then the session goes on.
        conn.execute("SELECT 1")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        assert conn.execute("SELECT 42").fetchone() == (42,)


def test_psycopg_async_concurrent_connections(cluster: LocalCluster, pooler: PoolerProcess) -> None:
    async def client(table: str, n: int, everyone: asyncio.Barrier) -> tuple[int, int]:
        async with await psycopg.AsyncConnection.connect(pooler.dsn(), autocommit=True) as conn:
            # All six are connected at once before any goes on.
            await everyone.wait()
            async with conn.transaction():
                cur = conn.cursor()
                await cur.executemany(
                    f"INSERT INTO {table} VALUES (%s, %s)",
                    [(n * 1000 + i, f"c{n}") for i in range(50)],
                )
            cur = await conn.execute(
                f"SELECT count(*), pg_backend_pid() FROM {table} WHERE v = %s", [f"c{n}"]
            )
            row = await cur.fetchone()
            assert row is not None
            big = await conn.execute("SELECT g FROM generate_series(1, 50000) g")
            assert len(await big.fetchall()) == 50000
            return int(row[0]), int(row[1])

    async def main(table: str) -> list[tuple[int, int]]:
        everyone = asyncio.Barrier(6)
        return list(await asyncio.gather(*(client(table, n, everyone) for n in range(6))))

    with scratch_table(cluster, "id int PRIMARY KEY, v text") as table:
        results = asyncio.run(main(table))
        assert [count for count, _ in results] == [50] * 6
        if pooler.config_path.read_text().count("mode: session"):
            # Six clients at once hold six different server connections.
            assert len({pid for _, pid in results}) == 6
        assert count_rows(cluster, table) == 300


def _pipeline_outcome(dsn: str, table: str, autocommit: bool) -> dict[str, Any]:
    """Run a pipeline with an error in its second implicit transaction; what happened."""
    outcome: dict[str, Any] = {}
    with psycopg.connect(dsn, autocommit=autocommit) as conn:
        try:
            with conn.pipeline() as pipeline:
                conn.execute(f"INSERT INTO {table} VALUES (1)")
                first = conn.execute(f"SELECT count(*) FROM {table}")
                pipeline.sync()
                outcome["first_count"] = first.fetchone()
                conn.execute(f"INSERT INTO {table} VALUES (2)")
                conn.execute(f"INSERT INTO {table} VALUES (3)")
                conn.execute("SELECT 1/0")
                conn.execute(f"INSERT INTO {table} VALUES (4)")
                conn.execute("SELECT pg_advisory_lock(4242)")
                pipeline.sync()
                outcome["reached_after_error"] = True
        except psycopg.Error as exc:
            outcome["error"] = (type(exc).__name__, exc.sqlstate)
        outcome["status_after"] = conn.info.transaction_status.name
        if not autocommit:
            conn.rollback()
        # The connection works after: a new pipeline and a plain query.
        with conn.pipeline():
            conn.execute(f"INSERT INTO {table} VALUES (5)")
            last = conn.execute(f"SELECT array_agg(id ORDER BY id) FROM {table}")
        outcome["rows_seen"] = last.fetchone()
        outcome["locks"] = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        ).fetchone()
        conn.commit()
    outcome["committed"] = _committed_ids(dsn, table)
    return outcome


def _committed_ids(dsn: str, table: str) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [row[0] for row in conn.execute(f"SELECT id FROM {table} ORDER BY id")]


@pytest.mark.parametrize("autocommit", [True, False], ids=["autocommit", "transaction"])
def test_psycopg_pipeline_error_matches_postgresql(
    cluster: LocalCluster, pooler: PoolerProcess, autocommit: bool
) -> None:
    with (
        scratch_table(cluster, "id int", "direct") as direct_table,
        scratch_table(cluster, "id int", "pooled") as pooled_table,
    ):
        direct = _pipeline_outcome(direct_dsn(cluster), direct_table, autocommit)
        pooled = _pipeline_outcome(pooler.dsn(), pooled_table, autocommit)
    assert pooled == direct
    # What PostgreSQL does, spelled out: the error aborts its implicit transaction (the
    # inserts 2 and 3 before it) and skips the rest up to Sync (insert 4, the lock).
    assert pooled["error"] == ("DivisionByZero", "22012")
    assert "reached_after_error" not in pooled
    assert pooled["locks"] == (0,)
    if autocommit:
        assert pooled["committed"] == [1, 5]
    else:
        # One explicit transaction: the rollback after the error takes insert 1 too.
        assert pooled["committed"] == [5]


# --- asyncpg ----------------------------------------------------------------------------


async def _asyncpg_connect(pooler: PoolerProcess) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=pooler.host, port=pooler.port, user="app", password="app", database="app"
    )


def test_asyncpg_prepared_executemany_and_large_results(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    async def main(table: str) -> None:
        conn = await _asyncpg_connect(pooler)
        try:
            stmt = await conn.prepare("SELECT $1::int * 3")
            assert [await stmt.fetchval(i) for i in range(20)] == [i * 3 for i in range(20)]
            await conn.executemany(
                f"INSERT INTO {table} VALUES ($1, $2)", [(i, f"r{i}") for i in range(2000)]
            )
            # 200,000 rows of ~120 bytes: many server reads and client writes.
            rows = await conn.fetch(
                "SELECT g, repeat('y', 120) AS pad FROM generate_series(1, 200000) g"
            )
            assert len(rows) == 200000
            assert rows[-1]["g"] == 200000
            assert sum(r["g"] for r in rows) == 200000 * 200001 // 2
            # A cursor in a transaction reads a portal in chunks.
            async with conn.transaction():
                seen = [r["id"] async for r in conn.cursor(f"SELECT id FROM {table}", prefetch=300)]
            assert sorted(seen) == list(range(2000))
            # A statement error leaves the connection usable.
            with pytest.raises(asyncpg.InvalidTextRepresentationError):
                await conn.execute(f"INSERT INTO {table} VALUES ('not a number', 'x')")
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2000
        finally:
            await conn.close()

    with scratch_table(cluster, "id int, v text") as table:
        asyncio.run(main(table))
        assert count_rows(cluster, table) == 2000


def test_asyncpg_clients_taking_turns_prepare_afresh(start_pooler: StartPooler) -> None:
    """asyncpg names its statements __asyncpg_stmt_N__ per connection: the next client on
    the same server prepares the same names again, which works only if none survived."""
    pooler = start_pooler(pool={"size": 1})

    async def client() -> tuple[int, list[int]]:
        conn = await _asyncpg_connect(pooler)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            stmt = await conn.prepare("SELECT $1::int + 100")
            values = [await stmt.fetchval(i) for i in range(3)]
            values.append(await conn.fetchval("SELECT $1::int + 200", 1))
            return int(pid), values
        finally:
            await conn.close()

    async def main() -> list[tuple[int, list[int]]]:
        return [await client() for _ in range(3)]

    results = asyncio.run(main())
    assert [values for _, values in results] == [[100, 101, 102, 201]] * 3
    assert len({pid for pid, _ in results}) == 1


def test_asyncpg_copy_in_and_out(cluster: LocalCluster, pooler: PoolerProcess) -> None:
    async def main(table: str) -> tuple[str, str, bytes]:
        conn = await _asyncpg_connect(pooler)
        try:
            copied_in = await conn.copy_records_to_table(
                table, records=[(i, f"rec {i}") for i in range(5000)], columns=["id", "v"]
            )
            out = io.BytesIO()
            copied_out = await conn.copy_from_query(
                f"SELECT id, v FROM {table} WHERE id >= $1 ORDER BY id", 1000, output=out
            )
            return copied_in, copied_out, out.getvalue()
        finally:
            await conn.close()

    with scratch_table(cluster, "id int, v text") as table:
        copied_in, copied_out, data = asyncio.run(main(table))
        assert copied_in == "COPY 5000"
        assert count_rows(cluster, table) == 5000
        assert copied_out == "COPY 4000"
        lines = data.decode().splitlines()
        assert len(lines) == 4000
        assert lines[0] == "1000\trec 1000"
        assert lines[-1] == "4999\trec 4999"


# --- COPY with psycopg ---------------------------------------------------------------


def test_psycopg_copy_from_stdin_and_to_stdout(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    with (
        scratch_table(cluster, "id int, v text") as table,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        cur = conn.cursor()
        with cur.copy(f"COPY {table} (id, v) FROM STDIN") as copy:
            for i in range(30000):
                copy.write_row((i, f"text {i}"))
        assert cur.rowcount == 30000
        with cur.copy(f"COPY {table} (id, v) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            for i in range(30000, 31000):
                copy.write_row((i, f"bin {i}"))
        assert cur.rowcount == 1000
        assert count_rows(cluster, table) == 31000
        # COPY TO STDOUT, text and binary; a row count both ways.
        with cur.copy(f"COPY (SELECT id, v FROM {table} ORDER BY id) TO STDOUT") as copy:
            rows = list(copy.rows())
        assert len(rows) == 31000
        assert rows[0] == ("0", "text 0")
        assert rows[-1] == ("30999", "bin 30999")
        with cur.copy(f"COPY {table} TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text"])
            ids = sorted(row[0] for row in copy.rows())
        assert ids == list(range(31000))
        # A COPY the server refuses half way (bad data) fails cleanly; the session goes on.
        with (
            pytest.raises(psycopg.errors.InvalidTextRepresentation),
            cur.copy(f"COPY {table} (id, v) FROM STDIN") as copy,
        ):
            copy.write(b"1\tok\nnot-a-number\tbad\n")
        assert count_rows(cluster, table) == 31000
        # A COPY the client gives up half way (CopyFail) too.
        with (
            pytest.raises(RuntimeError, match="client gives up"),
            cur.copy(f"COPY {table} FROM STDIN") as copy,
        ):
            copy.write(b"".join(b"%d\tgiven up\n" % i for i in range(5000)))
            raise RuntimeError("client gives up")
        assert count_rows(cluster, table) == 31000
        assert conn.execute("SELECT 7").fetchone() == (7,)


# --- cancel ---------------------------------------------------------------------------


def _cancelled_from_another_thread(
    conn: psycopg.Connection[Any], method: str, run: Callable[[], object]
) -> tuple[psycopg.Error | None, float]:
    """Call ``run()``; 0.5 s in, another thread calls ``conn.<method>()``. The error
    ``run`` raised (None if it ended normally) and the seconds from cancel to answer."""
    sent_at: list[float] = []

    def cancel() -> None:
        sent_at.append(time.monotonic())
        getattr(conn, method)()

    timer = threading.Timer(0.5, cancel)
    timer.start()
    error: psycopg.Error | None = None
    try:
        run()
    except psycopg.Error as exc:
        error = exc
    finally:
        answered_at = time.monotonic()
        timer.cancel()
        timer.join()
    assert sent_at, "the query ended before the cancel was sent"
    return error, answered_at - sent_at[0]


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel_through_the_pooler(pooler: PoolerProcess, method: str) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        error, waited = _cancelled_from_another_thread(
            conn, method, lambda: conn.execute("SELECT pg_sleep(10)")
        )
        assert error is not None, f"not cancelled: the query ran to its end ({waited:.1f} s)"
        assert error.sqlstate == "57014"
        assert waited < 1.0
        # The same session goes on, no transaction left open.
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_psycopg_cancel_of_a_pipelined_query(pooler: PoolerProcess) -> None:
    """In pipeline mode psycopg sends Execute and Flush, and Sync only at the end: the
    query runs while no Sync is outstanding, and a cancel must still reach it."""
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:

        def pipelined_sleep() -> None:
            with conn.pipeline():
                conn.execute("SELECT pg_sleep(5)").fetchone()

        error, waited = _cancelled_from_another_thread(conn, "cancel", pipelined_sleep)
        assert error is not None, f"not cancelled: the query ran to its end ({waited:.1f} s)"
        assert error.sqlstate == "57014"
        assert waited < 1.0
        assert conn.execute("SELECT 'after'").fetchone() == ("after",)


def test_psycopg_async_cancel_through_the_pooler(pooler: PoolerProcess) -> None:
    async def main() -> float:
        async with await psycopg.AsyncConnection.connect(pooler.dsn(), autocommit=True) as conn:

            async def cancel_soon() -> float:
                await asyncio.sleep(0.5)
                await conn.cancel_safe()
                return time.monotonic()

            canceller = asyncio.create_task(cancel_soon())
            with pytest.raises(psycopg.errors.QueryCanceled) as info:
                await conn.execute("SELECT pg_sleep(10)")
            answered_at = time.monotonic()
            sent_at = await canceller
            assert info.value.sqlstate == "57014"
            cur = await conn.execute("SELECT 'after'")
            assert await cur.fetchone() == ("after",)
            return answered_at - sent_at

    # cancel_safe returns once the cancel connection closed; the error may come first.
    assert asyncio.run(main()) < 1.0


def test_asyncpg_timeout_cancels_the_query(cluster: LocalCluster, pooler: PoolerProcess) -> None:
    async def main() -> tuple[float, int]:
        conn = await _asyncpg_connect(pooler)
        try:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await conn.fetchval("SELECT pg_sleep(10)", timeout=0.5)
            # asyncpg sent a CancelRequest; the next query waits for the cancelled one.
            assert await conn.fetchval("SELECT 'after'") == "after"
            return time.monotonic() - started, int(pid)
        finally:
            await conn.close()

    elapsed, pid = asyncio.run(main())
    # Without the cancel, the next query would wait for pg_sleep(10) to end.
    assert elapsed < 1.5
    with psycopg.connect(superuser_dsn(cluster), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND query LIKE %s"
            " AND state = 'active'",
            [pid, "%pg_sleep(10)%"],
        ).fetchone()
    assert row == (0,)


# --- JDBC -----------------------------------------------------------------------------


def test_jdbc_prepared_statements_portal_reads_and_batch(
    cluster: LocalCluster, pooler: PoolerProcess, tmp_path: Path
) -> None:
    with scratch_table(cluster, "id int, v text") as table:
        url = f"jdbc:postgresql://{pooler.host}:{pooler.port}/app?prepareThreshold=5"
        assert run_jdbc(url, table, tmp_path) == JDBC_EXPECTED
        assert count_rows(cluster, table) == 500


# --- pgbench --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pgbench_tables(cluster: LocalCluster) -> Iterator[None]:
    """pgbench's tables at scale 1 in database ``app``, made directly on the primary."""
    common = _where(cluster.primary.host, cluster.primary.port)
    done = subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1", *common, "app"],
        capture_output=True,
        text=True,
        env=_client_env(),
        timeout=CLIENT_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    yield
    subprocess.run(
        ["pgbench", "-i", "-I", "d", *common, "app"],
        capture_output=True,
        env=_client_env(),
        timeout=CLIENT_TIMEOUT,
    )


@pytest.mark.parametrize("protocol", ["simple", "extended", "prepared"])
def test_pgbench_select_only(pgbench_tables: None, pooler: PoolerProcess, protocol: str) -> None:
    done = subprocess.run(
        [
            "pgbench",
            "-S",
            "-M",
            protocol,
            "-c",
            "8",
            "-T",
            # Thousands of transactions per protocol: enough to see a failed one.
            "2",
            "-n",
            *_where(pooler.host, pooler.port),
            "app",
        ],
        capture_output=True,
        text=True,
        env=_client_env(),
        timeout=CLIENT_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "number of failed transactions: 0 " in done.stdout, done.stdout
    tps = re.search(r"^tps = ([0-9.]+)", done.stdout, re.MULTILINE)
    assert tps is not None, done.stdout
    assert float(tps.group(1)) > 0
    processed = re.search(r"number of transactions actually processed: (\d+)", done.stdout)
    assert processed is not None and int(processed.group(1)) > 0, done.stdout
