"""Read/write routing through the pooler's port, on the shared primary + 2 standbys.

Which node answered is what ``inet_server_port()`` says (each node listens on its own
port); writes are checked by what the primary itself holds afterwards.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import direct_dsn, scratch_table, unique_name, wait_until
from wire import Wire, bind, connect, execute, message, parse, sync

from pooler.localcluster import LocalCluster

PORT_SQL = "SELECT inet_server_port()"
RETURNING = "RETURNING inet_server_port()"
#: Short checks, so that lag and replay positions are fresh in these tests.
FAST_CHECKS = {"period": 0.2, "timeout": 2, "retry_delay": 0.2}


def _ports(cluster: LocalCluster) -> list[int]:
    return [node.port for node in cluster.nodes]


def _port_of(conn: psycopg.Connection[tuple[int]], how: str) -> int:
    if how == "simple":
        row = psycopg.ClientCursor(conn).execute(PORT_SQL).fetchone()
    else:
        row = conn.execute(PORT_SQL, prepare=how == "prepared").fetchone()
    assert row is not None
    return int(row[0])


def _shares(counts: Counter[int], ports: list[int]) -> list[float]:
    total = sum(counts.values())
    return [counts[port] / total for port in ports]


@pytest.mark.parametrize("how", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("weights", [(1, 1, 1), (0, 1, 3)])
def test_reads_spread_by_weight(
    cluster: LocalCluster, start_pooler: StartPooler, how: str, weights: tuple[int, ...]
) -> None:
    backends = [
        {"name": node.name, "host": node.host, "port": node.port, "weight": weight}
        for node, weight in zip(cluster.nodes, weights, strict=True)
    ]
    pooler = start_pooler(backends=backends)
    counts: Counter[int] = Counter()
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        for _ in range(300):
            counts[_port_of(conn, how)] += 1
    wanted = [weight / sum(weights) for weight in weights]
    ports = _ports(cluster)
    for port, share, want in zip(ports, _shares(counts, ports), wanted, strict=True):
        if want == 0:
            assert counts[port] == 0, f"node on {port} has weight 0: {counts}"
        assert abs(share - want) <= 0.10, f"port {port}: {share:.2f} of reads, weight {want:.2f}"


@pytest.fixture
def routed(start_pooler: StartPooler) -> PoolerProcess:
    return start_pooler(health_check=FAST_CHECKS)


@pytest.fixture
def table(cluster: LocalCluster) -> Iterator[str]:
    with scratch_table(cluster, "id int PRIMARY KEY, v text") as name:
        yield name


def test_writes_and_transactions_run_on_the_primary(
    cluster: LocalCluster, routed: PoolerProcess, table: str
) -> None:
    primary = cluster.primary.port
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        row = conn.execute(
            f"INSERT INTO {table} VALUES (1, 'a') RETURNING inet_server_port()"
        ).fetchone()
        assert row == (primary,)
        # A transaction runs on one node from BEGIN to COMMIT, reads included.
        with conn.transaction():
            seen = {_port_of(conn, "extended") for _ in range(10)}
            conn.execute(f"INSERT INTO {table} VALUES (2, 'b')")
            seen |= {_port_of(conn, "simple") for _ in range(10)}
        assert seen == {primary}
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
        assert direct.execute(f"SELECT count(*) FROM {table}").fetchone() == (2,)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT nextval('{table}_seq'), inet_server_port()",
        "SELECT {table}_write(), inet_server_port()",
        "SELECT inet_server_port() FROM {table} FOR UPDATE",
        "WITH w AS (INSERT INTO {table} VALUES (100, 'w') RETURNING 1)"
        " SELECT inet_server_port() FROM w",
        "SELECT inet_server_port() FROM {table}_view",
        "/* pooler: primary */ SELECT inet_server_port()",
        "/*NO LOAD BALANCE*/ SELECT inet_server_port()",
        "SELECT inet_server_port() WHERE NOT pg_is_in_recovery()",
        "SELECT pg_is_in_recovery()::int, inet_server_port()",
        "SELECT unknown_function_{table}(), inet_server_port()",
    ],
)
def test_what_standbys_cannot_answer_runs_on_the_primary(
    cluster: LocalCluster, routed: PoolerProcess, table: str, sql: str
) -> None:
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
        direct.execute(f"CREATE SEQUENCE {table}_seq")
        direct.execute(
            f"CREATE FUNCTION {table}_write() RETURNS int LANGUAGE sql"
            f" AS $$ INSERT INTO {table} VALUES (200, 'f') RETURNING 1 $$"
        )
        direct.execute(f"CREATE VIEW {table}_view AS SELECT {table}_write() AS w")
        direct.execute(
            f"CREATE FUNCTION unknown_function_{table}() RETURNS int LANGUAGE sql AS 'SELECT 1'"
        )
        direct.execute(f"INSERT INTO {table} VALUES (1, 'x')")
    try:
        with psycopg.connect(routed.dsn(), autocommit=True) as conn:
            for _ in range(10):
                rows = conn.execute(sql.format(table=table)).fetchall()
                assert rows, sql
                assert {row[-1] for row in rows} == {cluster.primary.port}, sql
                conn.execute(f"DELETE FROM {table} WHERE id >= 100")
    finally:
        with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
            direct.execute(f"DROP VIEW IF EXISTS {table}_view")
            direct.execute(f"DROP FUNCTION IF EXISTS {table}_write()")
            direct.execute(f"DROP FUNCTION IF EXISTS unknown_function_{table}()")
            direct.execute(f"DROP SEQUENCE IF EXISTS {table}_seq")


def test_standby_hint_keeps_reads_off_the_primary(
    cluster: LocalCluster, routed: PoolerProcess
) -> None:
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        hinted = "/* pooler: standby */ SELECT inet_server_port()"
        ports = {conn.execute(hinted).fetchone()[0] for _ in range(50)}  # type: ignore[index]
    assert ports == {node.port for node in cluster.standbys}


def _answers(wire: Wire, count: int) -> list[list[str]]:
    """The DataRow values of the next ``count`` ReadyForQuery-ended answers."""
    out: list[list[str]] = []
    for _ in range(count):
        values = [
            value.decode() if value is not None else ""
            for msg in wire.read_until("Z")
            if msg.type == "D"
            for value in msg.row()
        ]
        out.append(values)
    return out


def test_pipelined_reads_and_writes_each_run_where_they_may(
    cluster: LocalCluster, routed: PoolerProcess, table: str
) -> None:
    """A write sent while a read runs on a standby waits for it, then runs on the
    primary; the answers come in order, and a read after the write sees it."""
    primary = str(cluster.primary.port)
    standbys = {str(node.port) for node in cluster.standbys}
    read_nodes: set[str] = set()
    for round_ in range(20):
        with connect((routed.host, routed.port)) as wire:
            wire.send(message("Q", b"SELECT inet_server_port(), pg_sleep(0.05)\0"))
            time.sleep(0.01)
            wire.send(
                message("Q", f"INSERT INTO {table} VALUES ({round_}, 'p') {RETURNING}\0".encode())
            )
            wire.send(message("Q", f"SELECT count(*) FROM {table} WHERE id = {round_}\0".encode()))
            read, write, count = _answers(wire, 3)
            read_nodes.add(read[0])
            assert write == [primary]
            assert count == ["1"]
    assert read_nodes & standbys, read_nodes


def _set_standby(node_sql: Callable[[str], object], delay: str) -> None:
    if delay:
        node_sql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
    else:
        node_sql("ALTER SYSTEM RESET recovery_min_apply_delay")
    node_sql("SELECT pg_reload_conf()")


@pytest.fixture
def delayed_standby(cluster: LocalCluster) -> Iterator[int]:
    """The last standby applies WAL 2 s late; its port."""
    node = cluster.standbys[-1]
    _set_standby(node.psql, "2s")
    try:
        yield node.port
    finally:
        _set_standby(node.psql, "")
        cluster.wait_streaming()


def test_a_client_reads_its_own_writes(
    cluster: LocalCluster,
    start_pooler: StartPooler,
    table: str,
    delayed_standby: int,
) -> None:
    pooler = start_pooler(health_check=FAST_CHECKS)
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as writer,
        psycopg.connect(pooler.dsn(), autocommit=True) as other,
    ):
        writer.execute(f"INSERT INTO {table} VALUES (0, 'first')")
        others: Counter[int] = Counter()
        for i in range(1, 201):
            writer.execute(f"INSERT INTO {table} VALUES ({i}, 'w')")
            row = writer.execute(f"SELECT v FROM {table} WHERE id = {i}").fetchone()
            assert row == ("w",), f"write {i} not seen by its writer"
            others[_port_of(other, "extended")] += 1
        # Another client's reads still use both standbys, the delayed one included.
        assert others[delayed_standby] > 0 and others[cluster.standbys[0].port] > 0, others
        # Once the delayed standby has replayed the writes (2 s on), the writer's reads
        # go back to it.
        deadline = time.monotonic() + 8
        ports: Counter[int] = Counter()
        while not ports[delayed_standby]:
            assert time.monotonic() < deadline, ports
            ports.update(_port_of(writer, "extended") for _ in range(20))
            time.sleep(0.1)


def test_a_set_is_not_a_write_its_reads_need_not_wait_for(
    cluster: LocalCluster,
    start_pooler: StartPooler,
    table: str,
    delayed_standby: int,
) -> None:
    """Read-your-writes waits only for data the client wrote: after a SET (or a read
    kept on the primary) its reads still go to a standby that has not replayed the
    primary's latest WAL, someone else's write."""
    pooler = start_pooler(health_check=FAST_CHECKS)
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
        psycopg.connect(direct_dsn(cluster), autocommit=True) as direct,
    ):
        # The delayed standby is 2 s behind this write (not the client's) from now on.
        direct.execute(f"INSERT INTO {table} VALUES (1, 'not through the pooler')")
        began = time.monotonic()
        conn.execute("SET work_mem = '7MB'")
        conn.execute("/* pooler: primary */ SELECT 1")
        ports = Counter(_port_of(conn, "extended") for _ in range(30))
        assert time.monotonic() - began < 1.5, "too slow to tell: the standby has caught up"
        assert ports[delayed_standby] > 0, ports


def test_a_standby_over_the_lag_limit_gets_no_reads(
    cluster: LocalCluster, start_pooler: StartPooler, table: str, delayed_standby: int
) -> None:
    pooler = start_pooler(
        health_check=FAST_CHECKS, load_balance={"max_lag_seconds": 1, "read_your_writes": False}
    )
    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as reader,
        psycopg.connect(direct_dsn(cluster), autocommit=True) as direct,
    ):
        # Writes the delayed standby holds back for 2 s: it is soon over 1 s behind.
        deadline = time.monotonic() + 3
        i = 0
        while time.monotonic() < deadline:
            direct.execute(f"INSERT INTO {table} VALUES ({i}, 'lag')")
            i += 1
            time.sleep(0.02)
        behind = Counter(_port_of(reader, "extended") for _ in range(100))
        assert behind[delayed_standby] == 0, behind
        # Writes stop; the standby catches up (2 s of delay, then the monitor's next
        # look, which a loaded machine makes later) and gets reads again.
        caught_up: Counter[int] = Counter()
        deadline = time.monotonic() + 12
        while not caught_up[delayed_standby] and time.monotonic() < deadline:
            time.sleep(0.5)
            caught_up = Counter(_port_of(reader, "extended") for _ in range(50))
        assert caught_up[delayed_standby] > 0, caught_up


def test_a_read_a_standby_refuses_runs_on_the_primary(
    cluster: LocalCluster, routed: PoolerProcess, table: str
) -> None:
    """A function declared STABLE that calls nextval(): the catalog says read, the
    standby refuses it (25006), the primary runs it; the client never sees the refusal."""
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
        direct.execute(f"CREATE SEQUENCE {table}_seq")
        direct.execute(
            f"CREATE FUNCTION {table}_next() RETURNS bigint STABLE LANGUAGE sql"
            f" AS $$ SELECT nextval('{table}_seq') $$"
        )
    sql = f"SELECT {table}_next(), inet_server_port()"
    try:
        with psycopg.connect(routed.dsn(), autocommit=True) as conn:
            for how in ("simple", "extended"):
                for _ in range(20):
                    cursor = psycopg.ClientCursor(conn) if how == "simple" else conn.cursor()
                    row = cursor.execute(sql).fetchone()
                    assert row is not None and row[1] == cluster.primary.port, how
        assert "a standby refused a read" in routed.log_text()
    finally:
        with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
            direct.execute(f"DROP FUNCTION IF EXISTS {table}_next()")
            direct.execute(f"DROP SEQUENCE IF EXISTS {table}_seq")


def test_a_read_only_transaction_runs_on_one_standby(
    cluster: LocalCluster, routed: PoolerProcess
) -> None:
    standbys = {node.port for node in cluster.standbys}
    used: Counter[int] = Counter()
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        simple = psycopg.ClientCursor(conn)
        for begin in ("BEGIN READ ONLY", "START TRANSACTION READ ONLY", "BEGIN"):
            for _ in range(10):
                simple.execute(begin)
                if begin == "BEGIN":
                    simple.execute("SET TRANSACTION READ ONLY")
                ports = {_port_of(conn, how) for how in ("extended", "simple") for _ in range(3)}
                simple.execute("COMMIT")
                assert len(ports) == 1, ports
                used[ports.pop()] += 1
        assert set(used) <= standbys | {cluster.primary.port}
        assert set(used) & standbys, used
        # Read only wherever it runs (a write attempt also keeps this client's next
        # reads on the primary until the standbys are known to have caught up).
        simple.execute("BEGIN READ ONLY")
        _port_of(conn, "extended")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TABLE no_writes (a int)")
        simple.execute("ROLLBACK")


def _batch(*texts: str) -> bytes:
    return b"".join(parse("", text) + bind() + execute() for text in texts) + sync()


def _batch_ports(wire: Wire, *texts: str) -> list[int]:
    wire.send(_batch(*texts))
    answers = wire.read_until("Z")
    assert not [msg for msg in answers if msg.type == "E"], answers
    rows = [msg.row() for msg in answers if msg.type == "D"]
    return [int(row[0]) for row in rows if row[0] is not None and row[0] != b"1"]


def test_a_read_only_begin_in_a_batch_runs_on_one_standby(
    cluster: LocalCluster, routed: PoolerProcess
) -> None:
    """JDBC's shape (setReadOnly(true), autocommit off): BEGIN READ ONLY goes in one
    extended batch with the transaction's first statement; the transaction runs on a
    standby and stays there to its end, and a plain BEGIN stays on the primary."""
    standbys = {node.port for node in cluster.standbys}
    used: Counter[int] = Counter()
    deadline = time.monotonic() + 10
    with connect((routed.host, routed.port)) as wire:
        # (Until the monitor has seen the standbys, reads stay on the primary.)
        while not set(used) & standbys and time.monotonic() < deadline:
            # (inet_server_port() names the node: where the transaction starts, a read
            # that may run anywhere places it.)
            assert _batch_ports(wire, "BEGIN READ ONLY", "SELECT 1") == []
            ports = _batch_ports(wire, PORT_SQL)
            ports += _batch_ports(wire, PORT_SQL, "COMMIT")
            assert len(set(ports)) == 1, ports
            used[ports[0]] += 1
        assert set(used) & standbys, used
        for _ in range(3):
            ports = _batch_ports(wire, "BEGIN", PORT_SQL, "COMMIT")
            assert ports == [cluster.primary.port]


def test_a_prepared_begin_read_only_keeps_its_transaction_where_it_started(
    cluster: LocalCluster, routed: PoolerProcess
) -> None:
    """psycopg prepares a BEGIN READ ONLY it executed 5 times: then its Bind, sent
    alone, starts the transaction on whichever node it goes to, and the transaction's
    next statements must follow it there (they waited for that node to be done, and it
    never was: the client hung)."""
    ports_seen: list[set[int]] = []

    def transactions() -> None:
        with psycopg.connect(routed.dsn(), autocommit=True) as conn:
            for _ in range(12):
                conn.execute("BEGIN READ ONLY")
                ports_seen.append({_port_of(conn, "extended") for _ in range(3)})
                conn.execute("COMMIT")

    thread = threading.Thread(target=transactions, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), f"hung after {len(ports_seen)} transactions"
    assert len(ports_seen) == 12 and all(len(ports) == 1 for ports in ports_seen), ports_seen


def test_a_serializable_session_reads_on_the_primary(
    cluster: LocalCluster, routed: PoolerProcess
) -> None:
    """default_transaction_isolation = serializable: a standby would refuse every read, so
    the client's reads stay on the primary until it resets it."""
    standbys = {node.port for node in cluster.standbys}
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        conn.execute("SET default_transaction_isolation = 'serializable'")
        assert {_port_of(conn, "extended") for _ in range(20)} == {cluster.primary.port}
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
        conn.execute("RESET default_transaction_isolation")
        assert {_port_of(conn, "extended") for _ in range(30)} & standbys
    assert "standby refused a read" not in routed.log_path.read_text()


