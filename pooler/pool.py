"""Pools of server connections, one per (node, database, user).

Idle server connections are kept apart by the startup parameters they were opened with,
because RESET, RESET ALL and DISCARD ALL return a session to *those* values: a client
may only reuse a server whose startup parameters equal its own. ``size`` caps all the
server connections of a pool, whatever their parameters; a client that needs a set no
idle server has makes room by closing an idle server of another set, so nobody waits
next to idle connections it cannot use.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

ParamKey = tuple[tuple[str, str], ...]


class PooledServer(Protocol):
    """What the pool needs of a server connection."""

    param_key: ParamKey
    #: Loop time at which the server last went idle in its pool.
    idle_since: float

    def close(self) -> None:
        """Close the connection at once."""


class PoolKey(NamedTuple):
    """Which pool: node index, database and user. (A tuple: made and hashed for every
    transaction a pooled client runs, which a dataclass does in Python code.)"""

    node: int
    database: str
    user: str


#: Opens a server connection with the given startup parameters, with the credentials of
#: the client that asked (they differ in form, not in who logs in).
Opener = Callable[[ParamKey], Awaitable[PooledServer]]


@dataclass(slots=True)
class _Waiter:
    params: ParamKey
    opener: Opener
    future: asyncio.Future[PooledServer]


@dataclass(slots=True)
class PoolStats:
    """Counters for SHOW POOLS and metrics."""

    opened: int = 0
    closed: int = 0
    reused: int = 0
    waits: int = 0
    #: Requests answered (each Query, Sync and FunctionCall ends in a ReadyForQuery).
    queries: int = 0
    #: Transactions ended (ReadyForQuery back to idle).
    transactions: int = 0
    #: Bytes from clients to servers, and back.
    received: int = 0
    sent: int = 0
    #: Seconds clients held a server, and waited for one.
    held_seconds: float = 0.0
    wait_seconds: float = 0.0
    #: Seconds servers spent answering (from a request sent to an idle server to the
    #: ReadyForQuery that leaves it owing nothing), and in transactions (from the start
    #: of the first request to the ReadyForQuery back to idle).
    query_seconds: float = 0.0
    xact_seconds: float = 0.0


@dataclass(slots=True)
class ServerPool:
    """Server connections of one (node, database, user)."""

    key: PoolKey
    size: int
    idle: dict[ParamKey, list[PooledServer]] = field(default_factory=dict)
    total: int = 0
    waiters: deque[_Waiter] = field(default_factory=deque)
    stats: PoolStats = field(default_factory=PoolStats)
    #: What servers opened with each set of startup parameters reported at login
    #: (ParameterStatus), so that a client can log in without taking a server.
    reported: dict[ParamKey, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    #: Servers in use to close when they come back, not to reuse (admin RECONNECT).
    retiring: set[PooledServer] = field(default_factory=set)
    #: The node was removed: every server is closed when it comes back.
    retired: bool = False
    _opening: set[asyncio.Task[PooledServer]] = field(default_factory=set)

    @property
    def idle_count(self) -> int:
        """Idle connections of every parameter set."""
        return sum(len(servers) for servers in self.idle.values())

    async def checkout(
        self, params: ParamKey, opener: Opener, timeout: float | None = None
    ) -> PooledServer:
        """A server opened with ``params``: an idle one, a new one, or the next released.

        Raises whatever opening a connection raised, or TimeoutError after ``timeout``.
        """
        idle = self.idle.get(params)
        if idle:
            self.stats.reused += 1
            return idle.pop()
        if self.total >= self.size and not self._evict_idle():
            self.stats.waits += 1
            future: asyncio.Future[PooledServer] = asyncio.get_running_loop().create_future()
            waiter = _Waiter(params, opener, future)
            self.waiters.append(waiter)
            try:
                return await asyncio.wait_for(future, timeout)
            except BaseException:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
                elif future.done() and not future.cancelled() and future.exception() is None:
                    # Handed a server in the same tick we gave up: give it back.
                    self.checkin(future.result())
                raise
        return await self._open(params, opener)

    def take_idle(self, params: ParamKey) -> PooledServer | None:
        """An idle server opened with ``params`` at once, or None (then ``checkout``)."""
        idle = self.idle.get(params)
        if idle and not self.waiters:
            self.stats.reused += 1
            return idle.pop()
        return None

    def checkin(self, server: PooledServer) -> None:
        """Take back a server that is idle and reset (ReadyForQuery 'I' seen)."""
        if (self.retiring and server in self.retiring) or self.retired:
            self.discard(server)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if waiter.future.done():
                continue
            if waiter.params == server.param_key:
                self.stats.reused += 1
                waiter.future.set_result(server)
                return
            # The first in line needs other parameters: trade this server for one of
            # theirs, keeping the total within the cap.
            self._discard(server)
            self._open_for(waiter)
            return
        # Not the loop's clock: asyncio.get_running_loop() costs a getpid() system call
        # on every server returned.
        server.idle_since = time.monotonic()
        self.idle.setdefault(server.param_key, []).append(server)

    def discard(self, server: PooledServer) -> None:
        """Forget a server that is closed or unusable (not in the idle lists)."""
        self.retiring.discard(server)
        self._discard(server)
        self._serve_next_waiter()

    def remove_idle(self, server: PooledServer) -> bool:
        """Drop an idle server that died; True if it was idle here."""
        servers = self.idle.get(server.param_key)
        if servers and server in servers:
            servers.remove(server)
            if not servers:
                del self.idle[server.param_key]
            self._discard(server)
            self._serve_next_waiter()
            return True
        return False

    def close_idle(self) -> None:
        """Close every idle server (shutdown, or a node going away)."""
        for servers in list(self.idle.values()):
            for server in servers:
                server.close()
                self.total -= 1
                self.stats.closed += 1
        self.idle.clear()

    def close_expired(self, idle_before: float) -> None:
        """Close servers idle since before ``idle_before`` (``time.monotonic``)."""
        for params in list(self.idle):
            servers = self.idle[params]
            # Checked in at the end, handed out from the end: the oldest come first.
            while servers and servers[0].idle_since < idle_before:
                self._discard(servers.pop(0))
            if not servers:
                del self.idle[params]

    def _discard(self, server: PooledServer) -> None:
        server.close()
        self.total -= 1
        self.stats.closed += 1

    def _evict_idle(self) -> bool:
        for params, servers in self.idle.items():
            if servers:
                self._discard(servers.pop(0))
                if not servers:
                    del self.idle[params]
                return True
        return False

    def _serve_next_waiter(self) -> None:
        while self.waiters and self.total < self.size:
            waiter = self.waiters.popleft()
            if not waiter.future.done():
                self._open_for(waiter)

    def _open_for(self, waiter: _Waiter) -> None:
        task = asyncio.get_running_loop().create_task(self._open(waiter.params, waiter.opener))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

        def deliver(done: asyncio.Task[PooledServer]) -> None:
            if done.cancelled():
                return
            exc = done.exception()
            if waiter.future.done():
                if exc is None:
                    self.checkin(done.result())
                return
            if exc is not None:
                waiter.future.set_exception(exc)
            else:
                waiter.future.set_result(done.result())

        task.add_done_callback(deliver)

    async def _open(self, params: ParamKey, opener: Opener) -> PooledServer:
        self.total += 1
        try:
            server = await opener(params)
        except BaseException:
            self.total -= 1
            self._serve_next_waiter()
            raise
        self.stats.opened += 1
        return server


@dataclass(slots=True)
class PoolManager:
    """All pools, created on first use."""

    size: int
    pools: dict[PoolKey, ServerPool] = field(default_factory=dict)

    def get(self, key: PoolKey) -> ServerPool:
        """The pool for ``key``."""
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = ServerPool(key, self.size)
        return pool

    def close_idle(self) -> None:
        """Close every idle server of every pool."""
        for pool in self.pools.values():
            pool.close_idle()

    def close_idle_of(self, node: int) -> None:
        """Close every idle server of ``node`` (it went down or changed role)."""
        for key, pool in self.pools.items():
            if key.node == node:
                pool.close_idle()

    def retire_node(self, node: int) -> None:
        """``node`` was removed: close its idle servers now, the others when their
        clients give them back."""
        for key, pool in self.pools.items():
            if key.node == node:
                pool.retired = True
                pool.close_idle()

    def close_expired(self, idle_before: float) -> None:
        """Close servers idle since before ``idle_before`` in every pool."""
        for pool in self.pools.values():
            pool.close_expired(idle_before)
