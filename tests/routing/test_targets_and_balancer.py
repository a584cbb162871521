"""Routing policy, sans-IO: where a text may run, which node the balancer picks, and
where a client's held requests go."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from parser_api import Persistence, StaticCatalog, classify
from pooler.cluster.catalog import DatabaseCatalog
from pooler.cluster.nodes import ClusterView, NodeRole, NodeState, NodeStatus, initial_view
from pooler.engine.actions import NeedServer, Reply
from pooler.engine.client import ClientEngine
from pooler.engine.server import ServerEngine
from pooler.protocol.codec import frame, frontend_limits
from pooler.routing.balancer import Balancer, Limits
from pooler.routing.targets import Target, hint_of, target_of


@pytest.mark.parametrize(
    ("sql", "target"),
    [
        ("SELECT 1", Target.ANY),
        ("  /* pooler: standby */ SELECT 1", Target.STANDBY),
        ("/*pooler:PRIMARY*/ SELECT 1", Target.PRIMARY),
        ("/*NO LOAD BALANCE*/ SELECT 1", Target.PRIMARY),
        ("/* pooler: standby */ INSERT INTO t VALUES (1)", Target.PRIMARY),
        ("/* other comment */ SELECT 1", Target.ANY),
        # A transaction declared read only may run on a standby, start to end.
        ("BEGIN READ ONLY", Target.ANY),
        ("BEGIN READ ONLY; SELECT 1; COMMIT", Target.ANY),
        ("BEGIN; SET TRANSACTION READ ONLY", Target.ANY),
        ("BEGIN", Target.PRIMARY),
        ("BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE", Target.PRIMARY),
        ("COMMIT", Target.PRIMARY),
        ("BEGIN READ ONLY; COMMIT AND CHAIN", Target.PRIMARY),
        ("SET search_path TO x", Target.PRIMARY),
        ("SELECT nextval('s')", Target.PRIMARY),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Target.PRIMARY),
        ("DO $$BEGIN RAISE NOTICE 'n'; END$$", Target.PRIMARY),
    ],
)
def test_where_a_text_may_run(sql: str, target: Target) -> None:
    assert target_of(classify(sql), sql) is target


def test_text_that_does_not_parse_runs_on_the_primary() -> None:
    assert target_of(None, "SELEC 1") is Target.PRIMARY
    assert hint_of("/* pooler: standby") is None


def _view(*states: NodeState) -> ClusterView:
    return ClusterView(states)


PRIMARY = NodeState(0, NodeStatus.UP, NodeRole.PRIMARY, replay_lsn=1000)


def _standby(node: int, **fields: object) -> NodeState:
    return NodeState(node, NodeStatus.UP, NodeRole.STANDBY).with_(**fields)


def _picks(
    balancer: Balancer, view: ClusterView, target: Target, min_lsn: int | None = None
) -> Counter[int | None]:
    return Counter(balancer.pick(view, target, min_lsn) for _ in range(3000))


def test_reads_follow_the_weights_and_writes_the_primary() -> None:
    balancer = Balancer([1, 1, 2], Limits(), random.Random(1))
    view = initial_view(3)
    picks = _picks(balancer, view, Target.ANY)
    assert abs(picks[2] / 3000 - 0.5) < 0.05 and abs(picks[0] / 3000 - 0.25) < 0.05
    assert _picks(balancer, view, Target.PRIMARY) == Counter({0: 3000})
    assert set(_picks(balancer, view, Target.STANDBY)) == {1, 2}


def test_weight_zero_only_when_nothing_else_serves() -> None:
    balancer = Balancer([0, 1], Limits(), random.Random(1))
    assert set(_picks(balancer, initial_view(2), Target.ANY)) == {1}
    down = _view(PRIMARY, _standby(1, status=NodeStatus.DOWN))
    assert set(_picks(balancer, down, Target.ANY)) == {0}


def test_the_less_busy_of_two_picks() -> None:
    balancer = Balancer([1, 1], Limits(), random.Random(1))
    balancer.inflight[:] = [0, 5]
    picks = _picks(balancer, initial_view(2), Target.ANY)
    # Node 1 wins only when both picks drew it: a quarter of the time.
    assert abs(picks[1] / 3000 - 0.25) < 0.05


def test_lag_limits_and_replayed_positions() -> None:
    view = _view(PRIMARY, _standby(1, lag_bytes=10, replay_lsn=900), _standby(2, lag_seconds=5.0))
    balancer = Balancer([0, 1, 1], Limits(max_lag_bytes=5, max_lag_seconds=1), random.Random(1))
    assert set(_picks(balancer, view, Target.ANY)) == {0}
    balancer = Balancer([0, 1, 1], Limits(), random.Random(1))
    # Only a node that replayed the client's write (or the primary) may serve.
    assert set(_picks(balancer, view, Target.ANY, 800)) == {1}
    assert set(_picks(balancer, view, Target.ANY, 950)) == {0}
    strict = Balancer([0, 1, 1], Limits(max_lag_bytes=5, fallback_to_primary=False))
    assert strict.pick(_view(PRIMARY, _standby(1, lag_bytes=10)), Target.ANY) is None


def test_no_primary_no_writes() -> None:
    balancer = Balancer([1, 1], Limits())
    view = _view(PRIMARY.with_(status=NodeStatus.DOWN), _standby(1))
    assert balancer.pick(view, Target.PRIMARY) is None
    assert balancer.pick(view, Target.ANY) == 1


def msg(t: str, body: bytes = b"") -> bytes:
    return frame(ord(t), body)


def query(sql: str) -> bytes:
    return msg("Q", sql.encode() + b"\0")


def parse(name: str, sql: str) -> bytes:
    return msg("P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


def bind(statement: str = "") -> bytes:
    return msg("B", b"\0" + statement.encode() + b"\0\0\0\0\0\0\0")


EXECUTE = msg("E", b"\0\0\0\0\0")
SYNC = msg("S")


def _client() -> ClientEngine:
    def classify_or_none(sql: str):  # type: ignore[no-untyped-def]
        try:
            return classify(sql)
        except Exception:
            return None

    return ClientEngine(frontend_limits(1 << 30), classify_or_none)


def _need(engine: ClientEngine, data: bytes) -> Target:
    out = engine.feed(data)
    assert isinstance(out, list) and isinstance(out[-1], NeedServer), out
    return Target(out[-1].target)


@pytest.mark.parametrize(
    ("data", "target"),
    [
        (query("SELECT 1"), Target.ANY),
        (query("SELECT 1") + query("SELECT 2"), Target.ANY),
        (query("SELECT 1") + query("INSERT INTO t VALUES (1)"), Target.PRIMARY),
        (parse("", "SELECT 1") + bind() + EXECUTE + SYNC, Target.ANY),
        # Not complete yet: what follows may write.
        (parse("", "SELECT 1") + bind() + EXECUTE, Target.PRIMARY),
        (query("SELECT 1")[:7], Target.PRIMARY),
        # A Query inside an unsynced batch is skipped after an error: never answered.
        (parse("", "SELECT 1") + bind() + EXECUTE + query("SELECT 1") + SYNC, Target.PRIMARY),
        (msg("F", b"\0\0\0\0"), Target.PRIMARY),
        (query("SELEC 1"), Target.PRIMARY),
    ],
)
def test_where_held_requests_go(data: bytes, target: Target) -> None:
    if data == query("SELECT 1")[:7]:
        engine = _client()
        assert _need(engine, query("SELECT 1") + data) is Target.PRIMARY
        return
    assert _need(_client(), data) is target


def _held_behind_a_standby(sql: str, tag: bytes) -> ClientEngine:
    """A client whose ``sql`` was held behind a standby's read, then ran on the primary."""
    engine, server = _standby_unit(query("SELECT 1"))
    assert _need(engine, query(sql)) is Target.PRIMARY
    server.feed(ANSWER)
    assert engine.releasable()
    engine.detach()
    primary = ServerEngine({}, b"I")
    engine.attach(primary)
    primary.feed(msg("C", tag + b"\0") + msg("Z", b"I"))
    return engine


