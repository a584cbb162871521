"""Which nodes may run a statement text, from parser_api's classification and hints.

A text may leave the primary only when running it on a hot standby answers exactly
as the primary would: a plain read (parser_api's ``Route.READ``) that starts no
transaction and leaves no session state behind (a client with session state is kept on
the primary, where that state must live). Everything else, and every text that does
not parse, runs on the primary.
"""

from __future__ import annotations

from enum import IntEnum

from parser_api import Classification, Route, TransactionControl


class Target(IntEnum):
    """Which nodes may serve a request; a larger value is stricter, and a unit of
    several requests takes the strictest of theirs."""

    #: Any node the balancer picks, the primary included (as its weight says).
    ANY = 0
    #: A standby if one can serve it (hint ``/* pooler: standby */``), else the primary.
    STANDBY = 1
    #: The primary only.
    PRIMARY = 2


#: Leading block comments that choose the node, compared without case and spaces.
_HINTS = {
    "pooler:primary": Target.PRIMARY,
    "pooler:standby": Target.STANDBY,
    # pgpool-II's
    "noloadbalance": Target.PRIMARY,
}


def hint_of(text: str) -> Target | None:
    """The target a leading ``/* ... */`` comment asks for, or None."""
    start = len(text) - len(text.lstrip())
    if not text.startswith("/*", start):
        return None
    end = text.find("*/", start + 2)
    if end < 0:
        return None
    words = "".join(text[start + 2 : end].split()).lower()
    return _HINTS.get(words)


def on_primary(classification: Classification | None, text: str) -> Target:
    """Where a statement runs when reads do not leave the primary: there (and no time is
    spent asking where else it could)."""
    return Target.PRIMARY


def target_of(classification: Classification | None, text: str) -> Target:
    """Where a statement text may run (``classification`` None: it does not parse)."""
    if (
        classification is None
        or classification.route is not Route.READ
        or (classification.transaction and not read_only_start(classification.transaction))
        or classification.session_effects
        # A DO block may leave any state behind (it pins its client): on the primary.
        or any(statement.kind == _DO for statement in classification.statements)
    ):
        return Target.PRIMARY
    hint = hint_of(text) if text[:1] in _COMMENT_STARTS else None
    return Target.ANY if hint is None else hint


def read_only_start(controls: tuple[TransactionControl, ...]) -> bool:
    """Transaction control that starts a transaction declared read only (BEGIN READ
    ONLY, or BEGIN then SET TRANSACTION READ ONLY, not serializable, which a standby
    refuses), possibly ending it too: a standby may run all of it."""
    read_only = False
    for control in controls:
        action = control.action
        if action in ("begin", "set"):
            if control.isolation == "serializable":
                return False
            if control.read_only is not None:
                read_only = control.read_only
            elif action == "begin":
                read_only = False
        elif action not in ("commit", "rollback") or control.chain or not read_only:
            return False
    return read_only


_DO = "utility:DoStmt"
# A hint comment may follow white space; checking the first character first keeps the
# common text (no comment) off the slower path.
_COMMENT_STARTS = frozenset("/ \t\r\n")
