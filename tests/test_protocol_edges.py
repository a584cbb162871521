"""Protocol edges of the proxy core, each checked through the pooler and, wherever the
cluster can answer the same bytes, against PostgreSQL 15 directly: TLS and GSSAPI
negotiation, protocol versions, cancel requests, notifications, the client limit,
draining on SIGTERM, FunctionCall and COPY in the extended protocol.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from wire import (
    Address,
    Msg,
    Wire,
    address_of,
    bind,
    comparable,
    connect,
    copy_data,
    copy_done,
    execute,
    flush,
    function_call,
    gssenc_request,
    parse,
    ssl_request,
    startup_packet,
    sync,
)

from pooler.localcluster import LocalCluster
from pooler.protocol import messages as m
from pooler.protocol.codec import build_cancel_request


def _direct_dsn(cluster: LocalCluster) -> str:
    node = cluster.primary
    return f"host={node.host} port={node.port} user=app password=app dbname=app"


def _send_cancel(address: Address, pid: int, key: int) -> None:
    """Send a CancelRequest and wait until the receiver closes, as libpq does."""
    with Wire(address) as wire:
        wire.send(build_cancel_request(pid, key))
        assert wire.is_closed(), "the CancelRequest connection was not closed"


def _backend_pid(wire: Wire) -> bytes:
    answer = wire.query("SELECT pg_backend_pid()")
    rows = [msg for msg in answer if msg.type == "D"]
    assert len(rows) == 1, answer
    return rows[0].body


# --- TLS and GSSAPI ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_with_a_configured_certificate(
    start_pooler: StartPooler, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    pooler = start_pooler(tls={"cert": str(cert), "key": str(key)})
    # verify-full: the pooler presents exactly the configured certificate.
    for mode in ("require", f"verify-full sslrootcert={cert}"):
        with psycopg.connect(f"{pooler.dsn()} sslmode={mode}") as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 41 + 1").fetchone() == (42,)
    # A client that does not ask for TLS still gets in, unencrypted.
    with psycopg.connect(f"{pooler.dsn()} sslmode=disable") as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_without_tls_require_fails_and_prefer_is_unencrypted(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    # The cluster runs without ssl too: libpq must say the same about both.
    errors = []
    for dsn in (_direct_dsn(cluster), pooler.dsn()):
        with pytest.raises(psycopg.OperationalError) as caught:
            psycopg.connect(f"{dsn} sslmode=require gssencmode=disable")
        errors.append(str(caught.value).rsplit(":", 1)[-1].strip())
        with psycopg.connect(f"{dsn} sslmode=prefer") as conn:
            assert not conn.pgconn.ssl_in_use
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert errors[0] == errors[1]
    assert "SSL" in errors[1]


def _login_after_requests(address: Address, *requests: bytes) -> tuple[list[bytes], list[Msg]]:
    """Send each request packet, collecting its one-byte answer; then log in."""
    with Wire(address) as wire:
        answers = []
        for request in requests:
            wire.send(request)
            answers.append(wire.read_bytes(1))
        return answers, wire.login()


def test_ssl_request_is_answered_n_like_postgres(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    direct = _login_after_requests(address_of(cluster.primary), ssl_request())
    through = _login_after_requests(address_of(pooler), ssl_request())
    assert direct[0] == through[0] == [b"N"]
    assert [comparable(x) for x in through[1]] == [comparable(x) for x in direct[1]]
    assert through[1][-1].type == "Z"

    # A second SSLRequest on the same connection is a protocol version nobody speaks.
    def twice(address: Address) -> tuple[bytes, Msg]:
        with Wire(address) as wire:
            wire.send(ssl_request())
            first = wire.read_bytes(1)
            wire.send(ssl_request())
            return first, wire.read_message()

    d_first, d_error = twice(address_of(cluster.primary))
    p_first, p_error = twice(address_of(pooler))
    assert (p_first, comparable(p_error)) == (d_first, comparable(d_error))
    assert p_error.fields()["C"] == "0A000"


def test_gssenc_request_is_answered_n_and_the_login_goes_on(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    # This cluster's PostgreSQL may be built with GSSAPI, and then answers 'G'; one
    # built without it answers 'N', which is the only answer the pooler can give.
    with Wire(address_of(cluster.primary)) as wire:
        wire.send(gssenc_request())
        assert wire.read_bytes(1) in (b"G", b"N")
    # What libpq does with gssencmode=prefer and sslmode=prefer: GSS, then SSL, then login.
    answers, login = _login_after_requests(address_of(pooler), gssenc_request(), ssl_request())
    assert answers == [b"N", b"N"]
    assert login[-1].type == "Z", login
    _, direct_login = _login_after_requests(address_of(cluster.primary), ssl_request())
    assert [comparable(x) for x in login] == [comparable(x) for x in direct_login]


# --- protocol versions -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "options"),
    [
        (1, []),
        (0, [("_pq_.foo", "bar")]),
        (2, [("_pq_.a", "1"), ("_pq_.b", "2")]),
    ],
    ids=["3.1", "3.0+_pq_.foo", "3.2+two-options"],
)
def test_negotiate_protocol_version_like_postgres(
    cluster: LocalCluster, pooler: PoolerProcess, minor: int, options: list[tuple[str, str]]
) -> None:
    logins = []
    for address in (address_of(cluster.primary), address_of(pooler)):
        with Wire(address) as wire:
            seen = wire.login(minor=minor, extra=options)
            assert seen[0].type == "v", seen
            assert seen[-1].type == "Z", seen
            # The session works at 3.0 after the negotiation.
            assert [msg.type for msg in wire.query("SELECT 1")] == ["T", "D", "C", "Z"]
            logins.append([comparable(x) for x in seen])
    # NegotiateProtocolVersion byte for byte, then the same authentication and startup.
    assert logins[1] == logins[0]


@pytest.mark.skipif(psycopg.pq.version() < 180000, reason="max_protocol_version needs libpq 18")
def test_libpq_asking_for_protocol_3_2_gets_3_0(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    # libpq 18 reads NegotiateProtocolVersion's first field as a whole version number.
    for dsn in (_direct_dsn(cluster), pooler.dsn()):
        with psycopg.connect(f"{dsn} max_protocol_version=3.2") as conn:
            assert conn.pgconn.protocol_version == 3
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize(
    ("major", "minor"), [(2, 0), (4, 0), (1234, 5681)], ids=["2.0", "4.0", "1234.5681"]
)
def test_unsupported_protocol_version_like_postgres(
    cluster: LocalCluster, pooler: PoolerProcess, major: int, minor: int
) -> None:
    packet = startup_packet({"user": "app", "database": "app"}, major, minor)
    outcomes = []
    for address in (address_of(cluster.primary), address_of(pooler)):
        with Wire(address) as wire:
            wire.send(packet)
            outcomes.append(wire.outcome())
    direct, through = outcomes
    assert through == direct
    assert through.end == "closed"
    text = repr(through.messages)
    assert f"unsupported frontend protocol {major}.{minor}" in text


# --- cancel --------------------------------------------------------------------------------


def _cancelled_sleep(dsn: str) -> tuple[str | None, str, float]:
    """Run pg_sleep(10), cancel it after 0.5 s; SQLSTATE, message, seconds to the error."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cancelled_at: list[float] = []

        def cancel() -> None:
            cancelled_at.append(time.monotonic())
            conn.cancel()

        timer = threading.Timer(0.5, cancel)
        timer.start()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled) as caught:
                conn.execute("SELECT pg_sleep(10)")
            took = time.monotonic() - cancelled_at[0]
        finally:
            timer.cancel()
        # The session is still usable.
        assert conn.execute("SELECT 1").fetchone() == (1,)
        return caught.value.sqlstate, caught.value.diag.message_primary or "", took