def test_state_held_behind_a_standby_goes_to_the_primary() -> None:
    # A SET runs on the primary, and follows the client.
    engine = _held_behind_a_standby("SET search_path TO app", b"SET")
    assert engine.releasable()
    assert engine.settings.committed == {"search_path": "SET search_path TO app"}
    # A LISTEN pins the client, on its next server.
    assert not _held_behind_a_standby("LISTEN jobs", b"LISTEN").releasable()


def test_a_named_statement_keeps_its_target_across_transactions() -> None:
    engine = _client()
    assert _need(engine, parse("r", "SELECT 1") + parse("w", "DELETE FROM t") + SYNC) is (
        Target.PRIMARY
    )
    engine.attach(ServerEngine({}, b"I"))
    engine.detach()
    assert _need(engine, bind("r") + EXECUTE + SYNC) is Target.ANY
    engine = _client()
    engine.feed(parse("r", "SELECT 1") + parse("w", "DELETE FROM t") + SYNC)
    engine.attach(ServerEngine({}, b"I"))
    engine.detach()
    assert _need(engine, bind("w") + EXECUTE + SYNC) is Target.PRIMARY


def test_requests_behind_a_standby_wait_and_go_where_they_may() -> None:
    engine, server = _standby_unit(query("SELECT 1"))
    # Sent while the standby still answers: held, and the next server must be the
    # primary.
    assert _need(engine, query("INSERT INTO t VALUES (1)")) is Target.PRIMARY
    assert not engine.releasable()
    server.feed(msg("C", b"SELECT 1\0") + msg("Z", b"I"))
    assert engine.releasable()
    assert engine.wrote()  # the held write counts for read-your-writes
    engine.detach()
    assert engine.need().target == Target.PRIMARY


