"""Client pipelines for differential tests of the wire protocol.

A :class:`Case` is what one client sends after its login: a list of steps (one small
dataclass per frontend message, framing errors included), how the bytes are cut into
writes (:class:`Chunking`), and whether the client leaves early (``leave_after``: close
the socket after that many ReadyForQuery, with the rest of its answers still in flight).
Cases are plain data: :func:`case_to_json` and :func:`case_from_json` round-trip them, so
a difference found once can be replayed (``scripts/fuzz --replay FILE``).

:func:`cases` is the hypothesis strategy. Every statement it generates answers the same
whatever the database holds and whoever ran before: the table ``fuzz_t`` (see
:data:`SETUP_SQL`) is written to, never read.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from hypothesis import strategies as st

from pooler.protocol import messages as m

#: Run once per database before any case (idempotent).
SETUP_SQL = "CREATE TABLE IF NOT EXISTS fuzz_t (a int, b text)"
#: The oid of ``abs(int4)`` (int4abs), fixed in PostgreSQL's catalog.
ABS_INT4_OID = 1397


def _message(msg_type: str, body: bytes = b"") -> bytes:
    return msg_type.encode("latin-1") + struct.pack("!I", len(body) + 4) + body


# --- steps: one per frontend message -----------------------------------------------------


@dataclass(frozen=True)
class Query:
    """A simple-protocol Query."""

    sql: str

    def encode(self) -> bytes:
        return m.query(self.sql)


@dataclass(frozen=True)
class Parse:
    """Parse ``sql`` into the prepared statement ``name`` ("" is the unnamed one)."""

    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def encode(self) -> bytes:
        body = m.cstring(self.name) + m.cstring(self.sql) + struct.pack("!h", len(self.param_types))
        return _message("P", body + b"".join(struct.pack("!I", t) for t in self.param_types))


@dataclass(frozen=True)
class Bind:
    """Bind ``params`` (text format; None is NULL) to ``statement`` as ``portal``;
    results in text, or all in binary with ``binary``."""

    portal: str = ""
    statement: str = ""
    params: tuple[str | None, ...] = ()
    binary: bool = False

    def encode(self) -> bytes:
        body = m.cstring(self.portal) + m.cstring(self.statement)
        body += struct.pack("!hh", 0, len(self.params))
        for value in self.params:
            if value is None:
                body += struct.pack("!i", -1)
            else:
                raw = value.encode()
                body += struct.pack("!i", len(raw)) + raw
        body += struct.pack("!hh", 1, 1) if self.binary else struct.pack("!h", 0)
        return _message("B", body)


@dataclass(frozen=True)
class Describe:
    """Describe a statement (``target`` "S") or a portal ("P")."""

    target: Literal["S", "P"]
    name: str = ""

    def encode(self) -> bytes:
        return _message("D", self.target.encode() + m.cstring(self.name))


@dataclass(frozen=True)
class Execute:
    """Execute ``portal``, at most ``max_rows`` rows (0: all)."""

    portal: str = ""
    max_rows: int = 0

    def encode(self) -> bytes:
        return _message("E", m.cstring(self.portal) + struct.pack("!i", self.max_rows))


@dataclass(frozen=True)
class Close:
    """Close a statement (``target`` "S") or a portal ("P")."""

    target: Literal["S", "P"]
    name: str = ""

    def encode(self) -> bytes:
        return _message("C", self.target.encode() + m.cstring(self.name))


@dataclass(frozen=True)
class Sync:
    def encode(self) -> bytes:
        return _message("S")


@dataclass(frozen=True)
class Flush:
    def encode(self) -> bytes:
        return _message("H")


@dataclass(frozen=True)
class CopyData:
    """CopyData carrying ``data`` (UTF-8)."""

    data: str

    def encode(self) -> bytes:
        return _message("d", self.data.encode())


@dataclass(frozen=True)
class CopyDone:
    def encode(self) -> bytes:
        return _message("c")


@dataclass(frozen=True)
class CopyFail:
    message: str = "fuzz says no"

    def encode(self) -> bytes:
        return _message("f", m.cstring(self.message))


@dataclass(frozen=True)
class FunctionCall:
    """A FunctionCall of ``oid`` with int4 arguments in binary, result in binary."""

    oid: int
    args: tuple[int, ...] = ()

    def encode(self) -> bytes:
        body = struct.pack("!Ihhh", self.oid, 1, 1, len(self.args))
        for arg in self.args:
            body += struct.pack("!ii", 4, arg)
        return _message("F", body + struct.pack("!h", 1))


@dataclass(frozen=True)
class Terminate:
    def encode(self) -> bytes:
        return _message("X")


@dataclass(frozen=True)
class UnknownType:
    """A message of a type no frontend message has (PostgreSQL: FATAL 08P01 on the type
    byte alone); ``body`` None sends the type byte only."""

    type_byte: int
    body: str | None = ""

    def encode(self) -> bytes:
        if self.body is None:
            return bytes([self.type_byte])
        return bytes([self.type_byte]) + struct.pack("!I", len(self.body) + 4) + self.body.encode()


@dataclass(frozen=True)
class ShortLength:
    """Only a header, of type ``msg_type``, whose length field is below 4."""

    msg_type: str
    length: int

    def encode(self) -> bytes:
        return self.msg_type.encode("latin-1") + struct.pack("!I", self.length)


@dataclass(frozen=True)
class HugeCopyData:
    """A CopyData header announcing 0x7fffffff bytes, then ``tail`` bytes of it."""

    tail: int = 3

    def encode(self) -> bytes:
        return b"d" + struct.pack("!I", 0x7FFFFFFF) + b"x" * self.tail


Step = (
    Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | Terminate
    | UnknownType
    | ShortLength
    | HugeCopyData
)

STEP_TYPES: dict[str, type[Step]] = {
    cls.__name__: cls
    for cls in (
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Close,
        Sync,
        Flush,
        CopyData,
        CopyDone,
        CopyFail,
        FunctionCall,
        Terminate,
        UnknownType,
        ShortLength,
        HugeCopyData,
    )
}

#: Steps after which PostgreSQL reads nothing more from the client.
TERMINAL = (Terminate, UnknownType, ShortLength, HugeCopyData)


# --- chunking and cases ----------------------------------------------------------------


@dataclass(frozen=True)
class Chunking:
    """How the pipeline's bytes are cut into writes: ``whole`` (one write), ``bytes``
    (one byte per write) or ``cuts`` (a write ends at each offset in ``cuts``), with
    ``pause`` seconds between writes."""

    mode: Literal["whole", "bytes", "cuts"] = "whole"
    cuts: tuple[int, ...] = ()
    pause: float = 0.0

    def split(self, data: bytes) -> list[bytes]:
        """``data`` cut into the writes this plan makes."""
        if self.mode == "bytes":
            return [data[i : i + 1] for i in range(len(data))]
        if self.mode == "cuts":
            points = sorted({c for c in self.cuts if 0 < c < len(data)})
            edges = [0, *points, len(data)]
            return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]
        return [data] if data else []


@dataclass(frozen=True)
class Case:
    """One client's pipeline after login.

    ``leave_after``: None, the client reads every answer (a sentinel query marks the
    end); a number k, it closes its socket right after the k-th ReadyForQuery (0: right
    after sending), leaving the rest of the answers in flight.
    """

    steps: tuple[Step, ...]
    chunking: Chunking = field(default_factory=Chunking)
    leave_after: int | None = None

    def payload(self) -> bytes:
        """Every step's bytes, in order."""
        return b"".join(step.encode() for step in self.steps)

    def writes(self) -> list[bytes]:
        """The payload as the writes the chunking plan makes."""
        return self.chunking.split(self.payload())