def test_cancel_stops_a_running_query_within_a_second(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    direct = _cancelled_sleep(_direct_dsn(cluster))
    through = _cancelled_sleep(pooler.dsn())
    assert through[:2] == direct[:2] == ("57014", "canceling statement due to user request")
    assert through[2] < 1.0, f"the cancel took {through[2]:.2f} s through the pooler"


def test_late_cancel_does_not_hit_the_next_client_of_the_server(
    start_pooler: StartPooler,
) -> None:
    pooler = start_pooler(pool={"size": 1})
    address = address_of(pooler)
    with connect(address) as first:
        assert first.backend_key is not None
        old_pid, old_key = first.backend_key
        first_server = _backend_pid(first)
        first.send(b"X\x00\x00\x00\x04")
        assert first.is_closed()
    with connect(address) as second:
        # Pool size 1: the second client has the first one's server connection.
        assert _backend_pid(second) == first_server
        assert second.backend_key is not None
        pid, key = second.backend_key
        second.send(m.query("SELECT pg_sleep(2), 7"))
        time.sleep(0.3)
        # The first client's key, after it left; and the second's pid with a wrong key.
        _send_cancel(address, old_pid, old_key)
        _send_cancel(address, pid, key ^ 0x5A5A5A5A)
        answer = second.read_until("Z")
    assert [msg.type for msg in answer] == ["T", "D", "C", "Z"], answer


# --- notifications ---------------------------------------------------------------------


def test_self_notification_carries_the_pid_of_backend_key_data(
    cluster: LocalCluster, pooler: PoolerProcess
) -> None:
    for dsn in (_direct_dsn(cluster), pooler.dsn()):
        with psycopg.connect(dsn, autocommit=True) as conn:
            got: list[psycopg.Notify] = []
            conn.add_notify_handler(got.append)
            conn.execute("LISTEN edge_self")
            conn.execute("NOTIFY edge_self, 'hello'")
            conn.execute("SELECT 1")
            assert [(n.channel, n.payload) for n in got] == [("edge_self", "hello")], dsn
            assert got[0].pid == conn.info.backend_pid, dsn


def test_notification_from_another_session_is_not_mistaken_for_our_own(
    pooler: PoolerProcess,
) -> None:
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as listener,
        psycopg.connect(pooler.dsn(), autocommit=True) as notifier,
    ):
        got: list[psycopg.Notify] = []
        listener.add_notify_handler(got.append)
        listener.execute("LISTEN edge_other")
        row = notifier.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        notifier.execute("NOTIFY edge_other, 'from afar'")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            listener.execute("SELECT 1")
            time.sleep(0.05)
        assert [(n.channel, n.payload) for n in got] == [("edge_other", "from afar")]
        assert got[0].pid != listener.info.backend_pid
        assert got[0].pid in (row[0], notifier.info.backend_pid)


