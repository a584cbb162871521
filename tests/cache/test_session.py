"""The cache in a client engine's hands, with no socket: hits answered with no server,
misses captured and stored, nothing looked up inside a transaction, writes of a pinned
client dropped again when its transaction ends; ``PGPOOL SET CACHE DELETE``; a
failover (sans-IO)."""

from __future__ import annotations

import asyncio

from parser_api import Classification, Classifier, StaticCatalog
from pooler.cache.decoding import Decoder
from pooler.cache.query_cache import QueryCache
from pooler.cache.session import CacheSession
from pooler.cluster.catalog import DatabaseCatalog
from pooler.cluster.nodes import Cluster, ClusterView, NodeRole, NodeStatus, initial_view
from pooler.config import Backend, HealthCheck
from pooler.config import QueryCache as QueryCacheConfig
from pooler.engine.actions import NeedServer, Reply
from pooler.engine.client import ClientEngine
from pooler.engine.server import ServerEngine
from pooler.protocol import messages as m
from pooler.protocol.codec import frame, frontend_limits

ROWS = frame(ord("T"), b"\0\0") + frame(ord("D"), b"\0\0") + frame(ord("C"), b"SELECT 1\0")
SELECT = "SELECT v FROM t WHERE id = 1"

_classifier = Classifier()
_catalog = StaticCatalog()


def classify(sql: str) -> Classification | None:
    return _classifier.classify(sql, _catalog, offsets=False)


def new_cache() -> QueryCache:
    catalog = DatabaseCatalog()
    cache = QueryCache(QueryCacheConfig(enabled=True), lambda db: catalog)
    cache.watch.slot_made("db")
    cache.watch.polled("db", cache.watch.now())
    return cache


def client_of(cache: QueryCache, user: str = "app") -> tuple[ClientEngine, CacheSession]:
    engine = ClientEngine(frontend_limits(1 << 30), classify)
    session = cache.session("db", user, ())
    engine.cache = session
    session.settings = engine.settings
    return engine, session


def round_trip(engine: ClientEngine, session: CacheSession, sql: str, answer: bytes) -> None:
    """``sql`` held, sent to a new primary server, answered with ``answer``, released."""
    out = exchange(engine, session, m.query(sql), answer, ServerEngine({}, b"I"))
    assert isinstance(out, list) and isinstance(out[-1], NeedServer)


def exchange(
    engine: ClientEngine, session: CacheSession, data: bytes, answer: bytes, server: ServerEngine
) -> object:
    """Feed ``data``; when it needs a server, ``server`` answers ``answer``. What feed
    returned."""
    out = engine.feed(data)
    if isinstance(out, list) and isinstance(out[-1], NeedServer):
        engine.attach(server)
        server.feed(answer)
        if session.busy:
            session.answered(server)
        assert engine.releasable()
        engine.detach()
    return out


def test_a_miss_is_stored_and_the_next_read_needs_no_server() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    round_trip(engine, session, SELECT, ROWS + m.ready_for_query(b"I"))
    assert cache.stats.num_selects == 1 and cache.stats.entries == 1
    out = engine.feed(m.query(SELECT))
    assert out == [Reply(ROWS + m.ready_for_query(b"I"))]
    assert cache.stats.num_cache_hits == 1
    other, _ = client_of(cache, user="bob")
    assert isinstance(other.feed(m.query(SELECT))[-1], NeedServer), "another user's entry"


def test_an_error_or_a_transaction_is_not_stored() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    error = m.error_response("ERROR", "42P01", "relation does not exist")
    round_trip(engine, session, SELECT, error + m.ready_for_query(b"I"))
    assert cache.stats.entries == 0
    # Inside a transaction the client keeps its server: nothing is looked up or stored.
    round_trip(engine, session, SELECT, ROWS + m.ready_for_query(b"I"))
    assert cache.stats.entries == 1
    out = engine.feed(m.query("BEGIN"))
    server = ServerEngine({}, b"I")
    engine.attach(server)
    server.feed(frame(ord("C"), b"BEGIN\0") + m.ready_for_query(b"T"))
    out = engine.feed(m.query(SELECT))
    assert out == [m.query(SELECT)], "forwarded to the server the transaction runs on"


