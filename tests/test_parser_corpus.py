"""The parser oracle: parser_api.classify judged against what PostgreSQL itself does.

tests/parser_corpus/corpus.yaml lists statements; tests/parser_corpus/label.py ran each on
a real primary and hot standby and wrote what both said to labels.json. Here:

1. the corpus is big and varied enough (size, share of plain SELECTs, coverage of every
   "must be right" item);
2. every statement ran without error on the primary (one that failed is a broken case,
   not a label);
3. parser_api routes by those labels: nothing the standby refuses is ``read`` or
   ``session``, at least 90% of what it accepts is (leaving out what the issue sends to
   the primary on purpose, though a standby runs it), and every accepted statement routed
   ``write`` carries a ``write_reason`` in the corpus;
4. the committed labels still match a fresh labelling on a throwaway cluster (slow).

parser_api is given what a pooler can know: the fixture schema's catalog (function
volatility, table persistence and view definitions, read from pg_proc and pg_class by
label.py into labels.json), the temporary tables the case's setup made, and the
classifications of the PREPARE and DECLARE statements among the setup
(``prepared=``/``cursors=``).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pglast.parser import parse_sql_json

CORPUS_DIR = Path(__file__).resolve().parent / "parser_corpus"


def _load_label_module() -> ModuleType:
    """tests/ is not a package: load label.py by path, once, as ``parser_corpus_label``."""
    name = "parser_corpus_label"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, CORPUS_DIR / "label.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


label = _load_label_module()

MIN_STATEMENTS = 300
MAX_PLAIN_SELECT_SHARE = 1 / 3
MIN_ACCEPTED_READ_SHARE = 0.90
#: Must-be-right items that a standby runs and that go to the primary all the same, by
#: decision of the issue "Read/write routing" (item 2): what answers for the node that
#: runs it, LOCK TABLE in any mode, COPY TO a server file. Their cases are left out of
#: the share above, which catches a classifier that sends ordinary reads to the
#: primary; they still need their write_reason. Tag only statements that are such.
PRIMARY_BY_DESIGN = frozenset({"node_identity", "lock_table", "copy_to_file"})
#: The fresh relabelling must stay well inside the suite's budget on 2 cores.
RELABEL_BUDGET_SECONDS = 60.0


@cache
def corpus() -> tuple[Any, ...]:
    """The corpus cases (label.Case), read once."""
    return tuple(label.load_corpus())


@cache
def labels() -> Mapping[str, Any]:
    """The committed labels.json."""
    return json.loads(label.LABELS_FILE.read_text())  # type: ignore[no-any-return]


def node_label(case: Any, node: str) -> Mapping[str, Any]:
    """What ``node`` (primary or standby) said of ``case`` in labels.json."""
    return labels()["cases"][case.key][node]  # type: ignore[no-any-return]


def refused_by_standby(case: Any) -> bool:
    """The standby raised an error and the primary did not: the definition."""
    return bool(node_label(case, "primary")["ok"] and not node_label(case, "standby")["ok"])


def accepted_by_standby(case: Any) -> bool:
    """Both nodes ran it."""
    return bool(node_label(case, "primary")["ok"] and node_label(case, "standby")["ok"])


def describe_standby(case: Any) -> str:
    """The standby's answer, for failure messages."""
    standby = node_label(case, "standby")
    if standby["ok"]:
        after = standby.get("after")
        return "accepted" + (
            f"; then SELECT 1 got {after['sqlstate']} {after['message']}" if after else ""
        )
    text = f"{standby['sqlstate']} {standby.get('message')} (in {standby['stage']})"
    refused = standby.get("setup_refused")
    if refused:
        text += "; setup it refused: " + ", ".join(r["setup"] for r in refused)
    return text


# -- 1. the corpus itself ---------------------------------------------------------------


