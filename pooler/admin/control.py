"""Control commands of the admin database: PgBouncer's PAUSE, RESUME, DISABLE, ENABLE,
RECONNECT, KILL, RELOAD and SHUTDOWN, and node control (ATTACH NODE, DETACH NODE,
PROMOTE NODE)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from pooler.admin.reload import reload
from pooler.admin.state import ALL, SWITCHOVER, Context, clients, release_held, servers
from pooler.admin.wire import AdminError, Later, Result, notice
from pooler.cluster.promote import Failover, SwitchoverError
from pooler.config import ConfigError

if TYPE_CHECKING:
    from pooler.cluster.monitor import Monitor

log = logging.getLogger("pooler.admin")

#: Seconds between two looks at whether what a command waits for is done.
_POLL = 0.05
#: Seconds a switchover waits for the transactions running on the old primary to end,
#: and again for the new one to replay all of the old one's WAL.
SWITCHOVER_TIMEOUT = 30.0


def _done(ctx: Context, command: str, database: str | None = None) -> Result:
    log.info(
        "admin command",
        extra={"command": command, "user": ctx.client.user, "database": database or ALL},
    )
    return Result((), command)


def pause(ctx: Context, database: str = ALL) -> Later:
    """PAUSE [db]: new requests (and new sessions) wait from now on, until RESUME; the
    answer comes once no client of the database holds a server (PgBouncer's rule: in
    session mode, once its clients have left)."""
    ctx.app.admin.paused.add(database)
    done = _done(ctx, "PAUSE", database)

    async def servers_released() -> Result:
        while any(
            client.server is not None and database in (ALL, client.database)
            for client in clients(ctx.app)
        ):
            await asyncio.sleep(_POLL)
        return done

    return Later(asyncio.ensure_future(servers_released()))


def resume(ctx: Context, database: str = ALL) -> Result:
    """RESUME [db]: requests held by PAUSE or KILL go on."""
    state = ctx.app.admin
    if database == ALL:
        # A switchover's hold is the switchover's to lift.
        state.paused &= {SWITCHOVER}
    elif database not in state.paused:
        raise AdminError("55000", f'database "{database}" is not paused')
    else:
        state.paused.discard(database)
    release_held(ctx.app)
    return _done(ctx, "RESUME", database)


def disable(ctx: Context, database: str) -> Result:
    """DISABLE db: new client connections to the database are refused; those connected
    go on."""
    ctx.app.admin.disabled.add(database)
    return _done(ctx, "DISABLE", database)


def enable(ctx: Context, database: str) -> Result:
    """ENABLE db: the database takes new client connections again."""
    ctx.app.admin.disabled.discard(database)
    return _done(ctx, "ENABLE", database)


def reconnect(ctx: Context, database: str = ALL) -> Result:
    """RECONNECT [db]: server connections are closed, idle ones now and those serving a
    client once it releases them, so that the next requests open new ones."""
    app = ctx.app
    for key, pool in app.pools.pools.items():
        if database in (ALL, key.database):
            pool.close_idle()
    for server, client in servers(app):
        if client is not None and database in (ALL, server.pool_key.database):
            app.pools.get(server.pool_key).retiring.add(server)
    return _done(ctx, "RECONNECT", database)


def kill(ctx: Context, database: str) -> Result:
    """KILL db: its clients are disconnected at once (FATAL 57P01), its idle servers
    closed, and new requests wait for RESUME, as PgBouncer does."""
    ctx.app.admin.paused.add(database)
    for client in clients(ctx.app):
        if client.database == database and client is not ctx.client:
            client.shut_down()
    reconnect(ctx, database)
    return _done(ctx, "KILL", database)


def reload_config(ctx: Context) -> Result:
    """RELOAD: read the config file again, as SIGHUP does; what waits for a restart is
    said in a NOTICE."""
    if ctx.app.config_path is None:
        raise AdminError("55000", "the pooler was not started from a config file")
    try:
        waiting = reload(ctx.app)
    except ConfigError as exc:
        raise AdminError(
            "F0000", "the config file has problems; nothing changed", detail=str(exc)
        ) from exc
    _done(ctx, "RELOAD")
    if not waiting:
        return Result((), "RELOAD")
    detail = "Changed, applied at the next start: " + ", ".join(waiting)
    return Result((), "RELOAD", notice("config reloaded in part", detail))


def shutdown(ctx: Context) -> Result:
    """SHUTDOWN: as SIGTERM: stop accepting, let running queries finish for
    shutdown_timeout, then close everything."""
    os.kill(os.getpid(), signal.SIGTERM)
    return _done(ctx, "SHUTDOWN")


def _monitor(ctx: Context) -> Monitor:
    monitor = ctx.app.monitor
    if monitor is None:
        raise AdminError(
            "55000",
            "node control needs the cluster monitor",
            hint="Set health_check.period above 0.",
        )
    return monitor


def detach_node(ctx: Context, node: int) -> Result:
    """DETACH NODE n: the node gets no more queries and is not checked until ATTACH NODE;
    the primary is not detached (a switchover moves it first)."""
    monitor = _monitor(ctx)
    if node == ctx.app.cluster.view.primary:
        raise AdminError(
            "55000",
            f"node {node} is the primary",
            hint="Detach a standby; the primary would leave writes nowhere to go.",
        )
    monitor.detach(node)
    return _done(ctx, "DETACH NODE", str(node))


def attach_node(ctx: Context, node: int) -> Result:
    """ATTACH NODE n: a detached node is checked at once and takes queries again once
    the check finds it up."""
    _monitor(ctx).attach(node)
    return _done(ctx, "ATTACH NODE", str(node))


def promote_node(ctx: Context, node: int) -> Later:
    """PROMOTE NODE n: a switchover to standby n, answered when it is over: new requests
    wait, running transactions on the primary end, n replays all of the primary's WAL,
    the old primary is detached (fenced until ATTACH NODE, once rebuilt as a standby), n
    is promoted and the other standbys follow it; then the requests go on, to the new
    primary. A switchover that fails says why (55000), and requests go on as before."""
    app = ctx.app
    _monitor(ctx)
    failover = app.failover
    if failover is None:
        # With failover.patroni_urls there is none: Patroni decides who is primary.
        raise AdminError(
            "55000",
            "PROMOTE NODE is not available: Patroni decides which node is primary",
            hint="Use patronictl switchover; the pooler follows.",
        )
    if not app.cluster.view.nodes[node].is_standby:
        raise AdminError("55000", f"node {node} is not a standby that is up")
    if SWITCHOVER in app.admin.paused:
        raise AdminError("55006", "a switchover is under way")
    app.admin.paused.add(SWITCHOVER)
    log.warning("switchover started", extra={"node": node, "user": ctx.client.user})
    return Later(asyncio.ensure_future(_switchover(ctx, failover, node)))


async def _switchover(ctx: Context, failover: Failover, node: int) -> Result:
    app = ctx.app
    inflight = app.balancer.inflight
    try:
        await failover.switchover(node, lambda old: inflight[old] == 0, SWITCHOVER_TIMEOUT)
    except SwitchoverError as exc:
        log.error("switchover failed; requests go on", extra={"node": node, "why": str(exc)})
        raise AdminError("55000", f"switchover failed: {exc}") from exc
    finally:
        app.admin.paused.discard(SWITCHOVER)
        release_held(app)
    return _done(ctx, "PROMOTE NODE", str(node))
