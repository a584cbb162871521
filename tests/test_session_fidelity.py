"""A client of the pooler sees the session PostgreSQL would give it directly.

Server connections are shared: clients with the same startup parameters take turns on
one backend, so everything one client did to its session must be gone for the next, and
every setting a client sees (SHOW, current_setting, ParameterStatus) must be what a direct
connection with the same startup parameters shows. A client that vanishes mid-transaction
or mid-COPY leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import pytest
from conftest import StartPooler
from helpers_clients import (
    count_rows,
    direct_dsn,
    execute_without_sync,
    scratch_table,
    superuser_dsn,
    unique_name,
    vanish,
    wait_until,
)
from psycopg.conninfo import make_conninfo

from pooler.localcluster import LocalCluster

#: Every parameter PostgreSQL 15 reports with ParameterStatus.
REPORTED = (
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
)


def _connect(
    dsn: str, params: Mapping[str, str] | None = None, connect_timeout: int = 10
) -> psycopg.Connection[Any]:
    """An autocommit connection; ``params`` are more libpq connection keywords."""
    conninfo = make_conninfo(dsn, **dict(params or {}))
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout)


def _backend_pid(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _one(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


# --- one server, taking turns -------------------------------------------------------------


def test_clients_with_equal_startup_parameters_take_turns_on_one_server(
    start_pooler: StartPooler,
) -> None:
    pooler = start_pooler(pool={"size": 1, "mode": "session"})
    pids = []
    for _ in range(3):
        with _connect(pooler.dsn(), {"application_name": "turns"}) as conn:
            pids.append(_backend_pid(conn))
    assert len(set(pids)) == 1, pids
    # A client that arrives while the only server is taken waits for it, then gets it.
    first = _connect(pooler.dsn(), {"application_name": "turns"})
    got: list[int] = []
    errors: list[BaseException] = []

    def second_client() -> None:
        try:
            with _connect(pooler.dsn(), {"application_name": "turns"}) as conn:
                got.append(_backend_pid(conn))
        except BaseException as exc:
            errors.append(exc)

    waiter = threading.Thread(target=second_client)
    waiter.start()
    try:
        waiter.join(0.5)
        assert waiter.is_alive(), "second client got a server while the only one was taken"
        assert _backend_pid(first) == pids[0]
    finally:
        first.close()
    waiter.join(15)
    assert not errors, errors
    assert got == [pids[0]]


# --- startup parameters and what the client is told ---------------------------------------

#: Reported parameters a client may change; SET_ALL changes every one of them.
SETTABLE = (
    "TimeZone",
    "application_name",
    "DateStyle",
    "IntervalStyle",
    "client_encoding",
    "standard_conforming_strings",
)
SET_ALL = [
    "SET TimeZone = 'Europe/Paris'",
    "SET application_name = 'changed'",
    "SET DateStyle = 'German'",
    "SET IntervalStyle = 'iso_8601'",
    "SET client_encoding = 'LATIN1'",
    "SET standard_conforming_strings = off",
]
#: Ways back to the startup values; each runs right after SET_ALL.
RESETS: list[tuple[str, list[str]]] = [
    ("reset each", [f"RESET {name}" for name in SETTABLE]),
    ("reset all", ["RESET ALL"]),
    ("set time zone local", ["SET TIME ZONE LOCAL"]),
    ("to default", [f"SET {name} TO DEFAULT" for name in SETTABLE]),
    ("discard all", ["DISCARD ALL"]),
    ("reset all in a DO block", ["DO $$BEGIN EXECUTE 'RESET ALL'; END$$"]),
]
STEPS: list[tuple[str, list[str]]] = [
    ("connected", []),
    ("set", SET_ALL),
    *((f"set, then {label}", SET_ALL + reset) for label, reset in RESETS),
    ("set in one string, then reset all", ["; ".join([*SET_ALL, "RESET ALL"])]),
    ("reset all, then set in one string", ["; ".join(["RESET ALL", *SET_ALL])]),
    ("set in a transaction rolled back", ["RESET ALL", "BEGIN", *SET_ALL, "ROLLBACK"]),
    ("set local", ["BEGIN", "SET LOCAL TimeZone = 'Asia/Kolkata'", "COMMIT"]),
    ("end", ["RESET ALL"]),
]


def _observe(conn: psycopg.Connection[Any]) -> dict[str, str | None]:
    """The settings as SHOW, current_setting and the reported ParameterStatus give them."""
    seen: dict[str, str | None] = {}
    for name in SETTABLE:
        seen[f"SHOW {name}"] = _one(conn, f"SHOW {name}")
        seen[f"current_setting({name})"] = _one(conn, "SELECT current_setting(%s)", [name])
        seen[f"ParameterStatus {name}"] = conn.info.parameter_status(name)
    return seen


def _run_steps(dsn: str, kwargs: dict[str, str]) -> list[tuple[str, dict[str, str | None]]]:
    trail = []
    with _connect(dsn, kwargs) as conn:
        reported = {name: conn.info.parameter_status(name) for name in REPORTED}
        reported.pop("server_version")  # the pooler may say which it is; not compared
        trail.append(("all reported at login", dict(reported)))
        for label, statements in STEPS:
            for sql in statements:
                conn.execute(sql)
            trail.append((label, _observe(conn)))
    return trail


TOKYO = {"options": "-c TimeZone=Asia/Tokyo", "application_name": "alpha"}
SYDNEY = {"options": "-c TimeZone=Australia/Sydney -c DateStyle=SQL,DMY"}
NOTHING: dict[str, str] = {}


@pytest.mark.parametrize(
    ("before", "this", "pgtz"),
    [
        pytest.param(SYDNEY, TOKYO, None, id="options-timezone-and-application-name"),
        pytest.param(TOKYO, NOTHING, None, id="no-timezone-after-one-with-timezone"),
        pytest.param(
            TOKYO, {"application_name": "beta"}, "America/New_York", id="pgtz-after-options"
        ),
        pytest.param(NOTHING, NOTHING, "America/New_York", id="pgtz-after-no-timezone"),
        pytest.param(TOKYO, TOKYO, None, id="same-parameters-reused-server"),
        pytest.param(NOTHING, NOTHING, None, id="no-parameters-reused-server"),
    ],
)
def test_settings_and_parameter_status_match_a_direct_connection(
    cluster: LocalCluster,
    start_pooler: StartPooler,
    monkeypatch: pytest.MonkeyPatch,
    before: dict[str, str],
    this: dict[str, str],
    pgtz: str | None,
) -> None:
    pooler = start_pooler(pool={"size": 1})
    # The client before, on the only server connection of the pool, changes everything.
    with _connect(pooler.dsn(), before) as conn:
        for sql in SET_ALL:
            conn.execute(sql)
        before_pid = _backend_pid(conn)
    if pgtz is not None:
        # libpq sends PGTZ as the startup parameter "timezone".
        monkeypatch.setenv("PGTZ", pgtz)
    expected = _run_steps(direct_dsn(cluster), this)
    got = _run_steps(pooler.dsn(), this)
    assert got == expected
    if before == this and pgtz is None:
        with _connect(pooler.dsn(), this) as conn:
            assert _backend_pid(conn) == before_pid


def test_session_authorization_is_reported_back_after_reuse(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler(pool={"size": 1})
    admin = pooler.dsn("postgres", "postgres", "postgres")
    with _connect(admin) as conn:
        pid = _backend_pid(conn)
        conn.execute("SET SESSION AUTHORIZATION app")
        assert conn.info.parameter_status("session_authorization") == "app"
        assert conn.info.parameter_status("is_superuser") == "off"
    with _connect(admin) as conn:
        assert _backend_pid(conn) == pid
        got = {name: conn.info.parameter_status(name) for name in REPORTED}
        got["current_user"] = _one(conn, "SELECT current_user")
    with _connect(superuser_dsn(cluster, "postgres")) as conn:
        expected = {name: conn.info.parameter_status(name) for name in REPORTED}
        expected["current_user"] = _one(conn, "SELECT current_user")
    got.pop("server_version")
    expected.pop("server_version")
    assert got == expected
    assert got["session_authorization"] == "postgres"
    assert got["is_superuser"] == "on"


# --- nothing left behind ------------------------------------------------------------------


def _session_state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What one session may leave to the next on the same backend."""
    state: dict[str, Any] = {}
    for name in ("search_path", "work_mem", "statement_timeout", "role", "TimeZone"):
        state[name] = _one(conn, "SELECT current_setting(%s)", [name])
    state["custom GUC"] = _one(conn, "SELECT coalesce(current_setting('fidelity.x', true), '')")
    state["users"] = conn.execute("SELECT current_user, session_user").fetchone()
    state["prepared"] = _one(conn, "SELECT count(*) FROM pg_prepared_statements")
    state["cursors"] = _one(conn, "SELECT count(*) FROM pg_cursors")
    state["listening"] = _one(conn, "SELECT count(*) FROM pg_listening_channels()")
    state["advisory locks"] = _one(
        conn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    state["temp tables"] = _one(
        conn,
        "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'",
    )
    state["fresh transaction"] = _one(conn, "SELECT now() = statement_timestamp()")
    state["xid"] = _one(conn, "SELECT pg_current_xact_id_if_assigned()")
    state["transaction status"] = conn.info.transaction_status.name
    state["reported"] = {name: conn.info.parameter_status(name) for name in REPORTED}
    return state


def test_clean_disconnect_leaves_no_session_state(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler(pool={"size": 1})
    channel = unique_name("chan")
    lock_key = 918_273_645
    with _connect(pooler.dsn()) as conn:
        pid = _backend_pid(conn)
        for sql in [
            "SET search_path TO pg_catalog, pg_temp",
            "SET work_mem = '7MB'",
            "SET statement_timeout = '123s'",
            "SET TimeZone = 'Asia/Tokyo'",
            "SET ROLE app",
            "SELECT set_config('fidelity.x', 'leaked', false)",
            "PREPARE leaked_stmt AS SELECT 1",
            f"SELECT pg_advisory_lock({lock_key})",
            "CREATE TEMP TABLE leaked_temp (v int)",
            f"LISTEN {channel}",
            "DECLARE leaked_cursor CURSOR WITH HOLD FOR SELECT 1",
        ]:
            conn.execute(sql)
        # psycopg prepares a statement on the server after 5 executions of the same one.
        for _ in range(6):
            conn.execute("SELECT %s::int", [1])
        leaving = _session_state(conn)
    # The client really had state to leave.
    assert leaving["prepared"] == 2
    assert leaving["advisory locks"] == 1
    assert leaving["temp tables"] == 1
    assert leaving["listening"] == 1

    with _connect(pooler.dsn()) as conn:
        assert _backend_pid(conn) == pid
        notes: list[psycopg.Notify] = []
        conn.add_notify_handler(notes.append)
        with _connect(direct_dsn(cluster)) as other:
            other.execute(f"NOTIFY {channel}, 'for the client before'")
            # The advisory lock is free for anyone.
            assert _one(other, f"SELECT pg_try_advisory_lock({lock_key})") is True
            other.execute(f"SELECT pg_advisory_unlock({lock_key})")
        got = _session_state(conn)
        # The driver's own prepared statements start again from scratch without 42P05.
        for _ in range(6):
            conn.execute("SELECT %s::int", [1])
        assert _one(conn, "SELECT 'still here'") == "still here"
        assert notes == []
    with _connect(direct_dsn(cluster)) as conn:
        expected = _session_state(conn)
    got["reported"].pop("server_version")
    expected["reported"].pop("server_version")
    assert got == expected


def _app_backend_in_transaction(cluster: LocalCluster, pid: int) -> bool:
    with _connect(superuser_dsn(cluster)) as conn:
        state = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return state is not None and state[0] != "idle"


def _next_client_is_clean(dsn: str, table: str) -> None:
    """A client after one that left mid-transaction: not in a transaction, the table free
    of locks and of the other's rows; it inserts one row of its own."""
    with _connect(dsn) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        inherited = "the next client runs inside the transaction of the client that left"
        assert _one(conn, "SELECT now() = statement_timestamp()") is True, inherited
        assert _one(conn, "SELECT pg_current_xact_id_if_assigned()") is None, inherited
        with conn.transaction():
            conn.execute("SET LOCAL lock_timeout = '5s'")
            # No transaction of the client before still holds a lock on the table.
            conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            assert _one(conn, f"SELECT count(*) FROM {table}") == 0
        conn.execute(f"INSERT INTO {table} VALUES (99)")


def _vanish_after_insert(
    cluster: LocalCluster, conn: psycopg.Connection[Any], table: str, pid: int
) -> None:
    conn.autocommit = False
    conn.execute(f"INSERT INTO {table} VALUES (1)")
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    vanish(conn)


def _vanish_in_copy(
    cluster: LocalCluster, conn: psycopg.Connection[Any], table: str, pid: int
) -> None:
    with (
        contextlib.suppress(psycopg.Error),
        conn.cursor().copy(f"COPY {table} FROM STDIN") as copy,
    ):
        copy.write("".join(f"{i}\n" for i in range(50000)))
        wait_until(lambda: _copy_progress(cluster, pid) > 0, what="the server to receive COPY rows")
        vanish(conn)


@pytest.mark.parametrize(
    "leave",
    [_vanish_after_insert, _vanish_in_copy],
    ids=["inside-a-transaction", "in-copy-from-stdin"],
)
def test_client_vanishing_mid_work_leaves_nothing(
    cluster: LocalCluster,
    start_pooler: StartPooler,
    leave: Callable[[LocalCluster, psycopg.Connection[Any], str, int], None],
) -> None:
    pooler = start_pooler(pool={"size": 1})
    with scratch_table(cluster, "v int") as table:
        conn = _connect(pooler.dsn())
        pid = _backend_pid(conn)
        leave(cluster, conn, table, pid)
        conn.close()
        _next_client_is_clean(pooler.dsn(), table)
        wait_until(
            lambda: not _app_backend_in_transaction(cluster, pid),
            what=f"backend {pid} to leave the vanished client's transaction",
        )
        assert count_rows(cluster, table) == 1  # only the next client's row


def _copy_progress(cluster: LocalCluster, pid: int) -> int:
    with _connect(superuser_dsn(cluster)) as conn:
        row = conn.execute(
            "SELECT tuples_processed FROM pg_stat_progress_copy WHERE pid = %s", [pid]
        ).fetchone()
    return int(row[0]) if row is not None else 0


def _leave(conn: psycopg.Connection[Any], how: str) -> None:
    if how == "vanish":
        vanish(conn)
    conn.close()  # sends Terminate unless the socket is gone already


@pytest.mark.parametrize("how", ["terminate", "vanish"])
@pytest.mark.parametrize("reset_query", ["DISCARD ALL", ""], ids=["discard-all", "no-reset"])
def test_client_leaving_before_sync_commits_nothing(
    cluster: LocalCluster, start_pooler: StartPooler, how: str, reset_query: str
) -> None:
    """An Execute with no Sync after it runs in an implicit transaction that only a Sync
    commits; a client that leaves before its Sync has committed nothing. Whatever the
    reset query (none hands session state on, never an open transaction), the next
    client must not find itself inside that transaction, committing it."""
    pooler = start_pooler(pool={"size": 1, "reset_query": reset_query})
    outcomes = []
    for dsn in (direct_dsn(cluster), pooler.dsn()):
        with scratch_table(cluster, "v int") as table:
            conn = _connect(dsn)
            result = execute_without_sync(conn, f"INSERT INTO {table} VALUES (1) RETURNING v")
            assert result.status == psycopg.pq.ExecStatus.TUPLES_OK
            _leave(conn, how)
            _next_client_is_clean(dsn, table)
            outcomes.append(count_rows(cluster, table))
    assert outcomes == [1, 1]  # the next client's row only, directly and through the pooler


@pytest.mark.parametrize("how", ["terminate", "vanish"])
def test_client_leaving_after_an_error_before_sync_frees_its_server(
    cluster: LocalCluster, start_pooler: StartPooler, how: str
) -> None:
    """After an error in an extended-protocol batch PostgreSQL skips every message until
    Sync. A client that leaves then must not take its server connection with it: with a
    pool of one, the next client gets a server."""
    pooler = start_pooler(pool={"size": 1})
    conn = _connect(pooler.dsn())
    result = execute_without_sync(conn, "SELECT 1/0")
    assert result.status == psycopg.pq.ExecStatus.FATAL_ERROR
    assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"22012"
    _leave(conn, how)
    with _connect(pooler.dsn(), connect_timeout=3) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert _one(conn, "SELECT 'served'") == "served"
