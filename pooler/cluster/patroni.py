"""Patroni as the authority on who is primary (``failover.patroni_urls``).

Patroni (over etcd, Consul, ...) decides which node is the primary and promotes; the
pooler follows its ``GET /cluster`` view and promotes nothing itself: with
``patroni_urls`` set the builtin ``Failover`` (``pooler.cluster.promote``) is not
created. Several poolers in front of one Patroni cluster agree on the primary because
they all ask Patroni, with no consensus protocol of their own.

How Patroni's view and the monitor's combine. The monitor keeps checking every node as
it does without Patroni and publishes what it *observes* (up, down or detached;
in recovery or not; lag) on a ``Cluster`` of its own. ``combine`` turns that and
Patroni's leader into the view that routing reads:

- A node gets writes only if Patroni names it leader (its member's role ``leader``,
  state ``running``) **and** the monitor finds it up and out of recovery. Patroni's
  leader still in recovery (a promotion under way) is a standby until the monitor sees
  it out; Patroni's leader that the monitor finds down gets nothing: writes fail with
  "no primary" until Patroni promotes another node. The pooler never does.
- A node up and out of recovery that Patroni does not name leader is a false primary:
  no queries at all, logged as an error (an old leader not yet demoted, a node started
  by hand).
- Every other fact is the monitor's: a standby takes reads when the monitor finds it
  up and within the load-balancing lag limits, whatever Patroni calls it (``replica``
  or ``sync_standby``); a node Patroni does not know (no member at its host:port or of
  its name) is a standby like any other, and never the primary.
- Patroni unreachable (no URL answers within ``health_check.timeout``): its last view
  stays, the pooler logs it as an error once per outage and promotes nothing. Until
  the first answer no node is the primary (reads go on, writes fail): the pooler does
  not guess.

Backends map to Patroni members by ``host:port`` (Patroni's ``postgresql.
connect_address``), else by ``backends[].name`` equal to the member's name.

The policy (``parse_cluster``, ``Authority``, ``combine``) is sans-IO; ``Follower`` is
the asyncio glue: a ``GET /cluster`` every ``health_check.period`` (``urllib`` in a
thread), at once when the monitor sees a node change status or role, and a check of the
new leader at once when Patroni names one, so that writes move within one period.

Wiring::

    observed = Cluster(initial_view(len(config.backends)))
    monitor = Monitor(config.backends, config.health_check, observed)
    follower = Follower(config.failover.patroni_urls, config.backends,
                        config.health_check, observed, cluster, monitor)
    await monitor.start()
    await follower.start()    # returns after the first poll of Patroni
    ...
    await follower.stop()
    await monitor.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pooler.cluster.monitor import Monitor
from pooler.cluster.nodes import Cluster, ClusterView, NodeRole, NodeState
from pooler.config import Backend, HealthCheck

__all__ = [
    "Authority",
    "Follower",
    "Member",
    "Note",
    "PatroniState",
    "combine",
    "parse_cluster",
]

log = logging.getLogger("pooler.cluster")

#: Roles Patroni gives the member that holds the leader key of a primary cluster
#: (``master`` before Patroni 3, ``primary`` in some versions' REST answers).
LEADER_ROLES = frozenset({"leader", "master", "primary"})
#: The only state in which Patroni's leader takes writes.
RUNNING = "running"
#: Why a node out of recovery gets nothing, for its ``reason``.
NOT_LEADER = "claims to be a primary but Patroni does not name it leader"
#: Answers larger than this are no /cluster view.
_MAX_BODY = 4 * 1024**2


@dataclass(frozen=True, slots=True)
class Member:
    """One member of Patroni's ``/cluster`` answer."""

    name: str
    #: ``leader``, ``replica``, ``sync_standby``, ``quorum_standby``, ``standby_leader``.
    role: str
    #: ``running``, ``streaming``, ``stopped``, ``crashed``, ``starting``...
    state: str
    host: str | None = None
    port: int | None = None
    timeline: int | None = None
    #: Bytes of WAL behind the leader, as Patroni reports it (None when it does not).
    lag: int | None = None

    @property
    def is_leader(self) -> bool:
        """Holds the leader key of a primary cluster and its PostgreSQL runs."""
        return self.role in LEADER_ROLES and self.state == RUNNING


