"""Classifier: an LRU cache of what the grammar says, for the pooler's hot path."""

from __future__ import annotations

import weakref
from collections import OrderedDict

import pglast.parser

from parser_api.analysis import Analysis, analyze, relocate
from parser_api.catalog import Catalog
from parser_api.classify import Names, catalog_changes, resolve
from parser_api.errors import from_pglast
from parser_api.model import Classification, Statement
from parser_api.tokens import tokens

# String constants holding one of these words may be a time (ts > 'today'), which the
# classification reads: a text with such a constant is never given a classification
# cached for other constants.
_TIME_WORDS = ("now", "today", "tomorrow", "yesterday")


class _Entry:
    """One cached text: the grammar's analysis and its classification with no session."""

    __slots__ = ("analysis", "changes", "checked", "default")

    def __init__(self, analysis: Analysis, default: Classification) -> None:
        self.analysis = analysis
        self.default = default
        # With snapshot catalogs: the last catalog asked about it (weakly), and whether
        # that catalog changes its classification.
        self.checked: weakref.ref[Catalog] | None = None
        self.changes = False


class Classifier:
    """`parser_api.classify` with an LRU cache of what the grammar alone says.

    Texts are cached by their exact text and, for plain SELECT/INSERT/UPDATE/DELETE/
    MERGE, by their ``constant_free_key`` too, so a text that differs from a cached one
    only in constants (pgbench -S) costs a normalisation instead of a parse; such a
    text is not cached by its own text, lest a stream of them evict useful entries.
    The catalog, prepared statements and cursors passed to `classify` are resolved on
    every call and never cached across callers, except that with ``snapshot_catalogs``
    (the caller never changes a catalog object it passed) whether the last catalog
    passed for a text changes its classification is remembered, and that catalog is
    not asked again for it. Not thread-safe (one per event loop).
    """

    def __init__(self, maxsize: int = 10_000, *, snapshot_catalogs: bool = False) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        #: The caller never changes a catalog it passed (a new catalog is a new object):
        #: whether one changes a text's classification is asked once per text.
        self.snapshot_catalogs = snapshot_catalogs
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
        text's), without moving them: about 7 us less per such text.
        """
        entries = self._entries
        entry = entries.get(sql)
        if entry is not None:
            entries.move_to_end(sql)
        else:
            # Inlined: this is the path of every pgbench -S query (a new constant each
            # time), and normalize alone is most of what it may cost.
            try:
                key = (pglast.parser.normalize(sql),)
            except pglast.parser.ParseError as error:
                raise from_pglast(error, sql) from None
            entry = entries.get(key)
            # A text with no quote or dollar sign has no string constant: the check
            # below, inlined, is all pgbench -S pays.
            if entry is not None and not (
                ("'" in sql or "$" in sql) and _constants_may_matter(sql)
            ):
                entries.move_to_end(key)
                if offsets:
                    entry = _relocated(entry, sql)
            else:
                entry = self._analyze(sql, key[0])
        if catalog is None and prepared is None and cursors is None:
            return entry.default
        analysis = entry.analysis
        if (prepared is None and cursors is None) or not analysis.has_dependencies:
            if catalog is None or not analysis.asks_catalog:
                return entry.default
            if not self._changes(entry, catalog):
                return entry.default
        return resolve(analysis, catalog, prepared, cursors)

    def _changes(self, entry: _Entry, catalog: Catalog) -> bool:
        """Whether ``catalog`` changes what the grammar alone says of ``entry``."""
        if not self.snapshot_catalogs:
            return catalog_changes(entry.analysis, catalog)
        checked = entry.checked
        if checked is not None and checked() is catalog:
            return entry.changes
        entry.changes = changes = catalog_changes(entry.analysis, catalog)
        try:
            entry.checked = weakref.ref(catalog)
        except TypeError:
            # Not weakly referenceable: asked every time.
            entry.checked = None
        return changes

    def _analyze(self, sql: str, key: str) -> _Entry:
        """Parse a text seen neither as it is nor by its constant_free_key ``key``."""
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


def _constants_may_matter(sql: str) -> bool:
    """Whether a string constant of ``sql`` may hold a time word, so that the
    classification of another text with the same constant_free_key may not be its own.

    A constant may spell the word with escapes (E'\\x6eow', U&'\\006eow'), which the
    parser decodes: such a constant counts as one that holds it. The caller has seen a
    quote or a dollar sign in ``sql`` (else there is no string constant).
    """
    lowered = sql.lower()
    if not (
        "now" in lowered
        or "today" in lowered
        or "tomorrow" in lowered
        or "yesterday" in lowered
        or "\\" in sql
        or "u&" in lowered
    ):
        return False
    # The word may be a name (known_users) and the backslash an operator: only the
    # scanner tells a constant.
    for token in tokens(sql):
        if token.name == "USCONST":
            return True
        if token.name == "SCONST":
            text = token.text.lower()
            if "\\" in text or any(word in text for word in _TIME_WORDS):
                return True
    return False
