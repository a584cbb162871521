"""The pooler's own connections to the nodes (asyncpg), as the health-check user."""

from __future__ import annotations

import asyncpg

from pooler.config import Backend, HealthCheck

#: What a control connection's call raises when its node or the connection fails. An
#: asyncpg connection that got a FATAL while idle (its backend terminated, a shutdown)
#: raises InternalClientError ("another operation is in progress") on its next call
#: rather than an InterfaceError: a loop that does not catch it dies.
CONTROL_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


async def control_connect(
    backend: Backend, health: HealthCheck, application_name: str
) -> asyncpg.Connection:
    """A new connection to ``backend``; connect and login within ``health.timeout``."""
    return await asyncpg.connect(
        # asyncpg takes a directory for host as the Unix socket's directory.
        host=backend.unix_socket_dir or backend.host,
        port=backend.port,
        user=health.user,
        password=health.password,
        database=health.database,
        timeout=health.timeout,
        server_settings={"application_name": application_name},
    )
