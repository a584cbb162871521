"""Tokens with their kind and position (for colouring SQL), and statement splitting."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import NamedTuple

import pglast.parser

from parser_api.errors import from_pglast


class TokenKind(StrEnum):
    """What a token is, for colouring."""

    KEYWORD = "keyword"
    IDENTIFIER = "identifier"
    LITERAL = "literal"
    """Strings (quoted, dollar-quoted, E'', U&''), numbers, bit strings."""
    OPERATOR = "operator"
    PUNCTUATION = "punctuation"
    """, ; ( ) [ ] . :"""
    COMMENT = "comment"
    """``-- ...`` and ``/* ... */``."""
    PARAMETER = "parameter"
    """``$1``."""
    OTHER = "other"


class Token(NamedTuple):
    """One token: ``text == sql[start:end]`` (character offsets, end exclusive).

    ``name`` is libpg_query's token name (``SELECT``, ``IDENT``, ``SCONST``, ``ICONST``,
    ``FCONST``, ``Op``, ``TYPECAST``, ...) for finer colouring. A keyword is a keyword
    here even where the grammar would take it as a name (``SELECT name FROM t``): the
    scanner does not know.
    """

    kind: TokenKind
    start: int
    end: int
    text: str
    name: str


class Span(NamedTuple):
    """One statement of a text: ``text == sql[start:end]``, without the surrounding
    whitespace and the closing semicolon."""

    start: int
    end: int
    text: str


_LITERALS = frozenset({"SCONST", "USCONST", "BCONST", "XCONST", "ICONST", "FCONST"})
_IDENTIFIERS = frozenset({"IDENT", "UIDENT"})
_OPERATORS = frozenset({
    "Op", "TYPECAST", "DOT_DOT", "COLON_EQUALS", "EQUALS_GREATER", "LESS_EQUALS",
    "GREATER_EQUALS", "NOT_EQUALS",
})
# The scanner names one-character tokens ASCII_<code>.
_OPERATOR_CHARACTERS = frozenset("+-*/%^<>=~!@#&|`?")
_KINDS: dict[str, TokenKind] = {
    **dict.fromkeys(_LITERALS, TokenKind.LITERAL),
    **dict.fromkeys(_IDENTIFIERS, TokenKind.IDENTIFIER),
    **dict.fromkeys(_OPERATORS, TokenKind.OPERATOR),
    "PARAM": TokenKind.PARAMETER,
    "SQL_COMMENT": TokenKind.COMMENT,
    "C_COMMENT": TokenKind.COMMENT,
}


def _other_kind(name: str) -> TokenKind:
    """The kind of a token _KINDS does not list: one character, or unforeseen."""
    if name.startswith("ASCII_"):
        character = chr(int(name[6:]))
        return TokenKind.OPERATOR if character in _OPERATOR_CHARACTERS else TokenKind.PUNCTUATION
    return TokenKind.OTHER


def tokens(sql: str) -> list[Token]:
    """Scan ``sql`` into tokens, comments included, in text order.

    Only the scanner runs, so text the grammar rejects still scans; an unterminated
    string, quoted identifier or comment raises `parser_api.ParseError`.
    """
    try:
        scanned = pglast.parser.scan(sql)
    except pglast.parser.ParseError as error:
        raise from_pglast(error, sql) from None
    result = []
    for start, last, name, keyword in scanned:
        # pglast reports the last character's index; ends here are exclusive.
        kind = _KINDS.get(name) if keyword == "NO_KEYWORD" else TokenKind.KEYWORD
        if kind is None:
            kind = _other_kind(name)
        result.append(Token(kind, start, last + 1, sql[start : last + 1], name))
    return result


def split(sql: str) -> list[Span]:
    """Split ``sql`` into its statements, with their character offsets.

    The parser splits, so the text must be valid SQL (else `ParseError`); comments
    before a statement stay out of it, as in `Classification.statements`. (libpg_query's
    scanner-only split drops statements that start with no keyword: for text that does
    not parse, `tokens` is the tool.)
    """
    try:
        slices = pglast.parser.split(sql, only_slices=True)
    except pglast.parser.ParseError as error:
        raise from_pglast(error, sql) from None
    return [Span(piece.start, piece.stop, sql[piece]) for piece in slices]


def string_value(token: Token) -> str | None:
    """The value of a string constant token (``'a''b'``, ``E'a\\'b'``, ``$$a$$``), as
    PostgreSQL reads it; None when ``token`` is not one."""
    if token.name != "SCONST":
        return None
    # The token alone after SELECT is one constant: the parser decodes its escapes.
    try:
        tree = json.loads(pglast.parser.parse_sql_json("SELECT " + token.text))
    except pglast.parser.ParseError:
        return None
    target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]["val"]
    value = target.get("A_Const", {}).get("sval", {}).get("sval")
    return value if isinstance(value, str) else None
