"""The failover decision (sans-IO): which standby to promote, and when not to."""

from __future__ import annotations

import shlex

import pytest

from pooler.cluster.failover import (
    CommandValues,
    LastPrimary,
    Promote,
    Quorum,
    Refuse,
    StandbyReport,
    command_line,
    decide,
    parse_synchronous_standby_names,
    primary_conninfo,
    slot_name,
    walreceiver_name,
)
from pooler.cluster.nodes import ClusterView, NodeRole, NodeState, NodeStatus
from pooler.config import Backend, Failover

MB = 1024**2
POLICY = Failover()
ANY_1_OF_2 = Quorum(1, ("standby1", "standby2"), "ANY")


def view(*states: tuple[NodeStatus, NodeRole]) -> ClusterView:
    return ClusterView(tuple(NodeState(node, s, r) for node, (s, r) in enumerate(states)))


UP_STANDBY = (NodeStatus.UP, NodeRole.STANDBY)
#: The primary went down: the monitor keeps its role, with status DOWN.
PRIMARY_DOWN = view((NodeStatus.DOWN, NodeRole.PRIMARY), UP_STANDBY, UP_STANDBY)


def report(
    node: int, flush: int | None, *, streaming: bool = False, name: str = ""
) -> StandbyReport:
    return StandbyReport(node, name or f"standby{node}", streaming, flush)


def sync_primary(quorum: Quorum | None, lsn: int = 100 * MB) -> LastPrimary:
    return LastPrimary(0, lsn, quorum, sync_known=True)


# --- When there is nothing to do --------------------------------------------------------


def test_nothing_while_there_is_a_primary() -> None:
    healthy = view((NodeStatus.UP, NodeRole.PRIMARY), UP_STANDBY, UP_STANDBY)
    assert decide(healthy, sync_primary(None), [report(1, 1)], POLICY) is None


def test_nothing_before_any_primary_was_seen() -> None:
    assert decide(PRIMARY_DOWN, None, [report(1, 1)], POLICY) is None


@pytest.mark.parametrize("status", [NodeStatus.DETACHED, NodeStatus.UP])
def test_nothing_when_the_old_primary_is_not_down(status: NodeStatus) -> None:
    # Detached by the operator, or back in recovery (UP as a standby): a person acts.
    states = view((status, NodeRole.STANDBY), UP_STANDBY, UP_STANDBY)
    assert decide(states, sync_primary(None), [report(1, 100 * MB)], POLICY) is None


def test_auto_promote_false_refuses() -> None:
    decision = decide(
        PRIMARY_DOWN, sync_primary(None), [report(1, 100 * MB)], Failover(auto_promote=False)
    )
    assert isinstance(decision, Refuse) and "auto_promote" in decision.reason


def test_no_standby_up_refuses() -> None:
    down = view(
        (NodeStatus.DOWN, NodeRole.PRIMARY),
        (NodeStatus.DOWN, NodeRole.STANDBY),
        (NodeStatus.DETACHED, NodeRole.STANDBY),
    )
    # A report from a node the view has down does not count.
    decision = decide(down, sync_primary(None), [report(1, 100 * MB)], POLICY)
    assert isinstance(decision, Refuse) and "no standby is up" in decision.reason
    decision = decide(PRIMARY_DOWN, sync_primary(None), [], POLICY)
    assert isinstance(decision, Refuse) and "no standby answered" in decision.reason


def test_a_standby_that_did_not_answer_is_not_promoted() -> None:
    decision = decide(PRIMARY_DOWN, sync_primary(None), [report(2, 100 * MB - 10)], POLICY)
    assert isinstance(decision, Promote) and (decision.node, decision.behind) == (2, 10)


def test_unknown_synchronous_setting_refuses() -> None:
    last = LastPrimary(0, 100 * MB)
    decision = decide(PRIMARY_DOWN, last, [report(1, 100 * MB)], POLICY)
    assert isinstance(decision, Refuse) and "synchronous_standby_names" in decision.reason


# --- Asynchronous replication ------------------------------------------------------------


def test_async_promotes_the_standby_with_the_most_wal() -> None:
    decision = decide(
        PRIMARY_DOWN,
        sync_primary(None),
        [report(1, 100 * MB - 500), report(2, 100 * MB - 100)],
        POLICY,
    )
    assert isinstance(decision, Promote)
    assert decision.node == 2 and decision.behind == 100 and decision.lost_bound == MB
    assert "1048576 bytes" in decision.why


def test_async_ties_go_to_the_lowest_node() -> None:
    reports = [report(2, 100 * MB), report(1, 100 * MB)]
    decision = decide(PRIMARY_DOWN, sync_primary(None), reports, POLICY)
    assert isinstance(decision, Promote) and decision.node == 1 and decision.behind == 0


