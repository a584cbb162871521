"""Label the parser oracle corpus by running every case on a real primary and hot standby.

The corpus (``corpus.yaml`` beside this file) lists SQL statements; PostgreSQL, not
opinion, decides which of them a hot standby refuses. This script starts a throwaway
primary and one streaming standby of its own (``pooler.localcluster.LocalCluster`` in a
fresh 0755 directory: never the shared test cluster, as some statements have lasting
node-local effects), loads ``schema.sql`` into a database ``corpus`` on the primary, waits
for the standby to replay it, and runs each case on both nodes:

* a case runs inside ``BEGIN`` ... (its ``setup`` statements, then its ``sql``) and ends
  with ``ROLLBACK`` on the primary, so nothing it writes stays, and with ``COMMIT`` on the
  standby, because some refusals only come at commit (a standby cannot assign the
  transaction id that a commit of a NOTIFY needs, for instance), and nothing a standby
  accepted can have written anything;
* a case marked ``autocommit: true`` runs its setup and sql alone, outside any block
  (VACUUM, CREATE DATABASE, ALTER SYSTEM, transaction control itself); any transaction it
  leaves open is rolled back, and its ``teardown`` statements undo what would otherwise
  outlive it (the primary's teardown must succeed; the standby's may fail harmlessly);
* a case marked ``by_reasoning`` is never run (``pg_promote`` on the standby would end the
  experiment); its labels come from the corpus, with the reason, and say so.

Every case ends with ``DISCARD ALL`` so no session state (prepared statements, cursors,
advisory locks, SET ROLE, LISTEN) leaks into the next. The whole standby pass runs before
the primary pass: the primary's lasting autocommit effects (VACUUM FULL, CREATE INDEX
CONCURRENTLY) then never meet a standby query as a replay conflict.

Usage::

    python tests/parser_corpus/label.py           # label, compare with labels.json
    python tests/parser_corpus/label.py --write   # label and rewrite labels.json

The test suite (tests/test_parser_corpus.py) reads ``labels.json`` for the fast checks and
re-runs this labelling on a fresh cluster to check that the committed labels still match.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import psycopg
import yaml
from pglast import ast, parse_sql
from pglast.parser import ParseError as PglastParseError

CORPUS_DIR = Path(__file__).resolve().parent
CORPUS_FILE = CORPUS_DIR / "corpus.yaml"
SCHEMA_FILE = CORPUS_DIR / "schema.sql"
LABELS_FILE = CORPUS_DIR / "labels.json"

#: The database the schema and every case run in (made by LocalCluster on the primary).
DATABASE = "corpus"
SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "postgres"

#: Server settings the corpus needs beyond LocalCluster's defaults: PREPARE TRANSACTION
#: needs prepared-transaction slots (a standby needs at least the primary's number), and
#: no autovacuum, whose truncations would replay on the standby as lock conflicts with
#: the case running there, at times no run can repeat.
CLUSTER_SETTINGS: Mapping[str, str] = {"max_prepared_transactions": "4", "autovacuum": "off"}

#: Per-session limits so that a case that would hang fails instead, and names itself.
SESSION_OPTIONS = "-c statement_timeout=20s -c lock_timeout=5s"

#: The "must be right" list of the parser_api issue: tag -> what it stands for. Each tag
#: must be covered by at least MIN_COVERAGE corpus statements.
MUST_BE_RIGHT: Mapping[str, str] = {
    "dml_cte": "data-modifying CTEs",
    "select_into": "SELECT INTO",
    "create_table_as": "CREATE TABLE AS",
    "nextval": "SELECT of nextval",
    "setval": "SELECT of setval",
    "advisory_lock": "SELECT of pg_advisory_lock and friends",
    "pg_notify": "SELECT of pg_notify",
    "set_config": "SELECT of set_config",
    "txid_current": "SELECT of txid_current",
    "pg_current_wal_lsn": "SELECT of pg_current_wal_lsn",
    "user_function": "SELECT of user functions",
    "explain_write": "EXPLAIN of a write",
    "explain_analyze_write": "EXPLAIN ANALYZE of a write",
    "copy_to": "COPY TO",
    "copy_from": "COPY FROM",
    "do_block": "DO blocks",
    "call": "CALL",
    "prepare_execute_read": "PREPARE/EXECUTE of reads",
    "prepare_execute_write": "PREPARE/EXECUTE of writes",
    "declare_cursor": "DECLARE CURSOR",
    "cursor_with_hold": "DECLARE CURSOR WITH HOLD",
    "cursor_for_update": "DECLARE CURSOR FOR UPDATE",
    "lock_table": "LOCK TABLE modes",
    "listen_notify": "LISTEN/NOTIFY",
    "vacuum": "VACUUM",
    "analyze": "ANALYZE",
    "checkpoint": "CHECKPOINT",
    "temp_table": "temp tables",
    "comments_hints": "comments and hints",
    # item 2 of the issue "Read/write routing": what a standby runs for the wrong node
    "node_identity": "functions and views that answer for the node that runs them",
    "copy_to_file": "COPY TO a server file or PROGRAM",
    "view_lookthrough": "views over writing functions, unlogged tables, nested views",
}
MIN_COVERAGE = 3
#: Tags beyond the must-be-right list, for the rest of the corpus's breadth. Any other
#: tag is a typo, and load_corpus says so.
OTHER_TAGS: frozenset[str] = frozenset(
    {
        "client_traffic",
        "comment_on",
        "ddl",
        "discard",
        "explain",
        "grant",
        "multi_statement",
        "savepoint",
        "set_reset",
        "set_role",
        "show",
        "transaction",
        "unlogged_table",
    }
)

Stage = Literal["setup", "sql", "commit", "after", "teardown"]


@dataclass(frozen=True)
class Case:
    """One corpus statement, with what must run around it.

    ``key`` names the case in labels.json and in every test message: the ``id`` given in
    the corpus, else the statement text, prefixed ``[autocommit]`` for autocommit cases
    and followed by its setup, so that ``EXECUTE q`` after two different PREPAREs are
    two cases.
    """

    key: str
    sql: str
    section: str
    setup: tuple[str, ...] = ()
    teardown: tuple[str, ...] = ()
    autocommit: bool = False
    copy_data: str | None = None
    covers: frozenset[str] = frozenset()
    write_reason: str | None = None
    by_reasoning: str | None = None
    #: Only for by_reasoning cases: the labels we reasoned out (see ``Outcome``).
    reasoned: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """One error a node raised: its SQLSTATE (``client`` for psycopg's own) and message."""

    sqlstate: str
    message: str

    def to_json(self) -> dict[str, str]:
        """The labels.json form."""
        return {"sqlstate": self.sqlstate, "message": self.message}


@dataclass(frozen=True)
class Outcome:
    """How one node took one case.

    ``ok`` with no ``stage``, or the first error and the stage it came in. On the standby
    also: ``setup_refused``, setup statements it refused (the case then ran without them,
    as a pooler that sent them to the primary would leave the standby's session), and
    ``after``, the error of a plain ``SELECT 1`` right after an accepted case: the
    statement was accepted but left a session that can no longer read.
    """

    ok: bool
    stage: Stage | None = None
    error: Failure | None = None
    setup_refused: tuple[tuple[str, Failure], ...] = ()
    after: Failure | None = None

    def to_json(self) -> dict[str, Any]:
        """The labels.json form: only the fields that say something."""
        data: dict[str, Any] = {"ok": self.ok}
        if self.error is not None:
            data.update(stage=self.stage, **self.error.to_json())
        if self.setup_refused:
            data["setup_refused"] = [
                {"setup": sql, **failure.to_json()} for sql, failure in self.setup_refused
            ]
        if self.after is not None:
            data["after"] = self.after.to_json()
        return data


# -- the corpus -------------------------------------------------------------------------

_CASE_KEYS = {
    "sql",
    "id",
    "setup",
    "teardown",
    "autocommit",
    "copy_data",
    "covers",
    "write_reason",
    "by_reasoning",
    "primary_ok",
    "standby_ok",
    "standby_sqlstate",
}
_SECTION_KEYS = {"section", "about", "covers", "autocommit", "cases"}


def _case_key(sql: str, setup: Sequence[str], autocommit: bool) -> str:
    key = f"[autocommit] {sql}" if autocommit else sql
    if setup:
        key += "  -- after: " + " ; ".join(setup)
    return key


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{where}: expected a string or a list of strings, got {value!r}")


def load_corpus(path: Path = CORPUS_FILE) -> list[Case]:
    """Read the corpus: a list of sections, each with defaults and a list of cases.

    A case is a bare SQL string or a mapping (see the corpus file's header). Raises
    ValueError naming the section and case for anything malformed or duplicated.
    """
    sections = yaml.safe_load(path.read_text())
    if not isinstance(sections, list):
        raise ValueError(f"{path}: expected a list of sections")
    cases: list[Case] = []
    seen: set[str] = set()
    for section in sections:
        name = section.get("section") if isinstance(section, dict) else None
        if not isinstance(name, str):
            raise ValueError(f"{path}: every section needs a 'section' name: {section!r}")
        if unknown := set(section) - _SECTION_KEYS:
            raise ValueError(f"section {name}: unknown keys {sorted(unknown)}")
        section_covers = _strings(section.get("covers"), f"section {name} covers")
        for index, raw in enumerate(section.get("cases") or []):
            where = f"section {name}, case {index + 1}"
            entry: dict[str, Any] = {"sql": raw} if isinstance(raw, str) else dict(raw)
            if unknown := set(entry) - _CASE_KEYS:
                raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
            sql = entry.get("sql")
            if not isinstance(sql, str) or not sql.strip():
                raise ValueError(f"{where}: 'sql' must be a non-empty string")
            sql = sql.strip()
            setup = _strings(entry.get("setup"), f"{where} setup")
            autocommit = bool(entry.get("autocommit", section.get("autocommit", False)))
            key = entry.get("id") or _case_key(sql, setup, autocommit)
            if key in seen:
                raise ValueError(f"{where}: duplicate case {key!r}; give one an 'id'")
            seen.add(key)
            covers = frozenset(section_covers + _strings(entry.get("covers"), f"{where} covers"))
            if stray := covers - MUST_BE_RIGHT.keys() - OTHER_TAGS:
                raise ValueError(f"{where}: unknown covers tags {sorted(stray)}")
            by_reasoning = entry.get("by_reasoning")
            reasoned: dict[str, Any] = {}
            if by_reasoning is not None:
                for label in ("primary_ok", "standby_ok"):
                    if not isinstance(entry.get(label), bool):
                        raise ValueError(f"{where}: a by_reasoning case must state {label}")
                    reasoned[label] = entry[label]
                reasoned["standby_sqlstate"] = entry.get("standby_sqlstate")
            cases.append(
                Case(
                    key=key,
                    sql=sql,
                    section=name,
                    setup=setup,
                    teardown=_strings(entry.get("teardown"), f"{where} teardown"),
                    autocommit=autocommit,
                    copy_data=entry.get("copy_data"),
                    covers=covers,
                    write_reason=entry.get("write_reason"),
                    by_reasoning=by_reasoning,
                    reasoned=reasoned,
                )
            )
    return cases


def copy_direction(sql: str) -> Literal["from", "to"] | None:
    """``from``/``to`` for a COPY that streams through the client (STDIN/STDOUT).

    Those cannot go through ``cursor.execute``; psycopg's ``cursor.copy`` feeds and
    drains them. COPY to or from a server file or program runs like any statement.
    """
    try:
        stmts = parse_sql(sql)
    except PglastParseError:
        return None
    if len(stmts) != 1:
        return None
    stmt = stmts[0].stmt
    if not isinstance(stmt, ast.CopyStmt) or stmt.filename is not None or stmt.is_program:
        return None
    return "from" if stmt.is_from else "to"


# -- running cases ------------------------------------------------------------------------


class _CaseError(Exception):
    """A statement of a case failed, in ``stage``."""

    def __init__(self, stage: Stage, failure: Failure) -> None:
        super().__init__(failure.message)
        self.stage = stage
        self.failure = failure


def _failure_of(exc: psycopg.Error) -> Failure:
    message = exc.diag.message_primary or str(exc).strip().splitlines()[0]
    # psycopg's own errors (no SQLSTATE) are client-side: a corpus bug, never a label.
    return Failure(exc.sqlstate or "client", message)


class NodeSession:
    """One connection to one node, reused for every case, reconnected if a case kills it."""

    def __init__(self, dsn: str, role: Literal["primary", "standby"]) -> None:
        self.dsn = dsn
        self.role = role
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        # autocommit: the case decides where transactions begin and end, not the driver.
        # prepare_threshold=None: the driver must never PREPARE behind our back, both
        # because DISCARD ALL would drop its statements and to send each case's text
        # exactly once, as a client would, with the simple query protocol.
        conn = psycopg.connect(
            self.dsn, autocommit=True, prepare_threshold=None, options=SESSION_OPTIONS
        )
        # Notices (IF NOT EXISTS skipping, deprecation warnings) are not labels.
        conn.add_notice_handler(lambda _diag: None)
        return conn

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    def _execute(self, sql: str, stage: Stage, copy_data: str | None = None) -> None:
        try:
            direction = copy_direction(sql) if stage == "sql" else None
            with self.conn.cursor() as cur:
                if direction == "from":
                    with cur.copy(sql) as copy:
                        copy.write(copy_data or "")
                elif direction == "to":
                    with cur.copy(sql) as copy:
                        for _ in copy:
                            pass
                else:
                    # Query text with no parameters goes out as a simple Query message,
                    # so multi-statement strings run as the server would run them.
                    cur.execute(sql.encode())
                    while cur.nextset():
                        pass
        except psycopg.Error as exc:
            raise _CaseError(stage, _failure_of(exc)) from exc

    def _idle(self) -> bool:
        return self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    def run(self, case: Case) -> Outcome:
        """Run one case on this node; leave the session clean for the next one.

        A setup statement the standby refuses is left out and the case run again: what
        counts is whether the standby runs the case's statement in the session it can
        have (``SELECT * FROM t`` after ``CREATE TEMP TABLE t``: no, 42P01).
        """
        refused: list[tuple[int, Failure]] = []
        while True:
            skip = {index for index, _ in refused}
            outcome, failed_setup = self._attempt(case, skip)
            if failed_setup is None or self.role == "primary":
                break
            assert outcome.error is not None
            refused.append((failed_setup, outcome.error))
            self._reset()
        self._reset()
        outcome = self._teardown(case, outcome)
        if refused:
            outcome = replace(
                outcome,
                setup_refused=tuple((case.setup[index], failure) for index, failure in refused),
            )
        return outcome

    def _attempt(self, case: Case, skip: set[int]) -> tuple[Outcome, int | None]:
        """Run the case once, leaving out setup statements ``skip``.

        Returns the outcome and, when a setup statement failed, its index.
        """
        index: int | None = None
        try:
            if not case.autocommit:
                self._execute("BEGIN", "setup")
            for index, statement in enumerate(case.setup):
                if index not in skip:
                    self._execute(statement, "setup")
            index = None
            self._execute(case.sql, "sql", case.copy_data)
            if not case.autocommit and not self._idle():
                self._execute("COMMIT" if self.role == "standby" else "ROLLBACK", "commit")
        except _CaseError as exc:
            return Outcome(False, exc.stage, exc.failure), index
        after: Failure | None = None
        if self._idle() and not self.conn.closed:
            # Accepted, but can the session still serve a read? After SET
            # default_transaction_isolation = 'serializable' a standby refuses everything
            # that follows.
            try:
                self._execute("SELECT 1", "after")
            except _CaseError as exc:
                after = exc.failure
        return Outcome(True, after=after), None

    def _reset(self) -> None:
        """End any transaction and drop all session state (DISCARD ALL)."""
        if self.conn.closed:
            # The case ended the backend (or the server did).
            self.conn = self._connect()
            return
        try:
            if not self._idle():
                self._execute("ROLLBACK", "teardown")
            self._execute("DISCARD ALL", "teardown")
        except _CaseError:
            # A session the case left unable to run even DISCARD ALL (see "after"
            # above): a new one is as clean as it gets.
            self.conn.close()
            self.conn = self._connect()

    def _teardown(self, case: Case, outcome: Outcome) -> Outcome:
        for statement in case.teardown:
            try:
                self._execute(statement, "teardown")
            except _CaseError as exc:
                # What failed on the standby was never created there; on the primary a
                # teardown that fails leaves the schema changed: a broken case.
                if self.role == "primary" and outcome.ok:
                    outcome = Outcome(False, "teardown", exc.failure)
        return outcome


def reasoned_outcomes(case: Case) -> dict[str, Any]:
    """The labels.json entry of a by_reasoning case: what the corpus reasoned out."""
    reasoned = case.reasoned
    standby: dict[str, Any] = {"ok": reasoned["standby_ok"]}
    if not reasoned["standby_ok"]:
        standby.update(stage="sql", sqlstate=reasoned.get("standby_sqlstate"), message=None)
    primary: dict[str, Any] = {"ok": reasoned["primary_ok"]}
    if not reasoned["primary_ok"]:
        primary.update(stage="sql", sqlstate=None, message=None)
    return {"primary": primary, "standby": standby, "by_reasoning": case.by_reasoning}


def _run_pass(session: NodeSession, cases: Iterable[Case]) -> dict[str, Outcome]:
    return {case.key: session.run(case) for case in cases if case.by_reasoning is None}


#: The fixture schema's functions, relations and view definitions, as a pooler's catalog
#: would report them: the test hands parser_api this, so that it is judged on what it
#: can know.
_CATALOG_QUERIES = {
    "functions": """
        SELECT n.nspname, p.proname, p.pronargs, p.provolatile, p.prokind
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
        ORDER BY 1, 2, 3""",
    "relations": """
        SELECT n.nspname, c.relname, c.relpersistence, c.relkind
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
          AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
        ORDER BY 1, 2""",
    "views": """
        SELECT n.nspname, c.relname, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND c.relkind = 'v'
        ORDER BY 1, 2""",
}


def read_catalog(conn: psycopg.Connection[Any]) -> dict[str, list[list[Any]]]:
    """The fixture schema's user functions, relations and view definitions, from
    pg_proc and pg_class."""
    return {
        name: [list(row) for row in conn.execute(query.encode()).fetchall()]
        for name, query in _CATALOG_QUERIES.items()
    }


def label_cases(primary_dsn: str, standby_dsn: str, cases: Sequence[Case]) -> dict[str, Any]:
    """Run every case on the standby, then on the primary; return the labels document."""
    standby = NodeSession(standby_dsn, "standby")
    try:
        on_standby = _run_pass(standby, cases)
    finally:
        standby.close()
    primary = NodeSession(primary_dsn, "primary")
    try:
        # Before the primary pass: its autocommit cases change the schema for a moment.
        catalog = read_catalog(primary.conn)
        on_primary = _run_pass(primary, cases)
        version = primary.conn.info.server_version
    finally:
        primary.close()
    labels: dict[str, Any] = {}
    for case in cases:
        if case.by_reasoning is not None:
            labels[case.key] = reasoned_outcomes(case)
        else:
            labels[case.key] = {
                "primary": on_primary[case.key].to_json(),
                "standby": on_standby[case.key].to_json(),
            }
    return {
        "about": (
            "Written by tests/parser_corpus/label.py from a real primary and hot standby;"
            " do not edit by hand."
        ),
        "postgres_major": version // 10000,
        "catalog": catalog,
        "cases": labels,
    }


# -- the throwaway cluster ----------------------------------------------------------------


def load_schema(admin_dsn: str, standby_dsn: str, timeout: float = 30.0) -> None:
    """Run schema.sql on the primary and wait until the standby has replayed all of it."""
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.add_notice_handler(lambda _diag: None)
        conn.execute(SCHEMA_FILE.read_text().encode())
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby_dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)
            ).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby did not replay the schema within {timeout} s")
            time.sleep(0.02)


