"""``scripts/fuzz``: many generated client pipelines, each sent to PostgreSQL and to the
pooler (pool.size 1, and another pooler at pool.size 5), every difference saved as a
replayable JSON case.

Starts its own cluster (a primary and `--standbys` streaming standbys, 2 by default,
for the reads routing sends there) and its own poolers. At the end it
reports the cases run, the differences grouped by a short signature, tracebacks in the
poolers' logs, server connections the pool left busy, and the poolers' resident memory
at the start, the middle and the end.

    scripts/fuzz --cases 10000 --seed 7 --out ./fuzz-out
    scripts/fuzz --replay fuzz-out/diff-00012-pool1.json
    scripts/fuzz --minimize fuzz-out/diff-00012-pool1.json --pool-sizes 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from differential import (
    BAD_LOG_WORDS,
    CaseResult,
    HarnessError,
    new_token,
    prepare_database,
    probe_every_server,
    render_stream,
    run_case,
    run_on_postgres,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from pipelines import Case, Chunking, case_from_json, case_snippet, case_to_json, cases
from wire import Address, address_of

from pooler.localcluster import LocalCluster, find_free_ports, server_tempdir

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 10.0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- poolers -----------------------------------------------------------------------------


@dataclass
class Pooler:
    """A ``python -m pooler run`` subprocess of this worktree, restartable."""

    name: str
    cluster: LocalCluster
    size: int
    workdir: Path
    mode: str = "transaction"
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    starts: int = 0
    logs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> Address:
        return ("127.0.0.1", self.port)

    def start(self) -> None:
        self.port = find_free_ports(1)[0]
        self.starts += 1
        config: dict[str, Any] = dict(self.cluster.pooler_config(self.port))
        config["pool"] = {"size": self.size, "mode": self.mode}
        path = self.workdir / f"{self.name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        log = self.workdir / f"{self.name}-{self.starts}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pooler", "run", "--config", str(path)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(OSError), socket.create_connection(self.address, 1):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def rss_kib(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return None

    def log_problems(self) -> Counter[str]:
        """Tracebacks and errors in every log of this pooler, by kind: the exception line
        ending each traceback, and every other bad line, with addresses and numbers
        blotted out so that alike ones count together."""
        found: Counter[str] = Counter()
        for log in self.logs:
            lines: list[str] = []
            with contextlib.suppress(OSError):
                lines = log.read_text(errors="replace").splitlines()
            in_traceback = False
            for line in lines:
                if line.startswith("Traceback"):
                    in_traceback = True
                    continue
                if in_traceback:
                    if line.startswith((" ", "\t")):
                        continue
                    in_traceback = False
                    found[f"exception: {_blot(line)}"] += 1
                    continue
                if any(word in line for word in BAD_LOG_WORDS):
                    found[_blot(line)] += 1
        return found

    def sockets(self) -> set[int]:
        """Local TCP ports of this pooler's sockets."""
        if self.proc is None:
            return set()
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for row in Path(table).read_text().splitlines()[1:]:
                    cols = row.split()
                    if len(cols) > 9 and cols[9] in inodes:
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        return ports


def _blot(line: str) -> str:
    line = re.sub(r"0x[0-9a-f]+", "ADDR", line)
    line = re.sub(r'"ts": "[^"]*", ', "", line)
    line = re.sub(r"\d+", "N", line)
    return line[:240]


# --- bookkeeping -------------------------------------------------------------------------


@dataclass
class Tally:
    out: Path
    cases: int = 0
    differing_cases: int = 0
    harness_errors: int = 0
    by_signature: Counter[str] = field(default_factory=Counter)
    first_file: dict[str, Path] = field(default_factory=dict)
    restarts: Counter[str] = field(default_factory=Counter)
    rss: dict[str, list[tuple[str, int | None]]] = field(default_factory=lambda: defaultdict(list))

    def save(self, kind: str, payload: dict[str, Any]) -> Path:
        path = self.out / f"{kind}-{self.cases:05d}.json"
        path.write_text(json.dumps(payload, indent=1))
        return path