def step_to_json(step: Step) -> list[Any]:
    """``[type name, {field: value}]``."""
    return [type(step).__name__, asdict(step)]


def step_from_json(data: Sequence[Any]) -> Step:
    """Inverse of :func:`step_to_json`."""
    name, values = data
    cls = STEP_TYPES[name]
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.name in values:
            value = values[f.name]
            kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def case_to_json(case: Case) -> dict[str, Any]:
    """A JSON-serialisable form of ``case``."""
    return {
        "steps": [step_to_json(s) for s in case.steps],
        "chunking": {
            "mode": case.chunking.mode,
            "cuts": list(case.chunking.cuts),
            "pause": case.chunking.pause,
        },
        "leave_after": case.leave_after,
    }


def case_from_json(data: dict[str, Any]) -> Case:
    """Inverse of :func:`case_to_json`."""
    chunking = data.get("chunking") or {}
    return Case(
        steps=tuple(step_from_json(s) for s in data["steps"]),
        chunking=Chunking(
            mode=chunking.get("mode", "whole"),
            cuts=tuple(chunking.get("cuts", ())),
            pause=float(chunking.get("pause", 0.0)),
        ),
        leave_after=data.get("leave_after"),
    )


def case_dumps(case: Case) -> str:
    """``case`` as one line of JSON."""
    return json.dumps(case_to_json(case))


