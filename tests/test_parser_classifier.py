"""parser_api.Classifier: the hot path's LRU answers exactly what classify answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_parser_classify import ROUTES

from parser_api import (
    Classifier,
    ParseError,
    Persistence,
    Route,
    StaticCatalog,
    classify,
)

SAMPLES = [sql for sql, _ in ROUTES]


@pytest.mark.parametrize("sql", SAMPLES)
def test_cached_answers_equal_uncached(sql: str) -> None:
    """First and second call both equal a fresh classify."""
    classifier = Classifier()
    expected = classify(sql)
    assert classifier.classify(sql) == expected
    assert classifier.classify(sql) == expected


def test_a_cached_text_returns_the_same_object() -> None:
    """With nothing session-specific to resolve, the cached value itself comes back."""
    classifier = Classifier()
    first = classifier.classify("SELECT * FROM t WHERE id = 1")
    assert classifier.classify("SELECT * FROM t WHERE id = 1") is first


def test_lru_evicts_the_least_recently_used() -> None:
    """Entries beyond maxsize go, oldest use first."""
    classifier = Classifier(maxsize=2)
    classifier.classify("SHOW a")
    classifier.classify("SHOW b")
    classifier.classify("SHOW a")  # a is now the most recent
    classifier.classify("SHOW c")
    assert len(classifier) == 2
    assert "SHOW a" in classifier._entries and "SHOW b" not in classifier._entries
    classifier.clear()
    assert len(classifier) == 0


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        Classifier(maxsize=0)


def test_parse_errors_raise_and_are_not_cached() -> None:
    """The pooler forwards such text to the primary; nothing to remember."""
    classifier = Classifier()
    with pytest.raises(ParseError):
        classifier.classify("SELEC 1")
    assert len(classifier) == 0


class TestConstantFreeKey:
    """Texts that differ only in constants share one parse (pgbench -S)."""

    @pytest.mark.parametrize(
        ("first", "second"),
        [
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
             "SELECT abalance FROM pgbench_accounts WHERE aid = 1234567;"),
            ("  /* a */ SELECT * FROM t WHERE v = 'x' ; -- z\n",
             "  /* a */ SELECT * FROM t WHERE v = 'a longer string' ; -- z\n"),
            ("SELECT * FROM t WHERE v = 'é' -- trailing",
             "SELECT * FROM t WHERE v = 'ab' -- trailing"),
            ("SELECT 1; SELECT * FROM t WHERE id = 5",
             "SELECT 22; SELECT * FROM t WHERE id = 777"),
            ("UPDATE t SET v = 1 WHERE id = 2", "UPDATE t SET v = 30 WHERE id = 40"),
        ],
    )
    def test_reuse_gives_the_full_answer_with_this_texts_offsets(
        self, first: str, second: str
    ) -> None:
        classifier = Classifier()
        classifier.classify(first)
        size = len(classifier)
        result = classifier.classify(second)
        expected = classify(second)
        assert result == expected
        assert result.fingerprint == expected.fingerprint
        assert result.constant_free_key == expected.constant_free_key
        # served by the key, and not cached under its own text
        assert len(classifier) == size

    def test_without_offsets_reuse_gives_the_cached_answer_as_it_is(self) -> None:
        classifier = Classifier()
        first = classifier.classify("SELECT v FROM t WHERE id = 1")
        second = classifier.classify("SELECT v FROM t WHERE id = 123456", offsets=False)
        assert second is first
        expected = classify("SELECT v FROM t WHERE id = 123456")
        assert (second.route, second.reads_tables, second.session_effects) == (
            expected.route,
            expected.reads_tables,
            expected.session_effects,
        )
        # set_config's is_local is a constant that matters: never reused by key.
        local = classifier.classify("SELECT set_config('a.b', 'x', true)", offsets=False)
        kept = classifier.classify("SELECT set_config('a.b', 'x', false)", offsets=False)
        assert not local.session_effects and kept.session_effects

    def test_a_time_constant_is_not_given_a_cacheable_answer(self) -> None:
        """'now' as a date is time-dependent: never reuse a cacheable classification."""
        classifier = Classifier()
        assert classifier.classify("SELECT * FROM t WHERE d > '2020-01-01'").cacheable
        result = classifier.classify("SELECT * FROM t WHERE d > 'now'")
        assert not result.cacheable
        assert result == classify("SELECT * FROM t WHERE d > 'now'")

    @pytest.mark.parametrize(
        "spelled",
        ["E'\\x6eow'", "U&'no\\0077'", "U&'!006eow' UESCAPE '!'", "$$now$$", "$q$ Today $q$",
         "' yesterday'"],
    )
    def test_a_time_constant_spelled_otherwise_is_not_either(self, spelled: str) -> None:
        """Escapes and quoting the parser decodes: the answer is this text's own."""
        classifier = Classifier()
        first = classifier.classify("SELECT * FROM t WHERE d > '2020-01-01'", offsets=False)
        assert first.cacheable
        sql = f"SELECT * FROM t WHERE d > {spelled}"
        expected = classify(sql)
        assert not expected.cacheable
        assert classifier.classify(sql, offsets=False) == expected
        assert classifier.classify(sql) == expected

    @pytest.mark.parametrize(
        "sql",
        ["SELECT * FROM t WHERE d > '2021-02-03'", "SELECT * FROM t WHERE d > $1",
         "SELECT * FROM t WHERE d > E'2021-02-03'", "SELECT * FROM t WHERE d > U&'2021'"],
    )
    def test_what_the_key_serves_is_the_texts_own_answer(self, sql: str) -> None:
        classifier = Classifier()
        classifier.classify("SELECT * FROM t WHERE d > '2020-01-01'")
        assert classifier.classify(sql) == classify(sql)

    def test_a_time_word_in_a_name_still_reuses(self) -> None:
        """known_users holds "now", but in a name: the key still serves."""
        classifier = Classifier()
        classifier.classify("SELECT * FROM known_users WHERE id = 1")
        size = len(classifier)
        result = classifier.classify("SELECT * FROM known_users WHERE id = 2")
        assert result.cacheable and len(classifier) == size

    def test_utility_statements_are_never_merged(self) -> None:
        """pglast's normalize makes SET ROLE a and SET ROLE b alike: no key for them."""
        classifier = Classifier()
        classifier.classify("SET transaction_read_only = on")
        assert classifier.classify("SET transaction_read_only = off").route is Route.WRITE
        classifier.classify("SELECT set_config('search_path', 'a', false)")
        result = classifier.classify("SELECT set_config('transaction_read_only', 'off', false)")
        assert result.route is Route.WRITE
        classifier.classify("SELECT current_setting('work_mem')")
        result = classifier.classify("SELECT current_setting('in_hot_standby')")
        assert result.route is Route.WRITE

    @settings(max_examples=60, deadline=None)
    @given(
        first=st.integers(min_value=0, max_value=10**12),
        second=st.integers(min_value=0, max_value=10**12),
        text=st.text(alphabet="abcé€ ", max_size=8),
    )
    def test_any_constants(self, first: int, second: int, text: str) -> None:
        classifier = Classifier()
        literal = text.replace("'", "''")
        template = "SELECT * FROM t WHERE id = {} AND v = '{}' LIMIT 1"
        classifier.classify(template.format(first, literal))
        other = template.format(second, literal[::-1])
        assert classifier.classify(other) == classify(other)