def _record(tally: Tally, pooler: Pooler, result: CaseResult) -> None:
    payload = {"pooler": pooler.name, "pool_size": pooler.size, **result.to_json()}
    path = tally.out / f"diff-{tally.cases:05d}-{pooler.name}.json"
    path.write_text(json.dumps(payload, indent=1))
    for diff in result.differences:
        signature = f"{diff.check}: {diff.signature}"
        tally.by_signature[signature] += 1
        tally.first_file.setdefault(signature, path)


def _wedged(result: CaseResult) -> bool:
    """The next client was hurt: the pooler's state can no longer be trusted."""
    return any(d.check == "next-client" for d in result.differences)


def run_one(
    tally: Tally, postgres: Address, poolers: list[Pooler], case: Case, verbose: bool
) -> None:
    tally.cases += 1
    try:
        token = new_token()
        pg = run_on_postgres(postgres, case, token)
    except HarnessError as exc:
        tally.harness_errors += 1
        tally.save("harness", {"error": str(exc)})
        say(f"harness error (case {tally.cases}): {str(exc).splitlines()[0]}")
        return
    differing = False
    for pooler in poolers:
        try:
            result = run_case(postgres, pooler.address, case, reference=(pg, token))
        except Exception:
            tally.harness_errors += 1
            tally.save("harness", {"error": traceback.format_exc(), "pooler": pooler.name})
            say(f"harness error (case {tally.cases}, {pooler.name}):\n{traceback.format_exc()}")
            continue
        if result.differences:
            differing = True
            _record(tally, pooler, result)
            if verbose:
                say(f"--- case {tally.cases} on {pooler.name}\n{result.report()}")
        if _wedged(result) or (pooler.proc is not None and pooler.proc.poll() is not None):
            tally.restarts[pooler.name] += 1
            pooler.restart()
    tally.differing_cases += differing


def busy_servers(cluster: LocalCluster, wait: float) -> list[tuple[int, str]]:
    """Backends of user app that are not idle, as (client port, description); waits up
    to ``wait`` s for them to settle (a pooler may be waiting out a reset)."""
    sql = (
        "SELECT client_port || '|' || pid || ' ' || coalesce(state, '?') || ' '"
        " || left(query, 80) FROM pg_stat_activity"
        " WHERE usename = 'app' AND state IS DISTINCT FROM 'idle'"
    )
    deadline = time.monotonic() + wait
    while True:
        rows = [
            r.split("|", 1)
            for node in cluster.nodes
            for r in node.psql(sql).splitlines()
            if r.strip()
        ]
        if not rows or time.monotonic() > deadline:
            return [(int(port or 0), what) for port, what in rows]
        time.sleep(0.2)


def app_backends(cluster: LocalCluster) -> int:
    sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
    return sum(int(node.psql(sql).strip() or 0) for node in cluster.nodes)


def note_rss(tally: Tally, poolers: list[Pooler], when: str) -> None:
    for pooler in poolers:
        tally.rss[pooler.name].append((when, pooler.rss_kib()))


