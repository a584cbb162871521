"""Admin SQL through the pooler's port, on the shared primary + 2 standbys: pgpool-II's
SHOW POOL_* views on ordinary connections (simple, extended, prepared; session and
transaction pooling), and the admin database with PgBouncer's commands and node
control."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import yaml
from conftest import ClusterFactory, PoolerProcess, StartPooler
from prometheus_client.parser import text_string_to_metric_families
from wire import Wire, connect, message

from pooler import __version__
from pooler.localcluster import SUPERUSER, LocalCluster, find_free_ports

#: pgpool-II 4.3's, in its order (pool_process_reporting.c).
NODE_COLUMNS = (  # noqa: SIM905 (one line per name would hide the order)
    "node_id hostname port status pg_status lb_weight role pg_role select_cnt"
    " load_balance_node replication_delay replication_state replication_sync_state"
    " last_status_change"
).split()
SESSION_HELP = "off: this session's reads stay on the primary"
FAST_CHECKS = {"period": 0.2, "timeout": 2, "retry_delay": 0.2}


def _admin_dsn(pooler: PoolerProcess, cluster: LocalCluster, dbname: str = "pooler") -> str:
    return pooler.dsn(SUPERUSER, cluster.users[SUPERUSER], dbname)


def _answers(wire: Wire, ready: int) -> str:
    """The types of the messages up to the ``ready``-th ReadyForQuery, with its status."""
    types = ""
    for _ in range(ready):
        msgs = wire.read_until("Z")
        types += "".join(msg.type for msg in msgs) + msgs[-1].body.decode()
    return types


def _held_until(action: Callable[[], object], release: Callable[[], object]) -> None:
    """``action()`` waits until ``release()``, then is done."""
    done = threading.Event()

    def act() -> None:
        action()
        done.set()

    thread = threading.Thread(target=act)
    thread.start()
    assert not done.wait(1.0)
    release()
    assert done.wait(5.0)
    thread.join()


def _nodes(conn: psycopg.Connection[Any], how: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    if how == "simple":
        cur: psycopg.Cursor[Any] = psycopg.ClientCursor(conn)
        cur.execute("SHOW POOL_NODES")
    else:
        cur = conn.execute("show pool_nodes;", prepare=how == "prepared")
    assert cur.description is not None
    return [col.name for col in cur.description], cur.fetchall()


@pytest.mark.parametrize("how", ["simple", "extended", "prepared"])
def test_pool_nodes_on_any_connection(
    cluster: LocalCluster, pooler: PoolerProcess, how: str
) -> None:
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        for _ in range(3):  # prepared: the statement is parsed once, bound again
            names, rows = _nodes(conn, how)
        assert names == NODE_COLUMNS
        assert [row[0] for row in rows] == ["0", "1", "2"]
        assert [int(row[2]) for row in rows] == [node.port for node in cluster.nodes]
        assert [row[6] for row in rows] == ["primary", "standby", "standby"]
        assert [row[3] for row in rows] == ["up", "up", "up"]
        # Still an ordinary connection afterwards.
        assert conn.execute("SELECT 41 + 1").fetchone() == (42,)


def test_pool_nodes_after_owed_answers_and_in_a_transaction(pooler: PoolerProcess) -> None:
    with connect((pooler.host, pooler.port)) as wire:
        # Pipelined: the server still owes the first answer when the admin one is due.
        wire.send(
            message("Q", b"SELECT pg_sleep(0.3), 'first'\0")
            + message("Q", b"SHOW POOL_VERSION\0")
            + message("Q", b"BEGIN\0")
            + message("Q", b"SHOW POOL_VERSION\0")
            + message("Q", b"ROLLBACK\0")
        )
        assert _answers(wire, 5) == "TDCZITDCZICZTTDCZTCZI"


def test_extended_batch_answers_as_postgresql(pooler: PoolerProcess) -> None:
    with connect((pooler.host, pooler.port)) as wire:
        wire.send(
            message("P", b"s1\0SHOW POOL_VERSION\0\0\0")
            + message("D", b"Ss1\0")
            + message("B", b"\0s1\0\0\0\0\0\0\0")
            + message("D", b"P\0")
            + message("E", b"\0\0\0\0\0")
            + message("C", b"Ss1\0")
            + message("S")
        )
        assert _answers(wire, 1) == "1tT2TDC3ZI"


def test_select_cnt_counts_the_reads_each_node_served(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler()
    ports = [node.port for node in cluster.nodes]
    served: Counter[int] = Counter()
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        for _ in range(60):
            # Not prepared: psycopg would send the Parse as a unit of its own (with
            # its own Sync), which is routed, and counted, as a read too.
            row = conn.execute("SELECT inet_server_port()", prepare=False).fetchone()
            assert row is not None
            served[ports.index(row[0])] += 1
        _, rows = _nodes(conn, "extended")
    counts = [int(row[8]) for row in rows]
    assert served[1] > 0 and served[2] > 0
    assert counts == [served[0], served[1], served[2]]
    assert [row[9] for row in rows] == ["true", "true", "true"]


def test_admin_database_lists_its_own_client(cluster: LocalCluster, pooler: PoolerProcess) -> None:
    with (
        psycopg.connect(pooler.dsn(), application_name="the-app", autocommit=True),
        psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin,
    ):
        for how in ("simple", "extended"):
            cur: psycopg.Cursor[Any] = (
                psycopg.ClientCursor(admin) if how == "simple" else admin.cursor()
            )
            cur.execute("SHOW CLIENTS")
            assert cur.description is not None
            names = [col.name for col in cur.description]
            clients = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            apps = {(c["user"], c["database"], c["application_name"]) for c in clients}
            assert ("app", "app", "the-app") in apps
            assert (SUPERUSER, "pooler", "") in apps
        for command in ("SHOW POOLS", "SHOW SERVERS", "SHOW STATS", "SHOW DATABASES"):
            admin.execute(command)

        def stats() -> dict[str, Any]:
            cur = admin.execute("SHOW STATS")
            assert cur.description is not None
            names = [col.name for col in cur.description]
            rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
            return next(row for row in rows if row["database"] == "app")

        before = stats()
        with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
            for _ in range(10):
                conn.execute("SELECT 1")
        after = stats()
        for column in ("total_xact_count", "total_query_count"):
            assert after[column] - before[column] >= 10, column
        for column in ("total_received", "total_sent", "total_xact_time", "total_query_time"):
            assert after[column] > before[column], column
        # No stats period (60 s) has ended yet: PgBouncer shows 0 then.
        assert after["avg_query_time"] == 0
        config = {row[0]: row[1] for row in admin.execute("SHOW CONFIG")}
        assert config["pool.mode"] in ("transaction", "session")
        assert not any("password" in key or key == "users" for key in config)
        lists = {row[0]: row[1] for row in admin.execute("SHOW LISTS")}
        assert lists["used_clients"] == 2
        assert admin.execute("SHOW VERSION").fetchone() == (f"pooler {__version__}",)
        assert ("app", None) in admin.execute("SHOW USERS").fetchall()


def test_non_admin_users_get_42501(cluster: LocalCluster, start_pooler: StartPooler) -> None:
    pooler = start_pooler(admin={"restrict_show": True})
    with pytest.raises(psycopg.OperationalError, match='permission denied for database "pooler"'):
        psycopg.connect(pooler.dsn(dbname="pooler"))
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        for shown in ("SHOW POOL_NODES", "EXPLAIN ROUTE SELECT 1", "PGPOOL SHOW ALL"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(shown)
        # A session's own settings stay its own to change.
        conn.execute("PGPOOL SET load_balance_mode = off")
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with psycopg.connect(_admin_dsn(pooler, cluster, "app"), autocommit=True) as conn:
        assert len(conn.execute("SHOW POOL_NODES").fetchall()) == 3


@pytest.mark.parametrize(
    ("command", "position"),
    [("PAUSE a b", 9), ("DETACH NODE", 12), ("DETACH NODE x", 13), ("SHOW POOL_NODES 1", 17)],
)
def test_malformed_admin_commands_get_42601(
    cluster: LocalCluster, start_pooler: StartPooler, command: str, position: int
) -> None:
    pooler = start_pooler()
    dsn = _admin_dsn(pooler, cluster)
    with psycopg.connect(dsn, autocommit=True) as admin:
        with pytest.raises(psycopg.errors.SyntaxError) as caught:
            psycopg.ClientCursor(admin).execute(command)
        assert caught.value.diag.statement_position == str(position)
        with pytest.raises(psycopg.errors.SyntaxError):
            admin.execute("SELEC 1")
        assert admin.execute("SHOW POOL_VERSION").fetchone() is not None


def test_pause_holds_new_queries_until_resume(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler()
    with (
        psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        admin.execute("PAUSE app")
        _held_until(lambda: conn.execute("SELECT 1"), lambda: admin.execute("RESUME app"))
        # PAUSE answers once the transactions running have ended.
        conn.execute("BEGIN")
        conn.execute("SELECT 1")
        _held_until(lambda: admin.execute("PAUSE"), lambda: conn.execute("COMMIT"))
        # A new session waits too.
        _held_until(lambda: psycopg.connect(pooler.dsn()).close(), lambda: admin.execute("RESUME"))


def test_disable_refuses_new_connections_only(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler()
    with (
        psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        admin.execute("DISABLE app")
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            psycopg.connect(pooler.dsn())
        assert conn.execute("SELECT 2").fetchone() == (2,)
        disabled = [row for row in admin.execute("SHOW DATABASES") if row[0] == "app"]
        assert disabled[0][12] == 1
        admin.execute("ENABLE app")
        with psycopg.connect(pooler.dsn()) as again:
            assert again.execute("SELECT 3").fetchone() == (3,)


def test_detached_node_shows_down_and_gets_no_queries(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler(health_check=FAST_CHECKS)
    ports = [node.port for node in cluster.nodes]
    with (
        psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        admin.execute("DETACH NODE 2")
        _, rows = _nodes(admin, "extended")
        assert rows[2][3] == "down"
        assert rows[2][9] == "false"
        served = Counter(conn.execute("SELECT inet_server_port()").fetchone()[0] for _ in range(40))  # type: ignore[index]
        assert served[ports[2]] == 0 and served[ports[1]] > 0
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            admin.execute("DETACH NODE 0")
        admin.execute("ATTACH NODE 2")
        deadline = time.monotonic() + 5
        while _nodes(admin, "extended")[1][2][3] != "up":
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_promote_node_switches_over_without_losing_a_write(
    cluster_factory: ClusterFactory, start_pooler: StartPooler
) -> None:
    local = cluster_factory(synchronous=1)
    local.primary.psql("CREATE TABLE t (id int PRIMARY KEY)", user="app", dbname="app")
    ports = [node.port for node in local.nodes]
    pooler = start_pooler(local, health_check=FAST_CHECKS)
    with (
        psycopg.connect(_admin_dsn(pooler, local), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
            admin.execute("PROMOTE NODE 0")
        cur = psycopg.ClientCursor(admin).execute("PROMOTE NODE 1")
        assert cur.statusmessage == "PROMOTE NODE"
        # Held until node 1 is the primary, then written there.
        written = conn.execute("INSERT INTO t VALUES (2) RETURNING inet_server_port()")
        assert written.fetchone() == (ports[1],)
        _, rows = _nodes(admin, "extended")
        assert [(row[3], row[6], row[7]) for row in rows] == [
            ("down", "standby", "unknown"),
            ("up", "primary", "primary"),
            ("up", "standby", "standby"),
        ]
        assert conn.execute("SELECT count(*) FROM t /* pooler: primary */").fetchone() == (2,)
        deadline = time.monotonic() + 10
        while _nodes(admin, "extended")[1][2][11] != "streaming":
            assert time.monotonic() < deadline, "node 2 does not follow the new primary"
            time.sleep(0.2)


def test_kill_disconnects_a_database_and_holds_it_until_resume(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler()
    with psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin:
        victim = psycopg.connect(pooler.dsn(), autocommit=True)
        victim.execute("SELECT 1")
        assert any(row[1] == "app" for row in admin.execute("SHOW SERVERS"))
        admin.execute("KILL app")
        with pytest.raises(psycopg.errors.AdminShutdown):
            victim.execute("SELECT 1")
        victim.close()
        # Its idle servers are closed too.
        assert not any(row[1] == "app" for row in admin.execute("SHOW SERVERS"))
        _held_until(lambda: psycopg.connect(pooler.dsn()).close(), lambda: admin.execute("RESUME"))


def test_reconnect_closes_idle_servers(cluster: LocalCluster, start_pooler: StartPooler) -> None:
    pooler = start_pooler()
    with (
        psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        conn.execute("SELECT 1")
        before = {row[15] for row in admin.execute("SHOW SERVERS")}
        assert before
        admin.execute("RECONNECT app")
        assert not list(admin.execute("SHOW SERVERS"))
        conn.execute("SELECT 1")
        # One in use is closed once its client releases it.
        conn.execute("BEGIN")
        busy = conn.execute("SELECT pg_backend_pid()").fetchone()
        admin.execute("RECONNECT")
        conn.execute("COMMIT")
        after = {row[15] for row in admin.execute("SHOW SERVERS")}
        assert busy is not None and busy[0] not in after and not after & before
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_show_help_and_shutdown(cluster: LocalCluster, start_pooler: StartPooler) -> None:
    pooler = start_pooler()
    notices: list[str] = []
    with psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin:
        admin.add_notice_handler(lambda diag: notices.append(str(diag.message_detail)))
        cur = psycopg.ClientCursor(admin).execute("SHOW HELP")
        assert cur.statusmessage == "SHOW"
        assert "PROMOTE NODE" in notices[0]
        admin.execute("SHUTDOWN")
        assert pooler.proc.wait(10) == 0


def _explain(conn: psycopg.Connection[Any], sql: str) -> dict[str, str]:
    return {row[0]: row[1] for row in conn.execute(f"EXPLAIN ROUTE {sql}")}


def _named(explained: dict[str, str]) -> set[int]:
    """The nodes EXPLAIN ROUTE says may run the statement."""
    if "node" in explained:
        return {int(explained["node"].split(":")[0])}
    return {int(key.split()[1]) for key in explained if key.startswith("candidate ")}


def test_explain_route_names_where_the_statement_runs(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler()
    ports = [node.port for node in cluster.nodes]
    read = "SELECT inet_server_port()"
    write = "SELECT txid_current(), inet_server_port()"
    hinted = "/* pooler: primary */ SELECT inet_server_port()"

    def ran_on(conn: psycopg.Connection[Any], sql: str) -> int:
        row = conn.execute(sql, prepare=False).fetchone()
        assert row is not None
        return ports.index(row[-1])

    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        explained = _explain(conn, read)
        assert explained["target"] == "any: a plain read"
        assert _named(explained) == {0, 1, 2}
        assert "weighted random" in explained["rule"]
        assert explained["cache"].endswith("reads server state")
        assert {ran_on(conn, read) for _ in range(10)} <= _named(explained)

        explained = _explain(conn, write)
        assert explained["route"] == "write"
        assert explained["target"] == "primary: a write statement"
        assert explained["node"] == "0: the statement runs on the primary"
        assert ran_on(conn, write) == 0

        explained = _explain(conn, hinted)
        assert explained["target"] == "primary: its hint asks for the primary"
        assert ran_on(conn, hinted) == 0

        assert _explain(conn, "SELECT 1")["cache"] == (
            "not served or stored: the query cache is off (query_cache.enabled)"
        )

        conn.execute("BEGIN")
        ran_on(conn, write)
        explained = _explain(conn, read)
        assert explained["node"] == "0: inside a transaction, which runs on one node"
        assert ran_on(conn, read) == 0
        conn.execute("COMMIT")

        conn.execute("LISTEN admin_test")
        explained = _explain(conn, read)
        assert "pinned to its server" in explained["node"]
        assert {ran_on(conn, read)} == _named(explained)


def test_pgpool_set_keeps_this_sessions_reads_on_the_primary(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    pooler = start_pooler()
    ports = [node.port for node in cluster.nodes]

    def nodes_read(conn: psycopg.Connection[Any]) -> set[int]:
        rows = [conn.execute("SELECT inet_server_port()").fetchone() for _ in range(20)]
        return {ports.index(row[0]) for row in rows if row is not None}

    with (
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
        psycopg.connect(pooler.dsn(), autocommit=True) as other,
    ):
        shown = conn.execute("PGPOOL SHOW load_balance_mode").fetchall()
        assert shown == [("load_balance_mode", "on", SESSION_HELP)]
        psycopg.ClientCursor(conn).execute("PGPOOL SET load_balance_mode = off")
        assert nodes_read(conn) == {0}
        assert "PGPOOL SET" in _explain(conn, "SELECT 1")["target"]
        assert len(nodes_read(other)) > 1
        conn.execute("PGPOOL SET default_hint TO 'standby'")
        assert nodes_read(conn) == {0}
        conn.execute("PGPOOL RESET load_balance_mode")
        assert nodes_read(conn) <= {1, 2}
        conn.execute("PGPOOL RESET ALL")
        assert len(nodes_read(conn)) > 1
        assert {row[0]: row[1] for row in conn.execute("PGPOOL SHOW ALL")}["pool.size"] == "20"
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("PGPOOL SET default_hint = sideways")
        with pytest.raises(psycopg.errors.CantChangeRuntimeParam):
            conn.execute("PGPOOL SET pool.size = 3")
        with pytest.raises(psycopg.errors.UndefinedObject):
            conn.execute("PGPOOL SHOW nonsense")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("PGPOOL SET default_hint")


#: Metric samples by name, then by their labels (sorted pairs).
Scraped = dict[str, dict[tuple[tuple[str, str], ...], float]]


def _scrape(port: int) -> Scraped:
    """The metrics endpoint on ``port``, parsed as Prometheus parses it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: Scraped = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_metrics_endpoint_moves_with_the_traffic(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    port = find_free_ports(1)[0]
    pooler = start_pooler(metrics={"port": port})

    def scrape() -> Scraped:
        return _scrape(port)

    before = scrape()
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        served: Counter[str] = Counter()
        ports = [node.port for node in cluster.nodes]
        for _ in range(30):
            row = conn.execute("SELECT inet_server_port()", prepare=False).fetchone()
            assert row is not None
            served[str(ports.index(row[0]))] += 1
        with pytest.raises(psycopg.errors.DivisionByZero):
            # (On the primary: not a read to count.)
            conn.execute("SELECT 1/0 FOR UPDATE")
        # (LISTEN pins; SET may not, once settings follow a client.)
        conn.execute("LISTEN admin_test")
        after = scrape()

    def total(name: str, scraped: Scraped) -> float:
        return sum(scraped.get(name, {}).values())

    # (Counted as servers are given back: the pinned LISTEN's is not yet.)
    for name, least in (
        ("pooler_requests_total", 31),
        ("pooler_transactions_total", 31),
        ("pooler_client_bytes_received_total", 31 * 20),
        ("pooler_client_bytes_sent_total", 30 * 20),
        ("pooler_server_held_seconds_total", 1e-6),
    ):
        assert total(name, after) - total(name, before) >= least, name
    assert after["pooler_server_errors_total"][(("class", "22"),)] >= 1
    for node in ("0", "1", "2"):
        key = (("node", node),)
        assert after["pooler_reads_total"][key] - before["pooler_reads_total"][key] == served[node]
        assert after["pooler_node_up"][key] == 1
        assert key in after["pooler_replication_lag_bytes"]
    assert after["pooler_clients"][()] == 1
    assert sum(after["pooler_servers"].values()) >= 1
    assert after["pooler_pinned_clients"][(("reason", "listen"),)] == 1
    assert any(labels for labels in after["pooler_server_connections_opened_total"])
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)