def test_a_pinned_clients_write_is_dropped_again_when_its_transaction_ends() -> None:
    cache = new_cache()
    reader, reading = client_of(cache)
    round_trip(reader, reading, SELECT, ROWS + m.ready_for_query(b"I"))
    writer, writing = client_of(cache)
    writer.feed(m.query("LISTEN jobs"))
    server = ServerEngine({}, b"I")
    writer.attach(server)
    server.feed(frame(ord("C"), b"LISTEN\0") + m.ready_for_query(b"I"))
    assert not writer.releasable(), "pinned by its LISTEN"
    writer.feed(m.query("BEGIN"))
    server.feed(frame(ord("C"), b"BEGIN\0") + m.ready_for_query(b"T"))
    writer.feed(m.query("UPDATE t SET v = 2"))
    assert cache.stats.entries == 0, "dropped when sent"
    round_trip(reader, reading, SELECT, ROWS + m.ready_for_query(b"I"))
    assert cache.stats.entries == 1, "a read of the committed value meanwhile is fine"
    server.feed(frame(ord("C"), b"UPDATE 1\0") + m.ready_for_query(b"T"))
    writing.answered(server)
    assert cache.stats.entries == 1, "not committed yet"
    writer.feed(m.query("COMMIT"))
    server.feed(frame(ord("C"), b"COMMIT\0") + m.ready_for_query(b"I"))
    writing.answered(server)
    assert cache.stats.entries == 0, "dropped again at the commit"


def test_delete_by_text() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    round_trip(engine, session, SELECT, ROWS + m.ready_for_query(b"I"))
    round_trip(engine, session, "SELECT 2", ROWS + m.ready_for_query(b"I"))
    assert cache.delete("db", "bob", SELECT) == 0
    assert cache.delete("db", "app", SELECT) == 1
    assert cache.stats.entries == 1
    row = dict(cache.pool_cache_row())
    assert row["num_cache_entries"] == "1" and row["decoding"] == "on"
    assert row["num_selects"] == "2" and row["cache_hit_ratio"] == "0.00"


def test_a_failover_drops_everything() -> None:
    async def failover() -> None:
        cache = new_cache()
        engine, session = client_of(cache)
        round_trip(engine, session, SELECT, ROWS + m.ready_for_query(b"I"))
        cluster = Cluster(initial_view(2))
        nowhere = Backend(host="127.0.0.1", port=1)
        decoder = Decoder(cache, [nowhere, nowhere], HealthCheck(), cluster)
        old, new = cluster.view.nodes
        promoted = (old.with_(status=NodeStatus.DOWN), new.with_(role=NodeRole.PRIMARY))
        cluster.publish(ClusterView(promoted))
        assert cache.stats.entries == 0
        assert not cache.watch.servable("db")
        await decoder.stop()

    asyncio.run(failover())


def test_a_named_statement_is_cached_until_it_is_closed() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    server = ServerEngine({}, b"I")  # one, that has the client's statement

    def extended(engine: ClientEngine, session: CacheSession, data: bytes, answer: bytes) -> object:
        return exchange(engine, session, data, answer, server)

    sync = frame(ord("S"), b"")
    parse = frame(ord("P"), b"s1\0" + SELECT.encode() + b"\0\0\0")
    run = frame(ord("B"), b"\0s1\0\0\0\0\0\0\0") + frame(ord("E"), b"\0\0\0\0\0") + sync
    done = frame(ord("1"), b"")
    ran = frame(ord("2"), b"") + ROWS[7:] + m.ready_for_query(b"I")  # no RowDescription
    extended(engine, session, parse + sync, done + m.ready_for_query(b"I"))
    extended(engine, session, run, ran)
    assert cache.stats.entries == 1
    assert extended(engine, session, run, b"") == [Reply(ran)]
    closed = frame(ord("3"), b"") + m.ready_for_query(b"I")
    extended(engine, session, frame(ord("C"), b"Ss1\0") + sync, closed)
    gone = m.error_response("ERROR", "26000", "no such") + m.ready_for_query(b"I")
    out = extended(engine, session, run, gone)
    assert isinstance(out, list) and isinstance(out[-1], NeedServer), "PostgreSQL answers"


