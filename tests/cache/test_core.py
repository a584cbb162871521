"""The cache's sans-IO core: store (LRU by bytes, sizes, ttl, versions and the race
rule), keys, relations from a catalog, answers, change-stream lines, freshness."""

from __future__ import annotations

import tracemalloc

import pytest

from parser_api import Volatility, classify
from pooler.cache.answer import Capture, replayable
from pooler.cache.decoding import unquote
from pooler.cache.key import KeySpaces, batch, simple_query
from pooler.cache.positions import WritePositions
from pooler.cache.relations import ALL, NOTHING, Relations
from pooler.cache.store import DROPS_KEPT, ENTRY_OVERHEAD, Store
from pooler.cache.watch import WINDOW, Watch
from pooler.cluster.catalog import DatabaseCatalog
from pooler.protocol import messages as m
from pooler.protocol.codec import Message, frame


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def stored(store: Store, key: str, value: bytes, tables: set[str], db: str = "db") -> bool:
    return store.put(key, value, store.snapshot(db, frozenset(tables)))


# --- store --------------------------------------------------------------------------------


def test_store_keeps_and_drops_by_table_and_database() -> None:
    store = Store(10_000, 1_000)
    assert stored(store, "a", b"A", {"t"})
    assert stored(store, "b", b"B", {"u"})
    assert stored(store, "c", b"C", {"t"}, db="other")
    store.drop_tables("db", ["t"])
    assert store.get("a") is None
    assert store.get("b") is not None
    assert store.get("c") is not None, "another database's t is another table"
    store.drop_database("db")
    assert store.get("b") is None
    assert store.get("c") is not None
    store.clear()
    assert len(store) == 0
    assert store.stats.entries == 0 and store.stats.used_bytes == 0


def test_race_rule_refuses_what_was_read_before_a_write() -> None:
    store = Store(10_000, 1_000)
    before = store.snapshot("db", frozenset({"t", "u"}))
    store.drop_tables("db", ["u"])
    assert not store.put("k", b"old", before)
    assert store.stats.refused == 1
    before = store.snapshot("db", frozenset({"t"}))
    store.drop_tables("db", ["v"])
    store.drop_tables("other", ["t"])
    assert store.put("k", b"fine", before), "no table it read was written"
    before = store.snapshot("db", frozenset({"t"}))
    store.drop_database("db")
    assert not store.put("k2", b"old", before)
    before = store.snapshot("db", frozenset({"t"}))
    store.clear()
    assert not store.put("k3", b"old", before), "a failover drops reads in flight too"
    before = store.snapshot("db", frozenset({"t"}))
    for _ in range(DROPS_KEPT):
        store.drop_tables("db", ["u"])
    assert store.put("k4", b"fine", before)
    before = store.snapshot("db", frozenset({"t"}))
    for _ in range(DROPS_KEPT + 1):
        store.drop_tables("db", ["u"])
    assert not store.put("k5", b"maybe old", before), "drops it may have missed are forgotten"


def test_lru_by_bytes_and_entry_limits() -> None:
    size = 100 + ENTRY_OVERHEAD
    store = Store(3 * size, 100)
    for key in "abc":
        assert stored(store, key, bytes(100), {"t"})
    assert store.get("a") is not None  # a is now the most recently used
    assert stored(store, "d", bytes(100), {"t"})
    assert store.get("b") is None and store.get("a") is not None
    assert store.stats.evictions == 1
    assert store.stats.used_bytes == 3 * size
    assert not stored(store, "big", bytes(101), {"t"}), "max_entry_size"


@pytest.mark.parametrize(
    ("answer", "tables"),
    [(20, 1), (100, 1), (100, 3), (2000, 1)],
    ids=["tiny", "pgbench-row", "three-tables", "2kB"],
)
def test_max_size_bounds_the_memory_the_store_takes(answer: int, tables: int) -> None:
    """What the store counts against max_size is what its entries take (within 15%),
    not a fraction of it."""
    read = frozenset(f"t{n}" for n in range(tables))
    tracemalloc.start()
    try:
        began = tracemalloc.get_traced_memory()[0]
        store = Store(1 << 40, 1 << 20)
        for i in range(20_000):
            key = (0, f"SELECT abalance FROM pgbench_accounts WHERE aid = {i};\0".encode())
            value = bytes(answer) + b"%d" % i
            assert store.put(key, value, store.snapshot("db", read), len(key[1]))
        taken = tracemalloc.get_traced_memory()[0] - began
    finally:
        tracemalloc.stop()
    assert 0.85 < taken / store.stats.used_bytes < 1.15


