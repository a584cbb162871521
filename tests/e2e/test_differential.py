"""Differential property test of the wire protocol: whatever bytes a client sends after
its login, the pooler answers exactly as PostgreSQL 15 answers them, and the server
connection the next client gets carries nothing left over from the previous one.

Generated pipelines (tests/pipelines.py) run against the cluster's primary and against a
pooler with pool.size 1, on fresh connections, with the same chunking; then a next client
of the pooler must get exactly its own answers (tests/differential.py). A failure prints
the case as Python source and as JSON: ``scripts/fuzz --replay FILE`` replays a JSON case.

``DIFFERENTIAL_EXAMPLES=0`` in the environment skips the hand-written @examples and runs
only the generated cases (to time the budget, say).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from conftest import PoolerProcess, StartPooler
from differential import (
    BAD_LOG_WORDS,
    RESET_OVERTOOK,
    CaseResult,
    Difference,
    expected_next_client,
    new_token,
    next_client,
    prepare_database,
    render_stream,
    run_case,
)
from hypothesis import HealthCheck, Phase, example, given, settings
from pipelines import (
    COPY_IN_SQL,
    Case,
    CopyData,
    CopyDone,
    Sync,
    case_from_json,
    case_to_json,
    cases,
    known_cases,
)
from wire import Msg, address_of, comparable, connect

from pooler.localcluster import LocalCluster
from pooler.protocol import messages as m

#: Differences the test lets pass, as (signature prefix, why it cannot be helped).
ACCEPTED_DIFFERENCES: list[tuple[str, str]] = [
    (RESET_OVERTOOK, "PostgreSQL's reset drops its own last messages (see differential.py)"),
]

#: Generated cases per run: about 16 s on a 2-core machine when nothing differs (the
#: suite has a 10-minute budget; ``POOLER_DIFFERENTIAL_EXAMPLES=1000`` for a longer hunt).
MAX_EXAMPLES = int(os.environ.get("POOLER_DIFFERENTIAL_EXAMPLES", "200"))

KNOWN = known_cases()

_PHASES = (
    [Phase.explicit, Phase.generate, Phase.shrink]
    if os.environ.get("DIFFERENTIAL_EXAMPLES", "1") != "0"
    else [Phase.generate, Phase.shrink]
)


def _accepted(diff: Difference) -> bool:
    return any(diff.signature.startswith(prefix) for prefix, _ in ACCEPTED_DIFFERENCES)


class _Pooler:
    """The pooler under test, restarted when a case hurt the next client: its state can
    no longer be trusted, and later cases (and shrinking) must not pay for it."""

    def __init__(self, start_pooler: StartPooler, mode: str) -> None:
        self._start = start_pooler
        routed = mode == "session-routed"
        self._pool = {"size": 1, "mode": "session" if routed else mode}
        # Session mode with routing: each client keeps a server per node it used.
        self._more: dict[str, Any] = {"load_balance": {"enabled": True}} if routed else {}
        self.process: PoolerProcess = start_pooler(pool=self._pool, **self._more)
        self.started = [self.process]
        self.dirty = False

    def fresh(self) -> PoolerProcess:
        if self.dirty:
            self.process.stop()
            self.process = self._start(pool=self._pool, **self._more)
            self.started.append(self.process)
            self.dirty = False
        return self.process

    def log_problems(self) -> list[str]:
        """Tracebacks, asyncio's "Fatal error" and error-level lines in every run's log."""
        return [
            line
            for process in self.started
            for line in process.log_text().splitlines()
            if any(word in line for word in BAD_LOG_WORDS)
        ]


def _failure(result: CaseResult, unaccepted: list[Difference]) -> str:
    return "\n".join(
        [
            f"the pooler answered otherwise than PostgreSQL ({len(unaccepted)} difference(s)):",
            result.report(),
            "replay: scripts/fuzz --replay FILE, with this in FILE:",
            json.dumps(case_to_json(result.case)),
        ]
    )


@pytest.mark.parametrize("mode", ["transaction", "session", "session-routed"])
def test_pooler_answers_any_pipeline_like_postgres(
    cluster: LocalCluster, start_pooler: StartPooler, mode: str
) -> None:
    postgres = address_of(cluster.primary)
    prepare_database(postgres)
    pooler = _Pooler(start_pooler, mode)

    @settings(
        # Transaction pooling runs the whole engine; the relay of plain session mode, and
        # session mode with routing (the same engine, servers kept), get a third.
        max_examples=MAX_EXAMPLES if mode == "transaction" else MAX_EXAMPLES // 3,
        deadline=None,
        derandomize=True,
        database=None,
        phases=_PHASES,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @example(KNOWN["copy-sync-sync-leak"])
    @example(KNOWN["query-terminate"])
    @example(KNOWN["query-unknown-type"])
    @example(KNOWN["query-length-below-4"])
    @example(KNOWN["copydata-2GiB-in-copy"])
    @example(KNOWN["pbe-terminate"])
    @example(KNOWN["pbe-flush-terminate"])
    @example(KNOWN["extended-copy-fail-then-copy"])
    @example(KNOWN["error-then-copydata-leave"])
    @example(KNOWN["unknown-type-in-copy"])
    @given(cases())
    def check(case: Case) -> None:
        process = pooler.fresh()
        result = run_case(postgres, address_of(process), case)
        if any(d.check == "next-client" for d in result.differences):
            pooler.dirty = True
        unaccepted = [d for d in result.differences if not _accepted(d)]
        assert not unaccepted, _failure(result, unaccepted)

    check()
    # Nothing went wrong inside the pooler either.
    problems = pooler.log_problems()
    assert not problems, "\n".join(problems[:20])


def test_known_cases_are_valid_json_round_trips() -> None:
    for name, case in KNOWN.items():
        assert case_from_json(json.loads(json.dumps(case_to_json(case)))) == case, name


@pytest.mark.parametrize("mode", ["transaction", "session"])
def test_copy_sync_sync_answers_do_not_leak_to_the_next_client(
    cluster: LocalCluster, start_pooler: StartPooler, mode: str
) -> None:
    """Client A sends in ONE write a COPY FROM STDIN by Query, its data, CopyDone, two
    Syncs and two slow queries; it reads three ReadyForQuery and disconnects. With pool
    size 1, client B gets the same server: it must see only its own answers."""
    prepare_database(address_of(cluster.primary))
    pooler = start_pooler(pool={"size": 1, "mode": mode})
    pipeline = (
        m.query(COPY_IN_SQL)
        + CopyData("1\tone\n").encode()
        + CopyDone().encode()
        + Sync().encode()
        + Sync().encode()
        + m.query("SELECT pg_sleep(1), 'A-first'")
        + m.query("SELECT pg_sleep(1), 'A-LEAKED-ROW'")
    )

    def client_a(address: tuple[str, int]) -> list[tuple[object, ...]]:
        with connect(address) as a:
            a.send(pipeline)
            got: list[Msg] = []
            for _ in range(3):
                got += a.read_until("Z")
            return [comparable(x) for x in got]

    # PostgreSQL: CopyInResponse, COPY 1 and its ReadyForQuery, then one per Sync.
    direct = client_a(address_of(cluster.primary))
    assert [x[0] for x in direct] == ["G", "C", "Z", "Z", "Z"], direct
    assert client_a(address_of(pooler)) == direct
    started = time.monotonic()
    token = new_token()
    b = next_client(address_of(pooler), token)
    assert b.end == "open" and b.messages == expected_next_client(token), (
        f"client B (after {time.monotonic() - started:.1f} s) got what it did not ask for:\n"
        + render_stream(b)
    )
