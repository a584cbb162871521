"""Offsets: libpg_query counts UTF-8 bytes, parser_api's callers count characters."""

from __future__ import annotations

from collections.abc import Callable


def byte_to_char(sql: str) -> Callable[[int], int]:
    """A function turning a UTF-8 byte offset of ``sql`` into a character offset."""
    if sql.isascii():
        return _same
    encoded = sql.encode("utf-8")
    return lambda offset: len(encoded[:offset].decode("utf-8", errors="ignore"))


def _same(offset: int) -> int:
    return offset


def strip_span(sql: str, start: int, end: int) -> tuple[int, int]:
    """Narrow [start, end) to leave out the whitespace at both ends (as pglast's split)."""
    segment = sql[start:end]
    stripped = segment.lstrip()
    start += len(segment) - len(stripped)
    return start, start + len(stripped.rstrip())
