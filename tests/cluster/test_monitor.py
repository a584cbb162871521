"""The monitor against real clusters: roles, lag, nodes that stop, hang, are suspected.

Each test runs the monitor in this process on its own cluster from ``cluster_factory``;
node operations (pg_ctl, psql) run in a thread so the monitor keeps checking meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import ClusterFactory

from pooler.cluster.assess import down_bound
from pooler.cluster.monitor import Monitor
from pooler.cluster.nodes import Cluster, ClusterView, NodeRole, NodeStatus, initial_view
from pooler.config import Backend, HealthCheck
from pooler.localcluster import SUPERUSER, LocalCluster, Node

FAST = HealthCheck(
    user=SUPERUSER, password="postgres", period=0.3, timeout=0.5, max_retries=1, retry_delay=0.2
)
#: Scheduling and pg_ctl beyond the bound itself, on a busy 2-core machine.
SLACK = 0.7

log = logging.getLogger(__name__)


def backends(local: LocalCluster) -> list[Backend]:
    """The nodes over TCP, except the last one over its Unix socket (both paths tried)."""
    *tcp, last = local.nodes
    return [Backend(host=n.host, port=n.port, name=n.name) for n in tcp] + [
        Backend(host=last.host, port=last.port, unix_socket_dir=str(last.socket_dir))
    ]


@contextlib.asynccontextmanager
async def monitoring(
    local: LocalCluster, health: HealthCheck = FAST
) -> AsyncIterator[tuple[Monitor, Cluster]]:
    cluster = Cluster(initial_view(len(local.nodes)))
    monitor = Monitor(backends(local), health, cluster)
    await monitor.start()
    try:
        yield monitor, cluster
    finally:
        await monitor.stop()


async def until(
    cluster: Cluster, condition: Callable[[ClusterView], bool], timeout: float
) -> float:
    """Seconds until the published view meets ``condition``; fails after ``timeout``."""
    started = time.monotonic()
    while not condition(cluster.view):
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout:.1f} s; the view: {cluster.view}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def status_is(node: int, status: NodeStatus) -> Callable[[ClusterView], bool]:
    return lambda view: view.nodes[node].status is status


def node_pids(node: Node) -> list[int]:
    """The postmaster first, then its children."""
    postmaster = node.postmaster_pid()
    assert postmaster is not None
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The command name may hold spaces: the fields after its ")" are fixed.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == postmaster:
                children.append(int(stat.parent.name))
    return [postmaster, *children]


@contextlib.asynccontextmanager
async def frozen(node: Node) -> AsyncIterator[None]:
    """Every process of ``node`` stopped (SIGSTOP): it accepts TCP but never answers."""
    pids = node_pids(node)
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def stopped(local: LocalCluster, node: Node) -> AsyncIterator[None]:
    """``node`` shut down as abruptly as pg_ctl can (immediate), started again after."""
    await asyncio.to_thread(local.stop_node, node, "immediate")
    try:
        yield
    finally:
        await asyncio.to_thread(local.start_node, node)


def test_roles_lag_detach_attach(cluster_factory: ClusterFactory) -> None:
    local = cluster_factory()
    primary, standby, _ = local.nodes

    async def main() -> None:
        async with monitoring(local) as (monitor, cluster):
            view = cluster.view
            assert [s.role for s in view.nodes] == [
                NodeRole.PRIMARY,
                NodeRole.STANDBY,
                NodeRole.STANDBY,
            ]
            assert view.primary == 0 and view.standbys() == [1, 2]
            assert view.nodes[0].timeline == 1 and view.nodes[0].replay_lsn
            assert [r.name for r in view.nodes[0].replicas] == ["standby1", "standby2"]
            assert all(r.state == "streaming" for r in view.nodes[0].replicas)
            for state in view.nodes[1:]:
                assert state.lag_bytes < 1024**2 and state.lag_seconds < 5

            # Replay paused while the primary writes: the standby falls behind.
            await asyncio.to_thread(
                primary.psql, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)"
            )
            await until(cluster, lambda v: v.nodes[1].replay_time is not None, 5)
            await asyncio.to_thread(standby.psql, "SELECT pg_wal_replay_pause()")
            await asyncio.to_thread(primary.psql, "INSERT INTO t SELECT generate_series(1, 20000)")
            await until(
                cluster, lambda v: v.nodes[1].lag_bytes > 100_000 and v.nodes[1].lag_seconds > 0, 5
            )
            assert cluster.view.nodes[1].up, "lag alone takes no node down"
            await asyncio.to_thread(standby.psql, "SELECT pg_wal_replay_resume()")
            await until(
                cluster, lambda v: v.nodes[1].lag_bytes < 1024 and v.nodes[1].lag_seconds == 0, 5
            )

            monitor.detach(1)
            assert cluster.view.nodes[1].status is NodeStatus.DETACHED
            assert cluster.view.standbys() == [2]
            assert (await monitor.check_now(1)).status is NodeStatus.DETACHED
            monitor.attach(1)
            await until(cluster, status_is(1, NodeStatus.UP), 2)
            assert cluster.view.nodes[1].role is NodeRole.STANDBY

    asyncio.run(main())


@pytest.mark.parametrize("failure", ["stopped", "hung"])
def test_failed_standby_is_down_within_the_bound_and_comes_back(
    cluster_factory: ClusterFactory, failure: str
) -> None:
    local = cluster_factory(standbys=1)
    standby = local.standbys[0]
    broken = stopped(local, standby) if failure == "stopped" else frozen(standby)

    async def main() -> None:
        async with monitoring(local) as (_, cluster):
            # start() returns just after the node's first check: it fails at the worst
            # moment, a whole period before its next check.
            started = time.monotonic()
            async with broken:
                await until(cluster, status_is(1, NodeStatus.DOWN), down_bound(FAST) + SLACK)
                log.warning(
                    "%s standby down after %.2f s (bound %.2f s): %s",
                    failure,
                    time.monotonic() - started,
                    down_bound(FAST),
                    cluster.view.nodes[1].reason,
                )
                assert cluster.view.nodes[1].reason
                assert cluster.view.primary == 0
            await until(cluster, status_is(1, NodeStatus.UP), FAST.period + SLACK)
            assert cluster.view.nodes[1].role is NodeRole.STANDBY

    asyncio.run(main())


def test_suspect_and_check_now_check_at_once(cluster_factory: ClusterFactory) -> None:
    local = cluster_factory()
    slow = HealthCheck(
        user=SUPERUSER, password="postgres", period=30, timeout=0.5, max_retries=1, retry_delay=0.2
    )

    async def main() -> None:
        async with monitoring(local, slow) as (monitor, cluster):
            await asyncio.to_thread(local.stop_node, local.nodes[1], "immediate")
            cluster.suspect(1, "connection refused")
            took = await until(cluster, status_is(1, NodeStatus.DOWN), 2)
            log.warning("suspected standby down after %.2f s", took)
            await asyncio.to_thread(local.stop_node, local.nodes[2], "immediate")
            state = await asyncio.wait_for(monitor.check_now(2), 2)
            assert state.status is NodeStatus.DOWN
            assert cluster.view.nodes[2].status is NodeStatus.DOWN

    asyncio.run(main())


def test_promoted_standby_is_a_false_primary(
    cluster_factory: ClusterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    local = cluster_factory(standbys=1)

    async def main() -> None:
        async with monitoring(local) as (_, cluster):
            with caplog.at_level(logging.ERROR, "pooler.cluster"):
                await asyncio.to_thread(local.promote, local.standbys[0])
                await until(cluster, lambda v: v.nodes[1].role is NodeRole.FALSE_PRIMARY, 3)
            assert cluster.view.primary == 0
            assert cluster.view.nodes[1].timeline == 2
            assert "two primaries" in caplog.text

    asyncio.run(main())
