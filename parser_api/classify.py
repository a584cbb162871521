"""SQL text -> Classification: the grammar's analysis resolved against a session.

`parser_api.analysis` says what the grammar alone decides; here the caller's catalog,
prepared statements and cursors answer what only a session knows. Nothing resolved
here is cached: the same text may mean different things in different sessions.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from parser_api._calls import Call, Verdict
from parser_api.analysis import Analysis, Relation, StatementFacts, analyze
from parser_api.catalog import Catalog, Persistence, Volatility
from parser_api.errors import ParseError
from parser_api.model import (
    Classification,
    Dependency,
    Route,
    SessionEffect,
    Statement,
    TransactionControl,
)

Names = Mapping[str, Classification]

# PostgreSQL sets no limit on how deeply views nest; past this many the safe side
# answers. A cycle, which only a wrong catalog can describe, ends there too.
MAX_VIEW_DEPTH = 32


def classify(
    sql: str,
    catalog: Catalog | None = None,
    prepared: Names | None = None,
    cursors: Names | None = None,
) -> Classification:
    """Say what the SQL text ``sql`` (one statement or several) does.

    ``catalog`` answers what the grammar cannot (function volatility, temporary and
    unlogged tables, what a view runs); without it unknown functions are writes. ``prepared`` and
    ``cursors`` map the names a session has prepared or declared to their
    classification (that of the PREPARE or DECLARE, or of the query itself), for
    EXECUTE, FETCH, MOVE and CLOSE; a name they do not hold routes as a write.
    Raises `parser_api.ParseError` for text PostgreSQL's grammar rejects.
    Uncached: use `parser_api.Classifier` on a hot path.
    """
    return resolve(analyze(sql), catalog, prepared, cursors)


def resolve(
    analysis: Analysis,
    catalog: Catalog | None,
    prepared: Names | None,
    cursors: Names | None,
    views: tuple[Relation, ...] = (),
) -> Classification:
    """Turn the grammar's analysis into a Classification for one session.

    ``views``: the views whose definitions are being resolved, outermost first.
    """
    builder = _Builder(catalog, prepared, cursors, analysis.primary_hint, views)
    for facts in analysis.statements:
        builder.add(facts)
    return builder.result(analysis)


def catalog_changes(analysis: Analysis, catalog: Catalog) -> bool:
    """Whether ``catalog`` changes anything the grammar alone decided for ``analysis``."""
    for facts in analysis.statements:
        for call in facts.calls:
            if facts.executes and call.ask is not None and _ask(call, catalog) != call.verdict:
                return True
        for relation in (*facts.reads, *facts.writes):
            if _persistence(relation, catalog) is not None:
                return True
        for relation in facts.reads:
            if _view(relation, catalog, (), facts.executes) is not None:
                return True
        if facts.body is not None and catalog_changes(facts.body, catalog):
            return True
    return False


def _ask(call: Call, catalog: Catalog) -> Verdict:
    """The verdict on one call once the session's catalog has its say."""
    volatile = f"volatile function {call.display}"
    if call.ask == "read_only":
        if catalog.function_is_read_only(call.schema, call.name, call.nargs):
            return Verdict(Route.READ, volatile)
        return call.verdict
    volatility = catalog.function_volatility(call.schema, call.name, call.nargs)
    if volatility == Volatility.VOLATILE:
        if catalog.function_is_read_only(call.schema, call.name, call.nargs):
            return Verdict(Route.READ, volatile)
        return Verdict(Route.WRITE, volatile)
    if volatility == Volatility.STABLE:
        # It may read tables the text does not name: a cached result would miss
        # their writes.
        return Verdict(Route.READ, f"function {call.display} may read other tables")
    if volatility == Volatility.IMMUTABLE:
        return Verdict(Route.READ)
    return call.verdict


