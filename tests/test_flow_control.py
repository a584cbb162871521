"""Memory bounds. Back-pressure: a client that stops reading makes the pooler stop reading
its server, and a server that stops reading makes the pooler stop reading its client;
memory stays bounded either way and everyone else is served meanwhile. And a connected
client that has not logged in yet costs a few kilobytes, so thousands cost little."""

from __future__ import annotations

import resource
import socket
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from wire import Wire

from pooler.protocol import messages as m

# 400 rows of 1 MB: far more than every socket buffer on the way together.
BIG_RESULT = "SELECT repeat('x', 1000000) FROM generate_series(1, 400)"


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_client_that_stops_reading_a_large_result_holds_no_memory(start_pooler: Any) -> None:
    pooler = start_pooler(forked=False)
    with psycopg.connect(pooler.dsn()) as healthy:
        before = _rss_mib(pooler.proc.pid)
        with Wire((pooler.host, pooler.port)) as slow:
            slow.login()
            slow.send(m.query(BIG_RESULT))
            time.sleep(3)  # the server produces as fast as it can; nobody reads
            grown = _rss_mib(pooler.proc.pid) - before
            assert healthy.execute("SELECT 1").fetchone() == (1,)
            # Once read, the whole answer arrives intact.
            answer = slow.read_until("Z")
        assert grown < 40, f"pooler RSS grew by {grown:.0f} MiB for an unread result"
        rows = [msg for msg in answer if msg.type == "D"]
        assert len(rows) == 400
        assert answer[-1].type == "Z"
        assert healthy.execute("SELECT 2").fetchone() == (2,)


def test_large_copy_in_streams_through_without_buffering(start_pooler: Any) -> None:
    pooler = start_pooler(forked=False)
    with psycopg.connect(pooler.dsn(), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE flow (line text)")
        before = _rss_mib(pooler.proc.pid)
        peak = before
        line = b"y" * 1000 + b"\n"
        with conn.cursor().copy("COPY flow FROM STDIN") as copy:
            for i in range(200_000):  # about 200 MB
                copy.write(line)
                if i % 20_000 == 0:
                    peak = max(peak, _rss_mib(pooler.proc.pid))
        count = conn.execute("SELECT count(*) FROM flow").fetchone()
    assert count == (200_000,)
    assert peak - before < 40, f"pooler RSS grew by {peak - before:.0f} MiB during COPY"


def test_thousands_of_idle_connections_cost_a_few_kilobytes_each(start_pooler: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Enough connections that per-connection memory dominates the measurement.
    count = min(2000, hard - 200)
    assert count >= 500, f"the open files limit ({hard}) is too low for this test"
    pooler = start_pooler(pool={"max_clients": 5000}, forked=False)
    before = _rss_mib(pooler.proc.pid)
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(socket.create_connection((pooler.host, pooler.port)))
        with psycopg.connect(pooler.dsn()) as healthy:
            assert healthy.execute("SELECT 1").fetchone() == (1,)
        time.sleep(1)
        per_client_kib = (_rss_mib(pooler.proc.pid) - before) * 1024 / count
    # DESIGN.md's budget: 10,000 idle clients in under 50 MB.
    assert per_client_kib < 5, f"{per_client_kib:.1f} KiB per idle connection"
