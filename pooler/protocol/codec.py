"""Framing of PostgreSQL protocol 3.0 message streams and startup packets.

The scanner walks a byte stream message by message without copying the bodies of
messages nobody needs to look at: those stay in contiguous "runs" of the input that the
caller forwards as they are. Messages whose type is in ``split`` are cut out of the
runs and handed over whole (their bytes are accumulated only as they arrive, never
pre-allocated from a length field). Messages whose type is in ``observe`` stay in the
runs (forwarded untouched) and are also reported, so a relay can watch ReadyForQuery
without breaking its zero-copy path.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")
_HDR_BYTES = struct.Struct("!Bi").pack
unpack_int32 = _INT32.unpack_from

#: PostgreSQL's ``MAX_STARTUP_PACKET_LENGTH``.
MAX_STARTUP_PACKET = 10000
#: PostgreSQL's ``PQ_SMALL_MESSAGE_LIMIT``.
SMALL_MESSAGE_LIMIT = 10000
#: PostgreSQL's ``PQ_LARGE_MESSAGE_LIMIT`` (``MaxAllocSize - 1``).
LARGE_MESSAGE_LIMIT = 0x3FFFFFFF - 1
#: PostgreSQL's ``PG_MAX_AUTH_TOKEN_LENGTH``: a password message.
PASSWORD_MESSAGE_LIMIT = 65535
#: PostgreSQL's ``PG_MAX_SASL_MESSAGE_LENGTH``.
SASL_MESSAGE_LIMIT = 1024

PROTOCOL_3_0 = 3 << 16
CANCEL_REQUEST_CODE = (1234 << 16) | 5678
SSL_REQUEST_CODE = (1234 << 16) | 5679
GSSENC_REQUEST_CODE = (1234 << 16) | 5680


def frontend_limits(max_message_size: int) -> dict[int, int]:
    """Per-type length limits of frontend messages after authentication, as PostgreSQL's
    ``SocketBackend`` applies them; types absent from the table are not valid at all."""
    large = min(max_message_size, LARGE_MESSAGE_LIMIT)
    small = SMALL_MESSAGE_LIMIT
    return {
        ord("Q"): large,
        ord("F"): large,
        ord("P"): large,
        ord("B"): large,
        ord("d"): large,
        ord("X"): small,
        ord("C"): small,
        ord("D"): small,
        ord("E"): small,
        ord("H"): small,
        ord("S"): small,
        ord("c"): small,
        ord("f"): small,
    }


class FramingError(Exception):
    """A stream that cannot be framed: the connection must be dropped.

    ``fatal_message`` is what PostgreSQL says in a FATAL 08P01 before closing; when it
    is None PostgreSQL closes without a word (it only logs), and so do we.
    """

    def __init__(self, log_message: str, raw: bytes, fatal_message: str | None = None) -> None:
        super().__init__(log_message)
        #: The offending bytes as received: the type byte, and the length when it is
        #: the length that is wrong (so the same fault can be handed to a server).
        self.raw = raw
        self.fatal_message = fatal_message


class Message:
    """One whole message: its type byte as an int and its body (without the header)."""

    # Not a dataclass: compiled (pooler.native), a dataclass keeps an __init__ that
    # dataclasses wrote in Python, run for every message the pooler looks inside.
    __slots__ = ("body", "type")
    __match_args__ = ("type", "body")

    def __init__(self, type: int, body: bytes) -> None:
        self.type = type
        self.body = body

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Message) and other.type == self.type and other.body == self.body

    def __hash__(self) -> int:
        return hash((self.type, self.body))

    def __repr__(self) -> str:
        return f"Message(type={self.type!r}, body={self.body!r})"

    def raw(self) -> bytes:
        """The message as it travels on the wire."""
        return frame(self.type, self.body)


def frame(msg_type: int, body: bytes) -> bytes:
    """Build a typed message."""
    return _HDR_BYTES(msg_type, len(body) + 4) + body


Event = bytes | Message | FramingError


#: Limits for a stream whose every message type is valid (a trusted server's).
ANY_TYPE: Mapping[int, int] = dict.fromkeys(range(256), 0x7FFFFFFF)

_READY_FOR_QUERY = 0x5A


class Scanner:
    """Sans-IO splitter of a typed-message stream (after the startup packet).

        ``feed(data)`` returns events in stream order (or ``data`` itself when it is one
    whole run, see ``feed``): ``bytes`` runs to forward as they are,
        ``Message`` for each message of a ``split`` type, and at most one trailing
        ``FramingError`` after which the scanner accepts nothing more. ``limits`` maps each
        valid type to its longest length (``ANY_TYPE`` accepts everything).

        After an observed message of a ``pause`` type the scanner stops and keeps the rest
        of the input for the next ``feed`` (call ``feed(b"")`` to go on): the caller can
        change what is observed from that message on.

        A message both split and observed is handed over in both ways (to rewrite it in
        ``out``, and to see it in order with the rest in ``observed``).

        A message of a ``stop`` type is split out too, and ends the stream: nothing after
        it is read (a Terminate, after which PostgreSQL reads nothing more).

        ``divert(type, body, type_before)`` is asked about each split message of
        ``divert_types`` (default: every split type) once it is whole; when it says True
        the scanner stops right after that message, which is the last event, sets
        ``diverted``, and keeps the rest of the input for ``take_rest``. A diverted
        message counts as never scanned: it is not in ``tracked`` and ``last_type`` stays
        the type before it (the caller answers it itself). With
        ``divert`` set, a split message received across feeds is put in ``tracked`` only
        once whole (nothing of it was passed on before).

        Cheaper ways to watch messages that stay inside the runs, for the data path:
        ``observe`` types are appended whole to ``observed``; ``track`` types have their
        type byte appended to ``tracked``; ``last_type`` is the type of the last message
        passed on or split out, whole or in part (``stop`` and ``transparent`` types
        excepted);
        and when ``ready`` is set,
        each ReadyForQuery adds one to ``ready_count`` and leaves its status byte in
        ``status``. The caller clears ``observed``, ``tracked`` and ``ready_count``.

        The loop is the pooler's hot path: a message of no watched type costs one set
        lookup and a length check on top of finding where it ends.
    """

    __slots__ = (
        "_acc",
        "_before",
        "_broken",
        "_divert",
        "_divert_types",
        "_floor",
        "_hdr",
        "_invalid",
        "_limits",
        "_mode",
        "_observe",
        "_pause",
        "_rem",
        "_special",
        "_split",
        "_stop",
        "_track",
        "_transparent",
        "_type",
        "diverted",
        "last_type",
        "observed",
        "paused",
        "ready",
        "ready_count",
        "status",
        "tracked",
    )

    def __init__(
        self,
        split: frozenset[int] = frozenset(),
        observe: frozenset[int] = frozenset(),
        limits: Mapping[int, int] = ANY_TYPE,
        *,
        track: frozenset[int] = frozenset(),
        ready: bool = False,
        stop: frozenset[int] = frozenset(),
        pause: frozenset[int] = frozenset(),
        transparent: frozenset[int] = frozenset(),
        divert: Callable[[int, bytes, int], bool] | None = None,
        divert_types: frozenset[int] | None = None,
    ) -> None:
        self._split = joined(split, stop)
        self._divert = divert
        # The types ``divert`` may claim (None: every split type); asking only about
        # those saves a call per other message.
        if divert is None:
            self._divert_types: frozenset[int] = frozenset()
        else:
            self._divert_types = self._split if divert_types is None else divert_types
        # The type before a split message received across feeds (for ``divert``).
        self._before = -1
        #: The last feed stopped after a message ``divert`` claimed.
        self.diverted = False
        self._stop = stop
        self._pause = pause
        self._transparent = transparent
        self._observe = observe
        self._track = track
        self._limits, self._invalid, self._floor = _tables(tuple(sorted(limits.items())))
        self.ready = ready
        self._update_special()
        self._hdr = b""
        # The message being received across feeds: bytes remaining, and whether its
        # bytes are forwarded (0), accumulated for a split message (1) or both (2).
        self._rem = 0
        self._mode = 0
        self._type = 0
        self._acc = bytearray()
        self._broken = False
        self.observed: list[Message] = []
        self.tracked: list[int] = []
        self.last_type = -1
        self.ready_count = 0
        self.status = 0x49  # "I"
        #: The last feed stopped after a ``pause`` message; ``feed(b"")`` goes on.
        self.paused = False

    def _update_special(self) -> None:
        self._special = _special(
            self._split, self._observe, self._track | self._transparent, self._invalid, self.ready
        )

    def set_observe(self, observe: frozenset[int], *, ready: bool) -> None:
        """Change which message types are observed, and whether ReadyForQuery is only
        counted (``ready``) or observed with the rest, in order."""
        self._observe = observe
        self.ready = ready
        self._update_special()

    def at_boundary(self) -> bool:
        """True when no message is partly received."""
        return self._rem == 0 and not self._hdr

    def mid_message(self) -> bool:
        """True when a message whose type was read is not complete yet (counted in
        ``tracked`` and ``last_type`` already, whether passed on in runs or buffered)."""
        return self._rem != 0

    def passed_partial(self) -> bool:
        """True when part of a message, but not all of it, has been passed on in runs."""
        return self._rem != 0 and self._mode != 1

    def take_rest(self) -> bytes:
        """After a diverted message: the input that followed it, which the scanner
        forgets (it is at a message boundary); feed it again to have it scanned."""
        rest = self._hdr
        self._hdr = b""
        self.diverted = False
        return rest

    def _diverted(
        self, out: list[Event], t: int, before: int, rest: bytes, tracked: bool
    ) -> list[Event]:
        if tracked and t in self._track:
            self.tracked.pop()
        self.last_type = before
        self.diverted = True
        self._hdr = rest
        return out

    def _broke(
        self, out: list[Event], data: bytes, run: int, pos: int, error: FramingError
    ) -> list[Event]:
        if run < pos:
            out.append(data[run:pos])
        out.append(error)
        self._broken = True
        return out

    def _paused(self, out: list[Event], data: bytes, run: int, pos: int) -> list[Event]:
        # The rest waits for the next feed, which the caller makes at once (with b"")
        # after it has acted on what was observed.
        if run < pos:
            out.append(data[run:pos])
        self._hdr = data[pos:]
        self.paused = pos < len(data)
        return out

    def _start_partial(self, data: bytes, pos: int, t: int, mode: int, end: int) -> None:
        self._type = t
        self._mode = mode
        self._acc = bytearray(data[pos + 5 :])
        self._rem = end - len(data)

    def feed(self, data: bytes) -> bytes | list[Event]:
        """Consume ``data``; see the class docstring for the events.

        Returns the input itself (a ``bytes`` object, not a list) when all of it is to
        be passed on as it is: the common case, at no cost.
        """
        out: list[Event] = []
        if self._broken:
            return out
        if self._hdr:
            data = self._hdr + data
            self._hdr = b""
            self.paused = False
        n = len(data)
        pos = 0
        run = 0
        if self._rem:
            take = self._rem if self._rem < n else n
            self._rem -= take
            pos = take
            if self._mode:
                self._acc += data[:take]
                if self._mode == 1:
                    run = pos
                if self._rem == 0:
                    msg = Message(self._type, bytes(self._acc))
                    self._acc = bytearray()
                    if self._mode == 1:
                        out.append(msg)
                        if self._type in self._stop:
                            self._broken = True
                            return out
                        if self._divert is not None:
                            t = self._type
                            if self._divert(t, msg.body, self._before):
                                return self._diverted(out, t, self._before, data[pos:], False)
                            # Counted only now that it is not diverted (see below).
                            if t in self._track:
                                self.tracked.append(t)
                        if self._type in self._observe:
                            self.observed.append(msg)
                    elif self._type == _READY_FOR_QUERY and self.ready:
                        self.ready_count += 1
                        self.status = msg.body[0] if msg.body else 0
                    else:
                        self.observed.append(msg)
                        if self._type in self._pause:
                            return self._paused(out, data, run, pos)
        special = self._special
        floor = self._floor
        last = self.last_type
        n4 = n - 4
        while pos < n4:
            # Byte by byte, not struct: compiled (pooler.native), these are C array
            # reads, where unpack_from is a call that builds a tuple.
            t = data[pos]
            length = data[pos + 1] << 24 | data[pos + 2] << 16 | data[pos + 3] << 8 | data[pos + 4]
            if length > 0x7FFFFFFF:
                length -= 0x100000000  # a signed Int32
            if t not in special:
                if length < 4 or (length > floor and length > self._limits[t]):
                    self.last_type = last
                    return self._broke(out, data, run, pos, _bad_length(t, length))
                last = t
                pos += 1 + length
                continue
            if t in self._invalid:
                self.last_type = last
                return self._broke(out, data, run, pos, _bad_type(t))
            if length < 4 or length > self._limits[t]:
                self.last_type = last
                return self._broke(out, data, run, pos, _bad_length(t, length))
            end = pos + 1 + length
            if t == _READY_FOR_QUERY and self.ready:
                last = t
                if end <= n:
                    self.ready_count += 1
                    self.status = data[pos + 5]
                    pos = end
                    continue
                # Split across reads: reported whole in ``observed`` when complete.
                self._start_partial(data, pos, t, 2, end)
                pos = end
                break
            if t in self._split:
                if run < pos:
                    out.append(data[run:pos])
                before = last
                if t in self._stop:
                    if end <= n:
                        out.append(Message(t, data[pos + 5 : end]))
                        self.last_type = last
                        self._broken = True
                        return out
                else:
                    last = t
                    # One that may be diverted once it is whole is counted then.
                    if t in self._track and (end <= n or self._divert is None):
                        self.tracked.append(t)
                if end <= n:
                    msg = Message(t, data[pos + 5 : end])
                    out.append(msg)
                    divert = self._divert
                    if (
                        t in self._divert_types
                        and divert is not None
                        and divert(t, msg.body, before)
                    ):
                        return self._diverted(out, t, before, data[end:], True)
                    if t in self._observe:
                        self.observed.append(msg)
                    pos = run = end
                    continue
                self._start_partial(data, pos, t, 1, end)
                self._before = before
                self.last_type = last
                return out
            if t not in self._transparent:
                last = t
            if t in self._track:
                self.tracked.append(t)
            if t in self._observe:
                if end <= n:
                    self.observed.append(Message(t, data[pos + 5 : end]))
                    if t in self._pause:
                        self.last_type = last
                        return self._paused(out, data, run, end)
                else:
                    self._start_partial(data, pos, t, 2, end)
            pos = end
        self.last_type = last
        if pos > n:
            if not self._rem:
                # An unwatched message continues in the next reads: pass it on as it comes.
                self._mode = 0
                self._rem = pos - n
        elif pos < n:
            if data[pos] in self._invalid:
                return self._broke(out, data, run, pos, _bad_type(data[pos]))
            # PostgreSQL judges the type byte before it waits for the length.
            if run < pos:
                out.append(data[run:pos])
            self._hdr = data[pos:]
            return out
        if run == 0:
            return data
        if run < n:
            out.append(data[run:])
        return out


# Every client has a scanner: the tables behind it are shared, not built per connection
# (they are a few kilobytes, more than the rest of an idle client).


@functools.cache
def _tables(limits: tuple[tuple[int, int], ...]) -> tuple[list[int], frozenset[int], int]:
    """Per-type limits as a list, the invalid types, and the smallest limit (lengths up to
    it need no look-up of their type's own)."""
    table = dict(limits)
    return (
        [table.get(t, -1) for t in range(256)],
        frozenset(t for t in range(256) if t not in table),
        min(table.values()),
    )


@functools.cache
def joined(first: frozenset[int], second: frozenset[int]) -> frozenset[int]:
    """``first | second``, made once: every connection's scanner would otherwise hold a
    set of its own."""
    return first | second


@functools.cache
def _special(
    split: frozenset[int],
    observe: frozenset[int],
    track: frozenset[int],
    invalid: frozenset[int],
    ready: bool,
) -> frozenset[int]:
    special = split | observe | track | invalid
    return special | {_READY_FOR_QUERY} if ready else special


def _bad_type(t: int) -> FramingError:
    message = f"invalid frontend message type {t}"
    return FramingError(message, bytes((t,)), message)


def _bad_length(t: int, length: int) -> FramingError:
    return FramingError(f"invalid message length {length} for type {t}", _HDR_BYTES(t, length))


# --- startup packets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption (never offered)."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A cancel request for the session with this process id and secret key."""

    pid: int
    key: int


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """A protocol 3.x startup message.

    ``params`` keeps every name/value pair except ``_pq_.`` protocol options, in the
    order the client sent them; ``user``, ``database`` and ``options`` included.
    """

    version: int
    params: tuple[tuple[str, str], ...]
    unknown_protocol_options: tuple[str, ...]

    @property
    def minor(self) -> int:
        """The minor protocol version asked for."""
        return self.version & 0xFFFF

    def get(self, name: str) -> str | None:
        """The value of a parameter, or None."""
        for key, value in self.params:
            if key == name:
                return value
        return None


StartupPacket = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


class StartupError(Exception):
    """A startup packet PostgreSQL would refuse.

    When ``sqlstate`` is None PostgreSQL closes silently; otherwise it sends FATAL with
    that code and ``message`` (plus ``detail`` and ``hint`` when set) before closing,
    in protocol 2's format when ``old_format`` (a client that asked for 2.x).
    """

    def __init__(
        self,
        message: str,
        sqlstate: str | None = None,
        *,
        detail: str | None = None,
        hint: str | None = None,
        old_format: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint
        self.old_format = old_format


def startup_packet_length(data: bytes | bytearray) -> int | None:
    """Total length of the startup packet at the start of ``data``, once 4 bytes are in.

    Raises StartupError for a length PostgreSQL refuses without reading further.
    """
    if len(data) < 4:
        return None
    length: int = _UINT32.unpack_from(data, 0)[0]
    if length < 8 or length > MAX_STARTUP_PACKET + 4:
        raise StartupError("invalid length of startup packet")
    return length


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode a whole startup packet (length word included), as PostgreSQL 15 does."""
    code = _UINT32.unpack_from(packet, 4)[0]
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 16:
            raise StartupError("invalid length of cancel request packet")
        pid, key = struct.unpack_from("!ii", packet, 8)
        return CancelRequest(pid, key)
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise StartupError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            "0A000",
            old_format=0 < major < 3,
        )
    body = packet[8:]
    params: list[tuple[str, str]] = []
    unknown: list[str] = []
    offset = 0
    end = len(body)
    while offset < end:
        name_end = body.find(b"\0", offset)
        if name_end == offset:
            break
        if name_end < 0:
            offset = end
            break
        value_start = name_end + 1
        if value_start >= end:
            offset = end
            break
        value_end = body.find(b"\0", value_start)
        if value_end < 0:
            offset = end
            break
        name = body[offset:name_end].decode("utf-8", "surrogateescape")
        value = body[value_start:value_end].decode("utf-8", "surrogateescape")
        if name.startswith("_pq_."):
            unknown.append(name)
        else:
            params.append((name, value))
        offset = value_end + 1
    if offset != end - 1:
        raise StartupError(
            "invalid startup packet layout: expected terminator as last byte", "08P01"
        )
    message = StartupMessage(code, tuple(params), tuple(unknown))
    if not message.get("user"):
        raise StartupError("no PostgreSQL user name specified in startup packet", "28000")
    return message


def build_startup_message(params: Mapping[str, str] | tuple[tuple[str, str], ...]) -> bytes:
    """A protocol 3.0 startup message carrying ``params``."""
    items = params.items() if isinstance(params, Mapping) else params
    body = b"".join(
        k.encode("utf-8", "surrogateescape") + b"\0" + v.encode("utf-8", "surrogateescape") + b"\0"
        for k, v in items
    )
    payload = _UINT32.pack(PROTOCOL_3_0) + body + b"\0"
    return _UINT32.pack(len(payload) + 4) + payload


def build_cancel_request(pid: int, key: int) -> bytes:
    """A CancelRequest packet."""
    return struct.pack("!iIii", 16, CANCEL_REQUEST_CODE, pid, key)
