"""Drivers that prepare statements, each its own way, through transaction pooling on
five servers: pgbench with 100 clients, psycopg (prepare_threshold 0 and 5), asyncpg,
JDBC (prepareThreshold=1) and node-postgres named statements, over thousands of
transactions with every answer checked."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import JDBC_EXPECTED, count_rows, run_jdbc, run_threads, scratch_table

from pooler.localcluster import LocalCluster

NODE_DIR = Path(__file__).parent.parent / "node"


@pytest.fixture
def five(start_pooler: StartPooler) -> PoolerProcess:
    """Transaction pooling on five servers, everything on the primary."""
    return start_pooler(pool={"mode": "transaction", "size": 5}, load_balance={"enabled": False})


@pytest.fixture(scope="module")
def bench_tables(cluster: LocalCluster) -> Iterator[None]:
    node = cluster.primary
    env = {**os.environ, "PGPASSWORD": "app"}
    where = ["-h", node.host, "-p", str(node.port), "-U", "app", "app"]
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1", *where], check=True, capture_output=True, env=env
    )
    yield
    subprocess.run(["pgbench", "-i", "-I", "d", *where], capture_output=True, env=env)


@pytest.mark.parametrize("script", ["select-only", "tpcb-like"])
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_100_clients_on_five_servers(
    bench_tables: None, five: PoolerProcess, mode: str, script: str
) -> None:
    env = {**os.environ, "PGPASSWORD": "app"}
    done = subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            mode,
            "-b",
            script,
            "-c",
            "100",
            "-j",
            "100",
            "-t",
            "20",
            "-h",
            five.host,
            "-p",
            str(five.port),
            "-U",
            "app",
            "app",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "number of failed transactions: 0 " in done.stdout, done.stdout
    assert "number of transactions actually processed: 2000/2000" in done.stdout, done.stdout


@pytest.mark.parametrize("threshold", [0, 5])
def test_psycopg_prepare_thresholds(five: PoolerProcess, threshold: int) -> None:
    def client(n: int) -> None:
        with psycopg.connect(five.dsn(), prepare_threshold=threshold) as conn:
            for i in range(200):
                with conn.transaction():
                    row = conn.execute("SELECT %s::int * 2 + %s::int", [i, n]).fetchone()
                    assert row == (i * 2 + n,)
                    name = conn.execute("SELECT %s::text", [f"c{n}"]).fetchone()
                    assert name == (f"c{n}",)

    run_threads(client, 10)


def test_asyncpg_thousands_of_prepared_transactions(five: PoolerProcess) -> None:
    async def client(n: int) -> None:
        conn = await asyncpg.connect(
            host=five.host, port=five.port, user="app", password="app", database="app"
        )
        try:
            for i in range(200):
                async with conn.transaction():
                    assert await conn.fetchval("SELECT $1::int + $2::int", i, n) == i + n
        finally:
            await conn.close()

    async def main() -> None:
        await asyncio.gather(*(client(n) for n in range(10)))

    asyncio.run(main())


def test_jdbc_prepare_threshold_1_while_others_share_the_servers(
    cluster: LocalCluster, five: PoolerProcess, tmp_path: Path
) -> None:
    stop = threading.Event()

    def others(n: int) -> None:
        with psycopg.connect(five.dsn(), autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("SELECT %s::int", [n], prepare=True)

    churn = threading.Thread(target=run_threads, args=(others, 6))
    churn.start()
    try:
        with scratch_table(cluster, "id int, v text") as table:
            url = f"jdbc:postgresql://{five.host}:{five.port}/app?prepareThreshold=1"
            assert run_jdbc(url, table, tmp_path) == JDBC_EXPECTED
            assert count_rows(cluster, table) == 500
    finally:
        stop.set()
        churn.join(60)


@pytest.fixture(scope="module")
def node_postgres() -> Path:
    """tests/node with node-postgres installed (npm, from its lock file)."""
    if not (NODE_DIR / "node_modules" / "pg").is_dir():
        npm = shutil.which("npm")
        assert npm is not None, "npm is needed for the node-postgres test"
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=NODE_DIR,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return NODE_DIR


def test_node_postgres_named_statements(node_postgres: Path, five: PoolerProcess) -> None:
    url = f"postgresql://app:app@{five.host}:{five.port}/app"
    clients, rounds = 12, 250
    done = subprocess.run(
        ["node", str(node_postgres / "named_statements.js"), url, str(clients), str(rounds)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"checked={clients * (rounds + rounds // 10)}"
