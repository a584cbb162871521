"""``python -m parser_api [SQL]``: print what SQL does, as JSON.

The SQL comes from the argument, or from standard input without one. Exit status 0,
or 1 with ``{"error": {...}}`` for text PostgreSQL's grammar rejects.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from parser_api.classify import classify
from parser_api.errors import ParseError
from parser_api.tokens import split, tokens


def _payload(sql: str, mode: str) -> Any:
    if mode == "tokens":
        return [
            {"kind": t.kind.value, "start": t.start, "end": t.end, "text": t.text, "name": t.name}
            for t in tokens(sql)
        ]
    if mode == "split":
        return [span._asdict() for span in split(sql)]
    return classify(sql).to_dict()


def main(argv: list[str] | None = None) -> int:
    """Run the command line tool; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m parser_api",
        description="Print what a PostgreSQL SQL text does (route, tables, effects) as JSON.",
    )
    parser.add_argument("sql", nargs="?", help="the SQL text (default: read standard input)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--tokens", dest="mode", action="store_const", const="tokens",
        help="print the tokens (kind, offsets, text) instead",
    )
    mode.add_argument(
        "--split", dest="mode", action="store_const", const="split",
        help="print the statements' offsets and texts instead",
    )
    parser.add_argument("--compact", action="store_true", help="one line of JSON")
    options = parser.parse_args(argv)
    sql = options.sql if options.sql is not None else sys.stdin.read()
    indent = None if options.compact else 2
    try:
        payload = _payload(sql, options.mode or "classify")
    except ParseError as error:
        failure = {
            "message": error.message,
            "position": error.position,
            "sqlstate": error.sqlstate,
        }
        print(json.dumps({"error": failure}, indent=indent))
        return 1
    print(json.dumps(payload, indent=indent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