def test_catalog_rows_make_views_and_functions_known() -> None:
    catalog = DatabaseCatalog.from_rows(
        [("app", "f", "v"), ("other", "f", "i"), ("app", "g", "s")],
        [("app", "v", "p", "SELECT f()"), ("app", "scratch", "u", None)],
        write_functions=frozenset({"g"}),
    )
    assert catalog.function_volatility(None, "f", 0) == "v"
    assert catalog.function_volatility("other", "f", 0) == "i"
    assert catalog.function_volatility(None, "g", 0) == "v"
    assert classify("SELECT * FROM v", catalog).route == "write"
    assert classify("SELECT * FROM scratch", catalog).route == "write"
    assert classify("SELECT * FROM plain", catalog).route == "read"


def _error(sqlstate: str) -> bytes:
    return msg("E", b"SERROR\0C" + sqlstate.encode() + b"\0Mrefused\0\0")


ANSWER = msg("T", b"\0\0") + msg("D", b"\0\0") + msg("C", b"SELECT 1\0") + msg("Z", b"I")


def _standby_unit(data: bytes) -> tuple[ClientEngine, ServerEngine]:
    engine = _client()
    assert _need(engine, data) is Target.ANY
    server = ServerEngine({}, b"I")
    out = engine.attach(server, writable=False)
    assert b"".join(item for item in out if isinstance(item, bytes)) == data
    return engine, server


@pytest.mark.parametrize("sqlstate", ["25006", "0A000", "55000"])
def test_a_read_the_standby_refuses_runs_again_on_the_primary(sqlstate: str) -> None:
    unit = parse("", "SELECT 1") + bind() + EXECUTE + SYNC
    engine, server = _standby_unit(unit)
    # Parse and bind went through; the refusal comes at execution.
    assert server.probed(server.feed(msg("1") + msg("2"))) == b""
    assert server.probed(server.feed(_error(sqlstate) + msg("Z", b"I"))) == b""
    assert engine.releasable()
    engine.detach()
    assert engine.refusal == (sqlstate, "SELECT 1") and engine.waiting()
    assert engine.need().target == Target.PRIMARY
    primary = ServerEngine({}, b"I")
    out = engine.attach(primary)
    assert b"".join(item for item in out if isinstance(item, bytes)) == unit
    assert not primary.probing and primary.requests.owed == 1


def test_answers_held_while_probing_go_out_at_the_first_result() -> None:
    engine, server = _standby_unit(query("SELECT 1"))
    assert server.probed(server.feed(ANSWER[:7])) == b""
    assert server.probed(server.feed(ANSWER[7:])) == ANSWER
    assert not server.probing
    # Any other error is the client's answer.
    engine, server = _standby_unit(query("SELECT 1/0"))
    answer = _error("22012") + msg("Z", b"I")
    assert server.probed(server.feed(answer)) == answer
    engine.detach()
    assert engine.refusal is None and not engine.waiting()


def test_units_that_cannot_be_sent_twice_are_not_probed() -> None:
    engine = _client()
    engine.feed(parse("named", "SELECT 1") + bind("named") + EXECUTE + SYNC)
    server = ServerEngine({}, b"I")
    engine.attach(server, writable=False)
    assert not server.probing
    engine, server = _standby_unit(query("SELECT 1"))
    # The client left: what the standby says is what it gets.
    engine.eof()
    answer = _error("25006") + msg("Z", b"I")
    assert server.probed(server.feed(answer)) == answer