def test_a_read_only_transaction_that_locks_runs_on_the_primary(
    cluster: LocalCluster, routed: PoolerProcess, table: str
) -> None:
    with (
        psycopg.connect(routed.dsn(), autocommit=True) as conn,
        psycopg.connect(direct_dsn(cluster), autocommit=True) as writer,
    ):
        simple = psycopg.ClientCursor(conn)
        simple.execute("BEGIN READ ONLY")
        simple.execute(f"LOCK TABLE {table} IN SHARE MODE")
        assert _port_of(conn, "simple") == cluster.primary.port
        writer.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            writer.execute(f"INSERT INTO {table} VALUES (1, 'blocked')")
        simple.execute("COMMIT")
        writer.execute(f"INSERT INTO {table} VALUES (1, 'free')")


def test_a_read_whose_standby_goes_away_runs_on_the_primary(
    cluster: LocalCluster, routed: PoolerProcess
) -> None:
    """The standby's backend is terminated while the read runs, before any answer: the
    client gets the primary's answer, not the standby's FATAL."""
    sql = "/* pooler: standby */ SELECT pg_sleep(0.5), inet_server_port()"
    stop = threading.Event()

    # Connections of its own, opened before the reads: a psql started per look can
    # take longer than the read itself on a loaded machine, and the read would finish
    # on the standby first.
    watchers = [
        psycopg.connect(
            f"host={node.host} port={node.port} user=postgres password=postgres dbname=app",
            autocommit=True,
        )
        for node in cluster.standbys
    ]

    def terminator() -> None:
        while not stop.is_set():
            for watcher in watchers:
                watcher.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE usename = 'app' AND query LIKE '%pg_sleep(0.5)%'"
                    " AND pid <> pg_backend_pid()"
                )
            time.sleep(0.01)

    thread = threading.Thread(target=terminator)
    thread.start()
    try:
        with psycopg.connect(routed.dsn(), autocommit=True) as conn:
            for _ in range(3):
                row = conn.execute(sql).fetchone()
                assert row is not None and row[1] == cluster.primary.port
    finally:
        stop.set()
        thread.join()
        for watcher in watchers:
            watcher.close()


