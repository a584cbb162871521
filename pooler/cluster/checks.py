"""What one health check asks a node, and what its answer means (sans-IO).

The monitor runs ``STATE_SQL`` on every node and, on a node out of recovery,
``REPLICATION_SQL``; ``probe_from_rows`` turns the rows into a ``Probe``. LSNs arrive as
integers (asyncpg decodes ``pg_lsn`` so), times as seconds since the epoch.

The health-check user needs ``pg_monitor`` (or superuser): without it PostgreSQL hides
the columns of ``pg_stat_wal_receiver`` and ``pg_stat_replication`` and refuses
``pg_control_checkpoint()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pooler.cluster.nodes import Replica

__all__ = ["REPLICATION_SQL", "STATE_SQL", "Probe", "probe_from_rows"]

# One row whatever the role. The CASE keeps pg_current_wal_lsn() and pg_walfile_name(),
# which fail during recovery, from running on a standby. A primary's timeline is in the
# name of its current WAL file at once after a promotion; a standby's comes from its WAL
# receiver, or (not streaming) from its last restartpoint.
STATE_SQL = """\
SELECT pg_is_in_recovery() AS in_recovery,
       extract(epoch FROM clock_timestamp())::float8 AS server_time,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn() END AS current_lsn,
       CASE WHEN NOT pg_is_in_recovery()
            THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
            ELSE coalesce(r.received_tli, (SELECT timeline_id FROM pg_control_checkpoint()))
       END AS timeline,
       coalesce(r.status = 'streaming', false) AS streaming,
       r.written_lsn AS receive_lsn,
       pg_last_wal_receive_lsn() AS flush_lsn,
       pg_last_wal_replay_lsn() AS replay_lsn,
       extract(epoch FROM pg_last_xact_replay_timestamp())::float8 AS replay_time
FROM (SELECT) AS one LEFT JOIN pg_stat_wal_receiver AS r ON true"""

REPLICATION_SQL = """\
SELECT application_name, host(client_addr) AS address, state, sync_state, replay_lsn
FROM pg_stat_replication ORDER BY application_name, pid"""


@dataclass(frozen=True, slots=True)
class Probe:
    """What one successful check read from a node."""

    in_recovery: bool
    #: The node's clock when it answered (time.time() scale).
    server_time: float
    timeline: int | None = None
    #: Out of recovery: ``pg_current_wal_lsn()``.
    current_lsn: int | None = None
    #: In recovery: received (written), received and flushed, and replayed WAL positions.
    receive_lsn: int | None = None
    flush_lsn: int | None = None
    replay_lsn: int | None = None
    #: In recovery: commit time of the last transaction replayed.
    replay_time: float | None = None
    #: Out of recovery: its ``pg_stat_replication``.
    replicas: tuple[Replica, ...] = ()
    #: In recovery: its WAL receiver streams (of ``timeline``: the receiver's).
    streaming: bool = False

    @property
    def received_lsn(self) -> int | None:
        """The furthest WAL position this standby is known to have received."""
        known = [lsn for lsn in (self.receive_lsn, self.flush_lsn) if lsn is not None]
        return max(known, default=None)


def probe_from_rows(
    state: Mapping[str, Any], replication: Sequence[Mapping[str, Any]] = ()
) -> Probe:
    """A Probe from the row of ``STATE_SQL`` and the rows of ``REPLICATION_SQL``."""
    return Probe(
        in_recovery=bool(state["in_recovery"]),
        server_time=float(state["server_time"]),
        timeline=state["timeline"],
        current_lsn=state["current_lsn"],
        receive_lsn=state["receive_lsn"],
        flush_lsn=state["flush_lsn"],
        replay_lsn=state["replay_lsn"],
        replay_time=state["replay_time"],
        streaming=bool(state.get("streaming", False)),
        replicas=tuple(
            Replica(
                name=row["application_name"],
                address=row["address"],
                state=row["state"],
                sync_state=row["sync_state"],
                replay_lsn=row["replay_lsn"],
            )
            for row in replication
        ),
    )
