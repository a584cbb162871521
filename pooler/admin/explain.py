"""``EXPLAIN ROUTE <sql>``: where this connection would run a statement now, and why.

It answers from the same pieces routing uses: the classification with the database's
catalog as the client's search_path resolves names in it (``parser_api``,
``routing.search_path``), ``routing.targets.target_of``, the client's transaction and
pins, its read-your-writes position, and the balancer's candidates with their weights,
lag and requests in flight. One row per fact, as (item, value).
"""

from __future__ import annotations

import functools

from parser_api import Catalog, Classification, Classifier, ParseError
from pooler.admin.state import Context
from pooler.admin.wire import Column, Result, Value, columns
from pooler.cluster.catalog import PathCatalog
from pooler.routing.search_path import Path, client_path
from pooler.routing.targets import Target, hint_of, target_of

COLUMNS: tuple[Column, ...] = columns("item", "value")


@functools.cache
def _classifier() -> Classifier:
    return Classifier()


def _classified(ctx: Context, sql: str, path: Path | None) -> tuple[Classification | None, bool]:
    """The classification with the client database's catalog, seen along ``path``
    (None: it does not parse), and whether that catalog has been read."""
    catalogs = ctx.app.catalogs
    base = catalogs.reader(ctx.client.database)() if catalogs is not None else None
    catalog: Catalog | None = base
    if base is not None and path is not None:
        catalog = PathCatalog.of(base, path, ctx.client.user)
    try:
        classification = _classifier().classify(sql, catalog, offsets=False)
    except ParseError:
        return None, catalog is not None
    return classification, catalog is not None


def _why(classification: Classification | None, sql: str, target: Target) -> str:
    """Why ``target_of`` placed the statement where it did."""
    if classification is None:
        return "it does not parse: PostgreSQL on the primary says why"
    if classification.route.value != "read":
        return f"a {classification.route.value} statement"
    if classification.transaction:
        return "it controls a transaction"
    if classification.session_effects:
        return "it leaves session state behind"
    if target is Target.PRIMARY and hint_of(sql) is not None:
        return "its hint asks for the primary"
    if target is Target.STANDBY:
        return "a read, and its hint asks for a standby"
    if target is Target.PRIMARY:
        return "a DO block"
    return "a plain read"


def _names(items: tuple[str, ...]) -> str:
    return ", ".join(items) if items else "none"


def _cache(ctx: Context, classification: Classification | None, sql: str) -> str:
    """What the query cache would do with ``sql`` sent now as a Query, and why."""
    app = ctx.app
    client = ctx.client
    if classification is not None and not classification.cacheable:
        return f"never served or stored: {classification.uncacheable_reason}"
    if app.cache is None:
        if app.config.query_cache.enabled:
            return "not served or stored: the query cache works in transaction pooling only"
        return "not served or stored: the query cache is off (query_cache.enabled)"
    if classification is None:
        return "not served or stored: the statement does not parse"
    reading = client.engine.cache is not None and client.engine.cache.reading
    if client.engine.transaction_status != b"I" and not reading:
        return (
            "not served or stored inside this transaction (only one declared READ ONLY"
            " at READ COMMITTED, with nothing but cacheable reads in it, may be)"
        )
    if app.cache.stored(client.database, client.user, sql):
        return "cacheable: an answer to this text is stored, served if the settings match"
    return "cacheable: no answer to this text is stored yet; the next one is stored"


def explain_route(ctx: Context, sql: str) -> Result:
    """EXPLAIN ROUTE: the classification, then the node that runs the statement or the
    candidates and the rule that picks among them, then the cache's answer."""
    app = ctx.app
    client = ctx.client
    path = client_path(client)
    classification, catalog_read = _classified(ctx, sql, path)
    rows: list[list[Value]] = [["statement", sql]]
    if classification is not None:
        rows += [
            ["route", classification.route.value],
            [
                "search path",
                ", ".join(path)
                if path is not None
                else "not known: a name stands for every schema's object of that name",
            ],
            ["reads tables", _names(classification.reads_tables)],
            ["writes tables", _names(classification.writes_tables)],
            ["functions", _names(classification.functions)],
            [
                "session effects",
                _names(tuple(e.kind.value for e in classification.session_effects)),
            ],
        ]
    target = target_of(classification, sql)
    why = _why(classification, sql, target)
    if app.catalogs is not None and not catalog_read:
        target, why = Target.PRIMARY, "the database's catalog is not read yet"
    elif client.route is not None and target is not Target.PRIMARY:
        target, why = client.route, "this session's PGPOOL SET"
    rows.append(["target", f"{target.name.lower()}: {why}"])
    view = app.cluster.view
    server = client.engine.server
    pins = client.engine.session.pins
    forced: tuple[int | None, str] | None = None
    if not app.routing:
        forced = (view.primary, "routing is off (session mode, load_balance off, or one node)")
    elif client.engine.transaction_status != b"I":
        forced = (client.node, "inside a transaction, which runs on one node")
    elif pins and server is not None:
        forced = (client.node, f"pinned to its server by {_names(tuple(sorted(pins)))}")
    elif target is Target.PRIMARY:
        forced = (view.primary, "the statement runs on the primary")
    if forced is not None:
        node, reason = forced
        rows.append(["node", f"{node if node is not None else 'none'}: {reason}"])
    else:
        nodes = client.read_nodes(target)
        for node in nodes:
            state = view.nodes[node]
            rows.append(
                [
                    f"candidate {node}",
                    f"{state.role}, weight {app.balancer.weights[node]:g},"
                    f" lag {state.lag_bytes} bytes / {state.lag_seconds:g} s,"
                    f" in flight {app.balancer.inflight[node]}",
                ]
            )
        rule = "the less busy of two weighted random picks among the candidates"
        rows.append(["rule", rule if len(nodes) > 1 else "the only candidate"])
    rows.append(["cache", _cache(ctx, classification, sql)])
    return Result(rows, "EXPLAIN")