@contextmanager
def throwaway_cluster(progress: Callable[[str], None] | None = None) -> Iterator[tuple[str, str]]:
    """A fresh primary + one standby with the corpus schema; yields their DSNs.

    Everything, data directories included, is removed on exit.
    """
    from pooler.localcluster import LocalCluster, server_tempdir

    base = server_tempdir("pooler-corpus-")
    cluster = LocalCluster(
        base,
        standbys=1,
        users={SUPERUSER: SUPERUSER_PASSWORD},
        databases={DATABASE: SUPERUSER},
        settings=CLUSTER_SETTINGS,
        progress=progress,
    )
    try:
        cluster.start()
        primary_dsn = cluster.primary.dsn(SUPERUSER, SUPERUSER_PASSWORD, DATABASE)
        standby_dsn = cluster.standbys[0].dsn(SUPERUSER, SUPERUSER_PASSWORD, DATABASE)
        load_schema(primary_dsn, standby_dsn)
        yield primary_dsn, standby_dsn
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def label_on_fresh_cluster(
    cases: Sequence[Case], progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Start a throwaway cluster, label every case on it, tear it down."""
    with throwaway_cluster(progress) as (primary_dsn, standby_dsn):
        return label_cases(primary_dsn, standby_dsn, cases)


def compare_labels(committed: Mapping[str, Any], fresh: Mapping[str, Any]) -> list[str]:
    """Where the committed labels and a fresh run disagree, one line per case.

    Messages are not compared (they are there for people): see ``signature``.
    """
    problems: list[str] = []
    old_cases: Mapping[str, Any] = committed.get("cases", {})
    new_cases: Mapping[str, Any] = fresh.get("cases", {})
    for key in old_cases.keys() - new_cases.keys():
        problems.append(f"{key!r}: in labels.json but no longer in the corpus")
    for key, new in new_cases.items():
        old = old_cases.get(key)
        if old is None:
            problems.append(f"{key!r}: not in labels.json")
            continue
        for node in ("primary", "standby"):
            was, now = signature(old[node]), signature(new[node])
            if was != now:
                problems.append(f"{key!r} on the {node}: labels.json says {was}, now {now}")
    return problems


def signature(label: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of one node's label that must not change: everything but messages."""
    return {
        "ok": label.get("ok"),
        "stage": label.get("stage"),
        "sqlstate": label.get("sqlstate"),
        "setup_refused": [r["sqlstate"] for r in label.get("setup_refused", [])],
        "after": (label.get("after") or {}).get("sqlstate"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Label the corpus; compare with labels.json or (--write) replace it."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help="rewrite labels.json")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    cases = load_corpus()
    started = time.monotonic()
    labels = label_on_fresh_cluster(cases, None if args.quiet else print)
    elapsed = time.monotonic() - started
    runnable = [c for c in cases if c.by_reasoning is None]
    broken = [c.key for c in runnable if not labels["cases"][c.key]["primary"]["ok"]]
    refused = [
        c.key
        for c in cases
        if labels["cases"][c.key]["primary"]["ok"] and not labels["cases"][c.key]["standby"]["ok"]
    ]
    print(
        f"{len(cases)} cases ({len(runnable)} run, {len(cases) - len(runnable)} by reasoning),"
        f" {len(refused)} refused by the standby, labelled in {elapsed:.1f} s"
    )
    for key in broken:
        error = labels["cases"][key]["primary"]
        print(f"BROKEN (fails on the primary): {key!r}: {error['sqlstate']} {error['message']}")
    if args.write:
        LABELS_FILE.write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {LABELS_FILE}")
        return 1 if broken else 0
    if not LABELS_FILE.exists():
        print("no labels.json yet: run with --write")
        return 1
    problems = compare_labels(json.loads(LABELS_FILE.read_text()), labels)
    for line in problems:
        print(f"DIFFERS: {line}")
    return 1 if broken or problems else 0


if __name__ == "__main__":
    sys.exit(main())
