"""Run a :class:`pipelines.Case` against PostgreSQL and against the pooler, and compare.

For each peer the client logs in on a fresh connection, sends the case's bytes as its
chunking plan says, and reads what comes back:

* ``leave_after`` None: everything. If the connection is still open after the pipeline,
  a sentinel batch ``Sync, Query(s-1), Sync, Query(s-2), Sync, Query(ROLLBACK; s-3)``
  follows, and the client reads up to the ReadyForQuery after the DataRow of ``s-3`` (a
  COPY IN left open eats the first Query as a protocol error; an error in an extended
  batch makes the server skip up to a Sync; an aborted transaction refuses SELECTs up to
  the ROLLBACK); or up to the close. No waiting for silence.
* ``leave_after`` k: up to the k-th ReadyForQuery, then the socket is closed with the
  rest still in flight. What the pooler sent must be PostgreSQL's answer up to there.

Then, on the pooler only, the *next client*: with pool.size 1 it gets the server the
first one used (or a fresh one, if the pooler chose to close that), and two queries of
its own must be answered exactly, with nothing before, between or in them that it did
not ask for.

Every read has a timeout; a peer that stays silent ends the stream as ``timeout``.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pipelines import (
    SETUP_SQL,
    TERMINAL,
    Bind,
    Case,
    Execute,
    Parse,
    Sync,
    case_snippet,
    case_to_json,
)
from wire import Address, Closed, Msg, Wire, comparable, connect

from pooler.protocol import messages as m

#: Seconds one read may wait before the stream counts as ``timeout``.
READ_TIMEOUT = 5.0
#: Seconds a whole conversation may take before it counts as ``timeout``.
CONVERSATION_TIMEOUT = 20.0
#: How many sentinel queries follow an open pipeline (see the module docstring).
SENTINELS = 3

#: Seconds the next client waits for its login; more than NEXT_CLIENT_SLOW is a failure
#: too (a pooler waiting out a reset that cannot finish, say), reported as "slow".
NEXT_CLIENT_LOGIN_TIMEOUT = 15.0
NEXT_CLIENT_SLOW = 4.0

#: Log lines that mean the pooler hit something it did not expect.
BAD_LOG_WORDS = ("Traceback", "Fatal error", '"level": "error"', '"level": "critical"')

End = Literal["closed", "open", "timeout", "login-failed", "slow"]
Item = tuple[object, ...]

_tokens = itertools.count(1)


def new_token() -> str:
    """A token unique in this process (its clock part keeps runs apart)."""
    return f"{int(time.time() * 1000) % 10**9}-{next(_tokens)}"


@dataclass
class Stream:
    """What one peer answered: comparable messages and how the stream ended."""

    messages: list[Item]
    end: End
    #: Free text for humans (why the stream ended).
    note: str = ""

    def key(self) -> tuple[tuple[Item, ...], str]:
        """What must be equal between PostgreSQL and the pooler."""
        return tuple(self.messages), self.end

    def to_json(self) -> dict[str, Any]:
        return {"messages": [render(x) for x in self.messages], "end": self.end, "note": self.note}


@dataclass
class Difference:
    """One way the pooler answered otherwise than PostgreSQL (or hurt the next client)."""

    check: Literal["stream", "prefix", "next-client"]
    signature: str
    detail: str


@dataclass
class CaseResult:
    """A case run against PostgreSQL and one pooler."""

    case: Case
    postgres: Stream
    pooler: Stream
    next_client: Stream | None
    differences: list[Difference] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "case": case_to_json(self.case),
            "differences": [d.__dict__ for d in self.differences],
            "postgres": self.postgres.to_json(),
            "pooler": self.pooler.to_json(),
            "next_client": None if self.next_client is None else self.next_client.to_json(),
        }

    def report(self) -> str:
        """A human-readable account, with the case as a Python snippet."""
        lines = [case_snippet(self.case)]
        for diff in self.differences:
            lines.append(f"-- {diff.check}: {diff.signature}\n{diff.detail}")
        return "\n".join(lines)


class HarnessError(AssertionError):
    """PostgreSQL itself did not answer as the harness expects: a bug in the harness or
    in a generated case, not in the pooler."""


# --- comparing -------------------------------------------------------------------------


def comparable_msg(msg: Msg, own_pid: int | None) -> Item:
    """:func:`wire.comparable`, with a NotificationResponse's pid reduced to whether it
    is the receiver's own BackendKeyData pid."""
    if msg.type == "A" and len(msg.body) >= 4:
        pid, rest = m.parse_notification(msg.body)
        return ("A", "own-pid" if pid == own_pid else "other-pid", rest)
    return comparable(msg)


