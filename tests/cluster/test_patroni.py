"""Patroni as the authority (``failover.patroni_urls``), against a real Patroni cluster.

One etcd and three Patroni members (``patroni_cluster.PatroniCluster``, synchronous
mode) for the whole module, and two poolers in front of them: a switchover and a
killed leader are followed by both with no acknowledged write lost, and with Patroni
paused and its leader stopped the pooler promotes nothing. The tests run in this order
and each starts from a healthy cluster (a leader, two replicas streaming). Outage
times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import asyncpg
import pytest
from conftest import PoolerProcess, launch_pooler
from patroni_cluster import Member, PatroniCluster, http
from test_failover import Writers, connect, eventually

from pooler.localcluster import find_free_ports, server_tempdir

#: Down within period + 2 * timeout + retry_delay = 1.7 s; Patroni is asked every period.
HEALTH = {"period": 0.5, "timeout": 0.5, "max_retries": 1, "retry_delay": 0.2}
#: From Patroni's action to writes acknowledged again, at most.
FOLLOW_BOUND = 10.0


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    """etcd and three Patroni members, with a table ``t`` in database ``app``."""
    cluster = PatroniCluster(server_tempdir("pooler-patroni-"))
    try:
        cluster.start()
        leader = cluster.wait_healthy(30)
        cluster.psql(
            leader, "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO app", "app"
        )
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="module")
def poolers(
    patroni: PatroniCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[PoolerProcess]]:
    """Two poolers in front of the Patroni cluster, each following Patroni on its own."""
    started: list[PoolerProcess] = []
    try:
        for port in find_free_ports(2):
            config = patroni.pooler_config(port)
            config["health_check"].update(HEALTH)
            started.append(launch_pooler(config, tmp_path_factory.mktemp("pooler")))
        yield started
    finally:
        for pooler in started:
            pooler.stop()


class PatroniWriters(Writers):
    """Writers that also get over asyncpg's InternalClientError ("another operation (2)
    is in progress"), seen about once per switchover as Patroni stops the old leader.
    asyncpg does this with PostgreSQL itself: the old leader's FATAL reaches a client
    with no operation in flight (between asyncpg's prepare, which ends with a Flush,
    and its execute) and leaves it in its error-consuming state. Counted on 4 Patroni
    switchovers each, 6 clients connected straight to the leader got it 0, 3, 1 and 3
    times, 6 clients through the pooler 2, 2, 2 and 0 times."""

    tolerated = (*Writers.tolerated, asyncpg.exceptions.InternalClientError)


def ids_on(patroni: PatroniCluster, member: Member) -> set[int]:
    return {int(x) for x in patroni.psql(member, "SELECT id FROM t", "app").split()}


def fresh_start(patroni: PatroniCluster) -> tuple[Member, Member]:
    """Wait for a healthy cluster, empty ``t``; (leader, its synchronous standby)."""
    leader = patroni.wait_healthy(60)
    patroni.psql(leader, "TRUNCATE t", "app")
    sync = next(
        patroni.member(row["name"])
        for row in patroni.view()["members"]
        if row["role"] == "sync_standby"
    )
    return leader, sync


async def follow_under_load(
    patroni: PatroniCluster, pooler: PoolerProcess, act: Callable[[], object], what: str
) -> tuple[Writers, float]:
    """Writers through ``pooler`` until 100 acknowledged, ``act()`` (in a thread), then
    writers until 20 more are acknowledged after Patroni has a new running leader;
    (writers, the outage: the longest time without an acknowledged write)."""
    old = patroni.leader()
    writers = PatroniWriters(pooler, 6)
    writers.start()
    try:
        await eventually(lambda: len(writers.acked) >= 100, 10, f"writes before the {what}")
        started = time.monotonic()
        await asyncio.to_thread(act)
        await asyncio.to_thread(
            patroni.wait_for,
            lambda: patroni.new_leader(old),
            30,
            f"a new leader after the {what}",
        )
        settled = time.monotonic()
        await eventually(
            lambda: writers.acks_after(settled) >= 20, FOLLOW_BOUND, f"writes after the {what}"
        )
    finally:
        await writers.stop()
    return writers, writers.outage(started - 0.5)


async def write_through(pooler: PoolerProcess, value: int) -> int:
    """Insert ``value`` through ``pooler``, trying again for up to FOLLOW_BOUND seconds
    while it has no primary; the port of the server that took it."""
    started = time.monotonic()
    while True:
        conn = await connect(pooler)
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO t VALUES ($1)", value)
                return int(await conn.fetchval("SELECT inet_server_port()"))
        except asyncpg.CannotConnectNowError:
            assert time.monotonic() - started < FOLLOW_BOUND, "no primary, still"
            await asyncio.sleep(0.1)
        finally:
            await conn.close()


def test_switchover_under_load_is_followed_by_every_pooler(
    patroni: PatroniCluster, poolers: list[PoolerProcess]
) -> None:
    old, candidate = fresh_start(patroni)

    def switchover() -> None:
        status, body = http(
            "POST",
            f"{old.url}/switchover",
            {"leader": old.name, "candidate": candidate.name},
            timeout=30,
        )
        assert status == 200, body

    async def main() -> None:
        writers, outage = await follow_under_load(patroni, poolers[0], switchover, "switchover")
        print(f"\nPatroni switchover, 6 writers: longest wait for a write {outage:.2f} s")
        assert outage < FOLLOW_BOUND
        assert patroni.leader() is candidate
        lost = writers.acked - ids_on(patroni, candidate)
        assert not lost, f"{len(lost)} acknowledged inserts missing on the new leader"
        # The other pooler, whose clients saw nothing, follows Patroni by itself too.
        port = await write_through(poolers[1], -1)
        assert port == candidate.port
        assert -1 in ids_on(patroni, candidate)

    asyncio.run(main())


def test_killed_leader_is_followed_with_no_acknowledged_write_lost(
    patroni: PatroniCluster, poolers: list[PoolerProcess]
) -> None:
    old, _ = fresh_start(patroni)

    async def main() -> None:
        writers, outage = await follow_under_load(
            patroni, poolers[0], lambda: patroni.stop_postgres(old, "immediate"), "kill"
        )
        print(f"\nPatroni leader killed, 6 writers: writes back after {outage:.2f} s")
        new = patroni.leader()
        assert new is not None and new is not old
        lost = writers.acked - ids_on(patroni, new)
        assert not lost, f"{len(lost)} acknowledged inserts missing on the new leader"

    asyncio.run(main())


def test_the_pooler_promotes_nothing_itself(
    patroni: PatroniCluster, poolers: list[PoolerProcess]
) -> None:
    leader, _ = fresh_start(patroni)
    replicas = [m for m in patroni.members if m is not leader]
    status, body = http("PATCH", f"{leader.url}/config", {"pause": True})
    assert status == 200, body
    # Every member's Patroni must have seen the pause before the leader stops, or it
    # would fail over (primary_start_timeout is 0).
    patroni.wait_for(
        lambda: (
            leader
            if all(http("GET", f"{m.url}/patroni")[1].get("pause") for m in patroni.members)
            else None
        ),
        10,
        "every member paused",
    )
    patroni.stop_postgres(leader, "immediate")

    async def write_refused() -> bool:
        """Whether a write through the pooler gets "no primary" (57P03). Before the
        monitor counts the stopped leader down, a login or a write may fail otherwise
        (a server connection refused, a client connection closed): not yet refused."""
        try:
            conn = await connect(poolers[0])
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        try:
            await conn.execute("INSERT INTO t VALUES (-2)")
        except asyncpg.PostgresError as exc:
            return bool(exc.sqlstate == "57P03")
        except asyncpg.InterfaceError:
            return False
        finally:
            conn.terminate()
        return False

    async def main() -> None:
        started = time.monotonic()
        while not await write_refused():
            assert time.monotonic() - started < FOLLOW_BOUND, "writes never refused"
            await asyncio.sleep(0.1)
        conn = await connect(poolers[0])
        try:
            # Longer than the builtin failover takes to promote once the primary is down.
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                assert await write_refused()
                # Reads go on, on the replicas. (The simple protocol: a statement that
                # asyncpg prepares first goes to the primary.)
                assert await conn.execute("SELECT count(*) FROM t") == "SELECT 1"
                assert all(patroni.in_recovery(m) for m in replicas), "a replica was promoted"
                await asyncio.sleep(0.3)
        finally:
            await conn.close()

    asyncio.run(main())
    for pooler in poolers:
        # What the builtin failover logs when it acts.
        assert "promoting a standby" not in pooler.log_text()
        assert '"msg": "promoted"' not in pooler.log_text()
