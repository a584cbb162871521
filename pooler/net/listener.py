"""The listening socket and what all client sessions share."""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from collections.abc import Coroutine
from typing import Any

from pooler.config import Config, auth_secret_key
from pooler.net.backend import Credentials, LoginError, NodeAddress, ServerConnection
from pooler.net.client_auth import Authenticator
from pooler.net.session import ClientSession
from pooler.pool import Opener, ParamKey, PooledServer, PoolKey, PoolManager
from pooler.protocol import messages as m
from pooler.protocol.codec import frontend_limits

log = logging.getLogger("pooler")

_PID_BITS = 24


class KeyAllocator:
    """BackendKeyData for clients: a pooler-made pid and a random secret key.

    The top bits of the pid name the worker process, so that once several workers share
    a port, the one that receives a CancelRequest can tell whose client it is for.
    """

    def __init__(self, worker: int = 0) -> None:
        self._base = (worker & 0x7F) << _PID_BITS
        self._next = secrets.randbelow(1 << _PID_BITS)

    def allocate(self, taken: dict[int, ClientSession]) -> tuple[int, int]:
        """A pid not in ``taken`` and a fresh key."""
        while True:
            self._next = (self._next + 1) & ((1 << _PID_BITS) - 1)
            pid = self._base | self._next
            if pid and pid not in taken:
                return pid, secrets.randbits(32) - (1 << 31)


class Pooler:
    """The running pooler: listening socket, pools, sessions, cancel keys."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.frontend_limits = frontend_limits(config.limits.max_message_size)
        self.pools = PoolManager(config.pool.size)
        self.addresses = [NodeAddress(b.host, b.port, b.unix_socket_path) for b in config.backends]
        self.authenticator = Authenticator(
            config.auth.method, config.users, auth_secret_key(config)
        )
        self.ssl_context = _ssl_context(config)
        reset = config.pool.reset_query
        self.reset_query = m.query(reset) if reset else None
        self.checkout_timeout = config.pool.checkout_timeout or None
        self.connect_timeout = config.pool.connect_timeout
        self.sessions: set[ClientSession] = set()
        self.by_pid: dict[int, ClientSession] = {}
        #: Real pid of each attached server -> its client's pid, for notifications.
        self.server_pids: dict[int, int] = {}
        self.admitted = 0
        self._keys = KeyAllocator()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._janitor_task: asyncio.Task[None] | None = None

    # --- sessions -------------------------------------------------------------------

    def primary_node(self) -> int:
        """The node that takes writes (node 0 until the cluster monitor exists)."""
        return 0

    def admit(self, session: ClientSession) -> bool:
        """Count a client that sent its startup message; False when over max_clients."""
        if self.admitted >= self.config.pool.max_clients:
            return False
        self.admitted += 1
        session.counted = True
        return True

    def register(self, session: ClientSession) -> tuple[int, int]:
        """Give ``session`` its BackendKeyData."""
        pid, key = self._keys.allocate(self.by_pid)
        self.by_pid[pid] = session
        return pid, key

    def forget(self, session: ClientSession) -> None:
        """A session closed."""
        self.sessions.discard(session)
        if session.counted:
            session.counted = False
            self.admitted -= 1
        if self.by_pid.get(session.pid) is session:
            del self.by_pid[session.pid]

    def cancel(self, pid: int, key: int) -> None:
        """A CancelRequest: relayed at once if it names a live session with its key."""
        session = self.by_pid.get(pid)
        if session is not None and secrets.compare_digest(
            key.to_bytes(4, "big", signed=True), session.key.to_bytes(4, "big", signed=True)
        ):
            session.cancel()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def server_opener(self, user: str, database: str, creds: Credentials) -> Opener:
        """How to open a server connection for this client when its pool needs one."""
        node = self.primary_node()
        address = self.addresses[node]
        pool_key = PoolKey(node, database, user)
        timeout = self.connect_timeout

        async def open_server(params: ParamKey) -> PooledServer:
            server = ServerConnection(address, pool_key, params)
            try:
                await address.connect(lambda: server, timeout)
                await asyncio.wait_for(server.login(user, database, creds), timeout)
            except (OSError, TimeoutError) as exc:
                server.close()
                reason = f"could not connect to server {address}: {exc or 'timeout'}"
                raise LoginError(reason, m.error_response("FATAL", "08006", reason)) from exc
            except BaseException:
                server.close()
                raise
            return server

        return open_server

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the listening socket; raises OSError if it cannot."""
        loop = asyncio.get_running_loop()
        listen = self.config.listen
        self._server = await loop.create_server(
            lambda: ClientSession(self), listen.host, listen.port, backlog=4096
        )
        if self.config.pool.idle_timeout:
            self._janitor_task = loop.create_task(self._janitor(self.config.pool.idle_timeout))
        log.info(
            "listening",
            extra={"host": listen.host, "port": listen.port, "mode": self.config.pool.mode},
        )

    async def _janitor(self, idle_timeout: float) -> None:
        """Close server connections unused for ``idle_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(idle_timeout / 2, 30.0))
            self.pools.close_expired(loop.time() - idle_timeout)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let running queries finish for ``timeout`` s, then close all."""
        if self._server is not None:
            self._server.close()
        for session in list(self.sessions):
            session.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.sessions and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            session.shut_down()
        # Let resets of servers released just now finish, then close what is idle.
        if self._janitor_task is not None:
            self._janitor_task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)
        self.pools.close_idle()
        log.info("shut down")


def _ssl_context(config: Config) -> ssl.SSLContext | None:
    if config.tls.cert is None or config.tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls.cert, config.tls.key)
    return context
