"""What to do with a logged-in client's bytes: forward them, hold them until a server is
assigned, or end the session as PostgreSQL would have ended it.

PostgreSQL reads a client's messages one by one and answers each in turn, so how a
session ends depends on what is still in flight. When the server owes nothing, the
pooler can answer an ending itself (a Terminate closes; an unknown message type gets
FATAL 08P01; a length out of range closes without a word). When it owes answers, only
the server knows what it would still have sent (answers up to the last Sync or Flush,
pending rows, the error of a COPY cut short), so it is handed the same ending and its
answers are relayed until it closes.

In transaction pooling the client has a server only from the first message of a
transaction to the ReadyForQuery that ends it with nothing owed; bytes that arrive in
between are held until the next server is assigned. Query and Parse texts are
classified to see the session state that pins a client to its server, and where the
held requests may run: a unit that only reads (complete up to its Sync or Query, so that
nothing still to come can write in it) may go to a standby. A server that takes no
writes is given nothing more once its unit is sent: the client's next requests wait
until it is done, and go wherever they may run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from parser_api import Classification, Route, TokenKind, tokens
from pooler.engine.actions import Action, Close, HandOver, NeedServer, Reply
from pooler.engine.server import ServerEngine
from pooler.engine.session_state import SessionState
from pooler.engine.settings import ClientSettings, Op, Untracked, alignment, operations
from pooler.engine.statements import (
    ClientStatements,
    bind_statement,
    names_statements,
    rewrite_bind,
    rewrite_describe_or_close,
    rewrite_parse,
    rewrite_sql,
)
from pooler.protocol import messages as m
from pooler.protocol.codec import Event, FramingError, Message, Scanner, frame, joined
from pooler.protocol.outstanding import FUNCTION_CALL, NEUTRAL, TRACKED, UNSYNCED
from pooler.routing.targets import Target, target_of

if TYPE_CHECKING:
    from pooler.admin.port import AdminPort
    from pooler.cache.session import CacheSession

_STOP = frozenset({m.TERMINATE})
_SYNC_BYTES = frame(m.SYNC, b"")
_DESCRIBE_PORTAL = frame(m.DESCRIBE, b"P\0")
_CLOSED_HERE = frame(ord("3"), b"") + m.ready_for_query(b"I")
_TERMINATE = b"X\x00\x00\x00\x04"
# Transaction pooling looks inside these: statement texts to classify, statement names
# to rewrite, and the requests owed a ReadyForQuery, to number those that set something.
_OWING = frozenset({m.QUERY, m.SYNC, FUNCTION_CALL})
_POOLED = frozenset({m.PARSE, m.BIND, m.DESCRIBE, m.CLOSE}) | _OWING

# A Parse that first names a statement: the name, the pooler's name for it, its place
# among the Parses of its request, and whether a Describe of it was added
# (``rewrite_parse``'s ``first``).
ParseCheck = tuple[bytes, bytes, int, bool]

#: Classifies a statement text; None when it does not parse (PostgreSQL will say why).
Classify = Callable[[str], Classification | None]
#: Where a classified text may run (``routing.targets.target_of``, or stricter).
TargetOf = Callable[[Classification | None, str], Target]

_NEED = {target: NeedServer(target) for target in Target}
# A unit may leave the primary only if it ends here (nothing more of it to come) ...
_UNIT_ENDS = frozenset({m.QUERY, m.SYNC})
# Extended-protocol messages that leave a batch open until its Sync.
_BATCH = frozenset(b"PBDCE")
_FLUSH = ord("H")
_ESCAPES = "standard_conforming_strings off"
_DISCARD_SEQUENCES = "DISCARD SEQUENCES"
_IDLE_TIMEOUT = "idle_in_transaction_session_timeout"
# What held messages did to the unnamed statement (``_held_unnamed``).
_PARSED, _DROPPED = 1, 2
# pg_catalog.set_config's OID (pg_proc.dat), as a FunctionCall names it.
_SET_CONFIG = (2078).to_bytes(4, "big")
_S = ord("S")
_NOT_WHOLE, _WHOLE, _RETRYABLE = range(3)


class ClientEngine:
    """One client's stream after login."""

    __slots__ = (
        "_admin",
        "_beginners",
        "_begins",
        "_classified_last",
        "_classify",
        "_deferred",
        "_deferred_read_only",
        "_ending",
        "_held",
        "_held_ops",
        "_held_owing",
        "_held_unnamed",
        "_may_write",
        "_needs_unnamed",
        "_ops",
        "_parse_check",
        "_quiet",
        "_retry",
        "_retryable",
        "_seg_parses",
        "_target",
        "_target_of",
        "_targets",
        "_unnamed",
        "_unnamed_begins",
        "_unnamed_writes",
        "_writers",
        "admin_wait",
        "cache",
        "defer_begin",
        "ended",
        "refusal",
        "scanner",
        "server",
        "session",
        "settings",
        "statement_ops",
        "statements",
        "writable",
    )

    def __init__(
        self,
        limits: Mapping[int, int],
        classify: Classify | None = None,
        target_of: TargetOf = target_of,
        admin: AdminPort | None = None,
    ) -> None:
        split = _POOLED if classify is not None else frozenset()
        # The pooler's own commands (pooler.admin), answered here rather than forwarded.
        self._admin = admin
        #: The bytes from an admin command on, while it waits for its turn (what came
        #: before it still owed) or for the rest of its batch; None otherwise.
        self.admin_wait: bytearray | None = None
        if admin is not None:
            split = joined(split, admin.types)
        self.scanner = Scanner(
            split=split,
            limits=limits,
            track=TRACKED,
            stop=_STOP,
            transparent=NEUTRAL,
            divert=admin.claims if admin is not None else None,
            divert_types=admin.types if admin is not None else None,
        )
        self._classify = classify
        # The text ``_defer`` classified and its classification, for the ``_pooled``
        # that follows at once (classifying a text never seen costs a parse).
        self._classified_last: tuple[bytes, Classification | None] | None = None
        self._target_of = target_of
        #: The server this client's requests go to, while it has one.
        self.server: ServerEngine | None = None
        #: What the session holds that pins it to its server (transaction pooling).
        self.session = SessionState()
        #: The stream ended (Terminate, bad framing, end of input): nothing more is read.
        self.ended = False
        #: Its named prepared statements, carried from server to server.
        self.statements = ClientStatements()
        #: Its settings, carried from server to server.
        self.settings = ClientSettings()
        # What the last text classified sets (see pooler.engine.settings); for a Parse,
        # kept by statement name until a Bind runs it.
        self._ops: Sequence[Op] = ()
        self.statement_ops: dict[bytes, Sequence[Op]] | None = None
        # Held requests owed a ReadyForQuery, and what those that set something set
        # (numbered among them; the next server numbers them its way).
        self._held_owing = 0
        self._held_ops: list[tuple[int, Sequence[Op], ParseCheck | None]] | None = None
        # A Parse that first names a statement, and its place among the Parses of its
        # request (counted in ``_seg_parses``): confirmed by the server's answers.
        self._parse_check: ParseCheck | None = None
        self._seg_parses = 0
        self._quiet = False
        # Bytes waiting for a server, and the ending that came after them.
        self._held: list[bytes] = []
        # What the held messages did to the unnamed statement (_PARSED, _DROPPED, None:
        # nothing), and whether one of them uses it before that (then the next server
        # must have the client's: ``ClientStatements.unnamed_prelude``).
        self._held_unnamed: int | None = None
        self._needs_unnamed = False
        self._ending: tuple[bytes, bytes] | None = None
        #: The server it has takes writes (False: a standby serving a read-only unit).
        self.writable = True
        # Where the held requests, and those run on the server it has, may run: the
        # strictest target among them.
        self._target = Target.ANY
        # Where each named statement, and the unnamed one, may run.
        self._targets: dict[bytes, Target] = {}
        self._unnamed = Target.PRIMARY
        # What ran (or is held) since the server was taken may write data, so that the
        # client's next reads must see it (a SET, or a read kept on the primary, need
        # not); and which of its statements may (None: none named yet).
        self._may_write = False
        self._writers: set[bytes] | None = None
        self._unnamed_writes = True
        # Which of its statements start a transaction (BEGIN READ ONLY prepared by a
        # driver): a Bind of one held starts the transaction where it runs, as a Query does.
        self._beginners: set[bytes] | None = None
        self._unnamed_begins = False
        #: Answer a lone BEGIN here and send it with the transaction's first statement,
        #: which then places the transaction (routing).
        self.defer_begin = False
        # A lone BEGIN (and SET TRANSACTION after it) the pooler answered, to send first;
        # whether the transaction they start may run on a standby.
        self._deferred: list[bytes] = []
        self._deferred_read_only = False
        # The held requests may be sent again as they are (see ``_whole_units``).
        self._retryable = False
        # The held requests start a transaction: it stays on the server they get.
        self._begins = False
        # What went to a probing standby, and the request types it was counted for.
        self._retry: tuple[list[bytes], list[int], bool, int | None] | None = None
        #: Set by ``detach`` when the server refused what it was sent and it is held
        #: again for the primary: the SQLSTATE of the refusal and the text of the
        #: unit's first statement.
        self.refusal: tuple[str, str] | None = None
        #: The query cache, when it is on (transaction pooling only).
        self.cache: CacheSession | None = None

    @property
    def pooling(self) -> bool:
        """Transaction pooling: the server changes between transactions."""
        return self._classify is not None

    def feed(self, data: bytes) -> bytes | list[bytes | Action]:
        """Take the client's bytes: what to forward to the server, in order, and at most
        one action at the end (``NeedServer`` when there is none to forward to).

        Returns the input itself when all of it is to be forwarded (the common case).
        """
        if self.admin_wait is not None:
            self.admin_wait += data
            return self.admin_turn()
        events = self.scanner.feed(data)
        if self.scanner.diverted:
            assert isinstance(events, list)  # the diverted message is its last event
            return self._admin_unit(events)
        return self._forward(events)

    def _forward(self, events: bytes | list[Event]) -> bytes | list[bytes | Action]:
        scanner = self.scanner
        server = self.server
        if server is None:
            return self._hold(events)
        if not self.writable and (self._held or not _ends_at_once(events)):
            # Its next requests wait for this standby to finish.
            return self._hold(events)
        cache = self.cache
        if cache is not None and cache.reading:
            hit = self._cached_in_transaction(cache, events, server)
            if hit is not None:
                return [hit]
        # _tell, written out: this runs once per read of every client.
        requests = server.requests
        # A Parse that starts what the server is sent while it owes nothing: the number
        # of the request that answers it is sure (a Sync that follows a COPY's start is
        # ignored by PostgreSQL, which an earlier count could not know).
        self._quiet = (
            not requests.owed
            and not requests.unsynced
            and type(events) is list
            and bool(events)
            and type(events[0]) is Message
            and events[0].type == m.PARSE
        )
        if scanner.tracked:
            if FUNCTION_CALL in scanner.tracked:
                # It may write: what it runs is not known.
                self._may_write = True
                if self.cache is not None:
                    self.cache.function_called()
            requests.sent(scanner.tracked)
            scanner.tracked.clear()
        requests.unsynced = scanner.last_type in UNSYNCED
        if isinstance(events, bytes):
            return events
        out: list[bytes | Action] = []
        for i, event in enumerate(events):
            if type(event) is bytes:
                out.append(event)
            elif type(event) is Message and event.type != m.TERMINATE:
                out.append(self._pooled(event, server))
                if self._ops or self._parse_check is not None:
                    self._record(server, events, i, event.type)
            else:
                to_server, reply = _ending_of(event)  # type: ignore[arg-type]
                out.append(self._end(server, to_server, reply))
        return out

    def _cached_in_transaction(
        self, cache: CacheSession, events: bytes | list[Event], server: ServerEngine
    ) -> Reply | None:
        """A request inside a read-only transaction the cache serves: the cached answer
        when the server owes nothing, the transaction has not failed and nothing pins
        the client (SET ROLE, a temporary table); else None, and it goes to the server."""
        if (
            server.status != b"T"
            or not server.requests.idle()
            or self.session.pins
            or self.scanner.mid_message()
        ):
            return None
        hit = cache.lookup(events, True, True, server)
        if hit is not None:
            # Answered here: the server owes nothing for it.
            self.scanner.tracked.clear()
        return hit

    def _record(self, server: ServerEngine, events: list[Event], i: int, t: int) -> None:
        """The message ``events[i]`` (a Query, a Bind of a statement that sets
        something, a Parse that first names a statement) was forwarded: note what it
        does under the number of the request that will answer it."""
        later = sum(
            1 for event in events[i + 1 :] if type(event) is Message and event.type in _OWING
        )
        requests = server.requests
        number = requests.answered + requests.owed - later + (t != m.QUERY)
        self._note(number, self._ops, self._parse_check)
        self._ops = ()
        self._parse_check = None
        server.watch()

    def _note(self, number: int, ops: Sequence[Op], parse: ParseCheck | None) -> None:
        if ops:
            self.settings.record(number, ops)
        if parse is not None:
            name, ours, index, described = parse
            self.statements.parsed(number, index, name, ours)
            if described and self.server is not None:
                # rewrite_parse added a Describe after it.
                self.server.keep_description(number, ours, self.statements)

    def _admin_unit(self, events: list[Event]) -> list[bytes | Action]:
        """The scanner stopped at an admin command: what came before it goes its way,
        and the command is answered once nothing before it is owed."""
        command = events.pop()
        assert type(command) is Message
        self.admin_wait = bytearray(command.raw() + self.scanner.take_rest())
        before = self._forward(events) if events else []
        out: list[bytes | Action] = [before] if isinstance(before, bytes) else before
        out.extend(self.admin_turn())
        return out

    @property
    def transaction_status(self) -> bytes:
        """The client's transaction status, as its next ReadyForQuery says it."""
        if self.server is not None:
            return self.server.status
        # A lone BEGIN the pooler answered opened a transaction.
        return b"T" if self._deferred else b"I"

    def admin_turn(self) -> list[bytes | Action]:
        """Answer the admin command waiting, once no server owes answers to what came
        before it and nothing is held: its answer (ending in ReadyForQuery with this
        client's transaction status), then whatever followed it, scanned as usual."""
        wait = self.admin_wait
        server = self.server
        if wait is None or self._held or (server is not None and not server.requests.idle()):
            return []
        assert self._admin is not None
        reply, rest = self._admin.answer(wait, self.transaction_status)
        out: list[bytes | Action] = [Reply(reply)] if reply else []
        if rest is None:
            # An extended batch goes on until its Sync (what it took is gone from wait).
            return out
        self.admin_wait = None
        if rest:
            more = self.feed(rest)
            if isinstance(more, bytes):
                out.append(more)
            else:
                out.extend(more)
        return out

    def _tell(self, server: ServerEngine) -> None:
        """Tell the server's queue what was scanned for it since the last time."""
        scanner = self.scanner
        requests = server.requests
        if scanner.tracked:
            if FUNCTION_CALL in scanner.tracked:
                # It may write: what it runs is not known.
                self._may_write = True
                if self.cache is not None:
                    self.cache.function_called()
            requests.sent(scanner.tracked)
            scanner.tracked.clear()
        requests.unsynced = scanner.last_type in UNSYNCED

    def _pooled(self, msg: Message, server: ServerEngine | None) -> bytes:
        """A message transaction pooling looks inside: classify its text, rename its
        statement; the bytes to forward."""
        t = msg.type
        body = msg.body
        if self._classify is None:
            # Session mode splits messages only for the admin port to look at.
            return frame(t, body)
        if t == m.QUERY:
            # PostgreSQL drops the unnamed statement at every simple Query.
            self._unnamed_dropped(server)
            target, rewritten, _, _ = self._classified(body[:-1], server, rewrite=True)
            if target > self._target:
                self._target = target
            self._seg_parses = 0
            return m.query(rewritten) if rewritten is not None else frame(t, body)
        if t == m.SYNC:
            self._seg_parses = 0
            return _SYNC_BYTES
        if t in _OWING:
            if t == FUNCTION_CALL and body[:4] == _SET_CONFIG:
                # A setting changed where no text shows which, or whether for the
                # session (pg_catalog.set_config called by the protocol's fast path).
                self.session.pin("set", "set_config by FunctionCall")
            return frame(t, body)
        if t == m.PARSE:
            name = body[: body.find(b"\0")]
            known = self.statements.ours(name) is not None
            index = self._seg_parses
            self._seg_parses = index + 1
            # Its result type is asked for only where its answers can be told apart
            # for sure: it is the first message of what the server is sent.
            first = index == 0 and (self._quiet if server is not None else not self._held)
            self._quiet = False
            raw, text = rewrite_parse(
                body, self.statements, server.prepared if server is not None else None, first
            )
            if name and not known:
                # A statement exists only once the server said ParseComplete.
                ours = self.statements.ours(name)
                assert ours is not None
                self._parse_check = (name, ours, index, first)
            target, _, writes, begins = self._classified(text, server)
            if not name:
                self._unnamed_writes = writes
                self._unnamed_begins = begins
                number = self.statements.parsed_unnamed(body)
                if server is not None:
                    server.unnamed = number
                else:
                    self._held_unnamed = _PARSED
            else:
                self._writers = _noted(self._writers, name, writes, known)
                self._beginners = _noted(self._beginners, name, begins, known)
            if self._ops:
                # It sets something each time a Bind runs it.
                if self.statement_ops is None:
                    self.statement_ops = {}
                self.statement_ops[name] = self._ops
                self._ops = ()
            elif self.statement_ops:
                self.statement_ops.pop(name, None)
            if self.cache is not None:
                self.cache.parsed(name, body[len(name) + 1 :])
            if not name:
                self._unnamed = target
            elif known:
                # A Parse of a name in use fails (42P05): it may keep the old text.
                self._targets[name] = max(target, self._targets.get(name, Target.PRIMARY))
            else:
                self._targets[name] = target
            if target > self._target:
                self._target = target
            return raw
        if t == m.BIND:
            name = bind_statement(body)
            if not name and server is None and self._held_unnamed is None:
                self._needs_unnamed = True
            target = self._targets.get(name, Target.PRIMARY) if name else self._unnamed
            if self._unnamed_writes if not name else _has(self._writers, name):
                self._may_write = True
            begins = self._unnamed_begins if not name else _has(self._beginners, name)
            if begins and server is None:
                self._begins = True
            if self.cache is not None:
                self.cache.bound(name)
            if target > self._target:
                self._target = target
            if self.statement_ops:
                self._ops = self.statement_ops.get(name, ())
            return rewrite_bind(body, self.statements)
        if body == b"P\0" and t == m.DESCRIBE:
            # The unnamed portal (every Execute of pgbench and most drivers): as it came.
            return _DESCRIBE_PORTAL
        if body == b"S\0":
            if t == m.CLOSE:
                self._unnamed_dropped(server)
            elif server is None and self._held_unnamed is None:
                self._needs_unnamed = True
        errors = server.errors if server is not None else None
        if self.cache is not None and t == m.CLOSE and body[:1] == b"S":
            self.cache.closed(body[1:-1])
        return rewrite_describe_or_close(t, body, self.statements, errors)

    def _unnamed_dropped(self, server: ServerEngine | None) -> None:
        self.statements.dropped_unnamed()
        if server is not None:
            server.unnamed = 0
        else:
            self._held_unnamed = _DROPPED

    def _classified(
        self, text: bytes, server: ServerEngine | None, rewrite: bool = False
    ) -> tuple[Target, str | None, bool, bool]:
        """Note the session state a statement text leaves; where it may run, (with
        ``rewrite``) the text to send instead, naming the pooler's prepared statements,
        where it names the client's, whether it may write data and whether it has
        transaction control."""
        classify = self._classify
        assert classify is not None
        sql = text.decode("utf-8", "replace")
        last = self._classified_last
        classification = last[1] if last is not None and last[0] == text else classify(sql)
        self._classified_last = None
        if self.cache is not None:
            self.cache.classified(classification, text)
        if classification is None:
            self._may_write = True
            return Target.PRIMARY, None, True, False
        writes = classification.route is Route.WRITE
        if writes:
            self._may_write = True
        if server is None and classification.transaction:
            self._begins = True
        errors = server.errors if server is not None else 0
        if self.session.statement(classification, errors, sql):
            # Forgotten once it is known to have run (in a transaction block, DISCARD
            # ALL fails and drops nothing).
            self.statements.drop_all(server.errors if server is not None else None)
        if classification.session_effects or (
            classification.transaction and (self.settings.pending or self._held_ops)
        ):
            try:
                self._ops = operations(sql, classification, classify)
            except Untracked:
                self.session.pin("set", sql)
        rewritten = None
        if (
            rewrite
            and (classification.depends_on or classification.session_effects)
            and names_statements(classification)
        ):
            if "\ufffd" in sql:
                # Not UTF-8 (or not as sent): rewritten, it would not be the same text.
                self.session.pin("prepare", sql)
                return (
                    self._target_of(classification, sql),
                    None,
                    writes,
                    bool(classification.transaction),
                )
            rewritten = rewrite_sql(
                sql,
                classification,
                self.statements,
                server.prepared if server is not None else None,
                server.errors if server is not None else None,
            )
        return self._target_of(classification, sql), rewritten, writes, bool(
            classification.transaction
        )

    def _hold(self, events: bytes | list[Event]) -> list[bytes | Action]:
        cache = self.cache
        if cache is not None:
            # (After a BEGIN the pooler answered: inside that transaction.)
            idle = self.server is None and not self._held and not self.scanner.mid_message()
            hit = cache.lookup(events, idle, bool(self._deferred))
            if hit is not None:
                # Answered here: no server owes anything for it.
                self.scanner.tracked.clear()
                return [hit]
        if (
            self.defer_begin
            and self.server is None
            and not self._held
            and _IDLE_TIMEOUT not in self.settings.committed
        ):
            # (A client that set idle_in_transaction_session_timeout counts on a server
            # being idle in its transaction from its BEGIN on.)
            reply = self._defer(events)
            if reply is not None:
                return [reply]
        if (
            type(events) is list
            and len(events) == 2
            and self.server is None
            and not self._held
            and not self._deferred
            and not self.scanner.mid_message()
        ):
            closed = self._closed_here(events)
            if closed is not None:
                return [closed]
        if isinstance(events, bytes):
            self._held.append(events)
        else:
            for event in events:
                if type(event) is bytes:
                    self._held.append(event)
                elif type(event) is Message and event.type != m.TERMINATE:
                    t = event.type
                    self._held.append(self._pooled(event, None))
                    if t in _OWING:
                        self._held_owing += 1
                    if self._ops or self._parse_check is not None:
                        if self._held_ops is None:
                            self._held_ops = []
                        number = self._held_owing + (t != m.QUERY)
                        self._held_ops.append((number, self._ops, self._parse_check))
                        self._ops = ()
                        self._parse_check = None
                else:
                    self._ending = _ending_of(event)  # type: ignore[arg-type]
                    self.ended = True
        if self._held:
            return [self.need()]
        if self._ending is not None:
            return [Close(self._ending[1])]
        return []

    def _closed_here(self, events: list[Event]) -> Reply | None:
        """A Close and its Sync, all there is, while the client has no server (so no
        transaction, and no portal: a WITH HOLD cursor pins its server): answered here as
        PostgreSQL answers it, with no server taken for it. A statement closed is
        forgotten at once; the servers that prepared it close it when it is their least
        recently used (pooler names are never reused)."""
        close, sync = events
        if (
            type(close) is not Message
            or close.type != m.CLOSE
            or type(sync) is not Message
            or sync.type != m.SYNC
        ):
            return None
        body = close.body
        if body[:1] not in (b"S", b"P") or body.find(b"\0") != len(body) - 1:
            # PostgreSQL's own error for a malformed Close.
            return None
        if body[:1] == b"S":
            name = body[1:-1]
            self.statements.forget(name)
            if not name:
                self.statements.dropped_unnamed()
            if self.statement_ops:
                self.statement_ops.pop(name, None)
            if self.cache is not None:
                self.cache.closed(name)
        self.scanner.tracked.clear()
        self._seg_parses = 0
        return Reply(_CLOSED_HERE)

    def _defer(self, events: bytes | list[Event]) -> Reply | None:
        """A lone BEGIN (or, after one, SET TRANSACTION) in a Query, all there is: the
        pooler's answer, the Query kept for the transaction's first statement."""
        if type(events) is not list or len(events) != 1 or self.scanner.mid_message():
            return None
        msg = events[0]
        if type(msg) is not Message or msg.type != m.QUERY:
            return None
        assert self._classify is not None
        text = msg.body[:-1]
        sql = text.decode("utf-8", "replace")
        classification = self._classify(sql)
        self._classified_last = (text, classification)
        if (
            classification is None
            or len(classification.statements) != 1
            or len(classification.transaction) != 1
        ):
            return None
        control = classification.transaction[0]
        if control.action == "begin" and not self._deferred:
            tag = _begin_tag(sql)
            self._deferred_read_only = False
        elif control.action == "set" and self._deferred:
            tag = b"SET"
        else:
            return None
        if control.read_only is not None:
            self._deferred_read_only = control.read_only
        if control.isolation == "serializable":
            # Hot standbys refuse serializable transactions.
            self._deferred_read_only = False
        if self.cache is not None:
            self.cache.transaction_control(classification)
        self._deferred.append(frame(m.QUERY, msg.body))
        self._unnamed_dropped(None)
        self._classified_last = None
        # It is answered here: no server owes anything for it.
        self.scanner.tracked.clear()
        return Reply(m.command_complete(tag) + m.ready_for_query(b"T"))

    def need(self) -> NeedServer:
        """What the held requests need: a server where all of them may run."""
        target = self._target
        scanner = self.scanner
        self._retryable = False
        if (self._deferred and not self._deferred_read_only) or self.settings.unsafe:
            # Nothing says the transaction will not write; or the client's settings
            # would have a standby refuse it.
            target = self._target = Target.PRIMARY
        if target is Target.PRIMARY:
            return _NEED[target]
        units = _NOT_WHOLE
        if scanner.last_type in _UNIT_ENDS and not scanner.mid_message():
            # (A message begun is counted for the server that gets it: it must take
            # the rest too.)
            units = _whole_units(self._held)
        if units == _NOT_WHOLE:
            # Part of the unit is still to come, and it may write.
            target = self._target = Target.PRIMARY
        self._retryable = units == _RETRYABLE
        return _NEED[target]

    def search_path_changed(self) -> None:
        """PostgreSQL plans its statements again under the new search_path, where names
        may stand for other objects than when they were classified: each named statement
        is classified again (the client's catalog follows the path already); the
        unnamed one, whose text is not kept, and those of SQL PREPARE run on the primary
        and count as writes until parsed again."""
        classify = self._classify
        assert classify is not None
        for name in self._targets:
            text = self.statements.text(name)
            sql = text.decode("utf-8", "replace") if text is not None else None
            classification = classify(sql) if sql is not None else None
            if sql is None or classification is None:
                target, writes = Target.PRIMARY, True
            else:
                target = self._target_of(classification, sql)
                writes = classification.route is Route.WRITE
            self._targets[name] = target
            self._writers = _noted(self._writers, name, writes, False)
        self._unnamed = Target.PRIMARY
        self._unnamed_writes = True

    def wrote(self) -> bool:
        """What ran on the server it has may have written data (a statement the
        grammar and the catalog call a write, one that does not parse, a function
        call); asked before ``detach``. Settings and reads kept on the primary are not
        writes: the client's next reads need not wait for a standby to replay them."""
        return self._may_write

    def refuse(self, error: bytes) -> bytes | None:
        """No server can take the held requests: the answers PostgreSQL gives requests
        that fail with ``error`` (each Query, FunctionCall and batch up to its Sync its
        error, each Query, FunctionCall and Sync its ReadyForQuery), the requests
        dropped. None, dropping nothing, when that cannot be said: inside a transaction
        (a deferred BEGIN), with the stream ended, or with COPY data or a message cut
        short among them."""
        if self._deferred or self._ending is not None or self.scanner.mid_message():
            return None
        data = b"".join(self._held)
        out: list[bytes] = []
        failed_batch = False
        idle = m.ready_for_query(b"I")
        pos = 0
        while pos < len(data):
            t = data[pos]
            if t in (m.QUERY, FUNCTION_CALL):
                out += (error, idle)
            elif t == m.SYNC:
                out.append(idle)
                failed_batch = False
            elif t in _BATCH:
                if not failed_batch:
                    out.append(error)
                    failed_batch = True
            elif t != _FLUSH:
                return None
            pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        self._held.clear()
        self.scanner.tracked.clear()
        self._held_owing = 0
        self._held_ops = None
        self._target = Target.ANY
        self._retryable = False
        self._begins = False
        return b"".join(out)

    def waiting(self) -> bool:
        """Requests are held for the next server."""
        return bool(self._held) or self._ending is not None

    def attach(self, server: ServerEngine, writable: bool = True) -> list[bytes | Action]:
        """A server was assigned (``writable``: it takes writes): what to send it now
        (the held bytes), and the held ending if the stream ended meanwhile."""
        self.server = server
        server.statements = self.statements
        primary = writable
        if self._begins:
            # A read-only transaction on a standby: it runs there to its end (a write
            # in it gets PostgreSQL's own read-only error there).
            self._begins = False
            writable = True
        self.writable = writable
        if self.cache is not None:
            self.cache.attached(server, primary, bool(self._deferred))
        if not writable and self._retryable and self._ending is None and not self._deferred:
            # A standby may refuse a read the catalog could not foresee: then it runs
            # again on the primary, as it was sent.
            self._retry = (
                list(self._held),
                list(self.scanner.tracked),
                self._needs_unnamed,
                self._held_unnamed,
            )
            server.probe()
        out: list[bytes | Action] = []
        # The server is brought to the client's settings first, then given the
        # statements this client has and it lacks, then a deferred BEGIN; the client
        # has had their answers.
        aligning = self._alignment(server)
        prelude, parsed, checks = self.statements.prelude(server.prepared)
        deferred = self._deferred
        unnamed = self._unnamed_prelude(server, bool(aligning), bool(deferred))
        if aligning or prelude or deferred or unnamed:
            if aligning:
                out.append(m.query(aligning))
                server.settings = dict(self.settings.committed)
            out.append(unnamed + prelude)
            out.extend(deferred)
            known = (checks, self.statements) if checks else None
            synced = [b"", *parsed] if unnamed else parsed
            server.prelude_sent(synced, len(deferred), bool(aligning), known)
        if self._held_ops:
            requests = server.requests
            base = requests.answered + requests.owed
            for number, ops, parse in self._held_ops:
                self._note(base + number, ops, parse)
            self._held_ops = None
            server.watch()
        self._held_owing = 0
        if deferred:
            # The transaction stays where it started, and a write in a read-only one
            # gets PostgreSQL's own error there.
            self.writable = True
            self._retryable = False
            self._deferred = []
        self.statements.sent_to(server.errors)
        self._tell(server)
        if parsed and self._ending is None:
            # A statement parsed again may have changed result type, or no longer
            # parse: the requests wait for the prelude's answers (once per statement
            # and server).
            server.holding = (b"".join(self._held), self.statements)
        else:
            out.extend(self._held)
        self._held.clear()
        if self._ending is not None:
            to_server, reply = self._ending
            self._ending = None
            out.append(self._end(server, to_server, reply))
        return out

    def _unnamed_prelude(self, server: ServerEngine, aligning: bool, deferred: bool) -> bytes:
        """What gives ``server`` the client's unnamed statement (or drops another's)
        when the held requests use it before making their own (b"": nothing); the
        server's unnamed statement as it will be once they ran, noted."""
        statements = self.statements
        has = 0 if aligning else server.unnamed  # (a simple Query drops it)
        unnamed = b""
        if self._needs_unnamed and not deferred:
            unnamed = statements.unnamed_prelude(has)
            has = statements.unnamed_id
        if deferred or self._held_unnamed == _DROPPED:
            has = 0
        elif self._held_unnamed == _PARSED:
            has = statements.unnamed_id
        server.unnamed = has
        self._held_unnamed = None
        self._needs_unnamed = False
        return unnamed

    def _alignment(self, server: ServerEngine) -> str:
        """The statements that give ``server`` this client's settings, and rid it of
        another client's sequence state ("": none)."""
        settings = self.settings
        text = ""
        if self.pooling and (
            settings.committed
            or server.settings
            or settings.reported is not None
            or server.params_changed
        ):
            reported = settings.reported if settings.reported is not None else server.login_params
            text = alignment(
                settings.committed, server.settings, reported, server.params, server.login_params
            )
        sequences = server.sequences
        if self.pooling and sequences is not None and sequences is not self.statements:
            # currval and lastval as another client's writes left them: in a session of
            # this client's own, they are not yet defined (55000).
            server.sequences = None
            return f"{text}; {_DISCARD_SEQUENCES}" if text else _DISCARD_SEQUENCES
        return text

    def detach(self, lost: bool = False) -> bool:
        """Give the server up (at the end of a transaction, or of the session; ``lost``:
        its connection died). True when what it was sent is held again for the primary:
        a standby refused it, or died, before any answer reached the client."""
        server = self.server
        self.server = None
        self.refusal = None
        if self.cache is not None:
            self.cache.detached()
        again = False
        if server is not None:
            server.statements = None
            self.statements.server_left()
            if self._may_write:
                # (A write may call nextval, by a column default as well.)
                server.sequences = self.statements
            retry = self._retry
            if retry is not None and (
                server.refused is not None or (lost and server.probing and not self.ended)
            ):
                held, tracked, needs_unnamed, held_unnamed = retry
                self._held[:0] = held
                self.scanner.tracked[:0] = tracked
                # What they do to the unnamed statement comes before what came since.
                self._needs_unnamed = needs_unnamed or (
                    held_unnamed is None and self._needs_unnamed
                )
                if self._held_unnamed is None:
                    self._held_unnamed = held_unnamed
                owing = sum(1 for t in tracked if t in _OWING)
                self._held_owing += owing
                if self._held_ops:
                    self._held_ops = [(n + owing, ops, p) for n, ops, p in self._held_ops]
                self._target = Target.PRIMARY
                if server.refused is not None:
                    self.refusal = (server.refused, _first_text(held))
                again = True
            server.probing = False
            server.refused = None
        self._retry = None
        if not self._held:
            # Held requests keep their target; the next server must suit them too.
            self._target = Target.ANY
            self._may_write = False
        return again

    def releasable(self) -> bool:
        """Transaction pooling: the server may go back to its pool now (idle outside a
        transaction, owing nothing, no message half forwarded, nothing pinned)."""
        server = self.server
        if server is None or not server.idle():
            return False
        if self.ended and not self.waiting():
            return False
        settings = self.settings
        if server.marks is not None:
            marks = server.unwatch()
            if settings.pending and not settings.settle(marks):
                # What committed is not known: the server knows, and keeps the client.
                self.session.pin("set")
            for ours in self.statements.confirm(marks):
                server.prepared.pop(ours, None)
        if self.statements.settled(server.errors):
            server.prepared.clear()
        if server.alignment_failed:
            server.alignment_failed = False
            self.session.pin("settings not made again")
        # (Also a standby's: a read-only transaction there may set something.)
        if settings.committed or server.settings:
            server.settings = dict(settings.committed)
        if server.params_changed:
            settings.reported = dict(server.params)
        session = self.session
        escapes = server.params.get("standard_conforming_strings") == "off"
        if escapes and _ESCAPES not in session.pins:
            # Backslashes escape in its string literals, which the grammar reads as if
            # they did not: what its texts set or pin cannot be told from them.
            session.pin(_ESCAPES)
        # A standby's requests leave no state (what would is the primary's): pins are
        # those of requests held behind it, for the next server.
        if session.pins and self.writable:
            session.settled(server.errors)
            if session.pins:
                return False
        # A message cut short went to the server, unless held (then all that came
        # after the hold began is held too).
        return not self.scanner.passed_partial() or bool(self._held)

    def eof(self) -> Action:
        """The client closed its side: PostgreSQL still answers what it had read."""
        self.ended = True
        server = self.server
        if server is None:
            if self._held:
                self._ending = (b"", b"")
                return self.need()
            return Close(b"")
        if self._held:
            # Held behind a standby's answers: they go, with the ending, to the next.
            self._ending = (b"", b"")
            return self.need()
        return self._end(server, b"", b"")

    def _end(self, server: ServerEngine, to_server: bytes, reply: bytes) -> Action:
        self.ended = True
        if server.probing:
            # Nothing will be sent again: the client gets what the standby says.
            server.let_go()
            self._retry = None
        if server.requests.idle():
            return Close(reply)
        return HandOver(to_server)

    def partial(self) -> bool:
        """Part of a message was forwarded and the rest never came."""
        return self.scanner.passed_partial()


