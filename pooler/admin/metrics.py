"""Prometheus metrics on ``metrics: {host, port}``, read from the pooler's state at each
scrape (prometheus_client's collector protocol), served on the event loop itself so that
no other thread reads state the loop changes.

Nothing is counted for the metrics alone: the families are what the pooler already
keeps (clients, server connections and their pools' counters: requests, transactions,
bytes, time held and waited; reads routed to each node, the monitor's view of each
node, pins, reads a standby refused, server errors by SQLSTATE class, the query
cache's counters).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from pooler.admin.state import clients, servers

if TYPE_CHECKING:
    from pooler.app import Pooler
    from pooler.cache.store import CacheStats

#: Seconds a scraper has to send its request.
_REQUEST_TIMEOUT = 5.0


#: Pool counters as metric families (``_total`` is added by prometheus_client).
_POOL_COUNTERS = {
    "requests": "Requests answered (Query, Sync, FunctionCall)",
    "transactions": "Transactions ended",
    "client_bytes_received": "Bytes from clients to servers",
    "client_bytes_sent": "Bytes from servers to clients",
    "server_held_seconds": "Seconds clients held a server",
    "server_wait_seconds": "Seconds clients waited for a server",
}
_POOL_FIELDS = {
    "requests": "queries",
    "transactions": "transactions",
    "client_bytes_received": "received",
    "client_bytes_sent": "sent",
    "server_held_seconds": "held_seconds",
    "server_wait_seconds": "wait_seconds",
}


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    text: str,
    label: str,
    counts: Counter[str],
) -> Metric:
    """A family of one sample per key of ``counts``, labelled ``label``."""
    family = kind(name, text, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


class PoolerCollector:
    """Reads the pooler's state into metric families at each scrape."""

    def __init__(self, app: Pooler) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        """The families, labelled by ``node``, ``pool`` (database/user) and ``reason``."""
        app = self.app
        logged_in = clients(app)
        yield GaugeMetricFamily("pooler_clients", "Client connections logged in", len(logged_in))
        by_state: Counter[tuple[str, str, str]] = Counter()
        for server, client in servers(app):
            key = server.pool_key
            state = "active" if client is not None else "idle"
            by_state[(str(key.node), f"{key.database}/{key.user}", state)] += 1
        family = GaugeMetricFamily(
            "pooler_servers", "Server connections by state", labels=["node", "pool", "state"]
        )
        for labels, count in sorted(by_state.items()):
            family.add_metric(list(labels), count)
        yield family
        opened = CounterMetricFamily(
            "pooler_server_connections_opened", "Server connections opened", labels=["node", "pool"]
        )
        reused = CounterMetricFamily(
            "pooler_server_checkouts_reused",
            "Server connections handed to a client without opening one",
            labels=["node", "pool"],
        )
        counted = {
            name: CounterMetricFamily(f"pooler_{name}", text, labels=["node", "pool"])
            for name, text in _POOL_COUNTERS.items()
        }
        for key, pool in sorted(app.pools.pools.items(), key=lambda item: str(item[0])):
            pool_labels = [str(key.node), f"{key.database}/{key.user}"]
            opened.add_metric(pool_labels, pool.stats.opened)
            reused.add_metric(pool_labels, pool.stats.reused)
            for name, counter in counted.items():
                counter.add_metric(pool_labels, getattr(pool.stats, _POOL_FIELDS[name]))
        yield opened
        yield reused
        yield from counted.values()
        yield _labelled(
            CounterMetricFamily,
            "pooler_server_errors",
            "ErrorResponses servers sent, by SQLSTATE class",
            "class",
            app.error_classes,
        )
        yield from self._nodes()
        pins: Counter[str] = Counter()
        for client in logged_in:
            pins.update(reason for reason, count in client.engine.session.pins.items() if count)
        yield _labelled(
            GaugeMetricFamily,
            "pooler_pinned_clients",
            "Clients pinned to their server",
            "reason",
            pins,
        )
        yield _labelled(
            CounterMetricFamily,
            "pooler_standby_refusals",
            "Reads a standby refused and the primary ran",
            "reason",
            app.refusals,
        )
        if app.cache is not None:
            yield from _cache(app.cache.stats)

    def _nodes(self) -> Iterator[Metric]:
        app = self.app
        reads = CounterMetricFamily("pooler_reads", "Reads routed to each node", labels=["node"])
        up = GaugeMetricFamily("pooler_node_up", "1 while the node takes queries", labels=["node"])
        lag_bytes = GaugeMetricFamily(
            "pooler_replication_lag_bytes", "WAL a standby has not replayed", labels=["node"]
        )
        lag_seconds = GaugeMetricFamily(
            "pooler_replication_lag_seconds",
            "Age of the last transaction a standby replayed, while it is behind",
            labels=["node"],
        )
        for state in app.cluster.view.nodes:
            node = [str(state.node)]
            reads.add_metric(node, app.balancer.reads[state.node])
            up.add_metric(node, int(state.up))
            lag_bytes.add_metric(node, state.lag_bytes)
            lag_seconds.add_metric(node, state.lag_seconds)
        yield from (reads, up, lag_bytes, lag_seconds)


#: The query cache's counters (``CacheStats`` fields) as counter families.
_CACHE_COUNTERS = {
    "hits": ("num_cache_hits", "Statements answered from the query cache"),
    "misses": ("num_selects", "Cacheable statements the query cache could not answer"),
    "stores": ("stores", "Answers stored in the query cache"),
    "refused": ("refused", "Answers not stored because a write moved a table read meanwhile"),
    "evictions": ("evictions", "Entries dropped to make room"),
    "invalidations": ("invalidations", "Entries dropped by writes"),
    "database_drops": ("whole_database_drops", "Drops of every entry of a database"),
}


def _cache(stats: CacheStats) -> Iterator[Metric]:
    """The query cache's families (none while the cache is off)."""
    for name, (field, text) in _CACHE_COUNTERS.items():
        yield CounterMetricFamily(f"pooler_cache_{name}", text, getattr(stats, field))
    yield GaugeMetricFamily("pooler_cache_entries", "Entries in the query cache", stats.entries)
    yield GaugeMetricFamily(
        "pooler_cache_bytes", "Bytes the query cache's entries take", stats.used_bytes
    )
    yield GaugeMetricFamily(
        "pooler_cache_max_bytes", "Bytes the query cache may take (max_size)", stats.max_bytes
    )


async def serve_metrics(app: Pooler, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` for ``GET /metrics``; raises OSError if it cannot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PoolerCollector(app))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT)
            words = request.split(b"\r\n", 1)[0].split()
            if len(words) >= 2 and words[0] == b"GET" and words[1].split(b"?")[0] == b"/metrics":
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(registry)
            else:
                status, kind, body = "404 Not Found", "text/plain", b"GET /metrics\n"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, host, port)
