"""Bad input from one client harms no one else, and is answered as PostgreSQL 15 answers
the same bytes: the same messages (ErrorResponse severity, SQLSTATE and text; not the
source file and line), or the same silent close.

Every test holds a healthy client, opened before the bad input and used after it.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from wire import (
    Address,
    Msg,
    Outcome,
    Script,
    Wire,
    address_of,
    answers,
    bind,
    comparable,
    connect,
    execute,
    flush,
    header,
    message,
    parse,
    scram_server_first,
    startup_packet,
)

from pooler.localcluster import LocalCluster
from pooler.protocol import messages as m
from pooler.protocol.scram import ScramClient

#: The user this file logs in as, and a startup packet for it.
STARTUP = startup_packet({"user": "app", "database": "app"})


@pytest.fixture
def healthy(pooler: PoolerProcess) -> Iterator[psycopg.Connection]:
    """A client of ``pooler`` that logged in before the test's bad input."""
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        yield conn


def assert_unharmed(pooler: PoolerProcess, healthy: psycopg.Connection) -> None:
    """The healthy client still works, and so does a new one."""
    assert healthy.execute("SELECT 'still here'").fetchone() == ("still here",)
    with psycopg.connect(pooler.dsn(), connect_timeout=5) as conn:
        assert conn.execute("SELECT 2").fetchone() == (2,)


def same_answer(
    cluster: LocalCluster, pooler: PoolerProcess, script: Script, quiet: float = 1.0
) -> Outcome:
    """Run ``script`` against PostgreSQL and the pooler; assert they answer alike."""
    pg, ours = answers(script, address_of(cluster.primary), address_of(pooler), quiet=quiet)
    assert ours == pg, "the pooler answers otherwise than PostgreSQL"
    return ours


def answered_alike(
    cluster: LocalCluster,
    pooler: PoolerProcess,
    healthy: psycopg.Connection,
    script: Script,
    expected: Outcome,
) -> None:
    """PostgreSQL and the pooler answer ``script`` with ``expected``; nobody else is hurt."""
    assert same_answer(cluster, pooler, script) == expected
    assert_unharmed(pooler, healthy)


def sends(data: bytes) -> Script:
    """A script that sends ``data`` as the very first bytes."""
    return lambda wire: wire.send(data)


def after_login(data: bytes) -> Script:
    """A script that logs in, then sends ``data``."""

    def script(wire: Wire) -> None:
        assert wire.login()[-1].type == "Z"
        wire.send(data)

    return script


CLOSED = Outcome((), "closed")


def fatal(sqlstate: str, text: str) -> Outcome:
    """A FATAL ErrorResponse, then the connection closes."""
    return Outcome((("E", ("S", "FATAL"), ("V", "FATAL"), ("C", sqlstate), ("M", text)),), "closed")


# --- before the startup packet ---------------------------------------------------------


#: Startup packet lengths PostgreSQL refuses (2 GiB and more read as negative there).
BAD_LENGTHS = (0x80000000, 0xFFFFFFFF, 0, 4, 7, 10005)


def _with_length(length: int) -> bytes:
    return struct.pack("!I", length) + STARTUP[4:]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello
        bytes(range(256)) * 4,
        *(_with_length(n) for n in BAD_LENGTHS),
    ],
    ids=[
        "http",
        "tls-client-hello",
        "binary",
        *(f"length-{n}" for n in BAD_LENGTHS),
    ],
)
def test_startup_packet_length_out_of_range_closes_without_a_word(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection, data: bytes
) -> None:
    # Garbage too: its first four bytes make a length out of range.
    answered_alike(cluster, pooler, healthy, sends(data), CLOSED)


def test_startup_packet_without_a_user(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection
) -> None:
    no_user = fatal("28000", "no PostgreSQL user name specified in startup packet")
    answered_alike(cluster, pooler, healthy, sends(startup_packet({"database": "app"})), no_user)


def test_empty_connection_and_a_client_that_says_nothing(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection
) -> None:
    address = address_of(pooler)
    for _ in range(20):
        Wire(address).close()
    with Wire(address) as silent:
        # Both wait for the startup packet, saying nothing.
        assert same_answer(cluster, pooler, sends(b""), quiet=0.5) == Outcome((), "open")
        assert_unharmed(pooler, healthy)
        # The silent one can still log in afterwards.
        assert silent.login()[-1].type == "Z"


