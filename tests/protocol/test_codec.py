"""Sans-IO codec: framing round trips, limits, and arbitrary input never escaping."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooler.protocol import messages as m
from pooler.protocol.codec import (
    LARGE_MESSAGE_LIMIT,
    CancelRequest,
    Event,
    FramingError,
    GSSENCRequest,
    Message,
    Scanner,
    SSLRequest,
    StartupError,
    StartupMessage,
    build_cancel_request,
    build_startup_message,
    frame,
    frontend_limits,
    parse_startup_packet,
    startup_packet_length,
)

FRONTEND_TYPES = b"QFXBPCDEHSdcf"
LIMITS = frontend_limits(1 << 30)

messages_st = st.lists(
    st.tuples(st.sampled_from(list(FRONTEND_TYPES)), st.binary(max_size=300)), max_size=12
)


def _events(result: bytes | list[Event]) -> list[Event]:
    return [result] if isinstance(result, bytes) else result


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _replay(scanner: Scanner, chunks: list[bytes]) -> tuple[bytes, list[Message], list[Message]]:
    forwarded = bytearray()
    split: list[Message] = []
    observed: list[Message] = []
    for chunk in chunks:
        for event in _events(scanner.feed(chunk)):
            if isinstance(event, Message):
                split.append(event)
            elif isinstance(event, FramingError):
                raise event
            else:
                forwarded += event
        observed += scanner.observed
        scanner.observed.clear()
    return bytes(forwarded), split, observed


@settings(max_examples=300)
@given(msgs=messages_st, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_scanner_round_trip_any_chunking(msgs: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """Runs plus split messages give back the stream; observed ones stay in the runs."""
    stream = b"".join(frame(t, body) for t, body in msgs)
    split_types = frozenset({ord("Q"), ord("X")})
    observe_types = frozenset({ord("S"), ord("P")})
    scanner = Scanner(split_types, observe_types, LIMITS, track=frozenset({ord("S"), ord("P")}))
    forwarded, split, observed = _replay(scanner, _chunks(stream, cuts))
    assert forwarded == b"".join(frame(t, b) for t, b in msgs if t not in split_types)
    assert [(x.type, x.body) for x in split] == [(t, b) for t, b in msgs if t in split_types]
    assert [(x.type, x.body) for x in observed] == [(t, b) for t, b in msgs if t in observe_types]
    assert scanner.tracked == [t for t, _ in msgs if t in (ord("S"), ord("P"))]
    assert scanner.at_boundary()


def test_ready_for_query_is_counted_and_unsynced_tracked_in_any_chunking() -> None:
    stream = (
        frame(ord("T"), b"x" * 20)
        + frame(ord("Z"), b"T")
        + frame(ord("C"), b"SELECT 1\0")
        + frame(ord("Z"), b"I")
    )
    for cut in range(len(stream) + 1):
        scanner = Scanner(ready=True)
        forwarded, _, observed = _replay(scanner, [stream[:cut], stream[cut:]])
        assert forwarded == stream
        statuses = [m.body for m in observed if m.type == ord("Z")]
        assert scanner.ready_count + len(statuses) == 2
        if scanner.ready_count:
            assert scanner.status == ord("I") or statuses == [b"I"]
    client = Scanner(limits=LIMITS, stop=frozenset({ord("X")}))
    client.feed(frame(ord("P"), b"\0SELECT 1\0\0\0") + frame(ord("S"), b""))
    assert client.last_type == ord("S")
    client.feed(frame(ord("B"), b"\0\0\0\0\0\0\0\0") + frame(ord("X"), b""))
    assert client.last_type == ord("B")


def test_whole_chunk_of_uninspected_messages_is_forwarded_without_copy() -> None:
    chunk = frame(ord("P"), b"\0SELECT 1\0\0\0") + frame(ord("S"), b"")
    assert Scanner(limits=LIMITS).feed(chunk) is chunk


def test_large_uninspected_message_streams_through_in_pieces() -> None:
    body = b"x" * 100_000
    stream = frame(ord("d"), body)
    scanner = Scanner(limits=LIMITS)
    pieces = [_events(scanner.feed(stream[i : i + 4096])) for i in range(0, len(stream), 4096)]
    # Nothing is held back waiting for the end of the message.
    assert all(sum(len(e) for e in p if isinstance(e, bytes)) > 0 for p in pieces[1:])
    assert b"".join(e for p in pieces for e in p if isinstance(e, bytes)) == stream
    assert scanner.at_boundary()


def test_split_message_is_not_allocated_from_its_length_field() -> None:
    scanner = Scanner(split=frozenset({ord("Q")}), limits=LIMITS)
    assert scanner.feed(b"Q" + struct.pack("!i", 1 << 29) + b"SEL") == []
    assert not scanner.at_boundary()
    assert len(scanner._acc) == 3


@pytest.mark.parametrize(
    ("data", "fatal"),
    [
        (b"Q" + struct.pack("!i", 0x7FFFFFFF), None),
        (b"Q" + struct.pack("!i", 3), None),
        (b"S" + struct.pack("!i", 10_005) + b"\0" * 10_001, None),
        (b"c" + struct.pack("!i", 20_000), None),
        (b"p" + struct.pack("!i", 8) + b"abcd", "invalid frontend message type 112"),
        (b"\x00" + struct.pack("!i", 4), "invalid frontend message type 0"),
        (b"y", "invalid frontend message type 121"),
    ],
)
def test_frontend_limits_are_postgresqls(data: bytes, fatal: str | None) -> None:
    healthy = frame(ord("Q"), b"SELECT 1\0")
    events = _events(Scanner(limits=LIMITS).feed(healthy + data))
    assert events[0] == healthy
    error = events[-1]
    assert isinstance(error, FramingError)
    assert error.fatal_message == fatal


def test_scanner_refuses_everything_after_an_error() -> None:
    scanner = Scanner(limits=LIMITS)
    scanner.feed(b"Z" + struct.pack("!i", 4))
    assert scanner.feed(frame(ord("Q"), b"SELECT 1\0")) == []


def test_max_message_size_caps_large_types() -> None:
    limits = frontend_limits(1000)
    assert limits[ord("Q")] == 1000
    assert frontend_limits(1 << 40)[ord("Q")] == LARGE_MESSAGE_LIMIT
    events = _events(Scanner(limits=limits).feed(b"Q" + struct.pack("!i", 1001)))
    assert isinstance(events[-1], FramingError)


@settings(max_examples=500)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0), max_size=6))
def test_arbitrary_bytes_never_raise(data: bytes, cuts: list[int]) -> None:
    """Whatever arrives, the scanner answers with events, never an exception."""
    scanner = Scanner(frozenset({ord("Q")}), frozenset({ord("S")}), LIMITS)
    for chunk in _chunks(data, cuts):
        for event in _events(scanner.feed(chunk)):
            assert isinstance(event, bytes | Message | FramingError)


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_startup_packets_raise_only_startup_error(body: bytes) -> None:
    packet = struct.pack("!i", len(body) + 4) + body
    try:
        length = startup_packet_length(packet)
        if length is None or length != len(packet):
            return
        parse_startup_packet(packet)
    except StartupError:
        pass


@given(
    st.lists(
        st.tuples(
            st.text(
                st.characters(codec="utf-8", exclude_characters="\0"),
                min_size=1,
                max_size=20,
            ),
            st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40),
        ),
        max_size=6,
    )
)
def test_startup_message_round_trip(params: list[tuple[str, str]]) -> None:
    params = [(k, v) for k, v in params if not k.startswith("_pq_.") and k != "user"]
    params.append(("user", "app"))
    packet = build_startup_message(tuple(params))
    assert startup_packet_length(packet) == len(packet)
    parsed = parse_startup_packet(packet)
    assert isinstance(parsed, StartupMessage)
    assert parsed.params == tuple(params)
    assert parsed.minor == 0


def test_special_startup_packets() -> None:
    assert parse_startup_packet(build_cancel_request(42, -7)) == CancelRequest(42, -7)
    assert parse_startup_packet(struct.pack("!ii", 8, 80877103)) == SSLRequest()
    assert parse_startup_packet(struct.pack("!ii", 8, 80877104)) == GSSENCRequest()


def test_protocol_options_and_newer_minor_are_kept_for_negotiation() -> None:
    body = struct.pack("!i", (3 << 16) | 2) + b"user\0app\0_pq_.foo\0bar\0\0"
    parsed = parse_startup_packet(struct.pack("!i", len(body) + 4) + body)
    assert isinstance(parsed, StartupMessage)
    assert parsed.minor == 2
    assert parsed.unknown_protocol_options == ("_pq_.foo",)
    assert parsed.params == (("user", "app"),)


@pytest.mark.parametrize(
    ("body", "sqlstate", "message"),
    [
        (struct.pack("!i", 2 << 16) + b"user\0a\0\0", "0A000", "unsupported frontend protocol 2.0"),
        (struct.pack("!i", 4 << 16) + b"user\0a\0\0", "0A000", "unsupported frontend protocol 4.0"),
        (struct.pack("!i", 3 << 16) + b"database\0a\0\0", "28000", "no PostgreSQL user name"),
        (struct.pack("!i", 3 << 16) + b"user\0a\0", "08P01", "invalid startup packet layout"),
        (struct.pack("!i", 3 << 16) + b"user\0a\0\0\0", "08P01", "invalid startup packet layout"),
    ],
)
def test_bad_startup_messages(body: bytes, sqlstate: str, message: str) -> None:
    with pytest.raises(StartupError) as info:
        parse_startup_packet(struct.pack("!i", len(body) + 4) + body)
    assert info.value.sqlstate == sqlstate
    assert info.value.message.startswith(message)


@pytest.mark.parametrize("length", [0, 4, 7, 10_005, 1 << 31 - 1])
def test_startup_length_limits(length: int) -> None:
    with pytest.raises(StartupError) as info:
        startup_packet_length(struct.pack("!I", length))
    assert info.value.sqlstate is None


def test_error_response_fields_round_trip() -> None:
    raw = m.error_response("FATAL", "28P01", "no", detail="d", hint="h")
    assert raw[0] == m.ERROR_RESPONSE
    fields = m.parse_fields(raw[5:])
    assert fields == {"S": "FATAL", "V": "FATAL", "C": "28P01", "M": "no", "D": "d", "H": "h"}


def test_sasl_initial_response_round_trip() -> None:
    raw = m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert m.parse_sasl_initial_response(raw[5:]) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert m.parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff") == (
        "SCRAM-SHA-256",
        None,
    )
    for body, error in [
        (b"SCRAM-SHA-256", "invalid string in message"),
        (b"SCRAM-SHA-256\0\0\0", "insufficient data left in message"),
        (b"SCRAM-SHA-256\0\0\0\0\x09abc", "insufficient data left in message"),
        (b"SCRAM-SHA-256\0\0\0\0\x01abc", "invalid message format"),
    ]:
        with pytest.raises(ValueError, match=error):
            m.parse_sasl_initial_response(body)


def test_a_stop_message_cut_across_reads_ends_the_stream_once_whole() -> None:
    """A Terminate with a body, its end in the next read (found by tests/test_native.py:
    it raised UnboundLocalError)."""
    scanner = Scanner(stop=frozenset({m.TERMINATE}), limits=LIMITS)
    stream = frame(m.TERMINATE, b"\0") + frame(m.QUERY, b"SELECT 1\0")
    assert scanner.feed(stream[:5]) == []
    events = _events(scanner.feed(stream[5:]))
    assert [(e.type, e.body) for e in events if isinstance(e, Message)] == [(m.TERMINATE, b"\0")]
    assert scanner.feed(b"more") == []