def _has(names: set[bytes] | None, name: bytes) -> bool:
    return names is not None and name in names


def _noted(names: set[bytes] | None, name: bytes, member: bool, known: bool) -> set[bytes] | None:
    """``names`` with ``name`` in it when ``member``, out of it when not (unless
    ``known``: a Parse of a name in use fails, and the old text stays); made on first
    use (most clients name no such statement)."""
    if member:
        if names is None:
            names = set()
        names.add(name)
    elif names and not known:
        names.discard(name)
    return names


def _whole_units(held: list[bytes]) -> int:
    """``_WHOLE`` when the held messages are simple queries and extended batches each
    closed by its Sync before the next query, and nothing else (no function call, no
    COPY data); ``_RETRYABLE`` when they also name no statement of their own (they may
    be sent again elsewhere as they are); ``_NOT_WHOLE`` otherwise.

    Only such units are sure to end in as many ReadyForQuery messages as they are
    counted to owe: after an error in a batch PostgreSQL skips to the Sync, so a Query
    inside an unsynced batch may never be answered. A server that owes more than it
    will answer stays busy, and a client waiting for a standby to finish would wait
    forever.
    """
    data = held[0] if len(held) == 1 else b"".join(held)
    pos = 0
    in_batch = False
    result = _RETRYABLE
    end = len(data)
    while pos < end:
        t = data[pos]
        if t == m.QUERY:
            if in_batch:
                return _NOT_WHOLE
        elif t == m.SYNC:
            in_batch = False
        elif t in _BATCH:
            in_batch = True
            if (t == m.PARSE and data[pos + 5]) or (t == m.CLOSE and data[pos + 5] == _S):
                # A statement made or dropped: sent twice, it would fail the second time.
                result = _WHOLE
        elif t != _FLUSH:
            return _NOT_WHOLE
        pos += 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    return result


