"""Protocol-level named prepared statements, carried across servers.

In transaction pooling a client's next transaction may run on another server, where
the statements it prepared do not exist. Each statement a client parses under a name
gets a name of the pooler's, unique across all clients, and its Parse is kept; the
client's Parse, Bind, Describe and Close name the pooler's statement; and before a
client's transaction starts on a server, the statements of that client the server
lacks are parsed there first, in a prelude whose answers the client never sees. A
Close sent alone with its Sync while the client has no server is answered by the pooler
(``ClientEngine``); the servers that prepared the statement close it when it is their
least recently used.

SQL ``PREPARE``, ``EXECUTE`` and ``DEALLOCATE`` share that namespace, as they share
one on PostgreSQL (``PREPARE q3`` then a protocol Parse of ``q3`` gives 42P05): their
statement names are rewritten to the pooler's in the text, and a statement made by
``PREPARE`` is made again on another server by its own rewritten ``PREPARE``.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

from parser_api import Classification, EffectKind, Token, TokenKind, tokens
from pooler.protocol import messages as m
from pooler.protocol.codec import frame

#: How many statements the pooler keeps prepared on one server before closing the
#: least recently used.
SERVER_CAPACITY = 1000

_names = itertools.count(1)
_unnamed_ids = itertools.count(1)
_SYNC = frame(m.SYNC, b"")
_CLOSE_UNNAMED = frame(m.CLOSE, b"S\0") + _SYNC


#: What every statement name of the pooler's starts with.
POOLER_NAME = b"_pooler_"
#: What the names start with that a client's statement goes by once its result type
#: changed (see ``ClientStatements.replanned``): no server ever has them, so that a Bind
#: or Describe of them fails where PostgreSQL's would, and the pooler tells the client
#: PostgreSQL's error instead of the server's.
STALE = POOLER_NAME + b"stale_"
#: What the text starts with that a Parse of a stale name is sent with: a syntax error
#: naming it, which the pooler tells the client as PostgreSQL's 42P05 (the client's
#: name is still in use).
DUPLICATE = POOLER_NAME + b"dup_"
#: What a statement Describe of a statement whose text no longer parses (see
#: ``ClientStatements.gone``) names after the pooler's name: no server has it either.
_DESCRIBED = b"_d"
_PARAMETER_DESCRIPTION = ord("t")


def new_name() -> bytes:
    """A statement name no client of this process has."""
    return POOLER_NAME + b"%d" % next(_names)


class ClientStatements:
    """One client's named statements: its name -> (pooler name, the Parse body after
    the name: query text and parameter types)."""

    __slots__ = (
        "_by_name",
        "_closed",
        "_closing",
        "_dropping",
        "_fresh",
        "_gone",
        "_sql",
        "_stale",
        "shapes",
        "theirs",
        "unconfirmed",
        "unnamed",
        "unnamed_id",
    )

    def __init__(self) -> None:
        self._by_name: dict[bytes, tuple[bytes, bytes]] = {}
        # Made by SQL PREPARE: the pooler's name -> that PREPARE, naming it, and how to
        # tell a position in it as one in the client's text (see ``_client_position``).
        self._sql: dict[bytes, tuple[str, int, int, int]] | None = None
        #: The pooler's name -> the client's, to say the client's names in errors.
        self.theirs: dict[bytes, bytes] = {}
        # Closed, but an error about them may still be on its way.
        self._closed: list[bytes] = []
        # Closes sent, each with the server's error count then (None: not sent yet).
        # PostgreSQL skips a Close that follows an error before the next Sync, so a
        # statement is forgotten only once its Close is known to have run.
        self._closing: list[tuple[bytes, bytes, int | None]] = []
        # Parsed by the client while it had no server: its own Parse, held, will create
        # them on the next server.
        # (A dict: an empty set costs every client three times as much.)
        self._fresh: dict[bytes, None] = {}
        # A DEALLOCATE ALL or DISCARD ALL sent: the names it drops, and the server's
        # error count then (None: not sent yet).
        self._dropping: tuple[list[tuple[bytes, bytes]], int | None] | None = None
        #: Names first parsed by requests not answered yet: request number on the
        #: server -> (the Parse's place among that request's Parses, the name, the
        #: pooler's name).
        self.unconfirmed: dict[int, list[tuple[int, bytes, bytes]]] | None = None
        #: The pooler's name -> the statement as the server described it when the client
        #: parsed it (ParameterDescription and RowDescription bodies, the latter empty
        #: for NoData): PostgreSQL holds a statement to that result type.
        self.shapes: dict[bytes, tuple[bytes, bytes]] | None = None
        # Statements whose result type changed: stale name -> the name a Describe of
        # it goes by (carrying the ParameterDescription PostgreSQL sends before its error).
        self._stale: dict[bytes, bytes] | None = None
        # Statements parsed again on the server the client has now whose Parse failed
        # (their table was dropped): the pooler's name -> the error, as PostgreSQL gives
        # it to each use of them on that server (it analyzes the text again each time).
        self._gone: dict[bytes, bytes] | None = None
        #: The unnamed statement's Parse body, while the client has one: PostgreSQL
        #: keeps it across Syncs, until the next Parse of it, a Close of it or a simple
        #: Query; and its number, unique in the process (0: none), which a server that
        #: has it notes (``ServerEngine.unnamed``).
        self.unnamed: bytes | None = None
        self.unnamed_id = 0

    def __len__(self) -> int:
        return len(self._by_name)

    def parse(self, name: bytes, rest: bytes, held: bool) -> bytes:
        """The client parses ``name`` (``held``: while it has no server): the pooler's
        name for it.

        A name the client has already is left as it is, so that PostgreSQL answers
        42P05 as it would (unless a Close of it went first: then it is a new statement).
        """
        known = self._in_use(name)
        if known is not None:
            return known[0]
        ours = new_name()
        self._by_name[name] = (ours, rest)
        self.theirs[ours] = name
        if held:
            self._fresh[ours] = None
        return ours

    def prepare(
        self, name: bytes, text: tuple[str, str, str], offset: int, held: bool
    ) -> bytes:
        """The client runs SQL PREPARE ``name`` (``held``: while it has no server): the
        pooler's name for it. ``text``: the PREPARE's text before the name, the name as
        written, the text after it; ``offset``: where that text starts in the client's
        Query."""
        known = self._in_use(name)
        if known is not None:
            return known[0]
        ours = self.parse(name, b"", held)
        if self._sql is None:
            self._sql = {}
        before, written, after = text
        mine = ours.decode()
        self._sql[ours] = (
            before + mine + after,
            offset,
            len(before) + len(mine),
            len(written) - len(mine),
        )
        return ours

    def _in_use(self, name: bytes) -> tuple[bytes, bytes] | None:
        """The client's statement ``name`` (the pooler's name, the Parse's rest), unless
        a Close of it was sent since: the name is free again from there on."""
        known = self._by_name.get(name)
        if known is None or not self._closing:
            return known
        ours = known[0]
        if any(closed == ours for _, closed, _ in self._closing):
            return None
        return known

    def parsed(self, number: int, index: int, name: bytes, ours: bytes) -> None:
        """The Parse that first named ``name`` (``ours`` for the pooler) is the
        ``index``-th Parse of the request ``number`` (counting every request owed a
        ReadyForQuery on the server)."""
        if self.unconfirmed is None:
            self.unconfirmed = {}
        self.unconfirmed.setdefault(number, []).append((index, name, ours))

    def confirm(self, marks: list[tuple[int, bytes, int, int]]) -> list[bytes]:
        """The server is idle (``marks``: see ``ServerEngine.watch``): forget the names
        whose first Parse failed, or was skipped after an error before its Sync, as
        PostgreSQL has no such statement. The pooler's names forgotten."""
        unconfirmed = self.unconfirmed
        self.unconfirmed = None
        parsed = {number: completes for number, _, _, completes in marks}
        gone: list[bytes] = []
        for number, entries in (unconfirmed or {}).items():
            before, after = parsed.get(number - 1), parsed.get(number)
            if before is None or after is None:
                continue
            for index, name, ours in entries:
                known = self._by_name.get(name)
                if index >= after - before and known is not None and known[0] == ours:
                    del self._by_name[name]
                    self._closed.append(ours)
                    if self._sql:
                        self._sql.pop(ours, None)
                    gone.append(ours)
        return gone

    def parsed_unnamed(self, body: bytes) -> int:
        """The client parsed the unnamed statement (``body``: the Parse's): the number a
        server it went to has now."""
        self.unnamed = body
        self.unnamed_id = next(_unnamed_ids)
        return self.unnamed_id

    def dropped_unnamed(self) -> None:
        """A simple Query or a Close of the unnamed statement: the client has none."""
        self.unnamed = None
        self.unnamed_id = 0

    def unnamed_prelude(self, server_has: int) -> bytes:
        """What gives a server whose unnamed statement is number ``server_has`` (0:
        none) this client's, or none as the client has none, with a Sync: b"" when it
        has it already."""
        if server_has == self.unnamed_id:
            return b""
        if self.unnamed is not None:
            return frame(m.PARSE, self.unnamed) + _SYNC
        return _CLOSE_UNNAMED

    def text(self, name: bytes) -> bytes | None:
        """The text the client parsed as ``name`` (None: none, or made by SQL PREPARE)."""
        known = self._by_name.get(name)
        if known is None or not known[1]:
            return None
        return known[1][: known[1].find(b"\0")]

    def ours(self, name: bytes) -> bytes | None:
        """The pooler's name for the client's ``name``, or None."""
        known = self._by_name.get(name)
        return known[0] if known is not None else None

    def close(self, name: bytes, errors: int | None) -> bytes | None:
        """The client closes ``name`` (``errors``: the server's error count, None while
        it has no server): the pooler's name it had, or None."""
        known = self._by_name.get(name)
        if known is None:
            return None
        self._closing.append((name, known[0], errors))
        return known[0]

    def forget(self, name: bytes) -> None:
        """The client closed ``name`` with nothing in flight (no error can come before
        the Close): forgotten at once."""
        known = self._by_name.pop(name, None)
        if known is None:
            return
        ours = known[0]
        self.theirs.pop(ours, None)
        if self._sql:
            self._sql.pop(ours, None)
        if self.shapes:
            self.shapes.pop(ours, None)
        if self._stale:
            self._stale.pop(ours, None)

    def drop_all(self, errors: int | None) -> None:
        """The client sent DEALLOCATE ALL or DISCARD ALL (``errors``: the server's error
        count, None while it has no server): its statements are forgotten once it ran."""
        self._dropping = ([(name, ours) for name, (ours, _) in self._by_name.items()], errors)

    def sent_to(self, errors: int) -> None:
        """Held Closes went to a server whose error count is ``errors``."""
        self._closing = [
            (name, ours, errors if at is None else at) for name, ours, at in self._closing
        ]
        if self._dropping is not None and self._dropping[1] is None:
            self._dropping = (self._dropping[0], errors)

    def settled(self, errors: int) -> bool:
        """Nothing is in flight and the server's error count is ``errors``: a Close that
        met no error ran; names forgotten before are not needed for errors any more.
        True when a DEALLOCATE ALL or DISCARD ALL ran: the server has no prepared
        statement left."""
        dropped = False
        if self._dropping is not None:
            names, at = self._dropping
            self._dropping = None
            if at == errors:
                dropped = True
                for name, ours in names:
                    self._closing.append((name, ours, errors))
        for ours in self._closed:
            self.theirs.pop(ours, None)
        self._closed.clear()
        for name, ours, at in self._closing:
            if at != errors:
                continue
            known = self._by_name.get(name)
            if known is not None and known[0] == ours:
                # (Else the client parsed the name again after closing it.)
                del self._by_name[name]
            self._closed.append(ours)
            if self._sql:
                self._sql.pop(ours, None)
            self._fresh.pop(ours, None)
        self._closing.clear()
        return dropped

    def prelude(
        self, prepared: OrderedDict[bytes, None]
    ) -> tuple[bytes, list[bytes], dict[bytes, bytes]]:
        """What to send a server whose statements are ``prepared`` (updated here)
        before this client's transaction, the statements it parses, in order, and the
        result types (RowDescription bodies) those the client parsed had then.

        Each statement the server lacks gets a Parse and a Sync of its own, so that one
        that fails (its table was dropped) spoils no other, and a Describe when its
        result type is known, to see whether it is still the same; the least recently
        used statements over capacity are closed first. Nothing when nothing is lacking.
        """
        parses: list[bytes] = []
        names: list[bytes] = []
        checks: dict[bytes, bytes] = {}
        fresh = self._fresh
        for ours, rest in self._by_name.values():
            if ours in prepared:
                prepared.move_to_end(ours)
            elif ours in fresh:
                prepared[ours] = None
            elif ours.startswith(STALE):
                continue
            else:
                sql = self._sql[ours][0] if self._sql and ours in self._sql else None
                shape = self.shapes.get(ours) if self.shapes else None
                if sql is not None:
                    parses.append(m.query(sql))
                elif shape is not None:
                    parses.append(frame(m.PARSE, ours + b"\0" + rest) + _describe(ours) + _SYNC)
                    checks[ours] = shape[1]
                else:
                    parses.append(frame(m.PARSE, ours + b"\0" + rest) + _SYNC)
                names.append(ours)
                prepared[ours] = None
        fresh.clear()
        if not parses:
            return b"", names, checks
        closes: list[bytes] = []
        mine = {ours for ours, _ in self._by_name.values()}
        while len(prepared) > SERVER_CAPACITY:
            oldest = next(iter(prepared))
            if oldest in mine:
                break
            del prepared[oldest]
            closes.append(frame(m.CLOSE, b"S" + oldest + b"\0"))
        return b"".join(closes) + b"".join(parses), names, checks

    def described(self, ours: bytes, params: bytes, rows: bytes) -> None:
        """The server described ``ours`` as the client parsed it (``rows`` empty: no
        rows)."""
        if self.shapes is None:
            self.shapes = {}
        self.shapes[ours] = (params, rows)

    def replanned(self, changed: list[bytes], held: bytes) -> bytes:
        """The statements ``changed`` were parsed again on a server and their result
        type is no longer the one the client parsed: from now on the client's Binds and
        Describes of them fail as on PostgreSQL, until it closes them. ``held``, the
        client's messages waiting for that verdict, with them renamed too."""
        renamed: dict[bytes, bytes] = {}
        describes: dict[bytes, bytes] = {}
        if self._stale is None:
            self._stale = {}
        for ours in changed:
            name = self.theirs.get(ours)
            known = self._by_name.get(name) if name is not None else None
            if name is None or known is None or known[0] != ours:
                continue
            stale = STALE + ours[len(POOLER_NAME) :]
            params = self.shapes[ours][0] if self.shapes and ours in self.shapes else b""
            self._by_name[name] = (stale, known[1])
            self.theirs[stale] = name
            self._stale[stale] = describes[ours] = stale + b"_" + params.hex().encode()
            renamed[ours] = stale
        return _renamed(held, renamed, describes) if renamed else held

    def gone(self, failed: dict[bytes, bytes], held: bytes) -> bytes:
        """The statements ``failed`` were parsed again on the server the client has now
        and failed with those errors (ErrorResponse bodies): until the client has
        another server, each Bind, EXECUTE and Describe of them fails with that error,
        as on PostgreSQL. ``held``, the client's messages waiting for that verdict, with
        their Describes of them renamed (see ``described_as``)."""
        self._gone = {ours: self._client_position(ours, body) for ours, body in failed.items()}
        return _renamed(held, {}, {ours: ours + _DESCRIBED for ours in failed})

    def server_left(self) -> None:
        """The client gave its server up: what failed to parse there may parse on the
        next (its prelude tries again)."""
        self._gone = None

    def _client_position(self, ours: bytes, body: bytes) -> bytes:
        """An error about the SQL PREPARE of ``ours`` the pooler sent, with its position
        told in the client's text (where the statement name was the client's)."""
        if not self._sql or ours not in self._sql:
            return body
        _, offset, name_end, shift = self._sql[ours]
        fields = body.split(b"\0")
        for i, field in enumerate(fields):
            if field[:1] == b"P" and field[1:].isdigit():
                position = int(field[1:])
                if position > name_end:
                    position += shift
                fields[i] = b"P%d" % (position + offset)
        return b"\0".join(fields)

    def described_as(self, ours: bytes) -> bytes:
        """The name a Describe of the client's statement ``ours`` goes by."""
        if self._gone and ours in self._gone:
            return ours + _DESCRIBED
        return self._stale.get(ours, ours) if self._stale else ours

    def client_message(self, t: int, body: bytes) -> bytes:
        """A server's message naming pooler statements (an ErrorResponse, whose ``body``
        holds the name) as the client is told it: PostgreSQL's own error where the
        server's is about a name the pooler made up, the client's statement names
        where it is about a real one."""
        if DUPLICATE in body:
            return self._duplicate(body)
        if STALE in body:
            replanned = replanned_error(body)
            if replanned is not None:
                return replanned
        if self._gone and b"C26000\0" in body:
            gone = self._gone_error(body)
            if gone is not None:
                return gone
        for ours, theirs in self.theirs.items():
            if ours in body:
                body = body.replace(b'"' + ours + b'"', b'"' + theirs + b'"')
        return frame(t, body)

    def _duplicate(self, body: bytes) -> bytes:
        """PostgreSQL's 42P05 for the syntax error a Parse of a stale name was sent
        with (see ``rewrite_parse``)."""
        start = body.find(DUPLICATE)
        marker = body[start + len(DUPLICATE) : body.find(b'"', start)]
        name = self.theirs.get(POOLER_NAME + marker, marker)
        return frame(m.ERROR_RESPONSE, _DUPLICATE % name)

    def _gone_error(self, body: bytes) -> bytes | None:
        """The error of a statement's failed Parse, for the server's 26000 about it:
        what PostgreSQL says to a Bind, EXECUTE or Describe of a statement whose text no
        longer analyzes (a Describe gets its parameters first)."""
        assert self._gone is not None
        start = body.find(b'"' + POOLER_NAME)
        if start < 0:
            return None
        name = body[start + 1 : body.find(b'"', start + 1)]
        ours = name.removesuffix(_DESCRIBED)
        error = self._gone.get(ours)
        if error is None:
            return None
        out = frame(m.ERROR_RESPONSE, error)
        if ours != name:
            shape = self.shapes.get(ours) if self.shapes else None
            if shape is not None:
                out = frame(_PARAMETER_DESCRIPTION, shape[0]) + out
        return out


