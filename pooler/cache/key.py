"""What identifies a cached answer (sans-IO).

A key is the client's key space (database, user and every startup parameter, so every
setting a client can give at startup: search_path, TimeZone, DateStyle,
IntervalStyle, extra_float_digits, bytea_output, client_encoding, row_security, ...;
a client that changes a setting with SET is pinned to its server and never uses the
cache) and the exact request: a Query's text, or for the extended protocol the
statement's text and parameter types, the Bind's parameter formats, values and result
formats, and which of Parse and Describe the batch holds (they change the answer
bytes). Never a fingerprint: it is the same for ``id = 1`` and ``id = 2``.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple

from pooler.protocol import messages as m
from pooler.protocol.codec import Event, Message

_EXECUTE = ord("E")
_SYNC = ord("S")
_FLUSH = ord("H")
_NO_ROW_LIMIT = b"\0\0\0\0"
# Execute of the unnamed portal with no row limit.
_EXECUTE_ALL = b"E\0\0\0\x09\0" + _NO_ROW_LIMIT

Key = Hashable


class KeySpaces:
    """A small number for each (database, user, startup parameters) seen, so that a
    key holds one int rather than all of them."""

    __slots__ = ("_spaces",)

    def __init__(self) -> None:
        self._spaces: dict[tuple[str, str, tuple[tuple[str, str], ...]], int] = {}

    def of(self, database: str, user: str, params: tuple[tuple[str, str], ...]) -> int:
        """The key space of clients that connect with these."""
        spaces = self._spaces
        return spaces.setdefault((database, user, params), len(spaces))

    def of_user(self, database: str, user: str) -> set[int]:
        """The key spaces of ``user`` in ``database``, whatever their parameters."""
        return {
            space for (db, who, _), space in self._spaces.items() if db == database and who == user
        }


def statement_text(key: Key) -> bytes:
    """The statement text of a key made by ``CacheSession.lookup``."""
    assert isinstance(key, tuple)
    if len(key) == 2:
        # A Query's body: the text and its NUL.
        return bytes(key[1][:-1])
    # A batch: the Parse's text, NUL, parameter types.
    return bytes(key[2][: key[2].find(b"\0")])


class Batch(NamedTuple):
    """One extended-protocol execution up to its Sync, as a cache sees it (a tuple:
    made on every prepared execution, faster than a frozen dataclass)."""

    #: The unnamed statement's Parse (text and parameter types), when the batch has one.
    parse: bytes | None
    #: The statement the Bind names (empty: the unnamed one).
    statement: bytes
    #: The Bind after the statement name: parameter formats, values, result formats.
    bind: bytes
    #: What Describe asked for: b"" (none), b"P" (the portal), b"S" (the statement).
    describe: bytes


def simple_query(events: bytes | list[Event]) -> bytes | None:
    """The body of the Query when ``events`` are one Query and nothing else."""
    if type(events) is not list or len(events) != 1:
        return None
    msg = events[0]
    if type(msg) is not Message or msg.type != m.QUERY:
        return None
    return msg.body


def batch(events: bytes | list[Event]) -> Batch | None:
    """The batch when ``events`` are [Parse of the unnamed statement], Bind to the
    unnamed portal, [Describe], Execute with no row limit and Sync, in that order and
    nothing else; None otherwise."""
    if type(events) is not list or len(events) < 2:
        return None
    count = len(events)
    if count == 3 or count == 4:
        # The common prepared execution (pgbench -M prepared): Bind of a named
        # statement, [Describe of the unnamed portal,] Execute of that portal with no
        # row limit, Sync.
        first = events[0]
        execute = events[-2]
        last = events[-1]
        if (
            type(execute) is bytes
            and execute == _EXECUTE_ALL
            and type(first) is Message
            and first.type == m.BIND
            and type(last) is Message
            and last.type == m.SYNC
        ):
            body = first.body
            name_end = body.find(b"\0", 1)
            if body[:1] == b"\0" and name_end > 1:
                if count == 3:
                    return Batch(None, body[1:name_end], body[name_end + 1 :], b"")
                middle = events[1]
                if type(middle) is Message and middle.type == m.DESCRIBE and middle.body == b"P\0":
                    return Batch(None, body[1:name_end], body[name_end + 1 :], b"P")
    parse: bytes | None = None
    bound: tuple[bytes, bytes] | None = None
    describe = b""
    executed = synced = False
    for event in events:
        if synced:
            return None
        if type(event) is Message:
            t = event.type
            body = event.body
            if t == m.SYNC:
                # (Split out in transaction pooling, where requests are numbered.)
                if not executed:
                    return None
                synced = True
                continue
            if executed or (t != m.PARSE and bound is None and t != m.BIND):
                return None
            if t == m.PARSE and parse is None and bound is None and body[:1] == b"\0":
                parse = body[1:]
            elif t == m.BIND and bound is None and body[:1] == b"\0":
                name_end = body.find(b"\0", 1)
                bound = (body[1:name_end], body[name_end + 1 :])
            elif t == m.DESCRIBE and bound is not None and not describe:
                describe = body[:1]
                if describe == b"P" and body != b"P\0":
                    return None
                if describe == b"S" and body[1:-1] != bound[0]:
                    return None
            else:
                return None
        elif type(event) is bytes:
            if bound is None:
                return None
            pos = 0
            while pos < len(event):
                t = event[pos]
                end = pos + 1 + int.from_bytes(event[pos + 1 : pos + 5], "big")
                if synced:
                    return None
                if t == _EXECUTE and not executed and event[pos + 5 : end] == b"\0" + _NO_ROW_LIMIT:
                    executed = True
                elif t == _SYNC and executed:
                    synced = True
                elif t != _FLUSH:
                    return None
                pos = end
        else:
            return None
    if not synced or bound is None:
        return None
    if (parse is None) != bool(bound[0]):
        # The unnamed statement of an earlier batch (its text is not known here), or a
        # Parse of one statement and a Bind of another.
        return None
    return Batch(parse, bound[0], bound[1], describe)
