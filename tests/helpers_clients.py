"""Helpers shared by the client and session-fidelity tests (real drivers through the pooler)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.pq.abc import PGresult

from pooler.localcluster import LocalCluster


def unique_name(prefix: str) -> str:
    """A table (or channel, or statement) name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def direct_dsn(
    cluster: LocalCluster, user: str = "app", password: str = "app", dbname: str = "app"
) -> str:
    """A libpq keyword DSN to the primary itself over TCP, in the pooler's ``dsn`` form."""
    node = cluster.primary
    return f"host={node.host} port={node.port} user={user} password={password} dbname={dbname}"


def superuser_dsn(cluster: LocalCluster, dbname: str = "app") -> str:
    """The primary, as ``postgres``: for looking at pg_stat_activity and friends."""
    return direct_dsn(cluster, "postgres", "postgres", dbname)


def app_backend_pids(cluster: LocalCluster) -> set[int]:
    """The pids of the primary's backends serving user ``app`` (the pooler's servers in
    the tests that use that user), other than the one asking."""
    with psycopg.connect(superuser_dsn(cluster), autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = 'app'"
            " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).fetchall()
    return {row[0] for row in rows}


@contextlib.contextmanager
def scratch_table(cluster: LocalCluster, columns: str, prefix: str = "t") -> Iterator[str]:
    """A table owned by ``app`` in database ``app``, created directly on the primary and
    dropped afterwards; yields its (unique) name."""
    name = unique_name(prefix)
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {name} ({columns})")
    try:
        yield name
    finally:
        with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {name}")


def count_rows(cluster: LocalCluster, table: str) -> int:
    """Rows of ``table`` as the primary sees them (committed only)."""
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def vanish(conn: psycopg.Connection[object]) -> None:
    """Cut the connection's socket the way a crashed client's kernel does: FIN, and no
    Terminate message before it. ``conn`` is unusable afterwards (close it)."""
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.close()


def execute_without_sync(conn: psycopg.Connection[Any], sql: str) -> PGresult:
    """Run ``sql`` as Parse/Bind/Describe/Execute and Flush, with no Sync after it (libpq
    pipeline mode, as a pipelining driver does before its sync point); its result.

    PostgreSQL has executed it when this returns, in an implicit transaction that stays
    open (or, after an error, skipping every message until a Sync).
    """
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    pgconn.send_query_params(sql.encode(), None)
    pgconn.send_flush_request()
    while pgconn.flush():
        time.sleep(0.01)
    result = pgconn.get_result()
    assert result is not None
    return result


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` every 20 ms until true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.02)


def backend_alive(cluster: LocalCluster, pid: int) -> bool:
    """Whether backend ``pid`` still shows in the primary's pg_stat_activity."""
    with psycopg.connect(superuser_dsn(cluster), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    assert row is not None
    return bool(row[0])


PGJDBC_JAR = Path("/root/.m2/repository/org/postgresql/postgresql/42.7.13/postgresql-42.7.13.jar")
JDBC_SOURCE = Path(__file__).parent / "jdbc" / "PoolerClient.java"
#: What tests/jdbc/PoolerClient.java prints when every step went as on PostgreSQL.
JDBC_EXPECTED = {
    "server_statements": "1",
    "prepared_sum": str(sum(i * 2 for i in range(1, 13))),
    "server_prepare": "true",
    "fetch_rows": "1000",
    "fetch_sum": "500500",
    "open_portals": "1",
    "batch_updated": "500",
    "batch_count": "500",
    "batch_sum": "125250",
    "done": "true",
}


def run_jdbc(url: str, table: str, workdir: Path, timeout: float = 60.0) -> dict[str, str]:
    """Compile and run tests/jdbc/PoolerClient.java against ``url`` (user app) with
    ``table``; what it printed, as key -> value."""
    classes = workdir / "classes"
    classes.mkdir(exist_ok=True)
    compiled = subprocess.run(
        ["javac", "-d", str(classes), "-cp", str(PGJDBC_JAR), str(JDBC_SOURCE)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert compiled.returncode == 0, compiled.stderr
    done = subprocess.run(
        [
            "java",
            "-cp",
            f"{classes}{os.pathsep}{PGJDBC_JAR}",
            "PoolerClient",
            url,
            "app",
            "app",
            table,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in done.stdout.split())


def run_threads(client: Callable[[int], None], count: int, timeout: float = 120.0) -> None:
    """``client(n)`` for n in range(count), each in a thread of its own; re-raise the first
    failure."""
    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            client(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors, errors[0]
