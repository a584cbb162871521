"""Automatic failover: the actions behind ``pooler.cluster.failover``'s decisions.

``Failover`` listens to the cluster's views. While a primary is up it remembers the
primary's WAL position and reads its ``synchronous_standby_names``. When the primary is
DOWN it asks every standby about its WAL receiver, lets ``decide`` choose, and carries
the decision out: ``SELECT pg_promote()`` on the chosen standby (or the operator's
``failover.command``), a check of that node at once so the monitor publishes it as the
primary (routing follows the view by itself), then each other standby repointed at it
(``failover.follow_primary``). A standby that was down or detached at that moment is
repointed when it answers again (it still points at the old primary). A refusal is
logged once per change of its reason, and writes get an error until a person acts.
The old primary coming back as a primary is fenced by the monitor (a false primary gets
no query); this logs it as an error.

Wiring::

    failover = Failover(config.backends, config.health_check, config.failover,
                        cluster, monitor)
    await failover.start()    # after monitor.start()
    ...
    await failover.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import asyncpg

from pooler.cluster.control import control_connect
from pooler.cluster.failover import (
    CommandValues,
    LastPrimary,
    Promote,
    Refuse,
    StandbyReport,
    command_line,
    decide,
    parse_synchronous_standby_names,
    primary_conninfo,
    slot_name,
    walreceiver_name,
)
from pooler.cluster.monitor import Monitor
from pooler.cluster.nodes import Cluster, ClusterView, NodeRole, NodeStatus, parse_lsn
from pooler.config import Backend, HealthCheck
from pooler.config import Failover as FailoverConfig

__all__ = ["APPLICATION_NAME", "Failover", "SwitchoverError"]

log = logging.getLogger("pooler.cluster")

#: What the failover's connections show in ``pg_stat_activity``.
APPLICATION_NAME = "pooler failover"
#: Seconds ``pg_promote`` waits for the end of recovery (PostgreSQL's default is 60).
PROMOTE_TIMEOUT = 60
#: Seconds between two reads of the primary's ``synchronous_standby_names``, which a
#: reload can change.
SYNC_REFRESH = 10.0
_POLL = 0.2

# One row whatever the state of the WAL receiver (none while it is not running).
_STANDBY_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       coalesce(r.status = 'streaming', false) AS streaming,
       r.written_lsn AS receive_lsn,
       pg_last_wal_receive_lsn() AS flush_lsn,
       current_setting('primary_conninfo') AS primary_conninfo,
       current_setting('cluster_name') AS cluster_name
FROM (SELECT) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true"""

_CREATE_SLOT_SQL = """\
SELECT pg_create_physical_replication_slot($1, true)
WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)"""


class SwitchoverError(Exception):
    """A switchover stopped; the message says at which step and why."""


@contextlib.asynccontextmanager
async def _connected(backend: Backend, health: HealthCheck) -> AsyncIterator[asyncpg.Connection]:
    """A control connection to ``backend``, closed cleanly after (dropped on error)."""
    conn = await control_connect(backend, health, APPLICATION_NAME)
    try:
        yield conn
        await conn.close()
    finally:
        if not conn.is_closed():
            conn.terminate()


def _literal(text: str) -> str:
    """A SQL string literal (ALTER SYSTEM takes no parameters)."""
    return "'" + text.replace("'", "''") + "'"


