"""What the grammar alone says about a text: the same for every session, hence cacheable.

The text is parsed once with ``pglast.parser.parse_sql_json`` (libpg_query's fast form:
no Python AST objects) and the JSON tree is walked here. The result, `Analysis`, still
holds the questions only a session can answer (is ``f`` volatile? is ``t`` temporary?
what is prepared statement ``q``?); `parser_api.classify` answers them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import pglast.parser

from parser_api._calls import (
    READS,
    SERIALIZABLE,
    Call,
    Verdict,
    constant_text,
    make_call,
    option_on,
    parameter,
    standby_refuses,
    transaction_options,
)
from parser_api._plpgsql import do_block_statements
from parser_api._text import byte_to_char, strip_span
from parser_api.builtin_functions import NODE_IDENTITY_SETTINGS, NODE_IDENTITY_VIEWS
from parser_api.errors import ParseError, from_pglast
from parser_api.model import (
    Dependency,
    EffectKind,
    Route,
    SessionEffect,
    TextKeys,
    TransactionControl,
)

Node = dict[str, Any]

_NOT_PLAIN = "not a plain read"
_NO_QUERY_CACHE = "NO QUERY CACHE"
_NO_LOAD_BALANCE = "NO LOAD BALANCE"
_CURSOR_OPT_HOLD = 0x20  # parsenodes.h; pglast.enums.CURSOR_OPT_HOLD
_TIME_WORDS = frozenset({"now", "today", "tomorrow", "yesterday"})
_DATETIME_TYPES = frozenset({"date", "time", "timetz", "timestamp", "timestamptz"})
_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
_KINDS = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "CopyStmt": "copy",
    "ExplainStmt": "explain",
    "TransactionStmt": "transaction",
}
# Only these kinds can get a constant_free_key: pglast's normalize also turns keywords
# and names of utility statements into $n (SET ROLE $1, DO $1).
_KEYED_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})
# Functions whose constant arguments the classification reads.
_CONSTANT_SENSITIVE = frozenset({"set_config", "lo_open", "current_setting"})


class Relation(NamedTuple):
    """A relation as the text names it (``schema`` None when unqualified)."""

    schema: str | None
    name: str

    @property
    def display(self) -> str:
        """The name as written: ``schema.name`` or ``name``."""
        return self.name if self.schema is None else f"{self.schema}.{self.name}"

    @property
    def is_system(self) -> bool:
        """A system catalog: schema pg_catalog and friends, or an unqualified pg_ name
        (pg_catalog comes first in every search_path unless placed otherwise)."""
        if self.schema is None:
            return self.name.startswith("pg_")
        return self.schema in _SYSTEM_SCHEMAS

    @property
    def answers_for_node(self) -> bool:
        """A system view of NODE_IDENTITY_VIEWS (pg_stat_activity, pg_stat_replication...)."""
        return self.schema in (None, "pg_catalog") and self.name in NODE_IDENTITY_VIEWS


# The internal records are NamedTuples, not frozen dataclasses: an uncached
# classification builds dozens of them, and a frozen dataclass costs a
# object.__setattr__ per field.


class StatementFacts(NamedTuple):
    """One statement as the grammar sees it; `parser_api.classify` resolves the rest.

    ``route`` is the floor the statement type sets; relations (temporary, unlogged),
    and calls only when ``executes``, can only raise it (EXPLAIN without ANALYZE and
    DDL name functions without running them). ``dependency_use`` says what the prepared
    statement or cursor named contributes: all its facts (``merge``: EXECUTE, FETCH,
    MOVE), its route (``route``: CLOSE) or only its existence (``exists``).
    """

    kind: str
    start: int
    end: int
    route: Route
    calls: tuple[Call, ...] = ()
    reads: tuple[Relation, ...] = ()
    writes: tuple[Relation, ...] = ()
    executes: bool = True
    locks_rows: bool = False
    effects: tuple[SessionEffect, ...] = ()
    transaction: TransactionControl | None = None
    depends_on: Dependency | None = None
    dependency_use: Literal["merge", "route", "exists"] = "merge"
    name: str | None = None
    body: Analysis | None = None
    uncacheable: str | None = None
    keyless: bool = False


class Analysis(NamedTuple):
    """Everything the grammar says about one text."""

    statements: tuple[StatementFacts, ...]
    keys: TextKeys
    no_cache_hint: bool
    """/*NO QUERY CACHE*/: the client asks that no result of this text be cached."""
    primary_hint: bool
    """/*NO LOAD BALANCE*/: the client asks for the primary (pgpool-II's meaning)."""
    text_length: int
    asks_catalog: bool
    has_dependencies: bool


def analyze(sql: str, normalized: str | None = None, base: int = 0) -> Analysis:
    """Parse ``sql`` once and say what its grammar alone decides.

    ``normalized`` is ``pglast.parser.normalize(sql)`` when the caller already has it;
    ``base`` shifts every offset (for a PREPARE or DECLARE body inside a larger text).
    Raises `parser_api.ParseError`.
    """
    try:
        tree = json.loads(pglast.parser.parse_sql_json(sql))
    except pglast.parser.ParseError as error:
        raise from_pglast(error, sql) from None
    to_char = byte_to_char(sql)
    statements: list[StatementFacts] = []
    for raw in tree.get("stmts", ()):
        location = raw.get("stmt_location", 0)
        length = raw.get("stmt_len", 0)
        end = to_char(location + length) if length else len(sql)
        start, end = strip_span(sql, to_char(location), end)
        statements.append(_statement(raw["stmt"], _Context(sql, start, end, base)))
    keyed = bool(statements) and all(
        s.kind in _KEYED_KINDS and not s.keyless for s in statements
    )
    hints = _hints(sql)
    return Analysis(
        statements=tuple(statements),
        keys=TextKeys(sql, keyed, normalized if keyed else None),
        no_cache_hint=_NO_QUERY_CACHE in hints,
        primary_hint=_NO_LOAD_BALANCE in hints,
        text_length=len(sql),
        asks_catalog=any(_asks_catalog(s) for s in statements),
        has_dependencies=any(s.depends_on is not None for s in statements),
    )


def relocate(analysis: Analysis, sql: str) -> Analysis:
    """The same analysis for another text with the same constant_free_key (and so the
    same fingerprint: the keys stay those of the first text).

    Only constants differ, and none stands before a statement or after its end, so one
    statement keeps its start and its distance to the end of the text; several are
    found again by pglast's split (which parses).
    """
    if len(analysis.statements) == 1:
        facts = analysis.statements[0]
        spans = [(facts.start, len(sql) - (analysis.text_length - facts.end))]
    else:
        try:
            slices = pglast.parser.split(sql, only_slices=True)
        except pglast.parser.ParseError as error:
            raise from_pglast(error, sql) from None
        spans = [(piece.start, piece.stop) for piece in slices]
    statements = tuple(
        facts._replace(start=start, end=end)
        for facts, (start, end) in zip(analysis.statements, spans, strict=True)
    )
    return analysis._replace(statements=statements, text_length=len(sql))


def _asks_catalog(facts: StatementFacts) -> bool:
    if facts.reads or facts.writes or any(call.ask for call in facts.calls):
        return True
    return facts.body is not None and facts.body.asks_catalog


def _hints(sql: str) -> frozenset[str]:
    """pgpool-II's hints: /* ... */ comments, upper-cased; never text in a string."""
    if "/*" not in sql:
        return frozenset()
    return frozenset(
        sql[token.start + 2 : token.end - 1].strip().upper()
        for token in pglast.parser.scan(sql)
        if token.name == "C_COMMENT"
    )


class _Context:
    """Where the statement being analysed stands in its text."""

    __slots__ = ("end", "local_end", "local_start", "sql", "start")

    def __init__(self, sql: str, local_start: int, local_end: int, base: int) -> None:
        self.sql = sql
        self.local_start = local_start
        self.local_end = local_end
        # offsets in the caller's text (a PREPARE or DECLARE body stands inside one)
        self.start = local_start + base
        self.end = local_end + base

    def facts(self, kind: str, route: Route, **fields: Any) -> StatementFacts:
        return StatementFacts(kind, self.start, self.end, route, **fields)


def _kind(node_name: str) -> str:
    return _KINDS.get(node_name) or f"utility:{node_name}"


def _statement(node: Node, ctx: _Context) -> StatementFacts:
    ((node_name, fields),) = node.items()
    return _STATEMENTS.get(node_name, _utility)(node_name, fields, ctx)


# --- the query walker -------------------------------------------------------------


class _Walker:
    """Collects what a query tree touches: relations, calls, row locks, writes."""

    __slots__ = (
        "_ctes",
        "calls",
        "effects",
        "keyless",
        "locks_rows",
        "modifies",
        "reads",
        "time_reason",
        "volatile_reason",
        "writes",
    )

    def __init__(self) -> None:
        self.reads: list[Relation] = []
        self.writes: list[Relation] = []
        self.calls: list[Call] = []
        self.effects: list[SessionEffect] = []
        self.locks_rows = False
        self.modifies = False
        self.keyless = False
        self.time_reason: str | None = None
        self.volatile_reason: str | None = None
        # CTE names in scope: an unqualified relation of that name is no table.
        self._ctes: list[str] = []

    def walk(self, value: Any) -> None:
        """Walk any JSON value: a node, a fields dict, a list, or a scalar (ignored)."""
        if type(value) is dict:
            self._fields(value)
        elif type(value) is list:
            self._list(value)

    def _fields(self, fields: Node) -> None:
        with_clause = fields.get("withClause")
        if with_clause is not None:
            self._scoped(fields, with_clause)
            return
        handlers = _HANDLERS
        # The hot loop: most values are scalars (locations, flags), skipped at once.
        for key, value in fields.items():
            kind = type(value)
            if kind is dict or kind is list:
                handler = handlers.get(key)
                if handler is not None:
                    handler(self, value)
                elif kind is dict:
                    self._fields(value)
                else:
                    self._list(value)

    def _scoped(self, fields: Node, with_clause: Node) -> None:
        """A statement with a WITH list: its CTE names are no tables inside it."""
        mark = len(self._ctes)
        self._with(with_clause)
        self._fields({key: value for key, value in fields.items() if key != "withClause"})
        del self._ctes[mark:]

    def _list(self, items: list[Any]) -> None:
        for item in items:
            if type(item) is dict:
                self._fields(item)
            elif type(item) is list:
                self._list(item)

    def _with(self, clause: Node) -> None:
        ctes = [item["CommonTableExpr"] for item in clause.get("ctes", ())]
        if clause.get("recursive"):
            self._ctes.extend(cte["ctename"] for cte in ctes)
            for cte in ctes:
                self.walk(cte.get("ctequery"))
        else:
            # A plain WITH list sees only the CTEs before it.
            for cte in ctes:
                self.walk(cte.get("ctequery"))
                self._ctes.append(cte["ctename"])

    def _skip(self, value: Any) -> None:
        """Nothing to find below (column references, type names, names)."""

    def _range_var(self, fields: Node) -> None:
        if "schemaname" not in fields and fields["relname"] in self._ctes:
            return
        self.reads.append(_relation(fields))

    def _modify(self, fields: Node) -> None:
        self.modifies = True
        self.writes.append(_relation(fields["relation"]))
        self._fields(fields)

    def _locking(self, fields: Node) -> None:
        self.locks_rows = True

    def _into(self, clause: Node) -> None:
        # SELECT INTO creates a table.
        self.modifies = True
        self.writes.append(_relation(clause["rel"]))
        self.effects.extend(_temp_effect(clause["rel"]))

    def _sample(self, fields: Node) -> None:
        if "repeatable" not in fields and self.volatile_reason is None:
            self.volatile_reason = "TABLESAMPLE without REPEATABLE"
        self._fields(fields)

    def _vacuum_relation(self, fields: Node) -> None:
        relation = fields.get("relation")
        if relation is not None:
            self.reads.append(_relation(relation))

    def func_call(self, fields: Node) -> None:
        call = make_call(fields)
        self.calls.append(call)
        if call.name in _CONSTANT_SENSITIVE:
            self.keyless = True
        self._fields(fields)

    def _value_function(self, fields: Node) -> None:
        name = _VALUE_FUNCTIONS[fields["op"]]
        if name in _TIME_VALUE_FUNCTIONS:
            verdict = Verdict(Route.READ, f"time-dependent function {name}")
        else:
            verdict = READS
        self.calls.append(Call(None, name, 0, name, verdict, None))

    def _type_cast(self, fields: Node) -> None:
        names = fields.get("typeName", {}).get("names", ())
        if names and names[-1].get("String", {}).get("sval") in _DATETIME_TYPES:
            # '...'::timestamp may be 'now': a constant decides the classification.
            self.keyless = True
        self.walk(fields.get("arg"))

    def _constant(self, fields: Node) -> None:
        value = fields.get("sval")
        if value is not None and value.get("sval", "").strip().lower() in _TIME_WORDS:
            self.keyless = True
            if self.time_reason is None:
                self.time_reason = f"time-dependent value '{value['sval']}'"

    def facts(
        self,
        kind: str,
        ctx: _Context,
        route: Route,
        **fields: Any,
    ) -> StatementFacts:
        """The statement's facts from what the walk found, ``route`` as the floor."""
        if self.modifies or self.locks_rows:
            route = Route.WRITE
        elif any(relation.answers_for_node for relation in self.reads):
            # A standby would describe itself where the caller meant the primary.
            route = Route.WRITE
        fields.setdefault("uncacheable", self._reason(kind))
        return ctx.facts(
            kind,
            route,
            calls=tuple(self.calls),
            reads=tuple(self.reads),
            writes=tuple(self.writes),
            locks_rows=self.locks_rows,
            effects=tuple(self.effects),
            keyless=self.keyless,
            **fields,
        )

    def _reason(self, kind: str) -> str | None:
        if kind != "select" or self.modifies:
            return _NOT_PLAIN
        if self.locks_rows:
            return "row locks"
        if self.volatile_reason is not None:
            return self.volatile_reason
        if self.time_reason is not None:
            return self.time_reason
        for relation in self.reads:
            if relation.is_system:
                return f"system catalog {relation.display}"
        return None


_HANDLERS: dict[str, Callable[[_Walker, Any], None]] = {
    "RangeVar": _Walker._range_var,
    "InsertStmt": _Walker._modify,
    "UpdateStmt": _Walker._modify,
    "DeleteStmt": _Walker._modify,
    "MergeStmt": _Walker._modify,
    "LockingClause": _Walker._locking,
    "intoClause": _Walker._into,
    "RangeTableSample": _Walker._sample,
    "VacuumRelation": _Walker._vacuum_relation,
    "FuncCall": _Walker.func_call,
    "SQLValueFunction": _Walker._value_function,
    "TypeCast": _Walker._type_cast,
    "A_Const": _Walker._constant,
    # nothing to find below these: names, aliases, column references, type names
    "ColumnRef": _Walker._skip,
    "TypeName": _Walker._skip,
    "typeName": _Walker._skip,
    "funcname": _Walker._skip,
    "name": _Walker._skip,
    "alias": _Walker._skip,
    "String": _Walker._skip,
}

_VALUE_FUNCTIONS = {
    "SVFOP_CURRENT_DATE": "current_date",
    "SVFOP_CURRENT_TIME": "current_time",
    "SVFOP_CURRENT_TIME_N": "current_time",
    "SVFOP_CURRENT_TIMESTAMP": "current_timestamp",
    "SVFOP_CURRENT_TIMESTAMP_N": "current_timestamp",
    "SVFOP_LOCALTIME": "localtime",
    "SVFOP_LOCALTIME_N": "localtime",
    "SVFOP_LOCALTIMESTAMP": "localtimestamp",
    "SVFOP_LOCALTIMESTAMP_N": "localtimestamp",
    "SVFOP_CURRENT_ROLE": "current_role",
    "SVFOP_CURRENT_USER": "current_user",
    "SVFOP_USER": "user",
    "SVFOP_SESSION_USER": "session_user",
    "SVFOP_CURRENT_CATALOG": "current_catalog",
    "SVFOP_CURRENT_SCHEMA": "current_schema",
}
_TIME_VALUE_FUNCTIONS = frozenset(
    {"current_date", "current_time", "current_timestamp", "localtime", "localtimestamp"}
)


def _relation(fields: Node) -> Relation:
    schema = fields.get("schemaname")
    catalog = fields.get("catalogname")
    if catalog is not None:
        schema = f"{catalog}.{schema}"
    return Relation(schema, fields["relname"])


def _temp_effect(fields: Node) -> tuple[SessionEffect, ...]:
    if fields.get("relpersistence") == "t" or fields.get("schemaname") == "pg_temp":
        return (SessionEffect(EffectKind.TEMP_OBJECT, _relation(fields).display),)
    return ()


# --- statements -------------------------------------------------------------------


def _query(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    walker = _Walker()
    walker.walk({node_name: fields})
    return walker.facts(_kind(node_name), ctx, Route.READ)


def _explain(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    inner = _statement(fields["query"], ctx)
    if any(option_on(option, "analyze") for option in fields.get("options", ())):
        return inner._replace(kind="explain", uncacheable=_NOT_PLAIN, name=None, body=None)
    # Planned, not run: a standby explains anything, even an INSERT.
    return inner._replace(
        kind="explain",
        route=Route.READ,
        executes=False,
        reads=inner.reads + inner.writes,
        writes=(),
        locks_rows=False,
        effects=(),
        transaction=None,
        dependency_use="exists",
        name=None,
        body=None,
        uncacheable=_NOT_PLAIN,
    )


def _copy(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    # COPY TO a server file or program writes on the node that runs it: the caller
    # means the primary's file system, never a standby's.
    route = Route.WRITE if "filename" in fields or fields.get("is_program") else Route.READ
    query = fields.get("query")
    if query is not None:
        inner = _statement(query, ctx)
        return inner._replace(
            kind="copy", route=inner.route.stricter(route), uncacheable=_NOT_PLAIN
        )
    walker = _Walker()
    relation = _relation(fields["relation"])
    walker.walk(fields.get("whereClause"))
    if fields.get("is_from"):
        walker.writes.append(relation)
        return walker.facts("copy", ctx, Route.WRITE)
    walker.reads.append(relation)
    return walker.facts("copy", ctx, route)


def _create_table_as(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    inner = _statement(fields["query"], ctx)
    target = fields["into"]["rel"]
    return inner._replace(
        kind=_kind(node_name),
        route=Route.WRITE,
        writes=(*inner.writes, _relation(target)),
        effects=inner.effects + _temp_effect(target),
        uncacheable=_NOT_PLAIN,
    )


def _view(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    walker = _Walker()
    walker.walk(fields.get("query"))
    walker.writes.append(_relation(fields["view"]))
    walker.effects.extend(_temp_effect(fields["view"]))
    return walker.facts(_kind(node_name), ctx, Route.WRITE)


def _body(ctx: _Context, after: str, keyword: str) -> Analysis:
    """Analyse the query of PREPARE (after AS) or DECLARE (after CURSOR ... FOR)."""
    text = ctx.sql[ctx.local_start : ctx.local_end]
    seen = not after
    for token in pglast.parser.scan(text):
        if seen and token.name == keyword:
            rest = text[token.end + 1 :]
            start = len(text) - len(rest.lstrip())
            return analyze(text[start:], base=ctx.start + start)
        seen = seen or token.name == after
    raise AssertionError(f"no {keyword} in a statement pglast parsed: {text!r}")


def _prepare(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    name = fields["name"]
    return ctx.facts(
        _kind(node_name),
        Route.SESSION,
        effects=(SessionEffect(EffectKind.PREPARE, name),),
        name=name,
        body=_body(ctx, "", "AS"),
        uncacheable=_NOT_PLAIN,
    )


def _declare(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    name = fields["portalname"]
    body = _body(ctx, "CURSOR", "FOR")
    (query,) = body.statements
    route, effects = Route.READ, query.effects
    if fields.get("options", 0) & _CURSOR_OPT_HOLD:
        route, effects = Route.SESSION, (*effects, SessionEffect(EffectKind.HOLD_CURSOR, name))
    return query._replace(
        kind=_kind(node_name),
        start=ctx.start,
        end=ctx.end,
        route=query.route.stricter(route),
        effects=effects,
        name=name,
        body=body,
        uncacheable=_NOT_PLAIN,
    )


def _execute(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    walker = _Walker()
    walker.walk(fields.get("params"))
    name = fields["name"]
    return walker.facts(
        _kind(node_name),
        ctx,
        Route.READ,
        depends_on=Dependency("prepared", name),
        uncacheable=f"depends on prepared statement {name}",
    )


def _fetch(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    name = fields["portalname"]
    return ctx.facts(
        _kind(node_name),
        Route.READ,
        depends_on=Dependency("cursor", name),
        uncacheable=f"depends on cursor {name}",
    )


def _close(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    name = fields.get("portalname")
    effects = (SessionEffect(EffectKind.CLOSE_CURSOR, name),)
    if name is None:
        return ctx.facts(_kind(node_name), Route.SESSION, effects=effects, uncacheable=_NOT_PLAIN)
    return ctx.facts(
        _kind(node_name),
        Route.READ,
        effects=effects,
        depends_on=Dependency("cursor", name),
        dependency_use="route",
        uncacheable=_NOT_PLAIN,
    )


def _session(kind: EffectKind, name: str | None) -> Callable[..., StatementFacts]:
    """A statement that leaves one kind of session state and every node accepts."""

    def handler(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
        effect = SessionEffect(kind, fields.get(name) if name else None)
        return ctx.facts(_kind(node_name), Route.SESSION, effects=(effect,), uncacheable=_NOT_PLAIN)

    return handler


def _deallocate(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    effect = SessionEffect(EffectKind.DEALLOCATE, None if fields.get("isall") else fields["name"])
    return ctx.facts(_kind(node_name), Route.SESSION, effects=(effect,), uncacheable=_NOT_PLAIN)


def _discard(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    what = fields["target"].removeprefix("DISCARD_").lower()
    effect = SessionEffect(EffectKind.DISCARD, what)
    return ctx.facts(_kind(node_name), Route.SESSION, effects=(effect,), uncacheable=_NOT_PLAIN)


def _listen(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    # A standby refuses LISTEN, and NOTIFY only ever happens on the primary.
    effect = SessionEffect(EffectKind.LISTEN, fields["conditionname"])
    return ctx.facts(_kind(node_name), Route.WRITE, effects=(effect,), uncacheable=_NOT_PLAIN)


_TRANSACTION_ACTIONS = {
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release",
    "TRANS_STMT_ROLLBACK_TO": "rollback_to",
    "TRANS_STMT_PREPARE": "prepare",
    "TRANS_STMT_COMMIT_PREPARED": "commit_prepared",
    "TRANS_STMT_ROLLBACK_PREPARED": "rollback_prepared",
}
# Two-phase commit: a standby refuses all of it.
_PRIMARY_ACTIONS = frozenset({"prepare", "commit_prepared", "rollback_prepared"})


def _transaction(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    action = _TRANSACTION_ACTIONS[fields["kind"]]
    isolation, read_only, deferrable = transaction_options(fields.get("options", ()))
    control = TransactionControl(
        action,
        isolation=isolation,
        read_only=read_only,
        deferrable=deferrable,
        chain=bool(fields.get("chain")),
        name=fields.get("savepoint_name") or fields.get("gid"),
    )
    refused = action in _PRIMARY_ACTIONS or standby_refuses(control)
    return ctx.facts(
        "transaction",
        Route.WRITE if refused else Route.READ,
        transaction=control,
        uncacheable=_NOT_PLAIN,
    )


def _set(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    kind = _kind(node_name)
    set_kind = fields["kind"]
    target = fields.get("name", "")
    args = fields.get("args", ())
    if set_kind == "VAR_RESET_ALL":
        effect = SessionEffect(EffectKind.RESET_ALL)
        return ctx.facts(kind, Route.SESSION, effects=(effect,), uncacheable=_NOT_PLAIN)
    if set_kind == "VAR_SET_MULTI" and target == "SESSION CHARACTERISTICS":
        return _session_characteristics(kind, args, ctx)
    if set_kind == "VAR_SET_MULTI":
        # SET TRANSACTION ... and SET TRANSACTION SNAPSHOT '...'
        isolation, read_only, deferrable = transaction_options(
            [arg for arg in args if "DefElem" in arg]
        )
        snapshot = constant_text(args[0]) if target == "TRANSACTION SNAPSHOT" else None
        options = TransactionControl(
            "set", isolation=isolation, read_only=read_only, deferrable=deferrable, name=snapshot
        )
        # A snapshot is imported on the node that exported it, and pg_export_snapshot
        # runs on the primary.
        refused = snapshot is not None or standby_refuses(options)
        route = Route.WRITE if refused else Route.READ
        return ctx.facts(kind, route, transaction=options, uncacheable=_NOT_PLAIN)
    value = constant_text(args[0]) if set_kind == "VAR_SET_VALUE" and args else None
    route, effects, control = parameter(target.lower(), value, bool(fields.get("is_local")))
    return ctx.facts(kind, route, effects=effects, transaction=control, uncacheable=_NOT_PLAIN)


def _session_characteristics(kind: str, args: list[Node], ctx: _Context) -> StatementFacts:
    # Defaults for later transactions: harmless on a standby, except serializable.
    isolation, _, _ = transaction_options(args)
    effects = [
        SessionEffect(EffectKind.SETTING, "default_" + arg["DefElem"]["defname"]) for arg in args
    ]
    if isolation == SERIALIZABLE:
        effects.append(
            SessionEffect(EffectKind.STANDBY_UNSAFE, "default_transaction_isolation")
        )
    return ctx.facts(kind, Route.SESSION, effects=tuple(effects), uncacheable=_NOT_PLAIN)


def _lock(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    walker = _Walker()
    walker.walk(fields.get("relations"))
    # Every mode: a standby grants the weak ones (ACCESS SHARE to ROW EXCLUSIVE), but a
    # lock taken there blocks no writer on the primary, which is what a lock is for.
    return walker.facts(_kind(node_name), ctx, Route.WRITE)


def _show(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    # SHOW transaction_read_only is how drivers find the primary: a standby says on.
    route = Route.WRITE if fields["name"] in NODE_IDENTITY_SETTINGS else Route.READ
    return ctx.facts(_kind(node_name), route, uncacheable=_NOT_PLAIN)


def _fixed(route: Route) -> Callable[..., StatementFacts]:
    """A statement whose route its type alone decides, with no state left behind."""

    def handler(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
        return ctx.facts(_kind(node_name), route, uncacheable=_NOT_PLAIN)

    return handler


def _call_statement(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    # CALL: the procedure's verdict decides, as a function's would.
    walker = _Walker()
    walker.func_call(fields["funccall"])
    return walker.facts(_kind(node_name), ctx, Route.READ)


_DROPPED_RELATIONS = frozenset(
    {"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_FOREIGN_TABLE", "OBJECT_SEQUENCE"}
)


def _utility(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    """Any other statement: DDL, maintenance, DO, ...: the primary's, naming what it
    creates, alters or drops as written."""
    walker = _Walker()
    walker.walk(fields)
    written = [*walker.writes, *walker.reads]
    for key in ("relation", "sequence"):
        target = fields.get(key)
        if type(target) is dict and "relname" in target:
            written.insert(0, _relation(target))
            walker.effects.extend(_temp_effect(target))
    if node_name == "DropStmt" and fields.get("removeType") in _DROPPED_RELATIONS:
        for item in fields.get("objects", ()):
            names = [part["String"]["sval"] for part in item["List"]["items"]]
            written.append(Relation(".".join(names[:-1]) or None, names[-1]))
    if node_name == "CreateFunctionStmt":
        names = [part["String"]["sval"] for part in fields["funcname"]]
        if names[0] == "pg_temp":
            walker.effects.append(SessionEffect(EffectKind.TEMP_OBJECT, ".".join(names)))
    walker.reads.clear()
    walker.writes[:] = written
    # Expressions in DDL (column defaults, index predicates) are stored, not run now.
    return walker.facts(_kind(node_name), ctx, Route.WRITE, executes=False)


def _do(node_name: str, fields: Node, ctx: _Context) -> StatementFacts:
    """DO: what the PL/pgSQL body runs, when it says (no dynamic SQL); else a write."""
    options = {
        item["DefElem"]["defname"]: item["DefElem"]["arg"]["String"]["sval"]
        for item in fields["args"]
    }
    texts = None
    if options.get("language", "plpgsql").lower() == "plpgsql":
        texts = do_block_statements(options["as"])
    if texts is None:
        return ctx.facts(_kind(node_name), Route.WRITE, uncacheable=_NOT_PLAIN)
    parts: list[StatementFacts] = []
    for text in texts:
        try:
            parts.extend(analyze(text).statements)
        except ParseError:
            # PostgreSQL would reject the block at run time, on any node.
            return ctx.facts(_kind(node_name), Route.WRITE, uncacheable=_NOT_PLAIN)
    route = Route.READ
    for part in parts:
        route = route.stricter(part.route)
    return ctx.facts(
        _kind(node_name),
        route,
        calls=tuple(call for part in parts if part.executes for call in part.calls),
        reads=tuple(relation for part in parts for relation in part.reads),
        writes=tuple(relation for part in parts for relation in part.writes),
        locks_rows=any(part.locks_rows for part in parts),
        effects=tuple(effect for part in parts for effect in part.effects),
        uncacheable=_NOT_PLAIN,
    )


_STATEMENTS: dict[str, Callable[[str, Node, _Context], StatementFacts]] = {
    "DoStmt": _do,
    "SelectStmt": _query,
    "InsertStmt": _query,
    "UpdateStmt": _query,
    "DeleteStmt": _query,
    "MergeStmt": _query,
    "ExplainStmt": _explain,
    "CopyStmt": _copy,
    "CreateTableAsStmt": _create_table_as,
    "ViewStmt": _view,
    "PrepareStmt": _prepare,
    "DeclareCursorStmt": _declare,
    "ExecuteStmt": _execute,
    "FetchStmt": _fetch,
    "ClosePortalStmt": _close,
    "DeallocateStmt": _deallocate,
    "DiscardStmt": _discard,
    "ListenStmt": _listen,
    "UnlistenStmt": _session(EffectKind.UNLISTEN, "conditionname"),
    "LoadStmt": _session(EffectKind.LOAD, "filename"),
    "TransactionStmt": _transaction,
    "VariableSetStmt": _set,
    "VariableShowStmt": _show,
    "ConstraintsSetStmt": _fixed(Route.SESSION),
    "LockStmt": _lock,
    "CallStmt": _call_statement,
}
