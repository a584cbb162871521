"""Function calls and run-time parameters: what calling or setting them means.

A call's verdict (route, cacheability, session effects) is decided here from the
grammar alone: built-ins by the table generated from pg_proc and the reviewed lists;
the rest is left as a question for the caller's catalog.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from parser_api import builtin_functions as builtins
from parser_api.catalog import Volatility, builtin_volatility
from parser_api.model import EffectKind, Route, SessionEffect, TransactionControl

Node = dict[str, Any]

_INV_READ = 0x40000  # libpq-fs.h: lo_open's read-only mode
SERIALIZABLE = "serializable"
_TRANSACTION_PARAMETERS = frozenset(
    {"transaction_isolation", "transaction_read_only", "transaction_deferrable"}
)


class Verdict(NamedTuple):
    """What one function call means for the route, the result cache and the session."""

    route: Route
    uncacheable: str | None = None
    effects: tuple[SessionEffect, ...] = ()


READS = Verdict(Route.READ)

# Which question a session's catalog may answer for a call: "volatility" for a function
# the library does not know, "read_only" for a VOLATILE built-in the caller may vouch for.
CatalogQuestion = Literal["volatility", "read_only"]


class Call(NamedTuple):
    """One function call in the text, with the verdict the grammar alone gives it."""

    schema: str | None
    name: str
    nargs: int
    display: str
    verdict: Verdict
    ask: CatalogQuestion | None


def make_call(fields: Node) -> Call:
    """The call a FuncCall node makes, with the grammar's verdict on it."""
    names = [item["String"]["sval"] for item in fields["funcname"]]
    name = names[-1]
    schema = ".".join(names[:-1]) or None
    if schema == "pg_catalog" and fields.get("funcformat") == "COERCE_SQL_SYNTAX":
        # EXTRACT(...), x AT TIME ZONE y: the grammar added the schema, the text has none.
        schema = None
    args = fields.get("args", ())
    nargs = len(args)
    if fields.get("agg_within_group"):
        # An ordered-set aggregate's ORDER BY expressions are arguments too:
        # percentile_cont(0.5) WITHIN GROUP (ORDER BY x) is percentile_cont/2.
        nargs += len(fields.get("agg_order", ()))
    display = name if schema is None else f"{schema}.{name}"
    if schema is not None and schema != "pg_catalog":
        return Call(schema, name, nargs, display, _unknown(display), "volatility")
    verdict, ask = _builtin_verdict(name, display, args, nargs)
    return Call(schema, name, nargs, display, verdict, ask)


def _unknown(display: str) -> Verdict:
    return Verdict(Route.WRITE, f"unknown function {display}")


def _builtin_verdict(
    name: str, display: str, args: list[Node], nargs: int
) -> tuple[Verdict, CatalogQuestion | None]:
    if name == "set_config":
        return _set_config(display, args), None
    if name == "lo_open":
        return _lo_open(display, args), None
    if name == "current_setting" and args:
        setting = constant_text(args[0])
        if setting is not None and setting.lower() in builtins.NODE_IDENTITY_SETTINGS:
            return _answers_for_node(display), None
    if name == "setseed":
        effect = SessionEffect(EffectKind.RANDOM_SEED)
        return Verdict(Route.SESSION, f"volatile function {display}", (effect,)), None
    if name in builtins.NODE_IDENTITY_FUNCTIONS:
        return _answers_for_node(display), None
    if name in builtins.PRIMARY_ONLY:
        effects: tuple[SessionEffect, ...] = ()
        if name in builtins.SESSION_ADVISORY_LOCKS:
            effects = (SessionEffect(EffectKind.ADVISORY_LOCK, name),)
        elif name in builtins.SESSION_ADVISORY_UNLOCKS:
            effects = (SessionEffect(EffectKind.ADVISORY_UNLOCK, name),)
        return Verdict(Route.WRITE, f"volatile function {display}", effects), None
    volatility = builtin_volatility(name, nargs)
    if volatility is None:
        return _unknown(display), "volatility"
    if volatility is Volatility.VOLATILE:
        if name in builtins.SIDE_EFFECT_FREE_VOLATILE:
            return Verdict(Route.READ, f"volatile function {display}"), None
        return Verdict(Route.WRITE, f"volatile function {display}"), "read_only"
    if volatility is Volatility.STABLE:
        if name in builtins.TIME_DEPENDENT:
            return Verdict(Route.READ, f"time-dependent function {display}"), None
        if name in builtins.STATE_DEPENDENT or name.startswith(
            builtins.STATE_DEPENDENT_PREFIXES
        ):
            return Verdict(Route.READ, f"function {display} reads server state"), None
    return READS, None