class TestSessionResolution:
    """The catalog, prepared statements and cursors are resolved per call, never cached."""

    temp_t = StaticCatalog(relations={"t": Persistence.TEMPORARY})

    def test_catalog_per_call(self) -> None:
        classifier = Classifier()
        sql = "SELECT * FROM t WHERE id = 1"
        assert classifier.classify(sql).route is Route.READ
        assert classifier.classify(sql, catalog=self.temp_t).route is Route.WRITE
        assert classifier.classify(sql).route is Route.READ
        assert classifier.classify(sql, catalog=StaticCatalog()).route is Route.READ

    def test_catalog_that_changes_nothing_returns_the_cached_value(self) -> None:
        classifier = Classifier()
        sql = "SELECT * FROM u WHERE id = 1"
        cached = classifier.classify(sql)
        assert classifier.classify(sql, catalog=self.temp_t) is cached

    def test_prepared_per_call(self) -> None:
        classifier = Classifier()
        read = classify("PREPARE q AS SELECT 1")
        write = classify("PREPARE q AS DELETE FROM t")
        assert classifier.classify("EXECUTE q", prepared={"q": read}).route is Route.READ
        assert classifier.classify("EXECUTE q", prepared={"q": write}).route is Route.WRITE
        assert classifier.classify("EXECUTE q").route is Route.WRITE

    def test_cursors_per_call(self) -> None:
        classifier = Classifier()
        cursor = classify("DECLARE c CURSOR FOR SELECT * FROM t")
        assert classifier.classify("FETCH c", cursors={"c": cursor}).route is Route.READ
        assert classifier.classify("FETCH c").route is Route.WRITE

    def test_body_resolution_with_a_catalog(self) -> None:
        classifier = Classifier()
        sql = "DECLARE c CURSOR FOR SELECT * FROM t"
        assert classifier.classify(sql).route is Route.READ
        assert classifier.classify(sql, catalog=self.temp_t).route is Route.WRITE


class _CountingCatalog(StaticCatalog):
    """A StaticCatalog that counts the persistence questions it is asked."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.asked = 0

    def relation_persistence(self, schema: str | None, name: str) -> Persistence | None:
        self.asked += 1
        return super().relation_persistence(schema, name)


@pytest.mark.parametrize("snapshots", [False, True])
def test_snapshot_catalogs_are_asked_once_per_text_and_shape(snapshots: bool) -> None:
    """With snapshot_catalogs a catalog is asked about a text (or a text of the same
    shape) once; another catalog object is asked again and its answer counts. Without,
    every call asks."""
    classifier = Classifier(snapshot_catalogs=snapshots)
    plain = _CountingCatalog()
    for aid in range(5):
        sql = f"SELECT abalance FROM accounts WHERE aid = {aid}"
        assert classifier.classify(sql, plain, offsets=False).route is Route.READ
    assert plain.asked == (1 if snapshots else 5)
    unlogged = _CountingCatalog(relations={"accounts": Persistence.UNLOGGED})
    for aid in range(3):
        sql = f"SELECT abalance FROM accounts WHERE aid = {aid}"
        assert classifier.classify(sql, unlogged, offsets=False).route is Route.WRITE
    assert unlogged.asked >= 1
    sql = "SELECT abalance FROM accounts WHERE aid = 9"
    assert classifier.classify(sql, plain, offsets=False).route is Route.READ
    assert classifier.classify(sql, plain, offsets=False) == classify(sql, plain)
