"""Session settings follow a client from server to server (transaction pooling).

Each test runs the same statements on a direct connection to the primary and through
the pooler, with another client churning the pool's two servers (leaving settings of
its own on them) between steps, and compares what the client sees: the values of its
settings, the errors it gets, and the ParameterStatus values it was told.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import direct_dsn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pooler.localcluster import LocalCluster

# A custom parameter another client set on a server exists there from then on (as ''
# where this client never set it, where a fresh session says NULL): no RESET undoes
# that, on any pooler, so the two are not told apart here.
OBSERVE = (
    "SELECT current_setting('work_mem'), coalesce(current_setting('a.x', true), ''), "
    "current_setting('TimeZone'), current_setting('search_path')"
)
#: What a client may send; ``{n}`` becomes a number of the step's own.
STEPS = [
    "SET work_mem = '{n}MB'",
    "RESET work_mem",
    "SET a.x = 'v{n}'",
    "RESET a.x",
    "SELECT set_config('a.x', 'f{n}', false)",
    "SET LOCAL work_mem = '{n}MB'",
    "SET search_path TO s{n}, public",
    "SET TimeZone = 'Etc/GMT+{n}'",
    "SET application_name = 'app{n}'",
    "RESET ALL",
    "BEGIN",
    "BEGIN READ ONLY",
    "SELECT 1",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1/0",
    "SAVEPOINT s",
    "ROLLBACK TO SAVEPOINT s",
    "SET a.x = 'm{n}'; SELECT 1/0",
    "BEGIN; SET a.x = 't{n}'; COMMIT",
    "BEGIN; SET work_mem = '{n}MB'; ROLLBACK",
    "SET a.x = 'p{n}'; SET work_mem = '{n}MB'",
    "COMMIT AND CHAIN",
    "DISCARD ALL",
]
#: What the churning client leaves on the servers it uses.
CHURN = (
    "SET work_mem = '77MB'; SET a.x = 'churn'; SET TimeZone = 'Asia/Tokyo'; "
    "SET search_path TO churn; SET application_name = 'churn'"
)


@pytest.fixture
def two_servers(start_pooler: StartPooler) -> PoolerProcess:
    """Transaction pooling on two servers per node, reads spread over the standbys: a
    client's next transaction often lands on a server another client changed."""
    return start_pooler(pool={"mode": "transaction", "size": 2})


class _Churn:
    """Another client, using the pool's servers (and leaving its settings on them) while
    the client under test is between transactions."""

    def __init__(self, dsn: str) -> None:
        self.conns = [psycopg.connect(dsn, autocommit=True) for _ in range(2)]
        for conn in self.conns:
            psycopg.ClientCursor(conn).execute(CHURN)

    def run(self) -> None:
        for conn in self.conns:
            conn.execute("SELECT current_setting('a.x')")
            conn.execute("SELECT 1")

    def close(self) -> None:
        for conn in self.conns:
            conn.close()