def test_metrics_of_the_query_cache(cluster: LocalCluster, start_pooler: StartPooler) -> None:
    """Hits, misses, entries and bytes move with the traffic; no family while the cache
    is off."""
    port = find_free_ports(1)[0]
    pooler = start_pooler(
        metrics={"port": port},
        query_cache={"enabled": True, "ttl": 0},
        load_balance={"enabled": False},
    )
    before = _scrape(port)
    assert before["pooler_cache_entries"][()] == 0
    sql = "SELECT 'metrics of the query cache' AS probe"
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        deadline = time.monotonic() + 10
        # (Served once the change stream of the database is up.)
        while _scrape(port)["pooler_cache_hits_total"][()] == 0:
            assert time.monotonic() < deadline, "no hit"
            psycopg.ClientCursor(conn).execute(sql)
    after = _scrape(port)
    assert after["pooler_cache_misses_total"][()] >= 1
    assert after["pooler_cache_stores_total"][()] >= 1
    assert after["pooler_cache_entries"][()] >= 1
    assert 0 < after["pooler_cache_bytes"][()] <= after["pooler_cache_max_bytes"][()]
    off_port = find_free_ports(1)[0]
    start_pooler(metrics={"port": off_port})
    assert not any(name.startswith("pooler_cache") for name in _scrape(off_port))


