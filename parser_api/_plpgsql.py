"""The SQL inside a PL/pgSQL DO block, read with libpg_query's PL/pgSQL parser."""

from __future__ import annotations

import json
from typing import Any

import pglast.parser

# PL/pgSQL's RawParseMode of an expression (parser.h): a whole statement, a type name,
# an expression, or an assignment "target := expression" (three forms by target depth).
_STATEMENT, _TYPE_NAME, _EXPRESSION = 0, 1, 2
# Statements whose SQL is a string computed at run time: nobody can say what it does.
_DYNAMIC = frozenset({"PLpgSQL_stmt_dynexecute", "PLpgSQL_stmt_dynfors", "dynquery"})


def do_block_statements(body: str) -> list[str] | None:
    """Every SQL statement a PL/pgSQL DO body may run, as standalone SQL texts.

    Expressions become ``SELECT <expression>`` (PL/pgSQL runs them so). None when the
    body runs dynamic SQL (EXECUTE '...') or does not parse: then only running it says.
    """
    tag = "$parser_api$"
    while tag in body:
        tag = tag[:-1] + "_$"
    source = f"CREATE FUNCTION pg_temp.do_block() RETURNS void LANGUAGE plpgsql AS {tag}{body}{tag}"
    try:
        tree = json.loads(pglast.parser.parse_plpgsql_json(source))
    except pglast.parser.ParseError:
        return None
    found: list[str] = []
    return found if _collect(tree, found) else None


def _collect(value: Any, found: list[str]) -> bool:
    """Append the SQL of every expression below ``value``; False on dynamic SQL."""
    if isinstance(value, list):
        return all(_collect(item, found) for item in value)
    if not isinstance(value, dict):
        return True
    for key, item in value.items():
        if key in _DYNAMIC:
            return False
        if key == "PLpgSQL_expr":
            text = _expression_sql(item["query"], item.get("parseMode", _STATEMENT))
            if text is not None:
                found.append(text)
        elif not _collect(item, found):
            return False
    return True


def _expression_sql(query: str, mode: int) -> str | None:
    if mode == _STATEMENT:
        return query
    if mode == _TYPE_NAME:
        return None
    if mode == _EXPRESSION:
        return f"SELECT {query}"
    # An assignment: what follows the first := (or =) is the expression.
    for token in pglast.parser.scan(query):
        if token.name in ("COLON_EQUALS", "ASCII_61"):
            return f"SELECT {query[token.end + 1 :]}"
    return None