@pytest.fixture
def two_schemas(cluster: LocalCluster) -> Iterator[tuple[str, str]]:
    """Schemas ``a`` and ``b`` (unique names), each with a table ``t``, a function ``f()``
    and a view ``v`` of its own: ``a``'s table is unlogged, its function writes (into
    ``a.log``) and its view calls it; ``b``'s are a permanent table, an immutable function
    and a plain view. Both are on every standby when it yields."""
    a, b = unique_name("spa"), unique_name("spb")
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
        direct.execute(
            f"CREATE SCHEMA {a}; CREATE SCHEMA {b};"
            f" CREATE UNLOGGED TABLE {a}.t (v int); INSERT INTO {a}.t VALUES (1);"
            f" CREATE TABLE {a}.log (v int);"
            f" CREATE FUNCTION {a}.f() RETURNS int VOLATILE LANGUAGE sql"
            f" AS $$ INSERT INTO {a}.log VALUES (1) RETURNING 1 $$;"
            f" CREATE VIEW {a}.v AS SELECT {a}.f() AS v;"
            f" CREATE TABLE {b}.t (v int); INSERT INTO {b}.t VALUES (2);"
            f" CREATE FUNCTION {b}.f() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 2';"
            f" CREATE VIEW {b}.v AS SELECT 2 AS v"
        )
    # (One transaction made them all.)
    replayed = f"SELECT to_regclass('{b}.v') IS NOT NULL"
    for node in cluster.standbys:
        dsn = f"host={node.host} port={node.port} user=app password=app dbname=app"
        with psycopg.connect(dsn, autocommit=True) as standby:
            wait_until(lambda: standby.execute(replayed).fetchone() == (True,), what="replay")
    try:
        yield a, b
    finally:
        with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
            direct.execute(f"DROP SCHEMA {a} CASCADE; DROP SCHEMA {b} CASCADE")


