"""One server connection: connect, log in, relay to a client, reset, go back to the pool.

The decisions (what the server owes, whether it may be reused) belong to its
``ServerEngine``; this class reads, writes and waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from enum import Enum
from typing import Protocol, cast

from pooler.engine.server import ServerEngine
from pooler.net.handshake import HandshakeReader
from pooler.net.server_login import Credentials, NodeAddress, login
from pooler.pool import ParamKey, PoolKey, PoolStats, ServerPool
from pooler.protocol.codec import Event, FramingError, build_cancel_request

log = logging.getLogger("pooler.server")

_TERMINATE = b"X\x00\x00\x00\x04"
# Tasks that must not be collected before they end.
_background: set[asyncio.Task[None]] = set()


class Client(Protocol):
    """What a server connection needs of the client it relays to."""

    transport: asyncio.Transport
    draining: bool
    #: Transaction pooling: the server may go back to the pool between transactions.
    pooling: bool

    def server_lost(self) -> None:
        """The server connection closed."""

    def server_idle(self) -> None:
        """While draining: the server answered everything."""

    def server_answered(self) -> None:
        """Transaction pooling: the server sent something (it may be free now)."""

    def held_sent(self) -> None:
        """The requests held for a prelude's answers went to the server."""

    @property
    def admin_waiting(self) -> bool:
        """An admin command waits for what the server owed before it."""

    def admin_turn(self) -> None:
        """Answer the admin command waiting if nothing before it is owed any more."""


class Mode(Enum):
    """What a server connection is doing."""

    LOGIN = "login"
    ACTIVE = "active"
    RESET = "reset"
    IDLE = "idle"
    #: Session mode with routing: idle between its client's transactions, kept for
    #: that client (in no pool's idle list).
    KEPT = "kept"
    CLOSED = "closed"


_ACTIVE = Mode.ACTIVE


