"""The values parser_api returns: immutable, cheap to share between callers and threads."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import pglast.parser


class TextKeys:
    """A text's fingerprint and constant-free key, each computed on first use.

    Each costs a parse of its own, and a classification is built for every new text
    while its fingerprint is read for statistics at most: the hot path need not pay.
    """

    __slots__ = ("_fingerprint", "_key", "_keyed", "_sql")

    def __init__(self, sql: str, keyed: bool, key: str | None = None) -> None:
        self._sql = sql
        self._keyed = keyed
        self._key = key
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        """pglast's fingerprint of the text."""
        if self._fingerprint is None:
            self._fingerprint = pglast.parser.fingerprint(self._sql)
        return self._fingerprint

    def constant_free_key(self) -> str | None:
        """pglast's normalize of the text where it may key a classification, else None."""
        if self._keyed and self._key is None:
            self._key = pglast.parser.normalize(self._sql)
        return self._key


class Route(StrEnum):
    """Where a statement may run in a primary/hot-standby cluster.

    ``READ``: a hot standby runs it and the primary need not see it.
    ``SESSION``: it changes session state and every node accepts it; a pooler applies it
    wherever the session runs (SET, PREPARE, DISCARD, ``set_config(..., false)``, ...).
    ``WRITE``: primary only; anything a standby refuses, and what must happen where the
    writes are (sequences, advisory locks, LISTEN/NOTIFY).
    """

    READ = "read"
    SESSION = "session"
    WRITE = "write"

    @property
    def strictness(self) -> int:
        """0 for read, 1 for session, 2 for write: the strictest of several wins."""
        return _STRICTNESS[self]

    def stricter(self, other: Route) -> Route:
        """The stricter of the two routes (write > session > read)."""
        # By identity: hashing an enum member runs Python code, and this is hot.
        if self is other or other is Route.READ:
            return self
        if self is Route.READ:
            return other
        return Route.WRITE


_STRICTNESS = {Route.READ: 0, Route.SESSION: 1, Route.WRITE: 2}


class EffectKind(StrEnum):
    """What kind of state a statement leaves behind in the session."""

    SETTING = "setting"
    """A run-time parameter set or reset for the session; ``name`` is the parameter
    (lower case: ``search_path``, ``role``, ``session_authorization``), or None where the
    text does not say which (``set_config`` with a computed name)."""
    RESET_ALL = "reset_all"
    """RESET ALL: every parameter back to its default."""
    STANDBY_UNSAFE = "standby_unsafe"
    """The named parameter now has a value with which a hot standby refuses later
    statements (``default_transaction_isolation = serializable``): keep the session's
    reads on the primary until a later SETTING of the same name (or RESET ALL, DISCARD
    ALL) without this mark."""
    PREPARE = "prepare"
    """A prepared statement named ``name`` now exists."""
    DEALLOCATE = "deallocate"
    """The prepared statement ``name`` (None: all of them) is gone."""
    HOLD_CURSOR = "hold_cursor"
    """A cursor ``name`` declared WITH HOLD outlives its transaction."""
    CLOSE_CURSOR = "close_cursor"
    """The cursor ``name`` (None: all of them) is closed."""
    LISTEN = "listen"
    """The session listens on channel ``name``."""
    UNLISTEN = "unlisten"
    """The session stops listening on channel ``name`` (None: on every channel)."""
    TEMP_OBJECT = "temp_object"
    """A temporary object ``name`` (table, view, sequence, function) now exists."""
    ADVISORY_LOCK = "advisory_lock"
    """A session-level advisory lock was (possibly) taken by function ``name``."""
    ADVISORY_UNLOCK = "advisory_unlock"
    """Session-level advisory locks were released by function ``name``."""
    DISCARD = "discard"
    """DISCARD ``name``: ``all``, ``plans``, ``sequences`` or ``temp``."""
    LOAD = "load"
    """The shared library ``name`` was loaded into the session."""
    RANDOM_SEED = "random_seed"
    """``setseed()`` fixed the session's random() sequence."""


@dataclass(frozen=True, slots=True)
class SessionEffect:
    """One piece of session state a statement leaves behind (see `EffectKind`)."""

    kind: EffectKind
    name: str | None = None
    value: str | None = None
    """For a SETTING made by ``set_config(name, value, false)`` with a constant value:
    that value, so that the setting can be made again elsewhere; None otherwise (a SET
    statement's own text says what it sets)."""


@dataclass(frozen=True, slots=True)
class TransactionControl:
    """One transaction control statement, with the options it sets.

    ``action`` is one of ``begin`` (BEGIN, START TRANSACTION), ``commit`` (COMMIT, END),
    ``rollback`` (ROLLBACK, ABORT), ``savepoint``, ``release``, ``rollback_to``,
    ``prepare`` (PREPARE TRANSACTION), ``commit_prepared``, ``rollback_prepared`` and
    ``set`` (SET TRANSACTION ..., or SET of transaction_isolation, transaction_read_only,
    transaction_deferrable: options of the current transaction only).
    Options are None where the statement does not set them.
    """

    action: str
    isolation: str | None = None
    """``read uncommitted``, ``read committed``, ``repeatable read`` or ``serializable``."""
    read_only: bool | None = None
    deferrable: bool | None = None
    chain: bool = False
    """COMMIT/ROLLBACK AND CHAIN: a new transaction starts at once."""
    name: str | None = None
    """The savepoint name, the prepared transaction's id, or the imported snapshot."""


