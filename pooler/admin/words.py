"""Admin command texts as words, by PostgreSQL's own scanner (``parser_api.tokens``).

pglast takes ``SHOW POOL_NODES`` for a SHOW of a setting and ``PAUSE`` or ``PGPOOL ...``
for nothing at all, so commands are recognised by their words, not by a parse tree;
never by regular expressions, which would take a comment or a string for a command.
"""

from __future__ import annotations

from dataclasses import dataclass

from parser_api import ParseError, TokenKind, tokens

#: Longest text looked at in the cheap pre-check: no admin command is longer.
LONGEST = 512
_SPACE_OR_COMMENT = frozenset(b" \t\r\n\f/-")
_S = frozenset(b"Ss")
_E = frozenset(b"Ee")
_P = frozenset(b"Pp")


@dataclass(frozen=True, slots=True)
class Word:
    """One token of a command: its text, and where it starts (1-based, PostgreSQL's
    error position)."""

    text: str
    position: int
    kind: TokenKind
    #: Where it ends (0-based, exclusive).
    end: int

    @property
    def upper(self) -> str:
        """The word without case (an identifier or keyword)."""
        return self.text.upper()


@dataclass(frozen=True, slots=True)
class Statement:
    """One statement of a text: its words (comments left out), and the position of the
    end of the text, for an error at the end of input."""

    words: tuple[Word, ...]
    end: int
    #: The whole text it was split from.
    sql: str

    def text_after(self, word: Word) -> str:
        """The statement's text after ``word`` (comments included) to its end."""
        return self.sql[word.end : self.end - 1].strip()


def may_be_admin(body: bytes, start: int = 0) -> bool:
    """The cheap pre-check for a statement text (from ``start`` in ``body``) seen on
    every connection: could it be ``SHOW POOL_...``, ``PGPOOL ...`` or ``EXPLAIN ROUTE
    ...``? One byte
    and a short slice for most texts; no copy of the whole text unless it starts with
    white space or a comment and is short."""
    if start >= len(body):
        return False
    first = body[start]
    if first in _S:
        return body[start + 1 : start + 4].upper() == b"HOW"
    if first in _E:
        return body[start + 1 : start + 7].upper() == b"XPLAIN"
    if first in _P:
        return body[start + 1 : start + 6].upper() == b"GPOOL"
    if first not in _SPACE_OR_COMMENT or len(body) - start > LONGEST:
        return False
    text = body[start:].upper()
    return b"POOL_" in text or b"PGPOOL" in text or b"ROUTE" in text


def statements(sql: str) -> list[Statement] | None:
    """The statements of ``sql`` split at semicolons, or None when it does not scan (an
    unterminated quote or comment)."""
    try:
        found = tokens(sql)
    except ParseError:
        return None
    out: list[Statement] = []
    current: list[Word] = []
    for token in found:
        if token.kind is TokenKind.COMMENT:
            continue
        if token.text == ";":
            if current:
                out.append(Statement(tuple(current), token.start + 1, sql))
            current = []
            continue
        current.append(Word(token.text, token.start + 1, token.kind, token.end))
    if current:
        out.append(Statement(tuple(current), len(sql) + 1, sql))
    return out