def test_ttl() -> None:
    clock = Clock()
    store = Store(10_000, 1_000, ttl=2.0, clock=clock)
    stored(store, "a", b"A", {"t"})
    clock.now += 1.9
    assert store.get("a") is not None
    clock.now += 0.2
    assert store.get("a") is None
    assert len(store) == 0


# --- keys -----------------------------------------------------------------------------------


def bind(statement: bytes, values: bytes = b"\0\0\0\0", portal: bytes = b"") -> Message:
    return Message(m.BIND, portal + b"\0" + statement + b"\0" + values)


def parse(text: bytes, name: bytes = b"") -> Message:
    return Message(m.PARSE, name + b"\0" + text + b"\0\0\0")


EXECUTE = frame(ord("E"), b"\0\0\0\0\0")
SYNC = frame(ord("S"), b"")


def test_key_spaces() -> None:
    spaces = KeySpaces()
    a = spaces.of("db", "alice", (("TimeZone", "UTC"),))
    assert spaces.of("db", "alice", (("TimeZone", "UTC"),)) == a
    assert spaces.of("db", "bob", (("TimeZone", "UTC"),)) != a
    assert spaces.of("db", "alice", (("TimeZone", "CET"),)) != a
    assert spaces.of("db2", "alice", (("TimeZone", "UTC"),)) != a


def test_simple_query_and_batches() -> None:
    query = Message(m.QUERY, b"SELECT 1\0")
    assert simple_query([query]) == b"SELECT 1\0"
    assert simple_query([query, query]) is None
    assert simple_query(b"Q...") is None
    shape = batch([parse(b"SELECT $1"), bind(b"", b"\0\0\0\x01\0\0\0\x011\0\0"), EXECUTE + SYNC])
    assert shape is not None and shape.parse == b"SELECT $1\0\0\0" and shape.describe == b""
    described = batch([bind(b"s1"), Message(m.DESCRIBE, b"P\0"), EXECUTE, SYNC])
    assert described is not None and described.statement == b"s1" and described.describe == b"P"
    # A row limit, a named portal, no Sync, an unnamed statement of an earlier batch, two
    # executions: not cached.
    limited = frame(ord("E"), b"\0\0\0\0\x0a")
    assert batch([bind(b"s1"), limited + SYNC]) is None
    assert batch([bind(b"s1", portal=b"p"), EXECUTE + SYNC]) is None
    assert batch([bind(b"s1"), EXECUTE]) is None
    assert batch([bind(b""), EXECUTE + SYNC]) is None
    assert batch([bind(b"s1"), EXECUTE + SYNC + EXECUTE]) is None
    assert batch([parse(b"SELECT 1", b"named"), bind(b"named"), EXECUTE + SYNC]) is None
    # The prepared execution's own path (Sync split out) says what the general one says.
    sync = Message(m.SYNC, b"")
    values = b"\0\0\0\x01\0\0\0\x015\0\0"
    fast = batch([bind(b"s1", values), EXECUTE, sync])
    assert fast == batch([bind(b"s1", values), EXECUTE + SYNC])
    assert fast is not None and fast.statement == b"s1" and fast.bind == values
    assert batch([bind(b"s1", portal=b"p"), EXECUTE, sync]) is None
    assert batch([bind(b""), EXECUTE, sync]) is None
    assert batch([bind(b"s1"), limited, sync]) is None
    portal = Message(m.DESCRIBE, b"P\0")
    described_fast = batch([bind(b"s1", values), portal, EXECUTE, sync])
    assert described_fast == batch([bind(b"s1", values), portal, EXECUTE + SYNC])
    assert described_fast is not None and described_fast.describe == b"P"
    assert batch([bind(b"s1"), Message(m.DESCRIBE, b"Pother\0"), EXECUTE, sync]) is None
    assert batch([bind(b"s1"), Message(m.DESCRIBE, b"Ss1\0"), EXECUTE, sync]) is not None


# --- answers --------------------------------------------------------------------------------

ROWS = frame(ord("T"), b"\0\0") + frame(ord("D"), b"\0\0") + frame(ord("C"), b"SELECT 1\0")
IDLE = m.ready_for_query(b"I")


def test_replayable_answers() -> None:
    assert replayable(ROWS + IDLE)
    assert replayable(frame(ord("1"), b"") + frame(ord("2"), b"") + ROWS + IDLE)
    assert not replayable(ROWS + m.ready_for_query(b"T")), "inside a transaction"
    assert not replayable(m.error_response("ERROR", "25P02", "aborted") + IDLE)
    assert not replayable(frame(ord("N"), b"notice") + ROWS + IDLE)
    assert not replayable(ROWS + ROWS + IDLE), "two results"
    suspended = frame(ord("T"), b"\0\0") + frame(ord("s"), b"")
    assert not replayable(suspended + IDLE)