# --- the client limit ------------------------------------------------------------------


def test_max_clients_refuses_one_more_with_53300(start_pooler: StartPooler) -> None:
    pooler = start_pooler(pool={"max_clients": 2})
    first = psycopg.connect(pooler.dsn())
    second = psycopg.connect(pooler.dsn())
    try:
        with Wire(address_of(pooler)) as third:
            third.send(startup_packet({"user": "app", "database": "app"}))
            outcome = third.outcome()
        # PostgreSQL's answer when max_connections is reached, before authentication.
        fatal = ("E", ("S", "FATAL"), ("V", "FATAL"), ("C", "53300"))
        assert outcome.end == "closed"
        assert outcome.messages == ((*fatal, ("M", "sorry, too many clients already")),)
        with pytest.raises(psycopg.OperationalError, match="too many clients"):
            psycopg.connect(pooler.dsn())
        assert first.execute("SELECT 1").fetchone() == (1,)
    finally:
        first.close()
    # A client that left frees its place.
    deadline = time.monotonic() + 5
    while True:
        try:
            with psycopg.connect(pooler.dsn()) as again:
                assert again.execute("SELECT 2").fetchone() == (2,)
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the place of a client that left stays taken"
            time.sleep(0.05)
    second.close()


# --- shutdown ----------------------------------------------------------------------------


def test_sigterm_lets_running_queries_finish_and_refuses_new_clients(
    start_pooler: StartPooler,
) -> None:
    shutdown_timeout = 5
    pooler = start_pooler(shutdown_timeout=shutdown_timeout)
    address = address_of(pooler)
    busy = connect(address)
    idle = connect(address)
    try:
        busy.send(m.query("SELECT pg_sleep(2), 7"))
        time.sleep(0.3)
        signalled = time.monotonic()
        pooler.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # New connections are refused at once.
        with pytest.raises(OSError):
            socket.create_connection(address, timeout=2).close()
        # The idle client is told to go (or just closed), without waiting for the query.
        idle_answer, idle_end = idle.read_rest(quiet=1.0)
        assert idle_end == "closed"
        assert [msg.fields()["C"] for msg in idle_answer if msg.type == "E"] in ([], ["57P01"])
        assert time.monotonic() - signalled < 1.5
        # The running query completes and its result arrives.
        answer = busy.read_until("Z")
        assert [msg.type for msg in answer] == ["T", "D", "C", "Z"], answer
        assert answer[1].body.endswith(b"\x00\x00\x00\x017")
        assert busy.is_closed()
        returncode = pooler.proc.wait(timeout=shutdown_timeout + 3)
        assert returncode == 0, pooler.log_text()
    finally:
        busy.close()
        idle.close()