def _deferring() -> ClientEngine:
    engine = _client()
    engine.defer_begin = True
    return engine


def test_a_lone_begin_is_answered_here_and_placed_by_the_first_statement() -> None:
    engine = _deferring()
    out = engine.feed(query("BEGIN READ ONLY"))
    assert out == [Reply(msg("C", b"BEGIN\0") + msg("Z", b"T"))]
    assert _need(engine, query("SELECT 1")) is Target.ANY
    server = ServerEngine({}, b"I")
    sent = b"".join(i for i in engine.attach(server, writable=False) if isinstance(i, bytes))
    assert sent == query("BEGIN READ ONLY") + query("SELECT 1")
    # The transaction stays on its node; the BEGIN's answers are not the client's.
    assert engine.writable
    assert server.feed(msg("C", b"BEGIN\0") + msg("Z", b"T") + ANSWER[:-6]) == ANSWER[:-6]


@pytest.mark.parametrize(
    ("texts", "target"),
    [
        (["BEGIN", "SET TRANSACTION READ ONLY"], Target.ANY),
        (["START TRANSACTION READ ONLY"], Target.ANY),
        (["BEGIN"], Target.PRIMARY),
        (["BEGIN READ ONLY ISOLATION LEVEL SERIALIZABLE"], Target.PRIMARY),
    ],
)
def test_what_places_a_deferred_transaction(texts: list[str], target: Target) -> None:
    engine = _deferring()
    replies = [engine.feed(query(text)) for text in texts]
    assert all(isinstance(out, list) and isinstance(out[0], Reply) for out in replies)
    if texts[0].startswith("START"):
        assert replies[0] == [Reply(msg("C", b"START TRANSACTION\0") + msg("Z", b"T"))]
    assert _need(engine, query("SELECT 1")) is target
    engine = _deferring()
    engine.feed(query(texts[0]))
    assert _need(engine, query("DELETE FROM t")) is Target.PRIMARY


def test_begin_with_more_is_not_deferred() -> None:
    # Not deferred, but placed as a whole: read only, with reads only, on any node.
    assert _need(_deferring(), query("BEGIN READ ONLY; SELECT 1")) is Target.ANY
    assert _need(_deferring(), query("BEGIN; SELECT 1")) is Target.PRIMARY
    assert _need(_client(), query("BEGIN READ ONLY")) is Target.ANY


def test_a_read_only_transaction_placed_on_a_standby_stays_there() -> None:
    engine = _client()
    assert _need(engine, parse("", "BEGIN READ ONLY") + bind() + EXECUTE + SYNC) is Target.ANY
    standby = ServerEngine({}, b"I")
    engine.attach(standby, writable=False)
    assert engine.writable
    standby.feed(msg("1") + msg("2") + msg("C", b"BEGIN\0") + msg("Z", b"T"))
    # Its next request goes to the same server, not behind it.
    assert engine.feed(query("SELECT 1")) == [query("SELECT 1")]


def test_requests_no_node_can_run_get_errors_and_the_client_stays() -> None:
    error = _error("57P03")
    engine = _client()
    engine.feed(query("INSERT INTO t VALUES (1)") + parse("", "DELETE FROM t") + bind())
    engine.feed(EXECUTE + SYNC + msg("H"))
    assert engine.refuse(error) == error + msg("Z", b"I") + error + msg("Z", b"I")
    assert not engine.waiting()
    assert _need(engine, query("SELECT 1")) is Target.ANY
    # Inside a transaction the session must end instead.
    engine = _deferring()
    engine.feed(query("BEGIN"))
    engine.feed(query("INSERT INTO t VALUES (1)"))
    assert engine.refuse(error) is None and engine.waiting()


def test_a_read_whose_standby_died_before_answering_runs_on_the_primary() -> None:
    engine, server = _standby_unit(query("SELECT 1"))
    assert engine.detach(lost=True)
    assert engine.waiting() and engine.need().target == Target.PRIMARY
    # Once answers reached the client, it is too late.
    engine, server = _standby_unit(query("SELECT 1"))
    server.probed(server.feed(ANSWER[:-6]))
    assert not engine.detach(lost=True) and not engine.waiting()