@dataclass(frozen=True, slots=True)
class PatroniState:
    """Patroni's view of the cluster at one moment."""

    members: tuple[Member, ...]
    #: Maintenance mode (``patronictl pause``): Patroni fails nothing over.
    paused: bool = False

    @property
    def leader(self) -> Member | None:
        """The running leader, if there is one."""
        return next((member for member in self.members if member.is_leader), None)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_cluster(body: object) -> PatroniState:
    """Patroni's ``GET /cluster`` answer (parsed JSON) as a ``PatroniState``; raises
    ValueError when it is not one (another service answered on that port)."""
    if not isinstance(body, dict) or not isinstance(body.get("members"), list):
        raise ValueError("the answer has no list of members: not Patroni's /cluster")
    members = []
    for row in body["members"]:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ValueError("a member without a name: not Patroni's /cluster")
        host = row.get("host")
        members.append(
            Member(
                name=row["name"],
                role=str(row.get("role", "")),
                state=str(row.get("state", "")),
                host=host if isinstance(host, str) else None,
                port=_int(row.get("port")),
                timeline=_int(row.get("timeline")),
                lag=_int(row.get("lag")),
            )
        )
    return PatroniState(tuple(members), paused=body.get("pause") is True)


def member_nodes(state: PatroniState, backends: Sequence[Backend]) -> dict[str, int]:
    """Member name -> node id, for the members that are backends: by host:port (TCP),
    else by the backend's name."""
    by_address = {(b.host, b.port): node for node, b in enumerate(backends)}
    by_name = {b.name: node for node, b in enumerate(backends) if b.name is not None}
    found: dict[str, int] = {}
    for member in state.members:
        node = by_address.get((member.host or "", member.port or 0))
        if node is None:
            node = by_name.get(member.name)
        if node is not None:
            found[member.name] = node
    return found


def combine(
    previous: ClusterView, observed: ClusterView, leader: int | None, now: float
) -> ClusterView:
    """The view routing reads: the monitor's ``observed`` view, where only ``leader``
    (the node Patroni names leader; None: none, or Patroni never answered) may be the
    primary. ``previous`` is the last view this returned: a node whose status or role
    differs from it is stamped with ``now``."""
    nodes = []
    for before, seen in zip(previous.nodes, observed.nodes, strict=True):
        state = seen
        if seen.up and seen.role in (NodeRole.PRIMARY, NodeRole.FALSE_PRIMARY):
            if seen.node == leader:
                state = seen.with_(role=NodeRole.PRIMARY)
            else:
                state = seen.with_(role=NodeRole.FALSE_PRIMARY, reason=NOT_LEADER)
        if (state.status, state.role) != (before.status, before.role):
            state = state.with_(changed_at=now)
        else:
            state = state.with_(changed_at=before.changed_at)
        nodes.append(state)
    return ClusterView(tuple(nodes))


@dataclass(frozen=True, slots=True)
class Note:
    """A line for the log: what changed in what Patroni says."""

    level: int
    message: str
    fields: Mapping[str, Any]


