"""The pooler's own CPU per pgbench -S transaction, without sockets or PostgreSQL.

``bench/hot_path [--modes simple,extended,prepared] [--routing] [--profile] [--evict MB]``

A real ``Pooler`` (transaction pooling, three backends) with a client connection and
idle server connections whose transports only collect what is written to them: each
transaction is the client's request handed to ``ClientConnection.data_received`` and
the server's canned answer to ``ServerConnection.data_received``, so every line of the
pooler's Python path runs as it does in ``bench/pgbench_compare`` (classification with a
catalog, routing, checkout and return of a server), and the system calls, the event
loop and the other processes do not. The figure is the thread's CPU time per
transaction (median of nine batches, and the best one: the figure to compare when
other processes share the cores), stable where pgbench_compare's is not;
``--profile`` prints cProfile's view of the same loop instead. ``--evict MB`` touches
that much memory before each request and each answer, as pgbench and PostgreSQL do to
the caches between two of the pooler's wake-ups: under pgbench the pooler runs cold.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import pstats
import statistics
import time
from typing import Any, cast

from pooler.app import Pooler
from pooler.cluster.catalog import DatabaseCatalog
from pooler.config import parse_config
from pooler.engine.server import ServerEngine
from pooler.net.client import ClientConnection
from pooler.net.server import Mode, ServerConnection
from pooler.net.server_login import NodeAddress
from pooler.pool import PoolKey

_SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
_PARAMS = {
    "server_version": "15.0",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "in_hot_standby": "off",
    "integer_datetimes": "on",
    "standard_conforming_strings": "on",
}


class _Transport:
    """Collects nothing: what the pooler writes is dropped."""

    def write(self, data: bytes) -> None:
        pass

    def writelines(self, data: list[bytes]) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _frame(t: bytes, body: bytes) -> bytes:
    return t + (len(body) + 4).to_bytes(4, "big") + body


def _requests(mode: str) -> tuple[list[bytes], bytes]:
    """What pgbench -S sends each transaction (some of them, cycling over aids) and
    the server's answer."""
    column = b"abalance\0" + bytes(6) + b"\x00\x17\x00\x04" + b"\xff" * 4 + bytes(2)
    row = (
        _frame(b"T", b"\x00\x01" + column)
        + _frame(b"D", b"\x00\x01\x00\x00\x00\x01" + b"0")
        + _frame(b"C", b"SELECT 1\x00")
    )
    ready = _frame(b"Z", b"I")
    texts = [_SQL.format(aid) for aid in range(1, 100_001, 37)]
    if mode == "simple":
        return [_frame(b"Q", text.encode() + b"\0") for text in texts], row + ready
    bind_exec = _frame(b"D", b"P\0") + _frame(b"E", b"\0\0\0\0\0") + _frame(b"S", b"")
    if mode == "extended":
        sql = _SQL.format("$1").encode()
        out = []
        for aid in range(1, 100_001, 37):
            value = str(aid).encode()
            bind = b"\0\0\0\0\0\x01" + len(value).to_bytes(4, "big") + value + b"\0\0"
            out.append(_frame(b"P", b"\0" + sql + b"\0\0\0") + _frame(b"B", bind) + bind_exec)
        return out, _frame(b"1", b"") + _frame(b"2", b"") + row + ready
    # prepared: Parse once (the first request), then Bind/Execute by name.
    sql = _SQL.format("$1").encode()
    out = []
    for aid in range(1, 100_001, 37):
        value = str(aid).encode()
        bind = b"\0P0_1\0\0\0\0\x01" + len(value).to_bytes(4, "big") + value + b"\0\0"
        out.append(_frame(b"B", bind) + bind_exec)
    first = _frame(b"P", b"P0_1\0" + sql + b"\0\0\0") + _frame(b"S", b"")
    out.insert(0, first)
    return out, _frame(b"2", b"") + row + ready


def _config(routing: bool) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 1},
        "backends": [{"host": "127.0.0.1", "port": 2 + n} for n in range(3)],
        "users": {"bench": "bench"},
        "pool": {"mode": "transaction", "size": 4},
        "health_check": {"period": 0},
        "load_balance": {"enabled": routing},
        "log": {"level": "warning"},
    }


