"""The lookup table of admin commands, and how a statement's words become a call.

Each command is its leading words (``SHOW POOL_NODES``, ``PAUSE``, ``DETACH NODE``), the
columns it answers (known before it runs, for Describe), the function that runs it,
the arguments it takes, whether only ``admin_users`` may run it, and whether it is
answered on any connection (pgpool-II's views) or only in the admin database.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from pooler.admin import cache, control, explain, pgbouncer, pgpool, settings
from pooler.admin.state import Context
from pooler.admin.wire import AdminError, Column, Later, Result, notice, syntax_error
from pooler.admin.words import Statement, Word

#: Argument kinds: a database name, the same left out, a node id, the rest of the text,
#: the rest of the words (and where the text ends, for an error there).
DATABASE, OPTIONAL_DATABASE, NODE, TEXT = "database", "optional database", "node", "text"
WORDS = "words"


@dataclass(frozen=True, slots=True)
class Command:
    """One entry of the table."""

    words: tuple[str, ...]
    columns: tuple[Column, ...]
    run: Callable[..., Result | Later]
    args: tuple[str, ...] = ()
    #: Changes something: only admin_users.
    control: bool = False
    #: Answered on every connection, not only in the admin database.
    anywhere: bool = False
    #: Changes only the caller's own session: anyone may.
    session: bool = False


#: How SHOW HELP writes each argument kind.
_ARGUMENT_HELP = {
    DATABASE: " <db>",
    OPTIONAL_DATABASE: " [<db>]",
    NODE: " <n>",
    TEXT: " <sql>",
    WORDS: " ...",
}


def show_help(ctx: Context) -> Result:
    """SHOW HELP: every command of the table, in a NOTICE as PgBouncer sends it."""
    usage = [" ".join(c.words) + "".join(_ARGUMENT_HELP[a] for a in c.args) for c in _COMMANDS]
    return Result((), "SHOW", notice("Console usage", "\n\t" + "\n\t".join(usage)))


_COMMANDS = (
    Command(("SHOW", "POOL_NODES"), pgpool.NODES, pgpool.show_nodes, anywhere=True),
    Command(("SHOW", "POOL_VERSION"), pgpool.VERSION, pgpool.show_version, anywhere=True),
    Command(("SHOW", "POOL_CACHE"), pgpool.CACHE, pgpool.show_cache, anywhere=True),
    Command(("SHOW", "POOL_POOLS"), pgpool.POOLS, pgpool.show_pools, anywhere=True),
    Command(("SHOW", "POOL_PROCESSES"), pgpool.PROCESSES, pgpool.show_processes, anywhere=True),
    Command(
        ("SHOW", "POOL_HEALTH_CHECK_STATS"),
        pgpool.HEALTH_CHECK_STATS,
        pgpool.show_health_check_stats,
        anywhere=True,
    ),
    Command(
        ("SHOW", "POOL_BACKEND_STATS"),
        pgpool.BACKEND_STATS,
        pgpool.show_backend_stats,
        anywhere=True,
    ),
    Command(("EXPLAIN", "ROUTE"), explain.COLUMNS, explain.explain_route, (TEXT,), anywhere=True),
    Command(("PGPOOL", "SHOW"), settings.COLUMNS, settings.pgpool_show, (WORDS,), anywhere=True),
    Command(
        ("PGPOOL", "SET", "CACHE"), (), cache.set_cache, (WORDS,), anywhere=True, session=True
    ),
    Command(("PGPOOL", "CLEAR", "CACHE"), (), cache.clear_cache, anywhere=True, control=True),
    Command(("PGPOOL", "SET"), (), settings.pgpool_set, (WORDS,), anywhere=True, session=True),
    Command(("PGPOOL", "RESET"), (), settings.pgpool_reset, (WORDS,), anywhere=True, session=True),
    Command(("SHOW", "HELP"), (), show_help),
    Command(("SHOW", "POOLS"), pgbouncer.POOLS, pgbouncer.show_pools),
    Command(("SHOW", "CLIENTS"), pgbouncer.SOCKETS, pgbouncer.show_clients),
    Command(("SHOW", "SERVERS"), pgbouncer.SOCKETS, pgbouncer.show_servers),
    Command(("SHOW", "STATS"), pgbouncer.STATS, pgbouncer.show_stats),
    Command(("SHOW", "DATABASES"), pgbouncer.DATABASES, pgbouncer.show_databases),
    Command(("SHOW", "CONFIG"), pgbouncer.CONFIG, pgbouncer.show_config),
    Command(("SHOW", "LISTS"), pgbouncer.LISTS, pgbouncer.show_lists),
    Command(("SHOW", "USERS"), pgbouncer.USERS, pgbouncer.show_users),
    Command(("SHOW", "VERSION"), pgbouncer.VERSION, pgbouncer.show_version),
    Command(("PAUSE",), (), control.pause, (OPTIONAL_DATABASE,), control=True),
    Command(("RESUME",), (), control.resume, (OPTIONAL_DATABASE,), control=True),
    Command(("DISABLE",), (), control.disable, (DATABASE,), control=True),
    Command(("ENABLE",), (), control.enable, (DATABASE,), control=True),
    Command(("RECONNECT",), (), control.reconnect, (OPTIONAL_DATABASE,), control=True),
    Command(("KILL",), (), control.kill, (DATABASE,), control=True),
    Command(("RELOAD",), (), control.reload_config, control=True),
    Command(("SHUTDOWN",), (), control.shutdown, control=True),
    Command(("ATTACH", "NODE"), (), control.attach_node, (NODE,), control=True),
    Command(("DETACH", "NODE"), (), control.detach_node, (NODE,), control=True),
    Command(("PROMOTE", "NODE"), (), control.promote_node, (NODE,), control=True),
)
TABLE: dict[tuple[str, ...], Command] = {command.words: command for command in _COMMANDS}


def lookup(words: tuple[Word, ...], console: bool) -> Command | None:
    """The command a statement's leading words name (in the admin database, or
    ``console`` False: one answered on any connection), or None."""
    keys = tuple(word.upper for word in words[:3])
    for size in (3, 2, 1):
        command = TABLE.get(keys[:size])
        if command is not None and (console or command.anywhere):
            return command
    return None


@dataclass(frozen=True, slots=True)
class Bound:
    """A recognised command with its arguments, ready to run (a prepared statement)."""

    command: Command
    args: tuple[object, ...]

    def run(self, ctx: Context) -> Result | Later:
        """Run it for the client of ``ctx``; raises AdminError."""
        command = self.command
        restricted = command.anywhere and not command.session
        if command.control or (restricted and ctx.app.config.admin.restrict_show):
            # (EXPLAIN ROUTE and PGPOOL SHOW go with the views: they show the same state.)
            ctx.require_admin(" ".join(command.words))
        if command.args == (NODE,):
            return command.run(ctx, ctx.node(cast(int, self.args[0])))
        return command.run(ctx, *self.args)


def bind(statement: Statement, console: bool) -> Bound | None:
    """The command ``statement`` is, with its arguments; None when it is none of the
    table's; raises AdminError (42601) when its arguments are not what it takes."""
    words = statement.words
    command = lookup(words, console)
    if command is None:
        return None
    rest = list(words[len(command.words) :])
    args: list[object] = []
    for kind in command.args:
        if not rest:
            if kind == OPTIONAL_DATABASE:
                break
            raise syntax_error(None, statement.end)
        if kind == WORDS:
            args += [tuple(rest), statement.end]
            rest = []
            break
        if kind == TEXT:
            args.append(statement.text_after(words[len(command.words) - 1]))
            rest = []
            break
        word = rest.pop(0)
        args.append(_argument(word, kind))
    if rest:
        raise syntax_error(rest[0].text, rest[0].position)
    return Bound(command, tuple(args))


def _argument(word: Word, kind: str) -> str | int:
    if kind == NODE:
        if not word.text.isdigit():
            raise syntax_error(word.text, word.position)
        return int(word.text)
    if word.text.startswith('"') and word.text.endswith('"') and len(word.text) > 1:
        return word.text[1:-1].replace('""', '"')
    if word.kind.value not in ("identifier", "keyword"):
        raise syntax_error(word.text, word.position)
    return word.text.lower()


def unknown(statement: Statement) -> AdminError:
    """What the admin database answers a statement none of the table's."""
    first = statement.words[0]
    return AdminError(
        "42601",
        f'unrecognized admin command "{first.text}"',
        position=first.position,
        hint="SHOW HELP lists the commands.",
    )
