"""ParseError: PostgreSQL's message, cursor position and SQLSTATE for text that does not parse."""

from __future__ import annotations

import pglast.parser

# libpg_query reports no SQLSTATE. Nearly every error its grammar raises is 42601 in
# PostgreSQL; the few that carry another code there (42P20 for some window frames,
# 22023, ...) keep 42601 here, documented, rather than a guess table that could drift.
SYNTAX_ERROR = "42601"

# scan.l reports a syntax error at the end of the text as "... at end of input", with
# the cursor one past the last character; pglast turns that position into None.
_AT_END = "at end of input"


class ParseError(ValueError):
    """The text is not valid SQL for PostgreSQL's grammar.

    ``message`` is PostgreSQL's primary message, ``position`` its 1-based character
    position of the error (None where PostgreSQL reports none) and ``sqlstate`` always
    ``42601``.
    """

    sqlstate: str = SYNTAX_ERROR

    def __init__(self, message: str, position: int | None) -> None:
        super().__init__(message, position)
        self.message = message
        self.position = position

    def __str__(self) -> str:
        if self.position is None:
            return self.message
        return f"{self.message} (at character {self.position})"


def from_pglast(error: pglast.parser.ParseError, sql: str) -> ParseError:
    """Translate pglast's error (0-based index, None at the end) into PostgreSQL's terms."""
    message = str(error.args[0])
    index = error.args[1] if len(error.args) > 1 else None
    if isinstance(index, int):
        return ParseError(message, index + 1)
    if message.endswith(_AT_END):
        return ParseError(message, len(sql) + 1)
    return ParseError(message, None)
