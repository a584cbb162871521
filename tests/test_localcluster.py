"""The local cluster the other tests stand on: replication, roles and authentication."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest
from conftest import ClusterFactory

from pooler.localcluster import (
    ClusterError,
    LocalCluster,
    Node,
    PortInUseError,
    find_free_ports,
    port_is_free,
)


def test_both_standbys_stream_from_the_primary(cluster: LocalCluster) -> None:
    # Over TCP, so replication goes through SCRAM like any other login.
    rows = cluster.primary.psql(
        "SELECT application_name, state, client_addr FROM pg_stat_replication"
        " ORDER BY application_name"
    )
    assert rows.splitlines() == ["standby1|streaming|127.0.0.1", "standby2|streaming|127.0.0.1"]
    slots = cluster.primary.psql("SELECT slot_name, active FROM pg_replication_slots ORDER BY 1")
    assert slots.splitlines() == ["standby1|t", "standby2|t"]


def test_standbys_are_in_recovery_and_the_primary_is_not(cluster: LocalCluster) -> None:
    assert cluster.primary.psql("SELECT pg_is_in_recovery()") == "f"
    for node in cluster.standbys:
        assert node.psql("SELECT pg_is_in_recovery()") == "t", node.name


def test_a_write_on_the_primary_reaches_every_standby(cluster: LocalCluster) -> None:
    table = f"replicated_{uuid.uuid4().hex[:8]}"
    cluster.primary.psql(f"CREATE TABLE {table} (v text); INSERT INTO {table} VALUES ('x')")
    try:
        for node in cluster.standbys:
            deadline = time.monotonic() + 10
            while node.psql(f"SELECT to_regclass('{table}') IS NOT NULL") != "t":
                assert time.monotonic() < deadline, f"{table} never reached {node.name}"
                time.sleep(0.02)
            assert node.psql(f"SELECT v FROM {table}") == "x"
    finally:
        cluster.primary.psql(f"DROP TABLE {table}")


@pytest.mark.parametrize(
    ("user", "password", "dbname"), [("app", "app", "app"), ("postgres", "postgres", "postgres")]
)
def test_users_log_in_over_tcp_with_scram(
    cluster: LocalCluster, user: str, password: str, dbname: str
) -> None:
    for node in cluster.nodes:
        with psycopg.connect(node.dsn(user, password, dbname), connect_timeout=5) as conn:
            row = conn.execute("SELECT current_user, current_database()").fetchone()
            assert row == (user, dbname)
    secret = cluster.primary.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
    assert secret.startswith("SCRAM-SHA-256$")


def test_the_app_database_belongs_to_app(cluster: LocalCluster) -> None:
    owner = cluster.primary.psql(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'"
    )
    assert owner == "app"


@pytest.mark.parametrize(
    ("user", "settings"),
    [("app", {}), ("postgres", {}), ("nobody", {}), ("postgres", {"replication": "true"})],
)
def test_a_wrong_password_over_tcp_gets_28p01(
    cluster: LocalCluster, user: str, settings: dict[str, str]
) -> None:
    # asyncpg, not psycopg: libpq hides the SQLSTATE of a failed connection attempt.
    async def connect() -> None:
        conn = await asyncpg.connect(
            cluster.primary.dsn(user, "wrong"), timeout=5, server_settings=settings
        )
        await conn.close()

    with pytest.raises(asyncpg.PostgresError) as caught:
        asyncio.run(connect())
    assert caught.value.sqlstate == "28P01"


def test_node_dsn_quotes_what_a_uri_cannot_hold() -> None:
    node = Node("n", 5432, Path("/d"), Path("/s"))
    assert (
        node.dsn("a@b", "p:w/d?", "d b") == "postgresql://a%40b:p%3Aw%2Fd%3F@127.0.0.1:5432/d%20b"
    )


def test_free_ports_are_free_and_consecutive_when_asked() -> None:
    ports = find_free_ports(3, consecutive=True)
    assert ports == [ports[0], ports[0] + 1, ports[0] + 2]
    assert all(port_is_free(p) for p in ports)


def test_a_fixed_port_in_use_is_refused_before_anything_is_created(server_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = [p for p in find_free_ports(3) if p != port][:2]
        with pytest.raises(PortInUseError, match=f"port {port}"):
            LocalCluster(server_dir / "c", ports=[port, *others]).start()
    assert not (server_dir / "c").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the servers as another user")
def test_a_directory_the_server_user_cannot_reach_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    with pytest.raises(ClusterError, match="cannot reach"):
        LocalCluster(tmp_path / "c").start()


def test_a_cluster_restarts_reuses_its_directory_and_refuses_after_a_failover(
    cluster_factory: ClusterFactory,
) -> None:
    steps: list[str] = []
    local = cluster_factory(standbys=1, progress=steps.append)
    local.stop()
    assert not any(node.is_running() for node in local.nodes)
    local.stop()  # idempotent

    steps.clear()
    local.start()
    assert any("reusing" in step for step in steps)
    assert not any("initdb" in step or "base backup" in step for step in steps)
    assert local.primary.psql("SELECT count(*) FROM pg_stat_replication") == "1"

    standby = local.standbys[0]
    local.promote(standby)
    assert standby.psql("SELECT pg_is_in_recovery()") == "f"
    local.stop()
    with pytest.raises(ClusterError, match="standby1 was promoted"):
        LocalCluster(local.base_dir, standbys=1).start()

    local.destroy()
    assert not local.base_dir.exists()
