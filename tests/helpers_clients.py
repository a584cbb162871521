"""Helpers shared by the client and session-fidelity tests (real drivers through the pooler)."""

from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
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