def _persistence(relation: Relation, catalog: Catalog | None) -> Persistence | None:
    """Temporary or unlogged (a standby has neither), else None."""
    if relation.schema is not None and relation.schema.startswith("pg_temp"):
        return Persistence.TEMPORARY
    if catalog is None:
        return None
    persistence = catalog.relation_persistence(relation.schema, relation.name)
    # == rather than is: a catalog may answer pg_class's letter itself
    return None if persistence == Persistence.PERMANENT else persistence


def _view(
    relation: Relation, catalog: Catalog | None, outer: tuple[Relation, ...], executes: bool
) -> Verdict | None:
    """What reading ``relation`` adds when the catalog says it is a view: None for no
    view, and for a view that only reads what another identical read may reuse."""
    if catalog is None:
        return None
    # A catalog written before views were looked through has no such method: it
    # knows no views.
    lookup = getattr(catalog, "view_definition", None)
    definition = None if lookup is None else lookup(relation.schema, relation.name)
    if definition is None:
        return None
    if relation in outer:
        # PostgreSQL reports infinite recursion on every node: the primary answers.
        return Verdict(Route.WRITE, f"view {relation.display} refers to itself")
    if len(outer) >= MAX_VIEW_DEPTH:
        return Verdict(Route.WRITE, f"view {relation.display} nests too deeply")
    analysis = _view_analysis(definition, executes)
    if analysis is None:
        return Verdict(Route.WRITE, f"view {relation.display} does not parse")
    result = resolve(analysis, catalog, None, None, (*outer, relation))
    if result.route is Route.READ and result.cacheable and not result.session_effects:
        return None
    reason = f"view {relation.display}: {result.uncacheable_reason}"
    return Verdict(result.route, reason, result.session_effects)


@lru_cache(maxsize=1024)
def _view_analysis(definition: str, executes: bool) -> Analysis | None:
    """The grammar's analysis of a view's SELECT: the same for every session, so
    cached by its text (the catalog is asked again on every resolution)."""
    try:
        analysis = analyze(definition)
    except ParseError:
        return None
    if executes:
        return analysis
    # Planned, not run (EXPLAIN): its calls do nothing, but a standby still refuses to
    # plan a query on an unlogged or temporary table inside it.
    return analysis._replace(
        statements=tuple(
            facts._replace(executes=False, route=Route.READ, locks_rows=False, effects=())
            for facts in analysis.statements
        )
    )


def _target(
    dependency: Dependency, prepared: Names | None, cursors: Names | None
) -> tuple[Classification, Route] | None:
    """What the name refers to: its query's classification, and the route of what
    defined it (a cursor WITH HOLD is session state where its query only reads)."""
    names = prepared if dependency.namespace == "prepared" else cursors
    found = None if names is None else names.get(dependency.name)
    if found is None:
        return None
    # The PREPARE or DECLARE itself was passed: its query decides.
    for statement in found.statements:
        if statement.name == dependency.name and statement.body is not None:
            return statement.body, statement.route
    return found, found.route