def _describe(ours: bytes) -> bytes:
    return frame(m.DESCRIBE, b"S" + ours + b"\0")


def _renamed(data: bytes, binds: dict[bytes, bytes], describes: dict[bytes, bytes]) -> bytes:
    """Messages with the statements of their Binds renamed by ``binds`` and those of
    their statement Describes by ``describes`` (a message cut short at the end is left
    as it is)."""
    out: list[bytes] = []
    pos = 0
    while pos + 5 <= len(data):
        t = data[pos]
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        if end > len(data):
            break
        body = data[pos + 5 : end]
        if t == m.BIND:
            portal_end = body.find(b"\0")
            name_end = body.find(b"\0", portal_end + 1)
            new = binds.get(body[portal_end + 1 : name_end])
            if new is not None:
                body = body[: portal_end + 1] + new + body[name_end:]
        elif t == m.DESCRIBE and body[:1] == b"S":
            new = describes.get(body[1:-1])
            if new is not None:
                body = b"S" + new + b"\0"
        out.append(frame(t, body))
        pos = end
    out.append(data[pos:])
    return b"".join(out)


def same_result(described: bytes, now: bytes) -> bool:
    """Whether two RowDescription bodies (empty: NoData) give one result type as
    PostgreSQL compares them (``equalTupleDescs``): the same column names, types and
    type modifiers; where the columns come from does not count."""
    return _result_type(described) == _result_type(now)


