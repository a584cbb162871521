"""pgpool-II's ``PGPOOL SHOW | SET | RESET``: the configuration in effect, and the
settings a session may change for itself.

Two settings make sense per session here: ``load_balance_mode`` (pgpool-II's name; off
keeps this session's reads on the primary) and ``default_hint`` (none, primary or
standby: as if every statement began with that ``/* pooler: ... */`` hint). Everything
else is the configuration, read only (``PGPOOL SET`` of it is refused, 55P02, as
PostgreSQL refuses a setting that cannot change now).
"""

from __future__ import annotations

from pooler.admin.pgbouncer import config_rows
from pooler.admin.state import Context
from pooler.admin.wire import AdminError, Column, Result, Value, columns, syntax_error
from pooler.admin.words import Word
from pooler.routing.targets import Target

COLUMNS: tuple[Column, ...] = columns("item", "value", "description")
#: Session settings: their values, the default first, and what they do.
SESSION = {
    "load_balance_mode": (("on", "off"), "off: this session's reads stay on the primary"),
    "default_hint": (
        ("none", "primary", "standby"),
        "every read goes as if it had this /* pooler: ... */ hint",
    ),
}
_ALL = "ALL"


def _name(words: tuple[Word, ...], end: int) -> str:
    """A setting's name (``pool.size`` is three words), lower case."""
    if not words:
        raise syntax_error(None, end)
    return "".join(word.text for word in words).lower()


def _session_rows(ctx: Context) -> list[list[Value]]:
    return [
        [name, ctx.settings.get(name, values[0]), description]
        for name, (values, description) in SESSION.items()
    ]


def pgpool_show(ctx: Context, words: tuple[Word, ...], end: int) -> Result:
    """PGPOOL SHOW name | ALL: the session's settings and the configuration."""
    name = _name(words, end)
    rows = _session_rows(ctx)
    rows += [[key, value, f"default: {default}"] for key, value, default in config_rows(ctx)]
    if name.upper() != _ALL:
        rows = [row for row in rows if row[0] == name]
        if not rows:
            raise AdminError("42704", f'unrecognized configuration parameter "{name}"')
    return Result(rows, "SELECT")


def pgpool_set(ctx: Context, words: tuple[Word, ...], end: int) -> Result:
    """PGPOOL SET name = value | TO value: a session setting, for this session."""
    split = next(
        (i for i, word in enumerate(words) if word.text == "=" or word.upper == "TO"), None
    )
    if split is None:
        raise syntax_error(words[-1].text if words else None, words[-1].position if words else end)
    name = _name(words[:split], words[split].position)
    value_words = words[split + 1 :]
    if len(value_words) != 1:
        near = value_words[1] if value_words else None
        raise syntax_error(near.text if near else None, near.position if near else end)
    value = value_words[0].text.strip("'").lower()
    _change(ctx, name, value)
    return Result((), "SET")


def pgpool_reset(ctx: Context, words: tuple[Word, ...], end: int) -> Result:
    """PGPOOL RESET name | ALL: session settings back to their defaults."""
    name = _name(words, end)
    for setting in SESSION if name.upper() == _ALL else (name,):
        _change(ctx, setting, None)
    return Result((), "RESET")


def _change(ctx: Context, name: str, value: str | None) -> None:
    if name not in SESSION:
        if any(row[0] == name for row in config_rows(ctx)):
            raise AdminError(
                "55P02",
                f'parameter "{name}" cannot be changed now',
                hint="It is the pooler's configuration; only a session setting can be.",
            )
        raise AdminError("42704", f'unrecognized configuration parameter "{name}"')
    values = SESSION[name][0]
    if value is None:
        ctx.settings.pop(name, None)
    elif value not in values:
        raise AdminError(
            "22023",
            f'invalid value for parameter "{name}": "{value}"',
            hint=f"Available values: {', '.join(values)}.",
        )
    else:
        ctx.settings[name] = value
    ctx.client.route = route(ctx.settings)


def route(settings: dict[str, str]) -> Target | None:
    """Where the session's reads go instead of where routing sends them."""
    if settings.get("load_balance_mode") == "off":
        return Target.PRIMARY
    hint = settings.get("default_hint")
    if hint == "primary":
        return Target.PRIMARY
    if hint == "standby":
        return Target.STANDBY
    return None