class _Builder:
    """Gathers the statements of one text into a Classification."""

    __slots__ = (
        "catalog",
        "cursors",
        "depends_on",
        "effects",
        "floor",
        "functions",
        "locks_rows",
        "prepared",
        "reads",
        "reason",
        "route",
        "statements",
        "transaction",
        "views",
        "writes",
    )

    def __init__(
        self,
        catalog: Catalog | None,
        prepared: Names | None,
        cursors: Names | None,
        primary_hint: bool,
        views: tuple[Relation, ...],
    ) -> None:
        self.catalog = catalog
        self.views = views
        # /*NO LOAD BALANCE*/ sends every statement of the text to the primary.
        self.floor = Route.WRITE if primary_hint else Route.READ
        self.prepared = prepared
        self.cursors = cursors
        self.route = Route.READ
        self.statements: list[Statement] = []
        self.transaction: list[TransactionControl] = []
        # dicts as ordered sets: text order, no repeats
        self.reads: dict[str, None] = {}
        self.writes: dict[str, None] = {}
        self.functions: dict[str, None] = {}
        self.effects: dict[SessionEffect, None] = {}
        self.depends_on: dict[Dependency, None] = {}
        self.locks_rows = False
        self.reason: str | None = None

    def add(self, facts: StatementFacts) -> None:
        route = facts.route.stricter(self.floor)
        reason = facts.uncacheable
        if facts.effects:
            self.effects.update(dict.fromkeys(facts.effects))
        for call in facts.calls:
            self.functions[call.display] = None
            if not facts.executes:
                continue
            verdict = call.verdict
            if self.catalog is not None and call.ask is not None:
                verdict = _ask(call, self.catalog)
            route = route.stricter(verdict.route)
            if verdict.effects:
                self.effects.update(dict.fromkeys(verdict.effects))
            reason = reason or verdict.uncacheable
        if facts.reads:
            self.reads.update(dict.fromkeys(relation.display for relation in facts.reads))
        if facts.writes:
            self.writes.update(dict.fromkeys(relation.display for relation in facts.writes))
        for relation in facts.reads + facts.writes:
            persistence = _persistence(relation, self.catalog)
            if persistence is not None:
                # Only the primary has it (temporary) or can read it (unlogged); a
                # standby refuses even to plan a query on it (EXPLAIN).
                route = Route.WRITE
                adjective = "temporary" if persistence == Persistence.TEMPORARY else "unlogged"
                reason = reason or f"{adjective} table {relation.display}"
        for relation in facts.reads:
            # A view runs its SELECT: a standby refuses it where that writes or reads
            # an unlogged or temporary table, and answers for itself where it asks
            # what only the primary can say.
            view = _view(relation, self.catalog, self.views, facts.executes)
            if view is not None:
                route = route.stricter(view.route)
                if view.effects:
                    self.effects.update(dict.fromkeys(view.effects))
                reason = reason or view.uncacheable
        if facts.depends_on is not None:
            route = route.stricter(self._dependency(facts))
        if facts.transaction is not None:
            self.transaction.append(facts.transaction)
        self.locks_rows = self.locks_rows or facts.locks_rows
        body = None
        if facts.body is not None:
            body = resolve(facts.body, self.catalog, None, None)
        self.statements.append(
            Statement(facts.kind, facts.start, facts.end, route, facts.name, body)
        )
        self.route = self.route.stricter(route)
        if reason is None and route is not Route.READ:
            reason = "not a plain read"
        self.reason = self.reason or reason

    def _dependency(self, facts: StatementFacts) -> Route:
        assert facts.depends_on is not None
        self.depends_on[facts.depends_on] = None
        found = _target(facts.depends_on, self.prepared, self.cursors)
        if found is None:
            # What the name refers to is the session's secret: the safe side.
            return Route.WRITE
        target, defined = found
        if facts.dependency_use == "exists":
            return Route.READ
        if facts.dependency_use == "route":
            return defined
        self.reads.update(dict.fromkeys(target.reads_tables))
        self.writes.update(dict.fromkeys(target.writes_tables))
        self.functions.update(dict.fromkeys(target.functions))
        self.effects.update(dict.fromkeys(target.session_effects))
        self.locks_rows = self.locks_rows or target.locks_rows
        return target.route

    def result(self, analysis: Analysis) -> Classification:
        if analysis.no_cache_hint:
            reason: str | None = "NO QUERY CACHE hint"
        elif analysis.primary_hint:
            reason = "NO LOAD BALANCE hint"
        elif not self.statements:
            reason = "no statement"
        elif len(self.statements) > 1:
            reason = "several statements"
        else:
            reason = self.reason
        return Classification(
            route=self.route,
            statements=tuple(self.statements),
            transaction=tuple(self.transaction),
            reads_tables=tuple(self.reads),
            writes_tables=tuple(self.writes),
            functions=tuple(self.functions),
            locks_rows=self.locks_rows,
            session_effects=tuple(self.effects),
            depends_on=tuple(self.depends_on),
            cacheable=reason is None,
            uncacheable_reason=reason,
            _keys=analysis.keys,
        )