def _node_names(tree: Any) -> Iterator[tuple[str, Any]]:
    """Every (node type, fields) in pglast's JSON parse tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key[:1].isupper() and isinstance(value, dict):
                yield key, value
            yield from _node_names(value)
    elif isinstance(tree, list):
        for item in tree:
            yield from _node_names(item)


def is_plain_select(case: Any) -> bool:
    """One SELECT (VALUES, TABLE, set operations) that only reads, by its text.

    Not plain: several statements, INTO, a locking clause anywhere, a data-modifying
    CTE, or a case that stands for an item of the "must be right" list (SELECT of
    nextval, of a user function...).
    """
    if case.covers & label.MUST_BE_RIGHT.keys():
        return False
    stmts = json.loads(parse_sql_json(case.sql))["stmts"]
    if len(stmts) != 1 or "SelectStmt" not in stmts[0]["stmt"]:
        return False
    for name, fields in _node_names(stmts):
        if name in {"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"}:
            return False
        if name == "SelectStmt" and (fields.get("intoClause") or fields.get("lockingClause")):
            return False
    return True


def test_corpus_is_large_and_varied() -> None:
    """>= 300 statements, at most a third plain SELECTs, every must-be-right item 3 times."""
    cases = corpus()
    assert len(cases) >= MIN_STATEMENTS, f"only {len(cases)} statements"
    plain = [case.key for case in cases if is_plain_select(case)]
    assert len(plain) <= MAX_PLAIN_SELECT_SHARE * len(cases), (
        f"{len(plain)} of {len(cases)} statements are plain SELECTs (more than a third)"
    )
    thin = {
        tag: sum(tag in case.covers for case in cases)
        for tag in label.MUST_BE_RIGHT
        if sum(tag in case.covers for case in cases) < label.MIN_COVERAGE
    }
    assert not thin, f"must-be-right items covered fewer than {label.MIN_COVERAGE} times: {thin}"


def test_labels_are_those_of_this_corpus() -> None:
    """labels.json was written for exactly these cases (else: run label.py --write)."""
    corpus_keys = [case.key for case in corpus()]
    label_keys = list(labels()["cases"])
    missing = [key for key in corpus_keys if key not in labels()["cases"]]
    stale = sorted(set(label_keys) - set(corpus_keys))
    assert not missing and not stale, (
        "labels.json is out of date; run `python tests/parser_corpus/label.py --write`\n"
        f"not labelled: {missing}\nlabelled but gone from the corpus: {stale}"
    )


# -- 2. every case is a real statement ---------------------------------------------------


def test_every_statement_runs_on_the_primary() -> None:
    """A statement the primary refused is a broken case, not a label."""
    broken = [
        f"{case.key!r} [{case.section}]: {primary['sqlstate']} {primary['message']}"
        f" (in {primary['stage']})"
        for case in corpus()
        if case.by_reasoning is None and not (primary := node_label(case, "primary"))["ok"]
    ]
    assert not broken, "broken cases (they fail on the primary):\n" + "\n".join(broken)


# -- 3. parser_api against the labels ----------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """parser_api's answer for one case: its route and classification, or the error."""

    route: str | None
    classification: Any = None
    error: str | None = None


def schema_catalog() -> Any:
    """A parser_api StaticCatalog of the fixture schema (view definitions included),
    from labels.json's catalog."""
    from parser_api.catalog import Persistence, StaticCatalog, Volatility

    catalog = labels()["catalog"]
    functions: dict[str | tuple[str, int], Volatility] = {}
    for schema, name, nargs, volatility, _kind in catalog["functions"]:
        functions[(name, nargs)] = Volatility(volatility)
        functions[(f"{schema}.{name}", nargs)] = Volatility(volatility)
    relations: dict[str, Persistence] = {}
    for schema, name, persistence, _kind in catalog["relations"]:
        relations[name] = Persistence(persistence)
        relations[f"{schema}.{name}"] = Persistence(persistence)
    views: dict[str, str] = {}
    for schema, name, definition in catalog["views"]:
        views[name] = views[f"{schema}.{name}"] = definition
    return StaticCatalog(functions=functions, relations=relations, views=views)


def classify_case(case: Any, base_catalog: Any) -> Verdict:
    """Classify the case's statement as a pooler would, after classifying its setup.

    The setup's PREPAREs and DECLAREs become ``prepared``/``cursors`` (their bodies'
    classifications), and its temporary tables join the catalog.
    """
    from dataclasses import replace

    from parser_api import classify
    from parser_api.catalog import Persistence
    from parser_api.model import EffectKind

    prepared: dict[str, Any] = {}
    cursors: dict[str, Any] = {}
    catalog = base_catalog
    try:
        for statement in case.setup:
            setup = classify(statement, catalog=catalog, prepared=prepared, cursors=cursors)
            for part in setup.statements:
                target = {
                    "utility:PrepareStmt": prepared,
                    "utility:DeclareCursorStmt": cursors,
                }.get(part.kind)
                if target is not None and part.name is not None:
                    target[part.name] = part.body if part.body is not None else setup
            temps = {
                effect.name: Persistence.TEMPORARY
                for effect in setup.session_effects
                if effect.kind == EffectKind.TEMP_OBJECT and effect.name
            }
            if temps:
                catalog = replace(catalog, relations={**catalog.relations, **temps})
        verdict = classify(case.sql, catalog=catalog, prepared=prepared, cursors=cursors)
    except Exception as exc:  # any exception is a finding to report, not a crash
        return Verdict(None, error=f"{type(exc).__name__}: {exc}")
    return Verdict(str(verdict.route), verdict)