def case_snippet(case: Case) -> str:
    """``case`` as Python source (the step classes' reprs), for reports."""
    steps = ",\n    ".join(repr(s) for s in case.steps)
    return (
        f"Case(steps=(\n    {steps},\n), chunking={case.chunking!r},"
        f" leave_after={case.leave_after!r})"
    )


# --- strategies ----------------------------------------------------------------------------

#: Simple-protocol statements whose answers never depend on the table's contents.
SIMPLE_SQL = (
    "SELECT 1",
    "SELECT 'x' AS a, 2 AS b",
    "SELECT generate_series(1, 3)",
    "SELECT NULL",
    "SELECT repeat('x', 10000)",
    "SELECT 1/0",
    "SELEC 1",
    "SELECT $1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT sp",
    "ROLLBACK TO SAVEPOINT sp",
    "INSERT INTO fuzz_t VALUES (1, 'one')",
    "SELECT 1; SELECT 2",
    "BEGIN; SELECT 1/0; COMMIT",
    "INSERT INTO fuzz_t VALUES (2, 'two'); SELECT 3",
    "SELECT 4; SELECT 1/0; SELECT 5",
    "",
    ";",
    "SET application_name = 'fuzz'",
    "SHOW application_name",
    "RESET application_name",
    "DO $$BEGIN RAISE NOTICE 'fuzz notice'; END$$",
    "COPY (SELECT 1, 'x') TO STDOUT",
    "COPY (SELECT generate_series(1, 3)) TO STDOUT",
)

#: Statements for Parse, with the parameters a Bind of them may carry.
EXTENDED_SQL: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("SELECT 1", ()),
    ("SELECT 'x' AS a, 2 AS b", ()),
    ("SELECT generate_series(1, 5)", ()),
    ("SELECT $1::int + 1", ()),
    ("SELECT $1", (23,)),
    ("SELECT 1/0", ()),
    ("SELEC 1", ()),
    ("SELECT pg_sleep(0.01)", ()),
    ("SELECT repeat('y', 9000)", ()),
    ("INSERT INTO fuzz_t VALUES ($1::int, 'p')", ()),
    ("BEGIN", ()),
    ("COMMIT", ()),
    ("", ()),
    ("SELECT 1; SELECT 2", ()),
    ("SHOW application_name", ()),
    ("COPY (SELECT generate_series(1, 3)) TO STDOUT", ()),
    ("COPY fuzz_t FROM STDIN", ()),
)

STATEMENT_NAMES = ("", "s1", "s2")
PORTAL_NAMES = ("", "p1")
PARAMS: tuple[tuple[str | None, ...], ...] = ((), ("41",), (None,), ("x",), ("1", "2"))
#: Statements still running when a client that leaves early closes its socket.
SLOW_SQL = ("SELECT pg_sleep(0.01)", "SELECT pg_sleep(0.03), 'late'")
COPY_IN_SQL = "COPY fuzz_t FROM STDIN"
#: Lines for COPY fuzz_t FROM STDIN: good ones, a bad int, a wrong column count, end mark.
COPY_LINES = ("1\tone\n", "2\t\\N\n", "x\tbad\n", "3\n", "\\.\n", "4\tfour")
#: Type bytes that are no frontend message (PostgreSQL accepts QFXBCDEHPSdcf after login).
UNKNOWN_TYPES = (ord("y"), ord("A"), ord("p"), ord("Z"), 0, 0xFF)

