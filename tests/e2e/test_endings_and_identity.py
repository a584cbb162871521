"""How a session ends, and who the client is, through the pooler as on PostgreSQL 15.

The table of endings is compared with PostgreSQL itself, byte for byte (minus the
source-location fields of errors): each case is sent to the primary directly and
through the pooler on fresh connections. After every case the pool's only server
connection goes to a next client that must see its own answers and nothing else.
"""

from __future__ import annotations

import struct
import time
import uuid

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import direct_dsn, superuser_dsn
from wire import (
    Outcome,
    Wire,
    address_of,
    bind,
    comparable,
    connect,
    copy_data,
    copy_done,
    execute,
    flush,
    message,
    parse,
    sync,
)

from pooler.localcluster import LocalCluster
from pooler.protocol import messages as m

TERMINATE = message("X")
SETUP = m.query("CREATE TABLE IF NOT EXISTS endings_t (a int)")


def _pbe(sql: str) -> bytes:
    return parse("", sql) + bind() + execute()


#: Each ending as a client sends it after login, in one write.
ENDINGS: dict[str, bytes] = {
    "query-then-terminate": m.query("SELECT 1") + TERMINATE,
    "query-then-unknown-type": m.query("SELECT 1") + b"Z",
    "query-then-length-below-4": m.query("SELECT 1") + b"Q\0\0\0\2",
    "unknown-type-alone": b"Z\0\0\0\4",
    "unflushed-extended-then-terminate": _pbe("SELECT 1") + TERMINATE,
    "flushed-extended-then-terminate": _pbe("SELECT 1") + flush() + TERMINATE,
    "unflushed-extended-then-unknown-type": _pbe("SELECT 1") + b"Z",
    "unflushed-extended-then-length-below-4": _pbe("SELECT 1") + b"Q\0\0\0\2",
    "sync-then-terminate-then-query": _pbe("SELECT 1") + sync() + TERMINATE + m.query("SELECT 2"),
    "copydata-length-0x7fffffff": m.query("COPY endings_t FROM STDIN")
    + b"d"
    + struct.pack("!I", 0x7FFFFFFF),
    "copydata-negative-length": m.query("COPY endings_t FROM STDIN") + b"d\xff\xff\xff\xf0",
    "unknown-type-during-copy": m.query("COPY endings_t FROM STDIN") + copy_data(b"1\n") + b"Z",
    "terminate-during-copy": m.query("COPY endings_t FROM STDIN") + copy_data(b"1\n") + TERMINATE,
    "extended-copy-then-terminate": _pbe("COPY endings_t FROM STDIN") + sync() + TERMINATE,
}


def _ending_outcome(address: tuple[str, int], data: bytes) -> Outcome:
    with connect(address) as wire:
        wire.query("CREATE TABLE IF NOT EXISTS endings_t (a int)")
        wire.send(data)
        return wire.outcome(quiet=1.0)


def _next_client_sees_only_its_own(pooler: PoolerProcess) -> None:
    token = uuid.uuid4().hex
    with connect(address_of(pooler)) as wire:
        answer = wire.query(f"SELECT '{token}'")
        assert [msg.type for msg in answer] == ["T", "D", "C", "Z"], answer
        assert token.encode() in answer[1].body, answer
        assert wire.query("SELECT 'second'")[1].body.endswith(b"second"), "a stray answer"


@pytest.fixture(params=["transaction", "session"])
def pool_of_one(start_pooler: StartPooler, request: pytest.FixtureRequest) -> PoolerProcess:
    """A pooler whose pool holds one server connection: every client gets the same."""
    return start_pooler(pool={"size": 1, "mode": request.param})


@pytest.mark.parametrize("case", list(ENDINGS))
def test_ending_answered_as_postgres_does(
    cluster: LocalCluster, pool_of_one: PoolerProcess, case: str
) -> None:
    data = ENDINGS[case]
    direct = _ending_outcome(address_of(cluster.primary), data)
    through = _ending_outcome(address_of(pool_of_one), data)
    assert through == direct
    _next_client_sees_only_its_own(pool_of_one)
    assert "Traceback" not in pool_of_one.log_text()
    assert "Fatal error" not in pool_of_one.log_text()


