"""Generate parser_api/data/pg_proc.json from a real PostgreSQL server's pg_proc.

parser_api decides whether a built-in function may be read on a standby from its
volatility (pg_proc.provolatile), keyed by name and argument count. Those facts come
from the server, not from a hand-written list, so this script reads them with psql and
writes the compact table the library ships:

    {"source": "...", "functions": {"name": {"argcount": "i" | "s" | "v", ...}, ...}}

An argument count written "N+" stands for N or more (VARIADIC functions). Where several
overloads share a name and an argument count, the most volatile one is recorded: the
library only ever needs the safe answer.

Usage (any psql connection options, the server of the major version we target):

    python scripts/gen_pg_proc.py -- -h /tmp/sock -p 5432 -U postgres -d postgres
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

_QUERY = """
SELECT p.proname, p.pronargs, p.pronargdefaults, p.provariadic <> 0, p.provolatile
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_namespace AS n ON n.oid = p.pronamespace
WHERE n.nspname = 'pg_catalog'
ORDER BY 1, 2
"""

# Rank of a volatility letter: a higher one is the safer answer for a merged entry.
_RANK = {"i": 0, "s": 1, "v": 2}

_DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "parser_api" / "data" / "pg_proc.json"


def _psql(args: list[str], query: str) -> str:
    """Run one query through psql and return its unaligned, tuples-only output."""
    result = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", *args,
         "-c", query],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout


def build_table(rows: str) -> dict[str, dict[str, str]]:
    """Turn psql's tab-separated rows into name -> {argcount key: volatility}."""
    table: dict[str, dict[str, str]] = {}
    for line in rows.splitlines():
        if not line:
            continue
        name, nargs_text, ndefaults_text, variadic_text, volatility = line.split("\t")
        nargs, ndefaults = int(nargs_text), int(ndefaults_text)
        if variadic_text == "t":
            keys = [f"{nargs - ndefaults}+"]
        else:
            keys = [str(n) for n in range(nargs - ndefaults, nargs + 1)]
        entry = table.setdefault(name, {})
        for key in keys:
            known = entry.get(key)
            if known is None or _RANK[volatility] > _RANK[known]:
                entry[key] = volatility
    return table


def render(source: str, table: dict[str, dict[str, str]]) -> str:
    """Serialise the table one function a line, so a regeneration diffs readably."""
    lines = [f'{{"source": {json.dumps(source)},', ' "functions": {']
    names = sorted(table)
    for index, name in enumerate(names):
        comma = "," if index < len(names) - 1 else ""
        entry = json.dumps(dict(sorted(table[name].items())), separators=(",", ":"))
        lines.append(f"  {json.dumps(name)}: {entry}{comma}")
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Read pg_proc through psql and write the JSON table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=_DEFAULT_OUTPUT)
    parser.add_argument("psql_args", nargs="*", help="connection options passed to psql")
    options = parser.parse_args()
    version = _psql(options.psql_args, "SHOW server_version").strip()
    table = build_table(_psql(options.psql_args, _QUERY))
    options.output.write_text(
        render(f"pg_catalog.pg_proc of PostgreSQL {version}", table), encoding="utf-8"
    )
    print(f"{options.output}: {len(table)} function names")


if __name__ == "__main__":
    main()