def test_capture_limit() -> None:
    capture = Capture(len(ROWS + IDLE))
    capture.add([ROWS[:5], ROWS[5:]])
    capture.add(IDLE)
    assert capture.answer() == ROWS + IDLE
    small = Capture(10)
    small.add(ROWS + IDLE)
    assert small.failed and small.answer() is None


# --- relations ----------------------------------------------------------------------------

CATALOG = DatabaseCatalog(
    functions={"bump": Volatility.VOLATILE},
    views={"v": "SELECT * FROM t", "public.v": "SELECT * FROM t"},
    invalidation=(
        ("view", "v", "t"),
        ("inherits", "p", "p1"),
        ("inherits", "p1", "p1a"),
        ("cascade", "parent", "child"),
        ("cascade", "child", "grandchild"),
        ("trigger", "audited", None),
        ("uncached", "secret", None),
    ),
)


@pytest.mark.parametrize(
    ("sql", "written"),
    [
        ("SELECT * FROM t", NOTHING),
        ("UPDATE t SET a = 1", frozenset({"t"})),
        ("UPDATE app.t SET a = 1", frozenset({"t"})),
        ("UPDATE p1a SET a = 1", frozenset({"p1a", "p1", "p"})),
        ("DELETE FROM p", frozenset({"p", "p1", "p1a"})),
        ("DELETE FROM parent", frozenset({"parent", "child", "grandchild"})),
        ("UPDATE v SET a = 1", frozenset({"v", "t"})),
        ("UPDATE audited SET a = 1", ALL),
        ("SELECT bump()", ALL),
        ("SELECT unknown_fn()", ALL),
        ("DO $$BEGIN UPDATE t SET a = 1; END$$", ALL),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", ALL),
        ("TRUNCATE t", frozenset({"t"})),
        ("GRANT SELECT ON t TO bob", frozenset({"t"})),
        ("COPY t FROM STDIN", frozenset({"t"})),
        ("INSERT INTO t VALUES (nextval('s'))", frozenset({"t"})),
        ("SELECT * FROM t FOR UPDATE", NOTHING),
        ("COMMIT PREPARED 'x'", ALL),
    ],
)
def test_what_a_write_reaches(sql: str, written: frozenset[str] | None) -> None:
    assert Relations(CATALOG).writes(classify(sql)) == written


def test_what_a_read_depends_on() -> None:
    relations = Relations(CATALOG)
    assert relations.reads(("public.v", "u")) == frozenset({"v", "t", "u"})
    assert relations.reads(("secret",)) is None, "row-level security, a sequence ..."


# --- change stream and freshness ----------------------------------------------------------


def test_names_of_the_change_stream() -> None:
    assert unquote("t_1") == "t_1"
    assert unquote('"We.ird""x"') == 'We.ird"x'


def test_freshness_window() -> None:
    clock = Clock()
    watch = Watch(ttl=0, clock=clock)
    assert not watch.servable("db") and not watch.storable("db")
    watch.slot_made("db")
    assert watch.storable("db") and not watch.servable("db"), "no poll yet"
    watch.polled("db", clock.now)
    assert watch.servable("db")
    clock.now += WINDOW + 0.01
    assert not watch.servable("db"), "no poll reached the primary within a second"
    watch.polled("db", clock.now)
    watch.lost("db")
    assert not watch.servable("db") and not watch.storable("db")
    watch.unavailable("wal_level")
    assert not watch.servable("db"), "ttl 0 and no decoding: nothing is served"
    young = Watch(ttl=5, clock=clock)
    young.unavailable("wal_level")
    assert young.servable("db") and young.storable("db")


# --- write positions (results read on standbys) ------------------------------------------


def test_standby_results_wait_for_the_last_write_to_be_replayed() -> None:
    positions = WritePositions()
    assert positions.allows("db", ["t"], 100)
    assert not positions.allows("db", ["t"], None), "replay position unknown"
    keys = positions.writing("db", frozenset({"t"}))
    assert not positions.allows("db", ["t"], 10**9), "position not told yet"
    assert positions.allows("db", ["u"], 100)
    positions.placed(keys, 500)
    assert not positions.allows("db", ["t"], 499)
    assert positions.allows("db", ["t"], 500)
    positions.seen("db", ALL, 700)
    assert not positions.allows("db", ["u"], 600), "a write to the whole database"
    assert positions.allows("other", ["u"], 600)