def test_a_function_call_may_write_anything() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    round_trip(engine, session, SELECT, ROWS + m.ready_for_query(b"I"))
    call = frame(ord("F"), b"\0\0\x30\x39\0\0\0\0\0\0")
    answer = frame(ord("V"), b"\xff\xff\xff\xff") + m.ready_for_query(b"I")
    exchange(engine, session, call, answer, ServerEngine({}, b"I"))
    assert cache.stats.entries == 0


def test_a_full_store_takes_only_keys_that_missed_before() -> None:
    cache = new_cache()
    store = cache.store
    engine, session = client_of(cache)
    answer = ROWS + m.ready_for_query(b"I")
    round_trip(engine, session, "SELECT 0", answer)
    # Room for three entries of this size, not for a fourth of the largest size.
    store.max_entry_size = 100
    store.max_size = 3 * store.stats.used_bytes + store.max_entry_size - 1
    for n in (1, 2):
        round_trip(engine, session, f"SELECT {n}", answer)
    assert store.stats.entries == 3, "room for each: stored at the first miss"
    round_trip(engine, session, "SELECT 3", answer)
    assert store.stats.entries == 3 and store.stats.evictions == 0, "full: seen once"
    round_trip(engine, session, "SELECT 3", answer)
    assert store.stats.evictions == 1, "missed twice: it takes the place of another"
    assert engine.feed(m.query("SELECT 3")) == [Reply(answer)]


def test_clients_with_other_settings_never_share_an_entry() -> None:
    """Settings follow a client from server to server instead of pinning it: they are
    part of the key (search_path decides which table a name reads)."""
    cache = new_cache()
    plain, plain_session = client_of(cache)
    round_trip(plain, plain_session, SELECT, ROWS + m.ready_for_query(b"I"))
    assert cache.stats.entries == 1
    other, _ = client_of(cache)
    other.feed(m.query("SET search_path = elsewhere"))
    server = ServerEngine({}, b"I")
    other.attach(server)
    server.feed(frame(ord("C"), b"SET\0") + m.ready_for_query(b"I"))
    assert other.releasable(), "settings do not pin"
    other.detach()
    assert other.settings.committed
    out = other.feed(m.query(SELECT))
    assert not any(isinstance(action, Reply) for action in out), "no hit from another setting"
    # The plain client still hits its own entry.
    out = plain.feed(m.query(SELECT))
    assert any(isinstance(action, Reply) for action in out)


def test_delete_by_text_reaches_clients_that_changed_a_setting() -> None:
    """Their keys hold their settings beside the key space: PGPOOL SET CACHE DELETE
    drops those entries too."""
    cache = new_cache()
    engine, session = client_of(cache)
    engine.feed(m.query("SET search_path = elsewhere"))
    server = ServerEngine({}, b"I")
    engine.attach(server)
    server.feed(frame(ord("C"), b"SET\0") + m.ready_for_query(b"I"))
    assert engine.releasable()
    engine.detach()
    # The next server is given the setting first.
    aligned = frame(ord("C"), b"SET\0") + m.ready_for_query(b"I")
    answer = aligned + ROWS + m.ready_for_query(b"I")
    exchange(engine, session, m.query(SELECT), answer, ServerEngine({}, b"I"))
    assert cache.stats.entries == 1
    assert cache.delete("db", "app", SELECT) == 1
    assert cache.stats.entries == 0


def begun(engine: ClientEngine, begin: str) -> ServerEngine:
    """``begin`` sent to a new primary server, which answered it."""
    out = engine.feed(m.query(begin))
    assert isinstance(out, list) and isinstance(out[-1], NeedServer)
    server = ServerEngine({}, b"I")
    engine.attach(server)
    server.feed(frame(ord("C"), b"BEGIN\0") + m.ready_for_query(b"T"))
    return server