def test_async_received_but_unflushed_wal_counts() -> None:
    behind = StandbyReport(1, "standby1", False, 100 * MB - 2 * MB, 100 * MB - 10)
    decision = decide(PRIMARY_DOWN, sync_primary(None), [behind], POLICY)
    assert isinstance(decision, Promote) and decision.behind == 10


def test_async_refuses_beyond_max_lag_bytes() -> None:
    policy = Failover(max_lag_bytes=64 * 1024)
    reports = [report(1, 100 * MB - 64 * 1024 - 1), report(2, None)]
    decision = decide(PRIMARY_DOWN, sync_primary(None), reports, policy)
    assert isinstance(decision, Refuse)
    assert "node 1" in decision.reason and "65537 bytes" in decision.reason
    # Exactly at the bound is allowed.
    reports = [report(1, 100 * MB - 64 * 1024)]
    assert isinstance(decide(PRIMARY_DOWN, sync_primary(None), reports, policy), Promote)


def test_async_standby_ahead_of_the_last_known_position_loses_nothing() -> None:
    decision = decide(PRIMARY_DOWN, sync_primary(None), [report(1, 100 * MB + 5)], POLICY)
    assert isinstance(decision, Promote) and decision.behind == 0


def test_async_refuses_without_a_known_position() -> None:
    last = LastPrimary(0, None, None, sync_known=True)
    decision = decide(PRIMARY_DOWN, last, [report(1, 5)], POLICY)
    assert isinstance(decision, Refuse) and "WAL position" in decision.reason


def test_the_refusal_stays_the_same_while_nothing_changes() -> None:
    policy = Failover(max_lag_bytes=0)
    reports = [report(1, 100 * MB - 7)]
    first = decide(PRIMARY_DOWN, sync_primary(None), reports, policy)
    assert first == decide(PRIMARY_DOWN, sync_primary(None), reports, policy)


# --- Synchronous replication -------------------------------------------------------------


def test_a_standby_still_streaming_means_the_primary_is_alive() -> None:
    for last in (sync_primary(None), sync_primary(ANY_1_OF_2)):
        reports = [report(1, 100 * MB), report(2, 100 * MB, streaming=True)]
        decision = decide(PRIMARY_DOWN, last, reports, POLICY)
        assert isinstance(decision, Refuse)
        assert decision.reason.startswith("node 2 (standby2) still stream")
        assert "two primaries" in decision.reason


def test_sync_waits_until_enough_standbys_stopped_streaming() -> None:
    # ANY 1 of 2: a commit is on one of them; both must have final WAL, and node 2 did
    # not answer.
    decision = decide(PRIMARY_DOWN, sync_primary(ANY_1_OF_2), [report(1, 5 * MB)], POLICY)
    assert isinstance(decision, Refuse)
    assert "2 of them must say they stopped streaming" in decision.reason
    assert "only node 1 (standby1) did" in decision.reason


def test_sync_promotes_the_most_wal_among_the_stopped_ones() -> None:
    reports = [report(1, 5 * MB), report(2, 9 * MB)]
    # The old primary's position does not matter: nothing acknowledged is beyond both.
    last = sync_primary(ANY_1_OF_2, lsn=50 * MB)
    decision = decide(PRIMARY_DOWN, last, reports, Failover(max_lag_bytes=0))
    assert isinstance(decision, Promote) and decision.node == 2
    assert decision.behind == decision.lost_bound == 0


def test_sync_quorum_needs_only_n_minus_k_plus_one() -> None:
    # ANY 2 of 3: two stopped standbys share one with every acknowledged commit.
    states = view((NodeStatus.DOWN, NodeRole.PRIMARY), UP_STANDBY, UP_STANDBY, UP_STANDBY)
    quorum = Quorum(2, ("standby1", "standby2", "standby3"), "ANY")
    reports = [report(1, 3 * MB), report(2, 4 * MB)]
    decision = decide(states, sync_primary(quorum), reports, POLICY)
    assert isinstance(decision, Promote) and decision.node == 2
    assert isinstance(decide(states, sync_primary(quorum), reports[:1], POLICY), Refuse)


def test_sync_counts_only_listed_standbys() -> None:
    quorum = Quorum(1, ("standby1",), "FIRST")
    decision = decide(PRIMARY_DOWN, sync_primary(quorum), [report(2, 9 * MB)], POLICY)
    assert isinstance(decision, Refuse)
    reports = [report(1, 3 * MB), report(2, 9 * MB)]
    decision = decide(PRIMARY_DOWN, sync_primary(quorum), reports, POLICY)
    # An unlisted (asynchronous) standby may miss acknowledged commits.
    assert isinstance(decision, Promote) and decision.node == 1


