"""Session settings that follow a client from server to server (transaction pooling).

A client's SET, RESET, RESET ALL and ``set_config(name, value, false)`` with constant
arguments are remembered as the statements that make them, once the transaction that
ran them commits, and the next server the client gets is brought to the same values
first, by only the difference from what that server already has (the pooler knows
what it left on each server). Settings that PostgreSQL reports (``ParameterStatus``)
are known from the server's own messages instead, whatever changed them, and set
again with ``set_config``. The statements that align a server travel ahead of the
client's requests and their answers are dropped, so the client sees only what its own
session would have said.

Whether a transaction committed is read from the server's answers: each ReadyForQuery
after a request that set something is noted with its transaction status and whether an
error came before it (``ServerEngine.watch``), and the requests are replayed against
those marks at the end (``ClientSettings.settle``). What the marks cannot decide (a
savepoint rolled back over a setting, an error in a request that also commits) is
left on the server, and the client stays on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from parser_api import Classification, EffectKind, TokenKind, tokens

#: Parameters PostgreSQL 15 reports in ParameterStatus (lower case): followed through
#: the server's messages rather than statement texts.
REPORTED = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "default_transaction_read_only",
        "in_hot_standby",
        "integer_datetimes",
        "intervalstyle",
        "is_superuser",
        "server_encoding",
        "server_version",
        "session_authorization",
        "standard_conforming_strings",
        "timezone",
    }
)
# Reported values a session cannot set: they describe the server (a standby's
# in_hot_standby differs from the primary's, and the client keeps the primary's), or
# change only with what pins the client anyway (SET SESSION AUTHORIZATION).
_NOT_SET = frozenset(
    {
        "in_hot_standby",
        "integer_datetimes",
        "is_superuser",
        "server_encoding",
        "server_version",
        "session_authorization",
    }
)
#: Settings that change who the session is: they pin the client (see session_state).
IDENTITY = frozenset({"role", "session_authorization"})

# Operations of a request, in text order: (kind, parameter, statement that sets it).
# (UNSAFE_SET: a value with which a hot standby refuses later statements.)
SET, UNSAFE_SET, RESET, RESET_ALL = range(4)
BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ROLLBACK_TO, PREPARE = range(4, 10)
Op = tuple[int, str, str]
_TRANSACTION_OPS = {
    "begin": (BEGIN,),
    "commit": (COMMIT,),
    "rollback": (ROLLBACK,),
    "savepoint": (SAVEPOINT,),
    "release": (SAVEPOINT,),
    "rollback_to": (ROLLBACK_TO,),
    "prepare": (PREPARE,),
}
_SET_STATEMENT = "utility:VariableSetStmt"

Classify = Callable[[str], Classification | None]
#: A ReadyForQuery as ``ServerEngine.watch`` notes it: its number on that server, the
#: transaction status it gave, and the server's error and ParseComplete counts when it
#: came.
Mark = tuple[int, bytes, int, int]


class Untracked(Exception):
    """A statement changes a setting in a way its text does not show (a computed
    ``set_config``): the client must stay on its server."""


def operations(sql: str, classification: Classification, classify: Classify) -> list[Op]:
    """The setting and transaction operations of a text, in order; [] when it sets
    nothing. Raises Untracked for a change the text cannot show."""
    statements = classification.statements
    ops: list[Op] = []
    for statement in statements:
        if len(statements) == 1:
            text, facts = sql, classification
        else:
            text = sql[statement.start : statement.end]
            found = classify(text)
            if found is None:
                raise Untracked(text)
            facts = found
        for control in facts.transaction:
            for kind in _TRANSACTION_OPS.get(control.action, ()):
                ops.append((kind, "", ""))
            if control.chain:
                ops.append((BEGIN, "", ""))
        unsafe = {
            effect.name
            for effect in facts.session_effects
            if effect.kind is EffectKind.STANDBY_UNSAFE
        }
        for effect in facts.session_effects:
            if effect.kind is EffectKind.RESET_ALL or (
                effect.kind is EffectKind.DISCARD and effect.name == "all"
            ):
                ops.append((RESET_ALL, "", ""))
            elif effect.kind is EffectKind.SETTING:
                op = _setting(effect.name, effect.value, statement.kind, text, unsafe)
                if op is not None:
                    ops.append(op)
    return ops


def _setting(
    name: str | None, value: str | None, kind: str, text: str, unsafe: set[str | None]
) -> Op | None:
    if name is None:
        raise Untracked(text)
    if name in REPORTED or name in IDENTITY:
        return None
    set_kind = UNSAFE_SET if name in unsafe else SET
    if kind == _SET_STATEMENT:
        if _first_word(text) == "RESET":
            return (RESET, name, "")
        return (set_kind, name, text.strip().rstrip(";"))
    if value is None:
        raise Untracked(text)
    statement = f"SELECT pg_catalog.set_config({_literal(name)}, {_literal(value)}, false)"
    return (set_kind, name, statement)


def _first_word(sql: str) -> str:
    for token in tokens(sql):
        if token.kind is not TokenKind.COMMENT:
            return token.text.upper()
    return ""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class ClientSettings:
    """One client's settings: those its committed transactions made (as the statements
    to make them again), and the requests sent since its server was last idle."""

    __slots__ = ("_journal", "committed", "on_search_path", "reported", "unsafe")

    def __init__(self) -> None:
        #: Parameter -> the statement that sets it as the client has it, oldest first.
        self.committed: dict[str, str] = {}
        #: Parameters set to a value with which a hot standby refuses later statements
        #: (default_transaction_isolation = serializable): the client's reads stay on
        #: the primary while there are any.
        self.unsafe: set[str] | None = None
        #: ParameterStatus values as the client was last told them; None: those of
        #: its login.
        self.reported: dict[str, str] | None = None
        # Request number on its server -> the operations that ran in it.
        self._journal: dict[int, list[Op]] | None = None
        #: Called when search_path may have changed (routing resolves names with it).
        self.on_search_path: Callable[[], None] | None = None

    def key(self) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
        """What tells these settings from others (a cache key's part): the statements
        made, and the reported values a session can set."""
        reported = self.reported or {}
        return (
            tuple(self.committed.items()),
            tuple(sorted((k, v) for k, v in reported.items() if k.lower() not in _NOT_SET)),
        )

    @property
    def pending(self) -> bool:
        """Requests that set something wait for their answers."""
        return bool(self._journal)

    def record(self, number: int, ops: Sequence[Op]) -> None:
        """The request ``number`` (counting every request owed a ReadyForQuery on the
        server) runs ``ops``."""
        if self._journal is None:
            self._journal = {}
        self._journal.setdefault(number, []).extend(ops)

    def settle(self, marks: list[Mark]) -> bool:
        """The server is idle: take the settings of what committed. False when the
        marks cannot say what did (the client must then stay on its server, which
        holds the truth)."""
        journal = self._journal
        self._journal = None
        if not journal:
            return True
        by_number = {number: (status, errors) for number, status, errors, _ in marks}
        first = min(journal)
        last = marks[-1][0]
        if first - 1 not in by_number or max(journal) > last:
            return False
        replay = _Replay(self, by_number[first - 1][0] != b"I")
        for number in range(first, last + 1):
            before_status, before_errors = by_number[number - 1]
            after = by_number.get(number)
            if after is None:
                # A Sync a COPY swallowed: no answer marks it.
                if number in journal:
                    return False
                continue
            status, errors = after
            ops = journal.get(number, [])
            if not replay.request(ops, before_status, status, errors > before_errors):
                return False
        return not replay.in_transaction


class _Replay:
    """Requests replayed against their ReadyForQuery marks."""

    __slots__ = ("in_transaction", "pending", "savepoints", "settings")

    def __init__(self, settings: ClientSettings, in_transaction: bool) -> None:
        self.settings = settings
        self.in_transaction = in_transaction
        # Settings made in the open transaction, in order.
        self.pending: list[Op] = []
        self.savepoints = False

    def request(self, ops: list[Op], before: bytes, after: bytes, failed: bool) -> bool:
        transaction_ops = any(kind >= BEGIN for kind, _, _ in ops)
        if failed:
            if transaction_ops:
                # Which statement failed decides what committed.
                return False
            # An implicit transaction rolled back whole, or an explicit one failed
            # (what it set goes at its end, unless rolled back to a savepoint: see
            # ROLLBACK_TO): nothing of this request stays.
            return after == (b"I" if before == b"I" else b"E")
        # Settings before a BEGIN in the same request join its transaction.
        implicit: list[Op] = []
        aborted = before == b"E"
        for op in ops:
            kind = op[0]
            if kind < BEGIN:
                if self.savepoints:
                    return False
                (self.pending if self.in_transaction else implicit).append(op)
            elif kind == BEGIN:
                # (Inside a transaction BEGIN only warns: the transaction goes on.)
                if not self.in_transaction:
                    self.in_transaction = True
                    self.pending = implicit
                    implicit = []
                    aborted = False
            elif kind in (COMMIT, PREPARE):
                if kind == PREPARE and self.pending:
                    return False
                if not aborted:
                    self._apply(self.pending)
                self._end()
            elif kind == ROLLBACK:
                self._end()
            elif kind == ROLLBACK_TO:
                if self.pending:
                    return False
            else:
                self.savepoints = True
        self._apply(implicit)
        return self.in_transaction == (after != b"I")

    def _end(self) -> None:
        self.in_transaction = False
        self.pending = []
        self.savepoints = False

    def _apply(self, ops: list[Op]) -> None:
        settings = self.settings
        committed = settings.committed
        search_path = False
        for kind, name, text in ops:
            if kind == RESET_ALL:
                search_path = search_path or "search_path" in committed
                committed.clear()
                settings.unsafe = None
                continue
            search_path = search_path or name == "search_path"
            committed.pop(name, None)
            if kind in (SET, UNSAFE_SET):
                committed[name] = text
            if kind == UNSAFE_SET:
                settings.unsafe = (settings.unsafe or set()) | {name}
            elif settings.unsafe:
                settings.unsafe.discard(name)
        if search_path and settings.on_search_path is not None:
            settings.on_search_path()


def alignment(
    want: Mapping[str, str],
    have: Mapping[str, str],
    want_reported: Mapping[str, str],
    have_reported: Mapping[str, str],
    login_reported: Mapping[str, str] | None = None,
) -> str:
    """The statements that bring a server from ``have`` to ``want`` (settings by
    statement, and reported values; ``login_reported``: the server's at login, which
    its client's were too), as one text; "" when it is there already.

    A reported value back to the login's is RESET rather than set, as the client's own
    session has it: pg_settings then says its source is not the session."""
    out: list[str] = []
    resetting: set[str] = set()
    for name in have:
        if name not in want:
            out.append(_reset(name))
            resetting.add(name)
    for name, text in want.items():
        if have.get(name) != text:
            out.append(text)
    for name, value in want_reported.items():
        lower = name.lower()
        if lower in _NOT_SET or have_reported.get(name) == value:
            continue
        # (One the client set by statement is set, whatever its value.)
        if lower not in want and login_reported is not None and login_reported.get(name) == value:
            if lower not in resetting:
                out.append(_reset(lower))
        else:
            out.append(f"SELECT pg_catalog.set_config({_literal(name)}, {_literal(value)}, false)")
    return "; ".join(out)


def _reset(name: str) -> str:
    # Names are lower case, as the grammar folds them: quoting keeps them so.
    return "RESET " + ".".join(f'"{part}"' for part in name.split("."))