SEARCH_PATH_READS = [
    "SELECT v, inet_server_port() FROM t",
    "SELECT f(), inet_server_port()",
    "SELECT v, inet_server_port() FROM v",
]


def _read_ports(conn: psycopg.Connection[Any], times: int) -> tuple[set[int], set[int]]:
    """Run each of SEARCH_PATH_READS ``times`` times: the values and the ports seen."""
    values: set[int] = set()
    ports: set[int] = set()
    for _ in range(times):
        for sql in SEARCH_PATH_READS:
            row = conn.execute(sql).fetchone()
            assert row is not None
            values.add(row[0])
            ports.add(row[1])
    return values, ports


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_unqualified_names_resolve_along_the_clients_search_path(
    cluster: LocalCluster, start_pooler: StartPooler, two_schemas: tuple[str, str], mode: str
) -> None:
    """With a.t unlogged and b.t permanent, a.f writing and b.f immutable, a.v calling
    a.f and b.v plain: under search_path b the reads spread over the standbys, under a
    (SET, or the startup packet's options) they run on the primary, which answers them
    (no standby refused one first)."""
    a, b = two_schemas
    routed = start_pooler(
        pool={"mode": mode}, load_balance={"enabled": True}, health_check=FAST_CHECKS
    )
    primary = cluster.primary.port
    with psycopg.connect(routed.dsn(), autocommit=True) as conn:
        conn.execute(f"SET search_path = {b}")
        values, ports = _read_ports(conn, 10)
        assert values == {2} and ports - {primary}, ports
        explained: dict[str, str] = dict(conn.execute("EXPLAIN ROUTE SELECT f()").fetchall())
        assert explained["route"] == "read"
        assert explained["search path"] == f"pg_catalog, {b}"
        conn.execute(f"SET search_path = {a}, {b}")
        assert _read_ports(conn, 5) == ({1}, {primary})
    with psycopg.connect(routed.dsn(), autocommit=True, options=f"-c search_path={a}") as conn:
        assert _read_ports(conn, 5) == ({1}, {primary})
        conn.execute("SET search_path = DEFAULT")
        assert _read_ports(conn, 1) == ({1}, {primary})
    with psycopg.connect(routed.dsn(), autocommit=True, options=f"-c search_path={b}") as conn:
        values, ports = _read_ports(conn, 10)
        assert values == {2} and ports - {primary}, ports
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
        # f() once and v once per round, a's rounds only.
        assert direct.execute(f"SELECT count(*) FROM {a}.log").fetchone() == (22,)
    assert "a standby refused a read" not in routed.log_text()


