"""One server connection: connect, log in, relay to a client, reset, go back to the pool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, cast

from pooler.net.handshake import ConnectionClosed, HandshakeReader, MessageTooLong
from pooler.pool import ParamKey, PoolKey, ServerPool
from pooler.protocol import messages as m
from pooler.protocol.auth_errors import BackendAuthError
from pooler.protocol.codec import (
    Event,
    Message,
    Scanner,
    build_cancel_request,
    build_startup_message,
    unpack_int32,
)
from pooler.protocol.md5 import md5_response, password_message_body
from pooler.protocol.requests import RequestTracker
from pooler.protocol.scram import ScramClient, ScramSecret

if TYPE_CHECKING:
    from pooler.net.session import ClientSession

log = logging.getLogger("pooler.server")

# ReadyForQuery status bytes, shared rather than allocated per message.
_STATUS = {code: bytes((code,)) for code in b"IET"}

_RELAY_SPLIT = frozenset({m.NOTIFICATION_RESPONSE})
_RELAY_OBSERVE = frozenset({m.PARAMETER_STATUS, m.ERROR_RESPONSE, m.COPY_IN_RESPONSE})
# While COPY IN runs, its end (CommandComplete) matters too, and ReadyForQuery must be
# seen in order with it rather than only counted.
_COPY_OBSERVE = _RELAY_OBSERVE | {m.COMMAND_COMPLETE, m.READY_FOR_QUERY}


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a backend listens: TCP host and port, or a Unix socket path."""

    host: str
    port: int
    unix_path: str | None = None

    async def connect(
        self, factory: Callable[[], asyncio.Protocol], timeout: float
    ) -> asyncio.Transport:
        """Open a connection and return its transport."""
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            coro = loop.create_unix_connection(factory, self.unix_path)
        else:
            coro = loop.create_connection(factory, self.host, self.port)
        transport, _ = await asyncio.wait_for(coro, timeout)
        return transport

    def __str__(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to log in to a backend as a user: a plain password, or SCRAM keys recovered
    from the client's proof together with the secret they belong to."""

    password: str | None = None
    client_key: bytes | None = None
    secret: ScramSecret | None = None


class LoginError(Exception):
    """A server login failed; ``response`` is the ErrorResponse to give the client."""

    def __init__(self, reason: str, response: bytes) -> None:
        super().__init__(reason)
        self.response = response


def _login_error(reason: str, sqlstate: str = "08004") -> LoginError:
    return LoginError(reason, m.error_response("FATAL", sqlstate, reason))


class Mode(Enum):
    """What a server connection is doing."""

    LOGIN = "login"
    ACTIVE = "active"
    RESET = "reset"
    IDLE = "idle"
    CLOSED = "closed"


_ACTIVE = Mode.ACTIVE


class ServerConnection(asyncio.Protocol):
    """A connection to one backend, owned by a pool between clients."""

    def __init__(self, address: NodeAddress, pool_key: PoolKey, param_key: ParamKey) -> None:
        self.address = address
        self.pool_key = pool_key
        self.param_key = param_key
        self.mode = Mode.LOGIN
        self.transport: asyncio.Transport | None = None
        self.reader = HandshakeReader()
        #: ParameterStatus values in the order the server reported them at login.
        self.params: dict[str, str] = {}
        self.pid = 0
        self.key = 0
        #: Transaction status of the last ReadyForQuery.
        self.status = b"I"
        #: What the client sent that this server has not answered yet.
        self.requests = RequestTracker()
        #: The server pid -> client pid map of notifications (shared by all servers).
        self.pid_map: dict[int, int] = {}
        self.session: ClientSession | None = None
        self.scanner = Scanner(split=_RELAY_SPLIT, observe=_RELAY_OBSERVE, ready=True)
        self.pool: ServerPool | None = None
        self.idle_since = 0.0
        self._cancels: set[asyncio.Task[None]] = set()
        self._reset_done: asyncio.Future[bool] | None = None
        self._reset_error = False

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.reader.attach(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.mode is not _ACTIVE:
            self._not_relaying(data)
            return
        # The relay is written out here rather than called: this runs once per answer.
        session = cast("ClientSession", self.session)
        scanner = self.scanner
        events = scanner.feed(data)
        if isinstance(events, bytes):
            session.transport.write(events)
        else:
            self._relay_events(session, events)
        if scanner.observed:
            self._observe()
        elif scanner.ready_count == 1:
            # The usual end of an answer, without the general bookkeeping.
            scanner.ready_count = 0
            self.status = _STATUS[scanner.status]
            self.requests.ready()
        elif scanner.ready_count:
            self._observe()
        else:
            return
        if session.draining and self.requests.idle():
            session.server_idle()

    def _not_relaying(self, data: bytes) -> None:
        mode = self.mode
        if mode is Mode.LOGIN:
            self.reader.feed(data)
        elif mode is Mode.RESET:
            self._reset_data(data)
        elif mode is Mode.IDLE:
            # An idle server speaks only to say it is going away (an administrator's
            # pg_terminate_backend, a shutdown); it is of no further use.
            log.info("idle server spoke; closing it", extra=self._log_fields())
            if self.pool is None or not self.pool.remove_idle(self):
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        previous = self.mode
        self.mode = Mode.CLOSED
        self.reader.feed_eof()
        if previous is Mode.ACTIVE and self.session is not None:
            self.session.server_lost()
        elif previous is Mode.IDLE and self.pool is not None:
            self.pool.remove_idle(self)
        elif (
            previous is Mode.RESET and self._reset_done is not None and not self._reset_done.done()
        ):
            self._reset_done.set_result(False)

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.pause_client_reading()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.resume_client_reading()

    # --- login ----------------------------------------------------------------------

    async def login(self, user: str, database: str, creds: Credentials) -> None:
        """Log in with the client's startup parameters; raise LoginError on failure."""
        assert self.transport is not None
        startup = (("user", user), ("database", database), *self.param_key)
        self.transport.write(build_startup_message(startup))
        scram: ScramClient | None = None
        try:
            while True:
                msg = await self.reader.read_message()
                t = msg.type
                if t == m.AUTHENTICATION:
                    scram = self._authenticate(msg, user, creds, scram)
                elif t == m.PARAMETER_STATUS:
                    name, value = m.parse_parameter_status(msg.body)
                    self.params[name] = value
                elif t == m.BACKEND_KEY_DATA:
                    self.pid = unpack_int32(msg.body, 0)[0]
                    self.key = unpack_int32(msg.body, 4)[0]
                elif t == m.ERROR_RESPONSE:
                    fields = m.parse_fields(msg.body)
                    raise LoginError(fields.get("M", "server login failed"), msg.raw())
                elif t == m.READY_FOR_QUERY:
                    self.status = msg.body
                    break
                # NoticeResponse during login is dropped: the client has not asked yet.
        except (ConnectionClosed, MessageTooLong) as exc:
            raise _login_error(f"server {self.address} closed the connection during login") from exc
        except BackendAuthError as exc:
            raise _login_error(f"SCRAM login to server {self.address} failed: {exc}") from exc
        rest = self.reader.take_rest()
        self.mode = Mode.IDLE
        if rest:
            self.data_received(rest)

    def _authenticate(
        self, msg: Message, user: str, creds: Credentials, scram: ScramClient | None
    ) -> ScramClient | None:
        assert self.transport is not None
        code = unpack_int32(msg.body, 0)[0]
        data = msg.body[4:]
        if code == m.AUTH_OK:
            return scram
        if code in (m.AUTH_CLEARTEXT, m.AUTH_MD5):
            if creds.password is None:
                raise _login_error(
                    f"server {self.address} asks for a password for user {user!r} but only "
                    "a SCRAM secret is configured; the backend must use scram-sha-256"
                )
            if code == m.AUTH_CLEARTEXT:
                body = password_message_body(creds.password)
            else:
                body = md5_response(user, creds.password, data[:4]) + b"\0"
            self.transport.write(m.password_message(body))
            return scram
        if code == m.AUTH_SASL:
            mechanisms = [x.decode() for x in data.split(b"\0") if x]
            if "SCRAM-SHA-256" not in mechanisms:
                raise _login_error(f"server {self.address} offers no usable SASL mechanism")
            if creds.password is not None:
                scram = ScramClient(user, creds.password)
            else:
                scram = ScramClient(user, client_key=creds.client_key, secret=creds.secret)
            mechanism, first = scram.client_first(mechanisms)
            self.transport.write(m.sasl_initial_response(mechanism, first))
            return scram
        if code == m.AUTH_SASL_CONTINUE and scram is not None:
            self.transport.write(m.password_message(scram.handle_server_first(data)))
            return scram
        if code == m.AUTH_SASL_FINAL and scram is not None:
            scram.handle_server_final(data)
            return scram
        raise _login_error(f"server {self.address} asks for unsupported authentication {code}")

    # --- relay ----------------------------------------------------------------------

    def attach(self, session: ClientSession, pid_map: dict[int, int]) -> None:
        """Relay from now on to ``session``; ``pid_map`` translates notifying pids."""
        self.session = session
        self.mode = Mode.ACTIVE
        self.pid_map = pid_map
        pid_map[self.pid] = session.pid

    def _relay_events(self, session: ClientSession, events: list[Event]) -> None:
        out: list[bytes] = []
        for event in events:
            if type(event) is bytes:
                out.append(event)
            elif type(event) is Message:
                pid, rest = m.parse_notification(event.body)
                # Clients know each other by the pids the pooler gave them.
                out.append(m.notification(self.pid_map.get(pid, pid), rest))
        session.transport.writelines(out)

    def _observe(self) -> None:
        requests = self.requests
        scanner = self.scanner
        if scanner.ready_count:
            self.status = _STATUS[scanner.status]
            for _ in range(scanner.ready_count):
                requests.ready()
            scanner.ready_count = 0
        observed = scanner.observed
        for msg in observed:
            t = msg.type
            if t == m.READY_FOR_QUERY:
                self.status = msg.body
                requests.ready()
            elif t == m.PARAMETER_STATUS:
                name, value = m.parse_parameter_status(msg.body)
                self.params[name] = value
            elif t == m.ERROR_RESPONSE:
                self._reset_error = True
                if requests.copy_in:
                    self._copy_ended()
            elif t == m.COPY_IN_RESPONSE:
                requests.copy_started()
                scanner.set_observe(_COPY_OBSERVE, ready=False)
            elif t == m.COMMAND_COMPLETE and requests.copy_in:
                self._copy_ended()
        observed.clear()

    def _copy_ended(self) -> None:
        self.requests.copy_ended()
        self.scanner.set_observe(_RELAY_OBSERVE, ready=True)

    def reusable(self) -> bool:
        """True when the server owes nothing, holds no transaction, and no message to
        or from it is half sent."""
        return (
            self.mode is Mode.ACTIVE
            and self.status == b"I"
            and self.requests.idle()
            and self.scanner.at_boundary()
        )

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
            log.warning("cancel failed", extra={**self._log_fields(), "why": str(exc)})

    # --- back to the pool -------------------------------------------------------------

    async def release(
        self, pool: ServerPool, reset_query: bytes | None, *, client_partial: bool, timeout: float
    ) -> None:
        """Reset and return to ``pool`` if in a known state; close otherwise.

        ``client_partial``: the client left with part of a message passed on. ``reset_query``
        None hands the session on as it is (the operator's choice); a reset that takes
        longer than ``timeout`` closes the server.
        """
        self.session = None
        self.pid_map.pop(self.pid, None)
        if client_partial or not self.reusable():
            self._give_up(pool, "not idle at release")
            return
        if self._cancels:
            await asyncio.gather(*self._cancels, return_exceptions=True)
        if self.mode is not Mode.ACTIVE:
            self._give_up(pool, "lost before reset")
            return
        if reset_query is None:
            self._to_pool(pool)
            return
        self.mode = Mode.RESET
        self._reset_error = False
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._reset_done = done
        assert self.transport is not None
        self.transport.write(reset_query)
        self.requests.sent([m.QUERY])
        try:
            ok = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            ok = False
        self._reset_done = None
        if ok and self.mode is Mode.RESET:
            self._to_pool(pool)
        else:
            self._give_up(pool, "reset failed")

    def _to_pool(self, pool: ServerPool) -> None:
        self.mode = Mode.IDLE
        self.pool = pool
        pool.checkin(self)

    def _reset_data(self, data: bytes) -> None:
        # Notifications split out here belong to no one now: LISTEN ends with DISCARD ALL.
        self.scanner.feed(data)
        if not self.scanner.observed and not self.scanner.ready_count:
            return
        self._observe()
        done = self._reset_done
        if self.requests.idle() and done is not None and not done.done():
            done.set_result(not self._reset_error and self.status == b"I")

    def _give_up(self, pool: ServerPool, reason: str) -> None:
        log.debug("closing server", extra={**self._log_fields(), "why": reason})
        pool.discard(self)

    def _log_fields(self) -> dict[str, object]:
        return {"server": str(self.address), "server_pid": self.pid}

    def close(self) -> None:
        """Close at once (a Terminate first when the connection is in a known state)."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if self.mode is Mode.IDLE:
                transport.write(b"X\x00\x00\x00\x04")
            transport.close()
        self.mode = Mode.CLOSED


class _CancelProtocol(asyncio.Protocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
