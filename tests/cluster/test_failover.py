"""Automatic failover against real clusters, through a pooler (``start_pooler``).

Each test breaks a cluster of its own from ``cluster_factory``: the primary is killed
(``pg_ctl stop -m immediate``) while clients write through the pooler. Outage times are
printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest
from conftest import ClusterFactory, PoolerProcess, StartPooler
from test_monitor import node_pids

from pooler.localcluster import LocalCluster, Node

#: Down within period + 2 * timeout + retry_delay = 1.7 s; the data path's failures
#: make the monitor look sooner.
HEALTH = {"period": 0.5, "timeout": 0.5, "max_retries": 1, "retry_delay": 0.2}
MARKER = 10_000_000


def in_recovery(node: Node) -> bool:
    return node.psql("SELECT pg_is_in_recovery()") == "t"


def ids_on(node: Node) -> set[int]:
    return {int(x) for x in node.psql("SELECT id FROM t", user="app", dbname="app").split()}


def create_table(local: LocalCluster) -> None:
    local.primary.psql("CREATE TABLE t (id int PRIMARY KEY, pad text)", user="app", dbname="app")


async def connect(pooler: PoolerProcess) -> asyncpg.Connection:
    return await asyncpg.connect(
        host=pooler.host, port=pooler.port, user="app", password="app", database="app", timeout=2
    )


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition()`` (run in a thread) holds; fails after ``timeout``."""
    started = time.monotonic()
    while not await asyncio.to_thread(condition):
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


class Writers:
    """Clients inserting unique ids through the pooler and reading each back,
    reconnecting after errors."""

    #: What a writer takes for an error of the moment: it reconnects and goes on.
    tolerated: tuple[type[Exception], ...] = (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    )

    def __init__(self, pooler: PoolerProcess, clients: int) -> None:
        self.pooler = pooler
        self.clients = clients
        self.acked: set[int] = set()
        self.errors: list[str] = []
        #: ids a client's read right after its acknowledged insert did not find
        self.missed: list[int] = []
        #: monotonic time of every acknowledged insert
        self.ack_times: list[float] = []
        self._ids = itertools.count(1)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write()) for _ in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def acks_after(self, moment: float) -> int:
        return sum(1 for t in self.ack_times if t > moment)

    def outage(self, since: float) -> float:
        """The longest time without an acknowledged write, from ``since`` on."""
        times = sorted(t for t in self.ack_times if t >= since)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def _write(self) -> None:
        conn: asyncpg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = await connect(self.pooler)
                value = next(self._ids)
                await conn.execute("INSERT INTO t VALUES ($1)", value, timeout=5)
                self.acked.add(value)
                self.ack_times.append(time.monotonic())
                # A read of its own write: wherever routing sends it, it must find it.
                found = await conn.fetchval(
                    "SELECT count(*) FROM t WHERE id = $1", value, timeout=5
                )
                if found != 1:
                    self.missed.append(value)
            except self.tolerated as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.terminate()
                    conn = None
                await asyncio.sleep(0.05)
        if conn is not None:
            await conn.close()


async def kill_primary_under_load(
    local: LocalCluster,
    pooler: PoolerProcess,
    wait: float,
    kill: Callable[[], object] | None = None,
) -> tuple[Writers, float | None]:
    """Writers until 100 writes are acknowledged, the primary killed (by ``kill``, in a
    thread; default ``pg_ctl stop -m immediate``), writers for ``wait`` more seconds at
    most (1 s after writes succeed again); (writers, the outage: the longest time without
    an acknowledged write, or None when writes never came back)."""
    writers = Writers(pooler, 20)
    writers.start()
    await eventually(lambda: len(writers.acked) >= 100, 10, "writes before the kill")
    killed = time.monotonic()
    await asyncio.to_thread(kill or (lambda: local.stop_node(local.primary, "immediate")))
    # Writes on their way back when the primary stopped may still be acknowledged: back
    # means 20 acknowledged after these.
    settled = time.monotonic() + 0.2
    while time.monotonic() - settled < wait and writers.acks_after(settled) < 20:
        await asyncio.sleep(0.05)
    back = writers.acks_after(settled) >= 20
    if back:
        await asyncio.sleep(1.0)
    await writers.stop()
    return writers, writers.outage(killed - 0.5) if back else None


def log_records(pooler: PoolerProcess) -> list[dict[str, object]]:
    return [json.loads(line) for line in pooler.log_text().splitlines() if line.startswith("{")]


