"""``bench/pgbench_compare``: the report from canned pgbench output, and one tiny real run.

The real run is as small as the script allows (scale 1, c=1, -T 1, one repeat, simple
protocol, no warm-up); it still starts a cluster and every proxy, so it is marked slow.
It is the only place that tolerates a missing PgBouncer or pgpool-II package
(``--skip-missing``): the script itself fails and names the package to install.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pooler.localcluster import port_is_free

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCRIPT = BENCH / "pgbench_compare.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pgbench_compare", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("pgbench_compare", module)
    spec.loader.exec_module(module)
    return module


pgbc = _load()

PGBENCH_15_OUTPUT = """\
pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 123456
number of failed transactions: 3 (0.002%)
latency average = 1.296 ms
initial connection time = 25.730 ms
tps = 12345.678901 (without initial connection time)
"""


def test_parse_pgbench_15_report() -> None:
    run = pgbc.Run(1, "simple", 16, "pooler", cpu_seconds=2.46912, cpu_user_seconds=1.23456)
    pgbc.parse_pgbench(PGBENCH_15_OUTPUT, run)
    assert run.tps == pytest.approx(12345.678901)
    assert run.transactions == 123456
    assert run.failed == 3
    assert run.cpu_us_per_txn == pytest.approx(20.0)
    assert pgbc.describe(run) == "pooler: 12346 tps, 20.0 us/txn CPU (10.0 user), 3 FAILED"


def test_pgbench_errors_are_runs_without_tps() -> None:
    cut = PGBENCH_15_OUTPUT.split("number of transactions")[0]
    run = pgbc.Run(0, "simple", 64, "pgpool")
    pgbc.judge(run, 0, cut + "number of transactions actually processed: 0\n", "", 2)
    assert run.tps is None and run.error and "no transaction completed in 2 s" in run.error
    run = pgbc.Run(1, "simple", 1, "pooler")
    pgbc.judge(run, 2, cut, "pgbench: error: connection refused\n", 10)
    assert run.error == "pgbench exit status 2: pgbench: error: connection refused"
    run = pgbc.Run(1, "simple", 16, "pooler")
    pgbc.judge(run, 0, PGBENCH_15_OUTPUT, "", 10)
    assert run.error is None and run.failed == 3


def test_table_medians_ratios_and_failures() -> None:
    runs = []
    for repeat, (direct, pooler, relay, bouncer) in enumerate(
        [(1000, 800, 900, 850), (1100, 820, 880, 800), (900, 700, 1000, 900)], 1
    ):
        for target, tps in [
            ("direct", direct),
            ("pooler", pooler),
            ("relay", relay),
            ("pgbouncer", bouncer),
        ]:
            cpu = None if target == "direct" else tps * 1e-4
            runs.append(pgbc.Run(repeat, "simple", 16, target, tps, tps * 10, 0, cpu))
    runs[-1].failed = 7
    runs.append(pgbc.Run(1, "simple", 16, "pgpool", error="pgbench exit status 2: boom"))
    targets = ["direct", "pooler", "relay", "pgbouncer", "pgpool"]
    text = "\n".join(pgbc.render_table(runs, ["simple"], [16], targets))
    assert "| simple | 16 | direct | 1000 | 20% | 1.00x | 1.18x | — | — |" in text
    # Medians: pooler 800, relay 900, PgBouncer 850; CPU 1e-4 s / 10 txns = 10 us.
    assert "| simple | 16 | pooler | 800 | 15% | 0.80x | 0.94x | — | 10.0 |" in text
    assert "| simple | 16 | pgbouncer | 850 (7 FAILED txns) |" in text
    assert "| simple | 16 | pgpool | error |" in text
    assert "pooler vs relay, simple, c=16: 0.89x TPS (800 vs 900; CPU 10.0 vs 10.0 us/txn)" in text
    assert "misses the 0.9x bar" in text
    assert "- repeat 1 simple c=16 pgpool: pgbench exit status 2: boom" in text


def test_routing_bars_against_pgpool_and_prepared_without_pgbouncer() -> None:
    runs = [
        pgbc.Run(1, mode, 16, target, tps, tps * 10, 0, None if target == "direct" else 1.0)
        for mode in ("simple", "extended", "prepared")
        for target, tps in [
            ("direct", 1000),
            ("pooler", 1500),
            ("pgbouncer", 900),
            ("pgpool", 1000),
        ]
        if not pgbc.unsupported(target, mode)
    ]
    targets = ["direct", "pooler", "pgbouncer", "pgpool"]
    modes = ["simple", "extended", "prepared"]
    text = "\n".join(pgbc.render_table(runs, modes, [16], targets, pgbc.PGPOOL_BARS))
    assert "| simple | 16 | pooler | 1500 | — | 1.50x | 1.67x | 1.50x | 66.7 |" in text
    assert "| prepared | 16 | pgbouncer | n/a | — | — | — | — | — |" in text
    assert "n/a: PgBouncer in transaction mode cannot run -M prepared" in text
    assert "pooler vs pgpool, simple, c=16: 1.50x TPS (1500 vs 1000; CPU" in text
    assert "meets the 1.4x bar" in text and "misses the 2.0x bar" in text
    assert re.search(r"pooler vs pgpool, prepared, c=16: 1.50x TPS \([^)]*\)$", text, re.M)


def test_plan_runs_tpcb_at_its_own_clients_and_modes() -> None:
    args = pgbc.parse_args(
        shlex.split(
            "--routing --clients 16,64 --modes simple,prepared --scripts select-only,tpcb-like"
            " --tpcb-clients 16 --tpcb-modes simple"
        )
    )
    assert args.routing
    assert pgbc.plan(args) == [
        ("select-only", "simple", 16),
        ("select-only", "simple", 64),
        ("select-only", "prepared", 16),
        ("select-only", "prepared", 64),
        ("tpcb-like", "simple", 16),
    ]
    run = pgbc.Run(1, "simple", 16, "direct", node_cpu_seconds=[3.0, 1.0, 0.0])
    line = pgbc.render_node_cpu([run], ["direct"], 16)
    assert line and line.endswith("c=16: direct 75/25/0%")


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgbc, "find_program", lambda name: None)
    args = pgbc.parse_args(["--targets", "direct,pgbouncer"])
    with pytest.raises(pgbc.BenchError, match="apt-get install -y pgbouncer pgpool2"):
        pgbc.resolve_targets(args)
    args = pgbc.parse_args(["--targets", "direct,pgbouncer", "--skip-missing"])
    targets, notes = pgbc.resolve_targets(args)
    assert targets == ["direct"]
    assert notes and "SKIPPED pgbouncer" in notes[0]


@pytest.mark.slow
def test_tiny_run_prints_the_table() -> None:
    tiny = "--repeats 1 --duration 1 --clients 1 --modes simple --scale 1 --warmup 0"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *tiny.split(), "--skip-missing"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"exit status {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    assert "| mode | clients | target | TPS |" in out
    skipped = set(re.findall(r"^SKIPPED (\w+):", out, re.M))
    ran = [t for t in pgbc.ALL_TARGETS if t not in skipped]
    assert {"direct", "pooler", "relay"} <= set(ran)
    for target in ran:
        row = re.search(rf"^\| simple \| 1 \| {target} \| (\d+) \|", out, re.M)
        assert row and int(row.group(1)) > 0, f"no TPS for {target}:\n{out}\n{err}"
    assert "FAILED" not in out and "error" not in out
    assert re.search(r"^pooler vs relay, simple, c=1: [0-9.]+x TPS", out, re.M)
    # Everything it started is gone: the proxies' ports are free, the directory removed.
    for port in re.findall(r"^\w+ ready on port (\d+)$", err, re.M):
        assert port_is_free(int(port)), f"port {port} still in use after the run"
    removed = re.search(r"removing (\S+)/cluster$", err, re.M)
    assert removed and not Path(removed.group(1)).exists()


def test_hot_path_runs_every_mode_through_the_pooler_code() -> None:
    """bench/hot_path drives a real Pooler with fake transports; it fails if a request
    gets no server or an answer does not free it, so a change that breaks the path it
    measures is seen here, not by the next person who runs it."""
    done = subprocess.run(
        [str(BENCH / "hot_path"), "--routing", "--count", "900"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["simple", "extended", "prepared"]
    for line in lines:
        assert re.search(r"routing=on: \d+\.\d us/txn \(best batch \d+\.\d\)$", line), line