@pytest.mark.parametrize("held", [True, False])
def test_a_statement_whose_parse_got_no_parse_complete_is_forgotten(held: bool) -> None:
    """A Parse skipped after an error before its Sync (or one that failed) leaves no
    statement on PostgreSQL: the pooler must not make it on the client's next server."""
    engine = _client()
    server = ServerEngine({}, b"I")
    batch = parse("ok", "SELECT 1") + parse("e1", "SELECT 1/0") + bind("e1") + EXECUTE
    batch += parse("skipped", "SELECT 2") + SYNC
    if held:
        engine.feed(batch)
        engine.attach(server)
    else:
        engine.feed(query("SELECT 0"))
        engine.attach(server)
        engine.feed(batch)
        server.feed(msg("C", b"SELECT 1\0") + msg("Z", b"I"))
    error = msg("E", b"SERROR\0C22012\0Mdivision by zero\0\0")
    server.feed(msg("1") + msg("1") + msg("2") + error + msg("Z", b"I"))
    assert engine.releasable()
    assert engine.statements.ours(b"ok") is not None
    assert engine.statements.ours(b"e1") is not None
    assert engine.statements.ours(b"skipped") is None
    engine.detach()
    prelude, parsed, _ = engine.statements.prelude(ServerEngine({}, b"I").prepared)
    assert len(parsed) == 2 and b"SELECT 2" not in prelude


def test_statements_parsed_before_a_search_path_change_are_classified_again() -> None:
    """PostgreSQL plans them again under the new path, where their names may stand for
    other objects than those they were classified with."""
    # Schema b's t is unlogged (a standby has no rows of it); a's is not.
    catalogs = {"a": None, "b": StaticCatalog(relations={"t": Persistence.UNLOGGED})}
    path = ["a"]

    def classify_on_path(sql: str):  # type: ignore[no-untyped-def]
        return classify(sql, catalogs[path[0]])

    engine = ClientEngine(frontend_limits(1 << 30), classify_on_path)
    engine.feed(parse("r", "SELECT * FROM t") + SYNC)
    engine.attach(ServerEngine({}, b"I"))
    engine.detach()
    assert _need(engine, bind("r") + EXECUTE + SYNC) is Target.ANY
    engine.attach(ServerEngine({}, b"I"))
    assert not engine.wrote()
    engine.detach()
    path[0] = "b"
    engine.search_path_changed()
    assert _need(engine, bind("r") + EXECUTE + SYNC) is Target.PRIMARY
    engine.attach(ServerEngine({}, b"I"))
    engine.detach()
    path[0] = "a"
    engine.search_path_changed()
    assert _need(engine, bind("r") + EXECUTE + SYNC) is Target.ANY
    engine.attach(ServerEngine({}, b"I"))
    engine.detach()
    # The unnamed statement's text is not kept: on the primary until parsed again.
    engine.feed(parse("", "SELECT * FROM t") + SYNC)
    engine.attach(ServerEngine({}, b"I"))
    engine.detach()
    engine.search_path_changed()
    assert _need(engine, bind("") + EXECUTE + SYNC) is Target.PRIMARY
    engine.attach(ServerEngine({}, b"I"))
    assert engine.wrote()


def test_a_refused_bind_of_the_unnamed_statement_gets_it_parsed_on_the_primary() -> None:
    """Sent again to the primary, a read that binds the unnamed statement parsed in an
    earlier batch gets it parsed there first, as it did on the standby."""
    engine = _client()
    first = ServerEngine({}, b"I")
    engine.feed(parse("", "SELECT 1") + SYNC)
    engine.attach(first)
    first.feed(msg("1") + msg("Z", b"I"))
    assert engine.releasable()
    engine.detach()
    unit = bind() + EXECUTE + SYNC
    assert _need(engine, unit) is Target.ANY
    standby = ServerEngine({}, b"I")
    out = engine.attach(standby, writable=False)
    prelude = parse("", "SELECT 1") + SYNC
    assert b"".join(item for item in out if isinstance(item, bytes)) == prelude + unit
    assert standby.probed(standby.feed(msg("1") + msg("Z", b"I") + msg("2"))) == b""
    assert standby.probed(standby.feed(_error("25006") + msg("Z", b"I"))) == b""
    assert engine.releasable()
    engine.detach()
    primary = ServerEngine({}, b"I")
    out = engine.attach(primary)
    assert b"".join(item for item in out if isinstance(item, bytes)) == prelude + unit
