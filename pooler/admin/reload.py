"""RELOAD and SIGHUP: read the config file again and apply what can change live.

Live, without dropping a client: the backends' weights, ``users`` (new logins check
against them), ``admin_users``, ``admin``, ``auth.timeout``, the pool's timeouts,
the load-balancing lag limits and fallback, and ``shutdown_timeout``. Every other key
that changed keeps its running value and is reported by name (a restart applies it);
so do backends added, removed or moved.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pooler.config import Config, auth_secret_key, load_config
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


def _moved(old: Config, new: Config) -> bool:
    """Backends added, removed, or anything of one changed but its weight."""
    if len(old.backends) != len(new.backends):
        return True
    return any(
        dataclasses.replace(a, weight=0.0) != dataclasses.replace(b, weight=0.0)
        for a, b in zip(old.backends, new.backends, strict=True)
    )


def merged(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The config to run with (``old`` with ``new``'s live keys) and the keys of
    ``new`` that differ but wait for a restart."""
    waiting = [
        key
        for (key, before), (_, after) in zip(_leaves(old), _leaves(new), strict=True)
        if before != after and key != "backends" and not _live(key)
    ]
    backends = old.backends
    if _moved(old, new):
        waiting.append("backends")
    else:
        backends = new.backends
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
    return dataclasses.replace(running, backends=backends), sorted(waiting)


def reload(app: Pooler) -> list[str]:
    """Read ``app.config_path`` again and apply it; the keys left for a restart.
    Raises ConfigError (nothing changes) when the file is not a valid config."""
    assert app.config_path is not None
    running, waiting = merged(app.config, load_config(app.config_path))
    app.config = running
    app.authenticator = Authenticator(running.auth.method, running.users, auth_secret_key(running))
    app.checkout_timeout = running.pool.checkout_timeout or None
    app.connect_timeout = running.pool.connect_timeout
    lb = running.load_balance
    app.balancer.configure(
        [backend.weight for backend in running.backends],
        Limits(lb.max_lag_bytes, lb.max_lag_seconds, lb.fallback_to_primary),
    )
    log.warning(
        "config reloaded",
        extra={"path": app.config_path, "restart_needed_for": ", ".join(waiting) or "nothing"},
    )
    return waiting
