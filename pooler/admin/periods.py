"""SHOW STATS' totals per database, and PgBouncer's averages over the last stats period.

The data path only adds to each pool's ``PoolStats`` (plain attribute arithmetic, no
lock, nothing allocated but the numbers). Every ``admin.stats_period`` seconds the app
takes the totals (``database_totals``) and ``Periods.tick`` keeps the averages of the
period that just ended, as PgBouncer 1.18 computes them (``stats.c``): counts and
bytes per second; query and transaction times per query and per transaction; wait
time per second (microseconds of waiting per second of the period). Until a period
has ended they are 0, as in PgBouncer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from pooler.pool import ServerPool

_US = 1e6


@dataclass(slots=True)
class Totals:
    """One database's counters since the start (times in microseconds)."""

    xact_count: float = 0.0
    query_count: float = 0.0
    received: float = 0.0
    sent: float = 0.0
    xact_time: float = 0.0
    query_time: float = 0.0
    wait_time: float = 0.0

    def add(self, pool: ServerPool) -> None:
        """Add one pool's counters."""
        s = pool.stats
        self.xact_count += s.transactions
        self.query_count += s.queries
        self.received += s.received
        self.sent += s.sent
        self.xact_time += s.xact_seconds * _US
        self.query_time += s.query_seconds * _US
        self.wait_time += s.wait_seconds * _US


@dataclass(frozen=True, slots=True)
class Averages:
    """PgBouncer's ``avg_*`` columns of one database for one period."""

    xact_count: int = 0
    query_count: int = 0
    recv: int = 0
    sent: int = 0
    xact_time: int = 0
    query_time: int = 0
    wait_time: int = 0


def database_totals(pools: Iterable[ServerPool], names: Iterable[str]) -> dict[str, Totals]:
    """The totals of each database in ``names`` over its pools (0 for one with none)."""
    totals = {name: Totals() for name in names}
    for pool in pools:
        found = totals.get(pool.key.database)
        if found is not None:
            found.add(pool)
    return totals


def averages(before: Totals, after: Totals, seconds: float) -> Averages:
    """The averages of a period of ``seconds`` from ``before`` to ``after``."""
    if seconds <= 0:
        return Averages()
    diff = Totals(*(getattr(after, f.name) - getattr(before, f.name) for f in fields(Totals)))
    return Averages(
        xact_count=round(diff.xact_count / seconds),
        query_count=round(diff.query_count / seconds),
        recv=round(diff.received / seconds),
        sent=round(diff.sent / seconds),
        xact_time=round(diff.xact_time / diff.xact_count) if diff.xact_count > 0 else 0,
        query_time=round(diff.query_time / diff.query_count) if diff.query_count > 0 else 0,
        wait_time=round(diff.wait_time / seconds),
    )


class Periods:
    """The averages of the last period that ended, per database."""

    __slots__ = ("_last", "_last_at", "last")

    def __init__(self) -> None:
        self._last: Mapping[str, Totals] = {}
        self._last_at: float | None = None
        #: Database -> the averages of the last period (absent: none ended yet).
        self.last: dict[str, Averages] = {}

    def tick(self, totals: Mapping[str, Totals], now: float) -> None:
        """A period ends at ``now`` (seconds, any monotonic clock) with ``totals``."""
        if self._last_at is not None:
            seconds = now - self._last_at
            self.last = {
                name: averages(self._last.get(name, Totals()), current, seconds)
                for name, current in totals.items()
            }
        self._last, self._last_at = totals, now
