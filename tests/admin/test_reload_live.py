"""RELOAD applied live, through the pooler's port on the shared primary + 2 standbys:
backends added (checked, then given reads) and removed (drained: a transaction there
ends normally, then nothing goes there; ids are kept, never reused), the query cache's
limits; and SHOW STATS' times and per-period averages moving with the traffic."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import yaml
from conftest import PoolerProcess, StartPooler
from helpers_clients import unique_name

from pooler.admin.periods import Periods, Totals, averages
from pooler.admin.reload import plan_nodes
from pooler.config import Backend
from pooler.localcluster import SUPERUSER, LocalCluster

FAST_CHECKS = {"period": 0.2, "timeout": 2, "retry_delay": 0.2}


def _admin(pooler: PoolerProcess, cluster: LocalCluster) -> psycopg.Connection[Any]:
    return psycopg.connect(
        pooler.dsn(SUPERUSER, cluster.users[SUPERUSER], "pooler"), autocommit=True
    )


def _rows(conn: psycopg.Connection[Any], sql: str) -> list[dict[str, Any]]:
    cur = conn.execute(sql)
    assert cur.description is not None
    names = [col.name for col in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _wait(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _rewrite(pooler: PoolerProcess, **changes: Any) -> None:
    config = yaml.safe_load(pooler.config_path.read_text())
    config.update(changes)
    pooler.config_path.write_text(yaml.safe_dump(config))


# --- sans-IO ---------------------------------------------------------------------------


def test_plan_matches_backends_by_address_and_keeps_the_primary() -> None:
    a, b, c = (Backend("127.0.0.1", port) for port in (5001, 5002, 5003))
    plan = plan_nodes([a, b, c], set(), [a, Backend("127.0.0.1", 5003, weight=3), b], 0)
    assert (plan.added, plan.removed, plan.waiting) == ([], [], [])
    assert plan.kept[2].weight == 3
    moved = Backend("127.0.0.2", 5002)
    plan = plan_nodes([a, b, c], {2}, [a, moved, c], 0)
    # b moved: removed and added; c was removed before: it comes back as a new node.
    assert (plan.added, plan.removed) == ([moved, c], [1])
    plan = plan_nodes([a, b, c], set(), [b, c], 0)
    assert plan.removed == [] and 0 in plan.kept
    assert plan.waiting == ["backends (node 0, the primary, stays: switch over first)"]


def test_period_averages_follow_pgbouncer() -> None:
    before = Totals(xact_count=10, query_count=20, received=100, sent=1000, wait_time=0)
    after = Totals(
        xact_count=30, query_count=60, received=300, sent=5000,
        xact_time=40_000, query_time=20_000, wait_time=500_000,
    )  # fmt: skip
    got = averages(before, after, 2.0)
    assert (got.xact_count, got.query_count, got.recv, got.sent) == (10, 20, 100, 2000)
    # Times per transaction and per query; waiting per second of the period.
    assert (got.xact_time, got.query_time, got.wait_time) == (2000, 500, 250_000)
    periods = Periods()
    periods.tick({"app": before}, 0.0)
    assert periods.last == {}
    periods.tick({"app": after}, 2.0)
    assert periods.last["app"] == got
    periods.tick({"app": after}, 3.0)
    assert periods.last["app"].query_count == 0 and periods.last["app"].query_time == 0


# --- through the port ------------------------------------------------------------------


def test_reload_adds_a_node_and_drains_a_removed_one(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    first, second, third = (
        {"name": node.name, "host": node.host, "port": node.port} for node in cluster.nodes
    )
    ports = [node.port for node in cluster.nodes]
    pooler = start_pooler(backends=[first, second], health_check=FAST_CHECKS)

    def served(conn: psycopg.Connection[Any]) -> Counter[int]:
        rows = [conn.execute("SELECT inet_server_port()").fetchone() for _ in range(40)]
        return Counter(row[0] for row in rows if row is not None)

    def nodes(admin: psycopg.Connection[Any]) -> list[dict[str, Any]]:
        return _rows(admin, "SHOW POOL_NODES")

    with _admin(pooler, cluster) as admin, psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert set(served(conn)) <= {ports[0], ports[1]}
        _rewrite(pooler, backends=[first, second, third])
        assert admin.execute("RELOAD").statusmessage == "RELOAD"
        _wait(lambda: len(nodes(admin)) == 3 and nodes(admin)[2]["status"] == "up", "added")
        added = nodes(admin)[2]
        assert (added["node_id"], added["port"], added["role"]) == ("2", str(ports[2]), "standby")
        assert ports[2] in served(conn), "no read went to the added standby"

        # A read-only transaction placed on node 1, then node 1 is removed.
        holder = psycopg.connect(pooler.dsn(), autocommit=True)
        # Not prepared: a prepared BEGIN READ ONLY is placed apart from its first read.
        holder.prepare_threshold = None
        for _ in range(100):
            holder.execute("BEGIN READ ONLY")
            row = holder.execute("SELECT inet_server_port()").fetchone()
            if row is not None and row[0] == ports[1]:
                break
            holder.execute("COMMIT")
        else:
            pytest.fail("no read-only transaction landed on node 1")
        _rewrite(pooler, backends=[first, third])
        admin.execute("RELOAD")
        after = nodes(admin)
        assert [row["node_id"] for row in after] == ["0", "1", "2"]
        assert [row["port"] for row in after] == [str(port) for port in ports]
        assert [row["status"] for row in after] == ["up", "unused", "up"]
        assert after[1]["lb_weight"] == "0.000000"
        # The transaction goes on where it was, and ends normally.
        row = holder.execute("SELECT inet_server_port(), count(*) FROM pg_class").fetchone()
        assert row is not None and row[0] == ports[1]
        holder.execute("COMMIT")
        holder.close()
        spread = served(conn)
        assert ports[1] not in spread and ports[2] in spread
        with psycopg.connect(cluster.nodes[1].dsn(), autocommit=True) as direct:
            # Its server connections close: the last as its transaction ended.
            count = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
            _wait(lambda: direct.execute(count).fetchone() == (0,), "servers left on node 1")
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="removed"):
            admin.execute("ATTACH NODE 1")

        # Listed again, the same server is a new node: id 1 is not reused.
        _rewrite(pooler, backends=[first, second, third])
        admin.execute("RELOAD")
        _wait(lambda: nodes(admin)[-1]["status"] == "up", "added again")
        again = nodes(admin)
        assert [(row["node_id"], row["status"]) for row in again] == [
            ("0", "up"), ("1", "unused"), ("2", "up"), ("3", "up"),
        ]  # fmt: skip
        assert again[3]["port"] == str(ports[1])


def test_reload_applies_the_cache_limits(cluster: LocalCluster, start_pooler: StartPooler) -> None:
    pooler = start_pooler(
        query_cache={"enabled": True, "ttl": 0},
        load_balance={"enabled": False},
        health_check=FAST_CHECKS,
    )
    name = unique_name("rc")
    sql = f"SELECT v FROM {name}"
    primary = cluster.primary.dsn(dbname="app")
    with psycopg.connect(primary, autocommit=True) as direct:
        direct.execute(f"CREATE TABLE {name} AS SELECT 1 AS v")
        direct.execute(f"GRANT SELECT ON {name} TO app")
    try:
        with (
            _admin(pooler, cluster) as admin,
            psycopg.connect(pooler.dsn(), autocommit=True) as conn,
        ):

            def cache() -> dict[str, Any]:
                return _rows(conn, "SHOW POOL_CACHE")[0]

            def hit() -> bool:
                hits = int(cache()["num_cache_hits"])
                conn.execute(sql, prepare=False)
                return int(cache()["num_cache_hits"]) > hits

            _wait(hit, "never served from the cache")
            free = int(cache()["free_cache_entries_size"])
            _rewrite(pooler, query_cache={"enabled": False, "ttl": 0.3, "max_size": "1MB"})
            notices: list[str] = []
            admin.add_notice_handler(lambda diag: notices.append(str(diag.message_detail)))
            admin.execute("RELOAD")
            assert notices == ["Changed, applied at the next start: query_cache.enabled"]
            # Smaller: what it held went; its room is the new size.
            row = cache()
            assert row["num_cache_entries"] == "0"
            assert int(row["free_cache_entries_size"]) == 1024**2 < free
            conn.execute(sql, prepare=False)
            assert hit(), "not stored again"
            time.sleep(0.4)
            assert not hit(), "served older than the new ttl"
    finally:
        with psycopg.connect(primary, autocommit=True) as direct:
            direct.execute(f"DROP TABLE {name}")


def test_show_stats_counts_a_session_mode_client_before_it_leaves(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    """A session-mode client holds its server until it disconnects; what it did so far
    is in SHOW STATS all the same, as in PgBouncer."""
    pooler = start_pooler(pool={"mode": "session"})

    def queries(admin: psycopg.Connection[Any]) -> int:
        rows = {row["database"]: row for row in _rows(admin, "SHOW STATS")}
        return int(rows["app"]["total_query_count"]) if "app" in rows else 0

    with _admin(pooler, cluster) as admin, psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        before = queries(admin)
        for _ in range(5):
            # (Not prepared: psycopg's Parse of the 5th would be a request of its own.)
            conn.execute("SELECT 1", prepare=False)
        assert queries(admin) - before == 5


def test_show_stats_times_and_period_averages(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler(admin={"stats_period": 0.5}, load_balance={"enabled": False})

    def stats(admin: psycopg.Connection[Any]) -> dict[str, int]:
        rows = {row["database"]: row for row in _rows(admin, "SHOW STATS")}
        return {key: int(value) for key, value in rows["app"].items() if key != "database"}

    with _admin(pooler, cluster) as admin, psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("SELECT 1")
        before = stats(admin)
        began = time.monotonic()
        for _ in range(5):
            conn.execute("SELECT pg_sleep(0.02)")
        with conn.transaction():
            conn.execute("SELECT 1")
            time.sleep(0.1)  # idle in transaction: transaction time, not query time
            conn.execute("SELECT 1")
        took = time.monotonic() - began
        after = stats(admin)
        query_us = after["total_query_time"] - before["total_query_time"]
        xact_us = after["total_xact_time"] - before["total_xact_time"]
        assert after["total_query_count"] - before["total_query_count"] == 9
        assert after["total_xact_count"] - before["total_xact_count"] == 6
        assert 100_000 <= query_us <= took * 1e6 - 100_000
        assert xact_us >= query_us + 100_000
        assert xact_us <= took * 1e6
        # A period with this traffic in it shows averages...
        _wait(lambda: stats(admin)["avg_query_count"] > 0, "no period average", 3)
        busy = stats(admin)
        assert busy["avg_query_time"] > 0 and busy["avg_xact_time"] >= busy["avg_query_time"]
        assert busy["avg_recv"] > 0 and busy["avg_sent"] > 0
        # ...and a period without any shows zeros again.
        _wait(lambda: stats(admin)["avg_query_count"] == 0, "averages never went back", 3)
        assert stats(admin)["avg_query_time"] == 0
