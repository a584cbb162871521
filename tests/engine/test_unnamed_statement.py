"""The unnamed prepared statement across servers, sans-IO.

PostgreSQL keeps a session's unnamed statement across Syncs until the next Parse of it,
a Close of it or a simple Query; in transaction pooling the next Bind of it may come on
another server, which must be given the client's (and never run another client's)."""

from __future__ import annotations

from parser_api import classify
from pooler.engine.client import ClientEngine
from pooler.engine.server import ServerEngine
from pooler.protocol.codec import frame, frontend_limits


def msg(t: str, body: bytes = b"") -> bytes:
    return frame(ord(t), body)


def parse(name: str, sql: str) -> bytes:
    return msg("P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


BIND_UNNAMED = msg("B", b"\0\0\0\0\0\0\0\0")
EXECUTE = msg("E", b"\0\0\0\0\0")
SYNC = msg("S")
CLOSE_UNNAMED = msg("C", b"S\0")
DESCRIBE_UNNAMED = msg("D", b"S\0")


def _engine() -> ClientEngine:
    return ClientEngine(frontend_limits(1 << 30), classify)


def _sent(engine: ClientEngine, data: bytes, server: ServerEngine) -> bytes:
    """What goes to ``server`` when the client, with no server, sends ``data``."""
    engine.feed(data)
    out = engine.attach(server)
    return b"".join(part for part in out if isinstance(part, bytes))


def _done(engine: ClientEngine, server: ServerEngine, answers: bytes) -> None:
    server.feed(answers)
    assert engine.releasable()
    engine.detach()


def test_a_bind_of_the_unnamed_statement_on_another_server_gets_it_parsed_first() -> None:
    engine = _engine()
    a, b = ServerEngine({}, b"I"), ServerEngine({}, b"I")
    first = parse("", "SELECT 5 AS five") + SYNC
    assert _sent(engine, first, a) == first
    _done(engine, a, msg("1") + msg("Z", b"I"))
    # On another server: parsed there first (its answers dropped), then the Bind.
    sent = _sent(engine, BIND_UNNAMED + EXECUTE + SYNC, b)
    assert sent == parse("", "SELECT 5 AS five") + SYNC + BIND_UNNAMED + EXECUTE + SYNC
    rows = msg("2") + msg("D", b"\0\x01\0\0\0\x015") + msg("C", b"SELECT 1\0") + msg("Z", b"I")
    assert b.feed(msg("1") + msg("Z", b"I") + rows) == rows
    _done(engine, b, b"")
    # Back on a server that has it: nothing more; a Describe of it counts as a use.
    assert _sent(engine, DESCRIBE_UNNAMED + SYNC, a) == DESCRIBE_UNNAMED + SYNC


def test_a_batch_that_parses_it_first_needs_nothing() -> None:
    engine = _engine()
    a, b = ServerEngine({}, b"I"), ServerEngine({}, b"I")
    _sent(engine, parse("", "SELECT 1") + SYNC, a)
    _done(engine, a, msg("1") + msg("Z", b"I"))
    batch = parse("", "SELECT 2") + BIND_UNNAMED + EXECUTE + SYNC
    assert _sent(engine, batch, b) == batch


def test_another_clients_unnamed_statement_is_never_run() -> None:
    """A client with no unnamed statement of its own gets PostgreSQL's 26000, not the
    statement the server's last client left there."""
    other, engine = _engine(), _engine()
    server = ServerEngine({}, b"I")
    _sent(other, parse("", "SELECT 'secret'") + SYNC, server)
    _done(other, server, msg("1") + msg("Z", b"I"))
    sent = _sent(engine, BIND_UNNAMED + EXECUTE + SYNC, server)
    assert sent == CLOSE_UNNAMED + SYNC + BIND_UNNAMED + EXECUTE + SYNC


def test_a_simple_query_drops_it() -> None:
    engine = _engine()
    a, b = ServerEngine({}, b"I"), ServerEngine({}, b"I")
    _sent(engine, parse("", "SELECT 5") + SYNC, a)
    _done(engine, a, msg("1") + msg("Z", b"I"))
    _sent(engine, msg("Q", b"SELECT 1\0"), a)
    _done(engine, a, msg("C", b"SELECT 1\0") + msg("Z", b"I"))
    # The client has none, nor has either server (the Query dropped a's).
    for server in (b, a):
        assert _sent(engine, BIND_UNNAMED + SYNC, server) == BIND_UNNAMED + SYNC
        _done(engine, server, msg("E", b"SERROR\0C26000\0\0") + msg("Z", b"I"))


def test_a_close_the_pooler_answers_drops_it_and_the_server_is_told_when_it_matters() -> None:
    engine = _engine()
    a = ServerEngine({}, b"I")
    _sent(engine, parse("", "SELECT 5") + SYNC, a)
    _done(engine, a, msg("1") + msg("Z", b"I"))
    # Close and Sync alone, with no server: answered by the pooler; a keeps the old one,
    # so a later use of it there closes it first.
    assert engine.feed(CLOSE_UNNAMED + SYNC)
    sent = _sent(engine, BIND_UNNAMED + SYNC, a)
    assert sent == CLOSE_UNNAMED + SYNC + BIND_UNNAMED + SYNC


def test_another_clients_sequence_state_is_discarded() -> None:
    """currval and lastval left by another client's writes are not this client's: the
    next client's server is rid of them first; its own stay."""
    writer, reader = _engine(), _engine()
    server = ServerEngine({}, b"I")
    _sent(writer, msg("Q", b"SELECT nextval('s')\0"), server)
    _done(writer, server, msg("C", b"SELECT 1\0") + msg("Z", b"I"))
    # The writer back on its server: nothing to discard.
    read = msg("Q", b"SELECT currval('s')\0")
    assert _sent(writer, read, server) == read
    _done(writer, server, msg("C", b"SELECT 1\0") + msg("Z", b"I"))
    # Another client: DISCARD SEQUENCES first, once.
    assert _sent(reader, read, server) == msg("Q", b"DISCARD SEQUENCES\0") + read
    discarded = msg("C", b"DISCARD SEQUENCES\0") + msg("Z", b"I")
    _done(reader, server, discarded + msg("E", b"SERROR\0C55000\0\0") + msg("Z", b"I"))
    # (currval may write, as far as the grammar knows: the server is the reader's now.)
    assert _sent(reader, read, server) == read