def test_sync_names_compare_without_case() -> None:
    quorum = Quorum(1, ("StandBy1", "STANDBY2"), "ANY")
    reports = [report(1, 3 * MB), report(2, 9 * MB)]
    decision = decide(PRIMARY_DOWN, sync_primary(quorum), reports, POLICY)
    assert isinstance(decision, Promote) and decision.node == 2


def test_sync_star_lists_every_standby() -> None:
    quorum = Quorum(1, ("*",), "FIRST")
    reports = [report(1, 3 * MB)]
    assert isinstance(decide(PRIMARY_DOWN, sync_primary(quorum), reports, POLICY), Refuse)
    reports = [report(1, 3 * MB), report(2, 9 * MB)]
    decision = decide(PRIMARY_DOWN, sync_primary(quorum), reports, POLICY)
    assert isinstance(decision, Promote) and decision.node == 2


def test_sync_with_a_standby_that_does_not_answer_waits() -> None:
    decision = decide(PRIMARY_DOWN, sync_primary(ANY_1_OF_2), [report(1, 5 * MB)], POLICY)
    assert isinstance(decision, Refuse)


# --- synchronous_standby_names ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("   ", None),
        ("ANY 1 (standby1, standby2)", Quorum(1, ("standby1", "standby2"), "ANY")),
        ("any 2(a,b,c)", Quorum(2, ("a", "b", "c"), "ANY")),
        ("FIRST 2 (a, b, c)", Quorum(2, ("a", "b", "c"), "FIRST")),
        ("2 (a, b)", Quorum(2, ("a", "b"), "FIRST")),
        ("a, b", Quorum(1, ("a", "b"), "FIRST")),
        ("*", Quorum(1, ("*",), "FIRST")),
        ('"Node 1", "a""b"', Quorum(1, ("Node 1", 'a"b'), "FIRST")),
        ("0 (a)", None),
    ],
)
def test_parse_synchronous_standby_names(text: str, expected: Quorum | None) -> None:
    assert parse_synchronous_standby_names(text) == expected


@pytest.mark.parametrize("text", ["ANY (a)", "a b", "1 (a", "(a)", "a,", "1 (a,)", "x (a)"])
def test_parse_synchronous_standby_names_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="synchronous_standby_names"):
        parse_synchronous_standby_names(text)


# --- What the actions need --------------------------------------------------------------


@pytest.mark.parametrize(
    ("conninfo", "cluster_name", "expected"),
    [
        ("host=h port=5 application_name=standby1", "x", "standby1"),
        ("host=h application_name='my \\'app\\''", "x", "my 'app'"),
        ("host=h user=u", "node_b", "node_b"),
        ("host=h", "", "walreceiver"),
        ("postgresql://u@h:5/db?application_name=app1&sslmode=off", "x", "app1"),
        ("", "", "walreceiver"),
    ],
)
def test_walreceiver_name(conninfo: str, cluster_name: str, expected: str) -> None:
    assert walreceiver_name(conninfo, cluster_name) == expected


def test_primary_conninfo_round_trips_the_name() -> None:
    conninfo = primary_conninfo(Backend("10.0.0.2", 5433), "rep", "pa'ss w\\d", "stand by")
    assert conninfo == (
        "host='10.0.0.2' port='5433' user='rep' password='pa\\'ss w\\\\d' "
        "application_name='stand by'"
    )
    assert walreceiver_name(conninfo, "") == "stand by"
    assert "password" not in primary_conninfo(Backend("h"), "rep", None, "s")


def test_slot_name() -> None:
    assert slot_name(Backend("h", name="standby2"), 2) == "standby2"
    assert slot_name(Backend("h", name="DB-West.1"), 2) == "db_west_1"
    assert slot_name(Backend("h", name="--"), 3) == "pooler_node_3"
    assert slot_name(Backend("h"), 4) == "pooler_node_4"


BACKENDS = [Backend("10.0.0.1", 5432), Backend("10.0.0.2", 5433), Backend("db 3", 5434)]


def test_command_line_fills_pgpool_placeholders() -> None:
    template = "/etc/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S %% %x"
    line = command_line(template, CommandValues(0, 2, 0, 0), BACKENDS)
    assert shlex.split(line) == [
        "/etc/failover.sh",
        "0",
        "10.0.0.1",
        "5432",
        "",
        "2",
        "db 3",
        "0",
        "0",
        "5434",
        "",
        "10.0.0.1",
        "5432",
        "%",
    ]


def test_command_line_without_a_new_main_node() -> None:
    line = command_line("x %m %H %r", CommandValues(1, -1, 0, 0), BACKENDS)
    assert shlex.split(line) == ["x", "-1", "", ""]
