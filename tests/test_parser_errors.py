"""ParseError: PostgreSQL's message, 1-based cursor position, SQLSTATE 42601.

The expected positions are what PostgreSQL 15 itself reports for these texts.
"""

from __future__ import annotations

import pytest

from parser_api import Classifier, ParseError, classify, split, tokens


@pytest.mark.parametrize(
    ("sql", "message", "position"),
    [
        ("SELEC 1", 'syntax error at or near "SELEC"', 1),
        ("SELECT (", "syntax error at end of input", 9),
        ("CREATE TABLE", "syntax error at end of input", 13),
        ("select 'é' +", "syntax error at end of input", 13),
        ("SELECT 'é', 'ü' FROM WHERE", 'syntax error at or near "WHERE"', 22),
        ("\n\nSELECT\n  ,", 'syntax error at or near ","', 12),
        ("SELECT 'abc", "unterminated quoted string at or near \"'abc\"", 8),
        ("SELECT $$x", 'unterminated dollar-quoted string at or near "$$x"', 8),
        ("SELECT 1 /* x", 'unterminated /* comment at or near "/* x"', 10),
        ("SELECT * FROM t LIMIT 1 LIMIT 2", 'syntax error at or near "LIMIT"', 25),
        ('SELECT ""', 'zero-length delimited identifier at or near """"', 8),
    ],
)
def test_message_and_position(sql: str, message: str, position: int) -> None:
    with pytest.raises(ParseError) as raised:
        classify(sql)
    error = raised.value
    assert (error.message, error.position, error.sqlstate) == (message, position, "42601")


def test_grammar_errors_with_another_code_in_postgresql_keep_42601() -> None:
    """PostgreSQL says 42P20 here; libpg_query gives no code, the library says 42601."""
    with pytest.raises(ParseError) as raised:
        classify("SELECT row_number() OVER (ROWS UNBOUNDED FOLLOWING) FROM t")
    assert raised.value.sqlstate == "42601"
    assert raised.value.message == "frame start cannot be UNBOUNDED FOLLOWING"
    assert raised.value.position == 32


def test_is_a_value_error_with_a_readable_text() -> None:
    error = ParseError("syntax error at end of input", 9)
    assert isinstance(error, ValueError)
    assert str(error) == "syntax error at end of input (at character 9)"
    assert str(ParseError("no position", None)) == "no position"


@pytest.mark.parametrize(
    "call",
    [classify, Classifier().classify, split, tokens],
    ids=["classify", "Classifier.classify", "split", "tokens"],
)
def test_every_entry_point_raises_parse_error(call: object) -> None:
    assert callable(call)
    with pytest.raises(ParseError):
        call("SELECT 'unterminated")
