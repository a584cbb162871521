"""The primary's WAL position after a client's write, for read-your-writes.

A client that wrote may read only from nodes that have replayed its commit. The commit
position is not in the protocol, so once the write's transaction has ended the pooler
asks the primary for ``pg_current_wal_lsn()``, which is at or past that commit. The
question goes on a control connection of its own, off the client's path: until the
answer comes, the client's reads go to the primary. Requests that arrive while a
question is in flight wait for the next one (their commit may come after the position
being read), so one round trip answers every write of that moment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import asyncpg

from pooler.cluster.control import CONTROL_ERRORS, control_connect
from pooler.cluster.nodes import Cluster
from pooler.config import Backend, HealthCheck

log = logging.getLogger("pooler.cluster")

APPLICATION_NAME = "pooler wal position"
#: Seconds between attempts while the primary cannot be asked.
_RETRY_DELAY = 0.2

Waiter = Callable[[int], None]


class WalPositions:
    """Answers "where is the primary's WAL now?" for clients that just wrote."""

    def __init__(self, backends: Sequence[Backend], health: HealthCheck, cluster: Cluster) -> None:
        self._backends = backends
        self._health = health
        self._cluster = cluster
        self._waiting: list[Waiter] = []
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self._conn_node = -1

    def after_write(self, waiter: Waiter) -> None:
        """Call ``waiter(lsn)`` with a position at or past every commit made so far."""
        self._waiting.append(waiter)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._answer())

    async def _answer(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                lsn = await self._ask()
                while lsn is None:
                    # No primary, or it does not answer: the clients keep reading there.
                    await asyncio.sleep(_RETRY_DELAY)
                    lsn = await self._ask()
                for waiter in batch:
                    waiter(lsn)
        finally:
            self._task = None

    async def _ask(self) -> int | None:
        primary = self._cluster.view.primary
        if primary is None:
            return None
        try:
            async with asyncio.timeout(self._health.timeout):
                if self._conn is None or self._conn.is_closed() or self._conn_node != primary:
                    await self._drop()
                    self._conn = await control_connect(
                        self._backends[primary], self._health, APPLICATION_NAME
                    )
                    self._conn_node = primary
                lsn = await self._conn.fetchval(
                    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn() END"
                )
        except CONTROL_ERRORS as exc:
            log.debug("cannot read the primary's WAL position", extra={"why": str(exc)})
            await self._drop()
            return None
        if lsn is None:
            # In recovery: not the primary any more; ask again once the view says so.
            await self._drop()
            return None
        return int(lsn)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def stop(self) -> None:
        """Stop answering and close the connection."""
        if self._task is not None:
            self._task.cancel()
        await self._drop()
