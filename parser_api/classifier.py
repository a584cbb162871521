"""Classifier: an LRU cache of what the grammar says, for the pooler's hot path."""

from __future__ import annotations

from collections import OrderedDict

import pglast.parser

from parser_api.analysis import Analysis, analyze, relocate
from parser_api.catalog import Catalog
from parser_api.classify import Names, catalog_changes, resolve
from parser_api.errors import from_pglast
from parser_api.model import Classification, Statement
from parser_api.tokens import tokens

# A constant among these words may be a time ('now'::date, ts > 'today'): a text
# holding one is never given a classification cached for other constants.
_TIME_WORDS = ("now", "today", "tomorrow", "yesterday")


class _Entry:
    """One cached text: the grammar's analysis and its classification with no session."""

    __slots__ = ("analysis", "default")

    def __init__(self, analysis: Analysis, default: Classification) -> None:
        self.analysis = analysis
        self.default = default


class Classifier:
    """`parser_api.classify` with an LRU cache of what the grammar alone says.

    Texts are cached by their exact text and, for plain SELECT/INSERT/UPDATE/DELETE/
    MERGE, by their ``constant_free_key`` too, so a text that differs from a cached one
    only in constants (pgbench -S) costs a normalisation instead of a parse; such a
    text is not cached by its own text, lest a stream of them evict useful entries.
    The catalog, prepared statements and cursors passed to `classify` are resolved on
    every call and never cached across callers. Not thread-safe (one per event loop).
    """

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        # Keys: a text (str), or (constant_free_key,) for the by-key entries: a
        # normalised text is valid SQL too, but its own statement offsets differ.
        self._entries: OrderedDict[str | tuple[str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        """Forget every cached text."""
        self._entries.clear()

    def classify(
        self,
        sql: str,
        catalog: Catalog | None = None,
        prepared: Names | None = None,
        cursors: Names | None = None,
        *,
        offsets: bool = True,
    ) -> Classification:
        """Same arguments and answer as `parser_api.classify`, cached by text.

        ``offsets=False``: a caller that does not read ``statements[i].start``/``end``
        lets a text that differs from a cached one only in constants be answered with
        that one's classification as it is (its statement offsets are the other
        text's), without moving them: about 5 us less per such text.
        """
        entry = self._entries.get(sql)
        if entry is None:
            entry = self._miss(sql, offsets)
        else:
            self._entries.move_to_end(sql)
        analysis = entry.analysis
        if (prepared is None and cursors is None) or not analysis.has_dependencies:
            if catalog is None or not analysis.asks_catalog:
                return entry.default
            if not catalog_changes(analysis, catalog):
                return entry.default
        return resolve(analysis, catalog, prepared, cursors)

    def _miss(self, sql: str, offsets: bool = True) -> _Entry:
        try:
            key = pglast.parser.normalize(sql)
        except pglast.parser.ParseError as error:
            raise from_pglast(error, sql) from None
        keyed = self._entries.get((key,))
        if keyed is not None and not (keyed.default.cacheable and _mentions_time(sql)):
            self._entries.move_to_end((key,))
            return _relocated(keyed, sql) if offsets else keyed
        analysis = analyze(sql, normalized=key)
        entry = _Entry(analysis, resolve(analysis, None, None, None))
        self._store(sql, entry)
        if analysis.keys.constant_free_key() is not None:
            self._store((key,), entry)
        return entry

    def _store(self, key: str | tuple[str], entry: _Entry) -> None:
        self._entries[key] = entry
        if len(self._entries) > self.maxsize:
            self._entries.popitem(last=False)


def _relocated(entry: _Entry, sql: str) -> _Entry:
    """The entry of another text with the same constant_free_key: only offsets move."""
    analysis = relocate(entry.analysis, sql)
    # Built field by field: dataclasses.replace introspects the class on every call,
    # and this is the path of every pgbench -S query.
    statements = tuple(
        Statement(s.kind, facts.start, facts.end, s.route, s.name, s.body)
        for s, facts in zip(entry.default.statements, analysis.statements, strict=True)
    )
    d = entry.default
    default = Classification(
        d.route, statements, d.transaction, d.reads_tables, d.writes_tables, d.functions,
        d.locks_rows, d.session_effects, d.depends_on, d.cacheable, d.uncacheable_reason,
        d._keys,
    )
    return _Entry(analysis, default)


def _mentions_time(sql: str) -> bool:
    """Whether a string constant of ``sql`` holds a time word."""
    lowered = sql.lower()
    if not any(word in lowered for word in _TIME_WORDS):
        return False
    # The word may be a name (known_users): only the scanner tells a constant.
    return any(
        token.name == "SCONST" and any(word in token.text.lower() for word in _TIME_WORDS)
        for token in tokens(sql)
    )
