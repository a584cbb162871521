"""The cluster monitor's decisions (sans-IO): check outcomes in, cluster views out.

``Assessor`` keeps, per node, the outcome of its latest check and its run of failed
checks, and turns them into the ``ClusterView`` the monitor publishes. It never touches
a socket or a clock: the monitor passes the time in. ``assess`` is the pure part: roles,
statuses and lag from the outcomes and the previous view.

A node counts as down after ``max_retries + 1`` failed checks in a row, the retries
``retry_delay`` apart, each check bounded by ``timeout``; so a node that dies right
after a good check is down within ``down_bound(health)`` seconds.

Failback (pgpool-II's ``auto_failback``): a node that was down, or a false primary, and
answers again as a standby is *held*: it stays DOWN until its WAL receiver streams the
primary's timeline (a standby that still follows a fenced old primary, or none, would
serve reads the primary's writes never reach), then comes back UP by itself. With
``failover.auto_failback`` off it is DETACHED instead, until the operator attaches it.
While no node is the primary there is nothing to stream from: it comes back at once.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from pooler.cluster.checks import Probe
from pooler.cluster.nodes import ClusterView, NodeRole, NodeState, NodeStatus
from pooler.config import HealthCheck

__all__ = ["Assessor", "Outcome", "Unreachable", "assess", "down_bound"]

log = logging.getLogger("pooler.cluster")

DETACHED_REASON = "detached by the operator"
NO_FAILBACK_REASON = (
    "back after being down; failover.auto_failback is false: ATTACH NODE returns it"
)
HELD_REASON = "back, but not streaming from the primary yet"


@dataclass(frozen=True, slots=True)
class Unreachable:
    """A node that failed ``max_retries + 1`` checks in a row; ``reason``: the last error."""

    reason: str


#: The latest conclusion about a node; None before its first one.
Outcome = Probe | Unreachable | None


def down_bound(health: HealthCheck) -> float:
    """Seconds within which a node that stops answering counts as down: the wait for
    its next check, then every try running into its timeout, with the delays between."""
    return (
        health.period
        + (health.max_retries + 1) * health.timeout
        + health.max_retries * health.retry_delay
    )


def assess(
    previous: ClusterView,
    outcomes: Sequence[Outcome],
    detached: Mapping[int, str],
    primary: int | None,
    now: float,
    held: Collection[int] = (),
) -> tuple[ClusterView, int | None]:
    """The new view, and the node that is primary now (or still ``primary``, the one
    chosen last, when no node is).

    A node with no outcome keeps its previous state; an unreachable one keeps its role
    and last readings. ``detached``: node -> why. A node in ``held`` that answers as a
    standby stays DOWN (``NodeState.held``) until it streams the primary's timeline.
    ``now`` (time.time()) stamps status and role changes.
    """
    chosen = _choose_primary(previous, outcomes, detached, primary)
    head = outcomes[chosen] if chosen is not None else None
    primary_lsn = head.current_lsn if isinstance(head, Probe) else None
    nodes = []
    for node, (before, outcome) in enumerate(zip(previous.nodes, outcomes, strict=True)):
        if node in detached:
            after = before.with_(status=NodeStatus.DETACHED, reason=detached[node], held=False)
        elif isinstance(outcome, Unreachable):
            after = before.with_(status=NodeStatus.DOWN, reason=outcome.reason, held=False)
        elif isinstance(outcome, Probe):
            after = _reached(before, outcome, node == chosen, primary_lsn)
            if node in held and isinstance(head, Probe) and not _follows(outcome, head):
                after = after.with_(status=NodeStatus.DOWN, reason=HELD_REASON, held=True)
        else:
            after = before
        if (after.status, after.role) != (before.status, before.role):
            after = after.with_(changed_at=now)
        nodes.append(after)
    return ClusterView(tuple(nodes)), chosen if chosen is not None else primary


def _follows(standby: Probe, primary: Probe) -> bool:
    """Whether ``standby`` streams the timeline of ``primary`` (from it, or from a
    standby of it): a standby still streaming from a fenced old primary streams the old
    timeline."""
    if not standby.in_recovery:
        return True  # a false primary: fenced by its role, not held
    return standby.streaming and primary.timeline in (None, standby.timeline)


def _choose_primary(
    previous: ClusterView,
    outcomes: Sequence[Outcome],
    detached: Mapping[int, str],
    primary: int | None,
) -> int | None:
    """Among the nodes out of recovery: the primary of before while it claims to be one.

    Otherwise the highest timeline, then the lowest id, leaving out a node already found
    a false primary unless its timeline passed that of the primary of before (it was
    promoted since; an old primary coming back has the old timeline).
    """
    claimants = [
        node
        for node, outcome in enumerate(outcomes)
        if node not in detached and isinstance(outcome, Probe) and not outcome.in_recovery
    ]
    if primary in claimants:
        return primary
    known_timeline = previous.nodes[primary].timeline if primary is not None else None
    eligible = [
        node
        for node in claimants
        if previous.nodes[node].role is not NodeRole.FALSE_PRIMARY
        or (_timeline(outcomes[node]) > (known_timeline or 0))
    ]
    if not eligible:
        return None
    chosen = max(eligible, key=lambda node: (_timeline(outcomes[node]), -node))
    if len(eligible) > 1:
        log.error(
            "two primaries and none was primary before: chose by timeline, then lowest id",
            extra={
                "nodes": eligible,
                "timelines": [_timeline(outcomes[node]) for node in eligible],
                "primary": chosen,
            },
        )
    return chosen


def _timeline(outcome: Outcome) -> int:
    return (outcome.timeline or 0) if isinstance(outcome, Probe) else 0


def _reached(before: NodeState, probe: Probe, chosen: bool, primary_lsn: int | None) -> NodeState:
    """The state of a node that answered its check."""
    if not probe.in_recovery:
        return before.with_(
            status=NodeStatus.UP,
            role=NodeRole.PRIMARY if chosen else NodeRole.FALSE_PRIMARY,
            lag_bytes=0,
            lag_seconds=0.0,
            replay_lsn=probe.current_lsn,
            flush_lsn=None,
            receive_lsn=None,
            replay_time=None,
            timeline=probe.timeline,
            reason="",
            replicas=probe.replicas,
            held=False,
        )
    replay = probe.replay_lsn
    lag_bytes = 0
    if primary_lsn is not None and replay is not None:
        # The primary was read at its own check: a standby read later may be ahead.
        lag_bytes = max(0, primary_lsn - replay)
    lag_seconds = 0.0
    received = probe.received_lsn
    if (
        received is not None
        and replay is not None
        and received > replay
        and probe.replay_time is not None
    ):
        lag_seconds = max(0.0, probe.server_time - probe.replay_time)
    return before.with_(
        status=NodeStatus.UP,
        role=NodeRole.STANDBY,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        replay_lsn=replay,
        flush_lsn=probe.flush_lsn,
        receive_lsn=probe.receive_lsn,
        replay_time=probe.replay_time,
        timeline=probe.timeline,
        reason="",
        replicas=(),
        held=False,
    )


class Assessor:
    """Check outcomes of every node -> the views to publish.

    Each ``succeeded``/``failed``/``detach``/``attach`` returns the new view when it
    differs from the last one returned, else None. Nothing is returned before every node
    that is not detached has its first outcome, so that the first view decides roles
    knowing every node (and a failing node had its retries).
    """

    def __init__(self, health: HealthCheck, count: int, auto_failback: bool = True) -> None:
        self._health = health
        self._auto_failback = auto_failback
        #: Before the first check no role is known; status UP as in ``initial_view``.
        self.view = ClusterView(tuple(NodeState(node) for node in range(count)))
        #: The node chosen as primary last; kept while no node is primary.
        self.primary: int | None = None
        self._outcomes: list[Outcome] = [None] * count
        self._failures = [0] * count
        #: Detached nodes -> why (the operator, or failover.auto_failback off).
        self._detached: dict[int, str] = {}
        #: Nodes that must stream from the primary before they are UP again: they were
        #: down or a false primary (see the module's docstring).
        self._held: set[int] = set()
        self._ready = False

    @property
    def ready(self) -> bool:
        """Whether the first view was decided (every node checked or detached)."""
        return self._ready

    def succeeded(self, node: int, probe: Probe, now: float) -> ClusterView | None:
        """A check of ``node`` read ``probe``."""
        self._failures[node] = 0
        self._outcomes[node] = probe
        before = self.view.nodes[node]
        if (
            not self._auto_failback
            and probe.in_recovery
            and node in self._held
            # It comes back now: it was down or a false primary, not already held (as
            # one attached by the pooler is), nor detached, nor never seen.
            and not before.held
            and before.status is not NodeStatus.DETACHED
            and before.role is not NodeRole.UNKNOWN
        ):
            # pgpool-II without auto_failback: a node that left stays out until attached.
            log.warning(
                "node back as a standby: detached until ATTACH NODE "
                "(failover.auto_failback is false)",
                extra={"node": node},
            )
            self._detached[node] = NO_FAILBACK_REASON
            self._held.discard(node)
        return self._update(now)

    def failed(self, node: int, reason: str, now: float) -> ClusterView | None:
        """A check of ``node`` failed (refused, reset, timed out, refused the login...)."""
        self._failures[node] += 1
        if self._failures[node] <= self._health.max_retries:
            return None
        self._outcomes[node] = Unreachable(reason)
        self._held.add(node)
        return self._update(now)

    def retrying(self, node: int) -> bool:
        """Whether the last check of ``node`` failed and it has retries left: the next
        check is due after ``retry_delay``, not after ``period``."""
        return 0 < self._failures[node] <= self._health.max_retries

    def checked(self, node: int) -> bool:
        """Whether ``node`` is to be checked (not detached)."""
        return node not in self._detached

    def detach(self, node: int, now: float) -> ClusterView | None:
        """The operator took ``node`` out: DETACHED, not checked, until ``attach``."""
        self._detached[node] = DETACHED_REASON
        self._failures[node] = 0
        return self._update(now)

    def attach(self, node: int, now: float, held: bool = False) -> ClusterView | None:
        """The operator gave ``node`` back: it stays DETACHED until its next check.

        A node found a false primary gets a fresh judgement: attaching it is how the
        operator says which one is right (detach the other). The operator's word also
        ends a hold; ``held``: the node must still stream from the primary before it is
        UP (attached by the pooler itself, after failover.switchover_command).
        """
        if node not in self._detached:
            return None
        del self._detached[node]
        if held:
            self._held.add(node)
        else:
            self._held.discard(node)
        self._outcomes[node] = None
        if self.view.nodes[node].role is NodeRole.FALSE_PRIMARY:
            nodes = list(self.view.nodes)
            nodes[node] = nodes[node].with_(role=NodeRole.UNKNOWN, changed_at=now)
            self.view = ClusterView(tuple(nodes))
            return self.view if self._ready else None
        return None

    def _update(self, now: float) -> ClusterView | None:
        if not self._ready:
            if any(
                outcome is None and node not in self._detached
                for node, outcome in enumerate(self._outcomes)
            ):
                return None
            self._ready = True
        view, self.primary = assess(
            self.view, self._outcomes, self._detached, self.primary, now, self._held
        )
        for state in view.nodes:
            if state.role is NodeRole.FALSE_PRIMARY and state.up:
                # Rebuilt as a standby later, it must first show that it follows.
                self._held.add(state.node)
            elif state.up:
                self._held.discard(state.node)
        if view == self.view:
            return None
        _log_changes(self.view, view)
        self.view = view
        return view


def _log_changes(old: ClusterView, new: ClusterView) -> None:
    """One line per node whose status or role changed; a false primary is an alarm."""
    for before, after in zip(old.nodes, new.nodes, strict=True):
        if after.held and not before.held:
            log.info(
                "node answers again as a standby; out of rotation until it streams from "
                "the primary",
                extra={"node": after.node, "primary": new.primary},
            )
        if (before.status, before.role) == (after.status, after.role):
            continue
        fields = {
            "node": after.node,
            "status": after.status.value,
            "role": after.role.value,
            "was_status": before.status.value,
            "was_role": before.role.value,
        }
        if after.reason:
            fields["why"] = after.reason
        if after.role is NodeRole.FALSE_PRIMARY and after.up:
            log.error(
                "two primaries: node claims to be primary while another is",
                extra={**fields, "primary": new.primary},
            )
        elif after.up:
            log.info("node state changed", extra=fields)
        else:
            log.warning("node state changed", extra=fields)
