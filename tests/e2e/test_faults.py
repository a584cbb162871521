"""Server connections that break under the pooler: a fault proxy (tests/faultproxy.py)
sits between the pooler and the primary and resets, stalls, closes or truncates one
server connection while other clients keep working.

Every query of a client carries that client's token, and every row it gets back must
carry it too. What a client whose server broke may see is what it would see from a
dead PostgreSQL backend: a connection failure (psycopg OperationalError, the connection
closed), nothing else. Afterwards the pool must serve ``POOL_SIZE`` clients at once (no
slot leaked), no server connection may be left busy, and the pooler's log must hold no
traceback.

``test_proxy_fault_directly`` runs each fault with psycopg connected to the proxy
itself, without the pooler: it checks the proxy, and shows what a client sees when
its PostgreSQL connection breaks that way.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from faultproxy import Fault, FaultProxy, Kind
from helpers_clients import direct_dsn, scratch_table, superuser_dsn, vanish, wait_until
from wire import Msg, Wire, bind, execute, parse, sync

from pooler.localcluster import LocalCluster
from pooler.protocol import messages as m

#: Seconds any one client operation may take before the client counts as hung.
TIMEOUT = 10.0
POOL_SIZE = 3
#: The pooler's pool.connect_timeout: opening a server, a reset, a cancel (seconds).
CONNECT_TIMEOUT = 2
#: The pooler's shutdown_timeout: how long it lets running queries finish on SIGTERM.
SHUTDOWN_TIMEOUT = 2
#: Rows of a result a fault interrupts, and the row it strikes at.
ROWS = 500
FAULT_ROW = 100
#: What in the pooler's log means an exception nobody handled.
LOG_ALARMS = (
    "Traceback",
    "Fatal error on transport",
    "Exception in callback",
    "exception was never retrieved",
    '"level": "error"',
)

Conn = psycopg.Connection[Any]
T = TypeVar("T")


def new_token(who: str) -> str:
    return f"tok_{who}_{uuid.uuid4().hex[:12]}"


# --- what clients run, each checking that every row carries its token ------------------


def expect_rows(rows: list[tuple[Any, ...]], token: str, n: int) -> None:
    """``rows`` are ``(token, 1) .. (token, n)``; a row of another client fails loudly."""
    strangers = [row for row in rows if str(row[0]) != token]
    assert not strangers, f"client {token} got rows of another client: {strangers[:3]}"
    assert [int(row[1]) for row in rows] == list(range(1, n + 1)), (
        f"client {token} got {len(rows)} rows, not 1..{n}"
    )


def select_rows(conn: Conn, token: str, n: int = ROWS) -> None:
    """Simple protocol (psycopg sends a Query when there are no parameters)."""
    rows = conn.execute(f"SELECT '{token}'::text, g FROM generate_series(1, {n}) g").fetchall()
    expect_rows(rows, token, n)


def select_prepared(conn: Conn, token: str, n: int = ROWS) -> None:
    """Extended protocol with a named prepared statement (Parse, Sync, then Bind ...)."""
    sql = f"SELECT '{token}'::text, g FROM generate_series(1, %s) g"
    rows = conn.execute(sql, [n], prepare=True).fetchall()
    expect_rows(rows, token, n)


def copy_out(conn: Conn, token: str, n: int = 300) -> None:
    sql = f"COPY (SELECT '{token}'::text, g FROM generate_series(1, {n}) g) TO STDOUT"
    with conn.cursor() as cur, cur.copy(sql) as copy:
        rows = list(copy.rows())
    expect_rows(rows, token, n)


def copy_in(conn: Conn, token: str, table: str, n: int) -> None:
    """COPY FROM STDIN of ``n`` rows carrying ``token`` (its Query carries it too)."""
    with conn.cursor() as cur, cur.copy(f"/* {token} */ COPY {table} (token, g) FROM STDIN") as cp:
        for g in range(1, n + 1):
            cp.write_row((token, g))


def count_token_rows(cluster: LocalCluster, table: str, token: str) -> int:
    with psycopg.connect(direct_dsn(cluster), autocommit=True, connect_timeout=5) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE token = %s", [token]).fetchone()
    assert row is not None
    return int(row[0])


# --- clients with deadlines ----------------------------------------------------------


class Hung(AssertionError):
    """A client operation did not end within its deadline."""


class Client:
    """A psycopg connection whose every operation runs in its own thread with a deadline:
    a client that waits too long is cut off (its socket shut down) and the test fails."""

    def __init__(self, dsn: str, who: str) -> None:
        self.token = new_token(who)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=who)
        self.conn: Conn | None = None
        try:
            connecting = self._worker.submit(
                lambda: psycopg.connect(dsn, autocommit=True, connect_timeout=5)
            )
            self.conn = self.wait(connecting)
        except BaseException:
            self._worker.shutdown(wait=False, cancel_futures=True)
            raise

    def submit(self, op: Callable[[Conn], T]) -> Future[T]:
        assert self.conn is not None
        return self._worker.submit(op, self.conn)

    def call(self, op: Callable[[Conn], T], timeout: float = TIMEOUT) -> T:
        return self.wait(self.submit(op), timeout)

    def wait(self, future: Future[T], timeout: float = TIMEOUT) -> T:
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():
                raise
            self.cut()
            with contextlib.suppress(Exception):
                future.result(5)
            raise Hung(f"client {self.token}: no answer within {timeout:.0f} s") from None

    def cut(self) -> None:
        """Shut the socket down (FIN, no Terminate), as a client that gives up."""
        if self.conn is not None and not self.conn.closed:
            with contextlib.suppress(OSError):
                vanish(self.conn)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self._worker.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def expect_connection_failure(client: Client, op: Callable[[Conn], object]) -> psycopg.Error:
    """``op`` fails as against a PostgreSQL backend that died: OperationalError with no
    SQLSTATE (or one of class 08), and the connection is closed."""
    with pytest.raises(psycopg.Error) as info:
        client.call(op)
    error = info.value
    assert isinstance(error, psycopg.OperationalError), (
        f"expected a connection failure, got {type(error).__name__}: {error}"
    )
    assert error.sqlstate is None or error.sqlstate.startswith("08"), (
        f"expected a connection failure, got SQLSTATE {error.sqlstate}: {error}"
    )
    assert client.conn is not None and client.conn.closed, (
        f"the connection is still open after {error!r}"
    )
    return error


# --- healthy clients running beside the faults ------------------------------------------


@dataclass
class Healthy:
    """A client that loops over every kind of query on its own connection in a thread."""

    dsn: str
    table: str
    token: str = field(default_factory=lambda: new_token("healthy"))
    finished: list[float] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.conn: Conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
        self.copied = 0
        self.thread = threading.Thread(target=self._loop, name=self.token, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        ops: list[Callable[[Conn, str], None]] = [
            select_rows,
            select_prepared,
            copy_out,
            self._copy_in,
        ]
        i = 0
        while not self.stop.is_set():
            try:
                ops[i % len(ops)](self.conn, self.token)
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.finished.append(time.monotonic())
            i += 1
            time.sleep(0.01)

    def _copy_in(self, conn: Conn, token: str) -> None:
        copy_in(conn, token, self.table, 200)
        self.copied += 200
        row = conn.execute(f"SELECT count(*) FROM {self.table} WHERE token = %s", [token])
        assert row.fetchone() == (self.copied,), f"client {token}: rows lost in COPY"

    def done_since(self, since: float) -> int:
        return sum(1 for t in list(self.finished) if t > since)

    def finish(self) -> None:
        """Stop the loop; a loop stuck in a query is cut off and counts as hung."""
        self.stop.set()
        self.thread.join(TIMEOUT)
        if self.thread.is_alive():
            with contextlib.suppress(OSError):
                vanish(self.conn)
            self.thread.join(5)
            self.errors.append(Hung(f"client {self.token}: no answer within {TIMEOUT:.0f} s"))
        self.conn.close()


class HealthyGroup(list[Healthy]):
    def keep_working_after(self, since: float, operations: int = 4) -> None:
        """Each client completes ``operations`` more queries after ``since`` (and
        failed none)."""

        def progressed() -> bool:
            return all(h.errors or h.done_since(since) >= operations for h in self)

        wait_until(progressed, TIMEOUT, "the healthy clients to go on")
        for h in self:
            assert not h.errors, f"healthy client {h.token} failed: {h.errors[0]!r}"


@contextlib.contextmanager
def healthy_clients(
    pooler: PoolerProcess, table: str, count: int = 2, dsn_suffix: str = ""
) -> Iterator[HealthyGroup]:
    group = HealthyGroup()
    try:
        for _ in range(count):
            group.append(Healthy(pooler.dsn() + dsn_suffix, table))
        yield group
    finally:
        for h in group:
            h.finish()
    for h in group:
        assert not h.errors, f"healthy client {h.token} failed: {h.errors[0]!r}"
        assert h.finished, f"healthy client {h.token} completed nothing"


# --- fixtures -------------------------------------------------------------------------


@pytest.fixture
def proxy(cluster: LocalCluster) -> Iterator[FaultProxy]:
    proxy = FaultProxy(cluster.primary.host, cluster.primary.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
    assert not proxy.errors, f"the fault proxy itself failed: {proxy.errors}"


@dataclass
class Setup:
    cluster: LocalCluster
    proxy: FaultProxy
    pooler: PoolerProcess
    table: str


@pytest.fixture
def table(cluster: LocalCluster) -> Iterator[str]:
    with scratch_table(cluster, "token text NOT NULL, g int NOT NULL", "faults") as name:
        yield name


#: For what only session mode does: a server per client for its whole session (logins
#: and waits happen at connect time), and a reset query after every client.
SESSION_ONLY = pytest.mark.parametrize("mode", ["session"])


@pytest.fixture(params=["transaction", "session"])
def mode(request: pytest.FixtureRequest) -> str:
    """The pool mode: faults must be survived alike in both."""
    return str(request.param)


@pytest.fixture
def setup(
    cluster: LocalCluster, proxy: FaultProxy, start_pooler: StartPooler, table: str, mode: str
) -> Setup:
    """A pooler whose node 0 is the proxy in front of the primary."""
    standbys = [{"name": n.name, "host": n.host, "port": n.port} for n in cluster.nodes[1:]]
    pooler = start_pooler(
        backends=[{"name": "node0", "host": proxy.host, "port": proxy.port}, *standbys],
        # The faults are injected in front of the primary: every query goes there, and
        # no health check takes a fault meant for a client.
        load_balance={"enabled": False},
        health_check={"period": 0},
        pool={
            "size": POOL_SIZE,
            "checkout_timeout": 5,
            "connect_timeout": CONNECT_TIMEOUT,
            "mode": mode,
        },
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    return Setup(cluster, proxy, pooler, table)


# --- after the faults ---------------------------------------------------------------


def assert_recovered(s: Setup) -> None:
    """POOL_SIZE new clients are served at once, every server connection that came
    through the proxy is gone or idle, and the pooler logged no unhandled exception."""
    clients: list[Client] = []
    try:
        for i in range(POOL_SIZE):
            clients.append(Client(s.pooler.dsn(), f"after{i}"))
        pids = set()
        # Each holds a transaction open, so that each holds a server in either pool mode.
        for c in clients:
            c.call(lambda conn: conn.execute("BEGIN"))
            c.call(partial(select_rows, token=c.token, n=50))
            row = c.call(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone())
            assert row is not None
            pids.add(row[0])
        assert len(pids) == POOL_SIZE, f"{POOL_SIZE} clients at once shared servers: {pids}"
        for c in clients:
            c.call(lambda conn: conn.execute("COMMIT"))
    finally:
        for c in clients:
            c.close()

    relayed = [c.backend_pid for c in s.proxy.connections if c.kind == "session"]
    busy: list[tuple[Any, ...]] = []

    def settled() -> bool:
        with psycopg.connect(superuser_dsn(s.cluster), autocommit=True, connect_timeout=5) as su:
            rows = su.execute(
                "SELECT pid, state, left(query, 80) FROM pg_stat_activity WHERE pid = ANY(%s)",
                [relayed],
            ).fetchall()
        busy[:] = [r for r in rows if r[1] != "idle"]
        return not busy and len(rows) <= POOL_SIZE

    try:
        wait_until(settled, TIMEOUT, "server connections to be idle or gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; not idle: {busy}") from None
    log = s.pooler.log_text()
    alarms = [a for a in LOG_ALARMS if a in log]
    assert not alarms, f"the pooler logged {alarms}:\n{log[-4000:]}"


# --- the faults -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """A fault for the server connection of the client with ``token``, and what that
    client runs into it (given its connection, its token and the COPY table)."""

    fault: Callable[[bytes], Fault]
    run: Callable[[Conn, str, str], None]

    def op(self, token: str, table: str) -> Callable[[Conn], None]:
        """What the client with ``token`` runs, given its connection."""
        return lambda conn: self.run(conn, token, table)


CASES = {
    "reset-after-datarow": Case(
        lambda tok: Fault(Kind.RESET_AFTER_ROWS, match=tok, n=FAULT_ROW),
        lambda conn, tok, _: select_rows(conn, tok),
    ),
    "reset-mid-copy-in": Case(
        lambda tok: Fault(Kind.RESET_IN_COPY_IN, match=tok, n=2),
        lambda conn, tok, table: copy_in(conn, tok, table, 40000),
    ),
    "reset-after-parse": Case(
        lambda tok: Fault(Kind.RESET_AFTER_PARSE, match=tok),
        lambda conn, tok, _: select_prepared(conn, tok),
    ),
    "close-after-query": Case(
        lambda tok: Fault(Kind.CLOSE_AFTER_QUERY, match=tok),
        lambda conn, tok, _: select_rows(conn, tok),
    ),
    "half-datarow-then-reset": Case(
        lambda tok: Fault(Kind.TRUNCATE, match=tok, n=FAULT_ROW),
        lambda conn, tok, _: select_rows(conn, tok),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_proxy_fault_directly(
    cluster: LocalCluster, proxy: FaultProxy, table: str, name: str
) -> None:
    """The reference: psycopg straight to the proxy in front of PostgreSQL."""
    case = CASES[name]
    dsn = direct_dsn(cluster).replace(
        f"host={cluster.primary.host} port={cluster.primary.port}",
        f"host={proxy.host} port={proxy.port}",
    )
    with Client(dsn, "direct") as victim:
        fault = proxy.arm(case.fault(victim.token.encode()))
        expect_connection_failure(victim, case.op(victim.token, table))
    assert fault.fired.is_set()
    assert count_token_rows(cluster, table, victim.token) == 0
    with Client(dsn, "again") as again:
        again.call(lambda conn: select_rows(conn, again.token))
    assert proxy.connections[0].backend_pid, "the proxy did not see BackendKeyData"


@pytest.mark.parametrize("name", list(CASES))
def test_fault_through_pooler(setup: Setup, name: str) -> None:
    """The client whose server connection breaks gets a connection failure; two clients
    beside it keep getting their own rows; the pool then serves POOL_SIZE clients."""
    case = CASES[name]
    with healthy_clients(setup.pooler, setup.table) as healthy:
        with Client(setup.pooler.dsn(), "victim") as victim:
            fault = setup.proxy.arm(case.fault(victim.token.encode()))
            expect_connection_failure(victim, case.op(victim.token, setup.table))
            assert fault.fired.is_set(), "the fault did not strike"
        assert fault.ended.wait(TIMEOUT), "the proxy still holds the broken connection"
        healthy.keep_working_after(fault.fired_at)
        # The broken server's slot is free again while both healthy clients hold theirs.
        with Client(setup.pooler.dsn(), "again") as again:
            again.call(lambda conn: select_rows(conn, again.token))
            again.call(lambda conn: select_prepared(conn, again.token))
        assert count_token_rows(setup.cluster, setup.table, victim.token) == 0
    assert_recovered(setup)


def test_faults_one_after_another(setup: Setup) -> None:
    """Two clients meet every fault in turn, at the same time, reconnecting after each,
    while a third runs its queries: the pool (POOL_SIZE 3) never runs short, and no row
    reaches the wrong client."""
    s = setup
    failures: list[BaseException] = []

    def victim_rounds(who: str) -> None:
        try:
            for _ in range(2):
                for case in CASES.values():
                    with Client(s.pooler.dsn(), who) as victim:
                        token = victim.token
                        victim.call(partial(select_rows, token=token, n=20))
                        fault = s.proxy.arm(case.fault(token.encode()))
                        expect_connection_failure(victim, case.op(token, s.table))
                        assert fault.fired.is_set()
        except BaseException as exc:
            failures.append(exc)

    started = time.monotonic()
    with healthy_clients(s.pooler, s.table, count=1) as healthy:
        threads = [threading.Thread(target=victim_rounds, args=(f"v{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(4 * TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a victim thread hung"
        assert not failures, f"{len(failures)} victims failed; the first: {failures[0]!r}"
        healthy.keep_working_after(started, operations=8)
    assert_recovered(s)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and its key, for TLS between clients and the pooler."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl CLI")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.mark.parametrize("name", ["reset-after-datarow", "reset-mid-copy-in"])
def test_fault_under_a_tls_client(
    cluster: LocalCluster,
    proxy: FaultProxy,
    start_pooler: StartPooler,
    table: str,
    certificate: tuple[Path, Path],
    name: str,
) -> None:
    """The same, with the victim and the healthy clients on TLS to the pooler (closing
    a TLS transport under a client that is still writing is its own code path)."""
    cert, key = certificate
    pooler = start_pooler(
        backends=[{"name": "node0", "host": proxy.host, "port": proxy.port}],
        health_check={"period": 0},
        pool={"size": POOL_SIZE, "checkout_timeout": 5},
        tls={"cert": str(cert), "key": str(key)},
    )
    case = CASES[name]
    with (
        healthy_clients(pooler, table, dsn_suffix=" sslmode=require") as healthy,
        Client(pooler.dsn() + " sslmode=require", "victim") as victim,
    ):
        assert victim.conn is not None and victim.conn.pgconn.ssl_in_use
        fault = proxy.arm(case.fault(victim.token.encode()))
        expect_connection_failure(victim, case.op(victim.token, table))
        healthy.keep_working_after(fault.fired_at)
    assert_recovered(Setup(cluster, proxy, pooler, table))


STALL = 5.0


def backend_state(cluster: LocalCluster, pid: int) -> tuple[str, str] | None:
    """(state, query) of backend ``pid`` on the primary, None once it is gone."""
    with psycopg.connect(superuser_dsn(cluster), autocommit=True, connect_timeout=5) as su:
        row = su.execute(
            "SELECT state, query FROM pg_stat_activity WHERE pid = %s", [pid]
        ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def test_stalled_server_still_gets_the_cancel(setup: Setup) -> None:
    """The server's answers are held for STALL seconds while its client cancels: the
    CancelRequest still reaches PostgreSQL (the pooler sends it to node 0's address, here
    the proxy, which relays it), the query stops there at once, and once the answers
    flow the client gets 57014 and its session goes on, as with a slow network."""
    s = setup
    with healthy_clients(s.pooler, s.table) as healthy, Client(s.pooler.dsn(), "victim") as victim:
        fault = s.proxy.arm(Fault(Kind.STALL, match=victim.token.encode(), seconds=STALL))
        running = victim.submit(
            lambda conn: conn.execute(f"SELECT '{victim.token}', pg_sleep(30)").fetchall()
        )
        assert fault.claimed.wait(TIMEOUT)
        pid = fault.backend_pid

        def sleeping() -> bool:
            state = backend_state(s.cluster, pid)
            return state is not None and state[0] == "active" and "pg_sleep" in state[1]

        wait_until(sleeping, TIMEOUT, "the query to run on the primary")
        cancels = s.proxy.cancel_requests
        assert victim.conn is not None
        victim.conn.cancel_safe(timeout=5)
        wait_until(lambda: not sleeping(), STALL - 1, "the cancel to stop the query on the primary")
        assert s.proxy.cancel_requests == cancels + 1
        assert not running.done(), "the stall did not hold the answer"
        with pytest.raises(psycopg.errors.QueryCanceled):
            victim.wait(running, STALL + TIMEOUT)
        assert time.monotonic() - fault.claimed_at >= STALL - 0.5
        victim.call(lambda conn: select_rows(conn, victim.token))
        healthy.keep_working_after(fault.claimed_at)
    assert_recovered(s)


def test_server_stalled_for_good_client_gives_up(setup: Setup) -> None:
    """The server never answers; its client waits, cancels (which finds the backend idle:
    it has answered, the proxy holds the answer), then gives up and closes its socket.
    The pooler must close that server connection and free its slot; the others go on."""
    s = setup
    with healthy_clients(s.pooler, s.table) as healthy:
        with Client(s.pooler.dsn(), "victim") as victim:
            fault = s.proxy.arm(Fault(Kind.STALL, match=victim.token.encode()))
            running = victim.submit(lambda conn: select_rows(conn, victim.token))
            assert fault.claimed.wait(TIMEOUT)
            time.sleep(1.0)
            assert not running.done(), f"answered through a stalled server: {running!r}"
            assert victim.conn is not None
            victim.conn.cancel_safe(timeout=5)
            time.sleep(0.5)
            assert not running.done(), f"answered through a stalled server: {running!r}"
            victim.cut()
            with pytest.raises(psycopg.OperationalError):
                victim.wait(running)
        assert fault.ended.wait(TIMEOUT), "the pooler kept the stalled server connection"
        wait_until(
            lambda: backend_state(s.cluster, fault.backend_pid) is None,
            TIMEOUT,
            "the stalled server's backend to exit",
        )
        healthy.keep_working_after(fault.claimed_at)
        with Client(s.pooler.dsn(), "again") as again:
            again.call(lambda conn: select_rows(conn, again.token))
    assert_recovered(s)


# --- byte for byte: what a raw client gets, through the pooler and directly ------------


@dataclass(frozen=True)
class WireCase:
    kind: Kind
    #: The query, with ``{token}``; sent as a Query, or as Parse/Bind/Execute/Sync.
    sql: str = f"SELECT '{{token}}'::text, g FROM generate_series(1, {ROWS}) g"
    extended: bool = False
    n: int = FAULT_ROW
    message_type: bytes = b"D"
    #: Whether the pooler passes on a message cut short as it is. It cannot for the
    #: ones it rewrites (NotificationResponse carries a pid): those it holds back.
    same_cut: bool = True


WIRE_CASES = {
    "reset-after-datarow": WireCase(Kind.RESET_AFTER_ROWS),
    "half-datarow-then-reset": WireCase(Kind.TRUNCATE),
    "half-of-a-2MB-row-then-reset": WireCase(
        Kind.TRUNCATE, "SELECT '{token}' || repeat('x', 2000000)", n=1
    ),
    "close-after-query": WireCase(Kind.CLOSE_AFTER_QUERY),
    "reset-after-parse": WireCase(Kind.RESET_AFTER_PARSE, extended=True),
    "half-parameterstatus-then-reset": WireCase(
        Kind.TRUNCATE, "SET application_name = '{token}'", n=1, message_type=b"S"
    ),
    "half-notification-then-reset": WireCase(
        Kind.TRUNCATE,
        "LISTEN c_{token}; NOTIFY c_{token}, '{token}'",
        n=1,
        message_type=b"A",
        same_cut=False,
    ),
}


def broken_answer(
    proxy: FaultProxy, address: tuple[str, int], case: WireCase
) -> tuple[list[tuple[str, bytes]], str, bytes]:
    """Log in at ``address``, arm the fault for this client, send its query: the whole
    messages that came back, how the connection ended, and the bytes of a message cut
    short at the end (the token replaced by T, to compare)."""
    with Wire(address) as wire:
        assert wire.login()[-1].type == "Z"
        token = new_token("wire")
        fault = proxy.arm(
            Fault(case.kind, match=token.encode(), n=case.n, message_type=case.message_type)
        )
        sql = case.sql.format(token=token)
        if case.extended:
            wire.send(parse("", sql) + bind() + execute() + sync())
        else:
            wire.send(m.query(sql))
        msgs, end = wire.read_rest(quiet=3.0)
        assert fault.fired.is_set(), "the fault did not strike"
        leftover = bytes(wire._buf)  # a message cut short stays in the buffer
    if leftover[:1] == b"A" and len(leftover) >= 9:
        # The sender's pid: another backend directly than through the pooler.
        leftover = leftover[:5] + b"pid." + leftover[9:]
    for msg in msgs:
        if msg.type == "D":
            assert token.encode() in msg.body, f"a row of another client: {msg!r}"
    # The cut may fall inside the token: mask whatever of it arrived.
    cut = re.sub(rb"tok_wire_[0-9a-f]*", b"T", leftover)
    return [_comparable(msg, token) for msg in msgs], end, cut


def _comparable(msg: Msg, token: str) -> tuple[str, bytes]:
    return (msg.type, msg.body.replace(token.encode(), b"T"))


@pytest.mark.parametrize("name", list(WIRE_CASES))
def test_raw_client_sees_what_postgres_would_send(setup: Setup, name: str) -> None:
    """A raw client gets exactly what it gets when its own PostgreSQL connection breaks
    the same way (straight through the proxy): the same whole messages, the same half
    message, then the end of the connection; no ErrorResponse or ReadyForQuery added."""
    case = WIRE_CASES[name]
    s = setup
    direct = broken_answer(s.proxy, (s.proxy.host, s.proxy.port), case)
    with healthy_clients(s.pooler, s.table) as healthy:
        pooled = broken_answer(s.proxy, (s.pooler.host, s.pooler.port), case)
        healthy.keep_working_after(time.monotonic())
    assert pooled[1] == direct[1] == "closed"
    assert direct[2] or case.kind is not Kind.TRUNCATE, "no message was cut short"
    assert pooled[2] == direct[2] or (not case.same_cut and not pooled[2]), (
        f"the message cut short: {len(pooled[2])} bytes through the pooler, {len(direct[2])}"
        f" directly; they start {pooled[2][:12]!r} and {direct[2][:12]!r}"
    )
    assert pooled[0] == direct[0], (
        f"messages: through the pooler {len(pooled[0])}, directly {len(direct[0])};"
        f" the last ones {pooled[0][-3:]} vs {direct[0][-3:]}"
    )
    assert_recovered(s)


# --- the pooler's own traffic: the reset query after a client left ----------------------


@SESSION_ONLY
@pytest.mark.parametrize("stall", [False, True], ids=["closed", "stalled"])
def test_server_breaks_during_reset_query(setup: Setup, stall: bool) -> None:
    """A client leaves; the pooler's DISCARD ALL on its server is answered by a closed
    connection, or never (then the pooler gives up after pool.connect_timeout). That
    server must not come back to the pool: the next client gets a working one."""
    s = setup
    kind = Kind.STALL if stall else Kind.CLOSE_AFTER_QUERY
    with healthy_clients(s.pooler, s.table) as healthy:
        fault = s.proxy.arm(Fault(kind, match=b"DISCARD ALL"))
        with Client(s.pooler.dsn(), "leaving") as leaving:
            leaving.call(lambda conn: select_rows(conn, leaving.token))
        assert fault.claimed.wait(TIMEOUT), "no reset query after the client left"
        assert fault.ended.wait(CONNECT_TIMEOUT + TIMEOUT), "the pooler kept the broken server"
        with Client(s.pooler.dsn(), "next") as after:
            after.call(lambda conn: select_rows(conn, after.token))
            after.call(lambda conn: copy_out(conn, after.token))
        healthy.keep_working_after(fault.claimed_at)
    assert_recovered(s)


@SESSION_ONLY
@pytest.mark.parametrize("kind", [Kind.TRUNCATE, Kind.STALL], ids=["half-message", "stalled"])
def test_server_breaks_during_login(setup: Setup, kind: Kind) -> None:
    """The next server connection the pooler opens gets half of PostgreSQL's first
    message and a reset, or no answer at all. The client that needed it fails to
    connect (with an 08 error, or none), and its slot is free again."""
    s = setup
    with healthy_clients(s.pooler, s.table) as healthy:
        fault = s.proxy.arm(Fault(kind, nth_connection=1, message_type=b"R"))
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as info:
            Client(s.pooler.dsn(), "victim")
        assert fault.fired.is_set(), f"the fault did not strike: {info.value!r}"
        assert info.value.sqlstate is None or info.value.sqlstate.startswith("08"), info.value
        assert time.monotonic() - started < CONNECT_TIMEOUT + 3
        assert fault.ended.wait(TIMEOUT), "the pooler kept the broken server connection"
        healthy.keep_working_after(fault.fired_at)
        with Client(s.pooler.dsn(), "again") as again:
            again.call(lambda conn: select_rows(conn, again.token))
    assert_recovered(s)


# --- waiting clients, giving up, shutting down ---------------------------------------------


@SESSION_ONLY
def test_waiting_client_gets_the_broken_servers_slot(setup: Setup) -> None:
    """All POOL_SIZE servers are busy and a fourth client waits for one; when a server
    connection breaks, the waiting client gets a new one at once."""
    s = setup
    with healthy_clients(s.pooler, s.table) as healthy, Client(s.pooler.dsn(), "victim") as victim:
        waiting = ThreadPoolExecutor(1)
        served = waiting.submit(lambda: Client(s.pooler.dsn(), "waiting"))
        try:
            time.sleep(1.0)
            assert not served.done(), "a fourth client got a server from a pool of three"
            fault = s.proxy.arm(Fault(Kind.RESET_AFTER_ROWS, match=victim.token.encode(), n=1))
            expect_connection_failure(victim, partial(select_rows, token=victim.token))
            with served.result(TIMEOUT) as waiter:
                served_at = time.monotonic()
                waiter.call(partial(select_rows, token=waiter.token))
            assert served_at - fault.fired_at < 2.0, "the waiting client waited on"
        finally:
            waiting.shutdown(wait=False, cancel_futures=True)
        healthy.keep_working_after(fault.fired_at)
    assert_recovered(s)


@SESSION_ONLY
def test_client_gives_up_while_the_server_login_stalls(setup: Setup) -> None:
    """The server the pooler opens for a client never answers its startup packet, and the
    client gives up first (libpq's connect_timeout): its slot comes back once the
    pooler's connect_timeout ends the stalled login."""
    s = setup
    with healthy_clients(s.pooler, s.table) as healthy:
        fault = s.proxy.arm(Fault(Kind.STALL, nth_connection=1))
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(s.pooler.dsn(), connect_timeout=1)  # libpq waits 2 s at least
        assert fault.ended.wait(TIMEOUT), "the pooler kept the stalled server connection"
        healthy.keep_working_after(fault.claimed_at)
    assert_recovered(s)


def test_shutdown_with_a_stalled_server(setup: Setup) -> None:
    """SIGTERM while a server holds its answer: the pooler waits shutdown_timeout for the
    query, then ends the session as PostgreSQL's fast shutdown does (FATAL 57P01), and
    exits 0 without a traceback."""
    s = setup
    with Client(s.pooler.dsn(), "victim") as victim:
        fault = s.proxy.arm(Fault(Kind.STALL, match=victim.token.encode()))
        running = victim.submit(partial(select_rows, token=victim.token))
        assert fault.claimed.wait(TIMEOUT)
        time.sleep(0.3)
        stopping = time.monotonic()
        status = s.pooler.stop(signal.SIGTERM, timeout=SHUTDOWN_TIMEOUT + TIMEOUT)
        stopped = time.monotonic() - stopping
        with pytest.raises(psycopg.errors.AdminShutdown):
            victim.wait(running, 5)
    assert status == 0, f"the pooler exited with {status}"
    assert SHUTDOWN_TIMEOUT - 0.5 < stopped < SHUTDOWN_TIMEOUT + 3
    assert fault.ended.wait(TIMEOUT), "the stalled server connection outlived the pooler"
    log = s.pooler.log_text()
    alarms = [a for a in LOG_ALARMS if a in log]
    assert not alarms, f"the pooler logged {alarms}:\n{log[-4000:]}"