class Failover:
    """Promotes a standby when the primary is down, as ``failover`` configures it."""

    def __init__(
        self,
        backends: Sequence[Backend],
        health: HealthCheck,
        policy: FailoverConfig,
        cluster: Cluster,
        monitor: Monitor,
    ) -> None:
        # Not copied: the pooler's own list, which a reload that adds a node extends (a
        # new node may be the one promoted).
        self._backends = backends
        self._health = health
        self._policy = policy
        self._cluster = cluster
        self._monitor = monitor
        self._user = policy.replication_user or health.user
        self._password = policy.replication_password if policy.replication_user else health.password
        self._last: LastPrimary | None = None
        self._sync_read_at = 0.0
        #: Standbys that went down and the primary then, for failover.command (pgpool-II
        #: runs it for them too).
        self._down: list[tuple[int, int]] = []
        #: The old primary for which failover.command already ran.
        self._commanded: int | None = None
        #: The last refusal logged, so that each is logged once.
        self._refusal: str | None = None
        #: Nodes that were the primary before a promotion: back as primaries, they are
        #: fenced, and said so loudly.
        self._replaced: set[int] = set()
        #: Standbys that were not repointed when the primary changed (down or detached
        #: then): repointed once they answer again, by a task of their own.
        self._unfollowed: set[int] = set()
        self._following: dict[int, asyncio.Task[None]] = {}
        #: failover.switchover_command runs.
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        cluster.on_change(self._changed)

    async def start(self) -> None:
        """Start watching (after the monitor published its first view)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pooler failover")

    async def stop(self) -> None:
        """Stop; a promotion under way is abandoned where it is."""
        task, self._task = self._task, None
        tasks = [
            *self._following.values(),
            *self._background,
            *([task] if task is not None else []),
        ]
        self._following.clear()
        for each in tasks:
            each.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the views --------------------------------------------------------------------

    def _changed(self, old: ClusterView, new: ClusterView) -> None:
        primary = new.primary
        if primary is not None:
            lsn = new.nodes[primary].replay_lsn
            if self._last is None or self._last.node != primary:
                self._last = LastPrimary(primary, lsn)
            else:
                self._last = replace(self._last, lsn=lsn)
            self._refusal = None
            self._commanded = None
        for before, after in zip(old.nodes, new.nodes, strict=True):
            if before.up and after.status is NodeStatus.DOWN and before.role is NodeRole.STANDBY:
                self._down.append((after.node, old.primary if old.primary is not None else -1))
            if (
                after.up
                and after.role is NodeRole.FALSE_PRIMARY
                and after.node in self._replaced
                and not (before.up and before.role is NodeRole.FALSE_PRIMARY)
            ):
                log.error(
                    "the old primary is back and claims to be a primary: fenced, it gets no "
                    "query; rebuild it as a standby of the new primary (pg_rewind)",
                    extra={"node": after.node, "primary": primary},
                )
            if (
                after.node in self._unfollowed
                and (after.held or after.is_standby)
                and primary is not None
                and after.node not in self._following
            ):
                self._unfollowed.discard(after.node)
                self._following[after.node] = asyncio.create_task(
                    self._follow_late(after.node, primary),
                    name=f"pooler failover: node {after.node} follows",
                )
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._step()
            # A bug or an odd answer must not end failover for good; the next view retries.
            except Exception:
                log.exception("failover step failed")
            # asyncio.timeout, not wait_for: in Python 3.11 wait_for may swallow the
            # cancel of stop() when the wait ends at that moment, and the task runs on.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._health.period):
                    await self._wake.wait()

    async def _step(self) -> None:
        acting = self._policy.auto_promote
        while self._down:
            node, primary = self._down.pop(0)
            if acting and self._policy.command is not None:
                await self._run_command(
                    self._policy.command, CommandValues(node, primary, primary, primary)
                )
        view = self._cluster.view
        if view.primary is not None:
            stale = time.monotonic() - self._sync_read_at > SYNC_REFRESH
            if acting and (stale or not (self._last and self._last.sync_known)):
                await self._read_sync(view.primary)
            return
        last = self._last
        reports: list[StandbyReport] = []
        if acting and last is not None:
            reports = await self._reports(view, last.node)
            # The old primary may be back while the standbys were asked: decide on now.
            view = self._cluster.view
        decision = decide(view, last, reports, self._policy)
        if isinstance(decision, Refuse):
            if decision.reason != self._refusal:
                self._refusal = decision.reason
                log.error(
                    "the primary is down and no standby is promoted: writes fail until a "
                    "person acts or this changes",
                    extra={"why": decision.reason, "old_primary": last and last.node},
                )
        elif isinstance(decision, Promote) and last is not None:
            await self._promote(decision, last.node)

    # --- reading ----------------------------------------------------------------------

    def _connected(self, node: int) -> contextlib.AbstractAsyncContextManager[asyncpg.Connection]:
        return _connected(self._backends[node], self._health)

    async def _read_sync(self, primary: int) -> None:
        """Read the primary's ``synchronous_standby_names`` into ``_last``."""
        try:
            async with asyncio.timeout(self._health.timeout):
                async with self._connected(primary) as conn:
                    text = await conn.fetchval(
                        "SELECT current_setting('synchronous_standby_names')"
                    )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.debug(
                "cannot read synchronous_standby_names", extra={"node": primary, "why": str(exc)}
            )
            return
        try:
            sync = parse_synchronous_standby_names(text)
        except ValueError as exc:
            log.warning(
                "cannot read synchronous_standby_names", extra={"node": primary, "why": str(exc)}
            )
            return
        self._sync_read_at = time.monotonic()
        if self._last is not None and self._last.node == primary:
            self._last = replace(self._last, sync=sync, sync_known=True)

    async def _reports(self, view: ClusterView, old_primary: int) -> list[StandbyReport]:
        """What every standby up says about its WAL receiver (those that answer)."""
        nodes = [node for node in view.standbys() if node != old_primary]
        found = await asyncio.gather(*(self._report(node) for node in nodes))
        return [report for report in found if report is not None]

    async def _report(self, node: int) -> StandbyReport | None:
        try:
            async with asyncio.timeout(self._health.timeout):
                async with self._connected(node) as conn:
                    row = await conn.fetchrow(_STANDBY_SQL)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.debug("standby not asked", extra={"node": node, "why": str(exc)})
            return None
        if not row["in_recovery"]:
            return None
        return StandbyReport(
            node,
            walreceiver_name(row["primary_conninfo"], row["cluster_name"]),
            row["streaming"],
            row["flush_lsn"],
            row["receive_lsn"],
        )

    # --- acting -----------------------------------------------------------------------

    async def _promote(self, decision: Promote, old_primary: int) -> None:
        node = decision.node
        fields = {
            "node": node,
            "old_primary": old_primary,
            "why": decision.why,
            "writes_possibly_lost_bytes": decision.lost_bound,
        }
        command = self._policy.command
        if command is not None and self._commanded == old_primary:
            return
        # A hung primary may resume: sessions still on it would write to a second primary.
        self._cluster.fence(old_primary)
        if command is not None:
            self._commanded = old_primary
            log.warning("the primary is down: running failover.command", extra=fields)
            await self._run_command(
                command, CommandValues(old_primary, node, old_primary, old_primary)
            )
        else:
            log.warning("the primary is down: promoting a standby", extra=fields)
            started = time.monotonic()
            failed = await self._pg_promote(node)
            if failed is not None:
                log.error("promotion failed; retrying", extra={"node": node, "why": failed})
                return
            log.info(
                "promoted", extra={"node": node, "seconds": round(time.monotonic() - started, 3)}
            )
        # Routing follows the view: publish the new primary now, not at its next check.
        await self._monitor.check_now(node)
        primary = self._cluster.view.primary
        if primary is None:
            log.error("no primary after the promotion; retrying", extra={"node": node})
            return
        if primary == old_primary:
            # It answered again before the promoted node did: the monitor keeps the
            # primary it had while that one claims to be one, so writes go on to it
            # alone, and the promoted node is fenced as a false primary.
            log.error(
                "the old primary came back during the promotion and stays the primary; "
                "the promoted node is fenced: rebuild it as a standby",
                extra={"node": node, "primary": primary},
            )
            return
        self._replaced.add(old_primary)
        # failover.command may have promoted another node than the one it was given.
        log.warning(
            "new primary: writes go to it", extra={"node": primary, "old_primary": old_primary}
        )
        if self._policy.follow_primary:
            await self._follow_all(primary, old_primary)

    async def _follow_all(self, primary: int, old_primary: int) -> None:
        """Repoint every standby up at ``primary``; the others (down, detached, held)
        are repointed when they answer again (``_follow_late``)."""
        others = [n for n in self._cluster.view.standbys() if n != primary]
        self._unfollowed |= set(range(len(self._backends))) - {primary, old_primary, *others}
        self._unfollowed -= self._following.keys()
        if self._unfollowed:
            log.info(
                "standbys not up now follow the new primary once they answer",
                extra={"nodes": sorted(self._unfollowed), "primary": primary},
            )
        await asyncio.gather(*(self._follow(standby, primary) for standby in others))

    async def _follow_late(self, node: int, primary: int) -> None:
        """A standby that missed the change of primary answers again: repoint it (it
        comes back into rotation once it streams, ``failover.auto_failback``)."""
        try:
            log.info(
                "standby that missed the promotion answers: repointing it",
                extra={"node": node, "primary": primary},
            )
            if await self._follow(node, primary) is None:
                self._unfollowed.add(node)  # not reached: again when it answers
        finally:
            self._following.pop(node, None)

    # --- switchover -------------------------------------------------------------------

    async def switchover(self, new: int, idle: Callable[[int], bool], timeout: float) -> None:
        """Make standby ``new`` the primary, losing nothing: the caller holds new
        transactions back; this waits until ``idle(old primary)`` (none runs there),
        then until ``new`` has replayed all of the old primary's WAL (each within
        ``timeout`` seconds), detaches the old primary (fenced: no queries, no checks
        until ATTACH NODE, once it is rebuilt as a standby), promotes ``new``, publishes
        it and repoints the other standbys (``failover.follow_primary``).

        Raises SwitchoverError naming the step that failed; the old primary is attached
        again when ``new`` was not promoted.
        """
        old = self._cluster.view.primary
        if old is None or old == new:
            raise SwitchoverError("there is no other primary to switch over from")
        deadline = time.monotonic() + timeout
        while not idle(old):
            if time.monotonic() > deadline:
                raise SwitchoverError(f"transactions still run on node {old} after {timeout} s")
            await asyncio.sleep(_POLL / 4)
        try:
            async with asyncio.timeout(timeout):
                async with self._connected(old) as conn:
                    end = parse_lsn(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
                async with self._connected(new) as conn:
                    while True:
                        replayed = await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text")
                        if replayed is not None and parse_lsn(replayed) >= end:
                            break
                        await asyncio.sleep(_POLL / 4)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise SwitchoverError(f"node {new} did not catch up with node {old}: {exc}") from exc
        self._monitor.detach(old)
        failed = await self._pg_promote(new)
        if failed is not None:
            self._monitor.attach(old)
            raise SwitchoverError(f"node {new} was not promoted: {failed}")
        self._replaced.add(old)
        await self._monitor.check_now(new)
        if self._cluster.view.primary != new:
            raise SwitchoverError(f"node {new} was promoted but is not seen as the primary")
        log.warning("switchover: new primary", extra={"node": new, "old_primary": old})
        if self._policy.follow_primary:
            await self._follow_all(new, old)
        if self._policy.switchover_command is not None:
            # In the background: the switchover is over, and held clients go on.
            task = asyncio.create_task(
                self._restart_old_primary(old, new), name="pooler failover: switchover_command"
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _restart_old_primary(self, old: int, new: int) -> None:
        """Run failover.switchover_command for the old primary; when it succeeds, the
        node is checked again and comes back into rotation once it streams from the new
        primary (still a primary, it is fenced as a false primary)."""
        assert self._policy.switchover_command is not None
        values = CommandValues(failed=old, new_main=new, old_main=old, old_primary=old)
        if await self._run_command(self._policy.switchover_command, values, "switchover_command"):
            self._monitor.attach(old, held=True)
        else:
            log.error(
                "the old primary stays detached: rebuild it as a standby, then ATTACH NODE",
                extra={"node": old, "primary": new},
            )

    async def _pg_promote(self, node: int) -> str | None:
        """Promote ``node`` with pg_promote(); None when done, else why not."""
        try:
            async with asyncio.timeout(PROMOTE_TIMEOUT + self._health.timeout):
                async with self._connected(node) as conn:
                    done = await conn.fetchval(
                        "SELECT pg_promote(wait => true, wait_seconds => $1)", PROMOTE_TIMEOUT
                    )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            return str(exc)
        return None if done else "the promotion did not finish in time"

    async def _run_command(
        self, template: str, values: CommandValues, key: str = "command"
    ) -> bool:
        """Run ``template`` (failover.command for one node that went down, as pgpool-II
        would, or failover.switchover_command); whether it exited with 0."""
        line = command_line(template, values, self._backends)
        # Its output goes to a file, not a pipe: a server the command starts may keep
        # the pipe open for good, and the end of the command is what counts.
        with tempfile.TemporaryFile() as output:
            proc = await asyncio.create_subprocess_shell(
                line, stdin=asyncio.subprocess.DEVNULL, stdout=output, stderr=output
            )
            await proc.wait()
            output.seek(max(0, output.seek(0, os.SEEK_END) - 2000))
            said = output.read().decode(errors="replace")
        fields = {"command": line, "status": proc.returncode, "output": said}
        if proc.returncode == 0:
            log.info(f"failover.{key} ran", extra=fields)
            return True
        log.error(f"failover.{key} failed", extra=fields)
        return False

    async def _follow(self, node: int, primary: int) -> bool | None:
        """Repoint standby ``node`` at ``primary`` and see whether it streams from it;
        None when it could not be repointed."""
        target = self._backends[primary]
        slot = slot_name(self._backends[node], node)
        try:
            async with asyncio.timeout(self._health.timeout * 4):
                async with self._connected(primary) as conn:
                    await conn.execute(_CREATE_SLOT_SQL, slot)
                async with self._connected(node) as conn:
                    row = await conn.fetchrow(_STANDBY_SQL)
                    name = walreceiver_name(row["primary_conninfo"], row["cluster_name"])
                    conninfo = primary_conninfo(target, self._user, self._password, name)
                    await conn.execute(f"ALTER SYSTEM SET primary_conninfo = {_literal(conninfo)}")
                    await conn.execute(f"ALTER SYSTEM SET primary_slot_name = {_literal(slot)}")
                    await conn.execute("SELECT pg_reload_conf()")
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            log.error(
                "standby not repointed at the new primary",
                extra={"node": node, "primary": primary, "why": str(exc)},
            )
            return None
        fields = {"node": node, "primary": primary, "slot": slot}
        started = time.monotonic()
        if await self._streams_from(node, primary):
            log.info(
                "standby follows the new primary",
                extra={**fields, "seconds": round(time.monotonic() - started, 3)},
            )
            return True
        # Time would not help one whose WAL went past the new primary's timeline
        # switch: it needs pg_rewind.
        log.error(
            "standby repointed but not streaming from the new primary within "
            "failover.follow_timeout: it may have WAL past the new primary's timeline "
            "switch and need pg_rewind (not done by the pooler)",
            extra={**fields, "follow_timeout": self._policy.follow_timeout},
        )
        return False

    async def _streams_from(self, node: int, primary: int) -> bool:
        """Whether standby ``node`` streams the timeline of ``primary`` within
        follow_timeout.

        "streaming" alone (the standby's WAL receiver, or the primary's WAL sender) is
        not enough: a standby that cannot switch to the new timeline still connects and
        streams the old one up to the switch point. Only one that follows receives WAL of
        the new timeline.
        """
        timeline = self._cluster.view.nodes[primary].timeline
        deadline = time.monotonic() + self._policy.follow_timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError, asyncpg.PostgresError):
                async with asyncio.timeout(self._health.timeout):
                    async with self._connected(node) as conn:
                        row = await conn.fetchrow(
                            "SELECT status, received_tli FROM pg_stat_wal_receiver"
                        )
                if (
                    row is not None
                    and row["status"] == "streaming"
                    and (timeline is None or row["received_tli"] == timeline)
                ):
                    return True
            await asyncio.sleep(_POLL)
        return False
