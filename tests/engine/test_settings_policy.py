"""Settings carried across servers, sans-IO: what a text sets, what committed by the
server's ReadyForQuery marks, and the statements that align a server."""

from __future__ import annotations

import pytest

from parser_api import Classification, classify
from pooler.engine.settings import (
    BEGIN,
    COMMIT,
    RESET,
    RESET_ALL,
    SET,
    ClientSettings,
    Untracked,
    alignment,
    operations,
)


def _classify(sql: str) -> Classification | None:
    return classify(sql)


def _ops(sql: str) -> list[tuple[int, str, str]]:
    return operations(sql, classify(sql), _classify)


def test_what_a_text_sets() -> None:
    assert _ops("SET work_mem = '4MB'") == [(SET, "work_mem", "SET work_mem = '4MB'")]
    assert _ops("reset work_mem;") == [(RESET, "work_mem", "")]
    assert _ops("SELECT set_config('a.b', 'it''s', false)") == [
        (SET, "a.b", "SELECT pg_catalog.set_config('a.b', 'it''s', false)")
    ]
    assert _ops("BEGIN; SET a.b = 1; COMMIT") == [
        (BEGIN, "", ""),
        (SET, "a.b", "SET a.b = 1"),
        (COMMIT, "", ""),
    ]
    assert _ops("DISCARD ALL") == [(RESET_ALL, "", "")]
    # Reported parameters are followed through ParameterStatus; SET ROLE pins.
    assert _ops("SET TimeZone = 'UTC'") == []
    assert _ops("SET ROLE app") == []
    assert _ops("SET LOCAL work_mem = '1MB'") == []
    with pytest.raises(Untracked):
        _ops("SELECT set_config('a.b', md5('x'), false)")


def _settle(requests: list[tuple[str, bytes, bool]], start: bytes = b"I") -> ClientSettings:
    """Record each text as one request and settle it against marks made of the status
    after it and whether it failed; returns the settings (pending False when the marks
    could not decide)."""
    settings = ClientSettings()
    marks = [(0, start, 0, 0)]
    errors = 0
    for number, (sql, status, failed) in enumerate(requests, start=1):
        found = classify(sql)
        ops = operations(sql, found, _classify)
        if ops:
            settings.record(number, ops)
        errors += failed
        marks.append((number, status, errors, 0))
    settings.committed["_decided"] = str(settings.settle(marks))
    return settings


def _committed(settings: ClientSettings) -> dict[str, str]:
    return {k: v for k, v in settings.committed.items() if k != "_decided"}


def test_only_what_commits_is_kept() -> None:
    s = _settle([("SET a.b = 1", b"I", False)])
    assert _committed(s) == {"a.b": "SET a.b = 1"}
    s = _settle([("SET a.b = 1; SELECT 1/0", b"I", True)])
    assert _committed(s) == {} and s.committed["_decided"] == "True"
    s = _settle([("BEGIN", b"T", False), ("SET a.b = 1", b"T", False), ("ROLLBACK", b"I", False)])
    assert _committed(s) == {}
    s = _settle([("SET a.b = 1", b"T", False), ("COMMIT", b"I", False)], start=b"T")
    assert _committed(s) == {"a.b": "SET a.b = 1"}
    # An error in the transaction: its COMMIT rolls back.
    s = _settle(
        [("SET a.b = 1", b"T", False), ("SELECT 1/0", b"E", True), ("COMMIT", b"I", False)],
        start=b"T",
    )
    assert _committed(s) == {} and s.committed["_decided"] == "True"
    s = _settle([("BEGIN; SET a.b = 2; ROLLBACK", b"I", False)])
    assert _committed(s) == {}
    s = _settle([("SET a.b = 3", b"T", False), ("COMMIT AND CHAIN", b"T", False)], start=b"T")
    # Still in the chained transaction: not decided until it ends.
    assert s.committed["_decided"] == "False"


def test_what_the_marks_cannot_decide_is_left_to_the_server() -> None:
    s = _settle(
        [
            ("SAVEPOINT s", b"T", False),
            ("SET a.b = 1", b"T", False),
            ("ROLLBACK TO SAVEPOINT s", b"T", False),
            ("COMMIT", b"I", False),
        ],
        start=b"T",
    )
    assert s.committed["_decided"] == "False"
    # A failure in a request that also commits: which statement failed decides.
    s = _settle([("BEGIN; SET a.b = 1; COMMIT; SELECT 1/0", b"I", True)])
    assert s.committed["_decided"] == "False"


def test_alignment_is_only_the_difference() -> None:
    want = {"a.b": "SET a.b = 1", "work_mem": "SET work_mem = '8MB'"}
    have = {"work_mem": "SET work_mem = '8MB'", "search_path": "SET search_path TO x"}
    reported = {"TimeZone": "UTC", "in_hot_standby": "off", "application_name": "a"}
    server = {"TimeZone": "Asia/Tokyo", "in_hot_standby": "on", "application_name": "a"}
    assert alignment(want, have, reported, server) == (
        "RESET \"search_path\"; SET a.b = 1; SELECT pg_catalog.set_config('TimeZone', 'UTC', false)"
    )
    assert alignment(want, dict(want), reported, dict(reported)) == ""
    # Back to the value of the login: RESET, as the client's own session has it (a
    # setting the server's last client made by statement is RESET once).
    login = {"TimeZone": "UTC", "in_hot_standby": "off", "application_name": "a"}
    assert alignment({}, {}, reported, server, login) == 'RESET "timezone"'
    assert alignment({}, {"timezone": "SET TimeZone = 'Asia/Tokyo'"}, reported, server, login) == (
        'RESET "timezone"'
    )
    # One the client SET to the login's value itself stays set, as in its session.
    mine = {"timezone": "SET TimeZone = 'UTC'"}
    assert alignment(mine, dict(mine), reported, server, login) == (
        "SELECT pg_catalog.set_config('TimeZone', 'UTC', false)"
    )


def test_a_value_a_standby_refuses_is_marked_until_reset() -> None:
    s = _settle([("SET default_transaction_isolation = 'serializable'", b"I", False)])
    assert s.unsafe == {"default_transaction_isolation"}
    s = _settle(
        [
            ("SET default_transaction_isolation = 'serializable'", b"I", False),
            ("SET default_transaction_isolation = 'read committed'", b"I", False),
        ]
    )
    assert not s.unsafe
