"""One client's admin commands on the wire: which of its messages are admin commands,
and PostgreSQL's answers to them, in simple and extended protocol (sans-IO).

On an ordinary connection a command is recognised only where a unit starts (a Query,
or the first Parse or Bind after a Sync), so that it never splits a batch whose other
messages went to a server; the rest of its extended batch, up to the Sync, is answered
here too. In the admin database (``console``) every message is answered here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from pooler.admin.commands import Bound, bind, unknown
from pooler.admin.state import Context
from pooler.admin.wire import AdminError, Later, empty_query, row_description
from pooler.admin.words import Statement, may_be_admin, statements
from pooler.protocol import messages as m
from pooler.protocol.outstanding import UNSYNCED

_Q, _P, _B, _D, _E, _C, _H, _S, _F = (ord(c) for c in "QPBDECHSF")
_COPY = frozenset(b"dcf")
#: Message types an ordinary connection's port must see whole.
PORT_TYPES = frozenset({_Q, _P, _B})
#: In the admin database: every message type a client may send after login.
CONSOLE_TYPES = frozenset(b"QPBDECHSFdcf")
_EXTENDED = frozenset({_P, _B, _D, _E, _C, _H, _S})
_PARSE_COMPLETE = b"1\x00\x00\x00\x04"
_BIND_COMPLETE = b"2\x00\x00\x00\x04"
_CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
_NO_PARAMETERS = b"t\x00\x00\x00\x06\x00\x00"
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")

#: What a Parse or Bind made: a command ready to run, or the error it is.
Prepared = Bound | AdminError


class _NotYet(Exception):
    """The command running answers later (``Later``): its unit waits, unconsumed."""


@dataclass(slots=True)
class AdminPort:
    """Recognises and answers one client's admin commands (``ClientEngine``'s
    ``admin``)."""

    ctx: Context
    #: The admin database: everything is answered here.
    console: bool
    types: frozenset[int] = PORT_TYPES
    # Named statements that are admin commands, and the unnamed statement and portal.
    _named: dict[bytes, Prepared] = field(default_factory=dict)
    _unnamed: Prepared | None = None
    _portal: Prepared | None = None
    # An error in the batch: skip to its Sync.
    _failed: bool = False
    # The command whose answer is on its way, and the answers of the statements of a
    # simple Query that ran before it.
    _later: Later | None = None
    _done: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.console:
            self.types = CONSOLE_TYPES

    # --- recognising ------------------------------------------------------------------

    def claims(self, t: int, body: bytes, before: int) -> bool:
        """Whether the message (of type ``t``, after one of type ``before``) starts an
        admin unit: called by the scanner for every Query, Parse and Bind."""
        if self.console:
            return True
        if before in UNSYNCED:
            return False
        if t == _Q:
            return may_be_admin(body) and self._prepared(_text(body)) is not None
        if t == _P:
            # The text follows the statement name; most texts fail at their first bytes.
            text_at = body.find(b"\0") + 1
            if may_be_admin(body, text_at) and self._prepared(_text(_parse(body)[1])):
                return True
            if self._named:
                # The name now stands for the server's statement.
                self._named.pop(_parse(body)[0], None)
            return False
        if t == _B and self._named:
            return _bind_names(body)[1] in self._named
        return False

    def _prepared(self, sql: str) -> Prepared | None:
        """The command ``sql`` is (or its error), or None when it is not one (on an
        ordinary connection: not a single admin statement, which goes to the server)."""
        found = statements(sql)
        if found is None or len(found) != 1:
            return None
        return self._statement(found[0])

    def _statement(self, statement: Statement) -> Prepared | None:
        try:
            bound = bind(statement, self.console)
        except AdminError as exc:
            return exc
        if bound is None and self.console:
            return unknown(statement)
        return bound

    # --- answering --------------------------------------------------------------------

    def answer(self, data: bytearray, status: bytes) -> tuple[bytes, bytes | None]:
        """Answer the admin unit at the start of ``data`` (whole messages are taken out
        of it): the answers, and the bytes after the unit, or None while it goes on (an
        extended batch whose Sync has not come). ``status`` is the client's transaction
        status, for ReadyForQuery."""
        out: list[bytes] = []
        pos = 0
        end = len(data)
        while end - pos >= 5:
            t = data[pos]
            stop = pos + 1 + _INT32.unpack_from(data, pos + 1)[0]
            if stop > end:
                break
            body = bytes(data[pos + 5 : stop])
            if t in _COPY:
                # PostgreSQL ignores COPY messages outside a COPY.
                pos = stop
                continue
            if t not in _EXTENDED and pos:
                # A batch left without its Sync: what follows is scanned as usual.
                return _taken(out, data, pos)
            if t == _Q:
                try:
                    out.append(self._query(_text(body), status))
                except _NotYet:
                    return _waiting(out, data, pos)
                return _taken(out, data, stop)
            if t == _F:
                error = AdminError("0A000", "function calls are not supported here")
                out += (error.response(), m.ready_for_query(status))
                return _taken(out, data, stop)
            if t not in _EXTENDED:
                return _taken(out, data, pos)
            start, pos = pos, stop
            if t == _S:
                self._failed = False
                self._portal = None
                out.append(m.ready_for_query(status))
                return _taken(out, data, pos)
            if not self._failed:
                try:
                    out.append(self._extended(t, body, status))
                except AdminError as exc:
                    self._failed = True
                    out.append(exc.response())
                except _NotYet:
                    return _waiting(out, data, start)
        del data[:pos]
        return b"".join(out), None

    def _query(self, sql: str, status: bytes) -> bytes:
        """A simple Query: each statement's answer in turn, up to the first error, then
        ReadyForQuery."""
        found = statements(sql)
        # After a statement that answered later, the query goes on from there.
        done = self._done
        try:
            if found is None:
                raise AdminError("42601", "unterminated quoted string or comment")
            if not found:
                done.append(empty_query())
            for statement in found[len(done) :]:
                _check_status(status)
                prepared = self._statement(statement)
                if prepared is None:
                    raise unknown(statement)
                done.append(self._describe(prepared) + self._run(prepared))
        except AdminError as exc:
            done.append(exc.response())
        done.append(m.ready_for_query(status))
        self._done = []
        return b"".join(done)

    def _extended(self, t: int, body: bytes, status: bytes) -> bytes:
        _check_status(status)
        if t == _P:
            name, text = _parse(body)
            prepared = self._prepared(_text(text))
            if prepared is None:
                raise AdminError(
                    "0A000",
                    "an admin command cannot share an extended-protocol batch with"
                    " statements for the server",
                    hint="Send it with its own Sync.",
                )
            if isinstance(prepared, AdminError):
                raise prepared
            if name:
                self._named[name] = prepared
            else:
                self._unnamed = prepared
            return _PARSE_COMPLETE
        if t == _B:
            portal, statement = _bind_names(body)
            prepared = self._named.get(statement) if statement else self._unnamed
            if prepared is None:
                missing = statement.decode("utf-8", "replace")
                raise AdminError("26000", f'prepared statement "{missing}" does not exist')
            if portal:
                raise AdminError("0A000", "named portals are not supported for admin commands")
            if _binary_results(body):
                raise AdminError("0A000", "admin commands answer in text format only")
            self._portal = prepared
            return _BIND_COMPLETE
        if t == _D:
            if body[:1] == b"S":
                named = body[1:-1]
                prepared = self._named.get(named) if named else self._unnamed
                return _NO_PARAMETERS + self._describe(_exists(prepared, "prepared statement"))
            return self._describe(_exists(self._portal, "portal"))
        if t == _E:
            return self._run(_exists(self._portal, "portal"))
        if t == _C:
            if body[:1] == b"S":
                self._named.pop(body[1:-1], None)
            return _CLOSE_COMPLETE
        return b""  # Flush: what is answered so far goes out now anyway

    def _describe(self, prepared: Prepared) -> bytes:
        if isinstance(prepared, AdminError):
            raise prepared
        return row_description(prepared.command.columns)

    def _run(self, prepared: Prepared) -> bytes:
        """Run a command; raises _NotYet while the answer of one that answers later is
        on its way (then the same call, made again, gives it)."""
        if isinstance(prepared, AdminError):
            raise prepared
        later = self._later
        if later is None:
            result = prepared.run(self.ctx)
            if isinstance(result, Later):
                self._later = result
                result.future.add_done_callback(self._answer_now)
                raise _NotYet
        elif not later.future.done():
            raise _NotYet
        else:
            self._later = None
            result = later.future.result()
        return result.rows_and_tag(prepared.command.columns)

    def _answer_now(self, future: object) -> None:
        # The answer is ready: the client's waiting unit goes on.
        client = self.ctx.client
        if not client.transport.is_closing():
            client.admin_turn()


def _waiting(out: list[bytes], data: bytearray, pos: int) -> tuple[bytes, None]:
    """The answers so far; what came from ``pos`` on waits (a command answers later)."""
    del data[:pos]
    return b"".join(out), None


def _taken(out: list[bytes], data: bytearray, pos: int) -> tuple[bytes, bytes]:
    """The answers, and the bytes from ``pos`` on (the unit is over)."""
    rest = bytes(data[pos:])
    del data[:]
    return b"".join(out), rest


def _check_status(status: bytes) -> None:
    if status == b"E":
        raise AdminError(
            "25P02",
            "current transaction is aborted, commands ignored until end of transaction block",
        )


def _exists(prepared: Prepared | None, what: str) -> Prepared:
    if prepared is None:
        raise AdminError("34000" if what == "portal" else "26000", f'{what} "" does not exist')
    return prepared


def _text(raw: bytes) -> str:
    """A statement text without its NUL."""
    return raw.rstrip(b"\0").decode("utf-8", "replace")


def _parse(body: bytes) -> tuple[bytes, bytes]:
    """A Parse's statement name and text."""
    name_end = body.find(b"\0")
    text_end = body.find(b"\0", name_end + 1)
    return body[:name_end], body[name_end + 1 : text_end]


def _bind_names(body: bytes) -> tuple[bytes, bytes]:
    """A Bind's portal and statement names."""
    portal_end = body.find(b"\0")
    statement_end = body.find(b"\0", portal_end + 1)
    return body[:portal_end], body[portal_end + 1 : statement_end]


def _binary_results(body: bytes) -> bool:
    """A Bind asks for some result column in binary."""
    pos = body.find(b"\0", body.find(b"\0") + 1) + 1
    formats = _INT16.unpack_from(body, pos)[0]
    pos += 2 + 2 * formats
    params = _INT16.unpack_from(body, pos)[0]
    pos += 2
    for _ in range(params):
        length = _INT32.unpack_from(body, pos)[0]
        pos += 4 + max(length, 0)
    results = _INT16.unpack_from(body, pos)[0]
    codes = struct.unpack_from(f"!{results}h", body, pos + 2)
    return any(codes)