names = st.sampled_from(STATEMENT_NAMES)


def _steps(*strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[Step]:
    """``st.one_of``, typed as a strategy of steps."""
    return st.one_of(*strategies)


portals = st.sampled_from(PORTAL_NAMES)


def queries() -> st.SearchStrategy[Query]:
    """A simple Query; one in four sleeps a little."""
    simple = st.sampled_from(SIMPLE_SQL)
    return st.builds(Query, st.one_of(simple, simple, simple, st.sampled_from(SLOW_SQL)))


def parses() -> st.SearchStrategy[Parse]:
    return st.builds(
        lambda name, pair: Parse(name, pair[0], pair[1]), names, st.sampled_from(EXTENDED_SQL)
    )


def binds() -> st.SearchStrategy[Bind]:
    return st.builds(Bind, portals, names, st.sampled_from(PARAMS), st.booleans())


def describes() -> st.SearchStrategy[Describe]:
    return st.one_of(
        st.builds(Describe, st.just("S"), names), st.builds(Describe, st.just("P"), portals)
    )


def closes() -> st.SearchStrategy[Close]:
    return st.one_of(st.builds(Close, st.just("S"), names), st.builds(Close, st.just("P"), portals))


def executes() -> st.SearchStrategy[Execute]:
    return st.builds(Execute, portals, st.sampled_from((0, 0, 1, 2)))


def copy_datas() -> st.SearchStrategy[CopyData]:
    return st.builds(
        lambda lines: CopyData("".join(lines)),
        st.lists(st.sampled_from(COPY_LINES), min_size=0, max_size=3),
    )


def function_calls() -> st.SearchStrategy[FunctionCall]:
    return st.one_of(
        st.builds(FunctionCall, st.just(ABS_INT4_OID), st.sampled_from(((-5,), (7,), ()))),
        st.just(FunctionCall(0, (1,))),
    )


def framing_errors() -> st.SearchStrategy[Step]:
    """The steps after which PostgreSQL stops reading: Terminate and broken framing."""
    return st.one_of(
        st.just(Terminate()),
        st.builds(
            UnknownType,
            st.sampled_from(UNKNOWN_TYPES),
            st.sampled_from(("", "abc", None)),
        ),
        st.builds(ShortLength, st.sampled_from("QSPEdcH"), st.integers(0, 3)),
        st.builds(HugeCopyData, st.integers(0, 8)),
    )


def any_step() -> st.SearchStrategy[Step]:
    """Any single message, out of context (CopyData outside a COPY, say)."""
    return st.one_of(
        queries(),
        parses(),
        binds(),
        describes(),
        executes(),
        closes(),
        st.just(Sync()),
        st.just(Flush()),
        copy_datas(),
        st.just(CopyDone()),
        st.just(CopyFail()),
        function_calls(),
    )


@st.composite
def extended_batch(draw: st.DrawFn) -> list[Step]:
    """Parse/Bind/Describe/Execute/Close in protocol order, each maybe left out, ended by
    a Sync, a Flush, both, or nothing."""
    name = draw(names)
    portal = draw(portals)
    sql, types = draw(st.sampled_from(EXTENDED_SQL))
    steps: list[Step] = []
    if draw(st.integers(0, 9)) > 0:
        steps.append(Parse(name, sql, types))
    if draw(st.booleans()):
        steps.append(Describe("S", name))
    if draw(st.integers(0, 9)) > 0:
        steps.append(Bind(portal, name, draw(st.sampled_from(PARAMS)), draw(st.booleans())))
    if draw(st.booleans()):
        steps.append(Describe("P", portal))
    for _ in range(draw(st.integers(0, 2))):
        steps.append(Execute(portal, draw(st.sampled_from((0, 0, 1, 2)))))
    if draw(st.integers(0, 3)) == 0:
        steps.append(Close("P", portal))
    if draw(st.integers(0, 3)) == 0:
        steps.append(Close("S", name))
    endings: dict[str, list[Step]] = {
        "sync": [Sync()],
        "flush": [Flush()],
        "flush-sync": [Flush(), Sync()],
        "none": [],
    }
    steps.extend(
        endings[draw(st.sampled_from(("sync", "sync", "sync", "flush", "flush-sync", "none")))]
    )
    return steps


@st.composite
def copy_body(draw: st.DrawFn) -> list[Step]:
    """What a client sends during COPY FROM STDIN: CopyData with Syncs and Flushes in
    between, then CopyDone, CopyFail, a stray Query, or nothing (the COPY stays open)."""
    steps: list[Step] = []
    for _ in range(draw(st.integers(0, 4))):
        steps.append(draw(_steps(copy_datas(), copy_datas(), st.just(Sync()), st.just(Flush()))))
    end = draw(st.sampled_from(("done", "done", "done", "fail", "query", "none")))
    if end == "done":
        steps.append(CopyDone())
    elif end == "fail":
        steps.append(CopyFail())
    elif end == "query":
        steps.append(Query("SELECT 'in copy'"))
    for _ in range(draw(st.integers(0, 3))):
        steps.append(draw(_steps(st.just(Sync()), st.just(Sync()), st.just(Flush()))))
    return steps


@st.composite
def copy_in_simple(draw: st.DrawFn) -> list[Step]:
    """COPY FROM STDIN by a simple Query."""
    return [Query(COPY_IN_SQL), *draw(copy_body())]


@st.composite
def copy_in_extended(draw: st.DrawFn) -> list[Step]:
    """COPY FROM STDIN by Parse/Bind/Execute; then, as libpq does, a Sync before the
    CopyData (or a Flush, as the protocol documentation suggests, or nothing)."""
    afters: dict[str, list[Step]] = {"sync": [Sync()], "flush": [Flush()], "none": []}
    steps: list[Step] = [Parse("", COPY_IN_SQL), Bind(), Execute()]
    steps.extend(afters[draw(st.sampled_from(("sync", "sync", "flush", "none")))])
    steps.extend(draw(copy_body()))
    if draw(st.booleans()):
        steps.append(Sync())
    return steps


@st.composite
def copy_out(draw: st.DrawFn) -> list[Step]:
    """COPY TO STDOUT, simple or extended."""
    sql = "COPY (SELECT generate_series(1, 3)) TO STDOUT"
    if draw(st.booleans()):
        return [Query(sql)]
    rows = draw(st.sampled_from((0, 0, 1)))
    end = draw(_steps(st.just(Sync()), st.just(Flush())))
    return [Parse("", sql), Bind(), Execute("", rows), end]


@st.composite
def sync_storm(draw: st.DrawFn) -> list[Step]:
    """Syncs (and a Flush or two) in a row."""
    one = _steps(st.just(Sync()), st.just(Sync()), st.just(Sync()), st.just(Flush()))
    return draw(st.lists(one, min_size=2, max_size=10))


@st.composite
def error_then_more(draw: st.DrawFn) -> list[Step]:
    """An error in an unsynced batch, then messages PostgreSQL must skip up to a Sync."""
    failing = draw(
        _steps(
            st.just(Parse("", "SELEC 1")),
            st.just(Parse("", "SELECT 1/0")),
            st.just(Bind("p1", "no_such_statement")),
            st.just(Execute("no_such_portal")),
            st.just(Describe("S", "no_such_statement")),
        )
    )
    steps: list[Step] = [failing]
    if failing == Parse("", "SELECT 1/0"):
        steps += [Bind(), Execute()]
    steps += draw(st.lists(any_step(), max_size=3))
    if draw(st.integers(0, 3)) > 0:
        steps.append(Sync())
    return steps


def blocks() -> st.SearchStrategy[list[Step]]:
    """One block of a pipeline."""
    return st.one_of(
        st.lists(queries(), min_size=1, max_size=3),
        extended_batch(),
        copy_in_simple(),
        copy_in_simple(),
        copy_in_extended(),
        copy_in_extended(),
        error_then_more(),
        copy_out(),
        sync_storm(),
        st.lists(any_step(), min_size=1, max_size=3),
        st.builds(lambda call: [call], function_calls()),
        st.builds(lambda step: [step], framing_errors()),
    )


@st.composite
def chunkings(draw: st.DrawFn, size: int) -> Chunking:
    """A chunking plan for a payload of ``size`` bytes."""
    mode = draw(st.sampled_from(("whole", "whole", "whole", "cuts", "cuts", "bytes")))
    if mode == "whole" or size < 2:
        return Chunking()
    if mode == "bytes":
        return Chunking("bytes")
    cuts = draw(st.lists(st.integers(1, size - 1), min_size=1, max_size=6, unique=True))
    return Chunking("cuts", tuple(sorted(cuts)), draw(st.sampled_from((0.0, 0.002, 0.01))))


@st.composite
def cases(draw: st.DrawFn, max_blocks: int = 5) -> Case:
    """A pipeline of 1 to ``max_blocks`` blocks, its chunking, and when the client leaves."""
    steps: list[Step] = []
    for block in draw(st.lists(blocks(), min_size=1, max_size=max_blocks)):
        steps.extend(block)
    if not steps:
        steps.append(Query("SELECT 1"))
    size = sum(len(step.encode()) for step in steps)
    chunking = draw(chunkings(size))
    leave_after = draw(st.one_of(st.none(), st.none(), st.integers(0, 4)))
    return Case(tuple(steps), chunking, leave_after)


# --- the known shapes ------------------------------------------------------------------


def known_cases() -> dict[str, Case]:
    """Hand-written cases for shapes that went wrong before (the test's @examples)."""
    copy_then_sleeps: Iterable[Step] = (
        Query(COPY_IN_SQL),
        CopyData("1\tone\n"),
        CopyDone(),
        Sync(),
        Sync(),
        Query("SELECT pg_sleep(1), 'A-first'"),
        Query("SELECT pg_sleep(1), 'A-LEAKED-ROW'"),
    )
    pbe = (Parse("", "SELECT 1"), Bind(), Execute())
    return {
        "copy-sync-sync-leak": Case(tuple(copy_then_sleeps), leave_after=3),
        "query-terminate": Case((Query("SELECT 1"), Terminate())),
        "query-unknown-type": Case((Query("SELECT 1"), UnknownType(ord("y"), ""))),
        "query-length-below-4": Case((Query("SELECT 1"), ShortLength("Q", 3))),
        "copydata-2GiB-in-copy": Case((Query(COPY_IN_SQL), CopyData("1\tone\n"), HugeCopyData())),
        "pbe-terminate": Case((*pbe, Terminate())),
        "pbe-flush-terminate": Case((*pbe, Flush(), Terminate())),
        # Found by scripts/fuzz. An extended COPY ended by CopyFail, its Syncs, a slow
        # query and a second extended COPY, in one write; the client leaves after the
        # first ReadyForQuery: the next client gets that COPY's answers, and its query
        # lands in the COPY (08P01, then FATAL).
        "extended-copy-fail-then-copy": Case(
            (
                Parse("", COPY_IN_SQL),
                Bind(),
                Execute(),
                Sync(),
                CopyFail(),
                Sync(),
                Sync(),
                Query("SELECT pg_sleep(0.2)"),
                Parse("", COPY_IN_SQL),
                Bind(),
                Execute(),
                Sync(),
            ),
            leave_after=1,
        ),
        # Found by scripts/fuzz: an error in an extended batch, then a CopyData outside
        # any COPY (PostgreSQL ignores it); the server skips everything up to a Sync,
        # the reset of a client leaving now included.
        "error-then-copydata-leave": Case((Execute("nope"), CopyData("")), leave_after=0),
        # Found by scripts/fuzz: during COPY IN PostgreSQL reads no message type but
        # CopyData, CopyDone, CopyFail, Sync and Flush.
        "unknown-type-in-copy": Case((Query(COPY_IN_SQL), UnknownType(ord("y"), ""))),
    }