def fuzz(
    tally: Tally,
    postgres: Address,
    poolers: list[Pooler],
    count: int,
    seed: int,
    max_blocks: int,
    verbose: bool,
) -> None:
    started = time.monotonic()
    last_line = [started]

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(max_blocks=max_blocks))
    def one(case: Case) -> None:
        run_one(tally, postgres, poolers, case, verbose)
        if tally.cases == max(1, count // 2):
            note_rss(tally, poolers, "middle")
        now = time.monotonic()
        if now - last_line[0] >= 10 or tally.cases == count:
            last_line[0] = now
            rss = ", ".join(f"{p.name} {(p.rss_kib() or 0) // 1024} MB" for p in poolers)
            say(
                f"[{tally.cases:6}/{count}] {now - started:6.1f} s,"
                f" {tally.differing_cases} cases differ ({len(tally.by_signature)} kinds),"
                f" {tally.harness_errors} harness errors; rss {rss}"
            )

    one()


def replay(postgres: Address, poolers: list[Pooler], files: list[str]) -> int:
    differing = 0
    for name in files:
        data = json.loads(Path(name).read_text())
        case = case_from_json(data.get("case", data))
        print(f"=== {name}\n{case_snippet(case)}")
        token = new_token()
        pg = run_on_postgres(postgres, case, token)
        print(f"postgres:\n{render_stream(pg)}")
        for pooler in poolers:
            result = run_case(postgres, pooler.address, case, reference=(pg, token))
            print(f"--- {pooler.name} (pool.size {pooler.size}):\n{render_stream(result.pooler)}")
            for diff in result.differences:
                print(f"DIFFERENCE {diff.check}: {diff.signature}\n{diff.detail}")
            if result.differences:
                differing += 1
                if _wedged(result):
                    pooler.restart()
            else:
                print("same as PostgreSQL; next client unharmed")
    return differing


def _reproduces(
    postgres: Address, pooler: Pooler, case: Case, wanted: set[str], tries: int
) -> bool:
    """Whether one of ``wanted`` (signatures) shows within ``tries`` runs of ``case``."""
    for _ in range(tries):
        try:
            result = run_case(postgres, pooler.address, case)
        except HarnessError:
            return False
        if _wedged(result) or (pooler.proc is not None and pooler.proc.poll() is not None):
            pooler.restart()
        if wanted & {f"{d.check}: {d.signature}" for d in result.differences}:
            return True
    return False


def minimize(postgres: Address, pooler: Pooler, name: str, tries: int) -> Path | None:
    """Drop steps (and simplify the chunking and the leaving) while the difference of the
    saved case at ``name`` still shows; the smallest case goes to ``<name>.min.json``."""
    data = json.loads(Path(name).read_text())
    case = case_from_json(data.get("case", data))
    wanted: set[str] = set()
    for _ in range(tries):
        first = run_case(postgres, pooler.address, case)
        wanted = {f"{d.check}: {d.signature}" for d in first.differences}
        if _wedged(first):
            pooler.restart()
        if wanted:
            break
    if not wanted:
        print(f"=== {name}: no difference on {pooler.name} in {tries} runs; nothing to minimize")
        return None
    print(f"=== {name}: minimizing {sorted(wanted)}")
    for simpler in (Chunking(), None):
        candidate = (
            replace(case, chunking=simpler)
            if isinstance(simpler, Chunking)
            else replace(case, leave_after=None)
        )
        if candidate != case and _reproduces(postgres, pooler, candidate, wanted, tries):
            case = candidate
    changed = True
    while changed:
        changed = False
        for i in range(len(case.steps)):
            steps = case.steps[:i] + case.steps[i + 1 :]
            if not steps:
                continue
            candidate = replace(case, steps=steps)
            if _reproduces(postgres, pooler, candidate, wanted, tries):
                case = candidate
                changed = True
                break
    out = Path(f"{name.removesuffix('.json')}.min.json")
    out.write_text(json.dumps({"case": case_to_json(case), "signatures": sorted(wanted)}, indent=1))
    print(f"{case_snippet(case)}\n-> {out}")
    return out


@contextlib.contextmanager
def environment(
    out: Path, sizes: list[int], modes: list[str], standbys: int
) -> Iterator[tuple[LocalCluster, list[Pooler]]]:
    cluster = LocalCluster(server_tempdir("pooler-fuzz-"), standbys=standbys)
    poolers: list[Pooler] = []
    try:
        cluster.start()
        prepare_database(address_of(cluster.primary))
        for mode in modes:
            for size in sizes:
                pooler = Pooler(f"{mode}-pool{size}", cluster, size, out, mode)
                poolers.append(pooler)
                pooler.start()
        yield cluster, poolers
    finally:
        for pooler in poolers:
            pooler.stop()
        cluster.destroy()


def summary(tally: Tally, cluster: LocalCluster, poolers: list[Pooler], took: float) -> None:
    print(f"\n== {tally.cases} cases in {took:.1f} s")
    print(
        f"cases with a difference: {tally.differing_cases}; harness errors: {tally.harness_errors}"
    )
    if tally.by_signature:
        print(f"differences by signature ({len(tally.by_signature)}):")
        for signature, n in tally.by_signature.most_common():
            print(f"  {n:6}  {signature}\n          e.g. {tally.first_file[signature]}")
    else:
        print("no differences")
    if tally.restarts:
        print(f"pooler restarts after a hurt next client: {dict(tally.restarts)}")
    # Longer than pool.connect_timeout, which bounds a reset.
    busy = busy_servers(cluster, wait=7.0)
    print(f"server connections of app not idle after all clients left: {len(busy)}")
    for port, what in busy:
        holders = [p.name for p in poolers if port in p.sockets()] or ["no pooler"]
        print(f"  {what} (held by {', '.join(holders)})")
    print(f"server connections of app open: {app_backends(cluster)}")
    for pooler in poolers:
        hurt = probe_every_server(pooler.address, pooler.size)
        print(
            f"{pooler.name}: {pooler.size} clients at once, each on a server of the pool:"
            f" {pooler.size - len(hurt)} got exactly their answers"
        )
        for _, stream in hurt:
            print(render_stream(stream))
    for pooler in poolers:
        problems = pooler.log_problems()
        print(f"{pooler.name}: {sum(problems.values())} tracebacks and errors in its logs")
        for line, n in problems.most_common(10):
            print(f"  {n:6}  {line}")
        rss = ", ".join(
            f"{when} {'?' if kib is None else f'{kib / 1024:.1f} MB'}"
            for when, kib in tally.rss[pooler.name]
        )
        print(f"{pooler.name} resident memory: {rss}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000, help="generated cases to run")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed")
    parser.add_argument("--out", type=Path, default=Path("fuzz-out"), help="output directory")
    parser.add_argument("--pool-sizes", default="1,5", help="one pooler per size (default 1,5)")
    parser.add_argument(
        "--modes", default="transaction,session", help="pool modes (default both)"
    )
    parser.add_argument("--max-blocks", type=int, default=5, help="blocks per pipeline")
    parser.add_argument(
        "--standbys", type=int, default=2, help="streaming standbys reads may go to (default 2)"
    )
    parser.add_argument("--replay", nargs="+", metavar="FILE", help="replay saved cases")
    parser.add_argument(
        "--minimize",
        nargs="+",
        metavar="FILE",
        help="drop steps from saved cases while their difference still shows (on the first"
        " pool size); writes FILE.min.json",
    )
    parser.add_argument(
        "--tries", type=int, default=3, help="--minimize: runs before a step counts as needed"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each difference")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.pool_sizes.split(",") if x.strip()]
    modes = [x.strip() for x in args.modes.split(",") if x.strip()]
    # scripts/fuzz runs from the repository; relative paths are the caller's.
    base = Path(os.environ.get("FUZZ_CWD", "."))
    out: Path = (base / args.out).absolute()
    if args.replay or args.minimize:
        # Only the poolers' configs and logs go there.
        out = Path(tempfile.mkdtemp(prefix="pooler-fuzz-replay-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"starting a cluster and poolers (pool sizes {sizes}); output in {out}")
    with environment(out, sizes, modes, args.standbys) as (cluster, poolers):
        postgres = address_of(cluster.primary)
        if args.replay:
            files = [str(base / name) for name in args.replay]
            return 1 if replay(postgres, poolers, files) else 0
        if args.minimize:
            for name in args.minimize:
                minimize(postgres, poolers[0], str(base / name), args.tries)
            return 0
        tally = Tally(out)
        note_rss(tally, poolers, "start")
        say(f"running {args.cases} cases, seed {args.seed}")
        try:
            fuzz(tally, postgres, poolers, args.cases, args.seed, args.max_blocks, args.verbose)
        except KeyboardInterrupt:
            say("interrupted")
        note_rss(tally, poolers, "end")
        summary(tally, cluster, poolers, time.monotonic() - started)
        return 1 if tally.by_signature or tally.harness_errors else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
