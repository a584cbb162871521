"""pgpool-II 4.3's ``SHOW POOL_*`` views, from what the pooler knows.

A pgpool-II "process" is one client connection here, and a pool one server connection
pool per (node, database, user). Values the pooler does not keep are NULL rather than
made up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pooler import __version__
from pooler.admin.state import Context, activity, clients, servers
from pooler.admin.wire import Result, Value, columns
from pooler.cluster.nodes import NodeRole, NodeState, NodeStatus

NODES = columns(
    "node_id",
    "hostname",
    "port",
    "status",
    "pg_status",
    "lb_weight",
    "role",
    "pg_role",
    "select_cnt",
    "load_balance_node",
    "replication_delay",
    "replication_state",
    "replication_sync_state",
    "last_status_change",
)
VERSION = columns("pool_version")
CACHE = columns(
    "num_cache_hits",
    "num_selects",
    "cache_hit_ratio",
    "num_hash_entries",
    "used_hash_entries",
    "num_cache_entries",
    "used_cache_entries_size",
    "free_cache_entries_size",
    "fragment_cache_entries_size",
    "decoding",
)
POOLS = columns(
    "pool_pid",
    "start_time",
    "client_connection_count",
    "pool_id",
    "backend_id",
    "database",
    "username",
    "backend_connection_time",
    "client_connection_time",
    "client_disconnection_time",
    "client_idle_duration",
    "majorversion",
    "minorversion",
    "pool_counter",
    "pool_backendpid",
    "pool_connected",
    "status",
)
PROCESSES = columns(
    "pool_pid",
    "start_time",
    "client_connection_count",
    "database",
    "username",
    "backend_connection_time",
    "pool_counter",
    "status",
)
HEALTH_CHECK_STATS = columns(
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "last_status_change",
    "total_count",
    "success_count",
    "fail_count",
    "skip_count",
    "retry_count",
    "average_retry_count",
    "max_retry_count",
    "max_duration",
    "min_duration",
    "average_duration",
    "last_health_check",
    "last_successful_health_check",
    "last_skip_health_check",
    "last_failed_health_check",
)
BACKEND_STATS = columns(
    "node_id",
    "hostname",
    "port",
    "status",
    "role",
    "select_cnt",
    "insert_cnt",
    "update_cnt",
    "delete_cnt",
    "ddl_cnt",
    "other_cnt",
    "panic_cnt",
    "fatal_cnt",
    "error_cnt",
)


def _stamp(when: float) -> str | None:
    """pgpool-II's timestamps: ``%Y-%m-%d %H:%M:%S`` local time; None before any."""
    if not when:
        return None
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _status(state: NodeState) -> str:
    """pgpool-II's status words: down for a node down or detached, unused for one a
    reload removed, quarantine for one kept out because it claims to be a second
    primary, waiting until its role is known."""
    if state.status is NodeStatus.UNUSED:
        return "unused"
    if state.status is not NodeStatus.UP:
        return "down"
    if state.role is NodeRole.FALSE_PRIMARY:
        return "quarantine"
    if state.role is NodeRole.UNKNOWN:
        return "waiting"
    return "up"


def _pg_status(state: NodeState) -> str:
    """What the node's last check said: a detached node is not checked; a held one
    answers (it waits to stream from the primary to take queries)."""
    if state.status in (NodeStatus.DETACHED, NodeStatus.UNUSED):
        return "unknown"
    return "up" if state.status is NodeStatus.UP or state.held else "down"


def _role(state: NodeState, primary: int | None) -> str:
    """The role the pooler gives the node: primary for the one writes go to; a node
    that claims to be one besides it (fenced, or detached at a switchover) is not."""
    if state.node == primary:
        return "primary"
    if primary is not None and state.role in (NodeRole.PRIMARY, NodeRole.FALSE_PRIMARY):
        return "standby"
    return str(state.role)


def _pg_role(state: NodeState) -> str:
    """The role the node itself reported at its last check (none when it is down or
    detached, and so not checked)."""
    if state.status is not NodeStatus.UP:
        return "unknown"
    if state.role is NodeRole.FALSE_PRIMARY:
        return "primary"
    return str(state.role)


