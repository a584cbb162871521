"""The monitor's decisions without sockets: roles, false primaries, lag, retries."""

from __future__ import annotations

import logging

import pytest

from pooler.cluster.assess import Assessor, down_bound
from pooler.cluster.checks import Probe, probe_from_rows
from pooler.cluster.nodes import ClusterView, NodeRole, NodeStatus, Replica
from pooler.config import HealthCheck

NOW = 1_000_000.0
HEALTH = HealthCheck(period=1.0, timeout=2.0, max_retries=2, retry_delay=0.5)


def primary(lsn: int = 5000, timeline: int = 1) -> Probe:
    return Probe(in_recovery=False, server_time=NOW, timeline=timeline, current_lsn=lsn)


def standby(
    replay: int = 5000,
    received: int | None = None,
    replay_time: float | None = NOW - 1,
    streaming: bool = True,
    timeline: int = 1,
) -> Probe:
    return Probe(
        in_recovery=True,
        server_time=NOW,
        timeline=timeline,
        flush_lsn=replay if received is None else received,
        replay_lsn=replay,
        replay_time=replay_time,
        streaming=streaming,
    )


def started(*probes: Probe, health: HealthCheck = HEALTH) -> tuple[Assessor, ClusterView]:
    """An assessor that has seen one check of each node."""
    assessor = Assessor(health, len(probes))
    views = [assessor.succeeded(node, probe, NOW) for node, probe in enumerate(probes)]
    assert views[:-1] == [None] * (len(probes) - 1), "no view before every node is checked"
    assert views[-1] is not None
    return assessor, views[-1]


def roles(view: ClusterView) -> list[NodeRole]:
    return [state.role for state in view.nodes]


def statuses(view: ClusterView) -> list[NodeStatus]:
    return [state.status for state in view.nodes]


def test_roles_are_discovered_and_lag_measured() -> None:
    _, view = started(standby(replay=4000, received=4500), primary(lsn=5000), standby())
    assert roles(view) == [NodeRole.STANDBY, NodeRole.PRIMARY, NodeRole.STANDBY]
    assert statuses(view) == [NodeStatus.UP] * 3
    assert view.primary == 1 and view.standbys() == [0, 2]
    behind, _, caught_up = view.nodes
    assert (behind.lag_bytes, behind.lag_seconds) == (1000, 1.0)
    assert (caught_up.lag_bytes, caught_up.lag_seconds) == (0, 0.0)
    assert view.nodes[1].replay_lsn == 5000
    assert all(state.changed_at == NOW for state in view.nodes)


def test_lag_seconds_zero_when_everything_received_is_replayed() -> None:
    # The primary moved on but the standby has not received it yet: bytes behind, yet
    # replay is not what holds it back.
    _, view = started(primary(lsn=9000), standby(replay=5000, replay_time=NOW - 60))
    assert (view.nodes[1].lag_bytes, view.nodes[1].lag_seconds) == (4000, 0.0)


def test_standby_read_after_the_primary_is_never_negative_lag() -> None:
    _, view = started(primary(lsn=5000), standby(replay=7000, received=7000))
    assert view.nodes[1].lag_bytes == 0


def test_standby_that_never_replayed_a_commit_has_no_lag_seconds() -> None:
    _, view = started(primary(), standby(replay=10, received=20, replay_time=None))
    assert view.nodes[1].lag_seconds == 0.0


def test_no_primary_no_lag_bytes() -> None:
    assessor, _ = started(primary(lsn=9000), standby(replay=1000))
    for _ in range(HEALTH.max_retries + 1):
        view = assessor.failed(0, "refused", NOW + 1)
    assert view is not None and view.primary is None
    view = assessor.succeeded(1, standby(replay=1500), NOW + 2)
    assert view is not None and view.nodes[1].lag_bytes == 0


