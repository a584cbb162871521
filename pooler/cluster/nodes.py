"""Node states: what the cluster monitor publishes and routing reads (sans-IO).

A ``ClusterView`` is immutable; the monitor replaces the whole view at once
(``Cluster.publish``), so a reader never sees half of an update. Until a monitor runs,
node 0 is the primary and every other node a healthy standby with no lag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum


class NodeStatus(StrEnum):
    """Whether a node takes traffic."""

    UP = "up"
    DOWN = "down"
    #: Taken out of rotation by an operator (or fenced); it gets nothing until attached.
    DETACHED = "detached"
    #: Removed from the config by a reload: drained, never checked again; its id is
    #: never given to another server (pgpool-II's ``unused``).
    UNUSED = "unused"


class NodeRole(StrEnum):
    """What a node is, as discovered (never configured)."""

    PRIMARY = "primary"
    STANDBY = "standby"
    #: Claims to be a primary while another node is the primary: gets no traffic.
    FALSE_PRIMARY = "false_primary"
    #: Never reached yet.
    UNKNOWN = "unknown"


def parse_lsn(text: str) -> int:
    """A WAL position as PostgreSQL prints it (``16/B374D848``) as an integer."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    """An integer WAL position as PostgreSQL prints it."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, slots=True)
class Replica:
    """One row of a primary's ``pg_stat_replication``: a standby streaming from it."""

    #: The standby's ``application_name`` (its ``cluster_name`` unless set otherwise).
    name: str
    #: The standby's IP address; None over a Unix socket.
    address: str | None
    #: ``startup``, ``catchup``, ``streaming``, ``backup`` or ``stopping``.
    state: str
    #: ``async``, ``potential``, ``sync`` or ``quorum``.
    sync_state: str
    #: The last WAL position the standby reported replayed.
    replay_lsn: int | None


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node at one moment."""

    node: int
    status: NodeStatus = NodeStatus.UP
    role: NodeRole = NodeRole.UNKNOWN
    #: Bytes of WAL the primary has that this standby has not replayed (0 on a primary).
    lag_bytes: int = 0
    #: Seconds since the last transaction this standby replayed was committed on the
    #: primary, while it is behind; 0 when it has replayed everything it received.
    lag_seconds: float = 0.0
    #: Standby: the last WAL position replayed. Primary: its current WAL position.
    replay_lsn: int | None = None
    #: Standby: the last WAL position received and flushed to disk.
    flush_lsn: int | None = None
    timeline: int | None = None
    #: Wall-clock time (time.time()) of the last change of status or role.
    changed_at: float = 0.0
    #: Why the node is down or detached, for logs and admin views.
    reason: str = ""
    #: Standby: the last WAL position received (written, maybe not yet flushed).
    receive_lsn: int | None = None
    #: Standby: when the last transaction it replayed was committed on the primary
    #: (time.time() scale, from ``pg_last_xact_replay_timestamp()``).
    replay_time: float | None = None
    #: Primary: its ``pg_stat_replication``, by standby name.
    replicas: tuple[Replica, ...] = ()
    #: DOWN although it answers its checks as a standby: it came back (after being down,
    #: or a false primary) and stays out of rotation until it streams from the primary
    #: (``failover.auto_failback``).
    held: bool = False

    @property
    def up(self) -> bool:
        """Takes traffic."""
        return self.status is NodeStatus.UP

    @property
    def is_primary(self) -> bool:
        """Up and the primary."""
        return self.status is NodeStatus.UP and self.role is NodeRole.PRIMARY

    @property
    def is_standby(self) -> bool:
        """Up and a standby."""
        return self.status is NodeStatus.UP and self.role is NodeRole.STANDBY

    def with_(self, **changes: object) -> NodeState:
        """A copy with ``changes``."""
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ClusterView:
    """Every node at one moment, indexed by node id."""

    nodes: tuple[NodeState, ...]
    #: The node that takes writes, or None while there is none (found once: every
    #: transaction asks).
    primary: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        primary = next((state.node for state in self.nodes if state.is_primary), None)
        object.__setattr__(self, "primary", primary)

    def standbys(self) -> list[int]:
        """Nodes up as standbys."""
        return [state.node for state in self.nodes if state.is_standby]


def initial_view(count: int) -> ClusterView:
    """Before any check: node 0 the primary, the others healthy standbys with no lag."""
    return ClusterView(
        tuple(
            NodeState(node, NodeStatus.UP, NodeRole.PRIMARY if node == 0 else NodeRole.STANDBY)
            for node in range(count)
        )
    )


Listener = Callable[[ClusterView, ClusterView], None]


class Cluster:
    """The current view, and who is told when it changes.

    The monitor publishes; the router reads ``view`` (one attribute read per decision);
    the data path reports what it sees through ``suspect``.
    """

    __slots__ = ("_fences", "_listeners", "_suspects", "view")

    def __init__(self, view: ClusterView) -> None:
        self.view = view
        self._listeners: list[Listener] = []
        self._suspects: list[Callable[[int, str], None]] = []
        self._fences: list[Callable[[int], None]] = []

    def publish(self, view: ClusterView) -> None:
        """Replace the view and tell every listener (old view, new view)."""
        old, self.view = self.view, view
        for listener in self._listeners:
            listener(old, view)

    def grow(self, state: NodeState) -> None:
        """Add a node (id ``len(view.nodes)``) to the view without telling listeners:
        a node that was not there has no change to report, and every view they are
        shown has as many nodes as the one before."""
        if state.node != len(self.view.nodes):
            raise ValueError(f"node {state.node} added to a view of {len(self.view.nodes)}")
        self.view = ClusterView((*self.view.nodes, state))

    def on_change(self, listener: Listener) -> None:
        """Call ``listener(old, new)`` after each ``publish``."""
        self._listeners.append(listener)

    def on_suspect(self, callback: Callable[[int, str], None]) -> None:
        """Call ``callback(node, reason)`` when the data path suspects a node is down."""
        self._suspects.append(callback)

    def suspect(self, node: int, reason: str) -> None:
        """The data path saw a node fail (refused or reset connection): check it now."""
        for callback in self._suspects:
            callback(node, reason)

    def on_fence(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(node)`` when ``node`` is fenced."""
        self._fences.append(callback)

    def fence(self, node: int) -> None:
        """Another node is about to be promoted in place of ``node``: every server
        connection to it is closed now, those serving a client too, so that no session
        writes there once it may come back (a hung primary resumes) as a second primary."""
        for callback in self._fences:
            callback(node)
