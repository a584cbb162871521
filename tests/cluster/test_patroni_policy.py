"""Patroni as the authority, without PostgreSQL: what a /cluster answer means
(``parse_cluster``, ``Authority``), how it combines with the monitor's view
(``combine``), and the follower's polling against a stdlib HTTP server that answers
as Patroni's REST API would (or does not answer)."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pooler.cluster.nodes import Cluster, ClusterView, NodeRole, NodeState, NodeStatus
from pooler.cluster.patroni import (
    NOT_LEADER,
    Authority,
    Follower,
    PatroniState,
    combine,
    member_nodes,
    parse_cluster,
)
from pooler.config import Backend, HealthCheck

BACKENDS = [
    Backend(host="127.0.0.1", port=5432, name="a"),
    Backend(host="127.0.0.1", port=5433, name="b"),
    Backend(host="db3.example", port=5432, name="node2"),
]


def answer(leader: str | None = "node1", *, state: str = "running", pause: bool = False) -> Any:
    """A /cluster answer as Patroni 4 gives it; ``node2`` has another host name."""
    rows: list[dict[str, Any]] = [
        {"name": "node0", "host": "127.0.0.1", "port": 5432},
        {"name": "node1", "host": "127.0.0.1", "port": 5433, "timeline": 3},
        {"name": "node2", "host": "10.0.0.3", "port": 5432, "lag": 4096},
    ]
    for row in rows:
        if row["name"] == leader:
            row.update(role="leader", state=state)
        else:
            row.update(role="replica", state="streaming", lag=row.get("lag", 0))
    body: dict[str, Any] = {"members": rows, "scope": "demo"}
    if pause:
        body["pause"] = True
    return body


def node(n: int, role: NodeRole, status: NodeStatus = NodeStatus.UP) -> NodeState:
    return NodeState(n, status, role)


def view(*roles: NodeRole | tuple[NodeRole, NodeStatus]) -> ClusterView:
    states = []
    for n, role in enumerate(roles):
        if isinstance(role, tuple):
            states.append(node(n, *role))
        else:
            states.append(node(n, role))
    return ClusterView(tuple(states))


P, S, F = NodeRole.PRIMARY, NodeRole.STANDBY, NodeRole.FALSE_PRIMARY
DOWN = NodeStatus.DOWN


# --- parse_cluster and member matching ---------------------------------------------------


def test_parse_cluster_reads_members_roles_and_pause() -> None:
    state = parse_cluster(answer(pause=True))
    assert state.paused
    assert [m.name for m in state.members] == ["node0", "node1", "node2"]
    leader = state.leader
    assert leader is not None and leader.name == "node1" and leader.timeline == 3
    assert state.members[2].lag == 4096 and state.members[2].role == "replica"


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {"scope": "x"},
        {"members": "x"},
        {"members": [{"role": "leader"}]},
        {"members": [1]},
    ],
    ids=["null", "list", "no-members", "members-string", "nameless", "member-int"],
)
def test_parse_cluster_refuses_what_is_not_patroni(body: object) -> None:
    with pytest.raises(ValueError, match="not Patroni's /cluster"):
        parse_cluster(body)


@pytest.mark.parametrize(
    ("role", "state", "leads"),
    [
        ("leader", "running", True),
        ("master", "running", True),
        ("leader", "stopping", False),
        ("leader", "stopped", False),
        ("standby_leader", "running", False),
        ("sync_standby", "streaming", False),
    ],
)
def test_only_a_running_leader_of_a_primary_cluster_leads(
    role: str, state: str, leads: bool
) -> None:
    body = {"members": [{"name": "x", "role": role, "state": state}]}
    assert (parse_cluster(body).leader is not None) is leads


def test_members_match_backends_by_host_and_port_else_by_name() -> None:
    state = parse_cluster(answer())
    # node0 and node1 by address; node2's host differs, its name is a backend's.
    assert member_nodes(state, BACKENDS) == {"node0": 0, "node1": 1, "node2": 2}
    unnamed = [Backend(host=b.host, port=b.port) for b in BACKENDS]
    assert member_nodes(state, unnamed) == {"node0": 0, "node1": 1}


# --- Authority ----------------------------------------------------------------------------


def messages(notes: list[Any]) -> list[str]:
    return [note.message for note in notes]


def test_authority_names_the_leader_node_and_keeps_it_while_patroni_is_silent() -> None:
    authority = Authority(BACKENDS)
    assert authority.leader is None
    notes = authority.answered(parse_cluster(answer("node1")), "http://p1")
    assert authority.leader == 1 and authority.reachable
    assert any("Patroni names the leader" in m for m in messages(notes))
    # The same answer again: nothing to log.
    assert authority.answered(parse_cluster(answer("node1")), "http://p1") == []

    first = authority.failed("http://p1: Connection refused")
    assert [n.level for n in first] == [logging.ERROR]
    assert "following its last view" in first[0].message
    assert authority.leader == 1 and not authority.reachable
    # Logged once per outage.
    assert authority.failed("http://p1: Connection refused") == []

    back = authority.answered(parse_cluster(answer("node0")), "http://p2")
    assert messages(back)[0] == "Patroni answers again"
    assert authority.leader == 0


def test_authority_before_any_answer_has_no_leader() -> None:
    authority = Authority(BACKENDS)
    notes = authority.failed("timeout")
    assert authority.leader is None and authority.state is None
    assert "no node is the primary until it does" in notes[0].message


def test_authority_without_a_running_leader_or_with_a_stranger_names_none() -> None:
    authority = Authority(BACKENDS)
    authority.answered(parse_cluster(answer("node1")), "u")
    stopping = authority.answered(parse_cluster(answer("node1", state="stopping")), "u")
    assert authority.leader is None
    assert "names no running leader" in messages(stopping)[0]

    stranger = answer(None)
    stranger["members"].append(
        {"name": "x", "role": "leader", "state": "running", "host": "10.9.9.9", "port": 1}
    )
    notes = authority.answered(parse_cluster(stranger), "u")
    assert authority.leader is None
    assert any("none of the backends" in m for m in messages(notes))


def test_authority_says_when_patroni_pauses_and_resumes() -> None:
    authority = Authority(BACKENDS)
    paused = authority.answered(parse_cluster(answer(pause=True)), "u")
    assert any("paused" in m for m in messages(paused))
    resumed = authority.answered(parse_cluster(answer()), "u")
    assert messages(resumed) == ["Patroni is resumed"]


# --- combine ------------------------------------------------------------------------------


def test_writes_go_to_the_leader_only_when_it_is_out_of_recovery() -> None:
    before = view(S, S, S)
    # The monitor sees node 1 out of recovery and Patroni names it: the primary.
    assert combine(before, view(S, P, S), 1, 10.0).primary == 1
    # A node the monitor found false primary is the primary when Patroni names it.
    assert combine(before, view(P, F, S), 1, 10.0).primary == 1
    # Patroni's leader still in recovery (promotion under way): a standby meanwhile.
    promoting = combine(before, view(S, S, S), 1, 10.0)
    assert promoting.primary is None and promoting.nodes[1].role is S
    # Patroni's leader down: no primary; the pooler promotes nothing.
    assert combine(before, view(S, (P, DOWN), S), 1, 10.0).primary is None


def test_a_node_out_of_recovery_that_patroni_does_not_name_is_fenced() -> None:
    combined = combine(view(P, S, S), view(P, P, S), 1, 10.0)
    assert combined.primary == 1
    fenced = combined.nodes[0]
    assert fenced.role is F and fenced.reason == NOT_LEADER and fenced.changed_at == 10.0
    assert combined.standbys() == [2]
    # No Patroni answer yet, or no leader: nobody takes writes.
    nobody = combine(view(P, S, S), view(P, S, S), None, 10.0)
    assert nobody.primary is None and nobody.nodes[0].role is F


def test_combine_keeps_the_monitors_facts_and_stamps_changes() -> None:
    observed = ClusterView(
        (
            NodeState(0, NodeStatus.UP, P, replay_lsn=100),
            NodeState(1, NodeStatus.UP, S, lag_bytes=42, changed_at=3.0),
            NodeState(2, NodeStatus.DETACHED, S, reason="detached by the operator"),
        )
    )
    previous = ClusterView(
        (
            NodeState(0, NodeStatus.UP, P, changed_at=1.0),
            NodeState(1, NodeStatus.UP, S, changed_at=2.0),
            NodeState(2, NodeStatus.UP, S, changed_at=2.0),
        )
    )
    combined = combine(previous, observed, 0, 10.0)
    assert combined.nodes[0].replay_lsn == 100 and combined.nodes[0].changed_at == 1.0
    assert combined.nodes[1].lag_bytes == 42 and combined.nodes[1].changed_at == 2.0
    assert combined.nodes[2].status is NodeStatus.DETACHED and combined.nodes[2].changed_at == 10.0


# --- Follower: the polling, against an HTTP server ------------------------------------


class _Patroni(http.server.BaseHTTPRequestHandler):
    """Answers GET /cluster with the server's ``body`` (status 503 when it is None)."""

    def do_GET(self) -> None:
        body = getattr(self.server, "body", None)
        if self.path != "/cluster" or body is None:
            self.send_error(503)
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def rest_api() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Patroni)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def until_primary(cluster: Cluster, expected: int | None, timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while cluster.view.primary != expected:
            await asyncio.sleep(0.02)


def test_follower_polls_patroni_and_keeps_its_last_view_when_it_goes_silent(
    rest_api: http.server.ThreadingHTTPServer,
) -> None:
    health = HealthCheck(period=0.1, timeout=0.5)
    url = f"http://127.0.0.1:{rest_api.server_address[1]}"
    dead = "http://127.0.0.1:9"  # the discard port: refused

    async def main() -> None:
        observed = Cluster(view(S, P, S))
        cluster = Cluster(view(P, S, S))
        follower = Follower([dead, url], BACKENDS, health, observed, cluster)
        rest_api.body = answer("node1")  # type: ignore[attr-defined]
        await follower.start()
        try:
            # The first poll is over when start returns: the dead URL was skipped.
            assert cluster.view.primary == 1
            # Patroni goes silent: its last view stays.
            rest_api.body = None  # type: ignore[attr-defined]
            await asyncio.sleep(0.3)
            assert not follower.authority.reachable and cluster.view.primary == 1
            # Patroni promotes node 0; the monitor sees it only later.
            rest_api.body = answer("node0")  # type: ignore[attr-defined]
            await until_primary(cluster, None)
            assert cluster.view.nodes[1].role is F
            observed.publish(view(P, S, S))
            await until_primary(cluster, 0)
            # The data path's suspicions reach the monitor's (observed) cluster.
            suspected: list[int] = []
            observed.on_suspect(lambda n, _why: suspected.append(n))
            cluster.suspect(2, "reset")
            assert suspected == [2]
        finally:
            await follower.stop()

    asyncio.run(main())


def test_patroni_state_is_plain_data() -> None:
    assert PatroniState(()).leader is None
