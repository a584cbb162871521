"""The query cache under pgbench: cache on vs off vs direct PostgreSQL vs pgpool-II with
its memqcache (shared memory), one interleaved run; then the change stream's own CPU
under a TPC-B load.

Usage: ``bench/cache_compare [--duration 10] [--clients 16] [--modes simple,extended,prepared]
[--targets direct,cache-off,cache-on,pgpool-memqcache] [--scale 10]`` (see
``bench/README.md``). One fresh LocalCluster (a primary, no standby: every target reads
there), ``pgbench -i``, every target started once, a warm-up, then for each mode and
script every target one after the other. Two custom scripts, each one
``SELECT abalance FROM pgbench_accounts WHERE aid = :aid``: ``hot`` draws aid from a hot
set of 1,000 rows (after the warm-up, all hits for a cache), ``cold`` from all
``100,000 * scale`` rows (almost all misses: the cost of a miss). Last, with the cache-on
pooler's change stream watching database bench, pgbench's TPC-B-like script runs
directly on the primary, and the CPU of the decoding backend and of the pooler is
reported per transaction, with the autovacuum and autoanalyze runs meanwhile (each is a
transaction with no row change, which drops every entry of the database).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pgbench_compare import (
    DATABASE,
    PASSWORD,
    USER,
    BenchError,
    Run,
    Services,
    Target,
    _csv,
    _positive,
    _server_dir,
    connect_args,
    describe,
    judge,
    pgbench_env,
    pooler_revision,
    say,
    setup_cluster,
    start_pgpool,
    start_pooler,
    trees_cpu_seconds,
    wait_ready,
)

from pooler.localcluster import ClusterError, LocalCluster, find_free_ports, server_tempdir

TARGETS = ("direct", "cache-off", "cache-on", "pgpool-memqcache")
SELECT = "SELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
#: Rows in the hot set.
HOT = 1000
CACHE_ON = [("query_cache.enabled", True), ("query_cache.ttl", 0)]


def scripts(workdir: Path, scale: int) -> dict[str, Path]:
    """The custom pgbench scripts, by name."""
    out = {}
    for name, rows in (("hot", HOT), ("cold", 100_000 * scale)):
        path = workdir / f"{name}.sql"
        path.write_text(f"\\set aid random(1, {rows})\n{SELECT}")
        out[name] = path
    return out


def run_pgbench(
    target: Target, script: Path | None, mode: str, clients: int, duration: int, run: Run
) -> None:
    """pgbench through ``target`` with ``script`` (None: the TPC-B-like builtin)."""
    cmd = ["pgbench", "-n", "-M", mode, "-c", str(clients), "-j", str(min(clients, 2))]
    if script is not None:
        cmd += ["-f", str(script)]
    cmd += ["-T", str(duration), *connect_args("127.0.0.1", target.port)]
    roots = [target.pid] if target.pid is not None else []
    before = trees_cpu_seconds(roots)
    out = subprocess.run(
        cmd, capture_output=True, text=True, env=pgbench_env(), timeout=duration + 120
    )
    if roots:
        (user, system), (user0, system0) = trees_cpu_seconds(roots)[0], before[0]
        run.cpu_user_seconds, run.cpu_seconds = user - user0, user + system - user0 - system0
    judge(run, out.returncode, out.stdout, out.stderr, duration)


def start(
    names: Sequence[str], services: Services, cluster: LocalCluster, workdir: Path, size: int
) -> dict[str, Target]:
    ports = iter(find_free_ports(2 * len(names)))
    started: dict[str, Target] = {}
    for name in names:
        if name == "direct":
            started[name] = Target(name, cluster.primary.port)
            continue
        sub = _server_dir(workdir / name)
        if name == "pgpool-memqcache":
            target = start_pgpool(
                services, cluster, sub, next(ports), next(ports), size + 4, memqcache=True
            )
            target.name = name
            target.log = sub / "pgpool.log"
        else:
            overrides = CACHE_ON if name == "cache-on" else []
            target = start_pooler(services, cluster, sub, next(ports), size, overrides, name)
            target.log = sub / f"{name}.log"
        started[name] = target
    for target in started.values():
        if target.log is not None:
            wait_ready(target, services)
    return started


def decoding_cost(
    cluster: LocalCluster, started: dict[str, Target], clients: int, duration: int
) -> str:
    """TPC-B-like directly on the primary while the cache-on pooler decodes database
    bench: the CPU of its decoding backend and of the pooler per transaction."""
    primary = cluster.primary
    slot = primary.psql(
        "SELECT active_pid FROM pg_replication_slots WHERE slot_name LIKE 'pooler_cache_%'"
        f" AND database = '{DATABASE}'"
    ).strip()
    if not slot:
        return "no decoding slot was found: the change stream did not start"
    pooler = started["cache-on"]
    roots = [int(slot), *([pooler.pid] if pooler.pid is not None else [])]
    vacuums_sql = "SELECT sum(autovacuum_count + autoanalyze_count) FROM pg_stat_user_tables"
    vacuums0 = int(primary.psql(vacuums_sql, dbname=DATABASE) or 0)
    before = trees_cpu_seconds(roots)
    run = Run(1, "simple", clients, "direct", script="tpcb-like")
    run_pgbench(Target("direct", primary.port), None, "simple", clients, duration, run)
    after = trees_cpu_seconds(roots)
    time.sleep(11)  # cumulative statistics are flushed every 10 s at most (PostgreSQL 15)
    vacuums = int(primary.psql(vacuums_sql, dbname=DATABASE) or 0) - vacuums0
    txns = run.transactions or 1
    used = [sum(now) - sum(then) for now, then in zip(after, before, strict=True)]
    decoder = used[0] * 1e6 / txns
    pooler_cpu = used[-1] * 1e6 / txns
    return (
        f"TPC-B-like directly on the primary, c={clients}, -T {duration}: {run.tps or 0:.0f} tps;"
        f" the decoding backend used {decoder:.1f} us of CPU per transaction, the pooler"
        f" (polling, dropping) {pooler_cpu:.1f} us; autovacuum/autoanalyze ran {vacuums}"
        f" times meanwhile (each a transaction with no row change: every entry of the"
        f" database dropped)"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=_positive, default=10, help="pgbench -T; default 10")
    parser.add_argument("--clients", type=_positive, default=16, help="pgbench -c; default 16")
    parser.add_argument(
        "--modes",
        type=_csv(str, ("simple", "extended", "prepared")),
        default=["simple", "extended", "prepared"],
    )
    parser.add_argument("--targets", type=_csv(str, TARGETS), default=list(TARGETS))
    parser.add_argument("--scale", type=_positive, default=10, help="pgbench -i -s; default 10")
    parser.add_argument("--warmup", type=_positive, default=3, help="seconds; default 3")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    services = Services()
    workdir = server_tempdir("pooler-cache-bench-")
    runs: list[Run] = []
    cost = ""
    cluster: LocalCluster | None = None
    try:
        cluster = LocalCluster(
            workdir / "cluster",
            standbys=0,
            users={USER: PASSWORD},
            databases={DATABASE: USER},
            settings={"max_connections": str(len(args.targets) * (args.clients + 8) + 50)},
            progress=lambda line: say(f"cluster: {line}"),
        )
        setup_cluster(cluster, args.scale)
        files = scripts(workdir, args.scale)
        started = start(args.targets, services, cluster, workdir, max(args.clients, 16))
        for name, target in started.items():
            warm = Run(0, "simple", args.clients, name)
            run_pgbench(target, files["hot"], "simple", args.clients, args.warmup, warm)
            say(f"warm-up {describe(warm)}")
        for mode in args.modes:
            for script in ("hot", "cold"):
                for name, target in started.items():
                    run = Run(1, mode, args.clients, name, script=script)
                    run_pgbench(target, files[script], mode, args.clients, args.duration, run)
                    runs.append(run)
                    say(f"{script} {mode} c={args.clients} {describe(run)}")
        if "cache-on" in started:
            cost = decoding_cost(cluster, started, args.clients, args.duration)
    except (BenchError, ClusterError, subprocess.TimeoutExpired) as exc:
        say(f"cache_compare: {exc}")
        return 2
    finally:
        services.stop_all()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    report(args, runs, cost)
    return 1 if any(r.error or r.failed for r in runs) else 0


def report(args: argparse.Namespace, runs: Sequence[Run], cost: str) -> None:
    print(
        f"pgbench -c {args.clients} -T {args.duration}, scale {args.scale}, one interleaved"
        f" run, pooler {pooler_revision()}; hot: aid among {HOT} rows, cold: among"
        f" {100_000 * args.scale}\n"
    )
    print("| script | mode | target | TPS | x direct | x cache off | CPU us/txn |")
    print("|---|---|---|---:|---:|---:|---:|")
    for mode in args.modes:
        for script in ("hot", "cold"):
            cell = [r for r in runs if r.mode == mode and r.script == script]
            by = {r.target: r.tps for r in cell}
            for r in cell:
                cpu = f"{r.cpu_us_per_txn:.1f}" if r.cpu_us_per_txn is not None else "—"
                print(
                    f"| {script} | {mode} | {r.target} | {r.tps or 0:.0f}"
                    f" | {_times(r.tps, by.get('direct'))} | {_times(r.tps, by.get('cache-off'))}"
                    f" | {cpu} |"
                )
    if cost:
        print(f"\n{cost}")


def _times(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "—"


if __name__ == "__main__":
    sys.exit(main())
