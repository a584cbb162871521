"""parser_api.tokens and split: what an editor needs to colour SQL and find statements."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parser_api import ParseError, Span, Token, TokenKind, split, tokens

K = TokenKind


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT", [(K.KEYWORD, "SELECT")]),
        ("select", [(K.KEYWORD, "select")]),
        ("WHERE name", [(K.KEYWORD, "WHERE"), (K.KEYWORD, "name")]),
        ("accounts", [(K.IDENTIFIER, "accounts")]),
        ('"Mixed Case"', [(K.IDENTIFIER, '"Mixed Case"')]),
        ('"a""b"', [(K.IDENTIFIER, '"a""b"')]),
        ('U&"d\\0061t"', [(K.IDENTIFIER, 'U&"d\\0061t"')]),
        ("'it''s'", [(K.LITERAL, "'it''s'")]),
        ("E'a\\nb'", [(K.LITERAL, "E'a\\nb'")]),
        ("U&'\\0041'", [(K.LITERAL, "U&'\\0041'")]),
        ("$$body; 'quoted'$$", [(K.LITERAL, "$$body; 'quoted'$$")]),
        ("$fn$ $$ inner $$ $fn$", [(K.LITERAL, "$fn$ $$ inner $$ $fn$")]),
        ("42", [(K.LITERAL, "42")]),
        ("3.14", [(K.LITERAL, "3.14")]),
        ("1e-5", [(K.LITERAL, "1e-5")]),
        ("B'1010'", [(K.LITERAL, "B'1010'")]),
        ("X'1F'", [(K.LITERAL, "X'1F'")]),
        ("$1", [(K.PARAMETER, "$1")]),
        ("-- line comment", [(K.COMMENT, "-- line comment")]),
        ("/* block */", [(K.COMMENT, "/* block */")]),
        ("/* outer /* nested */ end */", [(K.COMMENT, "/* outer /* nested */ end */")]),
        ("a::int", [(K.IDENTIFIER, "a"), (K.OPERATOR, "::"), (K.KEYWORD, "int")]),
        ("a <> b", [(K.IDENTIFIER, "a"), (K.OPERATOR, "<>"), (K.IDENTIFIER, "b")]),
        ("x->>'k'", [(K.IDENTIFIER, "x"), (K.OPERATOR, "->>"), (K.LITERAL, "'k'")]),
        ("1 + 2 * 3", [(K.LITERAL, "1"), (K.OPERATOR, "+"), (K.LITERAL, "2"),
                       (K.OPERATOR, "*"), (K.LITERAL, "3")]),
        ("a >= b", [(K.IDENTIFIER, "a"), (K.OPERATOR, ">="), (K.IDENTIFIER, "b")]),
        ("f(a => 1)", [(K.IDENTIFIER, "f"), (K.PUNCTUATION, "("), (K.IDENTIFIER, "a"),
                       (K.OPERATOR, "=>"), (K.LITERAL, "1"), (K.PUNCTUATION, ")")]),
        ("(a, b);", [(K.PUNCTUATION, "("), (K.IDENTIFIER, "a"), (K.PUNCTUATION, ","),
                     (K.IDENTIFIER, "b"), (K.PUNCTUATION, ")"), (K.PUNCTUATION, ";")]),
        ("s.t[1]", [(K.IDENTIFIER, "s"), (K.PUNCTUATION, "."), (K.IDENTIFIER, "t"),
                    (K.PUNCTUATION, "["), (K.LITERAL, "1"), (K.PUNCTUATION, "]")]),
    ],
)
def test_token_kinds(sql: str, expected: list[tuple[TokenKind, str]]) -> None:
    """Each token's kind and text, on a table of the cases an editor colours."""
    assert [(token.kind, token.text) for token in tokens(sql)] == expected


def test_token_fields() -> None:
    """Character offsets (end exclusive), the text, and libpg_query's token name."""
    assert tokens("SELECT 'é', $1") == [
        Token(K.KEYWORD, 0, 6, "SELECT", "SELECT"),
        Token(K.LITERAL, 7, 10, "'é'", "SCONST"),
        Token(K.PUNCTUATION, 10, 11, ",", "ASCII_44"),
        Token(K.PARAMETER, 12, 14, "$1", "PARAM"),
    ]


def test_text_the_grammar_rejects_still_scans() -> None:
    """Colouring works while the user is still typing."""
    assert [token.kind for token in tokens("SELECT FROM WHERE (")] == [
        K.KEYWORD, K.KEYWORD, K.KEYWORD, K.PUNCTUATION,
    ]


def test_unterminated_string_raises() -> None:
    with pytest.raises(ParseError) as raised:
        tokens("SELECT 'abc")
    assert raised.value.position == 8


def _rebuilt(sql: str, found: list[Token]) -> str:
    """The tokens with the text between them (which must be whitespace)."""
    parts = []
    position = 0
    for token in found:
        gap = sql[position : token.start]
        assert gap.strip() == "", (gap, token)
        assert sql[token.start : token.end] == token.text
        parts.extend([gap, token.text])
        position = token.end
    assert sql[position:].strip() == ""
    parts.append(sql[position:])
    return "".join(parts)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT a.b, 'x''y', $1::int FROM \"T\" -- end",
        "/* c1 */ INSERT INTO t VALUES (E'\\t', 1.5e3, B'01')\n;\n\tSELECT $q$ ; $q$",
        "SELECT 'ünïcödé', \"日本\" FROM t WHERE a @> '{}' AND b !~* 'x'",
        "   \n",
    ],
)
def test_tokens_and_whitespace_give_back_the_text(sql: str) -> None:
    assert _rebuilt(sql, tokens(sql)) == sql


_WORDS = st.sampled_from([
    "SELECT", "from", "t", '"Q x"', "'s''t'", "$$d$$", "$1", "42", "1.5", "+", "::",
    "<=", "(", ")", ",", ";", "-- c\n", "/* c */", "é", "'ü'", "E'\\n'", "x'0F'", "a.b",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_WORDS, st.sampled_from([" ", "\n", "\t", "  "])), max_size=20))
def test_any_token_soup_is_rebuilt(pieces: list[tuple[str, str]]) -> None:
    """Property: tokens plus the whitespace between them give back the whole text."""
    sql = "".join(word + space for word, space in pieces)
    assert _rebuilt(sql, tokens(sql)) == sql


def test_split_with_offsets() -> None:
    """Statements with their character offsets, like Classification.statements."""
    sql = "/* a */ SELECT 'é';  INSERT INTO t VALUES (1) ;\nCOMMIT"
    assert split(sql) == [
        Span(8, 18, "SELECT 'é'"),
        Span(21, 45, "INSERT INTO t VALUES (1)"),
        Span(48, 54, "COMMIT"),
    ]


def test_split_needs_valid_sql() -> None:
    with pytest.raises(ParseError):
        split("SELEC 1; SELECT 2")


def test_split_of_nothing() -> None:
    assert split("") == [] and split(" ; -- x") == []