def _weights(weights: Sequence[float]) -> list[str]:
    """Each node's share of the weights, as pgpool-II prints it."""
    total = sum(weights) or 1.0
    return [f"{weight / total:f}" for weight in weights]


def show_nodes(ctx: Context) -> Result:
    """SHOW POOL_NODES: one row per backend."""
    app = ctx.app
    view = app.cluster.view
    weights = _weights(app.balancer.weights)
    reads = set(ctx.client.read_nodes()) if app.routing else {view.primary}
    primary = view.nodes[view.primary] if view.primary is not None else None
    rows: list[list[Value]] = []
    for backend, state in zip(app.config.backends, view.nodes, strict=True):
        replica = None
        if primary is not None and backend.name is not None:
            replica = next((r for r in primary.replicas if r.name == backend.name), None)
        standby = state.role is not NodeRole.PRIMARY
        rows.append(
            [
                state.node,
                backend.host,
                backend.port,
                _status(state),
                _pg_status(state),
                weights[state.node],
                _role(state, view.primary),
                _pg_role(state),
                app.balancer.reads[state.node],
                "true" if state.node in reads else "false",
                state.lag_bytes if standby else 0,
                replica.state if replica is not None else None,
                replica.sync_state if replica is not None else None,
                _stamp(state.changed_at),
            ]
        )
    return Result(rows, "SELECT")


def show_version(ctx: Context) -> Result:
    """SHOW POOL_VERSION: one row, one column (pgpool-II sends two RowDescriptions;
    this is a normal result set)."""
    return Result([[f"{__version__} (pooler)"]], "SELECT")


def show_cache(ctx: Context) -> Result:
    """SHOW POOL_CACHE: pgpool-II's columns, then whether writes that bypass the pooler
    are seen; no row while the cache is off (nothing is made up)."""
    cache = ctx.app.cache
    if cache is None:
        return Result([])
    return Result([[value for _, value in cache.pool_cache_row()]])


def show_pools(ctx: Context) -> Result:
    """SHOW POOL_POOLS: one row per server connection, idle or serving a client."""
    rows: list[list[Value]] = []
    for pool_id, (server, client) in enumerate(servers(ctx.app)):
        key = server.pool_key
        rows.append(
            [
                client.pid if client is not None else None,
                _stamp(client.connected_at) if client is not None else None,
                None,
                pool_id,
                key.node,
                key.database,
                key.user,
                None,
                _stamp(client.connected_at) if client is not None else None,
                None,
                None,
                3,
                0,
                None,
                server.pid,
                int(client is not None),
                activity(client) if client is not None else "Idle",
            ]
        )
    return Result(rows, "SELECT")


def show_processes(ctx: Context) -> Result:
    """SHOW POOL_PROCESSES: one row per client connection."""
    rows: list[list[Value]] = []
    for client in clients(ctx.app):
        rows.append(
            [
                client.pid,
                _stamp(client.connected_at),
                1,
                client.database,
                client.user,
                None,
                None,
                activity(client),
            ]
        )
    return Result(rows, "SELECT")


def _node_rows(ctx: Context, *more: Callable[[NodeState], Value]) -> Result:
    """One row per node: id, host, port, status, role, then ``more`` of each node."""
    rows: list[list[Value]] = []
    for backend, state in zip(ctx.app.config.backends, ctx.app.cluster.view.nodes, strict=True):
        role = _role(state, ctx.app.cluster.view.primary)
        head: list[Value] = [state.node, backend.host, backend.port, _status(state), role]
        rows.append(head + [column(state) for column in more])
    return Result(rows, "SELECT")


def _null(state: NodeState) -> Value:
    return None


def show_health_check_stats(ctx: Context) -> Result:
    """SHOW POOL_HEALTH_CHECK_STATS: the monitor keeps each node's state, not counts of
    its checks: those columns are NULL."""
    return _node_rows(ctx, lambda state: _stamp(state.changed_at), *[_null] * 14)


def show_backend_stats(ctx: Context) -> Result:
    """SHOW POOL_BACKEND_STATS: reads routed to each node; the statement kinds and
    errors the pooler does not count per node are NULL."""
    reads = ctx.app.balancer.reads
    return _node_rows(ctx, lambda state: reads[state.node], *[_null] * 8)