class Authority:
    """What Patroni last said, as the node that may be the primary (sans-IO).

    ``answered`` and ``failed`` take the outcome of one poll (every URL tried) and
    return what to log; ``leader`` is the node to route writes to (given the monitor
    agrees), kept from the last answer while Patroni does not answer.
    """

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._backends = tuple(backends)
        #: The last answer; None before the first.
        self.state: PatroniState | None = None
        #: The node of Patroni's running leader in ``state``, if it is a backend.
        self.leader: int | None = None
        #: Whether the last poll got an answer.
        self.reachable = False
        #: Why the last poll got none.
        self.failure: str | None = None
        self._unmatched: frozenset[str] = frozenset()
        self._stray_leader: str | None = None

    def answered(self, state: PatroniState, url: str) -> list[Note]:
        """A poll got ``state`` from ``url``."""
        notes: list[Note] = []
        if not self.reachable and self.failure is not None:
            notes.append(Note(logging.WARNING, "Patroni answers again", {"url": url}))
        before, old_leader = self.state, self.leader
        self.reachable, self.failure, self.state = True, None, state
        nodes = member_nodes(state, self._backends)
        unmatched = frozenset(m.name for m in state.members if m.name not in nodes)
        if unmatched and unmatched != self._unmatched:
            notes.append(
                Note(
                    logging.WARNING,
                    "Patroni members that are none of the backends (matched by host:port, "
                    "else by name): the pooler sends them nothing",
                    {"members": sorted(unmatched)},
                )
            )
        self._unmatched = unmatched
        leader = state.leader
        self.leader = nodes.get(leader.name) if leader is not None else None
        stray = leader.name if leader is not None and self.leader is None else None
        if stray is not None and stray != self._stray_leader:
            notes.append(
                Note(
                    logging.ERROR,
                    "Patroni's leader is none of the backends: writes fail until it is",
                    {"member": stray, "host": leader.host, "port": leader.port} if leader else {},
                )
            )
        self._stray_leader = stray
        if self.leader != old_leader or before is None:
            if self.leader is not None:
                notes.append(
                    Note(
                        logging.WARNING,
                        "Patroni names the leader: writes go to it once it is out of recovery",
                        {"node": self.leader, "member": leader.name if leader else None},
                    )
                )
            elif stray is None:
                notes.append(
                    Note(
                        logging.ERROR,
                        "Patroni names no running leader: writes fail until it promotes one",
                        {"members": {m.name: f"{m.role} {m.state}" for m in state.members}},
                    )
                )
        if before is None or before.paused != state.paused:
            if state.paused:
                notes.append(
                    Note(
                        logging.WARNING,
                        "Patroni is paused (maintenance mode): nobody fails over, the pooler "
                        "neither",
                        {},
                    )
                )
            elif before is not None:
                notes.append(Note(logging.INFO, "Patroni is resumed", {}))
        return notes

    def failed(self, reason: str) -> list[Note]:
        """A poll got no answer from any URL; ``reason`` says why."""
        first = self.reachable or self.failure is None
        self.reachable, self.failure = False, reason
        if not first:
            return []
        if self.state is None:
            return [
                Note(
                    logging.ERROR,
                    "Patroni does not answer: no node is the primary until it does (writes "
                    "fail, reads go on); the pooler promotes nothing",
                    {"why": reason},
                )
            ]
        return [
            Note(
                logging.ERROR,
                "Patroni does not answer: following its last view; the pooler promotes nothing",
                {"why": reason, "node": self.leader},
            )
        ]


# --- asyncio glue -----------------------------------------------------------------------