def test_second_primary_is_false_and_alarms(caplog: pytest.LogCaptureFixture) -> None:
    assessor, _ = started(primary(), standby())
    with caplog.at_level(logging.ERROR, "pooler.cluster"):
        view = assessor.succeeded(1, primary(timeline=2), NOW + 1)
    assert view is not None
    assert roles(view) == [NodeRole.PRIMARY, NodeRole.FALSE_PRIMARY]
    assert view.primary == 0 and view.standbys() == []
    assert view.nodes[1].changed_at == NOW + 1 and view.nodes[0].changed_at == NOW
    assert [r.message for r in caplog.records] == [
        "two primaries: node claims to be primary while another is"
    ]
    assert caplog.records[0].__dict__["node"] == 1


@pytest.mark.parametrize(
    ("timelines", "expected"),
    [((1, 3, 2), 1), ((2, 2, 1), 0), ((1, 2, 2), 1)],
)
def test_two_primaries_at_first_start(
    caplog: pytest.LogCaptureFixture, timelines: tuple[int, ...], expected: int
) -> None:
    with caplog.at_level(logging.ERROR, "pooler.cluster"):
        _, view = started(*(primary(timeline=t) for t in timelines))
    assert view.primary == expected
    assert [n for n, role in enumerate(roles(view)) if role is NodeRole.FALSE_PRIMARY] == [
        n for n in range(3) if n != expected
    ]
    assert caplog.records[0].message.startswith("two primaries and none was primary before")


def test_promoted_standby_takes_over_and_the_old_primary_comes_back_false() -> None:
    assessor, _ = started(primary(lsn=100), standby(replay=100), standby(replay=100))
    for _ in range(HEALTH.max_retries + 1):
        assessor.failed(0, "refused", NOW + 1)
    view = assessor.succeeded(2, primary(lsn=200, timeline=2), NOW + 2)
    assert view is not None and view.primary == 2
    assert view.nodes[0].status is NodeStatus.DOWN and view.nodes[0].reason == "refused"
    view = assessor.succeeded(1, standby(replay=150), NOW + 3)
    assert view is not None and view.nodes[1].lag_bytes == 50
    view = assessor.succeeded(0, primary(lsn=120, timeline=1), NOW + 4)
    assert view is not None and roles(view)[0] is NodeRole.FALSE_PRIMARY
    # The new primary dies too: the old one, on the old timeline, stays out.
    for _ in range(HEALTH.max_retries + 1):
        view = assessor.failed(2, "refused", NOW + 5)
    assert view is not None and view.primary is None
    view = assessor.succeeded(0, primary(lsn=130, timeline=1), NOW + 6)
    assert view is not None and view.primary is None
    assert roles(view)[0] is NodeRole.FALSE_PRIMARY


def test_switchover_promote_first_then_demote() -> None:
    assessor, _ = started(primary(timeline=1), standby())
    view = assessor.succeeded(1, primary(timeline=2), NOW + 1)
    assert view is not None and roles(view) == [NodeRole.PRIMARY, NodeRole.FALSE_PRIMARY]
    view = assessor.succeeded(0, standby(), NOW + 2)
    assert view is not None and roles(view) == [NodeRole.STANDBY, NodeRole.PRIMARY]


def test_retries_then_down_then_up_by_itself() -> None:
    assessor, _ = started(primary(), standby())
    for attempt in range(HEALTH.max_retries):
        assert assessor.failed(1, f"refused {attempt}", NOW + 1) is None
        assert assessor.retrying(1)
    view = assessor.failed(1, "reset", NOW + 2)
    assert view is not None and statuses(view) == [NodeStatus.UP, NodeStatus.DOWN]
    assert view.nodes[1].role is NodeRole.STANDBY and view.nodes[1].reason == "reset"
    assert view.nodes[1].changed_at == NOW + 2
    assert not assessor.retrying(1), "a down node waits a period, not a retry delay"
    assert assessor.failed(1, "reset", NOW + 3) is None
    view = assessor.succeeded(1, standby(), NOW + 4)
    assert view is not None and view.nodes[1].up and view.nodes[1].reason == ""


def test_a_good_check_ends_a_run_of_failures() -> None:
    assessor, _ = started(primary(), standby())
    for _ in range(3):
        for _ in range(HEALTH.max_retries):
            assert assessor.failed(1, "refused", NOW) is None
        assert assessor.succeeded(1, standby(), NOW) is None
    assert assessor.view.nodes[1].up