def render(item: Item) -> str:
    """One comparable message, short: ``D ['1']``, ``E ERROR 22012 division by zero``."""
    kind = str(item[0])
    if kind in ("E", "N"):
        fields: dict[object, object] = dict(x for x in item[1:] if isinstance(x, tuple))
        return f"{kind} {fields.get('S', '')} {fields.get('C', '')} {fields.get('M', '')}"
    body = item[1] if len(item) > 1 else b""
    if not isinstance(body, bytes):
        return f"{kind} {item[1:]!r}"
    if kind == "D":
        return f"D {_data_row(body)}"
    if kind in ("C", "Z", "d", "S"):
        text = body.rstrip(b"\0").decode("latin-1")
        return f"{kind} {text!r}"
    if not body:
        return kind
    return f"{kind} {body[:40]!r}"


def _data_row(body: bytes) -> str:
    try:
        (count,) = struct.unpack_from("!h", body)
        values: list[str | None] = []
        offset = 2
        for _ in range(count):
            (size,) = struct.unpack_from("!i", body, offset)
            offset += 4
            if size < 0:
                values.append(None)
                continue
            value = body[offset : offset + size]
            offset += size
            text = value.decode("latin-1")
            values.append(text if len(text) <= 20 else f"{text[:12]}...({len(text)})")
        return repr(values)
    except struct.error:
        return repr(body[:40])


def render_stream(stream: Stream, limit: int = 60) -> str:
    lines = [f"  {i:3} {render(x)}" for i, x in enumerate(stream.messages[:limit])]
    if len(stream.messages) > limit:
        lines.append(f"  ... {len(stream.messages) - limit} more")
    lines.append(f"  end: {stream.end} {stream.note}".rstrip())
    return "\n".join(lines)


def _shape(item: Item | None, end: str) -> str:
    """A message reduced to what a signature shows (type, and SQLSTATE or tag)."""
    if item is None:
        return f"<{end}>"
    text = render(item)
    if item[0] in ("E", "N"):
        return " ".join(text.split()[:3])
    if item[0] in ("C", "Z"):
        return text
    return str(item[0])


def first_divergence(pg: Stream, ours: Stream) -> tuple[int, str]:
    """Where two streams part, and a short signature of how."""
    for i, (a, b) in enumerate(zip(pg.messages, ours.messages, strict=False)):
        if a != b:
            return i, f"#{i}: postgres {_shape(a, pg.end)} / pooler {_shape(b, ours.end)}"
    i = min(len(pg.messages), len(ours.messages))
    theirs = pg.messages[i] if i < len(pg.messages) else None
    mine = ours.messages[i] if i < len(ours.messages) else None
    return i, f"#{i}: postgres {_shape(theirs, pg.end)} / pooler {_shape(mine, ours.end)}"


def _is_prefix(short: list[Item], long: list[Item]) -> bool:
    return len(short) <= len(long) and long[: len(short)] == short


def _error_text(item: Item) -> str:
    """An ErrorResponse as severity, SQLSTATE and message, numbers blotted out."""
    fields = {k: v for k, v in (x for x in item[1:] if isinstance(x, tuple))}
    text = re.sub(r"\b(0x[0-9A-Fa-f]+|\d+)\b", "N", str(fields.get("M", "")))
    return f"{fields.get('V', '')} {fields.get('C', '')} {text}"


def _signature(pg: Stream, ours: Stream, case: Case, full: Stream) -> str:
    """A short, case-independent name for how ``ours`` parts from ``pg`` (``full``:
    PostgreSQL's full stream, of which ``pg`` may be a prefix)."""
    terminal = next((type(s).__name__ for s in case.steps if isinstance(s, TERMINAL)), None)
    if terminal and full.end == ours.end == "closed":
        # The client ended the conversation (Terminate, broken framing) with answers
        # still owed: PostgreSQL answers them first, then closes.
        if _is_prefix(ours.messages, pg.messages):
            return f"at {terminal}: the pooler closes without the answers still in flight"
        last = ours.messages[-1]
        if last[0] == "E" and _is_prefix(ours.messages[:-1], pg.messages):
            if last in full.messages:
                return (
                    f"at {terminal}: the pooler sends {_error_text(last)} without the answers"
                    " still in flight before it"
                )
            theirs = " + ".join(_error_text(x) for x in full.messages[-2:] if x[0] == "E")
            return (
                f"at {terminal}: the pooler ends with {_error_text(last)}, postgres"
                f" with {theirs or _shape(full.messages[-1] if full.messages else None, 'closed')}"
            )
    i, _ = first_divergence(pg, ours)
    before = _shape(pg.messages[i - 1], pg.end) if i > 0 else "<login>"
    a = pg.messages[i] if i < len(pg.messages) else None
    b = ours.messages[i] if i < len(ours.messages) else None
    how = f" [case has {terminal}]" if terminal else ""
    return f"after {before}: postgres {_shape(a, pg.end)} / pooler {_shape(b, ours.end)}{how}"


