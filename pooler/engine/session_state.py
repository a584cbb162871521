"""Session state a client leaves on its server, and whether that pins it there.

In transaction pooling a client's server goes back to the pool at the end of each
transaction, so anything that outlives a transaction on the server (a setting, a
prepared statement, LISTEN, a temporary table, a WITH HOLD cursor, a session advisory
lock, SET ROLE, a loaded library) would either vanish for this client or leak to the
next one. Settings and protocol-level prepared statements are carried over (see
``settings`` and ``statements``); for the rest the client keeps its server: it is
pinned, for the reasons counted here, until DISCARD ALL undoes everything or it leaves.
"""

from __future__ import annotations

import logging
from collections import Counter

from parser_api import Classification, EffectKind
from pooler.engine.settings import IDENTITY

#: Why a session effect pins, by kind; the kinds absent undo state, leave none, or are
#: carried to the next server (settings).
_PIN_REASONS: dict[EffectKind, str] = {
    EffectKind.HOLD_CURSOR: "with hold cursor",
    EffectKind.LISTEN: "listen",
    EffectKind.TEMP_OBJECT: "temporary object",
    EffectKind.ADVISORY_LOCK: "advisory lock",
    EffectKind.LOAD: "load",
    EffectKind.RANDOM_SEED: "setseed",
}
log = logging.getLogger(__name__)

#: A DO block may change anything, and its text does not always show what.
_DO = "utility:DoStmt"


class SessionState:
    """Why one client is pinned to its server (empty: it may change servers)."""

    __slots__ = ("_discard_errors", "pins")

    def __init__(self) -> None:
        #: Pin reasons, each with how many statements gave it.
        self.pins: Counter[str] = Counter()
        # Server errors counted when a DISCARD ALL was sent, None when none is pending.
        self._discard_errors: int | None = None

    def statement(self, classification: Classification, errors: int, sql: str = "") -> bool:
        """A statement text ``sql`` was sent (``errors``: the server's error count so far).

        Returns whether it drops every prepared statement of the session (DEALLOCATE
        ALL, DISCARD ALL), the pooler's own included.
        """
        added: list[str] = []
        drops_prepared = False
        for effect in classification.session_effects:
            kind = effect.kind
            if kind is EffectKind.DISCARD and effect.name == "all":
                self._discard_errors = errors
                drops_prepared = True
            elif kind is EffectKind.DEALLOCATE and effect.name is None:
                drops_prepared = True
            elif (reason := _PIN_REASONS.get(kind)) is not None:
                added.append(reason)
            elif kind is EffectKind.SETTING and effect.name in IDENTITY:
                # Who the session is decides what it may see: never carried.
                added.append("set role")
        for statement in classification.statements:
            if statement.kind == _DO:
                added.append("do block")
                break
        for reason in added:
            self.pin(reason, sql)
        return drops_prepared

    def pin(self, reason: str, sql: str = "") -> None:
        """Pin for ``reason`` (state the pooler cannot carry to another server), made by
        the statement text ``sql``."""
        self.pins[reason] += 1
        # State made after a DISCARD ALL is not undone by it.
        self._discard_errors = None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("client pinned to its server", extra={"reason": reason, "sql": sql[:200]})

    def settled(self, errors: int) -> None:
        """The server is idle outside a transaction: a DISCARD ALL sent since the last
        pin that met no error has undone everything, and the client may move again."""
        if self._discard_errors is not None:
            if errors == self._discard_errors:
                self.pins.clear()
            self._discard_errors = None