def test_prepared_statements_follow_a_search_path_change(
    cluster: LocalCluster, start_pooler: StartPooler, two_schemas: tuple[str, str]
) -> None:
    """Statements prepared under one search_path are planned again by PostgreSQL under
    the next: classified again, their reads go where the new path lets them run."""
    a, b = two_schemas
    routed = start_pooler(
        pool={"mode": "transaction"}, load_balance={"enabled": True}, health_check=FAST_CHECKS
    )
    primary = cluster.primary.port
    with psycopg.connect(routed.dsn(), autocommit=True, prepare_threshold=0) as conn:
        conn.execute(f"SET search_path = {a}, {b}")
        assert _read_ports(conn, 3) == ({1}, {primary})
        conn.execute(f"SET search_path = {b}")
        # (Once the standbys replayed what f() wrote: the client reads its writes.)
        wait_until(lambda: bool(_read_ports(conn, 1)[1] - {primary}), what="a read on a standby")
        values, ports = _read_ports(conn, 10)
        assert values == {2} and ports - {primary}, ports
        conn.execute(f"SET search_path = {a}, {b}")
        assert _read_ports(conn, 3) == ({1}, {primary})
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as direct:
        # f() once and v once per round under a.
        assert direct.execute(f"SELECT count(*) FROM {a}.log").fetchone() == (12,)
    assert "a standby refused a read" not in routed.log_text()