def _compare_detail(pg: Stream, ours: Stream) -> str:
    _, where = first_divergence(pg, ours)
    return (
        f"first difference at message {where}\n"
        f"postgres:\n{render_stream(pg)}\npooler:\n{render_stream(ours)}"
    )


# --- talking ---------------------------------------------------------------------------


def prepare_database(address: Address) -> None:
    """Create the table the cases write to (idempotent)."""
    with connect(address, user="app", password="app", database="app") as wire:
        answer = wire.query(SETUP_SQL)
        if answer[-1].type != "Z" or any(msg.type == "E" for msg in answer):
            raise HarnessError(f"setting up fuzz_t failed: {answer!r}")


def _open(address: Address, login_timeout: float = READ_TIMEOUT) -> Wire:
    """A logged-in connection (AssertionError if the login fails, TimeoutError if it
    takes longer than ``login_timeout``), writing without delay."""
    wire = Wire(address, timeout=login_timeout)
    try:
        seen = wire.login()
        if seen[-1].type != "Z":
            raise AssertionError(f"login failed: {seen[-1]!r}")
    except BaseException:
        wire.close()
        raise
    wire.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    wire.timeout = READ_TIMEOUT
    return wire


def _send_all(wire: Wire, case: Case) -> str:
    """Send the case's writes; "" or why sending stopped (the peer closed, or stopped
    reading for :data:`READ_TIMEOUT` seconds)."""
    pause = case.chunking.pause
    for i, chunk in enumerate(case.writes()):
        if i and pause:
            time.sleep(pause)
        try:
            wire.send(chunk)
        except OSError as exc:
            return f"send stopped at write {i}: {type(exc).__name__}"
    return ""


def _sentinel_batch(token: str) -> tuple[bytes, bytes]:
    """The sentinel batch, and the DataRow that marks its last query's answer. The last
    query rolls back first: in an aborted transaction the others only get 25P02."""
    batch = b""
    for n in range(1, SENTINELS + 1):
        rollback = "ROLLBACK; " if n == SENTINELS else ""
        batch += b"S\0\0\0\4" + m.query(f"{rollback}SELECT 'sentinel-{token}-{n}'")
    last = f"sentinel-{token}-{SENTINELS}".encode()
    return batch, struct.pack("!hi", 1, len(last)) + last


def _read(
    wire: Wire,
    own_pid: int | None,
    *,
    until_ready: int | None = None,
    until_row: bytes | None = None,
) -> Stream:
    """Read until the ``until_ready``-th ReadyForQuery, or the ReadyForQuery after the
    DataRow ``until_row``, or the close, or a timeout."""
    out: list[Item] = []
    if until_ready == 0:
        return Stream(out, "open", "left without reading")
    ready = 0
    row_seen = False
    deadline = time.monotonic() + CONVERSATION_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return Stream(out, "timeout", f"still talking after {CONVERSATION_TIMEOUT:.0f} s")
        try:
            msg = wire.read_message(timeout=min(READ_TIMEOUT, left))
        except Closed:
            return Stream(out, "closed")
        except TimeoutError:
            return Stream(out, "timeout", f"silent for {READ_TIMEOUT:.0f} s")
        except OSError as exc:
            return Stream(out, "closed", f"{type(exc).__name__}")
        out.append(comparable_msg(msg, own_pid))
        if msg.type == "raw":
            return Stream(out, "closed", "bytes that are not protocol 3")
        if msg.type == "D" and until_row is not None and msg.body == until_row:
            row_seen = True
        if msg.type == "Z":
            ready += 1
            if until_ready is not None and ready >= until_ready:
                return Stream(out, "open")
            if row_seen:
                return Stream(out, "open")


