"""Transaction pooling through the pooler's port: many clients on few servers, each
seeing its own session.

What pins a client (LISTEN, temporary tables, ...) keeps its server until DISCARD ALL
or the end; settings (tests/e2e/test_settings.py) and protocol-level prepared
statements follow the client from server to server.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import threading
import time

import asyncpg
import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import app_backend_pids, count_rows, run_threads, scratch_table
from wire import bind, connect, execute, message, parse, sync

from pooler.localcluster import LocalCluster


@pytest.fixture
def small_pool(start_pooler: StartPooler) -> PoolerProcess:
    """Transaction pooling with two servers, and a short wait for one; every query on
    the primary, so that the two are all there is."""
    return start_pooler(
        pool={"mode": "transaction", "size": 2, "checkout_timeout": 1},
        load_balance={"enabled": False},
    )


def test_many_clients_share_two_servers(cluster: LocalCluster, small_pool: PoolerProcess) -> None:
    with scratch_table(cluster, "id int PRIMARY KEY, who text") as table:

        def client(n: int) -> None:
            with psycopg.connect(small_pool.dsn()) as conn:
                for i in range(20):
                    with conn.transaction():
                        conn.execute(f"INSERT INTO {table} VALUES (%s, %s)", [n * 100 + i, f"c{n}"])
                        row = conn.execute(
                            f"SELECT count(*) FROM {table} WHERE who = %s", [f"c{n}"]
                        ).fetchone()
                        assert row == (i + 1,)

        run_threads(client, 10)
        assert count_rows(cluster, table) == 200
    # Ten clients, never more than the pool's two server connections.
    assert len(app_backend_pids(cluster)) <= 2


def test_a_listen_pins_its_client_until_discard_all(small_pool: PoolerProcess) -> None:
    with (
        psycopg.connect(small_pool.dsn(), autocommit=True) as listener,
        psycopg.connect(small_pool.dsn(), autocommit=True) as other,
        psycopg.connect(small_pool.dsn()) as holder,
    ):
        listener.execute("LISTEN pinned")
        # One server is the listener's; the holder's open transaction takes the other.
        holder.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError) as info:
            other.execute("SELECT 'waits'")
        assert info.value.sqlstate == "53300"
        listener.execute("DISCARD ALL")
        # The listener pools again: a third client gets a server while the holder holds.
        with psycopg.connect(small_pool.dsn(), autocommit=True) as third:
            assert third.execute("SELECT 3").fetchone() == (3,)
        holder.rollback()


def test_set_local_and_rolled_back_set_leave_nothing(small_pool: PoolerProcess) -> None:
    with psycopg.connect(small_pool.dsn()) as conn:
        with conn.transaction():
            conn.execute("SET LOCAL application_name = 'local'")
            assert conn.execute("SHOW application_name").fetchone() == ("local",)
        assert conn.execute("SHOW application_name").fetchone() == ("",)
        conn.commit()


def test_protocol_prepared_statements_follow_the_client(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler(pool={"mode": "transaction", "size": 3})

    def client(n: int) -> None:
        with psycopg.connect(pooler.dsn(), autocommit=True, prepare_threshold=0) as conn:
            for i in range(50):
                row = conn.execute("SELECT %s::int * 2, %s::text", [i, f"c{n}"]).fetchone()
                assert row == (i * 2, f"c{n}")
                if i % 7 == 0:
                    with conn.transaction():
                        conn.execute("SELECT %s::int + 1", [i])

    run_threads(client, 8)


def test_asyncpg_prepares_everything_and_pools(start_pooler: StartPooler) -> None:
    pooler = start_pooler(pool={"mode": "transaction", "size": 3})

    async def client(n: int) -> int:
        conn = await asyncpg.connect(
            host=pooler.host, port=pooler.port, user="app", password="app", database="app"
        )
        try:
            total = 0
            for i in range(100):
                total += await conn.fetchval("SELECT $1::int + $2::int", i, n)
            async with conn.transaction():
                total += await conn.fetchval("SELECT count(*) FROM generate_series(1, $1)", 10)
            return int(total)
        finally:
            await conn.close()

    async def main() -> list[int]:
        return list(await asyncio.gather(*(client(n) for n in range(12))))

    results = asyncio.run(main())
    assert results == [sum(range(100)) + 100 * n + 10 for n in range(12)]


def test_error_names_the_clients_statement(small_pool: PoolerProcess) -> None:
    with psycopg.connect(small_pool.dsn(), autocommit=True) as conn:
        conn.pgconn.prepare(b"mine", b"SELECT 1")
        result = conn.pgconn.exec_prepared(b"mine", [b"1"])
        message = (result.error_message or b"").decode()
        assert 'prepared statement "mine" requires 0' in message, message


def test_a_close_alone_is_answered_without_a_server(small_pool: PoolerProcess) -> None:
    """asyncpg closes statements it evicts with a Close and a Sync alone: the pooler
    answers those itself, so they wait for no server, and the name is free again."""
    with connect((small_pool.host, small_pool.port)) as wire:
        wire.send(parse("s1", "SELECT 1") + sync())
        assert [msg.type for msg in wire.read_until("Z")] == ["1", "Z"]
        holders = [psycopg.connect(small_pool.dsn()) for _ in range(2)]
        try:
            for holder in holders:
                holder.execute("SELECT 1")  # each holds one of the two servers
            began = time.monotonic()
            wire.send(message("C", b"P\0") + sync())
            wire.send(message("C", b"Ss1\0") + sync())
            answers = wire.read_until("Z") + wire.read_until("Z")
            # (A server would have been waited for until checkout_timeout, 1 s, failed.)
            assert time.monotonic() - began < 0.9
        finally:
            for holder in holders:
                holder.close()
        assert [msg.type for msg in answers] == ["3", "Z", "3", "Z"]
        assert [msg.body for msg in answers if msg.type == "Z"] == [b"I", b"I"]
        wire.send(parse("s1", "SELECT 2") + bind("", "s1") + execute() + sync())
        rows = [msg.row() for msg in wire.read_until("Z") if msg.type == "D"]
        assert rows == [[b"2"]]


def test_pgbench_prepared_through_five_servers(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler(pool={"mode": "transaction", "size": 5})
    env = {**os.environ, "PGPASSWORD": "postgres"}
    node = cluster.primary
    subprocess.run(
        [
            "pgbench",
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            node.host,
            "-p",
            str(node.port),
            "-U",
            "postgres",
            "postgres",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    started = time.monotonic()
    # pgbench 15 prepares synchronously, so one thread serving many clients would wait
    # on a server held by a client it is not serving: one thread per client.
    for mode in ("simple", "extended", "prepared"):
        out = subprocess.run(
            [
                "pgbench",
                "-n",
                "-M",
                mode,
                "-c",
                "20",
                "-j",
                "20",
                "-t",
                "30",
                "-S",
                "-h",
                pooler.host,
                "-p",
                str(pooler.port),
                "-U",
                "postgres",
                "postgres",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "number of failed transactions: 0" in out.stdout, out.stdout
        assert "number of transactions actually processed: 600/600" in out.stdout
    assert time.monotonic() - started < 100


def test_cancels_never_reach_another_clients_query(start_pooler: StartPooler) -> None:
    # Ten clients share five servers; 1,000 cancels at random moments go to five of them.
    # The other five must never see a query of theirs cancelled, though their queries
    # run on the very servers the cancelled ones just left.
    pooler = start_pooler(pool={"mode": "transaction", "size": 5})
    victims = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(5)]
    bystanders = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(5)]
    stop = threading.Event()
    bystander_errors: list[BaseException] = []
    victim_cancelled = [0]

    def work(conn: psycopg.Connection[tuple[object, ...]], is_victim: bool) -> None:
        rng = random.Random(id(conn))
        while not stop.is_set():
            try:
                conn.execute("SELECT pg_sleep(%s)", [rng.choice([0, 0.001, 0.005, 0.02])])
            except psycopg.errors.QueryCanceled as exc:
                if is_victim:
                    victim_cancelled[0] += 1
                else:
                    bystander_errors.append(exc)

    workers = [threading.Thread(target=work, args=(c, True)) for c in victims]
    workers += [threading.Thread(target=work, args=(c, False)) for c in bystanders]
    for worker in workers:
        worker.start()
    try:
        rng = random.Random(7)
        for _ in range(1000):
            rng.choice(victims).cancel()
            time.sleep(rng.random() * 0.01)
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
        for conn in victims + bystanders:
            conn.close()
    assert not bystander_errors, f"{len(bystander_errors)} queries of bystanders cancelled"
    # The cancels did land on the clients they were meant for.
    assert victim_cancelled[0] > 0
