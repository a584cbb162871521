"""One client's use of the query cache, driven by its client engine (sans-IO).

The engine asks ``lookup`` when a request arrives while the client holds no server and
owes nothing (so outside any transaction: in transaction pooling a client holds a
server for as long as a transaction is open, and a pinned client keeps it): a hit is
answered at once. On a miss the request is remembered, and once its classification
says it is cacheable (``classified``) the versions of what it reads are taken; the
server it is sent to (``attached``, only the primary: a standby may not have replayed
the last write yet) captures its answer, which is stored when that server is idle
again (``answered``) if no version moved meanwhile.

Inside a READ ONLY transaction at READ COMMITTED, each statement takes a new snapshot
and the transaction cannot write (a temporary table aside, which ends the cache's part
in it), so a read there is answered as one outside a transaction would be: looked up
(``lookup`` with ``transaction``) while the server it runs on, if it has one yet, owes
nothing and its transaction has not failed (25P02 comes from PostgreSQL), and stored
when its answer is whole. Only while every statement of the transaction so far was a
cacheable read: anything else (SET LOCAL, a savepoint, a write, which fails anyway)
ends it for the rest of the transaction. Not in REPEATABLE READ or SERIALIZABLE (one
snapshot for the whole transaction), nor for a client that changed its
default_transaction_isolation (a default set on the role or database in PostgreSQL is
not seen: set one, and READ COMMITTED must be named in BEGIN for reads to be cached).

Every statement text the client sends is looked at for writes (``classified``): the
tables it writes are dropped at once (which moves their versions, so reads in flight
are not stored), and again when the server is idle after it, that is when its
transaction is over. A named statement that writes drops them at each Bind.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING

from parser_api import Classification, EffectKind, Route, TransactionControl
from pooler.cache.answer import Capture
from pooler.cache.key import batch, simple_query
from pooler.cache.relations import ALL, NOTHING, Written
from pooler.cache.store import Snapshot
from pooler.engine.actions import Reply
from pooler.protocol.codec import Event

if TYPE_CHECKING:
    from pooler.cache.query_cache import QueryCache
    from pooler.engine.server import ServerEngine
    from pooler.engine.settings import ClientSettings

log = logging.getLogger("pooler.cache")
_DROPS_STATEMENTS = frozenset({EffectKind.DISCARD, EffectKind.DEALLOCATE})
# Isolation levels at which every statement takes a new snapshot (None: the default).
_NEW_SNAPSHOT_EACH = frozenset({None, "read committed"})
_IN_TRANSACTION = b"T"
_IDLE = b"I"

# A statement's cache facts: its Parse text and types, what it writes, and what it
# reads when its result may be cached (None: it may not).
_Facts = tuple[bytes, Written, frozenset[str] | None]
# A request that missed, until its classification is known: its key, the key's size,
# the statement text it must be the classification of, and the server of the
# transaction it runs in (None: it runs on the server it will get).
_Candidate = tuple[Hashable, int, bytes, "ServerEngine | None"]


class CacheSession:
    """The cache as one client of one key space sees it."""

    __slots__ = (
        "_cache",
        "_candidate",
        "_capturing",
        "_database",
        "_default_isolation",
        "_facts",
        "_fill",
        "_fresh",
        "_last",
        "_primary",
        "_space",
        "_status",
        "_written",
        "busy",
        "reading",
        "replayed",
        "settings",
    )

    def __init__(
        self, cache: QueryCache, database: str, space: int, default_isolation: bool = True
    ) -> None:
        self._cache = cache
        self._database = database
        self._space = space
        # The client's default transaction isolation is PostgreSQL's (READ COMMITTED)
        # as far as its startup parameters say.
        self._default_isolation = default_isolation
        #: A READ ONLY transaction at READ COMMITTED is open and only cacheable reads
        #: ran in it so far: its reads may be looked up and stored.
        self.reading = False
        # The server the open transaction runs on, once it has one, and whether it is
        # the primary (a read there is stored as one outside a transaction).
        self._primary = False
        # The transaction status of the ReadyForQuery that ends the answer captured.
        self._status = _IDLE
        # No statement was classified since the client last gave its server up: a BEGIN
        # now starts a transaction (after another, PostgreSQL only warns and the open
        # one goes on, maybe with writes of its own).
        self._fresh = True
        self._candidate: _Candidate | None = None
        # A cacheable miss on its way: key, key size and the versions it read under.
        self._fill: tuple[Hashable, int, Snapshot] | None = None
        self._capturing: ServerEngine | None = None
        # What the statements sent since the server was last idle wrote.
        self._written: Written = NOTHING
        # Facts of the client's statements by name (b"": the unnamed one), and of the
        # last text classified.
        self._facts: dict[bytes, _Facts] = {}
        self._last: tuple[Classification | None, Written] | None = None
        #: ``answered`` has something to do: an answer to capture or writes to drop again.
        self.busy = False
        #: How far the node of the next server had replayed, as the monitor last saw
        #: (set before ``attached``).
        self.replayed: int | None = None
        #: The client's settings, which follow it from server to server: part of the
        #: key, so that clients with other settings never share an entry.
        self.settings: ClientSettings | None = None

    # --- requests -----------------------------------------------------------------------

    def lookup(
        self,
        events: bytes | list[Event],
        idle: bool,
        transaction: bool = False,
        server: ServerEngine | None = None,
    ) -> Reply | None:
        """A request arrived (``idle``: nothing is held, and a server the client has owes
        nothing): the cached answer, or None (then the request goes on as usual).
        ``transaction``: one is open (a BEGIN the pooler answered, or ``server``'s, whose
        transaction has not failed); only a read-only one at READ COMMITTED is served."""
        self._candidate = None
        if not idle or (transaction and not self.reading):
            if transaction and log.isEnabledFor(logging.DEBUG):
                log.debug("not cacheable", extra={"why": "inside a transaction"})
            return None
        self._fill = None
        self._status = _IN_TRANSACTION if transaction else _IDLE
        body = simple_query(events)
        facts: _Facts | None = None
        space: Hashable = self._space
        settings = self.settings
        if settings is not None and (settings.committed or settings.reported is not None):
            space = (space, settings.key())
        if body is not None:
            key: Hashable = (space, body)
            text = body[:-1]
            size = len(body)
        else:
            shape = batch(events)
            if shape is None:
                if log.isEnabledFor(logging.DEBUG):
                    log.debug(
                        "not cacheable",
                        extra={"why": "not one Query, nor one execution with no row limit"},
                    )
                return None
            if shape.parse is not None:
                statement = shape.parse
                text = statement[: statement.find(b"\0")]
            else:
                facts = self._facts.get(shape.statement)
                if facts is None or facts[2] is None:
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug(
                            "not cacheable",
                            extra={"why": "a prepared statement that is not cacheable"},
                        )
                    return None
                statement = facts[0]
                text = b""
            key = (space, shape.parse is not None, statement, shape.bind, shape.describe)
            size = len(statement) + len(shape.bind)
        cache = self._cache
        entry = cache.store.get(key)
        if entry is not None and cache.watch.servable(self._database):
            cache.store.stats.num_cache_hits += 1
            if transaction:
                return Reply(entry.value[:-1] + _IN_TRANSACTION)
            return Reply(entry.value)
        if facts is not None:
            # A named statement whose facts are known: no text is classified for it.
            self._miss(key, size, facts[2], server)
        else:
            self._candidate = (key, size, text, server)
        return None

    def classified(self, classification: Classification | None, text: bytes) -> None:
        """A statement text the client sent (a Query's, or a Parse's) was classified
        (None: it does not parse, and PostgreSQL may know better)."""
        written: Written
        if classification is None:
            written = ALL
        elif classification.route is not Route.WRITE:
            written = NOTHING
        else:
            relations = self._cache.relations(self._database)
            written = ALL if relations is None else relations.writes(classification)
        self._last = (classification, written)
        if written is not NOTHING:
            self._wrote(written)
        if classification is None:
            self.reading = False
        elif classification.transaction:
            self.transaction_control(classification)
        elif self.reading and not classification.cacheable:
            # (Also SET LOCAL, DECLARE, a temporary table: anything but a cacheable read.)
            self.reading = False
        self._fresh = False
        if classification is not None and any(
            effect.kind in _DROPS_STATEMENTS and effect.name in (None, "all")
            for effect in classification.session_effects
        ):
            # DEALLOCATE ALL, DISCARD ALL: the client's statements are gone.
            self._facts.clear()
        candidate = self._candidate
        if candidate is not None:
            self._candidate = None
            key, size, expected, server = candidate
            if expected != text:
                return
            if classification is not None and classification.cacheable:
                self._miss(key, size, self._reads(classification), server)
            elif log.isEnabledFor(logging.DEBUG):
                why = (
                    "does not parse"
                    if classification is None
                    else classification.uncacheable_reason
                )
                log.debug(
                    "not cacheable",
                    extra={"why": why, "statement": text[:200].decode("utf-8", "replace")},
                )

    def transaction_control(self, classification: Classification) -> None:
        """A statement that controls the transaction was sent (or, for a BEGIN the pooler
        answers itself, answered): whether the transaction it leaves is one whose reads
        are cached."""
        controls = classification.transaction
        fresh = self._fresh
        self._fresh = False
        if len(classification.statements) != 1 or len(controls) != 1:
            self.reading = False
            return
        control: TransactionControl = controls[0]
        if control.action == "begin" and fresh:
            settings = self.settings
            default = self._default_isolation and (
                settings is None or "default_transaction_isolation" not in settings.committed
            )
            self.reading = (
                control.read_only is True
                and control.isolation in _NEW_SNAPSHOT_EACH
                and (default or control.isolation is not None)
            )
        elif control.action == "set" and self.reading:
            # (SET TRANSACTION READ WRITE, or another level, ends it.)
            self.reading = control.read_only is not False and (
                control.isolation in _NEW_SNAPSHOT_EACH
            )
        else:
            self.reading = False

    def parsed(self, name: bytes, rest: bytes) -> None:
        """The text just classified was a Parse of ``name`` (``rest``: its text and
        parameter types)."""
        last = self._last
        if last is None:
            return
        classification, written = last
        if classification is not None and classification.transaction:
            # It runs when a Bind of it does, which is not followed.
            self.reading = False
        known = self._facts.get(name) if name else None
        if known is not None and known[0] != rest:
            # A Parse of a name in use fails (42P05) and the old statement stays: which
            # one runs is not known here.
            self._facts[name] = (known[0], ALL, None)
            return
        reads = None
        if classification is not None and classification.cacheable:
            reads = self._reads(classification)
        self._facts[name] = (rest, written, reads)

    def function_called(self) -> None:
        """A FunctionCall (the protocol's fast path) was sent: it may write anything."""
        self._wrote(ALL)

    def closed(self, name: bytes) -> None:
        """The client closes statement ``name``: a Bind of it gets an error from now on
        (if the Close met an error before it and did not run, the statement is only
        not cached any more)."""
        self._facts.pop(name, None)

    def bound(self, name: bytes) -> None:
        """A Bind of statement ``name``: it runs again, and writes again."""
        facts = self._facts.get(name)
        if facts is None:
            if not name:
                # The unnamed statement of a Parse the pooler did not see: anything.
                self._wrote(ALL)
        elif facts[1] is not NOTHING:
            self._wrote(facts[1])

    def _reads(self, classification: Classification) -> frozenset[str] | None:
        relations = self._cache.relations(self._database)
        if relations is None:
            return None
        return relations.reads(classification.reads_tables)

    def _miss(
        self,
        key: Hashable,
        size: int,
        reads: frozenset[str] | None,
        server: ServerEngine | None = None,
    ) -> None:
        cache = self._cache
        cache.store.stats.num_selects += 1
        if reads is None:
            log.debug(
                "not cacheable",
                extra={"why": "row-level security, or the catalog is being read"},
            )
        elif cache.watch.storable(self._database) and cache.admits(key):
            self._fill = (key, size, cache.store.snapshot(self._database, reads))
            if server is not None:
                # Inside the transaction of the server the client has: captured now.
                self._capture(server, self._primary)

    def _wrote(self, written: Written) -> None:
        self._drop(written)
        if written is ALL or self._written is ALL:
            self._written = ALL
        else:
            self._written = self._written | written
        self.busy = True

    def _drop(self, written: Written) -> None:
        self._cache.drop(self._database, written)

    # --- the server -----------------------------------------------------------------------

    def attached(self, server: ServerEngine, primary: bool, transaction: bool) -> None:
        """The held requests go to ``server`` (``primary``: it takes writes;
        ``transaction``: a deferred BEGIN goes first)."""
        self._primary = primary
        if self._fill is None:
            return
        if transaction and not self.reading:
            self._fill = None
            return
        self._capture(server, primary)

    def _capture(self, server: ServerEngine, primary: bool) -> None:
        """Collect ``server``'s answer to the request that missed, if what it reads
        may be stored from there."""
        fill = self._fill
        assert fill is not None
        snapshot = fill[2]
        if not (
            primary or self._cache.standby_may_store(self._database, snapshot.tables, self.replayed)
        ):
            self._fill = None
            return
        server.capture = Capture(self._cache.store.max_entry_size)
        self._capturing = server
        self.busy = True

    def answered(self, server: ServerEngine) -> None:
        """The server sent something (called while ``busy``)."""
        if self._status == _IN_TRANSACTION and self._capturing is server:
            # A read inside a transaction: whole once the server owes nothing.
            if server.requests.idle():
                self._store(server)
                self.busy = self._written is not NOTHING
            return
        if not server.idle():
            return
        if self._capturing is server:
            self._store(server)
        self._settle()

    def _store(self, server: ServerEngine) -> None:
        """The answer captured from ``server`` is whole: stored if it may be replayed."""
        fill = self._fill
        capture = server.capture
        server.capture = None
        self._capturing = None
        self._fill = None
        value = capture.answer(self._status) if capture is not None else None
        if value is not None and fill is not None:
            key, size, snapshot = fill
            self._cache.store.put(key, value, snapshot, size)

    def detached(self) -> None:
        """The client gave its server up, or lost it: what it wrote may have committed."""
        if self._capturing is not None:
            self._capturing.capture = None
            self._capturing = None
        self._fill = None
        self.reading = False
        self._fresh = True
        self._settle()

    def _settle(self) -> None:
        # The transaction of what was written is over: committed or not, drop again.
        if self._written is not NOTHING:
            self._drop(self._written)
            self._cache.settled(self._database, self._written)
            self._written = NOTHING
        self.busy = self._fill is not None