class ServerConnection(asyncio.Protocol):
    """A connection to one backend, owned by a pool between clients."""

    def __init__(
        self,
        address: NodeAddress,
        pool_key: PoolKey,
        param_key: ParamKey,
        owners: dict[int, int] | None = None,
        error_classes: Counter[str] | None = None,
        stats: PoolStats | None = None,
    ) -> None:
        self.address = address
        #: Its pool's statistics, which it adds its query and transaction times to.
        self.stats = stats if stats is not None else PoolStats()
        #: Clock (time.monotonic) when it was sent a request while it owed nothing, and
        #: when its transaction began; 0.0: not busy, not in a transaction.
        self.busy_since = 0.0
        self.xact_since = 0.0
        self.error_classes = error_classes
        #: Bytes it sent to its clients.
        self.sent = 0
        self.pool_key = pool_key
        self.param_key = param_key
        self.mode = Mode.LOGIN
        self.transport: asyncio.Transport | None = None
        self.reader = HandshakeReader()
        self.owners = owners
        self.engine = ServerEngine({}, b"I")
        self.pid = 0
        self.key = 0
        self.client: Client | None = None
        self.pool: ServerPool | None = None
        self.idle_since = 0.0
        self._cancels: set[asyncio.Task[None]] = set()
        self._reset_done: asyncio.Future[bool] | None = None

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.reader.attach(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.mode is not _ACTIVE:
            self._not_relaying(data)
            return
        # The relay is written out here rather than called: this runs once per answer.
        client = cast(Client, self.client)
        engine = self.engine
        self.sent += len(data)
        events = engine.feed(data)
        if engine.probing:
            events = engine.probed(events)
        try:
            if type(events) is bytes:
                client.transport.write(events)
            else:
                self._relay_events(client, events)  # type: ignore[arg-type]
        except RuntimeError:
            # The client's transport closed under us; its connection_lost follows.
            return
        if self.busy_since and not engine.requests.owed:
            self._answered_all()
        if client.pooling:
            client.server_answered()
        elif client.draining and self.engine.requests.idle():
            client.server_idle()
        elif client.admin_waiting:
            # Session mode: an admin command waits for these answers.
            client.admin_turn()

    def _answered_all(self) -> None:
        """It owes nothing now: the time since the request is query time, and the
        transaction's time too when it is back to idle. (One clock read.)"""
        now = time.monotonic()
        stats = self.stats
        stats.query_seconds += now - self.busy_since
        if self.engine.status == b"I":
            stats.xact_seconds += now - (self.xact_since or self.busy_since)
            self.xact_since = 0.0
        elif not self.xact_since:
            self.xact_since = self.busy_since
        self.busy_since = 0.0

    def _relay_events(self, client: Client, events: list[Event]) -> None:
        out: list[bytes] = []
        for event in events:
            if type(event) is bytes:
                out.append(event)
            elif isinstance(event, FramingError):
                client.transport.writelines(out)
                why = str(event)
                log.error("server broke the protocol", extra={**self.log_fields(), "why": why})
                self.close()
                return
        client.transport.writelines(out)

    def _not_relaying(self, data: bytes) -> None:
        mode = self.mode
        if mode is Mode.LOGIN:
            self.reader.feed(data)
        elif mode is Mode.RESET:
            self.engine.feed(data)
            done = self._reset_done
            result = self.engine.reset_result()
            if result is not None and done is not None and not done.done():
                done.set_result(result)
        elif mode is Mode.IDLE or mode is Mode.KEPT:
            # An idle server speaks only to say it is going away (an administrator's
            # pg_terminate_backend, a shutdown); it is of no further use. (A kept one,
            # closed, is dropped by its client when it next looks at it.)
            log.info("idle server spoke; closing it", extra=self.log_fields())
            if mode is Mode.KEPT or self.pool is None or not self.pool.remove_idle(self):
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.mode
        self.mode = Mode.CLOSED
        self.reader.feed_eof()
        if previous is Mode.ACTIVE and self.client is not None:
            self.client.server_lost()
        elif previous is Mode.IDLE and self.pool is not None:
            self.pool.remove_idle(self)
        elif (
            previous is Mode.RESET and self._reset_done is not None and not self._reset_done.done()
        ):
            self._reset_done.set_result(False)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.transport.resume_reading()

    # --- login ----------------------------------------------------------------------

    async def login(self, user: str, database: str, creds: Credentials) -> None:
        """Log in with the client's startup parameters; raise LoginError on failure."""
        assert self.transport is not None
        startup = (("user", user), ("database", database), *self.param_key)
        result = await login(self.reader, self.transport, self.address, startup, creds)
        self.engine = ServerEngine(result.params, result.status, self.owners, self.error_classes)
        self.engine.send_held = self._send_held
        self.pid, self.key = result.pid, result.key
        rest = self.reader.take_rest()
        self.mode = Mode.IDLE
        if rest:
            self.data_received(rest)

    # --- relay ----------------------------------------------------------------------

    def attach(self, client: Client) -> None:
        """Relay from now on to ``client``."""
        self.client = client
        self.mode = Mode.ACTIVE

    def writelines(self, data: list[bytes]) -> None:
        """Forward the client's bytes (not on the hot path, which writes directly)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(data)
            if not self.busy_since:
                self.busy_since = time.monotonic()

    def _send_held(self, data: bytes) -> None:
        """The prelude was answered: send the client's requests it held back, and let
        the client be read again."""
        self.writelines([data])
        if self.client is not None:
            self.client.held_sent()

    def hand_over(self, data: list[bytes]) -> None:
        """Send the end of the client's stream and end the input: the server answers as
        PostgreSQL does and closes, which closes the client."""
        self.engine.handed_over = True
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.writelines(data)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.write(_TERMINATE)

    # --- cancel ---------------------------------------------------------------------

    def cancel(self, timeout: float) -> None:
        """Ask the backend to cancel what this connection runs; don't wait here."""
        task = asyncio.get_running_loop().create_task(self._send_cancel(timeout))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, timeout: float) -> None:
        closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            transport = await self.address.connect(lambda: _CancelProtocol(closed), timeout)
            transport.write(build_cancel_request(self.pid, self.key))
            # PostgreSQL closes the connection once it has signalled the backend; until
            # then the cancel may still hit whatever this server runs next.
            await asyncio.wait_for(closed, timeout)
        except (OSError, TimeoutError) as exc:
            log.warning("cancel failed", extra={**self.log_fields(), "why": str(exc)})

    # --- back to the pool -------------------------------------------------------------

    def detach(self) -> None:
        """The client is done with this server: nothing more is relayed to it."""
        self.client = None
        if self.mode is Mode.ACTIVE or self.mode is Mode.KEPT:
            self.mode = Mode.RESET

    def keep(self) -> None:
        """Session mode with routing: its client's transaction is over and the server
        idle; it stays that client's, unattached, until the client needs its node
        again (``attach``) or leaves (``release``)."""
        self.client = None
        self.mode = Mode.KEPT

    def back_to_pool(self, pool: ServerPool) -> None:
        """Transaction pooling: the client's transaction is over and the server idle;
        no reset, but a cancel still on its way must land before anyone else has it."""
        self.client = None
        if not self._cancels:
            self._to_pool(pool)
            return
        self.mode = Mode.RESET
        task = asyncio.get_running_loop().create_task(self._after_cancels(pool))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _after_cancels(self, pool: ServerPool) -> None:
        await asyncio.gather(*self._cancels)
        if self.mode is Mode.RESET and self.engine.idle():
            self._to_pool(pool)
        else:
            self._give_up(pool, "not idle after a cancel")

    async def release(
        self, pool: ServerPool, reset_query: bytes | None, *, client_partial: bool, timeout: float
    ) -> None:
        """Reset and return to ``pool`` if in a known state; close otherwise (after
        ``detach``).

        ``client_partial``: the client left with part of a message passed on. ``reset_query``
        None hands the session on as it is (the operator's choice); a reset that takes
        longer than ``timeout`` closes the server.
        """
        if self.mode is not Mode.RESET or not self.engine.reusable(client_partial):
            self._give_up(pool, "not idle at release")
            return
        if self._cancels:
            await asyncio.gather(*self._cancels, return_exceptions=True)
        if self.mode is not Mode.RESET:
            self._give_up(pool, "lost before reset")
            return
        if reset_query is None:
            self._to_pool(pool)
            return
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._reset_done = done
        assert self.transport is not None
        self.engine.reset_sent()
        self.transport.write(reset_query)
        try:
            ok = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            ok = False
        self._reset_done = None
        if ok and self.mode is Mode.RESET:
            self.engine.forget_session()
            self._to_pool(pool)
        else:
            self._give_up(pool, "reset failed")

    def _to_pool(self, pool: ServerPool) -> None:
        # A session that ended inside a transaction was reset: nothing is running.
        self.busy_since = self.xact_since = 0.0
        self.mode = Mode.IDLE
        self.pool = pool
        pool.checkin(self)

    def _give_up(self, pool: ServerPool, reason: str) -> None:
        log.debug("closing server", extra={**self.log_fields(), "why": reason})
        pool.discard(self)

    def log_fields(self) -> dict[str, object]:
        """Fields that name this server in a log record."""
        return {"server": str(self.address), "server_pid": self.pid}

    def close(self) -> None:
        """Close at once (a Terminate first when the connection is in a known state)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self.mode is Mode.IDLE or self.mode is Mode.KEPT:
                transport.write(_TERMINATE)
            transport.close()
        self.mode = Mode.CLOSED


class _CancelProtocol(asyncio.Protocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