def _answers_for_node(display: str) -> Verdict:
    # A standby would answer for itself where the caller meant the primary.
    return Verdict(Route.WRITE, f"function {display} answers for the node that runs it")


def _set_config(display: str, args: list[Node]) -> Verdict:
    if len(args) != 3:
        return _unknown(display)
    name, value, local = (constant_text(arg) for arg in args)
    route, effects, _ = parameter(
        name.lower() if name is not None else None,
        value,
        pg_bool(local) is True if local is not None else False,
        keep_value=True,
    )
    return Verdict(route.stricter(Route.SESSION), f"volatile function {display}", effects)


def _lo_open(display: str, args: list[Node]) -> Verdict:
    # Opening for reading only (INV_READ) reads; any other mode is about to write.
    mode = constant_text(args[1]) if len(args) == 2 else None
    route = Route.READ if mode == str(_INV_READ) else Route.WRITE
    return Verdict(route, f"volatile function {display}")


def constant_text(node: Node) -> str | None:
    """The text of a constant argument (through casts), None for anything computed."""
    cast = node.get("TypeCast")
    if cast is not None:
        return constant_text(cast.get("arg", {}))
    const = node.get("A_Const")
    if const is None:
        return None
    for key, default in (("sval", ""), ("fval", ""), ("ival", 0), ("boolval", False)):
        if key in const:
            value = const[key].get(key, default)
            return str(value).lower() if key == "boolval" else str(value)
    return None


def pg_bool(text: str | None) -> bool | None:
    """PostgreSQL's parse_bool: on/off, true/false, yes/no, 1/0 and their prefixes."""
    if text is None:
        return None
    value = text.strip().lower()
    if value and ("true".startswith(value) or "yes".startswith(value)):
        return True
    if value and ("false".startswith(value) or "no".startswith(value)):
        return False
    return {"on": True, "1": True, "off": False, "of": False, "0": False}.get(value)


def standby_refuses(control: TransactionControl) -> bool:
    # A hot standby refuses serializable mode and read-write transactions.
    return control.isolation == SERIALIZABLE or control.read_only is False


def parameter(
    setting: str | None, value: str | None, local: bool, *, keep_value: bool = False
) -> tuple[Route, tuple[SessionEffect, ...], TransactionControl | None]:
    """Route, effects and transaction control of setting one run-time parameter.

    ``value`` None: the default (RESET, SET ... TO DEFAULT), or not known where
    ``setting`` is None too (set_config with a computed name). ``keep_value``: the
    SETTING effect carries ``value`` (set_config, whose text is not a SET to repeat).
    """
    if setting is None:
        # Could be transaction_read_only = off, which a standby refuses.
        return Route.WRITE, () if local else (SessionEffect(EffectKind.SETTING),), None
    if setting in _TRANSACTION_PARAMETERS:
        # Options of the current transaction only: no session state survives it.
        control = TransactionControl(
            "set",
            isolation=value.lower() if setting == "transaction_isolation" and value else None,
            read_only=pg_bool(value) if setting == "transaction_read_only" else None,
            deferrable=pg_bool(value) if setting == "transaction_deferrable" else None,
        )
        return (Route.WRITE if standby_refuses(control) else Route.READ), (), control
    if local:
        return Route.SESSION, (), None
    effects = [SessionEffect(EffectKind.SETTING, setting, value if keep_value else None)]
    if setting == "default_transaction_isolation" and (value or "").lower() == SERIALIZABLE:
        effects.append(SessionEffect(EffectKind.STANDBY_UNSAFE, setting))
    return Route.SESSION, tuple(effects), None


def transaction_options(options: list[Node]) -> tuple[str | None, bool | None, bool | None]:
    isolation = read_only = deferrable = None
    for item in options:
        option = item["DefElem"]
        value = constant_text(option.get("arg", {}))
        if option["defname"] == "transaction_isolation":
            isolation = value.lower() if value else None
        elif option["defname"] == "transaction_read_only":
            read_only = pg_bool(value)
        elif option["defname"] == "transaction_deferrable":
            deferrable = pg_bool(value)
    return isolation, read_only, deferrable


def option_on(item: Node, name: str) -> bool:
    """Whether a DefElem option list item turns option ``name`` on (EXPLAIN (ANALYZE))."""
    option = item["DefElem"]
    if option["defname"] != name:
        return False
    arg = option.get("arg")
    if arg is None:
        return True
    for key, field, default in (
        ("String", "sval", ""),
        ("Boolean", "boolval", False),
        ("Integer", "ival", 0),
    ):
        if key in arg:
            return pg_bool(str(arg[key].get(field, default))) is True
    return True
