"""What admin commands read and change: the running pooler, the client that asked, and
the pooler-wide admin state (paused and disabled databases)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pooler.admin.wire import AdminError
from pooler.cluster.nodes import NodeStatus

if TYPE_CHECKING:
    from pooler.app import Pooler
    from pooler.net.client import ClientConnection
    from pooler.net.server import ServerConnection

#: Databases a client names to reach the admin console (PgBouncer's name is an alias
#: for the exporters that use it).
ADMIN_DATABASES = frozenset({"pooler", "pgbouncer"})
#: In ``AdminState.paused``: every database (PAUSE without one) ...
ALL = "*"
#: ... and every database while a switchover (PROMOTE NODE) runs.
SWITCHOVER = "PROMOTE NODE"
#: What the admin database reports at login (drivers need an encoding and a version).
CONSOLE_PARAMETERS = (
    ("server_version", "15.0"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
)


@dataclass(slots=True)
class AdminState:
    """Pooler-wide state the admin commands keep."""

    #: When the pooler started (time.time()).
    started: float = field(default_factory=time.time)
    #: Databases whose new requests wait (PAUSE); ``"*"`` stands for all.
    paused: set[str] = field(default_factory=set)
    #: Databases that refuse new client connections (DISABLE).
    disabled: set[str] = field(default_factory=set)

    def is_paused(self, database: str) -> bool:
        """New requests of ``database``'s clients wait (for RESUME, or the end of a
        switchover)."""
        paused = self.paused
        return bool(paused) and (ALL in paused or SWITCHOVER in paused or database in paused)


@dataclass(frozen=True, slots=True)
class Context:
    """One admin command's view of the pooler: the app and the client that asked."""

    app: Pooler
    client: ClientConnection
    #: This session's PGPOOL SET values (pooler.admin.settings).
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        """The client's user is one of ``admin_users``."""
        return self.client.user in self.app.config.admin_users

    def require_admin(self, what: str) -> None:
        """Raise PostgreSQL's 42501 unless the client is an admin user."""
        if not self.is_admin:
            raise AdminError(
                "42501",
                f"permission denied to run {what}",
                hint="Only the users in admin_users may.",
            )

    def node(self, node: int) -> int:
        """A node id argument, checked against the configured backends."""
        count = len(self.app.config.backends)
        if node >= count:
            raise AdminError(
                "22023",
                f"node {node} does not exist",
                hint=f"Node ids are 0 to {count - 1}, as SHOW POOL_NODES lists them.",
            )
        if self.app.cluster.view.nodes[node].status is NodeStatus.UNUSED:
            raise AdminError(
                "22023",
                f"node {node} was removed from the config",
                hint="Its id is not reused: a backend listed again is a new node.",
            )
        return node


def clients(app: Pooler) -> list[ClientConnection]:
    """The logged-in client connections, oldest first."""
    from pooler.net.client import ClientConnection

    found = [c for c in app.clients.all if isinstance(c, ClientConnection) and c.logged_in]
    return sorted(found, key=lambda c: c.connected_at)


def servers(app: Pooler) -> list[tuple[ServerConnection, ClientConnection | None]]:
    """Every server connection: those serving a client with it, then the idle ones."""
    found: list[tuple[ServerConnection, ClientConnection | None]] = []
    for client in clients(app):
        if client.server is not None:
            found.append((client.server, client))
        # Session mode with routing: its other nodes' servers are its too.
        found.extend((server, client) for server in client.kept_servers())
    for pool in app.pools.pools.values():
        for idle in pool.idle.values():
            found.extend((server, None) for server in idle)  # type: ignore[misc]
    return found


def activity(client: ClientConnection) -> str:
    """What a client is doing, in pgpool-II's words."""
    server = client.server
    if server is None:
        return "Idle"
    if server.engine.requests.idle():
        return "Idle in transaction" if server.engine.status != b"I" else "Idle"
    return "Execute command"


def release_held(app: Pooler) -> None:
    """Requests held by PAUSE, KILL or a switchover go on where nothing holds them now."""
    for client in clients(app):
        client.paused_requests_go_on()