#: Pipelines after which the server owes more than the client read before leaving.
LEFTOVERS: dict[str, tuple[bytes, int]] = {
    # COPY, CopyData, CopyDone, Sync, Sync: three ReadyForQuery, then two queries owed.
    "copy-then-two-syncs": (
        m.query("COPY endings_t FROM STDIN")
        + copy_data(b"1\n")
        + copy_done()
        + sync()
        + sync()
        + m.query("SELECT pg_sleep(0.5), 'A-first'")
        + m.query("SELECT pg_sleep(0.5), 'A-LEAKED-ROW'"),
        3,
    ),
    "sync-storm-after-an-error": (
        _pbe("SELECT 1/0") + sync() * 6 + m.query("SELECT pg_sleep(0.5), 'A-LEAKED-ROW'"),
        2,
    ),
    "flush-then-more": (
        _pbe("SELECT 'A-flushed'")
        + flush()
        + sync()
        + m.query("SELECT pg_sleep(0.5), 'A-LEAKED-ROW'"),
        1,
    ),
    "extended-copy-the-libpq-way": (
        _pbe("COPY endings_t FROM STDIN")
        + sync()
        + copy_data(b"1\n")
        + copy_done()
        + sync()
        + sync()
        + m.query("SELECT pg_sleep(0.5), 'A-LEAKED-ROW'"),
        1,
    ),
}


@pytest.mark.parametrize("case", list(LEFTOVERS))
def test_next_client_never_reads_what_the_last_one_left(
    pool_of_one: PoolerProcess, case: str
) -> None:
    data, read = LEFTOVERS[case]
    with connect(address_of(pool_of_one)) as wire:
        wire.query("CREATE TABLE IF NOT EXISTS endings_t (a int)")
        wire.send(data)
        for _ in range(read):
            wire.read_until("Z")
    # Client A is gone with answers still owed; B gets the pool's only server slot.
    _next_client_sees_only_its_own(pool_of_one)


# --- who the client is --------------------------------------------------------------------


def test_backend_pid_is_the_real_one_in_session_mode(
    cluster: LocalCluster, session_pooler: PoolerProcess
) -> None:
    pooler = session_pooler
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        pid = conn.info.backend_pid
        assert conn.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        with psycopg.connect(superuser_dsn(cluster), autocommit=True) as admin:
            row = admin.execute(
                "SELECT usename FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            assert row == ("app",)
    # pg_terminate_backend of one's own pid, as directly: FATAL 57P01, connection gone.
    for dsn in (direct_dsn(cluster), pooler.dsn()):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.OperationalError) as caught:
                conn.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
            assert caught.value.sqlstate in ("57P01", None), dsn
            assert conn.closed or conn.broken, dsn
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_notification_from_a_client_that_left_carries_its_pid(pooler: PoolerProcess) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True) as listener:
        got: list[psycopg.Notify] = []
        listener.add_notify_handler(got.append)
        listener.execute("LISTEN endings_left")
        with psycopg.connect(pooler.dsn(), autocommit=True) as notifier:
            notifier_pid = notifier.info.backend_pid
            notifier.execute("NOTIFY endings_left, 'bye'")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            listener.execute("SELECT 1")
            time.sleep(0.05)
        assert [(n.payload, n.pid) for n in got] == [("bye", notifier_pid)]


def test_cancel_key_is_the_poolers_and_cannot_be_guessed(
    cluster: LocalCluster, session_pooler: PoolerProcess
) -> None:
    with Wire(address_of(session_pooler)) as wire:
        assert wire.login()[-1].type == "Z"
        assert wire.backend_key is not None
        pid, key = wire.backend_key
        with psycopg.connect(superuser_dsn(cluster), autocommit=True) as admin:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
            assert row.fetchone() == (1,)
        # A cancel with the right pid and a wrong key does nothing.
        wire.send(m.query("SELECT pg_sleep(1)"))
        with Wire(address_of(session_pooler)) as canceller:
            canceller.send(struct.pack("!iIii", 16, (1234 << 16) | 5678, pid, key ^ 1))
        answer = wire.read_until("Z")
        assert [comparable(msg)[0] for msg in answer] == ["T", "D", "C", "Z"]


def test_transaction_pooling_gives_each_client_a_pid_of_its_own(
    start_pooler: StartPooler,
) -> None:
    pooler = start_pooler(pool={"size": 1, "mode": "transaction"})
    conns = [psycopg.connect(pooler.dsn(), autocommit=True) for _ in range(3)]
    try:
        pids = {conn.info.backend_pid for conn in conns}
        assert len(pids) == 3
        # Real backends' pids stay below 2**22 on Linux; the pooler's are above.
        assert all(pid >= 1 << 24 for pid in pids)
        # One server serves all three in turn.
        servers = {conn.execute("SELECT pg_backend_pid()").fetchone() for conn in conns}
        assert len(servers) == 1
    finally:
        for conn in conns:
            conn.close()
