"""One client connection: startup, authentication, then relaying to its server.

What to do with the client's bytes is its ``ClientEngine``'s decision; this class
reads, writes and carries the engine's actions out.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, cast

from pooler.admin.state import ADMIN_DATABASES, CONSOLE_PARAMETERS
from pooler.engine.actions import Action, Close, HandOver, NeedServer, Reply
from pooler.engine.client import ClientEngine
from pooler.net.client_auth import AuthClosed
from pooler.net.handshake import ConnectionClosed, HandshakeReader
from pooler.net.server import Mode, ServerConnection
from pooler.net.server_login import Credentials, LoginError
from pooler.pool import Opener, ParamKey, PoolKey, ServerPool
from pooler.protocol import messages as m
from pooler.protocol.auth_errors import ClientAuthError
from pooler.protocol.codec import (
    PROTOCOL_3_0,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupError,
    StartupMessage,
    parse_startup_packet,
    startup_packet_length,
)
from pooler.routing.targets import Target

if TYPE_CHECKING:
    from pooler.app import Pooler

log = logging.getLogger("pooler.client")

#: A WAL position no standby has: the client's reads stay on the primary.
_UNPLACED = 1 << 64
#: Server pids remembered with the client they last served (for notifications).
_OWNERS_KEPT = 10_000
#: Seconds a client may take to close its side after the pooler ended the session.
_LINGER = 5.0
#: Seconds between two looks at whether a paused database was resumed, at login.
_PAUSED_LOGIN_POLL = 0.05

# Startup parameters that say who connects, not how the session is set up.
_IDENTITY = frozenset({"user", "database"})


class ClientConnection(asyncio.Protocol):
    """A client of the pooler, relaying to one server connection in session mode."""

    # Slots: ten thousand idle clients each pay for their attributes, not a dict.
    __slots__ = (
        "_auth_timer",
        "_checkout",
        "_creds",
        "_handshake_task",
        "_held_by_pause",
        "_kept",
        "_last_pool",
        "_openers",
        "_params",
        "_paused",
        "_received",
        "_took",
        "_wait_began",
        "_writes_unplaced",
        "_wrote_up_to",
        "app",
        "connected_at",
        "counted",
        "database",
        "draining",
        "engine",
        "key",
        "logged_in",
        "node",
        "pid",
        "pool",
        "pooling",
        "reader",
        "route",
        "server",
        "transport",
        "user",
    )

    def __init__(self, app: Pooler) -> None:
        self.app = app
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.reader = HandshakeReader()
        # Made at login: a connection that never logs in costs less without it.
        self.engine: ClientEngine
        self.server: ServerConnection | None = None
        #: The pool of the server it holds (or of its last one).
        self.pool: ServerPool | None = None
        #: The node of the server it holds, counted in the balancer while it does.
        self.node = -1
        self.logged_in = False
        self.pooling = app.classify is not None
        # Session mode with routing: the servers it used, one per node, kept for it
        # between its transactions (None: servers go back to the pool, or it has one).
        self._kept: dict[int, tuple[ServerConnection, ServerPool]] | None = (
            {} if app.keeps_servers else None
        )
        # How to get a server (transaction pooling), and the checkout under way.
        self._params: ParamKey = ()
        self._openers: dict[int, Opener] = {}
        # The pool it last used (pools are never dropped): most clients use one node,
        # and a slot costs ten thousand idle clients less than a dict.
        self._last_pool: ServerPool | None = None
        self._creds: Credentials | None = None
        self._checkout: asyncio.Task[None] | None = None
        # Reading stopped until a server takes the held requests.
        self._paused = False
        # Read-your-writes: writes whose WAL position the primary has not told yet, and
        # the furthest position told; reads go only to nodes that replayed that far.
        self._writes_unplaced = 0
        self._wrote_up_to = 0
        self.pid = 0
        self.key = 0
        self.user = ""
        self.database = ""
        self.draining = False
        self._handshake_task: asyncio.Task[None] | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        #: Counted against pool.max_clients (set by the registry's ``admit``).
        self.counted = False
        #: When it connected (time.time()), for the admin views.
        self.connected_at = time.time()
        # Its requests wait for an admin RESUME (PAUSE).
        self._held_by_pause = False
        #: Where this session's reads go instead of where routing sends them (PGPOOL
        #: SET: the primary, or a standby first); None: as routed.
        self.route: Target | None = None
        # Statistics (SHOW STATS, metrics), added to the pool's when a server is given
        # back: bytes received since, when the server was taken and its counters then,
        # and when a wait for one began (0: none).
        self._received = 0
        self._took: tuple[float, int, int, int] | None = None
        self._wait_began = 0.0

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.reader.attach(self.transport)
        self.app.clients.add(self)
        loop = asyncio.get_running_loop()
        self._handshake_task = loop.create_task(self._handshake())
        # As PostgreSQL's authentication_timeout: a client that has not logged in by
        # then is dropped, so idle sockets cannot pile up.
        self._auth_timer = loop.call_later(self.app.config.auth.timeout, self.transport.abort)

    def _cancel_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    def data_received(self, data: bytes) -> None:
        # The relay is written out here rather than called: this runs once per request.
        server = self.server
        self._received += len(data)
        if server is None:
            if self.logged_in:
                if not self.engine.ended:  # else what follows the end is dropped
                    self._carry_out(None, self.engine.feed(data))  # type: ignore[arg-type]
            else:
                self.reader.feed(data)
            return
        out = self.engine.feed(data)
        if type(out) is bytes:
            server.transport.write(out)  # type: ignore[union-attr]
            if not server.busy_since:
                server.busy_since = time.monotonic()
        else:
            self._carry_out(server, out)  # type: ignore[arg-type]

    def _carry_out(self, server: ServerConnection | None, out: list[bytes | Action]) -> None:
        # Bytes go out in one write: a request cut into many segments can leave some
        # unread by a server that fails on an earlier one, and a server that closes with
        # unread bytes resets the connection, losing the answers it sent last.
        pending: list[bytes] = []
        for item in out:
            if type(item) is bytes:
                pending.append(item)
                continue
            if isinstance(item, HandOver):
                assert server is not None
                pending.append(item.to_server)
                self._hand_over(server, pending)
                pending = []
                continue
            if pending:
                assert server is not None
                server.writelines(pending)
                pending = []
            if isinstance(item, Close):
                self._close(item.reply)
            elif isinstance(item, NeedServer):
                self._need_server(item)
            elif isinstance(item, Reply):
                self.transport.write(item.data)
        if pending:
            assert server is not None
            server.writelines(pending)

    def eof_received(self) -> bool:
        if not self.logged_in:
            return False
        if self.engine.ended and self.server is None and self._checkout is None:
            return False
        if self.engine.ended:
            # Handing over, or waiting for a server to hand over to: keep the write side
            # open while the server finishes.
            return self.server is not None or self._checkout is not None
        action = self.engine.eof()
        self._carry_out(self.server, [action])
        return not isinstance(action, Close)

    def _close(self, reply: bytes) -> None:
        if reply:
            self.transport.write(reply)
        self.transport.close()
        self._release_server()

    def _hand_over(self, server: ServerConnection, to_server: list[bytes]) -> None:
        # The client's later bytes are still read (and dropped, as PostgreSQL drops what
        # follows a Terminate): unread bytes at close would make the kernel reset the
        # connection, and the client could lose the answers still on their way.
        log.debug("client ended with answers owed; server finishes", extra=server.log_fields())
        server.hand_over(to_server)

    # --- transaction pooling ------------------------------------------------------------

    def _pool_of(self, node: int) -> ServerPool:
        pool = self._last_pool
        if pool is None or pool.key.node != node:
            pool = self._last_pool = self.app.pools.get(PoolKey(node, self.database, self.user))
        return pool

    def _opener_of(self, node: int) -> Opener:
        opener = self._openers.get(node)
        if opener is None:
            assert self._creds is not None
            opener = self.app.server_opener(self.user, self.database, self._creds, node)
            self._openers[node] = opener
        return opener

    def _need_server(self, need: NeedServer) -> None:
        if self._checkout is not None:
            return
        if self.server is not None:
            # Behind a standby's answers: nothing more is read until they are done.
            self._pause()
            self.server_answered()
            return
        admin = self.app.admin
        if admin.paused and admin.is_paused(self.database):
            # PAUSE: nothing more is read until RESUME (paused_requests_go_on).
            self._pause()
            self._held_by_pause = True
            return
        target = need.target
        if self.route is not None and target != Target.PRIMARY:
            # PGPOOL SET for this session (pooler.admin.settings).
            target = self.route
        floor = _UNPLACED if self._writes_unplaced else self._wrote_up_to
        node = self.app.pick_node(target, floor)
        if node is None:
            self._no_node(target)
            return
        if self._kept is not None:
            kept = self._kept.pop(node, None)
            if kept is not None:
                server, pool = kept
                if server.mode is Mode.KEPT:
                    self._use_server(server, pool, node)
                    return
                # It closed while kept (a shutdown, pg_terminate_backend).
                pool.discard(server)
        pool = self._pool_of(node)
        idle = pool.take_idle(self._params)
        if idle is not None:
            # The usual case, once a pool is warm: no task, no wait.
            self._use_server(cast(ServerConnection, idle), pool, node)
            return
        # Nothing more is read until a server takes what is held: a waiting client
        # costs no CPU.
        self._pause()
        self._wait_began = time.monotonic()
        self._checkout = asyncio.get_running_loop().create_task(self._take_server(node, target))

    async def _take_server(self, node: int, target: int) -> None:
        while True:
            pool = self._pool_of(node)
            try:
                pooled = await pool.checkout(
                    self._params, self._opener_of(node), self.app.checkout_timeout
                )
            except TimeoutError:
                self._checkout = None
                self._checkout_timed_out()
                return
            except LoginError as exc:
                # A read may go elsewhere when its node cannot be reached.
                retry = self.app.node_failed(node, target, str(exc))
                if retry is None:
                    self._checkout = None
                    self.transport.write(exc.response)
                    self.transport.close()
                    return
                node = retry
                continue
            break
        self._checkout = None
        server = cast(ServerConnection, pooled)
        if self.transport.is_closing():
            pool.checkin(server)
            return
        self._use_server(server, pool, node)

    def _use_server(self, server: ServerConnection, pool: ServerPool, node: int) -> None:
        self.pool = pool
        self.node = node
        if self._wait_began:
            pool.stats.wait_seconds += time.monotonic() - self._wait_began
            self._wait_began = 0.0
        self.app.balancer.inflight[node] += 1
        self._attach(server)
        writable = node == self.app.cluster.view.primary
        if self.engine.cache is not None:
            self.engine.cache.replayed = self.app.cluster.view.nodes[node].replay_lsn
        self._carry_out(server, self.engine.attach(server.engine, writable))
        if server.engine.holding is not None:
            # Its requests wait for the prelude's answers; what it sends next must not
            # pass them.
            if not self._paused:
                self._pause()
        elif self._paused and not self.engine.ended:
            self._paused = False
            self.transport.resume_reading()

    def held_sent(self) -> None:
        """The requests held for a prelude's answers went to the server."""
        if self._paused and not self.engine.ended and self._checkout is None:
            self._paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        self._paused = True
        self.transport.pause_reading()

    def _no_node(self, target: int) -> None:
        """No node can run the held requests: each gets an error and the client stays
        (its next requests may find a node: reads go on while writes wait for a new
        primary); in a transaction, or mid-request, the session ends as one whose
        server cannot be reached."""
        what = "primary" if target == Target.PRIMARY else "node for reads"
        reason = f"no {what} is available"
        log.warning("no node available", extra={"user": self.user, "target": what})
        answers = self.engine.refuse(
            m.error_response(
                "ERROR",
                "57P03",
                reason,
                hint="The pooler sees no node that can run this now; try again later.",
            )
        )
        if answers is None:
            self._fatal("08006", reason)
            return
        self.transport.write(answers)
        if self._paused and not self.engine.ended:
            self._paused = False
            self.transport.resume_reading()

    def _attach(self, server: ServerConnection) -> None:
        self.server = server
        server.attach(self)
        engine = server.engine
        self._took = (time.monotonic(), engine.requests.answered, engine.transactions, server.sent)
        owners = self.app.server_owners
        # Newest last; the oldest go once the pids of closed servers pile up (their
        # notifications have long been delivered).
        owners.pop(server.pid, None)
        owners[server.pid] = self.pid
        if len(owners) > _OWNERS_KEPT:
            del owners[next(iter(owners))]

    def server_answered(self) -> None:
        """Transaction pooling: the server sent something; give it back if the client
        is done with it for now."""
        cache = self.engine.cache
        if cache is not None and cache.busy and self.server is not None:
            cache.answered(self.server.engine)
        if self.engine.releasable():
            server = self.server
            pool = self.pool
            assert server is not None and pool is not None
            self.server = None
            if self.app.wal is not None and self.engine.wrote():
                self._writes_unplaced += 1
                self.app.wal.after_write(self._write_placed)
            node = self.node
            self._left_node()
            self._account(server, pool)
            self.engine.detach()
            if self._kept is not None:
                server.keep()
                self._kept[node] = (server, pool)
            else:
                server.back_to_pool(pool)
            if self.engine.refusal is not None:
                self.app.standby_refused(node, *self.engine.refusal)
            if self.engine.waiting():
                self._need_server(self.engine.need())
        if self.engine.admin_wait is not None:
            self.admin_turn()

    def admin_turn(self) -> None:
        """An admin command waits for what its client's server owed before it: answer it
        if that is done."""
        self._carry_out(self.server, self.engine.admin_turn())

    @property
    def admin_waiting(self) -> bool:
        """An admin command waits for its turn (``admin_turn``)."""
        return self.engine.admin_wait is not None

    def _account(self, server: ServerConnection, pool: ServerPool) -> None:
        """Add what this client did on ``server`` to its pool's statistics."""
        took = self._took
        if took is None:
            return
        self._took = None
        since, answered, transactions, sent = took
        stats = pool.stats
        engine = server.engine
        stats.queries += engine.requests.answered - answered
        stats.transactions += engine.transactions - transactions
        stats.sent += server.sent - sent
        stats.received += self._received
        self._received = 0
        stats.held_seconds += time.monotonic() - since

    def _write_placed(self, lsn: int) -> None:
        self._writes_unplaced -= 1
        if lsn > self._wrote_up_to:
            self._wrote_up_to = lsn

    def _left_node(self) -> None:
        if self.node >= 0:
            self.app.balancer.inflight[self.node] -= 1
            self.node = -1

    def node_down(self) -> None:
        """The monitor found the node of this client's server down: a read there that
        has sent nothing to the client is dropped with its connection and runs on the
        primary (``server_lost``)."""
        server = self.server
        if server is not None and server.engine.probing and server.transport is not None:
            server.transport.abort()

    def pause_writing(self) -> None:
        # The client reads slower than its server answers: stop reading the server.
        server = self.server
        if server is not None and server.transport is not None:
            server.transport.pause_reading()

    def resume_writing(self) -> None:
        server = self.server
        if server is not None and server.transport is not None:
            server.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_auth_timer()
        self.reader.feed_eof()
        self.app.clients.forget(self)
        task = self._handshake_task
        if task is not None and not task.done():
            task.cancel()
        self._release_server()

    # --- handshake ------------------------------------------------------------------

    async def _handshake(self) -> None:
        try:
            startup = await self._read_startup()
            if startup is None:
                return
            if not self.app.clients.admit(self):
                self._fatal("53300", "sorry, too many clients already")
                return
            await self._login(startup)
        except ConnectionClosed:
            self.transport.close()
        except AuthClosed:
            self.transport.abort()
        except StartupError as bad:
            # One name per clause: compiled code gives a name one type (pooler.native).
            log.info("bad startup packet", extra={"peer": self._peer(), "why": bad.message})
            if bad.sqlstate is None:
                self.transport.abort()
            elif bad.old_format:
                self.transport.write(m.error_response_v2("FATAL", bad.message))
                self.transport.close()
            else:
                self._fatal(bad.sqlstate, bad.message, detail=bad.detail, hint=bad.hint)
        except ClientAuthError as refused:
            log.info(
                "authentication failed",
                extra={"user": self.user, "peer": self._peer(), "why": str(refused)},
            )
            self._fatal(refused.sqlstate, refused.message, detail=refused.detail)
        except LoginError as failed:
            log.warning(
                "server login failed",
                extra={"user": self.user, "database": self.database, "why": str(failed)},
            )
            self.transport.write(failed.response)
            self.transport.close()
        except TimeoutError:
            self._checkout_timed_out()
        except asyncio.CancelledError:
            self.transport.abort()
        except Exception:
            log.exception("unexpected error in a handshake", extra={"peer": self._peer()})
            self._fatal("XX000", "internal error in the connection pooler")

    async def _read_startup(self) -> StartupMessage | None:
        ssl_done = gss_done = False
        reader = self.reader
        while True:
            header = await reader.read(4)
            length = startup_packet_length(header)
            assert length is not None
            packet = parse_startup_packet(header + await reader.read(length - 4))
            if isinstance(packet, StartupMessage):
                return packet
            if isinstance(packet, CancelRequest):
                self.app.clients.cancel(packet.pid, packet.key)
                self.transport.close()
                return None
            # Bytes already here when we answer came before the answer, so unencrypted:
            # PostgreSQL refuses them (a man in the middle could have injected them).
            # The check runs before any await, so nothing sent after the answer counts.
            if isinstance(packet, SSLRequest) and not ssl_done:
                ssl_done = True
                context = self.app.ssl_context
                self.transport.write(b"S" if context is not None else b"N")
                self._no_unencrypted_data("SSL request")
                if context is not None:
                    await self._start_tls(context)
            elif isinstance(packet, GSSENCRequest) and not gss_done:
                gss_done = True
                self.transport.write(b"N")
                self._no_unencrypted_data("GSSAPI encryption request")
            else:
                # A second SSL or GSS request is a protocol version PostgreSQL refuses.
                code = 1234
                minor = 5679 if isinstance(packet, SSLRequest) else 5680
                raise StartupError(
                    f"unsupported frontend protocol {code}.{minor}: server supports 3.0 to 3.0",
                    "0A000",
                )

    def _no_unencrypted_data(self, what: str) -> None:
        if self.reader.pending():
            raise _UnencryptedData(what)

    async def _start_tls(self, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(self.transport, self, context, server_side=True)
        self.transport = cast(asyncio.Transport, transport)
        self.reader.attach(self.transport)

    async def _login(self, startup: StartupMessage) -> None:
        app = self.app
        if startup.minor > 0 or startup.unknown_protocol_options:
            self.transport.write(
                m.negotiate_protocol_version(PROTOCOL_3_0, startup.unknown_protocol_options)
            )
        user = startup.get("user") or ""
        self.user = _truncate_name(user)
        self.database = _truncate_name(startup.get("database") or user)
        if startup.get("replication") not in (None, "false", "0", "off", "no"):
            raise ClientAuthError(
                "0A000", "replication connections are not supported through the pooler"
            )
        self.engine = app.client_engine(self.database, self)
        creds = await app.authenticator.authenticate(self.reader, self.transport, self.user)
        if self.database in ADMIN_DATABASES:
            self._console_login()
            return
        if self.database in app.admin.disabled:
            raise ClientAuthError(
                "55000", f'database "{self.database}" is not currently accepting connections'
            )
        while app.admin.is_paused(self.database):
            # PAUSE, KILL or a switchover: a new session waits too (PgBouncer's rule).
            await asyncio.sleep(_PAUSED_LOGIN_POLL)
        if app.catalogs is not None:
            # The first client of a database waits for its catalog: until it is read,
            # every statement would run on the primary.
            await app.catalogs.wait(self.database)
        self.transport.write(m.auth_request(m.AUTH_OK))
        params = tuple((k, v) for k, v in startup.params if k not in _IDENTITY)
        if app.cache is not None and self.engine.pooling:
            self.engine.cache = app.cache.session(self.database, self.user, params)
            self.engine.cache.settings = self.engine.settings
        primary = app.primary_node()
        pool = self._pool_of(primary)
        self.pool = pool
        self._params = params
        self._creds = creds
        opener = self._opener_of(primary)
        self.transport.pause_reading()
        self._cancel_auth_timer()
        reported = pool.reported.get(params)
        server: ServerConnection | None = None
        # Transaction pooling shares servers; session mode (routed or not) gives the
        # client the primary's server at once, whose pid it is told.
        sharing = self.engine.pooling and self._kept is None
        if reported is None or not sharing:
            # A server tells what the client's session looks like (its ParameterStatus
            # values); in transaction pooling only the first of its kind is needed.
            server = cast(
                ServerConnection, await pool.checkout(params, opener, app.checkout_timeout)
            )
            reported = tuple(server.engine.params.items())
        if sharing:
            # Servers change under the client: its pid is the pooler's own, unique
            # among its clients and never a real backend's.
            self.pid = app.clients.new_pid()
        else:
            # Session mode: the server's own pid, so that pg_backend_pid(),
            # pg_stat_activity and pg_terminate_backend agree with what the driver
            # reports. The secret key is the pooler's: cancels come through here.
            assert server is not None
            self.pid = server.pid
        self.key = app.clients.register(self)
        out = [m.parameter_status(k, v) for k, v in reported]
        out.append(m.backend_key_data(self.pid, self.key))
        out.append(m.ready_for_query(b"I"))
        self.transport.writelines(out)
        if server is not None:
            if self._kept is not None:
                server.keep()
                self._kept[primary] = (server, pool)
            elif sharing:
                pool.checkin(server)
            else:
                self._attach(server)
                self.engine.attach(server.engine)
                self.node = primary
                app.balancer.inflight[primary] += 1
        self.logged_in = True
        self._handshake_task = None
        rest = self.reader.take_rest()
        self.transport.resume_reading()
        if rest:
            self.data_received(rest)

    def _console_login(self) -> None:
        """The admin database: only admin_users, answered by the pooler alone."""
        if self.user not in self.app.config.admin_users:
            raise ClientAuthError(
                "42501",
                f'permission denied for database "{self.database}"',
                "Only the users in admin_users may connect to it.",
            )
        self.pid = self.app.clients.new_pid()
        self.key = self.app.clients.register(self)
        out = [m.auth_request(m.AUTH_OK)]
        out += [m.parameter_status(k, v) for k, v in CONSOLE_PARAMETERS]
        out += [m.backend_key_data(self.pid, self.key), m.ready_for_query(b"I")]
        self.transport.writelines(out)
        self._cancel_auth_timer()
        self.logged_in = True
        self._handshake_task = None
        rest = self.reader.take_rest()
        if rest:
            self.data_received(rest)

    def _fatal(
        self, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> None:
        self.transport.write(m.error_response("FATAL", sqlstate, message, detail=detail, hint=hint))
        self.transport.close()

    def _checkout_timed_out(self) -> None:
        log.warning(
            "no server connection within pool.checkout_timeout",
            extra={"user": self.user, "database": self.database},
        )
        self._fatal(
            "53300",
            "no server connection became free within pool.checkout_timeout",
            hint="Raise pool.size, or shorten what holds the connections.",
        )

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername")
        return str(peer) if peer is not None else "unix socket"

    # --- relay ------------------------------------------------------------------------

    def server_idle(self) -> None:
        """While draining: the server answered everything sent so far."""
        if self.server is not None and self.server.engine.status == b"I":
            self.shut_down()

    def server_lost(self) -> None:
        """The server connection closed under us: so does the client, as directly."""
        server = self.server
        self.server = None
        again = self.engine.detach(lost=True)
        if self.node >= 0:
            # Maybe the node went down: the monitor looks now, not at its next check.
            self.app.cluster.suspect(self.node, "a server connection closed")
        self._left_node()
        if server is not None and self.pool is not None:
            self.pool.discard(server)
        if again:
            # A standby died before any of its answers reached the client: the read
            # runs on the primary.
            self._need_server(self.engine.need())
            return
        self.engine.ended = True
        self._linger()

    def _linger(self) -> None:
        """Close after what was written reached the client: end our side, and read (and
        drop) what the client still sends until it closes too. Closing with unread bytes
        would make the kernel reset the connection, and the client lose the last answers
        (PostgreSQL's FATAL, say) still on their way."""
        transport = self.transport
        if transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.resume_reading()
        transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER, transport.close)

    def _release_server(self) -> None:
        if self._checkout is not None:
            self._checkout.cancel()
            self._checkout = None
        if self._kept:
            # Session mode: they are reset and go back to the pool, as the one it
            # has does below.
            for kept, kept_pool in self._kept.values():
                kept.detach()
                self.app.spawn(
                    kept.release(
                        kept_pool,
                        self.app.reset_query,
                        client_partial=False,
                        timeout=self.app.connect_timeout,
                    )
                )
            self._kept.clear()
        server = self.server
        pool = self.pool
        self.server = None
        if server is None or pool is None:
            return
        self._left_node()
        self._account(server, pool)
        self.engine.detach()
        server.detach()
        # Transaction pooling resets only what a pinned client may have left.
        reset = self.app.reset_query
        if self.engine.pooling and self._kept is None and not self.engine.session.pins:
            reset = None
        self.app.spawn(
            server.release(
                pool,
                reset,
                client_partial=self.engine.partial(),
                timeout=self.app.connect_timeout,
            )
        )

    # --- administration -------------------------------------------------------------

    def account_now(self) -> None:
        """Add what this client did so far on the server it holds to its pool's
        statistics, as its release would (SHOW STATS, stats periods): a session-mode
        client holds its server until it leaves."""
        server = self.server
        pool = self.pool
        if server is None or pool is None or self._took is None:
            return
        self._account(server, pool)
        engine = server.engine
        self._took = (time.monotonic(), engine.requests.answered, engine.transactions, server.sent)

    def forget_kept(self, node: int) -> None:
        """Session mode with routing: close the server kept on ``node`` (fenced); the
        client opens another should it need that node again."""
        if self._kept:
            kept = self._kept.pop(node, None)
            if kept is not None:
                server, pool = kept
                pool.discard(server)

    def kept_servers(self) -> list[ServerConnection]:
        """Session mode with routing: the servers kept for it, not serving it now."""
        return [] if self._kept is None else [server for server, _ in self._kept.values()]

    def read_nodes(self, target: Target = Target.ANY) -> list[int]:
        """The nodes this client's next read (of ``target``) may go to now (admin
        views)."""
        floor = _UNPLACED if self._writes_unplaced else self._wrote_up_to
        return self.app.balancer.candidates(self.app.cluster.view, target, floor or None)

    @property
    def startup_params(self) -> ParamKey:
        """The parameters of its startup packet other than user and database (empty
        until it logged in)."""
        return self._params

    @property
    def application_name(self) -> str:
        """The application_name it logged in with ("" if none)."""
        return dict(self._params).get("application_name", "")

    def paused_requests_go_on(self) -> None:
        """RESUME: requests held by PAUSE look for a server again."""
        if self._held_by_pause and not self.app.admin.is_paused(self.database):
            self._held_by_pause = False
            self._need_server(self.engine.need())

    def cancel(self) -> None:
        """Relay a cancel request to whatever this client's server runs now.

        Relayed whenever the client holds a server, as PostgreSQL would get it: a backend
        ignores a cancel that finds it idle, and a released server waits for the cancel
        to land before anyone else gets it.
        """
        server = self.server
        if server is not None:
            server.cancel(self.app.connect_timeout)

    def drain(self) -> None:
        """Close as soon as no query or transaction is in flight (shutdown)."""
        self.draining = True
        server = self.server
        if server is None:
            if self._handshake_task is not None or self._checkout is None:
                self.shut_down()
            return
        if server.engine.idle():
            self.shut_down()

    def shut_down(self) -> None:
        """Close with the FATAL PostgreSQL sends when it shuts down."""
        if not self.transport.is_closing():
            self._fatal("57P01", "terminating connection due to administrator command")


class _UnencryptedData(StartupError):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"received unencrypted data after {what}",
            "08P01",
            detail="This could be either a client-software bug or evidence of an attempted "
            "man-in-the-middle attack.",
        )


def _truncate_name(name: str) -> str:
    """PostgreSQL cuts names at NAMEDATALEN - 1 bytes."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= 63:
        return name
    return raw[:63].decode("utf-8", "ignore")
