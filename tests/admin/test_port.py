"""The admin port without sockets: which messages it claims, how it answers them, and
the config key it adds."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from test_config import problems, with_minimal

from pooler.admin.port import AdminPort
from pooler.admin.reload import merged
from pooler.admin.state import Context
from pooler.admin.words import may_be_admin
from pooler.config import parse_config
from pooler.engine.actions import NeedServer, Reply
from pooler.engine.client import ClientEngine
from pooler.protocol.codec import frame, frontend_limits


def _port(console: bool = False) -> AdminPort:
    # The commands below fail before they read the app: no app is needed.
    return AdminPort(cast(Context, None), console)


def _types(answer: bytes) -> str:
    out, pos = "", 0
    while pos < len(answer):
        out += chr(answer[pos])
        pos += 1 + int.from_bytes(answer[pos + 1 : pos + 5], "big")
    return out


def _fields(answer: bytes) -> dict[str, str]:
    body = answer[5:-1]
    return {part[:1].decode(): part[1:].decode() for part in body.split(b"\0") if part}


@pytest.mark.parametrize(
    ("text", "maybe"),
    [
        (b"SHOW POOL_NODES\0", True),
        (b"show pool_nodes\0", True),
        (b"  /* x */ SHOW pool_version\0", True),
        (b"SELECT 1\0", False),
        (b"SET x = 1\0", False),
        (b"explain route SELECT 1\0", True),
        (b"EXPLAIN SELECT 1\0", True),
        (b"EXECUTE s\0", False),
        (b"pgpool show all\0", True),
        (b" PGPOOL SET x = 1\0", True),
        (b"/* pooler: standby */ SELECT 1\0", False),
        (b"", False),
    ],
)
def test_pre_check(text: bytes, maybe: bool) -> None:
    assert may_be_admin(text) is maybe


@pytest.mark.parametrize(
    ("t", "body", "before", "claimed"),
    [
        (ord("Q"), b"SHOW POOL_NODES\0", -1, True),
        (ord("Q"), b"SHOW POOL_NODES;\0", ord("S"), True),
        (ord("Q"), b"SHOW pool_nodes; SELECT 1\0", -1, False),
        (ord("Q"), b"SHOW search_path\0", -1, False),
        (ord("Q"), b"SHOW POOL_NODES\0", ord("E"), False),  # inside a batch
        (ord("Q"), b"SHOW 'POOL_NODES'\0", -1, False),
        (ord("Q"), b"-- SHOW POOL_NODES\nSELECT 1\0", -1, False),
        (ord("P"), b"\0SHOW POOL_VERSION\0\0\0", -1, True),
        (ord("P"), b"\0SELECT 1\0\0\0", -1, False),
        (ord("B"), b"\0s1\0\0\0\0\0\0\0", -1, False),
    ],
)
def test_claims_only_admin_units(t: int, body: bytes, before: int, claimed: bool) -> None:
    assert _port().claims(t, body, before) is claimed


def test_console_claims_everything() -> None:
    assert _port(console=True).claims(ord("Q"), b"SELECT 1\0", ord("E"))


@pytest.mark.parametrize(
    ("sql", "sqlstate", "position"),
    [
        ("PAUSE a b", "42601", "9"),
        ("DETACH NODE", "42601", "12"),
        ("DETACH NODE x", "42601", "13"),
        ("KILL", "42601", "5"),
        ("SELECT 1", "42601", "1"),
        ("SHOW 'x", "42601", None),
    ],
)
def test_console_errors_have_postgresql_shape(
    sql: str, sqlstate: str, position: str | None
) -> None:
    data = bytearray(frame(ord("Q"), sql.encode() + b"\0") + b"rest")
    answer, rest = _port(console=True).answer(data, b"I")
    assert rest == b"rest"
    assert _types(answer) == "EZ"
    fields = _fields(answer[:-6])
    assert (fields["S"], fields["V"], fields["C"]) == ("ERROR", "ERROR", sqlstate)
    assert fields.get("P") == position


def test_empty_query_and_aborted_transaction() -> None:
    port = _port(console=True)
    answer, _ = port.answer(bytearray(frame(ord("Q"), b" ;\0")), b"I")
    assert _types(answer) == "IZ"
    answer, _ = port.answer(bytearray(frame(ord("Q"), b"SHOW HELP\0")), b"E")
    assert _types(answer) == "EZ" and b"C25P02" in answer


def test_a_batch_waits_for_its_sync_and_skips_after_an_error() -> None:
    port = _port(console=True)
    data = bytearray(
        frame(ord("P"), b"\0DETACH NODE\0\0\0")
        + frame(ord("B"), b"\0\0\0\0\0\0\0\0")
        + frame(ord("E"), b"\0\0\0\0\0")
    )
    answer, rest = port.answer(data, b"I")
    assert (_types(answer), rest, data) == ("E", None, bytearray())
    data += frame(ord("S"), b"")[:3]
    assert port.answer(data, b"I") == (b"", None)
    data += frame(ord("S"), b"")[3:] + b"X"
    answer, rest = port.answer(data, b"T")
    assert (_types(answer), answer[-1:], rest) == ("Z", b"T", b"X")


def test_describe_of_a_missing_statement_is_26000() -> None:
    answer, rest = _port(console=True).answer(
        bytearray(frame(ord("D"), b"Snone\0") + frame(ord("S"), b"")), b"I"
    )
    assert (_types(answer), rest) == ("EZ", b"")
    assert b"C26000" in answer


def test_admin_and_metrics_keys_are_validated() -> None:
    assert parse_config(with_minimal(admin={"restrict_show": True})).admin.restrict_show
    assert parse_config(with_minimal()).metrics.port == 0
    assert parse_config(with_minimal(admin={"stats_period": "2s"})).admin.stats_period == 2
    found: Any = problems(with_minimal(admin={"restrict_show": "maybe"}, metrics={"port": -1}))
    assert any(problem.startswith("admin.restrict_show: ") for problem in found)

    assert any(problem.startswith("metrics.port: ") for problem in found)
    found = problems(with_minimal(admin={"stats_period": 0}))
    assert any(problem.startswith("admin.stats_period: ") for problem in found)


def test_reload_merges_live_keys_and_names_the_others() -> None:
    old = parse_config(with_minimal(backends=[{"host": "a", "weight": 1}]))
    new = parse_config(
        with_minimal(
            backends=[{"host": "a", "weight": 3}],
            users={"app": "app", "b": "b"},
            pool={"size": 3, "checkout_timeout": 2},
            admin={"restrict_show": True},
        )
    )
    running, waiting = merged(old, new)
    assert waiting == ["pool.size"]
    # Backends are matched by address afterwards (plan_nodes, test_reload_live.py).
    assert running.backends == old.backends
    assert set(running.users) == {"app", "b"}
    assert (running.pool.size, running.pool.checkout_timeout) == (old.pool.size, 2)
    assert running.admin.restrict_show


def test_an_admin_query_cut_across_reads_is_answered_and_not_owed() -> None:
    config = SimpleNamespace(admin=SimpleNamespace(restrict_show=False))
    ctx = cast(Context, SimpleNamespace(app=SimpleNamespace(config=config)))
    engine = ClientEngine(frontend_limits(1 << 20), admin=AdminPort(ctx, False))
    show = frame(ord("Q"), b"SHOW POOL_VERSION\0")
    assert engine.feed(show[:9]) == []
    assert engine.scanner.tracked == []
    out = engine.feed(show[9:] + frame(ord("Q"), b"SELECT 1\0"))
    assert isinstance(out, list) and len(out) == 2
    reply, need = out
    assert isinstance(reply, Reply) and _types(reply.data) == "TDCZ"
    assert isinstance(need, NeedServer)
    # Only the SELECT is owed by the server that takes it.
    assert engine.scanner.tracked == [ord("Q")]


def test_an_admin_batch_refuses_statements_for_the_server() -> None:
    port = _port()
    data = bytearray(
        frame(ord("P"), b"\0SHOW POOL_VERSION\0\0\0")
        + frame(ord("P"), b"s2\0SELECT 1\0\0\0")
        + frame(ord("B"), b"\0\0\0\0\0\0\0\0")
        + frame(ord("E"), b"\0\0\0\0\0")
        + frame(ord("S"), b"")
    )
    answer, rest = port.answer(data, b"I")
    assert (_types(answer), rest) == ("1EZ", b"")
    assert b"C0A000" in answer