def converse(address: Address, case: Case, token: str, leave_after: int | None) -> Stream:
    """Log in at ``address``, send ``case``, read as described in the module docstring;
    the socket is closed when this returns."""
    try:
        wire = _open(address)
    except (AssertionError, OSError, Closed) as exc:
        return Stream([], "login-failed", str(exc)[:200])
    with wire:
        own_pid = wire.backend_key[0] if wire.backend_key else None
        note = _send_all(wire, case)
        if leave_after is not None:
            stream = _read(wire, own_pid, until_ready=leave_after)
        else:
            batch, last_row = _sentinel_batch(token)
            # The peer may have closed already: then this fails, or vanishes unread.
            with contextlib.suppress(OSError):
                wire.send(batch)
            stream = _read(wire, own_pid, until_row=last_row)
        if note:
            stream.note = f"{stream.note}; {note}".strip("; ")
        return stream


def next_client(address: Address, token: str) -> Stream:
    """A client right after the case's: two queries of its own, each read to its
    ReadyForQuery. Stream "open" with the exact answers when all is well; "slow" when
    the login took longer than :data:`NEXT_CLIENT_SLOW` seconds."""
    wire = _open_next(address)
    if isinstance(wire, Stream):
        return wire
    with wire:
        return own_queries(wire, token)


def _open_next(address: Address) -> Wire | Stream:
    started = time.monotonic()
    try:
        wire = _open(address, login_timeout=NEXT_CLIENT_LOGIN_TIMEOUT)
    except (AssertionError, OSError, Closed) as exc:
        took = time.monotonic() - started
        return Stream([], "login-failed", f"{str(exc)[:200]} after {took:.1f} s")
    waited = time.monotonic() - started
    if waited > NEXT_CLIENT_SLOW:
        wire.close()
        return Stream([], "slow", f"the login took {waited:.1f} s")
    return wire


def own_queries(wire: Wire, token: str) -> Stream:
    """Run the next client's two queries on ``wire`` (see :func:`expected_next_client`),
    then send Terminate."""
    own_pid = wire.backend_key[0] if wire.backend_key else None
    out: list[Item] = []
    # A statement name the cases use: a leaked prepared statement answers 42P05.
    second = f"next2-{token}"
    requests = [
        m.query(f"SELECT 'next-{token}'"),
        b"".join(
            step.encode()
            for step in (Parse("s1", f"SELECT '{second}'"), Bind("", "s1"), Execute(), Sync())
        ),
    ]
    for request in requests:
        try:
            wire.send(request)
        except OSError as exc:
            return Stream(out, "closed", f"send: {type(exc).__name__}")
        part = _read(wire, own_pid, until_ready=1)
        out.extend(part.messages)
        if part.end != "open":
            part.messages = out
            return part
    with contextlib.suppress(OSError):
        wire.send(b"X\0\0\0\4")
    return Stream(out, "open")


def probe_every_server(address: Address, count: int) -> list[tuple[str, Stream]]:
    """``count`` clients at once (so with pool.size ``count``, each on its own server),
    each running the next client's queries; (token, stream) for every one that did not
    get exactly its own answers."""
    wires: list[tuple[str, Wire | Stream]] = [
        (new_token(), _open_next(address)) for _ in range(count)
    ]
    bad: list[tuple[str, Stream]] = []
    for token, wire in wires:
        if isinstance(wire, Stream):
            bad.append((token, wire))
            continue
        with wire:
            stream = own_queries(wire, token)
        if stream.end != "open" or stream.messages != expected_next_client(token):
            bad.append((token, stream))
    return bad


def expected_next_client(token: str) -> list[Item]:
    """What the next client must see: its two answers and nothing else."""
    first = f"next-{token}".encode()
    second = f"next2-{token}".encode()

    def row_description() -> bytes:
        # One text column "?column?": table 0, column 0, type text (25), size -1, mod -1.
        return struct.pack("!h", 1) + b"?column?\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)

    return [
        ("T", row_description()),
        ("D", struct.pack("!hi", 1, len(first)) + first),
        ("C", b"SELECT 1\0"),
        ("Z", b"I"),
        ("1", b""),
        ("2", b""),
        ("D", struct.pack("!hi", 1, len(second)) + second),
        ("C", b"SELECT 1\0"),
        ("Z", b"I"),
    ]


# --- a case, end to end --------------------------------------------------------------------


def ready_count(stream: Stream) -> int:
    return sum(1 for x in stream.messages if x[0] == "Z")


