"""Microseconds per statement for parser_api's operations (python bench/parser_speed.py).

Each row times one operation in batches and prints the median and the best batch, in
microseconds per call, and the median CPU time of the benchmark's thread (the number to
trust when other processes share the cores). Targets on the 2-core reference box:
cached classify under 2 us, uncached classify of a short statement under 60 us (median),
and a text never seen whose shape was seen (pgbench -S: a new ``aid`` each time) at most
1.5 times pglast's ``normalize`` of the same text: the last line prints that ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from itertools import count

import pglast.parser

from parser_api import Classifier, Persistence, StaticCatalog, classify, tokens

SHORT = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"

JOIN_10 = """SELECT a.id, a.owner, sum(o.amount) AS total, count(DISTINCT o.status)
FROM accounts AS a
JOIN orders AS o ON o.account_id = a.id
LEFT JOIN refunds AS r ON r.order_id = o.id
WHERE a.created_at >= DATE '2024-01-01'
  AND o.status IN ('paid', 'shipped')
  AND r.id IS NULL
GROUP BY a.id, a.owner
HAVING sum(o.amount) > 100
ORDER BY total DESC LIMIT 20"""


def _hundred_lines() -> str:
    """A 100-line report query: CTEs, joins, CASE, window functions, subqueries."""
    lines = ["WITH recent AS (", "  SELECT o.id, o.account_id, o.amount, o.status, o.created_at",
             "  FROM orders AS o", "  WHERE o.created_at > DATE '2024-06-01'", "),"]
    for n in range(8):
        lines += [
            f"bucket_{n} AS (",
            f"  SELECT r.account_id, sum(r.amount) AS amount_{n}, count(*) AS orders_{n}",
            "  FROM recent AS r",
            f"  WHERE r.status = 'status_{n}' AND r.amount BETWEEN {n * 10} AND {n * 10 + 99}",
            "  GROUP BY r.account_id",
            "),",
        ]
    lines[-1] = ")"
    lines += ["SELECT a.id,", "  a.owner,"]
    for n in range(8):
        lines += [
            f"  coalesce(b{n}.amount_{n}, 0) AS amount_{n},",
            f"  CASE WHEN b{n}.orders_{n} > 3 THEN 'many' ELSE 'few' END AS size_{n},",
        ]
    lines += ["  rank() OVER (ORDER BY a.balance DESC) AS position", "FROM accounts AS a"]
    lines += [f"LEFT JOIN bucket_{n} AS b{n} ON b{n}.account_id = a.id" for n in range(8)]
    lines += [
        "WHERE a.id IN (SELECT account_id FROM recent GROUP BY account_id HAVING count(*) > 1)",
        "  AND NOT EXISTS (SELECT 1 FROM blocked AS x WHERE x.account_id = a.id)",
        "  AND lower(a.owner) LIKE 'a%'",
    ]
    while len(lines) < 98:
        lines.append(f"  AND a.flags[{len(lines)}] IS DISTINCT FROM true")
    lines += ["ORDER BY position", "LIMIT 100"]
    return "\n".join(lines)


HUNDRED = _hundred_lines()
CATALOG = StaticCatalog(relations={"scratch": Persistence.TEMPORARY})


def measure(
    operation: Callable[[], object], batch: int, repeats: int
) -> tuple[float, float, float]:
    """Microseconds per call over ``repeats`` batches of ``batch`` calls: the median and
    best wall-clock time, and the median CPU time of this thread (which other processes
    on the same cores do not inflate)."""
    wall, cpu = [], []
    for _ in range(repeats):
        started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
        for _ in range(batch):
            operation()
        cpu.append((time.thread_time_ns() - started_cpu) / batch / 1000)
        wall.append((time.perf_counter_ns() - started) / batch / 1000)
    return statistics.median(wall), min(wall), statistics.median(cpu)


#: The two rows whose CPU times make the ratio the last line prints.
NEW_SHAPE_ROW = "Classifier new constants, offsets=False (pgbench -S)"
NORMALIZE_ROW = "reference: pglast normalize, new constants"
RATIO_BAR = 1.5


def _fresh_texts(total: int) -> Iterator[str]:
    """pgbench -S texts, each with its own aid, made before timing starts."""
    numbers = count(1)
    return iter([f"SELECT abalance FROM pgbench_accounts WHERE aid = {next(numbers)};"
                 for _ in range(total)])


def _fresh_constants(total: int, offsets: bool) -> Callable[[], object]:
    """pgbench -S: a new aid every call, so never a hit by text, only by key (the
    Classifier saw the shape once, with another aid)."""
    classifier = Classifier()
    classifier.classify(SHORT)
    texts = _fresh_texts(total)
    if offsets:
        return lambda: classifier.classify(next(texts))
    return lambda: classifier.classify(next(texts), offsets=False)


def _normalize_fresh(total: int) -> Callable[[], object]:
    texts = _fresh_texts(total)
    return lambda: pglast.parser.normalize(next(texts))


def _cached(sql: str, **options: object) -> Callable[[], object]:
    classifier = Classifier()
    classifier.classify(sql)
    return lambda: classifier.classify(sql, **options)  # type: ignore[arg-type]


def rows(repeats: int) -> list[tuple[str, Callable[[], object], int]]:
    """(what, operation, batch size) for every row of the table, each timed ``repeats``
    batches after one warm-up call."""
    fresh = 2000 * repeats + 1
    return [
        ("classify uncached, short point query", lambda: classify(SHORT), 200),
        ("classify uncached, 10-line join", lambda: classify(JOIN_10), 100),
        ("classify uncached, 100-line query", lambda: classify(HUNDRED), 10),
        ("Classifier cached, short", _cached(SHORT), 5000),
        ("Classifier cached, 100-line", _cached(HUNDRED), 5000),
        ("Classifier cached, short, with a catalog", _cached(SHORT, catalog=CATALOG), 2000),
        ("Classifier new constants (constant_free_key)",
         _fresh_constants(500 * repeats + 1, offsets=True), 500),
        (NEW_SHAPE_ROW, _fresh_constants(fresh, offsets=False), 2000),
        (NORMALIZE_ROW, _normalize_fresh(fresh), 2000),
        ("tokens, short", lambda: tokens(SHORT), 500),
        ("tokens, 10-line join", lambda: tokens(JOIN_10), 200),
        ("fingerprint (pglast), short", lambda: pglast.parser.fingerprint(SHORT), 1000),
        ("reference: pglast.parse_sql (AST), short", lambda: pglast.parser.parse_sql(SHORT), 100),
        ("reference: parse_sql_json, short", lambda: pglast.parser.parse_sql_json(SHORT), 1000),
    ]


def main() -> None:
    """Print the table (markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="batches per row")
    options = parser.parse_args()
    print("| operation | median us | best us | median CPU us |")
    print("| --- | ---: | ---: | ---: |")
    cpu_of: dict[str, float] = {}
    for what, operation, batch in rows(options.repeats):
        operation()  # warm: caches, lazy tables
        median, best, cpu = measure(operation, batch, options.repeats)
        cpu_of[what] = cpu
        print(f"| {what} | {median:.2f} | {best:.2f} | {cpu:.2f} |")
    ratio = cpu_of[NEW_SHAPE_ROW] / cpu_of[NORMALIZE_ROW]
    print(
        f"\nnew constants of a seen shape, offsets=False, over normalize (median CPU):"
        f" {ratio:.2f}x (bar: {RATIO_BAR}x)"
    )


if __name__ == "__main__":
    main()