@dataclass(frozen=True, slots=True)
class Dependency:
    """A prepared statement or cursor whose classification decides a statement's."""

    namespace: Literal["prepared", "cursor"]
    name: str


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a text: its kind, where it stands and where it may run.

    ``kind`` is ``select`` (also VALUES, TABLE and SELECT INTO), ``insert``, ``update``,
    ``delete``, ``merge``, ``copy``, ``explain``, ``transaction``, or
    ``utility:<pglast node name>`` (``utility:VariableSetStmt``, ``utility:PrepareStmt``,
    ...). ``start`` and ``end`` are character offsets in the text (end exclusive), without
    the surrounding whitespace and the closing semicolon.
    For PREPARE and DECLARE CURSOR, ``name`` is the prepared statement or cursor defined
    and ``body`` the classification of its query; EXECUTE, FETCH, MOVE and CLOSE name
    theirs in ``Classification.depends_on``.
    """

    kind: str
    start: int
    end: int
    route: Route
    name: str | None = None
    body: Classification | None = None


@dataclass(frozen=True, slots=True)
class Classification:
    """What one SQL text (one statement or several) does, as far as routing goes.

    Several statements: ``route`` is the strictest of theirs, the other fields gather
    all of theirs in text order without repeats.
    """

    route: Route
    statements: tuple[Statement, ...]
    transaction: tuple[TransactionControl, ...]
    """Transaction control statements in text order; empty where there is none."""
    reads_tables: tuple[str, ...]
    """Relations read, schema-qualified where the text qualifies them."""
    writes_tables: tuple[str, ...]
    """Relations written, created, altered or dropped."""
    functions: tuple[str, ...]
    """Every function called anywhere (CTEs, subqueries, VALUES, arguments)."""
    locks_rows: bool
    """FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE anywhere."""
    session_effects: tuple[SessionEffect, ...]
    depends_on: tuple[Dependency, ...]
    """For EXECUTE, FETCH, MOVE and CLOSE: the prepared statement or cursor named."""
    cacheable: bool
    """True only for a single plain read whose result another identical read may reuse."""
    uncacheable_reason: str | None
    _keys: TextKeys = field(repr=False, compare=False)

    @property
    def fingerprint(self) -> str:
        """pglast's fingerprint: for statistics and grouping only, never a cache key (it
        is equal for ``EXECUTE q1`` and ``EXECUTE q2``, ``BEGIN READ ONLY`` and ``BEGIN
        READ WRITE``, and drops comments and hints). Computed on first use."""
        return self._keys.fingerprint()

    @property
    def constant_free_key(self) -> str | None:
        """The text with its constants replaced by ``$n``, for plain SELECT/INSERT/
        UPDATE/DELETE/MERGE texts whose classification no constant can change; None
        otherwise. Computed on first use."""
        return self._keys.constant_free_key()

    @property
    def kind(self) -> str:
        """The kind of the only statement; ``empty`` for none, ``multiple`` for several."""
        if len(self.statements) == 1:
            return self.statements[0].kind
        return "empty" if not self.statements else "multiple"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (enums as their string values)."""
        return {
            "route": self.route.value,
            "kind": self.kind,
            "statements": [_statement_dict(statement) for statement in self.statements],
            "transaction": [
                {
                    "action": control.action,
                    "isolation": control.isolation,
                    "read_only": control.read_only,
                    "deferrable": control.deferrable,
                    "chain": control.chain,
                    "name": control.name,
                }
                for control in self.transaction
            ],
            "reads_tables": list(self.reads_tables),
            "writes_tables": list(self.writes_tables),
            "functions": list(self.functions),
            "locks_rows": self.locks_rows,
            "session_effects": [
                {"kind": effect.kind.value, "name": effect.name}
                for effect in self.session_effects
            ],
            "depends_on": [
                {"namespace": dependency.namespace, "name": dependency.name}
                for dependency in self.depends_on
            ],
            "cacheable": self.cacheable,
            "uncacheable_reason": self.uncacheable_reason,
            "fingerprint": self.fingerprint,
            "constant_free_key": self.constant_free_key,
        }


def _statement_dict(statement: Statement) -> dict[str, Any]:
    result: dict[str, Any] = {
        "kind": statement.kind,
        "start": statement.start,
        "end": statement.end,
        "route": statement.route.value,
    }
    if statement.name is not None:
        result["name"] = statement.name
    if statement.body is not None:
        result["body"] = statement.body.to_dict()
    return result
