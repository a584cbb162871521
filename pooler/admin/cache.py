"""The query cache's admin commands: pgpool-II 4.6's ``PGPOOL SET CACHE DELETE
'<query>'`` (anyone, for their own entries) and ``PGPOOL CLEAR CACHE`` (ours, admin
users only: it drops every entry of every user)."""

from __future__ import annotations

import logging

from parser_api import ParseError, string_value, tokens
from pooler.admin.state import Context
from pooler.admin.wire import Result, notice, syntax_error
from pooler.admin.words import Word

log = logging.getLogger("pooler.admin")


def _query_text(words: tuple[Word, ...], end: int) -> str:
    """The statement text of ``DELETE '<query>'``; raises 42601 for anything else."""
    if not words or words[0].upper != "DELETE":
        raise syntax_error(words[0].text if words else None, words[0].position if words else end)
    if len(words) != 2:
        near = words[2] if len(words) > 2 else None
        raise syntax_error(near.text if near else None, near.position if near else end)
    word = words[1]
    try:
        found = tokens(word.text)
    except ParseError:
        found = []
    text = string_value(found[0]) if len(found) == 1 else None
    if text is None:
        raise syntax_error(word.text, word.position)
    return text


def set_cache(ctx: Context, words: tuple[Word, ...], end: int) -> Result:
    """PGPOOL SET CACHE DELETE '<query>': drop every entry of the caller's user and
    database whose statement text is exactly ``<query>`` (trailing ``;`` included, as
    pgpool-II keys it), and say so in a NOTICE with pgpool-II's words."""
    text = _query_text(words, end)
    cache = ctx.app.cache
    client = ctx.client
    deleted = cache.delete(client.database, client.user, text) if cache is not None else 0
    if deleted:
        said = notice(f'query cache deleted. query: "{text}"')
    else:
        said = notice(f'query cache does not exist for query: "{text}"')
    return Result((), "SET", said)


def clear_cache(ctx: Context) -> Result:
    """PGPOOL CLEAR CACHE: drop every entry (admin users only; the table checks)."""
    cache = ctx.app.cache
    if cache is not None:
        cache.store.clear()
    log.info("admin command", extra={"command": "PGPOOL CLEAR CACHE", "user": ctx.client.user})
    return Result((), "CLEAR CACHE")
