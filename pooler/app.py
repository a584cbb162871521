"""The running pooler: configuration, pools, clients, background tasks; start and stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from parser_api import Classification, Classifier, ParseError, Route
from pooler import native
from pooler.admin.periods import Periods, Totals, database_totals
from pooler.admin.port import AdminPort
from pooler.admin.state import ADMIN_DATABASES, AdminState, Context
from pooler.clients import ClientRegistry
from pooler.cluster.catalog import Catalogs, DatabaseCatalog
from pooler.cluster.monitor import REMOVED_REASON, Monitor
from pooler.cluster.nodes import (
    Cluster,
    ClusterView,
    NodeRole,
    NodeState,
    NodeStatus,
    initial_view,
)
from pooler.cluster.patroni import Follower
from pooler.cluster.promote import Failover
from pooler.cluster.wal import WalPositions
from pooler.config import Backend, Config, auth_secret_key
from pooler.engine.client import Classify, ClientEngine, TargetOf
from pooler.net.client import ClientConnection
from pooler.net.client_auth import Authenticator
from pooler.net.listener import listen, ssl_context
from pooler.net.server import ServerConnection
from pooler.net.server_login import Credentials, LoginError, NodeAddress
from pooler.pool import Opener, ParamKey, PooledServer, PoolKey, PoolManager
from pooler.protocol import messages as m
from pooler.protocol.codec import frontend_limits
from pooler.routing.balancer import Balancer, Limits
from pooler.routing.search_path import SessionCatalog, client_path
from pooler.routing.targets import Target, on_primary, target_of

if TYPE_CHECKING:
    from pooler.cache.decoding import Decoder
    from pooler.cache.query_cache import QueryCache
    from pooler.net.client import ClientConnection

log = logging.getLogger("pooler")

#: Statement shapes a refusal is logged for once; beyond, every refusal is logged.
_SHAPES_LOGGED = 10_000


def _classifier() -> Classify:
    classifier = Classifier()

    def classify(sql: str) -> Classification | None:
        try:
            return classifier.classify(sql, offsets=False)
        except ParseError:
            return None

    return classify


def _routed_classifier(
    classifier: Classifier,
    session: SessionCatalog,
    catalog: Callable[[], DatabaseCatalog | None],
    changed: Callable[[], None],
) -> tuple[Classify, TargetOf]:
    """Classification with one database's catalog as the client's session sees it, and
    targets that keep everything on the primary while that catalog is not read."""

    def classify(sql: str) -> Classification | None:
        try:
            classification = classifier.classify(sql, session.current(), offsets=False)
        except ParseError:
            return None
        if classification.route is Route.WRITE and any(
            statement.kind.startswith("utility:") for statement in classification.statements
        ):
            # DDL (or something like it): what the catalog says may change.
            changed()
        return classification

    def target(classification: Classification | None, sql: str) -> Target:
        if catalog() is None:
            return Target.PRIMARY
        return target_of(classification, sql)

    return classify, target


class Pooler:
    """The running pooler: listening socket, pools, clients."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.frontend_limits = frontend_limits(config.limits.max_message_size)
        self.pools = PoolManager(config.pool.size)
        #: The nodes by id: the configured backends, then those reloads added; a node a
        #: reload removed keeps its place (status unused), so ids are never reused.
        #: One list, shared with the parts that connect to nodes by id.
        self.nodes: list[Backend] = list(config.backends)
        self.addresses = [NodeAddress(b.host, b.port, b.unix_socket_path) for b in config.backends]
        self.authenticator = Authenticator(
            config.auth.method, config.users, auth_secret_key(config)
        )
        self.ssl_context = ssl_context(config.tls)
        reset = config.pool.reset_query
        self.reset_query = m.query(reset) if reset else None
        self.checkout_timeout = config.pool.checkout_timeout or None
        self.connect_timeout = config.pool.connect_timeout
        self.clients = ClientRegistry(config.pool.max_clients)
        self.cluster = Cluster(initial_view(len(config.backends)))
        #: Reads a standby refused and the primary ran, per SQLSTATE.
        self.refusals: Counter[str] = Counter()
        self._refused_shapes: set[tuple[str, str]] = set()
        lb = config.load_balance
        self.balancer = Balancer(
            [backend.weight for backend in config.backends],
            Limits(lb.max_lag_bytes, lb.max_lag_seconds, lb.fallback_to_primary),
        )
        #: Reads leave the primary.
        self.routing = lb.enabled and len(config.backends) > 1
        #: Session mode with routing: each client keeps the servers it used, one per
        #: node, between its transactions (``ClientConnection``), instead of giving
        #: them back to the pool.
        self.keeps_servers = self.routing and config.pool.mode == "session"
        #: The query cache works in transaction pooling, where statements are classified.
        caching = config.query_cache.enabled and config.pool.mode == "transaction"
        self.catalogs: Catalogs | None = None
        if self.routing or caching:
            self.catalogs = Catalogs(
                self.nodes,
                config.health_check,
                self.cluster,
                lb.catalog_refresh,
                lb.write_functions,
                lb.read_only_functions,
            )
        #: Transaction pooling classifies statements (for what pins a client), and so
        #: does routing; session mode without routing needs no classification at all.
        self.classify: Classify | None = None
        if config.pool.mode == "transaction" or self.keeps_servers:
            self.classify = _classifier()
        # Catalogs are never changed once read (a refresh makes a new one).
        self._classifier = Classifier(snapshot_catalogs=True)
        #: Real pid of each server -> the pid of the last client it served, so that a
        #: notification names the client that sent it, also after it left.
        self.server_owners: dict[int, int] = {}
        #: ErrorResponses the servers sent, by SQLSTATE class (metrics).
        self.error_classes: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.cluster.on_change(self._nodes_changed)
        self.cluster.on_fence(self._fence)
        self.monitor: Monitor | None = None
        #: Promotes a standby when the primary is down (needs the monitor; never with
        #: Patroni, which promotes).
        self.failover: Failover | None = None
        #: Follows Patroni's leader (failover.patroni_urls).
        self.patroni: Follower | None = None
        #: The primary's WAL position after writes, when reads must see them.
        self.wal: WalPositions | None = None
        if config.health_check.period and config.failover.patroni_urls:
            # The monitor publishes what it observes on a cluster of its own; the
            # follower republishes it with Patroni's leader as the only possible primary.
            observed = Cluster(initial_view(len(config.backends)))
            self.monitor = Monitor(
                self.nodes, config.health_check, observed, config.failover.auto_failback
            )
            self.patroni = Follower(
                config.failover.patroni_urls,
                config.backends,
                config.health_check,
                observed,
                self.cluster,
                self.monitor,
            )
        elif config.health_check.period:
            self.monitor = Monitor(
                self.nodes,
                config.health_check,
                self.cluster,
                config.failover.auto_failback,
            )
            self.failover = Failover(
                self.nodes, config.health_check, config.failover, self.cluster, self.monitor
            )
        if self.monitor is not None and self.routing and lb.read_your_writes:
            self.wal = WalPositions(self.nodes, config.health_check, self.cluster)
        self._janitor_task: asyncio.Task[None] | None = None
        #: What admin commands keep: paused and disabled databases (pooler.admin).
        self.admin = AdminState()
        #: SHOW STATS' averages over the last admin.stats_period.
        self.stats_periods = Periods()
        self._periods_task: asyncio.Task[None] | None = None
        self._metrics: asyncio.Server | None = None
        #: The file the config came from, read again by RELOAD and SIGHUP.
        self.config_path: str | None = None
        self.cache: QueryCache | None = None
        #: Writes that bypass the pooler, for the cache (logical decoding).
        self.decoder: Decoder | None = None
        if caching and self.catalogs is not None:
            # Imported here: most poolers run without the cache, and every start (a
            # test suite starts hundreds) would pay for its modules.
            from pooler.cache.decoding import Decoder
            from pooler.cache.query_cache import QueryCache

            self.cache = QueryCache(config.query_cache, self.catalogs.get)
            if self.wal is not None:
                self.cache.place = self.wal.after_write
            self.decoder = Decoder(self.cache, self.nodes, config.health_check, self.cluster)

    def primary_node(self) -> int:
        """The node that takes writes (while there is none, node 0, whose refusal
        the client then sees)."""
        primary = self.cluster.view.primary
        return 0 if primary is None else primary

    def client_engine(self, database: str, client: ClientConnection) -> ClientEngine:
        """The engine for a new client of ``database``: in the admin database one that
        answers everything itself, elsewhere one that answers SHOW POOL_* itself."""
        console = database in ADMIN_DATABASES
        admin = AdminPort(Context(self, client), console)
        if console:
            return ClientEngine(self.frontend_limits, admin=admin)
        if self.catalogs is None:
            return ClientEngine(self.frontend_limits, self.classify, on_primary, admin)
        catalogs = self.catalogs
        reader = catalogs.reader(database)
        session = SessionCatalog(reader, lambda: client_path(client), client.user)
        classify, target = _routed_classifier(
            self._classifier, session, reader, lambda: catalogs.changed(database)
        )
        engine = ClientEngine(
            self.frontend_limits, classify, target if self.routing else on_primary, admin
        )

        def search_path_set() -> None:
            if session.update():
                engine.search_path_changed()

        engine.settings.on_search_path = search_path_set
        engine.defer_begin = self.routing
        return engine

    def pick_node(self, target: Target, floor: int = 0) -> int | None:
        """The node for a transaction that ``target`` allows, or None when none can
        run it; a read goes only to a node that has replayed WAL up to ``floor``."""
        if not self.routing:
            return self.cluster.view.primary
        node = self.balancer.pick(self.cluster.view, target, floor or None)
        if node is not None and target != Target.PRIMARY:
            self.balancer.reads[node] += 1
        return node

    def standby_refused(self, node: int, sqlstate: str, sql: str) -> None:
        """A standby refused a read before any answer reached the client; it runs
        again on the primary. Counted per SQLSTATE, logged once per statement shape."""
        self.refusals[sqlstate] += 1
        try:
            shape = self._classifier.classify(sql, offsets=False).fingerprint
        except ParseError:
            shape = sql
        if (sqlstate, shape) in self._refused_shapes:
            return
        if len(self._refused_shapes) < _SHAPES_LOGGED:
            self._refused_shapes.add((sqlstate, shape))
        log.info(
            "a standby refused a read; it runs on the primary",
            extra={"node": node, "sqlstate": sqlstate, "statement": sql[:200]},
        )

    def node_failed(self, node: int, target: int, reason: str) -> int | None:
        """A server connection to ``node`` could not be opened: the node to try
        instead, or None to give the client the error."""
        self.cluster.suspect(node, reason)
        primary = self.cluster.view.primary
        if target == Target.PRIMARY or node == primary:
            return None
        return primary

    def _nodes_changed(self, old: ClusterView, new: ClusterView) -> None:
        for before, now in zip(old.nodes, new.nodes, strict=True):
            if before.up and (not now.up or now.role is not before.role):
                # Its idle connections are dead, or of a role it no longer has.
                self.pools.close_idle_of(now.node)
            if before.up and now.status is NodeStatus.DOWN:
                # A node that hangs answers nothing: reads waiting on it that have sent
                # nothing to their client yet run elsewhere.
                for client in self._client_connections():
                    if client.node == now.node:
                        client.node_down()

    def _fence(self, node: int) -> None:
        self.pools.close_idle_of(node)
        for client in self._client_connections():
            server = client.server
            if client.node == node and server is not None and server.transport is not None:
                # Its client sees the connection close, as a direct client of a dead
                # primary would: in a transaction or pinned, it must not go on there.
                server.transport.abort()
            client.forget_kept(node)

    def add_node(self, backend: Backend, weight: float) -> int:
        """Take ``backend`` as a new node (a reload added it): its id, the next one.

        Its pools open on first use; the monitor checks it, and reads go to it once a
        check found it a standby (with no monitor, it is a standby at once).
        """
        node = len(self.nodes)
        if self.monitor is not None:
            self.monitor.add(backend)
        else:
            self.cluster.grow(NodeState(node, NodeStatus.UP, NodeRole.STANDBY))
        self.nodes.append(backend)
        self.addresses.append(NodeAddress(backend.host, backend.port, backend.unix_socket_path))
        self.balancer.add_node(weight)
        log.warning("node added", extra={"node": node, "host": backend.host, "port": backend.port})
        return node

    def remove_node(self, node: int) -> None:
        """Drain ``node`` (a reload removed it): no new work goes to it, its idle
        server connections close now and the others as their clients give them back
        (a transaction, or a pinned session, there ends normally); it shows unused and
        its id is not reused."""
        self.pools.retire_node(node)
        self.balancer.remove_node(node)
        if self.monitor is not None:
            self.monitor.remove(node)
        else:
            nodes = list(self.cluster.view.nodes)
            nodes[node] = nodes[node].with_(status=NodeStatus.UNUSED, reason=REMOVED_REASON)
            self.cluster.publish(ClusterView(tuple(nodes)))
        backend = self.nodes[node]
        log.warning(
            "node removed; it is drained",
            extra={"node": node, "host": backend.host, "port": backend.port},
        )

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def server_opener(self, user: str, database: str, creds: Credentials, node: int) -> Opener:
        """How to open a server connection to ``node`` for this client when its pool
        needs one."""
        address = self.addresses[node]
        pool_key = PoolKey(node, database, user)
        timeout = self.connect_timeout

        async def open_server(params: ParamKey) -> PooledServer:
            owners = self.server_owners if self.classify is not None else None
            stats = self.pools.get(pool_key).stats
            server = ServerConnection(address, pool_key, params, owners, self.error_classes, stats)
            try:
                await address.connect(lambda: server, timeout)
                await asyncio.wait_for(server.login(user, database, creds), timeout)
                self.pools.get(pool_key).reported[params] = tuple(server.engine.params.items())
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
        """Look at every node once, then bind the listening socket; raises OSError if
        it cannot."""
        cfg = self.config
        if self.monitor is not None:
            # Roles are known before the first client: writes go to the real primary.
            await self.monitor.start()
        if self.failover is not None:
            await self.failover.start()
        if self.patroni is not None:
            await self.patroni.start()
        if self.catalogs is not None:
            self.catalogs.start()
        if cfg.metrics.port:
            # Imported here: prometheus_client costs every start that serves no metrics.
            from pooler.admin.metrics import serve_metrics

            self._metrics = await serve_metrics(self, cfg.metrics.host, cfg.metrics.port)
        if self.decoder is not None:
            self.decoder.start()
        elif cfg.query_cache.enabled:
            log.warning("query_cache works in pool.mode transaction only: it is off")
        factory = lambda: ClientConnection(self)  # noqa: E731
        self._server = await listen(cfg.listen.host, cfg.listen.port, factory)
        loop = asyncio.get_running_loop()
        if cfg.pool.idle_timeout:
            self._janitor_task = loop.create_task(self._janitor(cfg.pool.idle_timeout))
        self._periods_task = loop.create_task(self._stats_periods())
        log.info(
            "listening",
            extra={
                "host": cfg.listen.host,
                "port": cfg.listen.port,
                "mode": cfg.pool.mode,
                "data_path": native.STATE,
            },
        )
        if native.STATE == "stale":
            log.warning(
                "the compiled data path is older than its sources: running them instead, "
                "slower (scripts/setup-venv compiles them again)",
                extra={"modules": ",".join(native.stale_modules())},
            )

    async def _janitor(self, idle_timeout: float) -> None:
        """Close server connections unused for ``idle_timeout`` seconds."""
        while True:
            await asyncio.sleep(min(idle_timeout / 2, 30.0))
            self.pools.close_expired(time.monotonic() - idle_timeout)

    async def _stats_periods(self) -> None:
        """End a stats period every ``admin.stats_period`` (read again each time: a
        reload changes it)."""
        loop = asyncio.get_running_loop()
        self._tick_stats(loop.time())
        while True:
            await asyncio.sleep(self.config.admin.stats_period)
            self._tick_stats(loop.time())

    def _tick_stats(self, now: float) -> None:
        names = {key.database for key in self.pools.pools} - ADMIN_DATABASES
        self.stats_periods.tick(self.stats_totals(names), now)

    def stats_totals(self, names: Iterable[str]) -> dict[str, Totals]:
        """Each database's statistics totals, with what clients holding a server have
        done so far (else a session counts only once it ends)."""
        for client in self._client_connections():
            client.account_now()
        return database_totals(self.pools.pools.values(), names)

    async def shutdown(self, timeout: float) -> None:
        """Stop accepting, let running queries finish for ``timeout`` s, then close all."""
        if self._server is not None:
            self._server.close()
        if self._metrics is not None:
            self._metrics.close()
        clients = self._client_connections()
        for client in clients:
            client.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.clients and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for client in self._client_connections():
            client.shut_down()
        # Let resets of servers released just now finish, then close what is idle.
        if self._janitor_task is not None:
            self._janitor_task.cancel()
        if self._periods_task is not None:
            self._periods_task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1)
        self.pools.close_idle()
        if self.failover is not None:
            # First: a promotion must not go on without the monitor that checks it.
            await self.failover.stop()
        if self.patroni is not None:
            await self.patroni.stop()
        if self.monitor is not None:
            await self.monitor.stop()
        if self.wal is not None:
            await self.wal.stop()
        if self.catalogs is not None:
            await self.catalogs.stop()
        if self.decoder is not None:
            await self.decoder.stop()
        log.info("shut down")

    def _client_connections(self) -> list[ClientConnection]:
        return [c for c in self.clients.all if isinstance(c, ClientConnection)]