def _see(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
    try:
        row = conn.execute(OBSERVE).fetchone()
    except psycopg.Error as exc:
        row = (exc.sqlstate,)
    return (
        row,
        conn.info.transaction_status.name,
        conn.info.parameter_status("TimeZone"),
        conn.info.parameter_status("application_name"),
    )


def _run(dsn: str, script: list[tuple[str, bool]], churn: _Churn | None) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql, simple in script:
            cursor = psycopg.ClientCursor(conn) if simple else conn.cursor()
            try:
                cursor.execute(sql)
                outcome: str | None = None
            except psycopg.Error as exc:
                outcome = exc.sqlstate
            if churn is not None and conn.info.transaction_status.name == "IDLE":
                churn.run()
            seen.append((sql, outcome, *_see(conn)))
            if churn is not None and conn.info.transaction_status.name == "IDLE":
                churn.run()
    return seen


def _compare(cluster: LocalCluster, pooler: PoolerProcess, script: list[tuple[str, bool]]) -> None:
    direct = _run(direct_dsn(cluster), script, None)
    churn = _Churn(pooler.dsn())
    try:
        pooled = _run(pooler.dsn(), script, churn)
    finally:
        churn.close()
    for step, (want, got) in enumerate(zip(direct, pooled, strict=True)):
        assert got == want, f"step {step}: {script[: step + 1]}"


@pytest.mark.parametrize(
    "steps",
    [
        # Committed, rolled back, local, failed with the statement that set it.
        ["SET a.x = 'v1'", "BEGIN", "SET a.x = 'v2'", "ROLLBACK", "SET LOCAL a.x = 'l'"],
        ["BEGIN", "SET work_mem = '5MB'", "COMMIT", "SET a.x = 'm'; SELECT 1/0"],
        ["BEGIN", "SET a.x = 'e'", "SELECT 1/0", "COMMIT", "RESET ALL"],
        ["SET TimeZone = 'Etc/GMT+3'", "BEGIN", "SET TimeZone = 'UTC'", "ROLLBACK"],
        ["SELECT set_config('a.x', 'f', false)", "SET search_path TO s1, public", "DISCARD ALL"],
        ["BEGIN", "SAVEPOINT s", "SET a.x = 's'", "ROLLBACK TO SAVEPOINT s", "COMMIT"],
        ["SET a.x = 'c'", "BEGIN", "SET work_mem = '6MB'", "COMMIT AND CHAIN", "ROLLBACK"],
        # DISCARD ALL fails in a transaction block and drops nothing (psycopg has
        # prepared the observing query by then: it must still exist).
        ["SET work_mem = '1MB'"] * 5 + ["BEGIN", "DISCARD ALL", "ROLLBACK", "SET a.x = 'z'"],
        # BEGIN inside a transaction only warns: the earlier SET commits with it.
        ["BEGIN", "SET work_mem = '1MB'", "BEGIN; SET a.x = 't1'; COMMIT"],
        # A read-only transaction runs on a standby: what it sets follows the client.
        ["BEGIN READ ONLY", "SELECT 1", "SET a.x = 'ro'", "SET TimeZone = 'UTC'", "COMMIT"],
    ],
)
def test_settings_follow_the_client_as_on_postgres(
    cluster: LocalCluster, two_servers: PoolerProcess, steps: list[str]
) -> None:
    _compare(cluster, two_servers, [(sql, ";" in sql) for sql in steps])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    script=st.lists(
        st.tuples(st.integers(0, len(STEPS) - 1), st.integers(1, 9), st.booleans()),
        min_size=2,
        max_size=10,
    )
)
def test_generated_sessions_see_their_settings_as_on_postgres(
    cluster: LocalCluster, two_servers: PoolerProcess, script: list[tuple[int, int, bool]]
) -> None:
    steps = [(STEPS[i].format(n=n), simple or ";" in STEPS[i]) for i, n, simple in script]
    _compare(cluster, two_servers, steps)


def test_many_clients_keep_their_own_settings_on_few_servers(
    start_pooler: StartPooler,
) -> None:
    """Eight clients on five servers, each with settings of its own changed as it goes,
    1,000 transactions in all: every SHOW answers the client's own value, and none is
    pinned (eight pinned clients would wait for five servers past the checkout
    timeout)."""
    pooler = start_pooler(
        pool={"mode": "transaction", "size": 5, "checkout_timeout": 2},
        load_balance={"enabled": False},
    )
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
                for i in range(125):
                    if i % 30 == 0:
                        version = f"c{n}r{i}"
                        conn.execute(f"SET a.x = '{version}'")
                        conn.execute(f"SET search_path TO s{n}, public")
                        conn.execute(f"SET TimeZone = 'Etc/GMT+{n}'")
                    row = conn.execute(
                        "SELECT current_setting('a.x'), current_setting('search_path'), "
                        "current_setting('TimeZone')"
                    ).fetchone()
                    assert row == (version, f"s{n}, public", f"Etc/GMT+{n}"), (n, i, row)
                    assert conn.info.parameter_status("TimeZone") == f"Etc/GMT+{n}"
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[0]


@pytest.fixture
def untracked_conn(two_servers: PoolerProcess) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(two_servers.dsn(), autocommit=True) as conn:
        yield conn


def test_a_setting_the_text_cannot_show_keeps_its_server(
    untracked_conn: psycopg.Connection[Any], two_servers: PoolerProcess
) -> None:
    """set_config with a computed value: the client stays where the setting is."""
    conn = untracked_conn
    conn.execute("SELECT set_config('a.x', md5('k'), false)")
    churn = _Churn(two_servers.dsn())
    try:
        for _ in range(5):
            churn.run()
            row = conn.execute("SELECT current_setting('a.x')").fetchone()
            assert row is not None and row[0] == "8ce4b16b22b58894aa86c421e8759df3"
    finally:
        churn.close()
