"""The per-connection engines as state machines: bytes in, state and actions out, with
no socket and no PostgreSQL. The server's answers are written here as PostgreSQL 15
sends them (each sequence was read off a live server; see PG15-FACTS.md)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

from hypothesis import given
from hypothesis import strategies as st

from pooler.engine.actions import Close, HandOver
from pooler.engine.client import ClientEngine
from pooler.engine.server import ServerEngine
from pooler.protocol import messages as m
from pooler.protocol.codec import frame, frontend_limits


def msg(t: str, body: bytes = b"") -> bytes:
    return frame(ord(t), body)


def ready(status: str = "I") -> bytes:
    return msg("Z", status.encode())


ROW = msg("T", b"\x00\x00") + msg("D", b"\x00\x00") + msg("C", b"SELECT 1\0")
COPY_IN = msg("G", b"\x00\x00\x00")
TERMINATE = msg("X")


def engines() -> tuple[ClientEngine, ServerEngine]:
    server = ServerEngine({}, b"I")
    client = ClientEngine(frontend_limits(1 << 30))
    client.server = server
    return client, server


def forwarded(out: bytes | Sequence[object]) -> bytes:
    if isinstance(out, bytes):
        return out
    return b"".join(x for x in out if isinstance(x, bytes))


def relayed(server: ServerEngine, data: bytes) -> bytes:
    out = server.feed(data)
    return out if isinstance(out, bytes) else b"".join(x for x in out if isinstance(x, bytes))


# The pipeline of the leak: COPY, CopyData, CopyDone, Sync, Sync, then two queries.
LEAK_PIPELINE = (
    m.query("COPY t FROM STDIN")
    + msg("d", b"1\n")
    + msg("c")
    + msg("S")
    + msg("S")
    + m.query("SELECT 'A-first'")
    + m.query("SELECT 'A-LEAKED-ROW'")
)
LEAK_ANSWERS = [COPY_IN + msg("C", b"COPY 1\0") + ready(), ready(), ready(), ROW + ready()]


def test_copy_then_syncs_is_not_idle_until_the_last_answer() -> None:
    client, server = engines()
    assert forwarded(client.feed(LEAK_PIPELINE)) == LEAK_PIPELINE
    for answer in LEAK_ANSWERS:
        assert relayed(server, answer) == answer
        assert not server.idle()
        assert not server.reusable(client_partial=False)
    server.feed(ROW + ready())
    assert server.idle()
    assert server.reusable(client_partial=False)


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=60))
def test_server_answers_cut_anywhere_give_the_same_state(cuts: list[int]) -> None:
    # One byte per read, or CopyInResponse and the COPY's end in one read: the
    # COPY's CommandComplete must be seen after CopyInResponse either way.
    client, server = engines()
    client.feed(LEAK_PIPELINE)
    stream = b"".join(LEAK_ANSWERS)
    pos = 0
    relayed_bytes = b""
    for cut in cuts:
        relayed_bytes += relayed(server, stream[pos : pos + cut])
        pos += cut
        if pos >= len(stream):
            break
    relayed_bytes += relayed(server, stream[pos:])
    assert relayed_bytes == stream
    assert server.requests.owed == 1
    assert not server.requests.copy_in
    server.feed(ROW + ready())
    assert server.idle()


def test_status_is_that_of_the_last_ready_for_query_when_one_is_cut() -> None:
    client, server = engines()
    client.feed(m.query("BEGIN") + m.query("COMMIT"))
    first = msg("C", b"BEGIN\0") + ready("T")
    server.feed(first[:-1])
    server.feed(first[-1:] + msg("C", b"COMMIT\0") + ready("I"))
    assert server.status == b"I"
    assert server.idle()


def test_extended_batch_without_sync_is_not_idle() -> None:
    client, server = engines()
    client.feed(
        msg("P", b"\0SELECT 1\0\0\0") + msg("B", b"\0\0\0\0\0\0\0\0") + msg("E", b"\0\0\0\0\0")
    )
    server.feed(msg("1") + msg("2") + ROW)
    assert not server.idle()
    client.feed(msg("S"))
    server.feed(ready())
    assert server.idle()


def test_copy_data_and_flush_do_not_settle_an_extended_batch() -> None:
    # Parse, Bind, Execute (a COPY), Flush, CopyData: the batch still waits for Sync.
    client, server = engines()
    client.feed(msg("P", b"\0COPY t FROM STDIN\0\0\0") + msg("B", b"\0" * 8) + msg("E", b"\0" * 5))
    client.feed(msg("H") + msg("d", b"1\n") + msg("c"))
    server.feed(msg("1") + msg("2") + COPY_IN + msg("C", b"COPY 1\0"))
    assert server.requests.unsynced
    assert not server.idle()


def test_terminate_with_nothing_owed_is_answered_by_the_pooler() -> None:
    client, _server = engines()
    out = client.feed(TERMINATE + m.query("SELECT 'after'"))
    assert out == [Close(b"")]
    assert client.ended
    assert client.feed(m.query("SELECT 'more'")) == []


def test_terminate_with_answers_owed_goes_to_the_server() -> None:
    client, server = engines()
    query = m.query("SELECT 1")
    out = client.feed(query + TERMINATE + m.query("SELECT 'after'"))
    assert out == [query, HandOver(TERMINATE)]
    # Nothing after the Terminate was counted: PostgreSQL reads nothing after it.
    assert server.requests.owed == 1


def test_unknown_type_byte() -> None:
    client, _ = engines()
    out = client.feed(b"Z\0\0\0\4")
    assert out == [Close(m.error_response("FATAL", "08P01", "invalid frontend message type 90"))]
    client, _ = engines()
    query = m.query("SELECT 1")
    assert client.feed(query + b"Z") == [query, HandOver(b"Z")]


def test_length_out_of_range_hands_the_header_to_a_busy_server() -> None:
    client, _ = engines()
    assert client.feed(b"Q\0\0\0\2") == [Close(b"")]
    client, server = engines()
    client.feed(m.query("COPY t FROM STDIN"))
    server.feed(COPY_IN)
    bad = b"d" + struct.pack("!I", 0x7FFFFFFF)
    assert client.feed(bad) == [HandOver(bad)]


def test_end_of_input_while_copy_in_runs_goes_to_the_server() -> None:
    client, server = engines()
    client.feed(m.query("COPY t FROM STDIN") + msg("d", b"1\n"))
    server.feed(COPY_IN)
    assert client.eof() == HandOver(b"")
    client, server = engines()
    assert client.eof() == Close(b"")


def test_a_server_handed_an_ending_is_never_reused() -> None:
    _, server = engines()
    server.handed_over = True
    assert server.idle()
    assert not server.reusable(client_partial=False)
    _client, server = engines()
    assert not server.reusable(client_partial=True)


def test_half_a_client_message_forwarded() -> None:
    client, _server = engines()
    query = m.query("SELECT 1")
    client.feed(query[:7])
    assert client.partial()


def test_reset_result_waits_for_the_reset_answer_and_its_errors() -> None:
    _, server = engines()
    server.reset_sent()
    assert server.reset_result() is None
    server.feed(msg("C", b"DISCARD ALL\0") + ready())
    assert server.reset_result() is True
    server.reset_sent()
    server.feed(msg("E", b"SERROR\0C25001\0\0") + ready("I"))
    assert server.reset_result() is False


def test_parameter_status_and_notifications_pass_through_untouched() -> None:
    _, server = engines()
    notice = msg("A", struct.pack("!i", 4242) + b"chan\0payload\0")
    status = m.parameter_status("TimeZone", "UTC")
    assert relayed(server, notice + status) == notice + status
    assert server.params["TimeZone"] == "UTC"