# --- FunctionCall and COPY in the extended protocol ------------------------------------


def test_function_call_like_postgres(cluster: LocalCluster, pooler: PoolerProcess) -> None:
    with psycopg.connect(_direct_dsn(cluster)) as conn:
        row = conn.execute("SELECT 'pg_catalog.abs(int4)'::regprocedure::oid::int").fetchone()
        assert row is not None
        abs_int4 = row[0]
    answers = []
    for address in (address_of(cluster.primary), address_of(pooler)):
        with connect(address) as wire:
            wire.send(function_call(abs_int4, [struct.pack("!i", -5)]))
            result = wire.read_until("Z")
            # An oid that names no function: an ErrorResponse, and the session goes on.
            wire.send(function_call(0, [struct.pack("!i", 1)]))
            error = wire.read_until("Z")
            wire.send(function_call(abs_int4, [struct.pack("!i", 12)], binary=False))
            text = wire.read_until("Z")
            answers.append([[comparable(x) for x in part] for part in (result, error, text)])
    assert answers[1] == answers[0]
    assert answers[1][0] == [("V", struct.pack("!ii", 4, 5)), ("Z", b"I")]
    assert [x[0] for x in answers[1][1]] == ["E", "Z"]


def _copy_conversation(wire: Wire, sync_first: bool) -> list[list[tuple[object, ...]]]:
    """COPY FROM STDIN and TO STDOUT with Parse/Bind/Execute; every answer, comparable.

    ``sync_first``: Sync right after Execute, before the CopyData, as libpq sends it
    (PostgreSQL ignores a Sync during COPY IN); otherwise a Flush, as the protocol
    documentation suggests.
    """
    parts = [wire.query("CREATE TEMP TABLE edge_copy (a int, b text)")]
    wire.send(parse("", "COPY edge_copy FROM STDIN") + bind() + execute())
    wire.send(sync() if sync_first else flush())
    parts.append(wire.read_until("G"))
    wire.send(copy_data(b"1\tone\n2\ttwo\n") + copy_data(b"3\tthree\n") + copy_done() + sync())
    parts.append(wire.read_until("Z"))
    wire.send(parse("out", "COPY edge_copy TO STDOUT") + bind("", "out") + execute() + sync())
    parts.append(wire.read_until("Z"))
    parts.append(wire.query("SELECT count(*) FROM edge_copy"))
    return [[comparable(x) for x in part] for part in parts]


@pytest.mark.parametrize("sync_first", [False, True], ids=["flush", "sync-before-copydata"])
def test_copy_in_the_extended_protocol_like_postgres(
    cluster: LocalCluster, pooler: PoolerProcess, sync_first: bool
) -> None:
    answers = []
    for address in (address_of(cluster.primary), address_of(pooler)):
        with connect(address) as wire:
            answers.append(_copy_conversation(wire, sync_first))
    assert answers[1] == answers[0]
    copy_in, copy_out, count = answers[1][2:]
    assert copy_in == [("C", b"COPY 3\0"), ("Z", b"I")]
    assert [x for x in copy_out if x[0] == "d"] == [
        ("d", b"1\tone\n"),
        ("d", b"2\ttwo\n"),
        ("d", b"3\tthree\n"),
    ]
    assert copy_out[-2:] == [("C", b"COPY 3\0"), ("Z", b"I")]
    assert count[1] == ("D", b"\x00\x01\x00\x00\x00\x013")


def test_server_goes_back_to_the_pool_after_a_copy_sent_the_libpq_way(
    start_pooler: StartPooler,
) -> None:
    address = address_of(start_pooler(pool={"size": 1}))

    def next_client_shares_the_server(sync_first: bool | None) -> bool:
        with connect(address) as wire:
            before = _backend_pid(wire)
            if sync_first is not None:
                _copy_conversation(wire, sync_first)
            wire.send(b"X\x00\x00\x00\x04")
            assert wire.is_closed()
        with connect(address) as wire:
            return _backend_pid(wire) == before

    # Pool size 1 and nothing in flight: the next client gets the same server.
    assert next_client_shares_the_server(None)
    assert next_client_shares_the_server(False)
    # libpq's Sync before the CopyData gets no ReadyForQuery of its own; a pooler that
    # counts one per Sync thinks a request is still in flight and never reuses the server.
    assert next_client_shares_the_server(True), (
        "after an extended COPY with a Sync before the CopyData (as libpq sends it) the"
        " server connection was not reused: the pooler still counts a request in flight"
    )