@pytest.fixture(scope="module")
def verdicts() -> dict[str, Verdict]:
    """parser_api's verdict on every case, keyed like labels.json."""
    base_catalog = schema_catalog()
    return {case.key: classify_case(case, base_catalog) for case in corpus()}


def _line(case: Any, verdict: Verdict) -> str:
    answer = verdict.route if verdict.error is None else f"error {verdict.error}"
    return f"  {case.key!r}: classified {answer}; standby: {describe_standby(case)}"


def test_nothing_the_standby_refuses_is_read_or_session(verdicts: dict[str, Verdict]) -> None:
    """Every statement the standby refused must be routed write."""
    violations = [
        _line(case, verdicts[case.key])
        for case in corpus()
        if refused_by_standby(case) and verdicts[case.key].route != "write"
    ]
    assert not violations, (
        f"{len(violations)} statements the standby refuses are not routed write:\n"
        + "\n".join(violations)
    )


def test_most_accepted_statements_are_read_or_session(verdicts: dict[str, Verdict]) -> None:
    """At least 90% of what the standby accepts may run there (read or session), out of
    the statements that are not primary-bound by design (PRIMARY_BY_DESIGN)."""
    accepted = [
        case
        for case in corpus()
        if accepted_by_standby(case) and not case.covers & PRIMARY_BY_DESIGN
    ]
    spread = [case for case in accepted if verdicts[case.key].route in ("read", "session")]
    share = len(spread) / len(accepted)
    assert share >= MIN_ACCEPTED_READ_SHARE, (
        f"only {len(spread)} of {len(accepted)} ({share:.1%}) statements the standby accepts"
        f" are classified read or session; the others:\n"
        + "\n".join(_line(c, verdicts[c.key]) for c in accepted if c not in spread)
    )


def test_accepted_writes_have_a_reason(verdicts: dict[str, Verdict]) -> None:
    """An accepted statement routed write must say why in the corpus (write_reason)."""
    unexplained = [
        _line(case, verdicts[case.key])
        for case in corpus()
        if accepted_by_standby(case)
        and verdicts[case.key].route not in ("read", "session")
        and not case.write_reason
    ]
    assert not unexplained, (
        "statements the standby accepts, routed write (or not classified) with no"
        " write_reason in the corpus:\n" + "\n".join(unexplained)
    )


def test_statements_that_spoil_a_standby_session_keep_reads_off_it(
    verdicts: dict[str, Verdict],
) -> None:
    """Accepted, but the standby then refuses SELECT 1: route write, or mark it unsafe.

    ``SET default_transaction_isolation = 'serializable'`` is such a statement; parser_api
    may route it ``session`` only with a STANDBY_UNSAFE session effect telling the pooler
    to keep the session's reads on the primary.
    """
    from parser_api.model import EffectKind

    wrong = []
    for case in corpus():
        if not (accepted_by_standby(case) and node_label(case, "standby").get("after")):
            continue
        verdict = verdicts[case.key]
        effects = () if verdict.classification is None else verdict.classification.session_effects
        unsafe = any(effect.kind == EffectKind.STANDBY_UNSAFE for effect in effects)
        if verdict.route != "write" and not unsafe:
            wrong.append(_line(case, verdict))
    assert not wrong, (
        "statements after which a standby refuses every read, neither routed write nor"
        " marked STANDBY_UNSAFE:\n" + "\n".join(wrong)
    )


def test_what_only_a_standby_runs_goes_to_the_primary(verdicts: dict[str, Verdict]) -> None:
    """pg_promote and pg_wal_replay_pause run only on a standby: route them write.

    Sent to whichever standby the balancer picks they would promote or pause it; sent to
    the primary they fail with PostgreSQL's own error, which is the client's to handle.
    """
    wrong = [
        _line(case, verdicts[case.key])
        for case in corpus()
        if not node_label(case, "primary")["ok"]
        and node_label(case, "standby")["ok"]
        and verdicts[case.key].route != "write"
    ]
    assert not wrong, "standby-only statements not routed to the primary:\n" + "\n".join(wrong)


# -- 4. the labels still hold --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_committed_labels_match_a_fresh_cluster() -> None:
    """Relabel on a throwaway primary + standby; labels.json must say the same."""
    started = time.monotonic()
    fresh = label.label_on_fresh_cluster(list(corpus()))
    elapsed = time.monotonic() - started
    problems = label.compare_labels(labels(), fresh)
    assert not problems, (
        "PostgreSQL no longer says what labels.json says (run"
        " `python tests/parser_corpus/label.py` to see, `--write` to accept):\n"
        + "\n".join(problems)
    )
    assert fresh["catalog"] == labels()["catalog"], "the fixture schema's catalog changed"
    assert elapsed < RELABEL_BUDGET_SECONDS, f"labelling took {elapsed:.0f} s"
