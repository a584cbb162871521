"""Result sets and errors of admin commands as PostgreSQL sends them (sans-IO)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pooler.protocol.codec import frame

#: Type OIDs of the columns (what PostgreSQL's catalog calls them).
TEXT = 25
INT4 = 23
INT8 = 20
BOOL = 16
NUMERIC = 1700

_ROW_DESCRIPTION = ord("T")
_DATA_ROW = ord("D")
_NO_DATA = b"n\x00\x00\x00\x04"
_EMPTY_QUERY = b"I\x00\x00\x00\x04"
_TYPE_SIZE = {TEXT: -1, INT4: 4, INT8: 8, BOOL: 1, NUMERIC: -1}
_FIELD = struct.Struct("!ihihih")
_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")

#: A value of a row: None is SQL NULL; bools print as PostgreSQL prints them.
Value = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a result: its name and type OID."""

    name: str
    type: int = TEXT


def columns(*names: str, types: dict[str, int] | None = None) -> tuple[Column, ...]:
    """Columns of text type, except those ``types`` names."""
    kinds = types or {}
    return tuple(Column(name, kinds.get(name, TEXT)) for name in names)


class AdminError(Exception):
    """An admin command failed: answered as PostgreSQL's ErrorResponse."""

    def __init__(
        self,
        sqlstate: str,
        message: str,
        *,
        position: int | None = None,
        hint: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.position = position
        self.hint = hint
        self.detail = detail

    def response(self) -> bytes:
        """The ErrorResponse, with PostgreSQL's fields in PostgreSQL's order."""
        fields = [b"SERROR", b"VERROR", b"C" + self.sqlstate.encode()]
        fields.append(b"M" + self.message.encode())
        if self.detail is not None:
            fields.append(b"D" + self.detail.encode())
        if self.hint is not None:
            fields.append(b"H" + self.hint.encode())
        if self.position is not None:
            fields.append(b"P" + str(self.position).encode())
        return _fields(ord("E"), fields)


def syntax_error(near: str | None, position: int | None) -> AdminError:
    """PostgreSQL's 42601, at a token or at the end of the text."""
    where = "end of input" if near is None else f'"{near}"'
    return AdminError("42601", f"syntax error at or near {where}", position=position)


def row_description(cols: Sequence[Column]) -> bytes:
    """RowDescription of ``cols`` (text format, no table), or NoData for none."""
    if not cols:
        return _NO_DATA
    parts = [_INT16.pack(len(cols))]
    for col in cols:
        parts.append(col.name.encode() + b"\0")
        parts.append(_FIELD.pack(0, 0, col.type, _TYPE_SIZE[col.type], -1, 0))
    return frame(_ROW_DESCRIPTION, b"".join(parts))


def _text(value: Value) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return b"t" if value else b"f"
    return str(value).encode("utf-8", "surrogateescape")


def data_row(values: Sequence[Value]) -> bytes:
    """A DataRow of ``values`` in text format."""
    parts = [_INT16.pack(len(values))]
    for value in values:
        text = _text(value)
        if text is None:
            parts.append(_INT32.pack(-1))
        else:
            parts.append(_INT32.pack(len(text)) + text)
    return frame(_DATA_ROW, b"".join(parts))


@dataclass(frozen=True, slots=True)
class Result:
    """What a command answers: its rows (for a command with columns) and its tag."""

    rows: Sequence[Sequence[Value]] = ()
    tag: str = "SHOW"
    #: Said before the result, as a NoticeResponse (SHOW HELP).
    notice: bytes = b""

    def rows_and_tag(self, cols: Sequence[Column]) -> bytes:
        """DataRows then CommandComplete (a SELECT's tag counts the rows)."""
        out = [self.notice]
        out.extend(data_row(row) for row in self.rows)
        tag = f"SELECT {len(self.rows)}" if cols and self.tag == "SELECT" else self.tag
        out.append(frame(ord("C"), tag.encode() + b"\0"))
        return b"".join(out)


def notice(message: str, detail: str | None = None) -> bytes:
    """A NoticeResponse (severity NOTICE, SQLSTATE 00000)."""
    fields = [b"SNOTICE", b"VNOTICE", b"C00000", b"M" + message.encode()]
    if detail is not None:
        fields.append(b"D" + detail.encode())
    return _fields(ord("N"), fields)


def _fields(msg_type: int, fields: list[bytes]) -> bytes:
    """An ErrorResponse or NoticeResponse of ``fields`` (each its code letter first)."""
    return frame(msg_type, b"\0".join(fields) + b"\0\0")


@dataclass(frozen=True, slots=True)
class Later:
    """A command whose answer comes once ``future`` is done: its Result, or an
    AdminError (PAUSE waits for the transactions running, PROMOTE NODE for the
    switchover)."""

    future: asyncio.Future[Result]


def empty_query() -> bytes:
    """EmptyQueryResponse: the text held no statement."""
    return _EMPTY_QUERY
