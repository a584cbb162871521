"""PgBouncer 1.18's ``SHOW`` views in the admin database, from what the pooler knows.

PgBouncer's pools are per (database, user); the pooler's are per node as well, so a
PgBouncer row sums a (database, user)'s pools over the nodes. What the pooler does not
keep is NULL, never made up.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pooler import __version__
from pooler.admin.periods import Averages
from pooler.admin.state import ADMIN_DATABASES, Context, clients, servers
from pooler.admin.wire import INT4, NUMERIC, Result, Value, columns

if TYPE_CHECKING:
    from pooler.net.client import ClientConnection
    from pooler.net.server import ServerConnection

_SOCKET_TYPES = {"port": INT4, "local_port": INT4, "wait": INT4, "wait_us": INT4}
_SOCKET_TYPES |= {"close_needed": INT4, "remote_pid": INT4}
SOCKETS = columns(
    "type",
    "user",
    "database",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    types=_SOCKET_TYPES,
)
_POOL_COUNTS = (
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
)
POOLS = columns(
    "database", "user", *_POOL_COUNTS, "pool_mode", types=dict.fromkeys(_POOL_COUNTS, INT4)
)
_STATS = (
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
)
STATS = columns("database", *_STATS, types=dict.fromkeys(_STATS, NUMERIC))
_DATABASE_NUMBERS = (
    *("port", "pool_size", "min_pool_size", "reserve_pool"),
    *("max_connections", "current_connections", "paused", "disabled"),
)
DATABASES = columns(
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "pool_mode",
    "max_connections",
    "current_connections",
    "paused",
    "disabled",
    types=dict.fromkeys(_DATABASE_NUMBERS, INT4),
)
CONFIG = columns("key", "value", "default", "changeable")
VERSION = columns("version")
USERS = columns("name", "pool_mode")
LISTS = columns("list", "items", types={"items": INT4})
# Keys whose values are secrets: never shown.
_SECRET_WORDS = ("password", "secret", "users")


def _stamp(when: float) -> str:
    """PgBouncer's timestamps."""
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))


def _address(transport: Any, name: str) -> tuple[str | None, int | None]:
    peer = transport.get_extra_info(name) if transport is not None else None
    if isinstance(peer, tuple):
        return str(peer[0]), int(peer[1])
    return ("unix", None) if peer is not None else (None, None)


def _client_row(client: ClientConnection) -> list[Value]:
    addr, port = _address(client.transport, "peername")
    local_addr, local_port = _address(client.transport, "sockname")
    server = client.server
    tls = "TLS" if client.transport.get_extra_info("sslcontext") is not None else ""
    return [
        "C",
        client.user,
        client.database,
        "active" if server is not None or not client.engine.waiting() else "waiting",
        addr,
        port,
        local_addr,
        local_port,
        _stamp(client.connected_at),
        None,
        0,
        0,
        0,
        f"{id(client):x}",
        f"{id(server):x}" if server is not None else "",
        0,
        tls,
        client.application_name,
    ]


def show_clients(ctx: Context) -> Result:
    """SHOW CLIENTS: one row per logged-in client connection."""
    return Result([_client_row(client) for client in clients(ctx.app)])


def _server_row(server: ServerConnection, client: ClientConnection | None) -> list[Value]:
    local_addr, local_port = _address(server.transport, "sockname")
    key = server.pool_key
    return [
        "S",
        key.user,
        key.database,
        "active" if client is not None else "idle",
        server.address.host,
        server.address.port,
        local_addr,
        local_port,
        None,
        None,
        0,
        0,
        0,
        f"{id(server):x}",
        f"{id(client):x}" if client is not None else "",
        server.pid,
        "",
        dict(server.param_key).get("application_name", ""),
    ]


def show_servers(ctx: Context) -> Result:
    """SHOW SERVERS: one row per server connection, serving a client or idle."""
    return Result([_server_row(server, client) for server, client in servers(ctx.app)])


def _databases(ctx: Context) -> list[str]:
    """Databases the pooler has pools or clients for, in name order."""
    names = {key.database for key in ctx.app.pools.pools}
    names |= {client.database for client in clients(ctx.app)}
    return sorted(names - ADMIN_DATABASES)


def show_pools(ctx: Context) -> Result:
    """SHOW POOLS: one row per (database, user), summed over the nodes."""
    app = ctx.app
    counts: dict[tuple[str, str], Counter[str]] = {}
    for key, pool in app.pools.pools.items():
        count = counts.setdefault((key.database, key.user), Counter())
        count["sv_idle"] += pool.idle_count
        count["sv_total"] += pool.total
    for client in clients(app):
        count = counts.setdefault((client.database, client.user), Counter())
        count["sv_active"] += len(client.kept_servers())
        if client.server is not None:
            count["cl_active"] += 1
            count["sv_active"] += 1
        elif client.engine.waiting():
            count["cl_waiting"] += 1
        else:
            count["cl_active"] += 1
    rows: list[list[Value]] = []
    for (database, user), count in sorted(counts.items()):
        if database in ADMIN_DATABASES:
            continue
        login = max(count["sv_total"] - count["sv_idle"] - count["sv_active"], 0)
        rows.append(
            [
                database,
                user,
                count["cl_active"],
                count["cl_waiting"],
                0,
                0,
                count["sv_active"],
                0,
                0,
                count["sv_idle"],
                0,
                0,
                login,
                None,
                None,
                app.config.pool.mode,
            ]
        )
    return Result(rows)