def _get_cluster(url: str, timeout: float) -> object:
    """``GET url/cluster``, its JSON body (blocking: run it in a thread)."""
    request = urllib.request.Request(
        url.rstrip("/") + "/cluster", headers={"Accept": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.loads(answer.read(_MAX_BODY))


class Follower:
    """Polls Patroni and republishes the monitor's ``observed`` views on ``cluster``
    with Patroni's leader as the only possible primary (see ``combine``)."""

    def __init__(
        self,
        urls: Sequence[str],
        backends: Sequence[Backend],
        health: HealthCheck,
        observed: Cluster,
        cluster: Cluster,
        monitor: Monitor | None = None,
    ) -> None:
        self._urls = tuple(urls)
        self._health = health
        self._observed = observed
        self._cluster = cluster
        #: The Monitor (``check_now``): a node Patroni just named leader is checked at once.
        self._monitor = monitor
        self.authority = Authority(backends)
        #: The URL that answered last: asked first next time.
        self._first = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checks: set[asyncio.Task[NodeState]] = set()
        #: Nothing is published before the first poll: until then a node that claims to
        #: be the primary is neither known right nor known wrong.
        self._polled = False
        self._stopping = False
        observed.on_change(self._observed_changed)
        # The data path reports failures on the cluster it reads; the monitor listens
        # on the observed one.
        cluster.on_suspect(observed.suspect)

    async def start(self) -> None:
        """Ask Patroni once, publish, then keep following it."""
        if self._task is not None:
            return
        self._stopping = False
        await self._poll()
        self._polled = True
        self._publish()
        self._task = asyncio.create_task(self._run(), name="pooler patroni")

    async def stop(self) -> None:
        """Stop polling; the last published view stays."""
        task, self._task = self._task, None
        tasks = [*self._checks] + ([task] if task is not None else [])
        # A cancellation that lands as a wait or a poll ends can be lost (asyncio's
        # wait_for in Python 3.11): the loop also stops on its own once told.
        self._stopping = True
        self._wake.set()
        for pending in tasks:
            pending.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _observed_changed(self, old: ClusterView, new: ClusterView) -> None:
        if not self._polled:
            return
        self._publish()
        # A node that changed status or role may mean that Patroni's view changes too.
        if any(
            (a.status, a.role) != (b.status, b.role)
            for a, b in zip(old.nodes, new.nodes, strict=True)
        ):
            self._wake.set()

    def _publish(self) -> None:
        view = combine(self._cluster.view, self._observed.view, self.authority.leader, time.time())
        if view != self._cluster.view:
            if self.authority.state is not None:
                _log_fencing(self._cluster.view, view)
            self._cluster.publish(view)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._health.period):
                    await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._poll()
            # A bug or an odd answer must not end the following for good.
            except Exception:
                log.exception("polling Patroni failed")

    async def _poll(self) -> None:
        """Ask each URL in turn (the last one that answered first) until one answers."""
        reasons = []
        count = len(self._urls)
        for step in range(count):
            index = (self._first + step) % count
            url = self._urls[index]
            try:
                async with asyncio.timeout(self._health.timeout):
                    body = await asyncio.to_thread(_get_cluster, url, self._health.timeout)
                state = parse_cluster(body)
            except (OSError, TimeoutError, ValueError, urllib.error.URLError) as exc:
                reasons.append(f"{url}: {_describe(exc)}")
                continue
            self._first = index
            old_leader = self.authority.leader
            self._log(self.authority.answered(state, url))
            leader = self.authority.leader
            if leader is not None and leader != old_leader:
                self._check_now(leader)
            if self._polled:
                self._publish()
            return
        self._log(self.authority.failed("; ".join(reasons)))

    def _check_now(self, node: int) -> None:
        """Have the monitor look at Patroni's new leader now, not at its next period."""
        if self._monitor is None:
            return
        task = asyncio.create_task(self._monitor.check_now(node))
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    @staticmethod
    def _log(notes: Sequence[Note]) -> None:
        for note in notes:
            log.log(note.level, note.message, extra=dict(note.fields))


def _log_fencing(old: ClusterView, new: ClusterView) -> None:
    """A node newly fenced because Patroni does not name it leader is an alarm."""
    for before, after in zip(old.nodes, new.nodes, strict=True):
        if after.role is NodeRole.FALSE_PRIMARY and after.up and not _fenced(before):
            log.error(
                "a node claims to be a primary but Patroni does not name it leader: fenced, "
                "it gets no query",
                extra={"node": after.node, "primary": new.primary},
            )


def _fenced(state: NodeState) -> bool:
    return state.up and state.role is NodeRole.FALSE_PRIMARY


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer within the health check timeout"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