def _first_text(held: list[bytes]) -> str:
    """The text of the first Query or Parse among held messages."""
    data = b"".join(held)
    pos = 0
    while pos < len(data):
        t = data[pos]
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        body = data[pos + 5 : end]
        if t == m.QUERY:
            return body[:-1].decode("utf-8", "replace")
        if t == m.PARSE:
            rest = body[body.find(b"\0") + 1 :]
            return rest[: rest.find(b"\0")].decode("utf-8", "replace")
        pos = end
    return ""


def _begin_tag(sql: str) -> bytes:
    """PostgreSQL's CommandComplete tag for a BEGIN or START TRANSACTION text."""
    for token in tokens(sql):
        if token.kind is not TokenKind.COMMENT:
            return b"START TRANSACTION" if token.text.upper() == "START" else b"BEGIN"
    return b"BEGIN"


def _ends_at_once(events: bytes | list[Event]) -> bool:
    """The bytes are the end of the stream and nothing else: it may end at once."""
    if isinstance(events, bytes) or not events:
        return False
    first = events[0]
    return type(first) is FramingError or (type(first) is Message and first.type == m.TERMINATE)


def _ending_of(event: Message | FramingError) -> tuple[bytes, bytes]:
    """What to hand a server that owes answers, and what to answer when none does."""
    if type(event) is Message:
        return _TERMINATE, b""
    assert isinstance(event, FramingError)
    reply = b""
    if event.fatal_message is not None:
        reply = m.error_response("FATAL", "08P01", event.fatal_message)
    return event.raw, reply