def show_stats(ctx: Context) -> Result:
    """SHOW STATS: one row per database, summed over its pools since the start, then
    PgBouncer's averages over the last ``admin.stats_period`` (0 until one ended).
    Times are in microseconds: ``total_query_time`` while servers were answering,
    ``total_xact_time`` while they were in a transaction (or answering outside one),
    ``total_wait_time`` while clients waited for a server."""
    names = _databases(ctx)
    last = ctx.app.stats_periods.last
    rows: list[list[Value]] = []
    for name, t in ctx.app.stats_totals(names).items():
        a = last.get(name, Averages())
        rows.append(
            [
                name,
                *(round(value) for value in (t.xact_count, t.query_count, t.received, t.sent)),
                *(round(value) for value in (t.xact_time, t.query_time, t.wait_time)),
                *(a.xact_count, a.query_count, a.recv, a.sent),
                *(a.xact_time, a.query_time, a.wait_time),
            ]
        )
    return Result(rows)


def show_databases(ctx: Context) -> Result:
    """SHOW DATABASES: every database the pooler serves now goes to the primary
    (reads to the standbys too), with the pool settings that apply to it."""
    app = ctx.app
    config = app.config
    primary = config.backends[app.primary_node()]
    state = app.admin
    per_database: Counter[str] = Counter()
    for key, pool in app.pools.pools.items():
        per_database[key.database] += pool.total
    rows: list[list[Value]] = []
    for name in _databases(ctx):
        rows.append(
            [
                name,
                primary.host,
                primary.port,
                name,
                None,
                config.pool.size,
                0,
                0,
                config.pool.mode,
                0,
                per_database[name],
                int(state.is_paused(name)),
                int(name in state.disabled),
            ]
        )
    # The admin console itself, as PgBouncer lists its own.
    rows.append(
        ["pooler", None, config.listen.port, "pooler", None, 0, 0, 0, "statement", 0, 0, 0, 0]
    )
    return Result(rows)


def config_rows(ctx: Context) -> list[tuple[str, str | None, str | None]]:
    """Every setting in effect but secrets: key (sections joined with dots), value,
    default."""
    return list(_settings(ctx.app.config, None, ""))


def _settings(
    value: Any, default: Any, prefix: str
) -> Iterator[tuple[str, str | None, str | None]]:
    """The settings of a config section, nested sections flattened with dots."""
    for field in dataclasses.fields(value):
        name = f"{prefix}{field.name}"
        if any(word in field.name for word in _SECRET_WORDS):
            continue
        current = getattr(value, field.name)
        if dataclasses.is_dataclass(current):
            yield from _settings(current, _default_of(current), f"{name}.")
            continue
        initial = getattr(default, field.name, None) if default is not None else None
        yield name, _config_text(current), _config_text(initial)


def _default_of(section: Any) -> Any:
    """A config section with every key at its default, or None if it has none."""
    try:
        return type(section)()
    except TypeError:
        return None


def _config_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, frozenset | tuple | list):
        return ", ".join(str(item) for item in sorted(value, key=str))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def show_config(ctx: Context) -> Result:
    """SHOW CONFIG: every setting in effect but secrets; nothing changes live yet."""
    return Result([[key, value, default, "no"] for key, value, default in config_rows(ctx)])


def show_version(ctx: Context) -> Result:
    """SHOW VERSION: one row, as PgBouncer answers it."""
    return Result([[f"pooler {__version__}"]])


def show_users(ctx: Context) -> Result:
    """SHOW USERS: the configured users (no user has a pool mode of its own)."""
    return Result([[name, None] for name in sorted(ctx.app.config.users)])


def show_lists(ctx: Context) -> Result:
    """SHOW LISTS: counts of what the pooler holds (no DNS cache: those are 0)."""
    app = ctx.app
    logged_in = clients(app)
    used_servers = sum(pool.total for pool in app.pools.pools.values())
    rows: list[list[Value]] = [
        ["databases", len(_databases(ctx))],
        ["users", len(app.config.users)],
        ["pools", len(app.pools.pools)],
        ["free_clients", 0],
        ["used_clients", len(logged_in)],
        ["login_clients", len(app.clients) - len(logged_in)],
        ["free_servers", 0],
        ["used_servers", used_servers],
        ["dns_names", 0],
        ["dns_zones", 0],
        ["dns_queries", 0],
        ["dns_pending", 0],
    ]
    return Result(rows)