def _result_type(body: bytes) -> list[tuple[bytes, bytes]]:
    columns = []
    pos = 2
    for _ in range(int.from_bytes(body[:2], "big")):
        end = body.index(b"\0", pos)
        # Name; then table OID and column number (skipped), type OID, length, modifier.
        columns.append((body[pos:end], body[end + 7 : end + 17]))
        pos = end + 19
    return columns


def replanned_error(body: bytes) -> bytes | None:
    """What PostgreSQL says to a Bind or Describe of a statement whose result type
    changed, for the server's error ``body`` about a stale name (None: it is not
    about one)."""
    start = body.find(b'"' + STALE)
    if start < 0:
        return None
    name = body[start + 1 : body.find(b'"', start + 1)]
    _, _, params = name[len(STALE) :].partition(b"_")
    error = frame(m.ERROR_RESPONSE, _REPLANNED)
    if name.count(b"_") > STALE.count(b"_"):
        # A Describe: PostgreSQL sends the parameters before it finds the result changed.
        return frame(_PARAMETER_DESCRIPTION, bytes.fromhex(params.decode())) + error
    return error


# PostgreSQL 15's own errors: raised in StorePreparedStatement (the client's name, as
# %-formatted), and in RevalidateCachedQuery.
_DUPLICATE = (
    b"SERROR\0VERROR\0C42P05\0Mprepared statement \"%s\" already exists\0"
    b"Fprepare.c\0L412\0RStorePreparedStatement\0\0"
)
_REPLANNED = (
    b"SERROR\0VERROR\0C0A000\0Mcached plan must not change result type\0"
    b"Fplancache.c\0L722\0RRevalidateCachedQuery\0\0"
)


