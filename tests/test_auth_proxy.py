"""Authentication through the pooler: methods, stored SCRAM secrets, backend logins."""

from __future__ import annotations

import socket
import time
from typing import Any

import psycopg
import pytest

from pooler.localcluster import LocalCluster
from pooler.protocol.scram import ScramSecret

FAILED = 'password authentication failed for user "{}"'


def _authid(cluster: LocalCluster, role: str) -> str:
    with psycopg.connect(cluster.primary.dsn()) as conn:
        row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role])
        secret = row.fetchone()
    assert secret is not None
    return str(secret[0])


def _whoami(dsn: str) -> tuple[str, str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row is not None
    return row[0], row[1]


def test_stored_scram_secret_logs_in_with_keys_recovered_from_the_client(
    cluster: LocalCluster, start_pooler: Any
) -> None:
    """The pooler never sees the password, yet reaches a backend holding the same secret."""
    pooler = start_pooler(users={"app": _authid(cluster, "app"), "postgres": "postgres"})
    assert _whoami(pooler.dsn()) == ("app", "app")
    # A second client takes the pooled server, a third opens another with its own keys.
    with psycopg.connect(pooler.dsn()) as one, psycopg.connect(pooler.dsn()) as two:
        assert one.execute("SELECT 1").fetchone() == (1,)
        assert two.execute("SELECT 2").fetchone() == (2,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pooler.dsn(password="wrong"))


def test_secret_the_backend_does_not_hold_is_a_clear_error_at_connect(
    cluster: LocalCluster, start_pooler: Any
) -> None:
    other = ScramSecret.from_password("app", b"another salt 16b").to_text()
    pooler = start_pooler(users={"app": other, "postgres": "postgres"})
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(pooler.dsn())
    assert "different SCRAM secret" in str(info.value)
    assert "different SCRAM secret" in pooler.log_text()


def test_md5_clients(start_pooler: Any) -> None:
    pooler = start_pooler(auth={"method": "md5"})
    assert _whoami(pooler.dsn()) == ("app", "app")
    with pytest.raises(psycopg.OperationalError, match=FAILED.format("app")):
        psycopg.connect(pooler.dsn(password="wrong"))
    with pytest.raises(psycopg.OperationalError, match=FAILED.format("x")):
        psycopg.connect(pooler.dsn(user="x"))


def test_md5_method_answers_scram_for_a_user_with_a_scram_secret(
    cluster: LocalCluster, start_pooler: Any
) -> None:
    """As PostgreSQL does for md5 in pg_hba.conf when the stored secret is SCRAM."""
    pooler = start_pooler(
        auth={"method": "md5"}, users={"app": _authid(cluster, "app"), "postgres": "postgres"}
    )
    assert _whoami(pooler.dsn()) == ("app", "app")


def test_trust_needs_no_password_but_a_known_user(start_pooler: Any) -> None:
    pooler = start_pooler(auth={"method": "trust"})
    assert _whoami(f"host={pooler.host} port={pooler.port} user=app dbname=app") == (
        "app",
        "app",
    )
    with pytest.raises(psycopg.OperationalError, match='role "nobody" does not exist'):
        psycopg.connect(f"host={pooler.host} port={pooler.port} user=nobody dbname=app")


def test_backend_password_mismatch_is_the_backends_error(start_pooler: Any) -> None:
    """A configured password the backend refuses: the client hears PostgreSQL's FATAL."""
    pooler = start_pooler(users={"app": "not-the-real-one", "postgres": "postgres"})
    with pytest.raises(psycopg.OperationalError, match=FAILED.format("app")):
        psycopg.connect(pooler.dsn(password="not-the-real-one"))


def test_a_client_that_does_not_log_in_in_time_is_dropped(start_pooler: Any) -> None:
    """As PostgreSQL's authentication_timeout; a logged-in client is not affected."""
    pooler = start_pooler(auth={"timeout": 1})
    with (
        psycopg.connect(pooler.dsn()) as logged_in,
        socket.create_connection((pooler.host, pooler.port)) as silent,
    ):
        silent.settimeout(5)
        started = time.monotonic()
        assert silent.recv(1) == b""
        assert 0.5 < time.monotonic() - started < 4
        assert logged_in.execute("SELECT 1").fetchone() == (1,)