def test_first_view_waits_for_the_retries_of_a_failing_node() -> None:
    assessor = Assessor(HEALTH, 2)
    assert assessor.succeeded(0, primary(), NOW) is None
    for _ in range(HEALTH.max_retries):
        assert assessor.failed(1, "refused", NOW) is None
    assert not assessor.ready
    view = assessor.failed(1, "refused", NOW)
    assert assessor.ready and view is not None
    assert view.nodes[1].status is NodeStatus.DOWN
    assert view.nodes[1].role is NodeRole.UNKNOWN


def test_publishes_only_changes() -> None:
    assessor, _ = started(primary(lsn=100), standby(replay=100))
    assert assessor.succeeded(1, standby(replay=100), NOW + 1) is None
    assert assessor.succeeded(0, primary(lsn=100), NOW + 1) is None
    view = assessor.succeeded(0, primary(lsn=300), NOW + 2)
    assert view is not None and view.nodes[1].lag_bytes == 200
    assert view.nodes[0].changed_at == NOW, "lag is no change of status or role"


def test_detach_and_attach() -> None:
    assessor, _ = started(primary(), standby())
    view = assessor.detach(1, NOW + 1)
    assert view is not None and view.nodes[1].status is NodeStatus.DETACHED
    assert not assessor.checked(1) and view.standbys() == []
    # A check that was under way when the operator detached the node changes nothing.
    assert assessor.succeeded(1, standby(), NOW + 2) is None
    assert assessor.attach(1, NOW + 3) is None
    assert assessor.checked(1) and assessor.view.nodes[1].status is NodeStatus.DETACHED
    view = assessor.succeeded(1, standby(), NOW + 4)
    assert view is not None and view.nodes[1].up and view.nodes[1].changed_at == NOW + 4


def test_attaching_a_false_primary_is_the_operators_verdict() -> None:
    assessor, _ = started(primary(timeline=1), primary(timeline=1))
    assert roles(assessor.view) == [NodeRole.PRIMARY, NodeRole.FALSE_PRIMARY]
    assessor.detach(0, NOW + 1)
    assessor.detach(1, NOW + 1)
    view = assessor.attach(1, NOW + 2)
    assert view is not None and view.nodes[1].role is NodeRole.UNKNOWN
    view = assessor.succeeded(1, primary(timeline=1), NOW + 3)
    assert view is not None and view.primary == 1


def down(assessor: Assessor, node: int, now: float) -> ClusterView | None:
    """``max_retries + 1`` failed checks of ``node``: the view then."""
    for _ in range(HEALTH.max_retries):
        assessor.failed(node, "refused", now)
    return assessor.failed(node, "refused", now)


def test_a_standby_back_from_down_is_held_until_it_streams_from_the_primary() -> None:
    assessor, _ = started(primary(timeline=2), standby(timeline=2))
    view = down(assessor, 1, NOW + 1)
    assert view is not None and view.nodes[1].status is NodeStatus.DOWN
    # Answers, but its WAL receiver does not stream (it points at a primary gone).
    view = assessor.succeeded(1, standby(streaming=False, timeline=2), NOW + 2)
    assert view is not None and view.nodes[1].held
    assert view.nodes[1].status is NodeStatus.DOWN and view.standbys() == []
    # Streams, but the old timeline: from a fenced old primary.
    assessor.succeeded(1, standby(timeline=1), NOW + 3)
    assert assessor.view.nodes[1].held and not assessor.view.nodes[1].up
    view = assessor.succeeded(1, standby(timeline=2), NOW + 4)
    assert view is not None and view.nodes[1].up and not view.nodes[1].held
    assert view.nodes[1].changed_at == NOW + 4
    # Up again, it is judged as any standby: a receiver that stops does not hold it.
    assert assessor.succeeded(1, standby(streaming=False, timeline=2), NOW + 5) is None