def _servers(app: Pooler, database: str, user: str) -> None:
    for node, backend in enumerate(app.config.backends):
        pool = app.pools.get(PoolKey(node, database, user))
        for _ in range(2):
            server = ServerConnection(
                NodeAddress(backend.host, backend.port, None), PoolKey(node, database, user), ()
            )
            server.transport = cast(asyncio.Transport, _Transport())
            server.engine = ServerEngine(dict(_PARAMS), b"I")
            server.pid = 1000 + node
            server.mode = Mode.IDLE
            pool.checkin(server)
        pool.reported[()] = tuple(_PARAMS.items())


def _client(app: Pooler, database: str, user: str) -> ClientConnection:
    client = ClientConnection(app)
    client.transport = cast(asyncio.Transport, _Transport())
    client.user = user
    client.database = database
    client.engine = app.client_engine(database, client)
    client._params = ()
    client._creds = None
    client.logged_in = True
    client.pid = 1
    return client


class _Evictor:
    """Touches every cache line of ``megabytes`` of memory, as the processes that run
    between two of the pooler's wake-ups do to the CPU's caches (pgbench, PostgreSQL)."""

    def __init__(self, megabytes: int) -> None:
        self._junk = bytearray(megabytes << 20)
        self._zeros = bytes(len(self._junk[::64]))

    def __call__(self) -> None:
        self._junk[::64] = self._zeros

    def cost(self, times: int) -> float:
        """CPU seconds ``times`` evictions take by themselves, measured now."""
        began = time.thread_time()
        for _ in range(times):
            self()
        return time.thread_time() - began


async def _measure(
    mode: str, routing: bool, count: int, profile: bool, evict: int = 0
) -> tuple[float, float]:
    app = Pooler(parse_config(_config(routing)))
    database = user = "bench"
    if app.catalogs is not None:
        # As read from a database with pgbench's tables (none unlogged, no views).
        app.catalogs._catalogs[database] = DatabaseCatalog()
    _servers(app, database, user)
    client = _client(app, database, user)
    requests, answer = _requests(mode)
    if mode == "prepared":
        client.data_received(requests.pop(0))
        _answer(client, answer[:5] + _frame(b"Z", b"I"))
    cycle = itertools.cycle(requests)

    evictor = _Evictor(evict)

    def run(n: int) -> None:
        for request in itertools.islice(cycle, n):
            if evict:
                evictor()
            client.data_received(request)
            if evict:
                evictor()
            _answer(client, answer)

    run(2000)
    if profile:
        profiler = cProfile.Profile()
        profiler.runcall(run, count)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0.0, 0.0
    batches = []
    for _ in range(9):
        began = time.thread_time()
        run(count // 9)
        spent = time.thread_time() - began
        if evict:
            # Measured beside each batch: the evictions' own cost drifts with the box.
            spent -= evictor.cost(2 * (count // 9))
        batches.append(spent / (count // 9) * 1e6)
    return statistics.median(batches), min(batches)


def _answer(client: ClientConnection, answer: bytes) -> None:
    server = client.server
    assert server is not None, "the request got no server"
    server.data_received(answer)
    assert client.server is None, "the answer did not give the server back"


def main() -> None:
    """Print microseconds of the pooler's CPU per transaction, per mode."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="simple,extended,prepared")
    parser.add_argument("--routing", action="store_true", help="load_balance.enabled")
    parser.add_argument("--count", type=int, default=90_000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--evict",
        type=int,
        default=0,
        metavar="MB",
        help="touch MB of memory before the request and before the answer (caches as "
        "other processes leave them); its own cost is subtracted",
    )
    args = parser.parse_args()
    count = args.count if not args.evict else min(args.count, 9_000)
    for mode in args.modes.split(","):
        median, best = asyncio.run(_measure(mode, args.routing, count, args.profile, args.evict))
        if not args.profile:
            routing = "on" if args.routing else "off"
            print(f"{mode:9} routing={routing}: {median:.1f} us/txn (best batch {best:.1f})")


if __name__ == "__main__":
    main()
