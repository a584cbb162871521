"""What one logged-in server connection is doing, from the messages it sends.

Fed the server's bytes, it returns them for forwarding untouched and keeps what the
pooler needs to decide on: the transaction status of the last ReadyForQuery, the
requests still owed answers (``Outstanding``), COPY IN, the parameters the server
reports, and whether the reset query the pooler sent succeeded.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping

from pooler.cache.answer import Capture
from pooler.engine.statements import POOLER_NAME, ClientStatements, same_result
from pooler.protocol import messages as m
from pooler.protocol.codec import Event, Message, Scanner, frame
from pooler.protocol.outstanding import Outstanding

# ReadyForQuery status bytes, shared rather than allocated per message.
_STATUS = {code: bytes((code,)) for code in b"IET"}
_IDLE = ord("I")

_OBSERVE = frozenset({m.PARAMETER_STATUS, m.ERROR_RESPONSE, m.COPY_IN_RESPONSE})
# While COPY IN runs, its end (CommandComplete or ErrorResponse) must be seen in order
# with ReadyForQuery rather than ReadyForQuery only counted.
_COPY_OBSERVE = _OBSERVE | {m.COMMAND_COMPLETE, m.READY_FOR_QUERY}
# Watching (``watch``): each ReadyForQuery in order with the errors and ParseCompletes
# before it.
_PARSE_COMPLETE = ord("1")
_WATCH_OBSERVE = _OBSERVE | {m.READY_FOR_QUERY, _PARSE_COMPLETE}
# The prelude entry of the statements that align a server's settings to its client's.
_ALIGNMENT = b"\0settings"
_PAUSE = frozenset({m.COPY_IN_RESPONSE})
# Answers of a statement Describe, and those that may come between any two answers
# (notices, parameter status, notifications).
_PARAMETER_DESCRIPTION = ord("t")
_RESULT_TYPE = frozenset(b"Tn")
_ROW_DESCRIPTION = ord("T")
_ASYNC = frozenset(b"NSA")
_REWRITTEN = frozenset({m.NOTIFICATION_RESPONSE, m.ERROR_RESPONSE})

#: SQLSTATEs with which a hot standby refuses what a primary runs: read-only
#: transaction (nextval in a STABLE function), a feature it lacks, an object state;
#: and its FATALs as it goes away (administrator command, crash, shutdown).
REFUSALS = frozenset({"25006", "0A000", "55000", "57P01", "57P02", "57P03"})
# Answers that come before any result of a request (parse, bind and close complete,
# NoData, parameter and row descriptions, parameter status, notices): held while
# probing, since a refusal may still follow them.
_BEFORE_RESULTS = frozenset(b"123ntTSN")
# What the answers so far show while probing (see ``ServerEngine.probed``).
_RESULT, _REFUSED = 1, 2


class ServerEngine:
    """State of a server connection after login; sans-IO."""

    __slots__ = (
        "_captures",
        "_capturing",
        "_changed",
        "_checks",
        "_errors_at_reset",
        "_failed",
        "_held_back",
        "_idle_observe",
        "_let_go",
        "_prelude",
        "_prelude_error",
        "_skipping",
        "_walk_parsed",
        "alignment_failed",
        "capture",
        "error_classes",
        "errors",
        "handed_over",
        "holding",
        "login_params",
        "marks",
        "owners",
        "params",
        "params_changed",
        "parsed",
        "prepared",
        "probing",
        "refused",
        "requests",
        "scanner",
        "send_held",
        "sequences",
        "settings",
        "statements",
        "status",
        "transactions",
        "unnamed",
    )

    def __init__(
        self,
        params: dict[str, str],
        status: bytes,
        owners: Mapping[int, int] | None = None,
        error_classes: Counter[str] | None = None,
    ) -> None:
        #: ParameterStatus values, in the order the server first reported them.
        self.params = params
        #: Those it reported at login.
        self.login_params = dict(params)
        #: A ParameterStatus came since login (``params`` may differ from them).
        self.params_changed = False
        #: Settings made by statements, as ``pooler.engine.settings`` keeps them: what
        #: this server has that a server fresh from login would not.
        self.settings: dict[str, str] = {}
        #: The statements that aligned its settings to its client's failed.
        self.alignment_failed = False
        #: While watched, each ReadyForQuery as (request number, status, errors,
        #: ParseCompletes): see ``pooler.engine.settings.Mark``.
        self.marks: list[tuple[int, bytes, int, int]] | None = None
        #: ParseCompletes of the client's Parses counted while watched.
        self.parsed = 0
        self._idle_observe = _OBSERVE
        #: Transaction status of the last ReadyForQuery.
        self.status = status
        #: What was forwarded to this server and is not answered yet.
        self.requests = Outstanding()
        #: Real server pid -> pid of the client it last served, to rewrite the sender of
        #: notifications (transaction pooling, where clients have the pooler's pids).
        self.owners = owners
        split = _REWRITTEN if owners is not None else frozenset()
        #: The statements of the client attached now (their names in errors).
        self.statements: ClientStatements | None = None
        #: The number of the unnamed statement it has (``ClientStatements.unnamed_id``;
        #: 0: none).
        self.unnamed = 0
        #: Whose writes may have left sequence state here (currval, lastval): the
        #: statements of that client, or None.
        self.sequences: ClientStatements | None = None
        self.scanner = Scanner(split=split, observe=_OBSERVE, ready=True, pause=_PAUSE)
        self._errors_at_reset = 0
        #: ErrorResponses seen since login.
        self.errors = 0
        #: ErrorResponses by SQLSTATE class, shared by the pooler's servers (metrics).
        self.error_classes = error_classes
        #: ReadyForQuery messages back to idle since login: transactions ended.
        self.transactions = 0
        #: The pooler's prepared statements that exist on this server, oldest use first.
        self.prepared: OrderedDict[bytes, None] = OrderedDict()
        # Answers of a prelude the pooler sent, still to be dropped (up to its Sync's
        # ReadyForQuery), as they arrive.
        self._skipping: bytearray | None = None
        self._prelude: list[bytes] = []
        # The error of the prelude's request being answered, and the statements whose
        # Parse failed with theirs.
        self._prelude_error: bytes | None = None
        self._failed: dict[bytes, bytes] = {}
        # The prelude's statements whose result type is known (pooler name -> its
        # RowDescription body) and the client they are of; those found changed.
        self._checks: tuple[dict[bytes, bytes], ClientStatements] | None = None
        self._changed: list[bytes] = []
        #: The client's requests held back until the prelude's answers show which of
        #: its statements changed result type, and its statements; then sent with
        #: ``send_held``, those statements renamed (``ClientStatements.replanned``).
        self.holding: tuple[bytes, ClientStatements] | None = None
        #: Writes to the server (set by the connection carrying this engine out).
        self.send_held: Callable[[bytes], None] | None = None
        # First Parses whose Describe (see ``statements.rewrite_parse``) is answered to
        # the pooler, by the number of their request: the pooler's name and the client's
        # statements; the one whose answers are coming, with its ParameterDescription
        # once seen; whether the request being answered had its ParseComplete.
        self._captures: dict[int, tuple[bytes, ClientStatements]] | None = None
        self._capturing: tuple[bytes, ClientStatements, bytes | None] | None = None
        self._walk_parsed = False
        #: The client's ending was handed to the server, which closes after answering.
        self.handed_over = False
        #: Answers are held back until it is clear the server did not refuse the request
        #: (a standby running a read that may be retried on the primary): see ``probed``.
        self.probing = False
        #: The SQLSTATE of the refusal, once one came; the answers are then dropped.
        self.refused: str | None = None
        self._held_back = bytearray()
        self._let_go = False
        #: Collects what is forwarded, for the query cache (None: nothing is collected).
        self.capture: Capture | None = None

    def feed(self, data: bytes) -> bytes | list[Event]:
        """Take the server's bytes; return what to pass to the client.

        The common answer ends in one ReadyForQuery and is returned as it came.
        """
        if self._skipping is not None:
            data = self._skip(data)
        scanner = self.scanner
        events = scanner.feed(data)
        if scanner.observed:
            self._observe()
            if scanner.paused:
                events = self._after_pause(events)
        elif scanner.ready_count == 1:
            scanner.ready_count = 0
            self.status = _STATUS[scanner.status]
            self.requests.ready()
            if scanner.status == _IDLE:
                self.transactions += 1
        elif scanner.ready_count:
            self._observe()
        if type(events) is list and self.owners is not None:
            events = self._rewrite(events)
        if self.capture is not None:
            self.capture.add(events)
        return events

    def _rewrite(self, events: list[Event]) -> list[Event]:
        # Transaction pooling: notifications name the client that sent them, errors the
        # statement names the client gave.
        owners = self.owners
        assert owners is not None
        out: list[Event] = []
        for event in events:
            if type(event) is not Message:
                out.append(event)
            elif event.type == m.NOTIFICATION_RESPONSE:
                pid, rest = m.parse_notification(event.body)
                out.append(m.notification(owners.get(pid, pid), rest))
            elif self.statements is not None and POOLER_NAME in event.body:
                told = self.statements.client_message(event.type, event.body)
                if self.error_classes is not None and event.type == m.ERROR_RESPONSE:
                    # Counted as the client sees it (see _observe).
                    self.error_classes[_class_of(event.body)] -= 1
                    self.error_classes[_class_of(_last_body(told))] += 1
                out.append(told)
            else:
                out.append(event.raw())
        return out

    def probe(self) -> None:
        """Hold the answers to what is sent now back until the first result shows
        whether the server refused it (``refused``); pass ``feed``'s output through
        ``probed`` meanwhile."""
        self.probing = True
        self.refused = None
        self._held_back.clear()
        self._let_go = False

    def probed(self, events: bytes | list[Event]) -> bytes | list[Event]:
        """What of ``feed``'s output may reach the client while probing: nothing until
        a result (then all that was held, and probing ends) or a refusal (then nothing
        of this request ever)."""
        if self.refused is not None:
            return b""
        held = self._held_back
        if not held and type(events) is bytes and not self._let_go:
            # The usual answer, whole in one read: looked at where it lies.
            verdict = self._verdict(events)
            if verdict is _RESULT:
                self.probing = False
                return events
            if verdict is None:
                held += events
            return b""
        if isinstance(events, bytes):
            held += events
        else:
            for event in events:
                if type(event) is Message:
                    held += frame(event.type, event.body)
                elif isinstance(event, bytes):
                    held += event
                else:
                    # The server broke the protocol: everything goes out, the error last.
                    return self._end_probe([event])
        if self._let_go:
            return self._end_probe([])
        verdict = self._verdict(held)
        if verdict is _RESULT:
            return self._end_probe([])
        if verdict is _REFUSED:
            held.clear()
        return b""

    def _verdict(self, data: bytes | bytearray) -> int | None:
        """``_RESULT`` once ``data`` (answers from the probe's start) holds a result,
        ``_REFUSED`` once it holds a refusal (then ``refused`` is its SQLSTATE), None
        while neither shows yet."""
        pos = 0
        end_of_data = len(data)
        while pos + 5 <= end_of_data:
            t = data[pos]
            end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
            if end > end_of_data:
                break
            if t == m.ERROR_RESPONSE:
                code = m.parse_fields(bytes(data[pos + 5 : end])).get("C")
                if code in REFUSALS:
                    self.refused = code
                    return _REFUSED
            if t not in _BEFORE_RESULTS:
                return _RESULT
            pos = end
        return None

    def let_go(self) -> None:
        """The client's stream ended: what is held goes out with the next answers."""
        self._let_go = True

    def _end_probe(self, tail: list[Event]) -> bytes | list[Event]:
        self.probing = False
        data = bytes(self._held_back)
        self._held_back.clear()
        return [data, *tail] if tail else data

    def prelude_sent(
        self,
        parsed: list[bytes],
        queries: int = 0,
        aligned: bool = False,
        checks: tuple[dict[bytes, bytes], ClientStatements] | None = None,
    ) -> None:
        """The pooler sent a prelude while the server owed nothing: a Query aligning
        its settings (``aligned``), a Parse and a Sync for each of ``parsed`` (with a
        Describe for those in ``checks``: the result types their client knows), then
        ``queries`` Query messages (a deferred BEGIN). Their answers are dropped; a
        statement whose Parse failed is not prepared here."""
        first = [_ALIGNMENT] if aligned else []
        self.requests.sent([m.QUERY] * aligned + [m.SYNC] * len(parsed) + [m.QUERY] * queries)
        if self._skipping is None:
            self._skipping = bytearray()
        self._prelude = [*first, *parsed, *[b""] * queries]
        self._prelude_error = None
        self._failed = {}
        self._checks = checks
        self._changed = []

    def keep_description(self, number: int, ours: bytes, statements: ClientStatements) -> None:
        """The request ``number`` (see ``watch``) starts with a Parse that first names
        ``ours``, and the Describe the pooler added: keep what it answers for
        ``statements`` and drop it."""
        if self._captures is None:
            self._captures = {}
        self._captures[number] = (ours, statements)
        if self._skipping is None:
            self._skipping = bytearray()
            # (Nothing of that request was parsed before its first Parse.)
            self._walk_parsed = False

    def watch(self) -> None:
        """Note every ReadyForQuery from now on in ``marks``, with the transaction
        status it gives, and the errors and ParseCompletes counted when it came
        (settings to settle, statements to confirm)."""
        if self.marks is not None:
            return
        self.marks = [(self.requests.answered, self.status, self.errors, self.parsed)]
        self._idle_observe = _WATCH_OBSERVE
        if not self.requests.copy_in:
            self.scanner.set_observe(_WATCH_OBSERVE, ready=False)

    def unwatch(self) -> list[tuple[int, bytes, int, int]]:
        """Stop watching; the marks noted."""
        marks = self.marks or []
        self.marks = None
        self._idle_observe = _OBSERVE
        if not self.requests.copy_in:
            self.scanner.set_observe(_OBSERVE, ready=True)
        return marks

    def _skip(self, data: bytes) -> bytes:
        """Answers walked one by one while the pooler has answers of its own coming:
        those of a prelude (all dropped, up to its last ReadyForQuery) and those of the
        Describes it added (dropped, the rest passed on)."""
        buf = self._skipping
        assert buf is not None
        buf += data
        pos = 0
        passed: list[bytes] = []
        ready = 0
        while len(buf) - pos >= 5:
            t = buf[pos]
            end = pos + 1 + int.from_bytes(buf[pos + 1 : pos + 5], "big")
            if end > len(buf):
                break
            if self._prelude:
                self._prelude_answer(t, bytes(buf[pos + 5 : end]))
            elif self._captured(t, buf, pos, end, ready):
                if t == m.READY_FOR_QUERY:
                    ready += 1
                passed.append(bytes(buf[pos:end]))
            pos = end
            if not self._prelude and not self._captures and self._capturing is None:
                self._skipping = None
                # The next walk starts where nothing of a request was parsed yet.
                self._walk_parsed = False
                passed.append(bytes(buf[end:]))
                return b"".join(passed)
        del buf[:pos]
        return b"".join(passed)

    def _prelude_answer(self, t: int, body: bytes) -> None:
        if t == m.ERROR_RESPONSE:
            self._prelude_error = body
        elif t == m.PARAMETER_STATUS:
            # What aligning did: the client was told these values long ago.
            param, value = m.parse_parameter_status(body)
            self.params[param] = value
            self.params_changed = True
        elif t in _RESULT_TYPE and self._checks is not None:
            known = self._checks[0].get(self._prelude[0])
            if known is not None and not same_result(known, body if t == _ROW_DESCRIPTION else b""):
                self._changed.append(self._prelude[0])
        elif t == m.READY_FOR_QUERY:
            self.status = body
            self.requests.ready()
            if self.marks is not None:
                mark = (self.requests.answered, self.status, self.errors, self.parsed)
                self.marks.append(mark)
            name = self._prelude.pop(0)
            if self._prelude_error is not None:
                if name == _ALIGNMENT:
                    self.alignment_failed = True
                elif name:
                    # A statement that no longer parses (its table was dropped): the
                    # client meets that error when it uses it here.
                    self._failed[name] = self._prelude_error
                self.prepared.pop(name, None)
                self._prelude_error = None
            if not self._prelude:
                self._prelude_done()

    def _prelude_done(self) -> None:
        checks = self._checks
        self._checks = None
        held = self.holding
        self.holding = None
        if held is not None:
            data, statements = held
            if self._changed:
                data = statements.replanned(self._changed, data)
            if self._failed:
                data = statements.gone(self._failed, data)
            assert self.send_held is not None
            self.send_held(data)
        elif checks is not None and self._changed:
            checks[1].replanned(self._changed, b"")

    def _captured(self, t: int, buf: bytearray, pos: int, end: int, ready: int) -> bool:
        """Whether an answer outside a prelude goes on to the client (not one to a
        Describe the pooler added); ``ready``: ReadyForQuery passed in this read."""
        capturing = self._capturing
        if capturing is not None and t not in _ASYNC:
            ours, statements, params = capturing
            if params is None and t == _PARAMETER_DESCRIPTION:
                self._capturing = (ours, statements, bytes(buf[pos + 5 : end]))
                return False
            self._capturing = None
            if params is not None and t in _RESULT_TYPE:
                rows = bytes(buf[pos + 5 : end]) if t == _ROW_DESCRIPTION else b""
                statements.described(ours, params, rows)
                return False
        if t == _PARSE_COMPLETE and not self._walk_parsed:
            self._walk_parsed = True
            if self._captures:
                entry = self._captures.pop(self.requests.answered + 1 + ready, None)
                if entry is not None:
                    self._capturing = (*entry, None)
        elif t == m.READY_FOR_QUERY:
            self._walk_parsed = False
            if self._captures:
                # Those whose Parse failed or was skipped are not coming.
                answered = self.requests.answered + 1 + ready
                for number in [n for n in self._captures if n <= answered]:
                    del self._captures[number]
        return True

    def _after_pause(self, events: bytes | list[Event]) -> list[Event]:
        # The scanner stopped after CopyInResponse so that what follows it in the same
        # read is observed the COPY way, in order.
        scanner = self.scanner
        out: list[Event] = [events] if isinstance(events, bytes) else events
        while scanner.paused:
            more = scanner.feed(b"")
            if isinstance(more, bytes):
                out.append(more)
            else:
                out.extend(more)
            self._observe()
        return out

    def _observe(self) -> None:
        requests = self.requests
        scanner = self.scanner
        if scanner.ready_count:
            # Counted ReadyForQuery messages all came before anything observed now:
            # observing switches to in-order ReadyForQuery at CopyInResponse.
            self.status = _STATUS[scanner.status]
            for _ in range(scanner.ready_count):
                requests.ready()
            # (Only the last status is known: each counts as a transaction if it is idle.)
            if scanner.status == _IDLE:
                self.transactions += scanner.ready_count
            scanner.ready_count = 0
        for msg in scanner.observed:
            t = msg.type
            if t == m.READY_FOR_QUERY:
                self.status = msg.body
                requests.ready()
                if msg.body == b"I":
                    self.transactions += 1
                if self.marks is not None:
                    self.marks.append((requests.answered, msg.body, self.errors, self.parsed))
            elif t == _PARSE_COMPLETE:
                self.parsed += 1
            elif t == m.PARAMETER_STATUS:
                name, value = m.parse_parameter_status(msg.body)
                self.params[name] = value
                self.params_changed = True
            elif t == m.ERROR_RESPONSE:
                self.errors += 1
                if self.error_classes is not None:
                    self.error_classes[_class_of(msg.body)] += 1
                if requests.copy_in:
                    requests.copy_failed()
                    scanner.set_observe(self._idle_observe, ready=self.marks is None)
            elif t == m.COPY_IN_RESPONSE:
                requests.copy_started()
                scanner.set_observe(_COPY_OBSERVE, ready=False)
            elif t == m.COMMAND_COMPLETE and requests.copy_in:
                requests.copy_done()
                scanner.set_observe(self._idle_observe, ready=self.marks is None)
        scanner.observed.clear()

    def idle(self) -> bool:
        """The server owes nothing and is outside any transaction."""
        return self.status == b"I" and self.requests.idle()

    def reusable(self, client_partial: bool) -> bool:
        """Whether another client may have this server: it owes nothing, holds no
        transaction, and no message either way is half sent (``client_partial``: part of
        one of the client's messages was forwarded and the rest never came)."""
        return (
            not client_partial
            and not self.handed_over
            and self.idle()
            and self.scanner.at_boundary()
        )

    def reset_sent(self) -> None:
        """The pooler sent its reset query (as a Query); its answers are not forwarded."""
        self._errors_at_reset = self.errors
        self.requests.sent([m.QUERY])

    def forget_session(self) -> None:
        """The reset query ran: the settings and prepared statements the pooler noted
        for this server are gone (what a reset query that is not DISCARD ALL leaves is
        the operator's choice: ``pool.reset_query``). Kept, the notes would have the
        next client's settings taken as made already and never sent."""
        self.settings = {}
        self.prepared.clear()
        self.alignment_failed = False
        # (The reset query, a simple Query, dropped the unnamed statement.)
        self.unnamed = 0
        self.sequences = None

    def reset_result(self) -> bool | None:
        """None while the reset query is unanswered; then whether it left the server
        reusable (no error, idle)."""
        if not self.requests.idle():
            return None
        return self.errors == self._errors_at_reset and self.idle()


def _class_of(error: bytes) -> str:
    """The SQLSTATE class of an ErrorResponse body."""
    return m.parse_fields(error).get("C", "")[:2]


def _last_body(data: bytes) -> bytes:
    """The body of the last of the whole messages ``data`` holds."""
    pos = 0
    body = b""
    while pos + 5 <= len(data):
        end = pos + 1 + int.from_bytes(data[pos + 1 : pos + 5], "big")
        body = data[pos + 5 : end]
        pos = end
    return body