# --- after the login ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [header("Q", 0x7FFFFFFF), header("Q", 0x7FFFFFFF) + b"SELECT 1", header("Q", 3)],
    ids=["2GiB-header", "2GiB-with-bytes", "length-3"],
)
def test_message_length_out_of_range_closes_without_a_word(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection, data: bytes
) -> None:
    # PostgreSQL only logs "invalid message length" and closes.
    answered_alike(cluster, pooler, healthy, after_login(data), CLOSED)


@pytest.mark.parametrize(
    "data", [message("y"), message("y", b"abc"), b"y"], ids=["empty", "with-body", "type-only"]
)
def test_unknown_message_type(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection, data: bytes
) -> None:
    # PostgreSQL decides on the type byte alone, before it reads a length.
    invalid = fatal("08P01", "invalid frontend message type 121")
    answered_alike(cluster, pooler, healthy, after_login(data), invalid)


def test_sync_with_a_long_body_closes_without_a_word(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection
) -> None:
    # Sync is a "small" message: at most 10000 bytes.
    answered_alike(cluster, pooler, healthy, after_login(message("S", bytes(10001))), CLOSED)


CREATE_TEMP = m.query("CREATE TEMP TABLE vanish (a int)")


@pytest.mark.parametrize(
    "data",
    [
        m.query("SELECT 1")[:8],
        m.query("SELECT 1")[:3],
        b"P" + struct.pack("!i", 100) + b"\0SEL",
        CREATE_TEMP + m.query("COPY vanish FROM STDIN") + message("d", b"1\n"),
        CREATE_TEMP
        + parse("", "COPY vanish FROM STDIN")
        + bind()
        + execute()
        + flush()
        + message("d", b"1\n"),
    ],
    ids=["half-query", "half-header", "half-parse", "mid-copy", "mid-copy-extended"],
)
def test_client_vanishes_mid_message_or_mid_copy(
    cluster: LocalCluster, start_pooler: StartPooler, data: bytes
) -> None:
    pooler = start_pooler(pool={"size": 1})
    other_dsn = pooler.dsn("postgres", "postgres", "postgres")
    with psycopg.connect(other_dsn, autocommit=True) as other_user:
        # On another pool (user postgres), so the pool of size 1 stays free.
        other_user.execute("SELECT 1")
        # Nobody answers the rest: both wait for more, then the client closes.
        outcome = same_answer(cluster, pooler, after_login(data), quiet=0.5)
        assert outcome.end == "open"
        # The pool's only server connection was left mid-message or mid-COPY: the next
        # client must get a working one (a fresh server, or that one once known clean).
        started = time.monotonic()
        try:
            with connect(address_of(pooler)) as wire:
                answer = wire.query("SELECT 'next'")
        except TimeoutError:
            pytest.fail(
                f"the next client got no server within {time.monotonic() - started:.0f} s"
                " after a client vanished mid-message or mid-COPY on the only server connection"
            )
        assert [msg.type for msg in answer] == ["T", "D", "C", "Z"], answer
        assert other_user.execute("SELECT 2").fetchone() == (2,)


# --- authentication ----------------------------------------------------------------------