def pipeline_ready_bound(pg: Stream) -> int:
    """How many ReadyForQuery of PostgreSQL's full stream surely answer the pipeline,
    not the sentinel batch (which gets at least ``SENTINELS + 1`` of its own when the
    connection stayed open, and at most ``2 * SENTINELS``)."""
    total = ready_count(pg)
    if pg.end == "closed":
        return total
    return max(0, total - 2 * SENTINELS)


def prefix_upto_ready(stream: Stream, k: int) -> list[Item]:
    """The messages of ``stream`` up to and including its k-th ReadyForQuery."""
    if k == 0:
        return []
    seen = 0
    for i, item in enumerate(stream.messages):
        if item[0] == "Z":
            seen += 1
            if seen == k:
                return stream.messages[: i + 1]
    return list(stream.messages)


def run_on_postgres(address: Address, case: Case, token: str) -> Stream:
    """The reference: the case's full answer from PostgreSQL (``token`` marks its
    sentinels; the pooler's run must get the same)."""
    pg = converse(address, case, token, None)
    if pg.end in ("timeout", "login-failed"):
        raise HarnessError(
            f"PostgreSQL's stream ended as {pg.end} ({pg.note}): the harness or the case is"
            f" wrong\n{case_snippet(case)}\n{render_stream(pg)}"
        )
    return pg


#: Signature prefix of the one difference that is PostgreSQL's and the kernel's, not the
#: pooler's: PostgreSQL ends the connection with an ERROR and a FATAL while the pooler
#: is still relaying client bytes to it (a client writing byte by byte, or the
#: harness's next sentinel). PostgreSQL closes its socket with those bytes unread, so
#: the kernel resets the connection and drops what PostgreSQL had not yet sent: its
#: last messages up to the FATAL never reach the pooler, which relays everything
#: before them, in order, and closes. A client talking to PostgreSQL directly
#: can lose them the same way; through the pooler the window is wider by one hop.
RESET_OVERTOOK = "reset overtook the FATAL"


def _reset_overtook_the_fatal(pg: Stream, ours: Stream) -> bool:
    lost = pg.messages[len(ours.messages) :]
    return (
        pg.end == ours.end == "closed"
        and ours.messages == pg.messages[: len(ours.messages)]
        and bool(lost)
        and lost[-1][0] == "E"
        and ("S", "FATAL") in lost[-1]
    )


def run_case(
    postgres: Address,
    pooler: Address,
    case: Case,
    *,
    reference: tuple[Stream, str] | None = None,
    check_next_client: bool = True,
) -> CaseResult:
    """Run ``case`` on PostgreSQL (unless ``reference`` gives its stream and sentinel
    token) and on the pooler; the differences found."""
    if reference is None:
        token = new_token()
        reference = run_on_postgres(postgres, case, token), token
    pg, token = reference
    differences: list[Difference] = []
    if case.leave_after is None:
        ours = converse(pooler, case, token, None)
        if ours.key() != pg.key() or ours.end != pg.end:
            signature = _signature(pg, ours, case, pg)
            if _reset_overtook_the_fatal(pg, ours):
                signature = f"{RESET_OVERTOOK}: {signature}"
            differences.append(Difference("stream", signature, _compare_detail(pg, ours)))
    else:
        k = min(case.leave_after, pipeline_ready_bound(pg))
        ours = converse(pooler, case, token, k)
        # Up to the k-th ReadyForQuery, and the connection still open: k is at most
        # what the pipeline alone gets from PostgreSQL.
        want = Stream(prefix_upto_ready(pg, k), "open")
        if ours.key() != want.key():
            differences.append(
                Difference(
                    "prefix",
                    "leaving early: " + _signature(want, ours, case, pg),
                    f"the client left after ReadyForQuery #{k}\n" + _compare_detail(want, ours),
                )
            )
    after: Stream | None = None
    if check_next_client:
        next_token = new_token()
        after = next_client(pooler, next_token)
        expected = expected_next_client(next_token)
        if after.messages != expected or after.end != "open":
            shown = Stream(expected, "open")
            _, where = first_divergence(shown, after)
            foreign = [render(x) for x in after.messages if x not in expected]
            got = " ".join(_shape(x, after.end) for x in after.messages[:12])
            signature = f"next client got: {got} <{after.end}>".replace(":  <", ": <")
            differences.append(
                Difference(
                    "next-client",
                    signature,
                    f"the next client got {where}; foreign messages: {foreign}\n"
                    f"expected:\n{render_stream(shown)}\ngot:\n{render_stream(after)}",
                )
            )
    return CaseResult(case, pg, ours, after, differences)