def rewrite_parse(
    body: bytes,
    statements: ClientStatements,
    server: OrderedDict[bytes, None] | None,
    first: bool = False,
) -> tuple[bytes, bytes]:
    """A client's Parse: the message to forward (to a server whose statements are
    ``server``, None while there is none), and the query text.

    A Parse that first names a statement, ``first`` in its request (so that its
    ParseComplete is the request's first), is followed by a Describe of it, whose
    answers the server engine keeps (``ServerEngine.keep_description``) and the client
    never sees: what the statement returns is what PostgreSQL holds it to."""
    nul = body.find(b"\0")
    rest = body[nul + 1 :]
    text = rest[: rest.find(b"\0")]
    if nul <= 0:
        return frame(m.PARSE, body), text
    new = first and statements.ours(body[:nul]) is None
    ours = statements.parse(body[:nul], rest, server is None)
    if ours.startswith(STALE):
        # The client's name is in use (PostgreSQL answers 42P05) but no server has it:
        # sent with a text that fails where it would, the pooler tells PostgreSQL's error.
        marker = DUPLICATE + ours[len(POOLER_NAME) :]
        return frame(m.PARSE, ours + b"\0" + marker + b"\0\0\0"), text
    if server is not None:
        server[ours] = None
    if new:
        return frame(m.PARSE, ours + b"\0" + rest) + _describe(ours), text
    return frame(m.PARSE, ours + b"\0" + rest), text