def in_transaction(engine: ClientEngine, session: CacheSession, server: ServerEngine) -> object:
    """SELECT inside the transaction ``server`` runs: a hit's reply, or what was
    forwarded (then the server answers ROWS)."""
    out = engine.feed(m.query(SELECT))
    if out == [m.query(SELECT)]:
        server.feed(ROWS + m.ready_for_query(b"T"))
        if session.busy:
            session.answered(server)
    return out


def test_reads_in_a_read_only_transaction_at_read_committed() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    server = begun(engine, "BEGIN READ ONLY")
    assert in_transaction(engine, session, server) == [m.query(SELECT)]
    assert cache.stats.entries == 1, "stored as a read outside a transaction"
    assert in_transaction(engine, session, server) == [Reply(ROWS + m.ready_for_query(b"T"))]
    engine.feed(m.query("COMMIT"))
    server.feed(frame(ord("C"), b"COMMIT\0") + m.ready_for_query(b"I"))
    session.answered(server)
    assert engine.releasable()
    engine.detach()
    assert engine.feed(m.query(SELECT)) == [Reply(ROWS + m.ready_for_query(b"I"))]
    # A BEGIN the pooler answers itself (routing): hits need no server at all.
    engine.defer_begin = True
    out = engine.feed(m.query("BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY"))
    assert out == [Reply(frame(ord("C"), b"BEGIN\0") + m.ready_for_query(b"T"))]
    assert engine.feed(m.query(SELECT)) == [Reply(ROWS + m.ready_for_query(b"T"))]


def test_no_read_of_other_transactions_is_served() -> None:
    cache = new_cache()
    engine, session = client_of(cache)
    round_trip(engine, session, SELECT, ROWS + m.ready_for_query(b"I"))
    for begin in (
        "BEGIN",
        "BEGIN READ WRITE",
        "BEGIN READ ONLY ISOLATION LEVEL REPEATABLE READ",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY",
    ):
        server = begun(engine, begin)
        assert in_transaction(engine, session, server) == [m.query(SELECT)], begin
        engine.detach()
    # A failed transaction: PostgreSQL answers 25P02.
    server = begun(engine, "BEGIN READ ONLY")
    engine.feed(m.query("SELECT 1/0"))
    server.feed(m.error_response("ERROR", "22012", "division by zero") + m.ready_for_query(b"E"))
    assert in_transaction(engine, session, server) == [m.query(SELECT)]
    engine.detach()
    # A BEGIN READ ONLY inside a transaction that wrote: PostgreSQL only warns.
    server = begun(engine, "BEGIN")
    engine.feed(m.query("UPDATE t SET v = 2"))
    server.feed(frame(ord("C"), b"UPDATE 1\0") + m.ready_for_query(b"T"))
    engine.feed(m.query("BEGIN READ ONLY"))
    server.feed(frame(ord("C"), b"BEGIN\0") + m.ready_for_query(b"T"))
    reader, reading = client_of(cache)
    round_trip(reader, reading, SELECT, ROWS + m.ready_for_query(b"I"))
    assert cache.stats.entries == 1, "a read of the committed value"
    assert in_transaction(engine, session, server) == [m.query(SELECT)]
    engine.detach()
    # SET LOCAL (or anything but a cacheable read) ends it for the transaction.
    server = begun(engine, "BEGIN READ ONLY")
    engine.feed(m.query("SET LOCAL search_path = elsewhere"))
    server.feed(frame(ord("C"), b"SET\0") + m.ready_for_query(b"T"))
    assert in_transaction(engine, session, server) == [m.query(SELECT)]
    engine.detach()
    # A client whose default isolation is not known to be READ COMMITTED.
    other = ClientEngine(frontend_limits(1 << 30), classify)
    other.cache = cache.session("db", "app", (("default_transaction_isolation", "serializable"),))
    other.cache.settings = other.settings
    server = begun(other, "BEGIN READ ONLY")
    assert in_transaction(other, other.cache, server) == [m.query(SELECT)]
    other.detach()
    server = begun(other, "BEGIN READ ONLY ISOLATION LEVEL READ COMMITTED")
    assert in_transaction(other, other.cache, server) == [m.query(SELECT)], "its own key space"
    assert in_transaction(other, other.cache, server) == [Reply(ROWS + m.ready_for_query(b"T"))]
