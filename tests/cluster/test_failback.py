"""Nodes coming back after a failover, against real clusters through a pooler.

A standby that was down returns to rotation by itself once it streams from the primary
(``failover.auto_failback``), or only after ATTACH NODE when that is off; one that was
down during a promotion is repointed at the new primary when it answers again;
``failover.switchover_command`` rebuilds the old primary after PROMOTE NODE; and the
sessions of a hung primary are ended before another node is promoted, so that it takes
no write when it resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from conftest import ClusterFactory, PoolerProcess, StartPooler
from test_failover import HEALTH, MARKER, connect, create_table, eventually, ids_on, in_recovery
from test_monitor import node_pids

from pooler.localcluster import _NODE_CONF as NODE_CONF
from pooler.localcluster import SUPERUSER, LocalCluster

STANDBY_READ = "/* pooler: standby */ SELECT inet_server_port()"


def until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` holds; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def admin(pooler: PoolerProcess, local: LocalCluster) -> psycopg.Connection[Any]:
    return psycopg.connect(pooler.dsn(SUPERUSER, local.users[SUPERUSER], "pooler"), autocommit=True)


def statuses(pooler: PoolerProcess, local: LocalCluster) -> list[tuple[str, str]]:
    """(status, role) of each node, from SHOW POOL_NODES."""
    with admin(pooler, local) as conn:
        return [(row[3], row[6]) for row in conn.execute("SHOW POOL_NODES").fetchall()]


def served_by(pooler: PoolerProcess, reads: int = 10) -> set[int]:
    """The ports that answer reads sent to a standby."""
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        return {conn.execute(STANDBY_READ).fetchone()[0] for _ in range(reads)}  # type: ignore[index]


def test_a_standby_restarted_comes_back_by_itself_or_when_attached(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    local = cluster_factory(standbys=1)
    for auto_failback in (True, False):
        pooler = start_pooler(
            local,
            health_check=HEALTH,
            failover={"auto_failback": auto_failback},
            load_balance={"read_your_writes": False},
        )
        restart_standby(local, pooler, auto_failback)
        pooler.stop()


def restart_standby(local: LocalCluster, pooler: PoolerProcess, auto_failback: bool) -> None:
    standby = local.standbys[0]
    assert served_by(pooler) == {standby.port}
    local.stop_node(standby, "immediate")
    until(lambda: statuses(pooler, local)[1][0] == "down", 10, "standby seen down")
    assert served_by(pooler) == {local.primary.port}
    local.start_node(standby)
    restarted = time.monotonic()
    if auto_failback:
        took = until(lambda: statuses(pooler, local)[1] == ("up", "standby"), 5, "back")
        print(f"\nauto_failback: standby back in rotation {took:.2f} s after its restart")
    else:
        until(lambda: "until ATTACH NODE" in pooler.log_text(), 5, "detached when back")
        # Several checks later it is still out.
        while time.monotonic() - restarted < 1.5:
            assert statuses(pooler, local)[1][0] == "down"
            assert served_by(pooler, 3) == {local.primary.port}
        with admin(pooler, local) as conn:
            conn.execute("ATTACH NODE 1")
        until(lambda: statuses(pooler, local)[1] == ("up", "standby"), 5, "attached")
    assert served_by(pooler) == {standby.port}


def test_a_standby_down_during_the_promotion_follows_the_new_primary_when_back(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    local = cluster_factory()
    old, _, late = local.nodes
    create_table(local)
    pooler = start_pooler(local, health_check=HEALTH, load_balance={"read_your_writes": False})
    local.stop_node(late, "fast")
    until(lambda: statuses(pooler, local)[2][0] == "down", 10, "standby seen down")
    local.stop_node(old, "immediate")
    until(lambda: statuses(pooler, local)[1] == ("up", "primary"), 15, "promotion")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (%s)", (MARKER,))
    # It still points at the old primary, which is gone.
    local.start_node(late)
    took = until(lambda: MARKER in ids_on(late), 10, "the write on the late standby")
    print(f"\nlate standby follows the new primary: write seen {took:.2f} s after its start")
    assert in_recovery(late)
    until(lambda: statuses(pooler, local)[2] == ("up", "standby"), 5, "late standby in rotation")
    assert late.port in served_by(pooler, 20)
    assert "standby follows the new primary" in pooler.log_text()


def test_switchover_command_rebuilds_the_old_primary_as_a_standby(
    cluster_factory: ClusterFactory, start_pooler: StartPooler, tmp_path: Path
) -> None:
    # pg_rewind needs wal_log_hints (or data checksums), and the old primary's WAL from
    # the last checkpoint before the histories diverged.
    local = cluster_factory(standbys=1, settings={"wal_log_hints": "on", "wal_keep_size": "64MB"})
    old, new = local.nodes
    create_table(local)
    argv_file = tmp_path / "argv"
    script = tmp_path / "switchover.sh"
    # The old primary went on after the promotion (its shutdown checkpoint, at least):
    # rewound to the new primary's history, then started as its standby (-R).
    password = local.users[SUPERUSER]
    script.write_text(
        "#!/bin/sh\n"
        f"(IFS='|'; echo \"$*\") >> {argv_file}\n"
        "cd /\n"
        'AS=""; [ "$(id -u)" = 0 ] && AS="runuser -u postgres --"\n'
        f"DATA={old.datadir}\n"
        f'SOURCE="host=$6 port=$9 user={SUPERUSER} password={password} dbname=postgres"\n'
        f'$AS {old.bindir}/pg_ctl stop -w -m fast -D "$DATA" || exit 1\n'
        # pg_rewind reads the source's timeline from its pg_control, which a promotion
        # updates at its first checkpoint.
        f'$AS {old.bindir}/psql -X -q "$SOURCE" -c CHECKPOINT || exit 1\n'
        # pg_rewind copies the new primary's files, its port (in the included file) too.
        f'cp "$DATA/{NODE_CONF}" {tmp_path}/node.conf\n'
        f'$AS {old.bindir}/pg_rewind -D "$DATA" -R --source-server="$SOURCE" || exit 1\n'
        f'cat {tmp_path}/node.conf > "$DATA/{NODE_CONF}"\n'
        f'$AS {old.bindir}/pg_ctl start -w -D "$DATA" -l {old.log_path} >/dev/null 2>&1\n'
    )
    os.chmod(script, 0o755)
    command = f"{script} %d %h %p %D %m %H %M %P %r %R %N %S"
    pooler = start_pooler(
        local,
        health_check=HEALTH,
        failover={"switchover_command": command},
        load_balance={"read_your_writes": False},
    )
    with admin(pooler, local) as conn:
        conn.execute("PROMOTE NODE 1")
    runs = until(lambda: argv_file.exists(), 5, "switchover_command run")
    at_old, at_new = (old.host, str(old.port)), (new.host, str(new.port))
    [run] = [line.split("|") for line in argv_file.read_text().splitlines()]
    assert run == ["0", *at_old, "", "1", new.host, "0", "0", at_new[1], "", *at_old]
    took = until(lambda: statuses(pooler, local)[0] == ("up", "standby"), 20, "rebuilt")
    print(f"\nswitchover_command: old primary a standby in rotation after {runs + took:.2f} s")
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (%s)", (MARKER,))
    until(lambda: MARKER in ids_on(old), 5, "the write on the old primary, now a standby")
    assert old.port in served_by(pooler, 20)


def test_sessions_on_a_hung_primary_end_before_a_promotion(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    # Asynchronous replication: a transaction the hung primary commits once it resumes
    # would be acknowledged by a second primary, and lost.
    local = cluster_factory(standbys=1, settings={"wal_receiver_timeout": "2s"})
    old, new = local.nodes
    create_table(local)
    pooler = start_pooler(local, health_check=HEALTH)
    frozen: list[int] = []

    def signal_all(sig: int) -> None:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    async def main() -> None:
        client = await connect(pooler)
        await client.execute("BEGIN")
        await client.execute("INSERT INTO t VALUES (1)")
        frozen.extend(node_pids(old))
        signal_all(signal.SIGSTOP)
        try:
            await eventually(lambda: not in_recovery(new), 15, "promotion")
            await eventually(lambda: "new primary" in pooler.log_text(), 5, "new primary")
        finally:
            signal_all(signal.SIGCONT)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await client.execute("COMMIT", timeout=5)
        client.terminate()
        writer = await connect(pooler)
        await writer.execute("INSERT INTO t VALUES (2)")
        await writer.close()

    asyncio.run(main())
    assert ids_on(new) == {2}
    assert 1 not in ids_on(old), "the resumed old primary committed a write"
    assert not in_recovery(old)
