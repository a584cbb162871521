"""A small raw-socket client of the PostgreSQL protocol, for tests that must send exactly
the bytes they mean, malformed ones included, and compare what the pooler answers with
what PostgreSQL answers to the same bytes.

Every read has a timeout, so a peer that says nothing fails a test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pooler.protocol import messages as m
from pooler.protocol.codec import GSSENC_REQUEST_CODE, SSL_REQUEST_CODE, frame
from pooler.protocol.scram import ScramClient

#: Seconds any single read may wait before the test counts the peer as silent.
TIMEOUT = 5.0
#: Seconds of silence after which an open connection counts as "waiting for more".
QUIET = 1.0
#: A message longer than this is taken for bytes that are not protocol 3 framing.
_SANE_LENGTH = 1 << 24

Address = tuple[str, int]


class Listening(Protocol):
    """Anything with a host and a port: a cluster node, a pooler process."""

    host: str
    port: int


def address_of(server: Listening) -> Address:
    """Where ``server`` listens, for :class:`Wire`."""
    return (server.host, server.port)


class Closed(Exception):
    """The peer closed the connection (EOF or reset)."""


@dataclass(frozen=True)
class Msg:
    """One backend message: its type letter and its body (without the header)."""

    type: str
    body: bytes

    def fields(self) -> dict[str, str]:
        """The fields of an ErrorResponse or NoticeResponse."""
        return m.parse_fields(self.body)

    def row(self) -> list[bytes | None]:
        """The values of a DataRow (None for NULL)."""
        count = struct.unpack_from("!h", self.body)[0]
        pos = 2
        values: list[bytes | None] = []
        for _ in range(count):
            length = struct.unpack_from("!i", self.body, pos)[0]
            pos += 4
            if length < 0:
                values.append(None)
                continue
            values.append(self.body[pos : pos + length])
            pos += length
        return values

    def int32(self, offset: int = 0) -> int:
        """A signed 32-bit integer of the body."""
        value: int = struct.unpack_from("!i", self.body, offset)[0]
        return value

    def __repr__(self) -> str:
        if self.type in "EN":
            return f"Msg({self.type!r}, {self.fields()!r})"
        return f"Msg({self.type!r}, {self.body[:80]!r})"


@dataclass(frozen=True)
class Outcome:
    """What a peer answered, made comparable between PostgreSQL and the pooler: messages
    as tuples (see :func:`comparable`), and whether the peer closed at the end or was
    still waiting for more after :data:`QUIET` seconds."""

    messages: tuple[tuple[object, ...], ...]
    end: Literal["closed", "open"]


# --- packets -------------------------------------------------------------------------


def startup_packet(
    params: Mapping[str, str] | Iterable[tuple[str, str]], major: int = 3, minor: int = 0
) -> bytes:
    """A startup message of protocol ``major.minor`` carrying ``params`` in order."""
    items = params.items() if isinstance(params, Mapping) else params
    body = b"".join(m.cstring(k) + m.cstring(v) for k, v in items) + b"\0"
    payload = struct.pack("!HH", major, minor) + body
    return struct.pack("!I", len(payload) + 4) + payload


def ssl_request() -> bytes:
    """An SSLRequest packet."""
    return struct.pack("!II", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    """A GSSENCRequest packet."""
    return struct.pack("!II", 8, GSSENC_REQUEST_CODE)


def message(msg_type: str, body: bytes = b"") -> bytes:
    """A frontend message of type ``msg_type``."""
    return frame(ord(msg_type), body)


def header(msg_type: str, length: int) -> bytes:
    """Only the header of a message, with whatever length field the test wants."""
    return msg_type.encode("latin-1") + struct.pack("!I", length)


def parse(statement: str, sql: str, param_types: Iterable[int] = ()) -> bytes:
    """A Parse message."""
    types = list(param_types)
    body = m.cstring(statement) + m.cstring(sql) + struct.pack("!h", len(types))
    return message("P", body + b"".join(struct.pack("!I", t) for t in types))


def bind(portal: str = "", statement: str = "") -> bytes:
    """A Bind message without parameters, all results in text."""
    return message("B", m.cstring(portal) + m.cstring(statement) + struct.pack("!hhh", 0, 0, 0))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    """An Execute message."""
    return message("E", m.cstring(portal) + struct.pack("!i", max_rows))


def sync() -> bytes:
    """A Sync message."""
    return message("S")


def flush() -> bytes:
    """A Flush message."""
    return message("H")


def copy_data(data: bytes) -> bytes:
    """A CopyData message."""
    return message("d", data)


def copy_done() -> bytes:
    """A CopyDone message."""
    return message("c")


def function_call(oid: int, args: Iterable[bytes | None], binary: bool = True) -> bytes:
    """A FunctionCall of function ``oid`` with ``args`` (all binary or all text)."""
    values = list(args)
    fmt = 1 if binary else 0
    body = struct.pack("!Ihhh", oid, 1, fmt, len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return message("F", body + struct.pack("!h", fmt))


# --- the connection --------------------------------------------------------------------


class Wire:
    """A client socket speaking the protocol byte by byte."""

    def __init__(self, address: Address, timeout: float = TIMEOUT) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.timeout = timeout
        self._buf = bytearray()
        #: BackendKeyData (pid, key) once a login saw it.
        self.backend_key: tuple[int, int] | None = None

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket (no Terminate)."""
        self.sock.close()

    def send(self, data: bytes) -> None:
        """Send ``data`` as it is."""
        self.sock.sendall(data)

    def _fill(self, n: int, timeout: float | None = None) -> None:
        """Receive until ``n`` bytes are buffered; Closed at EOF, TimeoutError when the
        peer stays silent for ``timeout`` seconds."""
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        while len(self._buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed("connection reset") from exc
            except TimeoutError as exc:
                raise TimeoutError(f"no answer within {self.sock.gettimeout()} s") from exc
            if not chunk:
                raise Closed("end of stream")
            self._buf += chunk

    def read_bytes(self, n: int, timeout: float | None = None) -> bytes:
        """Exactly ``n`` bytes (for the one-byte answer to SSLRequest and GSSENCRequest)."""
        self._fill(n, timeout)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def read_message(self, timeout: float | None = None) -> Msg:
        """The next message. Bytes that cannot be protocol 3 framing (a version 2 error,
        say) come back whole, up to the end of the stream, as a message of type "raw"."""
        self._fill(5, timeout)
        length = struct.unpack_from("!i", self._buf, 1)[0]
        if not 4 <= length <= _SANE_LENGTH:
            return Msg("raw", self._read_to_end(timeout))
        self._fill(1 + length, timeout)
        msg = Msg(chr(self._buf[0]), bytes(self._buf[5 : 1 + length]))
        del self._buf[: 1 + length]
        return msg

    def _read_to_end(self, timeout: float | None) -> bytes:
        with contextlib.suppress(Closed, TimeoutError):
            while True:
                self._fill(len(self._buf) + 1, timeout)
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def read_until(self, *types: str) -> list[Msg]:
        """Messages up to and including the first of one of ``types`` (or an
        ErrorResponse of severity FATAL, after which nothing more comes)."""
        out: list[Msg] = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg.type in types or msg.type == "raw":
                return out
            if msg.type == "E" and msg.fields().get("V") in ("FATAL", "PANIC"):
                return out

    def read_rest(self, quiet: float = QUIET) -> tuple[list[Msg], Literal["closed", "open"]]:
        """Every message until the peer closes, or until it has been silent for
        ``quiet`` seconds (then the connection counts as still open)."""
        out: list[Msg] = []
        deadline = time.monotonic() + max(self.timeout, quiet) * 4
        while time.monotonic() < deadline:
            try:
                out.append(self.read_message(timeout=quiet))
            except Closed:
                return out, "closed"
            except TimeoutError:
                return out, "open"
        raise TimeoutError("the peer kept talking")

    def outcome(self, quiet: float = QUIET) -> Outcome:
        """:meth:`read_rest`, comparable."""
        msgs, end = self.read_rest(quiet)
        return Outcome(tuple(comparable(msg) for msg in msgs), end)

    def is_closed(self, timeout: float = TIMEOUT) -> bool:
        """True if the peer closes within ``timeout`` s with nothing more to say
        (unread messages are skipped)."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.read_message(timeout=max(deadline - time.monotonic(), 0.01))
        except Closed:
            return True
        except TimeoutError:
            return False
        return False

    # --- conversations ---------------------------------------------------------------

    def query(self, sql: str) -> list[Msg]:
        """Run ``sql`` with the simple protocol; the answer up to ReadyForQuery."""
        self.send(m.query(sql))
        return self.read_until("Z")

    def login(
        self,
        user: str = "app",
        password: str = "app",
        database: str | None = "app",
        *,
        extra: Iterable[tuple[str, str]] = (),
        major: int = 3,
        minor: int = 0,
    ) -> list[Msg]:
        """Send a startup packet and answer SCRAM (or cleartext/no) authentication;
        every message up to ReadyForQuery or an ErrorResponse, which ends the login."""
        params = [("user", user)]
        if database is not None:
            params.append(("database", database))
        params.extend(extra)
        self.send(startup_packet(params, major, minor))
        return self.authenticate(user, password)

    def authenticate(self, user: str, password: str) -> list[Msg]:
        """Answer authentication requests after a startup packet was sent (see login)."""
        seen: list[Msg] = []
        scram: ScramClient | None = None
        while True:
            msg = self.read_message()
            seen.append(msg)
            if msg.type in ("Z", "E", "raw"):
                return seen
            if msg.type == "K":
                self.backend_key = (msg.int32(0), msg.int32(4))
            if msg.type != "R":
                continue
            code, data = msg.int32(), msg.body[4:]
            if code == m.AUTH_SASL:
                scram = ScramClient(user, password)
                mechanisms = [x.decode() for x in data.split(b"\0") if x]
                self.send(m.sasl_initial_response(*scram.client_first(mechanisms)))
            elif code == m.AUTH_SASL_CONTINUE and scram is not None:
                self.send(m.password_message(scram.handle_server_first(data)))
            elif code == m.AUTH_SASL_FINAL and scram is not None:
                scram.handle_server_final(data)
            elif code == m.AUTH_CLEARTEXT:
                self.send(m.password_message(m.cstring(password)))
            elif code != m.AUTH_OK:
                raise AssertionError(f"unexpected authentication request {code}")


def connect(
    address: Address, user: str = "app", password: str = "app", database: str = "app"
) -> Wire:
    """A Wire logged in and ready for a query; AssertionError if the login fails."""
    wire = Wire(address)
    try:
        seen = wire.login(user, password, database)
    except BaseException:
        wire.close()
        raise
    if seen[-1].type != "Z":
        wire.close()
        raise AssertionError(f"login as {user!r} failed: {seen[-1]!r}")
    return wire


@dataclass
class ScramFirst:
    """The server-first-message of a SCRAM exchange, taken apart."""

    salt: str
    iterations: int
    raw: bytes = field(repr=False)


def scram_server_first(address: Address, user: str) -> ScramFirst:
    """Start a SCRAM login as ``user`` and stop after AuthenticationSASLContinue."""
    with Wire(address) as wire:
        wire.send(startup_packet({"user": user, "database": "app"}))
        msg = wire.read_message()
        assert (msg.type, msg.int32()) == ("R", m.AUTH_SASL), msg
        scram = ScramClient(user, "whatever")
        wire.send(m.sasl_initial_response(*scram.client_first()))
        msg = wire.read_message()
        assert (msg.type, msg.int32()) == ("R", m.AUTH_SASL_CONTINUE), msg
        attrs = dict(part.split(b"=", 1) for part in msg.body[4:].split(b","))
        return ScramFirst(attrs[b"s"].decode(), int(attrs[b"i"]), msg.body[4:])


# --- comparing with PostgreSQL ---------------------------------------------------------

#: ErrorResponse fields that say where in PostgreSQL's source the error was raised.
SOURCE_FIELDS = frozenset("FLR")


def comparable(msg: Msg) -> tuple[object, ...]:
    """What of a message must be equal between PostgreSQL and the pooler: everything,
    except the source location of errors, the nonces and salts of authentication, and
    the pid and key of BackendKeyData."""
    if msg.type in ("E", "N"):
        return (msg.type, *((k, v) for k, v in msg.fields().items() if k not in SOURCE_FIELDS))
    if msg.type == "R":
        code = msg.int32()
        if code == m.AUTH_SASL:
            return ("R", code, msg.body[4:])
        return ("R", code)
    if msg.type == "K":
        return ("K",)
    return (msg.type, msg.body)


Script = Callable[[Wire], None]


def answers(script: Script, *addresses: Address, quiet: float = QUIET) -> list[Outcome]:
    """Run ``script`` against each address on a fresh connection, then collect the
    rest of what each peer says (see :meth:`Wire.outcome`)."""
    results = []
    for address in addresses:
        with Wire(address) as wire:
            with contextlib.suppress(Closed, BrokenPipeError, ConnectionResetError):
                script(wire)
            results.append(wire.outcome(quiet))
    return results
