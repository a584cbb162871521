"""A read waiting on a standby that hangs (all its processes stopped) runs on the primary
once the monitor counts the node down, instead of waiting for it forever."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import psycopg
from conftest import ClusterFactory, StartPooler
from test_monitor import node_pids

SQL = "/* pooler: standby */ SELECT inet_server_port()"
CHECKS = {"period": 0.3, "timeout": 0.5, "max_retries": 1, "retry_delay": 0.2}
# period + (max_retries + 1) * timeout + max_retries * retry_delay
BOUND = 0.3 + 2 * 0.5 + 0.2


def test_a_read_on_a_hung_standby_runs_on_the_primary(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    cluster = cluster_factory(standbys=1)
    standby = cluster.standbys[0]
    pooler = start_pooler(cluster, health_check=CHECKS, load_balance={"read_your_writes": False})
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute(SQL).fetchone() == (standby.port,)
        pids = node_pids(standby)

        def resume() -> None:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        # Should the read wait for the standby, the standby wakes up to answer it.
        watchdog = threading.Timer(BOUND + 5, resume)
        watchdog.start()
        try:
            started = time.monotonic()
            row = conn.execute(SQL).fetchone()
            took = time.monotonic() - started
        finally:
            watchdog.cancel()
            resume()
    assert row == (cluster.primary.port,)
    assert took < BOUND + 1.0, f"the read waited {took:.2f} s (bound {BOUND:.1f} s)"