def _sasl_message_over_limit(second: bool) -> Script:
    def script(wire: Wire) -> None:
        wire.send(STARTUP)
        assert wire.read_message().type == "R"
        if not second:
            wire.send(m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=" + b"a" * 2000))
            return
        scram = ScramClient("app", "app")
        wire.send(m.sasl_initial_response(*scram.client_first()))
        assert wire.read_message().type == "R"
        wire.send(m.password_message(b"c=biws,r=" + b"x" * 2000))

    return script


@pytest.mark.parametrize("second", [False, True], ids=["initial-response", "response"])
def test_sasl_message_over_1024_bytes_fails_authentication(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection, second: bool
) -> None:
    failed = fatal("28P01", 'password authentication failed for user "app"')
    answered_alike(cluster, pooler, healthy, _sasl_message_over_limit(second), failed)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


#: The three ways a stalled client of the flood starts a large message it never finishes.
STALLED = {
    # A startup packet announcing 10000 bytes, 100 of them sent.
    "startup": struct.pack("!I", 10000) + bytes(100),
    # A SASLInitialResponse announcing 1000 bytes (within the SASL limit), 100 sent.
    "sasl": STARTUP + header("p", 1004) + b"SCRAM-SHA-256\0" + bytes(86),
    # A SASLInitialResponse announcing 1 MB, 100 bytes sent: refused at once.
    "sasl-1MB": STARTUP + header("p", 1 << 20) + b"SCRAM-SHA-256\0" + bytes(86),
}


def test_many_stalled_handshakes_cost_little_memory(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection
) -> None:
    # One of each, compared with PostgreSQL (whose own process limit is below 500).
    for name, data in STALLED.items():
        outcome = same_answer(cluster, pooler, sends(data), quiet=0.5)
        if name == "sasl-1MB":
            fields = (("S", "FATAL"), ("V", "FATAL"), ("C", "28P01"))
            text = ("M", 'password authentication failed for user "app"')
            assert outcome.messages[-1] == ("E", *fields, text), name
            assert outcome.end == "closed"
        else:
            assert outcome.end == "open", name

    before = _rss_kib(pooler.proc.pid)
    kinds = list(STALLED.values())
    clients: list[Wire] = []
    try:
        for i in range(500):
            wire = Wire(address_of(pooler))
            clients.append(wire)
            wire.send(kinds[i % len(kinds)])
        # Every refused one has had its answer, so the pooler has read them all.
        for i, wire in enumerate(clients):
            if kinds[i % len(kinds)] is STALLED["sasl-1MB"]:
                assert wire.is_closed(), "a client announcing 1 MB of SASL data stayed open"
        time.sleep(0.5)
        grown = _rss_kib(pooler.proc.pid) - before
        assert grown < 30 * 1024, f"RSS grew by {grown} kB for 500 stalled handshakes"
        assert_unharmed(pooler, healthy)
    finally:
        for wire in clients:
            wire.close()


def _failed_login(address: Address, user: str, password: str) -> list[Msg]:
    with Wire(address) as wire:
        seen = wire.login(user, password)
        assert wire.is_closed()
        return seen


def test_wrong_password_and_unknown_user_get_the_same_error(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection
) -> None:
    cases = [("app", "wrong"), ("nosuchuser", "wrong"), ("nosuchuser", "app")]
    for user, password in cases:
        pg = _failed_login(address_of(cluster.primary), user, password)
        ours = _failed_login(address_of(pooler), user, password)
        assert [comparable(x) for x in ours] == [comparable(x) for x in pg], user
        error = ours[-1].fields()
        # Same fields for both: nothing tells a missing user from a wrong password.
        assert {k: v for k, v in error.items() if k not in "FLR"} == {
            "S": "FATAL",
            "V": "FATAL",
            "C": "28P01",
            "M": f'password authentication failed for user "{user}"',
        }
    assert_unharmed(pooler, healthy)


def test_scram_salts_are_stable_per_user_name(
    cluster: LocalCluster,
    pooler: PoolerProcess,
    start_pooler: StartPooler,
    healthy: psycopg.Connection,
) -> None:
    ours, pg = address_of(pooler), address_of(cluster.primary)
    salts = {}
    for user in ("app", "postgres", "ghost", "phantom"):
        tries = [scram_server_first(ours, user) for _ in range(3)]
        assert len({(t.salt, t.iterations) for t in tries}) == 1, (user, tries)
        # PostgreSQL shows 4096 iterations for its roles and for unknown users alike.
        assert tries[0].iterations == scram_server_first(pg, user).iterations
        salts[user] = tries[0].salt
    assert len(set(salts.values())) == len(salts), salts
    # A restarted pooler with the same config shows the same salts.
    again = start_pooler()
    for user, salt in salts.items():
        assert scram_server_first(address_of(again), user).salt == salt, user
    assert_unharmed(pooler, healthy)


def test_unknown_database_after_a_successful_authentication(
    cluster: LocalCluster, pooler: PoolerProcess, healthy: psycopg.Connection
) -> None:
    logins = []
    for address in (address_of(cluster.primary), address_of(pooler)):
        with Wire(address) as wire:
            logins.append([comparable(x) for x in wire.login(database="nosuchdb")])
            assert wire.is_closed()
    assert logins[1] == logins[0]
    assert logins[1][-2:] == [
        ("R", m.AUTH_OK),
        (
            "E",
            ("S", "FATAL"),
            ("V", "FATAL"),
            ("C", "3D000"),
            ("M", 'database "nosuchdb" does not exist'),
        ),
    ]
    assert_unharmed(pooler, healthy)