def test_a_false_primary_rebuilt_as_a_standby_is_held_until_it_streams() -> None:
    assessor, first = started(primary(timeline=2), primary(timeline=1))
    assert roles(first) == [NodeRole.PRIMARY, NodeRole.FALSE_PRIMARY]
    view = assessor.succeeded(1, standby(streaming=False, timeline=1), NOW + 1)
    assert view is not None and view.nodes[1].held and not view.nodes[1].up
    view = assessor.succeeded(1, standby(timeline=2), NOW + 2)
    assert view is not None and view.nodes[1].is_standby


def test_with_no_primary_a_standby_back_is_not_held() -> None:
    assessor, _ = started(primary(), standby(), standby())
    down(assessor, 0, NOW + 1)
    down(assessor, 2, NOW + 1)
    view = assessor.succeeded(2, standby(streaming=False), NOW + 2)
    assert view is not None and view.nodes[2].up and view.primary is None


def test_without_auto_failback_a_standby_back_is_detached_until_attached() -> None:
    assessor = Assessor(HEALTH, 2, auto_failback=False)
    assessor.succeeded(0, primary(), NOW)
    assessor.succeeded(1, standby(), NOW)
    down(assessor, 1, NOW + 1)
    view = assessor.succeeded(1, standby(), NOW + 2)
    assert view is not None and view.nodes[1].status is NodeStatus.DETACHED
    assert "auto_failback" in view.nodes[1].reason and not assessor.checked(1)
    assessor.attach(1, NOW + 3)
    # The operator's word: up with its next check, streaming or not.
    view = assessor.succeeded(1, standby(streaming=False), NOW + 4)
    assert view is not None and view.nodes[1].is_standby
    # A primary that was down and comes back is no standby to fail back: it is the primary.
    down(assessor, 0, NOW + 5)
    view = assessor.succeeded(0, primary(), NOW + 6)
    assert view is not None and view.primary == 0


@pytest.mark.parametrize("auto_failback", [True, False])
def test_attached_by_the_pooler_a_node_is_held_until_it_streams(auto_failback: bool) -> None:
    # A switchover: the old primary detached, the standby promoted.
    assessor = Assessor(HEALTH, 2, auto_failback)
    assessor.succeeded(0, primary(timeline=1), NOW)
    assessor.succeeded(1, standby(), NOW)
    assessor.detach(0, NOW + 1)
    assessor.succeeded(1, primary(timeline=2), NOW + 1)
    # Rebuilt by failover.switchover_command, attached by the pooler.
    assessor.attach(0, NOW + 2, held=True)
    for later in (3, 4):
        assessor.succeeded(0, standby(streaming=False, timeline=2), NOW + later)
        assert assessor.view.nodes[0].held, "held, not detached again"
    view = assessor.succeeded(0, standby(timeline=2), NOW + 5)
    assert view is not None and view.nodes[0].is_standby and view.primary == 1


def test_down_bound() -> None:
    assert down_bound(HEALTH) == 1.0 + 3 * 2.0 + 2 * 0.5


def test_probe_from_rows() -> None:
    probe = probe_from_rows(
        {
            "in_recovery": False,
            "server_time": NOW,
            "timeline": 3,
            "current_lsn": 0x1_0000_0010,
            "receive_lsn": None,
            "flush_lsn": None,
            "replay_lsn": None,
            "replay_time": None,
        },
        [
            {
                "application_name": "standby1",
                "address": "127.0.0.1",
                "state": "streaming",
                "sync_state": "async",
                "replay_lsn": 0x1_0000_0000,
            }
        ],
    )
    assert probe == Probe(
        in_recovery=False,
        server_time=NOW,
        timeline=3,
        current_lsn=0x1_0000_0010,
        replicas=(Replica("standby1", "127.0.0.1", "streaming", "async", 0x1_0000_0000),),
    )
    _, view = started(probe)
    assert view.nodes[0].replicas == probe.replicas


def test_received_is_the_furthest_known() -> None:
    assert Probe(True, NOW, receive_lsn=30, flush_lsn=20).received_lsn == 30
    assert Probe(True, NOW, flush_lsn=20).received_lsn == 20
    assert Probe(True, NOW).received_lsn is None
