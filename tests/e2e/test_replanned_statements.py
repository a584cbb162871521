"""A prepared statement whose result type a DDL changed, through transaction pooling.

On PostgreSQL a statement keeps the result type it had when it was parsed: once a DDL
changes it, every Bind (and Describe) of it fails with 0A000 "cached plan must not change
result type" until the client closes it and parses it again, and drivers recover from
that error by preparing again (asyncpg transparently, outside a transaction). The
pooler parses a client's statements again on each server that lacks them: there the
text would get the new result type and run, returning rows the client never described.

Each case runs once directly on the primary and once through a pooler with two servers,
where the client's statement lives on one server and a second client holds that server
while the first goes on, so that the statement must be parsed again on a fresh one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from conftest import PoolerProcess, StartPooler
from helpers_clients import app_backend_pids, direct_dsn, scratch_table
from wire import bind, comparable, connect, execute, message, parse, sync

from pooler.localcluster import LocalCluster


@pytest.fixture
def two_servers(start_pooler: StartPooler) -> PoolerProcess:
    return start_pooler(
        pool={"mode": "transaction", "size": 2, "checkout_timeout": 2},
        load_balance={"enabled": False},
    )


@contextmanager
def _holding_the_only_server(cluster: LocalCluster, pooler: PoolerProcess | None) -> Iterator[None]:
    """Through ``pooler``: another client holds, in a transaction, the one server the
    pooler has opened so far, so that the next request of anyone else gets a fresh one.
    Directly (None): nothing."""
    if pooler is None:
        yield
        return
    before = app_backend_pids(cluster)
    assert len(before) == 1, before
    with psycopg.connect(pooler.dsn(), autocommit=True) as holder:
        holder.execute("BEGIN")
        row = holder.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None and row[0] in before
        yield
        holder.execute("COMMIT")


def _alter(cluster: LocalCluster, sql: str) -> None:
    with psycopg.connect(direct_dsn(cluster), autocommit=True) as conn:
        conn.execute(sql)


def describe_statement(name: str) -> bytes:
    return message("D", b"S" + name.encode() + b"\0")


def close_statement(name: str) -> bytes:
    return message("C", b"S" + name.encode() + b"\0")


@contextmanager
def _asking(
    cluster: LocalCluster, pooler: PoolerProcess | None, seen: list[list[Any]]
) -> Iterator[Callable[[bytes], None]]:
    """A raw connection, to the primary or through ``pooler``: a function that sends a
    request and notes its answers, up to ReadyForQuery, in ``seen``."""
    primary = cluster.primary
    address = (pooler.host, pooler.port) if pooler is not None else (primary.host, primary.port)
    with connect(address) as wire:

        def ask(data: bytes) -> None:
            wire.send(data)
            seen.append([comparable(msg) for msg in wire.read_until("Z")])

        yield ask


def _raw_conversation(
    cluster: LocalCluster, pooler: PoolerProcess | None, table: str
) -> list[list[Any]]:
    seen: list[list[Any]] = []
    with _asking(cluster, pooler, seen) as ask:
        # As asyncpg prepares: Parse, Describe, Sync; another statement, not described.
        ask(parse("s1", f"SELECT * FROM {table}") + describe_statement("s1") + sync())
        ask(parse("s2", f"SELECT a FROM {table}") + sync())
        ask(parse("void", f"UPDATE {table} SET a = a WHERE false") + sync())
        with _holding_the_only_server(cluster, pooler):
            _alter(cluster, f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 7")
            # The result type changed: the Bind fails, the rest up to Sync is skipped.
            ask(bind("", "s1") + execute() + sync())
            # A statement whose result type did not change runs, in the same batch as
            # the one that fails after it.
            ask(bind("", "s2") + execute() + bind("", "s1") + execute() + sync())
            # Inside a transaction block the failure fails the block.
            ask(message("Q", b"BEGIN\0"))
            ask(bind("", "s1") + execute() + sync())
            ask(message("Q", b"ROLLBACK\0"))
            # Later Binds and Describes fail the same way; a statement without rows runs.
            ask(describe_statement("s1") + sync())
            ask(bind("", "void") + execute() + bind("", "s1") + execute() + sync())
            # The name is still in use: parsing it again without a Close fails (42P05).
            ask(parse("s1", f"SELECT * FROM {table}") + sync())
            # A statement parsed after the change has the new result type.
            ask(parse("s3", f"SELECT * FROM {table}") + bind("", "s3") + execute() + sync())
            # Closed and parsed again, the name works.
            ask(close_statement("s1") + sync())
            ask(parse("s1", f"SELECT * FROM {table}") + bind("", "s1") + execute() + sync())
        _alter(cluster, f"ALTER TABLE {table} DROP COLUMN b")
    return seen


Conversation = Callable[[LocalCluster, PoolerProcess | None, str], list[Any]]


def _direct_and_pooled(
    cluster: LocalCluster, pooler: PoolerProcess, conversation: Conversation
) -> tuple[list[Any], list[Any]]:
    """``conversation`` over a fresh table with one row, directly and through ``pooler``."""
    with scratch_table(cluster, "a int") as table:
        _alter(cluster, f"INSERT INTO {table} VALUES (1)")
        return conversation(cluster, None, table), conversation(cluster, pooler, table)


def test_a_statement_whose_result_type_changed_fails_as_on_postgresql(
    cluster: LocalCluster, two_servers: PoolerProcess
) -> None:
    direct, pooled = _direct_and_pooled(cluster, two_servers, _raw_conversation)
    assert direct[3][0][:4] == ("E", ("S", "ERROR"), ("V", "ERROR"), ("C", "0A000"))
    for i, (want, got) in enumerate(zip(direct, pooled, strict=True)):
        assert got == want, f"request {i}"


def _asyncpg_conversation(
    cluster: LocalCluster, pooler: PoolerProcess | None, table: str
) -> list[Any]:
    dsn = pooler.dsn() if pooler is not None else direct_dsn(cluster)
    kwargs: dict[str, Any] = dict(item.split("=", 1) for item in dsn.split())
    kwargs["database"] = kwargs.pop("dbname")

    async def run() -> list[Any]:
        conn = await asyncpg.connect(**kwargs)
        holder = await asyncpg.connect(**kwargs)
        seen: list[Any] = []

        async def attempt(call: Callable[[], Any]) -> None:
            try:
                rows = await call()
                seen.append([dict(row) for row in rows])
            except asyncpg.PostgresError as exc:
                seen.append((type(exc).__name__, exc.sqlstate, str(exc)))

        try:
            await attempt(lambda: conn.fetch(f"SELECT * FROM {table}"))
            if pooler is not None:
                # As _holding_the_only_server, with a client of the same startup
                # parameters (the pooler's servers are kept apart by them).
                before = app_backend_pids(cluster)
                assert len(before) == 1, before
                holding = holder.transaction()
                await holding.start()
                assert await holder.fetchval("SELECT pg_backend_pid()") in before
            _alter(cluster, f"ALTER TABLE {table} ADD COLUMN b int DEFAULT 7")
            # Outside a transaction asyncpg prepares again and answers.
            await attempt(lambda: conn.fetch(f"SELECT * FROM {table}"))
            _alter(cluster, f"ALTER TABLE {table} ADD COLUMN c text DEFAULT 'c'")
            # Inside one it raises.
            async with conn.transaction():
                await attempt(lambda: conn.fetch(f"SELECT * FROM {table}"))
                await attempt(lambda: conn.fetch("SELECT 1 AS one"))
            await attempt(lambda: conn.fetch(f"SELECT * FROM {table}"))
        finally:
            await conn.close()
            await holder.close()
        return seen

    try:
        return asyncio.run(run())
    finally:
        _alter(cluster, f"ALTER TABLE {table} DROP COLUMN IF EXISTS b, DROP COLUMN IF EXISTS c")


def test_asyncpg_recovers_as_on_postgresql(
    cluster: LocalCluster, two_servers: PoolerProcess
) -> None:
    direct, pooled = _direct_and_pooled(cluster, two_servers, _asyncpg_conversation)
    assert direct[2][0] == "InvalidCachedStatementError"
    assert pooled == direct


def _bind_one(statement: str, value: bytes) -> bytes:
    """A Bind of the unnamed portal to ``statement`` with one text parameter."""
    body = b"\0" + statement.encode() + b"\0\0\0\0\x01" + len(value).to_bytes(4, "big") + value
    return message("B", body + b"\0\0")


def _gone_conversation(
    cluster: LocalCluster, pooler: PoolerProcess | None, table: str
) -> list[list[Any]]:
    seen: list[list[Any]] = []
    with _asking(cluster, pooler, seen) as ask:
        ask(
            parse("s1", f"SELECT a FROM {table} WHERE a > $1", [23])
            + describe_statement("s1")
            + sync()
        )
        ask(parse("s2", f"SELECT a FROM {table}") + sync())
        ask(message("Q", f"SELECT 1; PREPARE q AS SELECT a FROM {table}\0".encode()))
        with _holding_the_only_server(cluster, pooler):
            _alter(cluster, f"ALTER TABLE {table} RENAME TO {table}_gone")
            try:
                # Parsed again, the statements' text names no table: each use fails as
                # PostgreSQL's own re-analysis of it does.
                ask(_bind_one("s1", b"0") + execute() + sync())
                ask(describe_statement("s1") + sync())
                ask(bind("", "s2") + execute() + sync())
                ask(message("Q", b"EXECUTE q\0"))
                ask(message("Q", b"BEGIN\0"))
                ask(bind("", "s2") + execute() + sync())
                ask(message("Q", b"ROLLBACK\0"))
            finally:
                _alter(cluster, f"ALTER TABLE {table}_gone RENAME TO {table}")
            # The table is back: they run again (a Describe too, sent with no server).
            ask(describe_statement("s1") + sync())
            ask(_bind_one("s1", b"0") + execute() + sync())
            ask(message("Q", b"EXECUTE q\0"))
    return seen


def test_a_statement_whose_table_is_gone_fails_as_on_postgresql(
    cluster: LocalCluster, two_servers: PoolerProcess
) -> None:
    direct, pooled = _direct_and_pooled(cluster, two_servers, _gone_conversation)
    assert direct[3][0][:4] == ("E", ("S", "ERROR"), ("V", "ERROR"), ("C", "42P01"))
    for i, (want, got) in enumerate(zip(direct, pooled, strict=True)):
        assert got == want, f"request {i}"