def bind_statement(body: bytes) -> bytes:
    """The statement name of a Bind (empty: the unnamed statement)."""
    portal_end = body.find(b"\0")
    return body[portal_end + 1 : body.find(b"\0", portal_end + 1)]


def rewrite_bind(body: bytes, statements: ClientStatements) -> bytes:
    """A client's Bind, naming the pooler's statement."""
    portal_end = body.find(b"\0")
    name_end = body.find(b"\0", portal_end + 1)
    ours = statements.ours(body[portal_end + 1 : name_end])
    if ours is None:
        return frame(m.BIND, body)
    return frame(m.BIND, body[: portal_end + 1] + ours + body[name_end:])


def rewrite_describe_or_close(
    msg_type: int, body: bytes, statements: ClientStatements, errors: int | None
) -> bytes:
    """A client's Describe or Close of a statement, naming the pooler's statement (a
    Close also forgets it; servers that still hold it close it when it is the least
    recently used: pooler names are never reused)."""
    if body[:1] == b"S":
        name = body[1 : body.find(b"\0", 1)]
        ours = statements.close(name, errors) if msg_type == m.CLOSE else statements.ours(name)
        if ours is not None:
            if msg_type != m.CLOSE:
                ours = statements.described_as(ours)
            return frame(msg_type, b"S" + ours + b"\0")
    return frame(msg_type, body)