def test_reload_changes_the_spread_and_names_what_waits(
    cluster: LocalCluster, start_pooler: StartPooler
) -> None:
    backends = [
        {"name": node.name, "host": node.host, "port": node.port, "weight": weight}
        for node, weight in zip(cluster.nodes, (1, 0, 0), strict=True)
    ]
    pooler = start_pooler(backends=backends)
    ports = [node.port for node in cluster.nodes]

    def nodes_read(conn: psycopg.Connection[Any]) -> set[int]:
        rows = [conn.execute("SELECT inet_server_port()").fetchone() for _ in range(30)]
        return {ports.index(row[0]) for row in rows if row is not None}

    def rewrite(weights: tuple[int, ...], **more: Any) -> None:
        config = yaml.safe_load(pooler.config_path.read_text())
        for backend, weight in zip(config["backends"], weights, strict=True):
            backend["weight"] = weight
        config.update(more)
        pooler.config_path.write_text(yaml.safe_dump(config))

    notices: list[str] = []
    with (
        psycopg.connect(_admin_dsn(pooler, cluster), autocommit=True) as admin,
        psycopg.connect(pooler.dsn(), autocommit=True) as conn,
    ):
        admin.add_notice_handler(lambda diag: notices.append(str(diag.message_detail)))
        assert nodes_read(conn) == {0}
        rewrite((0, 1, 1), pool={"size": 7})
        assert admin.execute("RELOAD").statusmessage == "RELOAD"
        assert notices == ["Changed, applied at the next start: pool.size"]
        assert nodes_read(conn) == {1, 2}
        rewrite((0, 0, 1))
        pooler.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while nodes_read(conn) != {2}:
            assert time.monotonic() < deadline, "SIGHUP did not reload"
        pooler.config_path.write_text("backends: nonsense\n")
        with pytest.raises(psycopg.errors.ConfigFileError):
            admin.execute("RELOAD")
        assert nodes_read(conn) == {2}
