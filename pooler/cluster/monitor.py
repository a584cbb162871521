"""The cluster monitor: checks every node over its own connections and publishes views.

One task per node checks it every ``health_check.period`` with a new asyncpg
connection (``timeout`` covers connect, login and queries, so a node that hangs counts
as down as surely as one that refuses), retries a failed check ``max_retries`` times
``retry_delay`` apart, and hands the outcome to the ``Assessor``, whose views it
publishes on the ``Cluster``. ``Cluster.suspect`` from the data path checks a node at
once instead of at its next period. A reload adds nodes (``add``: a new task, the next
id) and removes them (``remove``: its task ends, the node shows ``unused``).

Wiring::

    monitor = Monitor(config.backends, config.health_check, cluster)
    await monitor.start()     # returns once the first view is published
    ...
    await monitor.stop()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from pooler.cluster.assess import Assessor
from pooler.cluster.checks import REPLICATION_SQL, STATE_SQL, Probe, probe_from_rows
from pooler.cluster.control import control_connect
from pooler.cluster.nodes import Cluster, ClusterView, NodeState, NodeStatus
from pooler.config import Backend, HealthCheck

__all__ = ["APPLICATION_NAME", "Monitor"]

log = logging.getLogger("pooler.cluster")

#: What the monitor's connections show in ``pg_stat_activity``.
APPLICATION_NAME = "pooler monitor"
#: Why a removed node takes no traffic (SHOW POOL_NODES, logs).
REMOVED_REASON = "removed from the config"


class Monitor:
    """Watches ``backends`` (node id = position) and publishes their states on ``cluster``.

    Roles are discovered: whichever node is out of recovery is the primary (see
    ``pooler.cluster.assess`` for two of them). Nodes that recover come back UP by
    themselves once they stream from the primary (``auto_failback``; when false they
    are DETACHED instead); only ``attach`` undoes DETACHED.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        health: HealthCheck,
        cluster: Cluster,
        auto_failback: bool = True,
    ) -> None:
        if len(backends) != len(cluster.view.nodes):
            raise ValueError(
                f"{len(backends)} backends for a cluster view of {len(cluster.view.nodes)} nodes"
            )
        self._backends = list(backends)
        self._health = health
        self._cluster = cluster
        self._assessor = _Assessor(health, len(backends), auto_failback)
        #: Nodes removed from the config (shown ``unused``), and nodes added that have
        #: had no check yet (shown up with no role: they get no traffic).
        self._removed: set[int] = set()
        self._unchecked: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._first_view = asyncio.Event()
        # Set by suspect, check_now, detach and attach: the node's task stops waiting.
        self._wake = [asyncio.Event() for _ in backends]
        # check_now callers waiting for a check that starts after they asked...
        self._waiting: list[list[asyncio.Future[NodeState]]] = [[] for _ in backends]
        # ...and those whose check has started, told when it has an outcome.
        self._told_at_outcome: list[list[asyncio.Future[NodeState]]] = [[] for _ in backends]
        self._last_check_end = [0.0 for _ in backends]
        # check_now was called: the next check starts at once, without the spacing.
        self._urgent = [False for _ in backends]
        cluster.on_suspect(self._suspect)

    async def start(self) -> None:
        """Start checking; return once every node had its first check (and its retries,
        if it failed) and the first view is published."""
        if self._tasks:
            return
        self._tasks = [self._watcher(node) for node in range(len(self._backends))]
        first_view = asyncio.create_task(self._first_view.wait())
        done, _ = await asyncio.wait(
            [first_view, *self._tasks], return_when=asyncio.FIRST_COMPLETED
        )
        if first_view not in done:
            # A watcher died of a bug: show it rather than wait forever.
            first_view.cancel()
            failed = next(iter(done))
            await self.stop()
            failed.result()

    def _watcher(self, node: int) -> asyncio.Task[None]:
        return asyncio.create_task(self._watch(node), name=f"pooler monitor: node {node}")

    async def stop(self) -> None:
        """Stop checking; the last published view stays."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for waiters in (*self._waiting, *self._told_at_outcome):
            for waiter in waiters:
                waiter.cancel()
            waiters.clear()

    def detach(self, node: int) -> None:
        """Take ``node`` out of rotation: DETACHED, no longer checked, until ``attach``."""
        self._publish(self._assessor.detach(node, time.time()))
        self._wake[node].set()

    def attach(self, node: int, held: bool = False) -> None:
        """Give a detached ``node`` back: it is checked at once and comes back UP (or
        DOWN) with the outcome. A false primary attached gets a fresh judgement.
        ``held``: UP only once it streams from the primary (see ``Assessor.attach``). A
        node removed from the config stays unused."""
        if node in self._removed:
            return
        self._publish(self._assessor.attach(node, time.time(), held))
        self._wake[node].set()

    def add(self, backend: Backend) -> int:
        """Watch one more node (a reload added it); its id, the next one. It shows up
        with no role, and so gets no traffic, until its first check says what it is."""
        node = len(self._backends)
        self._backends.append(backend)
        self._wake.append(asyncio.Event())
        self._waiting.append([])
        self._told_at_outcome.append([])
        self._last_check_end.append(0.0)
        self._urgent.append(False)
        self._unchecked.add(node)
        self._cluster.grow(NodeState(node, reason="not checked yet"))
        self._assessor.add_node()
        if self._tasks:
            self._tasks.append(self._watcher(node))
        return node

    def remove(self, node: int) -> None:
        """Stop watching ``node`` (a reload removed it): it shows ``unused`` from now on
        and is never checked again; its id stays taken."""
        self._removed.add(node)
        self._unchecked.discard(node)
        if self._tasks:
            self._tasks[node].cancel()
        self._assessor.detach(node, time.time())
        # Whoever waits for a check of it gets its state now (no check is coming).
        self._tell(node, self._waiting[node])
        self._tell(node, self._told_at_outcome[node])
        # Published even when the assessor saw no change (the node was detached).
        self._publish(self._assessor.view)

    async def check_now(self, node: int) -> NodeState:
        """Check ``node`` now (with its retries, if the check fails); its state after.

        Unlike a suspicion, it does not wait out ``retry_delay`` after the previous check:
        it is asked for once, after an action whose outcome must be published at once
        (a promotion). A detached node, or one asked about while the monitor is stopped,
        is not checked. Raises CancelledError when the monitor stops first.
        """
        if not self._tasks or not self._assessor.checked(node):
            return self._assessor.view.nodes[node]
        waiter: asyncio.Future[NodeState] = asyncio.get_running_loop().create_future()
        self._waiting[node].append(waiter)
        self._urgent[node] = True
        self._wake[node].set()
        return await waiter

    def _suspect(self, node: int, reason: str) -> None:
        """The data path saw ``node`` fail: check it now rather than at its next period."""
        if not self._tasks or not 0 <= node < len(self._backends) or node in self._removed:
            return
        # A node already down or detached gains nothing from more checks.
        if self._assessor.view.nodes[node].status is not NodeStatus.UP:
            return
        if not self._wake[node].is_set():
            log.debug("node suspected", extra={"node": node, "why": reason})
            self._wake[node].set()

    async def _watch(self, node: int) -> None:
        """Check ``node`` for as long as the monitor runs."""
        while True:
            # Whoever woke the node before now is answered by this round; whoever wakes
            # it from here on may have seen something a check now starts too early to see.
            self._wake[node].clear()
            if self._assessor.checked(node):
                await self._check(node)
            else:
                self._tell(node, self._waiting[node])
            await self._pause(node)

    async def _check(self, node: int) -> None:
        """One check of ``node``, its outcome to the assessor, the view published."""
        self._told_at_outcome[node] += self._waiting[node]
        self._waiting[node] = []
        try:
            probe = await self._probe(node)
        # Whatever went wrong (refused, reset, timed out, login refused, a reply we
        # cannot read), the node did not pass its check; the reason says why.
        except Exception as exc:
            reason = _describe(exc)
            log.debug("check failed", extra={"node": node, "why": reason})
            view = self._assessor.failed(node, reason, time.time())
            if not self._assessor.retrying(node):
                self._unchecked.discard(node)
            self._publish(view)
        else:
            self._unchecked.discard(node)
            self._publish(self._assessor.succeeded(node, probe, time.time()))
        self._last_check_end[node] = time.monotonic()
        if not self._assessor.retrying(node):
            self._tell(node, self._told_at_outcome[node])

    async def _pause(self, node: int) -> None:
        """Wait until the next check of ``node`` is due.

        The delay between retries is kept whatever happens; a period (or a detached
        node's idleness) ends early when the node is woken. A woken node is not checked
        sooner than ``retry_delay`` after its last check, so that a storm of suspicions
        from the data path costs one check per ``retry_delay``, not one per failure.
        """
        if self._assessor.retrying(node):
            await asyncio.sleep(self._health.retry_delay)
            return
        timeout = self._health.period if self._assessor.checked(node) else None
        try:
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for may swallow the
            # cancel of stop() when the wait ends at that moment, and stop() never ends.
            async with asyncio.timeout(timeout):
                await self._wake[node].wait()
        except TimeoutError:
            return
        if self._urgent[node]:
            self._urgent[node] = False
            return
        spacing = self._last_check_end[node] + self._health.retry_delay - time.monotonic()
        if spacing > 0:
            await asyncio.sleep(spacing)

    async def _probe(self, node: int) -> Probe:
        """One check: a new connection, the queries, a clean close; all within timeout."""
        backend = self._backends[node]
        health = self._health
        async with asyncio.timeout(health.timeout):
            conn = await control_connect(backend, health, APPLICATION_NAME)
            try:
                state = await conn.fetchrow(STATE_SQL)
                replication = [] if state["in_recovery"] else await conn.fetch(REPLICATION_SQL)
                await conn.close()
            finally:
                if not conn.is_closed():
                    conn.terminate()
        return probe_from_rows(state, replication)

    def _publish(self, view: ClusterView | None) -> None:
        if view is not None:
            try:
                self._cluster.publish(self._shown(view))
            # A listener's bug must not end the checks of a node; the view is in place.
            except Exception:
                log.exception("a cluster view listener failed")
        if self._assessor.ready:
            self._first_view.set()

    def _shown(self, view: ClusterView) -> ClusterView:
        """The assessor's view as the pooler sees it: removed nodes unused, added ones
        unchecked until their first check."""
        if not self._removed and not self._unchecked:
            return view
        nodes = list(view.nodes)
        for node in self._removed:
            nodes[node] = nodes[node].with_(status=NodeStatus.UNUSED, reason=REMOVED_REASON)
        for node in self._unchecked:
            nodes[node] = NodeState(node, reason="not checked yet")
        return ClusterView(tuple(nodes))

    def _tell(self, node: int, waiters: list[asyncio.Future[NodeState]]) -> None:
        """Resolve ``check_now`` callers with the node's state now."""
        state = self._assessor.view.nodes[node]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(state)
        waiters.clear()


class _Assessor(Assessor):
    """The assessor, able to take one more node (a reload added it)."""

    def add_node(self) -> None:
        """One more node, not checked yet: it keeps its first state (up, no role) until
        its first outcome, and does not hold back the views of the others."""
        node = len(self.view.nodes)
        self._outcomes.append(None)
        self._failures.append(0)
        self.view = ClusterView((*self.view.nodes, NodeState(node)))


def _describe(exc: Exception) -> str:
    """Why a check failed, for the node's ``reason`` and the logs."""
    if isinstance(exc, TimeoutError):
        return "no answer within the health check timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