# Statement kinds whose text names a prepared statement, and the keyword before it.
_NAMING = {
    "utility:PrepareStmt": "PREPARE",
    "utility:ExecuteStmt": "EXECUTE",
    "utility:DeallocateStmt": "DEALLOCATE",
    "explain": "EXECUTE",
    "utility:CreateTableAsStmt": "EXECUTE",
}


def names_statements(classification: Classification) -> bool:
    """Whether a text names SQL prepared statements (PREPARE, EXECUTE, DEALLOCATE)."""
    return bool(classification.depends_on) or any(
        effect.kind is EffectKind.PREPARE
        or (effect.kind is EffectKind.DEALLOCATE and effect.name is not None)
        for effect in classification.session_effects
    )


def rewrite_sql(
    sql: str,
    classification: Classification,
    statements: ClientStatements,
    server: OrderedDict[bytes, None] | None,
    errors: int | None,
) -> str:
    """A statement text naming SQL prepared statements, naming the pooler's instead
    (``server``: the statements of the server it goes to, None while there is none;
    ``errors``: that server's error count). A name the client does not have is left
    as it is, for PostgreSQL to say it does not exist."""
    out: list[str] = []
    done = 0
    for statement in classification.statements:
        keyword = _NAMING.get(statement.kind)
        if keyword is None:
            continue
        text = sql[statement.start : statement.end]
        found = _name_token(text, keyword)
        if found is None:
            continue
        name = _folded(found.text).encode()
        if keyword == "PREPARE":
            parts = (text[: found.start], found.text, text[found.end :])
            ours = statements.prepare(name, parts, statement.start, server is None)
            if server is not None:
                server[ours] = None
        elif keyword == "EXECUTE":
            ours_or_none = statements.ours(name)
            if ours_or_none is None:
                continue
            ours = ours_or_none
        else:
            closed = statements.close(name, errors)
            if closed is None:
                continue
            ours = closed
        start = statement.start + found.start
        out.append(sql[done:start])
        out.append(ours.decode())
        done = statement.start + found.end
    out.append(sql[done:])
    return "".join(out)


def _name_token(text: str, keyword: str) -> Token | None:
    """The statement name after ``keyword`` in one statement's text (DEALLOCATE's
    optional PREPARE skipped); None for DEALLOCATE ALL."""
    words = [token for token in tokens(text) if token.kind is not TokenKind.COMMENT]
    for i, token in enumerate(words[:-1]):
        if token.kind is TokenKind.KEYWORD and token.text.upper() == keyword:
            found = words[i + 1]
            if keyword == "DEALLOCATE" and found.text.upper() == "PREPARE" and i + 2 < len(words):
                found = words[i + 2]
            if keyword == "DEALLOCATE" and found.text.upper() == "ALL":
                return None
            return found
    return None


def _folded(name: str) -> str:
    """A name as PostgreSQL takes it: folded to lower case unless quoted."""
    if name.startswith('"'):
        return name[1:-1].replace('""', '"')
    return name.lower()
