"""A client's search_path as its session has it, so that routing resolves the names its
statements use as PostgreSQL would (``pooler.cluster.catalog.PathCatalog``).

The path is the client's own SET search_path (or ``set_config``) once it committed, as
``pooler.engine.settings`` keeps it, else the one of its startup packet (a
``search_path`` parameter, or ``-c search_path=...`` in ``options``), to which RESET and
DEFAULT go back. Without either it is the server's default for the role and database,
which the pooler does not know: names are then resolved without a path (the strictest
of every schema's object of that name), as they are for a value the pooler cannot read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from parser_api import Catalog, ParseError, TokenKind, tokens
from pooler.cluster.catalog import DatabaseCatalog, PathCatalog

if TYPE_CHECKING:
    from pooler.net.client import ClientConnection

Path = tuple[str, ...]
Startup = Iterable[tuple[str, str]]
_DEFAULT = "default"
_NAME = "search_path"


def split_list(value: str) -> list[str] | None:
    """PostgreSQL's SplitIdentifierString: names separated by commas, double quotes
    keeping case, commas and spaces, other names lower-cased; None when malformed."""
    names: list[str] = []
    i, end = 0, len(value)
    while i < end and value[i].isspace():
        i += 1
    if i == end:
        return names
    while True:
        if value[i] == '"':
            parts: list[str] = []
            i += 1
            while True:
                close = value.find('"', i)
                if close < 0:
                    return None
                parts.append(value[i:close])
                i = close + 1
                if value[i : i + 1] != '"':
                    break
                parts.append('"')
                i += 1
            name = "".join(parts)
        else:
            start = i
            while i < end and value[i] != "," and not value[i].isspace():
                i += 1
            name = _lower(value[start:i])
        if not name:
            return None
        names.append(name)
        while i < end and value[i].isspace():
            i += 1
        if i == end:
            return names
        if value[i] != ",":
            return None
        i += 1
        while i < end and value[i].isspace():
            i += 1
        if i == end:
            return None


def _lower(name: str) -> str:
    # PostgreSQL folds ASCII letters only (in UTF-8).
    return "".join(c.lower() if "A" <= c <= "Z" else c for c in name)


def _string(literal: str) -> str | None:
    """A plain '...' constant's value (None for E'', U&'' and dollar quoting)."""
    if len(literal) < 2 or literal[0] != "'" or literal[-1] != "'":
        return None
    return literal[1:-1].replace("''", "'")


def statement_value(statement: str) -> list[str] | str | None:
    """The schemas a statement ``pooler.engine.settings`` keeps for search_path sets, or
    ``"default"`` (SET ... TO DEFAULT), or None when the text does not show them."""
    try:
        words = [t for t in tokens(statement) if t.kind is not TokenKind.COMMENT]
    except ParseError:
        return None
    if words and words[0].name == "SELECT":
        # pg_catalog.set_config('search_path', 'value', false): a list in a string.
        literals = [t.text for t in words if t.name == "SCONST"]
        value = _string(literals[1]) if len(literals) == 2 else None
        return None if value is None else split_list(value)
    # SET [SESSION] search_path {TO | =} value [, ...] (FROM CURRENT shows nothing)
    start = next((i for i, t in enumerate(words) if t.name == "TO" or t.text == "="), None)
    if start is None:
        return None
    items = words[start + 1 :]
    if len(items) == 1 and items[0].name == "DEFAULT":
        return _DEFAULT
    names: list[str] = []
    for i, token in enumerate(items):
        if i % 2:
            if token.text != ",":
                return None
            continue
        if token.kind is TokenKind.IDENTIFIER:
            quoted = token.text.startswith('"')
            names.append(token.text[1:-1].replace('""', '"') if quoted else _lower(token.text))
        elif token.kind is TokenKind.KEYWORD:
            names.append(_lower(token.text))
        else:
            # A string is one name, commas and all.
            value = _string(token.text) if token.name == "SCONST" else None
            if value is None:
                return None
            names.append(value)
    return names if len(items) % 2 else None


def startup_value(params: Startup) -> str | None:
    """The search_path a startup packet sets: its ``search_path`` parameter, which
    PostgreSQL applies after ``options``, else the last ``-c search_path=`` there."""
    direct = options = None
    for key, value in params:
        if key == _NAME:
            direct = value
        elif key == "options":
            options = value
    if direct is not None or options is None:
        return direct
    found = None
    args = _split_options(options)
    for i, arg in enumerate(args):
        if arg == "-c":
            setting = args[i + 1] if i + 1 < len(args) else ""
        elif arg.startswith(("-c", "--")):
            setting = arg[2:]
        else:
            continue
        name, equals, value = setting.partition("=")
        if equals and name.replace("-", "_").lower() == _NAME:
            found = value
    return found


def _split_options(options: str) -> list[str]:
    """PostgreSQL's pg_split_opts: words separated by spaces, a backslash escaping the
    character after it."""
    args: list[str] = []
    word: list[str] | None = None
    escaped = False
    for c in options:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
            word = word if word is not None else []
            continue
        elif c.isspace():
            if word is not None:
                args.append("".join(word))
                word = None
            continue
        word = word if word is not None else []
        word.append(c)
    if word is not None:
        args.append("".join(word))
    return args


def session_path(committed: Mapping[str, str], startup: Startup, user: str) -> Path | None:
    """The schemas a session looks unqualified names up in, in order (pg_catalog first
    unless placed, ``$user`` as ``user``), or None when the pooler cannot know them."""
    value: list[str] | str | None = None
    statement = committed.get(_NAME)
    if statement is not None:
        value = statement_value(statement)
        if value is None:
            return None
    if not isinstance(value, list):
        login = startup_value(startup)
        value = split_list(login) if login is not None else None
        if value is None:
            return None
    path = tuple(user if name == "$user" else name for name in value)
    return path if "pg_catalog" in path else ("pg_catalog", *path)


def client_path(client: ClientConnection) -> Path | None:
    """``session_path`` of a logged-in client."""
    return session_path(client.engine.settings.committed, client.startup_params, client.user)


class SessionCatalog:
    """The catalog one client's statements are classified with: the database's as
    ``read`` returns it, seen along the client's search_path once that is known.

    ``current`` is asked once per statement: while no path is known it is ``read``
    itself, so that such clients pay nothing. ``update`` runs when the client's
    search_path may have changed (and before its first statement).
    """

    __slots__ = ("_catalog", "_path", "_path_of", "_read", "_user", "current")

    def __init__(
        self,
        read: Callable[[], DatabaseCatalog | None],
        path_of: Callable[[], Path | None],
        user: str,
    ) -> None:
        self._read = read
        self._path_of = path_of
        self._user = user
        # () until read (a path always holds pg_catalog).
        self._path: Path | None = ()
        self._catalog: PathCatalog | None = None
        #: The catalog for the next statement.
        self.current: Callable[[], Catalog | None] = self._first

    def _first(self) -> Catalog | None:
        # The startup parameters are known only once the client logged in.
        self.update()
        return self.current()

    def update(self) -> bool:
        """Read the client's search_path again: whether it changed."""
        path = self._path_of()
        if path == self._path:
            return False
        self._path = path
        self._catalog = None
        self.current = self._read if path is None else self._on_path
        return True

    def _on_path(self) -> Catalog | None:
        base = self._read()
        if base is None:
            return None
        catalog = self._catalog
        if catalog is None or catalog.base is not base:
            # First use, or the database's catalog was read again.
            assert self._path
            catalog = self._catalog = PathCatalog.of(base, self._path, self._user)
        return catalog
