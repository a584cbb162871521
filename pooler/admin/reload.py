"""RELOAD and SIGHUP: read the config file again and apply what can change live.

Live, without dropping a client: the backends (added, removed, weights, names),
``users`` (new logins check against them), ``admin_users``, ``admin``,
``auth.timeout``, the pool's timeouts, the load-balancing lag limits and fallback,
``shutdown_timeout``, and the query cache's ``ttl``, ``max_size`` and
``max_entry_size``. Every other key that changed keeps its running value and is
reported by name (a restart applies it).

Backends are matched by address (host, port, socket directory), not by position: a
node keeps its id for the life of the process. A backend with a new address is a new
node with the next id; one no longer listed is drained (``Pooler.remove_node``) and
shows ``unused``, its id never given to another server; one whose host or port changed
is both. The node that is the primary is not removed (switch over first, with
``PROMOTE NODE``): it is reported as waiting for a restart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pooler.cluster.nodes import NodeStatus
from pooler.config import Backend, Config, auth_secret_key, load_config
from pooler.config import QueryCache as QueryCacheConfig
from pooler.net.client_auth import Authenticator
from pooler.routing.balancer import Limits

if TYPE_CHECKING:
    from pooler.app import Pooler

log = logging.getLogger("pooler.admin")

#: Keys (dotted) applied live; a section's name stands for all of its keys.
LIVE = frozenset(
    {
        "users",
        "admin_users",
        "admin",
        "auth.timeout",
        "pool.connect_timeout",
        "pool.checkout_timeout",
        "load_balance.max_lag_bytes",
        "load_balance.max_lag_seconds",
        "load_balance.fallback_to_primary",
        "shutdown_timeout",
        # Applied to the running cache; turning it on or off needs a restart (it needs
        # the catalogs and the change stream, set up at the start).
        "query_cache.ttl",
        "query_cache.max_size",
        "query_cache.max_entry_size",
    }
)


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every key of a config (sections joined with dots) with its value."""
    for field in dataclasses.fields(value):
        current = getattr(value, field.name)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            yield from _leaves(current, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", current


def _live(key: str) -> bool:
    return key in LIVE or key.split(".", 1)[0] in LIVE


def _address(backend: Backend) -> tuple[str, int, str | None]:
    return backend.host, backend.port, backend.unix_socket_dir


@dataclass(frozen=True, slots=True)
class NodePlan:
    """What a reload does to the nodes (sans-IO: ``plan_nodes``)."""

    #: Node id -> its backend now (a kept node may have a new weight or name).
    kept: dict[int, Backend]
    #: New nodes, in the config's order: they get the next ids.
    added: list[Backend]
    #: Nodes to drain.
    removed: list[int]
    #: Why some of the change waits for a restart, as keys.
    waiting: list[str]


def plan_nodes(
    nodes: Sequence[Backend],
    unused: Collection[int],
    wanted: Sequence[Backend],
    primary: int | None,
) -> NodePlan:
    """Match the ``wanted`` backends to the running ``nodes`` (ids = positions; those in
    ``unused`` were removed before) by address."""
    live = {_address(backend): node for node, backend in enumerate(nodes) if node not in unused}
    kept: dict[int, Backend] = {}
    added: list[Backend] = []
    for backend in wanted:
        node = live.pop(_address(backend), None)
        if node is None:
            added.append(backend)
        else:
            kept[node] = backend
    removed = sorted(live.values())
    waiting: list[str] = []
    if primary in removed:
        # Drained, it would leave the writes nowhere to go.
        removed.remove(primary)
        kept[primary] = nodes[primary]
        waiting.append(f"backends (node {primary}, the primary, stays: switch over first)")
    return NodePlan(kept, added, removed, waiting)


def merged(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to run with (``old`` with ``new``'s live keys, its backends as they
    were: ``plan_nodes`` changes them) and the keys of ``new`` that differ but wait for
    a restart."""
    waiting = [
        key
        for (key, before), (_, after) in zip(_leaves(old), _leaves(new), strict=True)
        if before != after and key != "backends" and not _live(key)
    ]
    running = old
    for key in LIVE:
        section, _, name = key.partition(".")
        if not name:
            running = dataclasses.replace(running, **{section: getattr(new, section)})
        else:
            changed = dataclasses.replace(
                getattr(running, section), **{name: getattr(getattr(new, section), name)}
            )
            running = dataclasses.replace(running, **{section: changed})
    return running, sorted(waiting)


def _apply_nodes(app: Pooler, wanted: Sequence[Backend]) -> list[str]:
    """Add, remove and update nodes as ``wanted`` lists them; what waits for a restart."""
    unused = {state.node for state in app.cluster.view.nodes if state.status is NodeStatus.UNUSED}
    plan = plan_nodes(app.nodes, unused, wanted, app.cluster.view.primary)
    waiting = list(plan.waiting)
    if app.patroni is not None and (plan.added or plan.removed):
        # The Patroni follower maps a fixed set of members to nodes.
        return [*waiting, "backends (with failover.patroni_urls)"]
    for node, backend in plan.kept.items():
        app.nodes[node] = backend
    for node in plan.removed:
        app.remove_node(node)
        unused.add(node)
    for backend in plan.added:
        app.add_node(backend, backend.weight)
    if plan.added and not app.routing:
        # Reads stay on the primary: the pooler started without load balancing.
        waiting.append("backends (load balancing over the added nodes)")
    return waiting


def _apply_cache(app: Pooler, before: QueryCacheConfig, after: QueryCacheConfig) -> None:
    """The running cache takes the new limits; when they shrink, what it holds goes
    (entries are not sized again one by one; the cache fills again)."""
    cache = app.cache
    if cache is None or before == after:
        return
    store = cache.store
    store.ttl = cache.watch.ttl = after.ttl
    store.max_entry_size = after.max_entry_size
    store.max_size = store.stats.max_bytes = after.max_size
    if after.max_size < before.max_size or after.max_entry_size < before.max_entry_size:
        store.clear()


def reload(app: Pooler) -> list[str]:
    """Read ``app.config_path`` again and apply it; the keys left for a restart.
    Raises ConfigError (nothing changes) when the file is not a valid config."""
    assert app.config_path is not None
    new = load_config(app.config_path)
    running, waiting = merged(app.config, new)
    waiting += _apply_nodes(app, new.backends)
    _apply_cache(app, app.config.query_cache, running.query_cache)
    app.config = running = dataclasses.replace(running, backends=tuple(app.nodes))
    app.authenticator = Authenticator(running.auth.method, running.users, auth_secret_key(running))
    app.checkout_timeout = running.pool.checkout_timeout or None
    app.connect_timeout = running.pool.connect_timeout
    lb = running.load_balance
    unused = {state.node for state in app.cluster.view.nodes if state.status is NodeStatus.UNUSED}
    app.balancer.configure(
        [0.0 if node in unused else backend.weight for node, backend in enumerate(app.nodes)],
        Limits(lb.max_lag_bytes, lb.max_lag_seconds, lb.fallback_to_primary),
    )
    log.warning(
        "config reloaded",
        extra={"path": app.config_path, "restart_needed_for": ", ".join(waiting) or "nothing"},
    )
    return waiting
