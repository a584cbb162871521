"""The pool's policy, without sockets: reuse by startup parameters, the cap, waiting."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from pooler.localcluster import LocalCluster
from pooler.pool import ParamKey, PooledServer, PoolKey, ServerPool

A: ParamKey = (("application_name", "a"),)
B: ParamKey = (("application_name", "b"),)


@dataclass(eq=False)
class FakeServer:
    param_key: ParamKey
    idle_since: float = 0.0
    closed: bool = False

    def close(self) -> None:
        self.closed = True


@dataclass
class Opener:
    opened: list[FakeServer] = field(default_factory=list)
    fail: Exception | None = None

    async def __call__(self, params: ParamKey) -> PooledServer:
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        server = FakeServer(params)
        self.opened.append(server)
        return server


def _pool(size: int) -> ServerPool:
    return ServerPool(PoolKey(0, "app", "app"), size)


async def take(
    pool: ServerPool, params: ParamKey, opener: Opener, timeout: float | None = None
) -> FakeServer:
    server = await pool.checkout(params, opener, timeout)
    assert isinstance(server, FakeServer)
    return server


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_same_parameters_reuse_the_idle_server() -> None:
    async def main() -> None:
        pool, opener = _pool(2), Opener()
        first = await take(pool, A, opener)
        pool.checkin(first)
        assert await take(pool, A, opener) is first
        assert len(opener.opened) == 1

    run(main())


def test_other_parameters_never_get_an_idle_server_of_another_set() -> None:
    async def main() -> None:
        pool, opener = _pool(2), Opener()
        first = await take(pool, A, opener)
        pool.checkin(first)
        second = await take(pool, B, opener)
        assert second is not first and second.param_key == B
        assert pool.total == 2 and not first.closed

    run(main())


def test_cap_is_kept_by_closing_an_idle_server_of_another_set() -> None:
    async def main() -> None:
        pool, opener = _pool(1), Opener()
        first = await take(pool, A, opener)
        pool.checkin(first)
        second = await take(pool, B, opener)
        assert first.closed and second.param_key == B
        assert pool.total == 1

    run(main())


def test_waiters_are_served_in_order_and_traded_for_their_parameters() -> None:
    async def main() -> None:
        pool, opener = _pool(1), Opener()
        busy = await take(pool, A, opener)
        wait_b = asyncio.ensure_future(take(pool, B, opener))
        wait_a = asyncio.ensure_future(take(pool, A, opener))
        await asyncio.sleep(0.01)
        assert not wait_b.done() and not wait_a.done()
        # The first in line wants B: the released A server is closed for a new B one.
        pool.checkin(busy)
        got_b = await wait_b
        assert busy.closed and got_b.param_key == B and pool.total == 1
        pool.checkin(got_b)
        got_a = await wait_a
        assert got_a.param_key == A and pool.total == 1

    run(main())


def test_open_failure_reaches_the_client_and_frees_the_slot() -> None:
    async def main() -> None:
        pool = _pool(1)
        with pytest.raises(OSError):
            await take(pool, A, Opener(fail=OSError("refused")))
        assert pool.total == 0
        assert (await take(pool, A, Opener())).param_key == A

    run(main())


def test_checkout_timeout_leaves_no_waiter_behind() -> None:
    async def main() -> None:
        pool, opener = _pool(1), Opener()
        busy = await take(pool, A, opener)
        with pytest.raises(TimeoutError):
            await take(pool, A, opener, timeout=0.05)
        assert not pool.waiters
        pool.checkin(busy)
        assert pool.idle_count == 1

    run(main())


def test_discarded_server_lets_a_waiter_open_a_new_one() -> None:
    async def main() -> None:
        pool, opener = _pool(1), Opener()
        busy = await take(pool, A, opener)
        waiting = asyncio.ensure_future(take(pool, A, opener))
        await asyncio.sleep(0.01)
        pool.discard(busy)
        fresh = await waiting
        assert fresh is not busy and busy.closed and pool.total == 1

    run(main())


def test_expired_idle_servers_are_closed() -> None:
    async def main() -> None:
        pool, opener = _pool(3), Opener()
        old = await take(pool, A, opener)
        new = await take(pool, A, opener)
        pool.checkin(old)
        await asyncio.sleep(0.05)
        pool.checkin(new)
        pool.close_expired(time.monotonic() - 0.03)
        assert old.closed and not new.closed
        assert pool.total == 1 and pool.idle_count == 1

    run(main())


def test_idle_timeout_closes_server_connections(cluster: LocalCluster, start_pooler: Any) -> None:
    pooler = start_pooler(pool={"idle_timeout": 1})
    with psycopg.connect(pooler.dsn(), application_name="idle-timeout-test") as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + 5
    with psycopg.connect(cluster.primary.dsn(), autocommit=True) as direct:
        while time.monotonic() < deadline:
            alive = direct.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
            if alive.fetchone() is None:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the idle server connection was not closed after idle_timeout")


def test_idle_server_terminated_by_an_administrator_is_replaced(
    cluster: LocalCluster, start_pooler: Any
) -> None:
    pooler = start_pooler(pool={"size": 1})
    with psycopg.connect(pooler.dsn()) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    with psycopg.connect(cluster.primary.dsn(), autocommit=True) as direct:
        direct.execute("SELECT pg_terminate_backend(%s)", [pid])
    time.sleep(0.3)
    with psycopg.connect(pooler.dsn()) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None and row[0] != pid


def test_checkout_timeout_is_a_clear_error_and_frees_nothing_else(start_pooler: Any) -> None:
    pooler = start_pooler(pool={"size": 1, "checkout_timeout": 0.5, "mode": "session"})
    with psycopg.connect(pooler.dsn()) as holder:
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            psycopg.connect(pooler.dsn(), connect_timeout=5)
        assert time.monotonic() - started < 3
        assert "no server connection became free" in str(info.value)
        assert holder.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(pooler.dsn()) as after:
        assert after.execute("SELECT 2").fetchone() == (2,)


def test_checkout_timeout_in_transaction_pooling(start_pooler: Any) -> None:
    # The server is taken by a transaction; the other client waits at its first query.
    # Every query on the primary: its one server is all there is.
    pooler = start_pooler(
        pool={"size": 1, "checkout_timeout": 0.5, "mode": "transaction"},
        load_balance={"enabled": False},
    )
    with psycopg.connect(pooler.dsn()) as holder:
        assert holder.execute("SELECT 1").fetchone() == (1,)  # BEGIN is now open
        with psycopg.connect(pooler.dsn(), autocommit=True, connect_timeout=5) as waiter:
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as info:
                waiter.execute("SELECT 'waits'")
            assert time.monotonic() - started < 3
            assert info.value.sqlstate == "53300"
            assert "no server connection became free" in str(info.value)
        assert holder.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(pooler.dsn()) as after:
        assert after.execute("SELECT 2").fetchone() == (2,)


def test_backend_fatal_reaches_the_client_as_postgresql_sent_it(
    cluster: LocalCluster, start_pooler: Any
) -> None:
    pooler = start_pooler(pool={"size": 1, "mode": "session"})
    conn = psycopg.connect(pooler.dsn(), autocommit=True)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    with psycopg.connect(cluster.primary.dsn(), autocommit=True) as direct:
        direct.execute("SELECT pg_terminate_backend(%s)", [pid])
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("SELECT 1")
    assert info.value.sqlstate == "57P01"
    assert "terminating connection due to administrator command" in str(info.value)
    conn.close()
    # The dead server left the pool: the next client gets a new one.
    with psycopg.connect(pooler.dsn()) as after:
        row = after.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None and row[0] != pid


def test_terminated_idle_server_is_replaced_in_transaction_pooling(
    cluster: LocalCluster, start_pooler: Any
) -> None:
    # Between transactions the client holds no server: one terminated meanwhile is
    # noticed by the pool, and the client's next transaction runs on a new one.
    pooler = start_pooler(pool={"size": 1, "mode": "transaction"})
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with psycopg.connect(cluster.primary.dsn(), autocommit=True) as direct:
            direct.execute("SELECT pg_terminate_backend(%s)", [pid])
        time.sleep(0.2)
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] != pid
