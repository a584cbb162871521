"""Which node serves a request: the primary for writes; for reads, the less busy of two
weighted random picks among the nodes fit to serve them.

Weights are pgpool-II's ``backend_weight``: each node's share of load-balanced reads,
the primary's included. A node of weight 0 gets reads only when no node of weight above
0 may serve them: the primary then (``fallback_to_primary``), else such a standby. A
standby serves reads only while up and within the lag limits, and, for a
client that must see its own writes, once it has replayed past them.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from pooler.cluster.nodes import ClusterView, NodeState
from pooler.routing.targets import Target


@dataclass(frozen=True, slots=True)
class Limits:
    """When a standby is too far behind to serve reads (0: no limit)."""

    max_lag_bytes: int = 0
    max_lag_seconds: float = 0.0
    #: With no node fit for a read, the primary serves it; else the read fails.
    fallback_to_primary: bool = True


class Balancer:
    """Picks nodes; counts the requests each node has in flight."""

    __slots__ = ("_cache", "_cached_view", "_random", "inflight", "limits", "reads", "weights")

    def __init__(
        self, weights: Sequence[float], limits: Limits, rng: random.Random | None = None
    ) -> None:
        self.weights = tuple(weights)
        self.limits = limits
        #: Requests (server checkouts) running on each node now.
        self.inflight = [0] * len(self.weights)
        #: Reads routed to each node since the start (SHOW POOL_NODES' select_cnt).
        self.reads = [0] * len(self.weights)
        self._random = rng if rng is not None else random.Random()
        # The candidates of each target for the last view seen (a view changes when
        # the monitor publishes, reads happen all the time): nodes, cumulative weights.
        self._cached_view: ClusterView | None = None
        self._cache: dict[Target, _Candidates | None] = {}

    def pick(self, view: ClusterView, target: Target, min_lsn: int | None = None) -> int | None:
        """The node to run a request of ``target`` on, or None when no node can.

        ``min_lsn``: the request must see writes up to this WAL position; a standby
        that has not replayed that far (or whose position is unknown) cannot serve it.
        """
        if target is Target.PRIMARY:
            return view.primary
        if min_lsn is not None:
            candidates = self._candidates(view, target, min_lsn)
        else:
            if view is not self._cached_view:
                self._cached_view = view
                self._cache.clear()
            try:
                candidates = self._cache[target]
            except KeyError:
                candidates = self._cache[target] = self._candidates(view, target, None)
        if candidates is None:
            return None
        nodes, cumulative = candidates
        if len(nodes) == 1:
            return nodes[0]
        total = cumulative[-1]
        rand = self._random.random
        first = nodes[bisect(cumulative, rand() * total)]
        second = nodes[bisect(cumulative, rand() * total)]
        # The less busy of the two; on a tie, the first: the weights decide.
        return second if self.inflight[second] < self.inflight[first] else first

    def configure(self, weights: Sequence[float], limits: Limits) -> None:
        """New weights (as many nodes) and limits, from a reload: picks use them now."""
        self.weights = tuple(weights)
        self.limits = limits
        self._cached_view = None
        self._cache.clear()

    def add_node(self, weight: float) -> None:
        """One more node (a reload added it), with its weight."""
        self.weights = (*self.weights, weight)
        self.inflight.append(0)
        self.reads.append(0)
        self._cached_view = None
        self._cache.clear()

    def remove_node(self, node: int) -> None:
        """``node`` was removed: it keeps its counts, and gets weight 0 (it is not up
        either, so it gets nothing)."""
        weights = list(self.weights)
        weights[node] = 0.0
        self.weights = tuple(weights)
        self._cached_view = None
        self._cache.clear()

    def candidates(self, view: ClusterView, target: Target, min_lsn: int | None) -> list[int]:
        """The nodes ``pick`` chooses among now for a request of ``target``."""
        if target is Target.PRIMARY:
            return [] if view.primary is None else [view.primary]
        found = self._candidates(view, target, min_lsn)
        return [] if found is None else found[0]

    def _candidates(
        self, view: ClusterView, target: Target, min_lsn: int | None
    ) -> _Candidates | None:
        """The nodes a read of ``target`` may go to, with their cumulative weights."""
        fit = [state for state in view.nodes if self._serves_reads(state, min_lsn)]
        if target is Target.STANDBY:
            standbys = [state for state in fit if not state.is_primary]
            fit = standbys or fit
        nodes = [state.node for state in fit if self.weights[state.node] > 0]
        if nodes:
            return nodes, list(accumulate(self.weights[node] for node in nodes))
        primary = view.primary
        if self.limits.fallback_to_primary and primary is not None:
            return [primary], [1.0]
        # Nodes of weight 0 serve only when nothing else may.
        nodes = [state.node for state in fit if not state.is_primary]
        if not nodes:
            return None
        return nodes, list(accumulate(1.0 for _ in nodes))

    def _serves_reads(self, state: NodeState, min_lsn: int | None) -> bool:
        if state.is_primary:
            return True
        if not state.is_standby:
            return False
        limits = self.limits
        if limits.max_lag_bytes and state.lag_bytes > limits.max_lag_bytes:
            return False
        if limits.max_lag_seconds and state.lag_seconds > limits.max_lag_seconds:
            return False
        if min_lsn is not None:
            return state.replay_lsn is not None and state.replay_lsn >= min_lsn
        return True


_Candidates = tuple[list[int], list[float]]