def test_sync_failover_under_load_follow_and_fence(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    local = cluster_factory(synchronous=1)
    old, *standbys = local.nodes
    create_table(local)
    # The check: health checks every second.
    pooler = start_pooler(local, health_check={**HEALTH, "period": 1})

    async def main() -> None:
        writers, outage = await kill_primary_under_load(local, pooler, 15)
        assert outage is not None, f"no write succeeded after the kill: {writers.errors[-3:]}"
        print(f"\nsync failover (ANY 1 of 2), 20 writers: writes back after {outage:.2f} s")
        assert outage < 10
        assert not writers.missed, f"reads that missed their own write: {writers.missed[:5]}"
        new = next(node for node in standbys if not in_recovery(node))
        other = next(node for node in standbys if node is not new)
        lost = writers.acked - ids_on(new)
        assert not lost, f"{len(lost)} acknowledged inserts missing on the new primary"

        # The remaining standby follows the new primary.
        conn = await connect(pooler)
        await conn.execute("INSERT INTO t VALUES ($1)", MARKER)
        took = await eventually(lambda: MARKER in ids_on(other), 10, "write seen on the standby")
        print(f"the other standby has a write through the pooler after {took:.2f} s")

        # The old primary comes back as a primary: fenced, gets no query.
        await asyncio.to_thread(local.start_node, old)
        await eventually(lambda: "fenced" in pooler.log_text(), 10, "old primary fenced")
        for value in range(MARKER + 1, MARKER + 21):
            await conn.execute("INSERT INTO t VALUES ($1)", value)
            await conn.fetchval("SELECT count(*) FROM t")
        await conn.close()
        sessions = old.psql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
        assert sessions == "0"
        assert not ids_on(old) & set(range(MARKER, MARKER + 21))
        assert not in_recovery(old), "the old primary really claims to be one"

    asyncio.run(main())


def test_hung_primary_fails_over_once_its_standbys_give_up_on_it(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    # A primary that hangs keeps its connections open: its standbys still stream from
    # it (no promotion: it may be alive) until their wal_receiver_timeout.
    local = cluster_factory(synchronous=1, settings={"wal_receiver_timeout": "2s"})
    old, *standbys = local.nodes
    create_table(local)
    pooler = start_pooler(local, health_check=HEALTH)
    frozen: list[int] = []

    def freeze() -> None:
        # Every process, the pooler's backends too (forked after the test began).
        frozen.extend(node_pids(old))
        signal_all(frozen, signal.SIGSTOP)

    async def main() -> None:
        try:
            writers, outage = await kill_primary_under_load(local, pooler, 20, freeze)
        finally:
            signal_all(frozen, signal.SIGCONT)
        assert outage is not None, f"no write succeeded after the hang: {writers.errors[-3:]}"
        print(f"\nhung primary (wal_receiver_timeout 2 s): writes back after {outage:.2f} s")
        assert "still stream from the old primary" in pooler.log_text()
        new = next(node for node in standbys if not in_recovery(node))
        assert not writers.acked - ids_on(new)
        # Resumed, it still claims to be the primary: fenced.
        await eventually(lambda: "fenced" in pooler.log_text(), 10, "old primary fenced")

    asyncio.run(main())


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@pytest.mark.parametrize("case", ["lagging", "auto_promote_off"])
def test_no_promotion_writes_fail_reads_go_on(
    cluster_factory: ClusterFactory, start_pooler: StartPooler, case: str
) -> None:
    local = cluster_factory()
    create_table(local)
    failover = {"max_lag_bytes": "64kB"} if case == "lagging" else {"auto_promote": False}
    pooler = start_pooler(local, health_check=HEALTH, failover=failover)

    async def main() -> None:
        reader = await connect(pooler)
        if case == "lagging":
            for standby in local.standbys:
                await asyncio.to_thread(
                    standby.psql,
                    "ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf()",
                )
            # 200 kB of WAL the standbys never get; the monitor sees the position.
            writer = await connect(pooler)
            await writer.execute(
                "INSERT INTO t SELECT g, repeat('x', 1000) FROM generate_series(1, 200) g"
            )
            await writer.close()
            await asyncio.sleep(1.5)
        # (A promotion would come within 2 s: down after about 1.7 s of failed checks.)
        writers, outage = await kill_primary_under_load(local, pooler, 4)
        assert outage is None, "a write succeeded with no primary"
        assert any("no primary is available" in error for error in writers.errors), set(
            writers.errors
        )
        # (The simple protocol: a read that asyncpg prepares first is sent to the primary.)
        assert await reader.execute("SELECT count(*) FROM t") == "SELECT 1"
        await reader.close()
        assert all(in_recovery(node) for node in local.standbys)
        # Logged once per change of the reason (a standby slow to answer is one), not
        # once per period (a dozen in these seconds).
        refusals = [str(r) for r in log_records(pooler) if "no standby is promoted" in str(r)]
        expected = "max_lag_bytes (65536)" if case == "lagging" else "auto_promote is false"
        assert any(expected in r for r in refusals) and len(refusals) <= 3, refusals

    asyncio.run(main())


def test_failover_command_runs_with_pgpool_placeholders(
    cluster_factory: ClusterFactory, start_pooler: StartPooler, tmp_path: Path
) -> None:
    local = cluster_factory()
    create_table(local)
    assert local.nodes[0].bindir is not None
    argv_file = tmp_path / "argv"
    script = tmp_path / "failover.sh"
    # As pgpool-II's failover.sh.sample: promote the new main node when the primary
    # failed, nothing when a standby did. One line per run, its arguments joined by |.
    script.write_text(
        "#!/bin/sh\n"
        f"(IFS='|'; echo \"$*\") >> {argv_file}\n"
        '[ "$1" = "$8" ] || exit 0\n'
        f'PGPASSWORD=postgres {local.nodes[0].bindir}/psql -X -q -h "$6" -p "$9" -U postgres'
        " -d postgres -c 'SELECT pg_promote()'\n"
    )
    os.chmod(script, 0o755)
    command = f"{script} %d %h %p %D %m %H %M %P %r %R %N %S"
    pooler = start_pooler(local, health_check=HEALTH, failover={"command": command})

    async def main() -> None:
        writers, outage = await kill_primary_under_load(local, pooler, 15)
        assert outage is not None, f"no write succeeded after the kill: {writers.errors[-3:]}"
        print(f"\nfailover.command, 12 writers: writes back after {outage:.2f} s")
        old = local.primary
        new_id = next(i for i, node in enumerate(local.nodes) if i and not in_recovery(node))
        new = local.nodes[new_id]
        runs = [line.split("|") for line in argv_file.read_text().splitlines()]
        at = (old.host, str(old.port))
        assert runs == [["0", *at, "", str(new_id), new.host, "0", "0", str(new.port), "", *at]]

        # A standby that goes down runs it too (pgpool-II's rule); the script skips it.
        other_id = 3 - new_id
        other = local.nodes[other_id]
        await asyncio.to_thread(local.stop_node, other, "immediate")
        await eventually(lambda: len(argv_file.read_text().splitlines()) == 2, 10, "second run")
        runs = [line.split("|") for line in argv_file.read_text().splitlines()]
        main, port = str(new_id), str(new.port)
        down = [str(other_id), other.host, str(other.port), ""]
        assert runs[1] == [*down, main, new.host, main, main, port, "", new.host, port]

    asyncio.run(main())


def test_a_standby_ahead_of_the_new_primary_is_reported_not_rewound(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    local = cluster_factory()
    primary, sync, ahead = local.nodes
    # standby1 is the synchronous standby; standby2 is asynchronous and may be ahead.
    primary.psql("ALTER SYSTEM SET synchronous_standby_names = 'standby1'")
    primary.psql("SELECT pg_reload_conf()")
    create_table(local)
    pooler = start_pooler(
        local, health_check=HEALTH, failover={"follow_timeout": 3, "max_lag_bytes": 0}
    )

    async def main() -> None:
        sync.psql("ALTER SYSTEM SET primary_conninfo = ''")
        sync.psql("SELECT pg_reload_conf()")
        # Never acknowledged (standby1 does not receive it), but streamed to standby2.
        direct = await asyncpg.connect(primary.dsn(dbname="app"))
        hanging = asyncio.create_task(direct.execute("INSERT INTO t VALUES (1)"))

        def lsn(node: Node) -> int:
            return int(node.psql("SELECT pg_last_wal_receive_lsn() - '0/0'"))

        await eventually(lambda: lsn(ahead) > lsn(sync), 10, "standby2 ahead of standby1")
        await asyncio.to_thread(local.stop_node, primary, "immediate")
        hanging.cancel()
        direct.terminate()
        # standby1 has every acknowledged commit: it is promoted, though standby2 has more.
        await eventually(lambda: not in_recovery(sync), 10, "standby1 promoted")
        await eventually(lambda: "need pg_rewind" in pooler.log_text(), 10, "standby2 reported")
        assert in_recovery(ahead), "standby2 is left as it is"
        conn = await connect(pooler)
        await conn.execute("INSERT INTO t VALUES ($1)", MARKER)
        await conn.close()
        assert ids_on(sync) == {MARKER}

    asyncio.run(main())


def test_switchover_under_load_loses_nothing_and_no_client_sees_an_error(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    """PROMOTE NODE while 20 clients insert and read back through the pooler: they
    only wait (new requests are held, running ones finish), every acknowledged insert is
    on the new primary, and none of them gets an error."""
    local = cluster_factory(synchronous=1)
    create_table(local)
    pooler = start_pooler(local, health_check=HEALTH)

    async def main() -> None:
        writers = Writers(pooler, 20)
        writers.start()
        await eventually(lambda: len(writers.acked) >= 100, 10, "writes before the switchover")
        began = time.monotonic()
        admin = await asyncpg.connect(
            host=pooler.host,
            port=pooler.port,
            user="postgres",
            password=local.users["postgres"],
            database="pooler",
        )
        try:
            await admin.execute("PROMOTE NODE 1", timeout=40)
        finally:
            await admin.close()
        done = time.monotonic()
        await eventually(lambda: writers.acks_after(done) >= 100, 10, "writes after it")
        await writers.stop()
        wait = writers.outage(began - 0.5)
        print(
            f"\nswitchover (PROMOTE NODE) under 20 clients: took {done - began:.2f} s,"
            f" longest wait for a write {wait:.2f} s"
        )
        assert not writers.errors, writers.errors[:5]
        assert not writers.missed, writers.missed[:5]
        lost = writers.acked - ids_on(local.nodes[1])
        assert not lost, f"{len(lost)} acknowledged inserts missing on the new primary"

    asyncio.run(main())
