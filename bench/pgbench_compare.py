"""pgbench through direct PostgreSQL, the pooler, a blind relay, PgBouncer and pgpool-II.

Usage: ``bench/pgbench_compare [--routing] [--repeats 3] [--duration 10]
[--clients 1,16,64] [--modes simple,extended] [--scripts select-only,tpcb-like]
[--targets direct,pooler,relay,pgbouncer,pgpool] [--scale 10]`` (see ``bench/README.md``).
One fresh LocalCluster (primary + 2 standbys) in a temporary directory, ``pgbench -i``
once, every target started once with its own config files in that directory, then the
runs interleaved: for each repeat, for each script, mode and client count, every target
one after the other, so that machine drift hits all of them alike. Without ``--routing``
the pooler sends everything to the primary; with it, reads go to the standbys too.

Progress goes to stderr, one line per run; a Markdown table goes to stdout: median TPS over
the repeats, the ratio to direct PostgreSQL and to PgBouncer, and each proxy's own CPU
time per transaction (utime + stime from /proc of every process of that proxy, divided by
the transactions pgbench reports). Everything started is stopped and the directory removed
at the end, on errors and on Ctrl-C as well.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import yaml

from pooler.localcluster import (
    SERVER_OS_USER,
    ClusterError,
    LocalCluster,
    find_bindir,
    find_free_ports,
    server_tempdir,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RELAY_SCRIPT = BENCH_DIR / "relay.py"

ALL_TARGETS = ("direct", "pooler", "relay", "pooler-unix", "relay-unix", "pgbouncer", "pgpool")
#: Proxies that reach the primary through its Unix socket instead of TCP.
UNIX_TARGETS = frozenset({"pooler-unix", "relay-unix"})
MODES = ("simple", "extended", "prepared")
#: pgbench's builtin scripts: -S, and the default TPC-B-like transaction.
SCRIPTS = ("select-only", "tpcb-like")
USER = "postgres"
PASSWORD = "postgres"
DATABASE = "bench"
#: The proxies that have an OS package, and the package that brings them.
PACKAGES = {"pgbouncer": ("pgbouncer", "pgbouncer"), "pgpool": ("pgpool2", "pgpool")}
INSTALL_HINT = "apt-get update && apt-get install -y pgbouncer pgpool2"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
READY_TIMEOUT = 60.0
READY_QUERY = "SELECT count(*) FROM pgbench_branches"
#: The bar from DESIGN.md "Budgets": throughput at least this share of the relay's.
RELAY_BAR = 0.9
SUMMARY_CLIENTS = 16
#: The routing bars of the issue, at -S and SUMMARY_CLIENTS: the pooler's TPS over
#: pgpool-II's (load balancing on), per mode.
PGPOOL_BARS = {"simple": 1.4, "extended": 2.0}
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why and what to do."""


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- CPU time from /proc --------------------------------------------------------------


def _proc_stats() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, user ticks, system ticks) for every process.

    User is utime + cutime, system stime + cstime: the c- fields hold the CPU of children
    already reaped, so a process tree's sum stays right when one of its workers exits
    between two readings.
    """
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        user = int(fields[11]) + int(fields[13])
        system = int(fields[12]) + int(fields[14])
        stats[int(entry.name)] = (int(fields[1]), user, system)
    return stats


def trees_cpu_seconds(roots: Sequence[int]) -> list[tuple[float, float]]:
    """(user, system) CPU seconds used so far by each root and every process below it."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    sums = []
    for root in roots:
        user = system = 0
        todo = [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                user += stats[pid][1]
                system += stats[pid][2]
                todo.extend(children.get(pid, ()))
        sums.append((user / CLK_TCK, system / CLK_TCK))
    return sums


def tree_cpu_seconds(root: int) -> tuple[float, float]:
    """(user, system) CPU seconds used so far by ``root`` and every process below it."""
    return trees_cpu_seconds([root])[0]


# --- packages and programs ------------------------------------------------------------


def find_program(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories (Debian puts daemons there)."""
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def missing_packages(targets: Sequence[str]) -> dict[str, str]:
    """target -> Debian package, for the selected targets whose program is not installed."""
    return {
        target: package
        for target, (package, program) in PACKAGES.items()
        if target in targets and find_program(program) is None
    }


def install_packages(packages: Sequence[str]) -> None:
    """apt-get install ``packages``; then stop the system services they start."""
    if os.geteuid() != 0:
        raise BenchError(f"--install needs root; run as root: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
        say(f"running: {' '.join(cmd)}")
        if subprocess.run(cmd, env=env, stdout=sys.stderr).returncode != 0:
            raise BenchError(f"{' '.join(cmd)} failed")
    # The packages start services on their default ports and configs. We never use
    # those, but they would take CPU from the runs: stop them where a service manager is.
    for service in packages:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                ["service", service, "stop"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )


def program_version(cmd: Sequence[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip().splitlines()
        if text:
            return text[0].strip()
    return "?"


def pooler_revision() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(
            ["git", "-C", str(REPO_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if rev:
            return rev
    return "?"


# --- the targets ----------------------------------------------------------------------


@dataclass
class Target:
    """Somewhere pgbench connects to; ``pid`` is the root of the proxy's process tree."""

    name: str
    port: int
    pid: int | None = None
    log: Path | None = None


@dataclass
class Services:
    """The processes this script started, stopped in reverse order by ``stop_all``."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, cmd: Sequence[str], log: Path, cwd: Path) -> int:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                list(cmd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                # Its own process group: Ctrl-C reaches us only, and killpg reaches every
                # worker it forks (pgpool-II's children).
                start_new_session=True,
            )
        self.procs.append((name, proc))
        return proc.pid

    def check_alive(self, target: Target) -> None:
        """Raise, with the end of its log, when the proxy behind ``target`` has exited."""
        for started, proc in self.procs:
            if started == target.name and proc.poll() is not None:
                raise BenchError(
                    f"{target.name} exited with status {proc.returncode}; its log"
                    f" ({target.log}):\n{_tail(target.log) if target.log else ''}"
                )

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # The group too: workers may outlive their parent.
            _signal_group(proc, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _server_account() -> pwd.struct_passwd | None:
    """The account the daemons run as when we are root (PgBouncer refuses root)."""
    return pwd.getpwnam(SERVER_OS_USER) if os.geteuid() == 0 else None


def _as_server(cmd: Sequence[str]) -> list[str]:
    if _server_account() is None:
        return list(cmd)
    # runuser's PAM session sets the soft open-files limit back to 1024: take the hard
    # one again, or PgBouncer refuses clients past about a thousand.
    raise_limit = 'ulimit -n "$(ulimit -Hn)" && exec "$@"'
    return ["runuser", "-u", SERVER_OS_USER, "--", "sh", "-c", raise_limit, "sh", *cmd]


def _server_dir(path: Path) -> Path:
    """A directory the daemons own (they write pid files, sockets and logs there)."""
    path.mkdir(mode=0o755)
    account = _server_account()
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    return path


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)
    account = _server_account()
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def start_pooler(
    services: Services,
    cluster: LocalCluster,
    workdir: Path,
    port: int,
    pool_size: int,
    overrides: Sequence[tuple[str, object]],
    name: str = "pooler",
    routing: bool | None = None,
) -> Target:
    """The pooler over every node of ``cluster``; ``routing`` sets load_balance.enabled.

    With routing on it pools transactions and sends reads to the standbys as well; off,
    everything goes to the primary; None leaves the pooler's defaults.
    """
    config = cluster.pooler_config(port)
    if name in UNIX_TARGETS:
        config["backends"] = [
            {"name": n.name, "host": n.host, "port": n.port, "unix_socket_dir": str(n.socket_dir)}
            for n in cluster.nodes
        ]
    pool: dict[str, object] = {"size": pool_size, "max_clients": max(1000, pool_size)}
    if routing:
        pool["mode"] = "transaction"
    config.update(users={USER: PASSWORD}, admin_users=[USER], pool=pool, log={"level": "warning"})
    if routing is not None:
        config["load_balance"] = {"enabled": routing}
    for dotted, value in overrides:
        section: dict[str, object] = config
        *parents, key = dotted.split(".")
        for parent in parents:
            child = section.setdefault(parent, {})
            if not isinstance(child, dict):
                raise BenchError(f"--pooler-set {dotted}: {parent} is not a section")
            section = child
        section[key] = value
    path = workdir / "pooler.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "pooler", "run", "--config", str(path)]
    pid = services.start(name, cmd, workdir / f"{name}.log", REPO_DIR)
    return Target(name, port, pid)


def start_relay(
    services: Services, cluster: LocalCluster, workdir: Path, port: int, name: str = "relay"
) -> Target:
    primary = cluster.primary
    host = str(primary.socket_dir) if name in UNIX_TARGETS else primary.host
    cmd = [sys.executable, str(RELAY_SCRIPT), str(port), host, str(primary.port)]
    pid = services.start(name, cmd, workdir / f"{name}.log", REPO_DIR)
    return Target(name, port, pid)


def start_pgbouncer(
    services: Services,
    cluster: LocalCluster,
    workdir: Path,
    port: int,
    pool_size: int,
    max_clients: int | None = None,
) -> Target:
    """PgBouncer in transaction mode, SCRAM to clients and to the primary."""
    program = find_program("pgbouncer")
    assert program is not None
    primary = cluster.primary
    _write(workdir / "userlist.txt", f'"{USER}" "{PASSWORD}"\n', 0o600)
    ini = workdir / "pgbouncer.ini"
    _write(
        ini,
        f"""\
[databases]
{DATABASE} = host={primary.host} port={primary.port} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
pidfile = {workdir / "pgbouncer.pid"}
auth_type = scram-sha-256
auth_file = {workdir / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {max_clients or max(1000, pool_size * 2)}
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
""",
    )
    cmd = _as_server([program, str(ini)])
    pid = services.start("pgbouncer", cmd, workdir / "pgbouncer.log", workdir)
    return Target("pgbouncer", port, pid)


def start_pgpool(
    services: Services,
    cluster: LocalCluster,
    workdir: Path,
    port: int,
    pcp_port: int,
    children: int,
    memqcache: bool = False,
) -> Target:
    """pgpool-II in streaming-replication mode over all nodes, reads load-balanced
    (``memqcache``: with its in-memory query cache in shared memory, 64 MB).

    SCRAM to clients (pool_hba.conf) and to the backends, both from the plain password
    in pool_passwd: pgpool-II can only log in to a SCRAM backend when it knows the
    password. Health checks and the replication-delay check are off (no CPU behind the
    runs' back); the primary is still found at start with sr_check_user.
    """
    program = find_program("pgpool")
    assert program is not None
    backends = "".join(
        f"backend_hostname{i} = '{node.host}'\n"
        f"backend_port{i} = {node.port}\n"
        f"backend_weight{i} = 1\n"
        f"backend_flag{i} = 'ALLOW_TO_FAILOVER'\n"
        f"backend_application_name{i} = '{node.name}'\n"
        for i, node in enumerate(cluster.nodes)
    )
    _write(workdir / "pool_passwd", f"{USER}:TEXT{PASSWORD}\n", 0o600)
    _write(
        workdir / "pool_hba.conf",
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    _write(workdir / "pcp.conf", "")
    memory_cache = "memory_cache_enabled = off\n"
    if memqcache:
        oiddir = _server_dir(workdir / "oiddir")
        memory_cache = f"""\
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 100000
memqcache_expire = 0
memqcache_auto_cache_invalidation = on
memqcache_maxcache = 1MB
memqcache_cache_block_size = 1MB
memqcache_oiddir = '{oiddir}'
"""
    conf = workdir / "pgpool.conf"
    _write(
        conf,
        f"""\
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{workdir}'
pcp_listen_addresses = ''
pcp_port = {pcp_port}
pcp_socket_dir = '{workdir}'
wd_ipc_socket_dir = '{workdir}'
pid_file_name = '{workdir / "pgpool.pid"}'
logdir = '{workdir}'
log_destination = 'stderr'
logging_collector = off
log_min_messages = warning
log_connections = off
log_statement = off
log_per_node_statement = off
enable_pool_hba = on
pool_passwd = 'pool_passwd'
{backends}
num_init_children = {children}
max_pool = 1
reserved_connections = 0
child_life_time = 0
child_max_connections = 0
connection_life_time = 0
client_idle_limit = 0
load_balance_mode = on
statement_level_load_balance = off
sr_check_period = 0
sr_check_user = '{USER}'
sr_check_password = '{PASSWORD}'
sr_check_database = 'postgres'
health_check_period = 0
failover_on_backend_error = off
use_watchdog = off
{memory_cache}""",
    )
    cmd = _as_server(
        [
            program,
            "-n",
            "-D",
            "-f",
            str(conf),
            "-a",
            str(workdir / "pool_hba.conf"),
            "-F",
            str(workdir / "pcp.conf"),
        ]
    )
    pid = services.start("pgpool", cmd, workdir / "pgpool.log", workdir)
    return Target("pgpool", port, pid)


# --- pgbench ----------------------------------------------------------------------------


def pgbench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=PASSWORD, PGSSLMODE="disable", PGCONNECT_TIMEOUT="10")
    return env


def connect_args(host: str, port: int) -> list[str]:
    """pgbench's connection options and database, for ``host:port`` over TCP."""
    return ["-h", host, "-p", str(port), "-U", USER, DATABASE]


def psql_command(port: int, sql: str) -> list[str]:
    """psql running ``sql`` through 127.0.0.1:``port``; unaligned, tab-separated output."""
    return ["psql", "-X", "-At", "-F", "\t", "-c", sql, *connect_args("127.0.0.1", port)]


def wait_ready(target: Target, services: Services) -> None:
    """Until a real query through ``target`` works (auth and a backend included)."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        services.check_alive(target)
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", target.port), timeout=1),
        ):
            out = subprocess.run(
                psql_command(target.port, READY_QUERY),
                capture_output=True,
                text=True,
                env=pgbench_env(),
                timeout=30,
            )
            if out.returncode == 0:
                return
            last = out.stderr.strip()
        time.sleep(0.2)
    raise BenchError(
        f"{target.name} on port {target.port} did not answer a query within"
        f" {READY_TIMEOUT:.0f} s ({last or 'no connection'}); its log ({target.log}):\n"
        + (_tail(target.log) if target.log else "")
    )


@dataclass
class Run:
    """One pgbench run."""

    repeat: int
    mode: str
    clients: int
    target: str
    tps: float | None = None
    transactions: int | None = None
    failed: int | None = None
    cpu_seconds: float | None = None
    #: The user-mode part of cpu_seconds (the rest is the kernel: syscalls, TCP).
    cpu_user_seconds: float | None = None
    error: str | None = None
    #: pgbench's builtin script (SCRIPTS).
    script: str = "select-only"
    #: CPU seconds of each PostgreSQL node's process tree during the run, primary first.
    node_cpu_seconds: list[float] | None = None

    @property
    def cpu_us_per_txn(self) -> float | None:
        if self.cpu_seconds is None or not self.transactions:
            return None
        return self.cpu_seconds * 1e6 / self.transactions

    @property
    def cpu_user_us_per_txn(self) -> float | None:
        if self.cpu_user_seconds is None or not self.transactions:
            return None
        return self.cpu_user_seconds * 1e6 / self.transactions


def describe(run: Run) -> str:
    """The progress line's end: target, TPS, CPU (and its user-mode part), failures."""
    text = f"{run.target}: {run.tps or 0:.0f} tps"
    if (cpu := run.cpu_us_per_txn) is not None:
        text += f", {cpu:.1f} us/txn CPU ({run.cpu_user_us_per_txn or 0:.1f} user)"
    if run.failed:
        text += f", {run.failed} FAILED"
    if run.error:
        text += f", ERROR {run.error}"
    return text


_TPS = re.compile(r"^tps = ([0-9.]+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def parse_pgbench(out: str, run: Run) -> None:
    """Fill ``run`` from pgbench's report (PostgreSQL 15 format)."""
    if m := _TPS.search(out):
        run.tps = float(m.group(1))
    if m := _PROCESSED.search(out):
        run.transactions = int(m.group(1))
    # pgbench before 15 has no such line: its errors abort the client instead.
    run.failed = int(m.group(1)) if (m := _FAILED.search(out)) else 0


def unsupported(target: str, mode: str) -> str | None:
    """Why ``target`` cannot run pgbench in ``mode``, or None when it can."""
    if target == "pgbouncer" and mode == "prepared":
        # Protocol-level prepared statements in transaction mode came with PgBouncer 1.21
        # (max_prepared_statements); Debian 12 has 1.18.
        return "PgBouncer in transaction mode cannot run -M prepared"
    return None


def pgbench(
    target: Target,
    mode: str,
    clients: int,
    duration: int,
    run: Run,
    timeout: float,
    nodes: Sequence[int] = (),
) -> None:
    """pgbench ``run.script`` through ``target``; ``nodes``: postmaster pids to measure."""
    jobs = min(clients, 2)
    script = ["-S"] if run.script == "select-only" else []
    cmd = ["pgbench", "-n", *script, "-M", mode, "-c", str(clients), "-j", str(jobs)]
    cmd += ["-T", str(duration), *connect_args("127.0.0.1", target.port)]
    roots = [*nodes, *([target.pid] if target.pid is not None else [])]
    before = trees_cpu_seconds(roots)
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=pgbench_env(), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        run.error = f"pgbench did not finish within {timeout:.0f} s"
        return
    used = [
        (user - user0, user + system - user0 - system0)
        for (user, system), (user0, system0) in zip(trees_cpu_seconds(roots), before, strict=True)
    ]
    if nodes:
        run.node_cpu_seconds = [total for _, total in used[: len(nodes)]]
    if target.pid is not None:
        run.cpu_user_seconds, run.cpu_seconds = used[-1]
    judge(run, out.returncode, out.stdout, out.stderr, duration)


def judge(run: Run, status: int, stdout: str, stderr: str, duration: int) -> None:
    """Fill ``run`` from a finished pgbench: its numbers, or what went wrong."""
    parse_pgbench(stdout, run)
    if status == 0 and not run.transactions:
        # pgbench prints no tps line then: -T ran out while the clients were connecting.
        run.tps = None
        run.error = f"no transaction completed in {duration} s (connecting took longer?)"
    elif status != 0 or run.tps is None:
        # The last line pgbench wrote to stderr says why; failing that, to stdout.
        lines = [ln for ln in stderr.splitlines() if ln.strip()] or [
            ln for ln in stdout.splitlines() if ln.strip()
        ]
        run.error = f"pgbench exit status {status}: {lines[-1] if lines else 'no output'}"


# --- the report -------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass
class Cell:
    """The runs of one (mode, clients, target), summarised."""

    tps: float | None
    spread: float | None
    cpu_us: float | None
    failed: int
    errors: int


def summarise(runs: Sequence[Run]) -> Cell:
    good = [r for r in runs if r.error is None and r.tps is not None]
    tps = [r.tps for r in good if r.tps is not None]
    cpu = [c for r in good if (c := r.cpu_us_per_txn) is not None]
    median = _median(tps)
    spread = (max(tps) - min(tps)) / median if median and len(tps) > 1 else None
    return Cell(
        tps=median,
        spread=spread,
        cpu_us=_median(cpu),
        failed=sum(r.failed or 0 for r in runs),
        errors=len(runs) - len(good),
    )


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "—"
    return f"{value / base:.2f}x"


def _versus(
    cells: Mapping[tuple[str, int, str], Cell],
    mode: str,
    count: int,
    ours: str,
    theirs: str,
    bar: float | None,
) -> str:
    """``ours`` against ``theirs``: TPS ratio, CPU per transaction, and the bar if any."""
    mine, other = cells.get((mode, count, ours)), cells.get((mode, count, theirs))
    what = f"{ours} vs {theirs}, {mode}, c={count}"
    if not mine or not other or not mine.tps or not other.tps:
        return f"{what}: no result"
    ratio = mine.tps / other.tps
    cpu = ""
    if mine.cpu_us is not None and other.cpu_us is not None:
        cpu = f"; CPU {mine.cpu_us:.1f} vs {other.cpu_us:.1f} us/txn"
    line = f"{what}: {ratio:.2f}x TPS ({mine.tps:.0f} vs {other.tps:.0f}{cpu})"
    if bar is not None:
        line += f"; {'meets' if ratio >= bar else 'misses'} the {bar}x bar"
    return line


def render_table(
    runs: Sequence[Run],
    modes: Sequence[str],
    clients: Sequence[int],
    targets: Sequence[str],
    pgpool_bars: Mapping[str, float] | None = None,
) -> list[str]:
    """The Markdown table of ``runs`` (one script), then the pooler against the relay
    (RELAY_BAR) and against pgpool-II (``pgpool_bars``, per mode, when given)."""
    cells: dict[tuple[str, int, str], Cell] = {}
    for mode in modes:
        for count in clients:
            for target in targets:
                picked = [r for r in runs if (r.mode, r.clients, r.target) == (mode, count, target)]
                if picked:
                    cells[mode, count, target] = summarise(picked)
    lines = [
        "| mode | clients | target | TPS | spread | x direct | x PgBouncer | x pgpool-II"
        " | CPU us/txn |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    not_run: set[str] = set()
    for mode in modes:
        for count in clients:
            bases = [cells.get((mode, count, t)) for t in ("direct", "pgbouncer", "pgpool")]
            for target in targets:
                cell = cells.get((mode, count, target))
                if cell is None:
                    if why := unsupported(target, mode):
                        not_run.add(why)
                        lines.append(f"| {mode} | {count} | {target} | n/a |{' — |' * 5}")
                    continue
                tps = "error" if cell.tps is None else f"{cell.tps:.0f}"
                if cell.failed:
                    tps += f" ({cell.failed} FAILED txns)"
                if cell.errors and cell.tps is not None:
                    tps += f" ({cell.errors} runs errored)"
                spread = "—" if cell.spread is None else f"{cell.spread * 100:.0f}%"
                cpu = "—" if cell.cpu_us is None else f"{cell.cpu_us:.1f}"
                ratios = " | ".join(_ratio(cell.tps, b.tps if b else None) for b in bases)
                lines.append(
                    f"| {mode} | {count} | {target} | {tps} | {spread} | {ratios} | {cpu} |"
                )
    lines.extend(f"n/a: {why}" for why in sorted(not_run))
    lines.append("")
    count = SUMMARY_CLIENTS if SUMMARY_CLIENTS in clients else max(clients, default=0)
    pairs = [("pooler", "relay"), ("pooler-unix", "relay-unix")]
    if pgpool_bars is not None:
        pairs.append(("pooler", "pgpool"))
    for ours, theirs in pairs:
        if ours in targets and theirs in targets and clients:
            for mode in modes:
                bar = RELAY_BAR if theirs.startswith("relay") else (pgpool_bars or {}).get(mode)
                lines.append(_versus(cells, mode, count, ours, theirs, bar))
    errors = [r for r in runs if r.error or r.failed]
    if errors:
        lines.append("")
        lines.append("Runs with errors or failed transactions:")
        for r in errors:
            what = r.error or f"{r.failed} failed transactions"
            lines.append(f"- repeat {r.repeat} {r.mode} c={r.clients} {r.target}: {what}")
    return lines


def render_node_cpu(runs: Sequence[Run], targets: Sequence[str], clients: int) -> str | None:
    """Where each target's load ran: the nodes' shares of PostgreSQL's CPU in its runs at
    ``clients`` clients (all modes), primary first."""
    parts = []
    for target in targets:
        used = [r.node_cpu_seconds for r in runs if r.target == target and r.clients == clients]
        totals = [sum(col) for col in zip(*(u for u in used if u), strict=True)]
        if sum(totals) > 0:
            parts.append(f"{target} {'/'.join(f'{t * 100 / sum(totals):.0f}' for t in totals)}%")
    if not parts:
        return None
    return (
        f"PostgreSQL CPU by node (primary/standby1/standby2...) in the runs at c={clients}: "
        + ", ".join(parts)
    )


# --- the whole run ----------------------------------------------------------------------


def _csv(
    kind: Callable[[str], object], choices: Sequence[str] | None = None
) -> Callable[[str], list[object]]:
    def parse(text: str) -> list[object]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if choices is not None:
            for item in items:
                if item not in choices:
                    raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(choices)}")
        try:
            values = [kind(item) for item in items]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return list(dict.fromkeys(values))

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"{text} is not a positive integer")
    return value


def _pooler_setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. pool.mode=session")
    return key.strip(), yaml.safe_load(value)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/pgbench_compare",
        description="pgbench through direct PostgreSQL, the pooler, a blind relay,"
        " PgBouncer and pgpool-II, interleaved; prints a Markdown table.",
    )
    parser.add_argument(
        "--routing",
        action="store_true",
        help="the pooler pools transactions and sends reads to both standbys too"
        " (load_balance on), as pgpool-II does; without it, it sends everything to the"
        " primary. Direct, the relay and PgBouncer use the primary either way",
    )
    parser.add_argument("--repeats", type=_positive, default=3, help="default 3")
    parser.add_argument(
        "--duration", type=_positive, default=10, help="pgbench -T, seconds; default 10"
    )
    parser.add_argument(
        "--clients", type=_csv(_positive), default=[1, 16, 64], help="default 1,16,64"
    )
    parser.add_argument(
        "--modes",
        type=_csv(str, MODES),
        default=["simple", "extended"],
        help="pgbench -M: simple, extended, prepared; default simple,extended",
    )
    parser.add_argument(
        "--scripts",
        type=_csv(str, SCRIPTS),
        default=["select-only"],
        help="pgbench builtin scripts: select-only (-S), tpcb-like; default select-only",
    )
    parser.add_argument(
        "--tpcb-clients",
        type=_csv(_positive),
        help="client counts for tpcb-like; default those of --clients",
    )
    parser.add_argument(
        "--tpcb-modes",
        type=_csv(str, MODES),
        help="modes for tpcb-like; default those of --modes",
    )
    parser.add_argument(
        "--targets",
        type=_csv(str, ALL_TARGETS),
        default=list(ALL_TARGETS),
        help=f"default {','.join(ALL_TARGETS)}",
    )
    parser.add_argument("--scale", type=_positive, default=10, help="pgbench -i -s; default 10")
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="seconds of unrecorded pgbench per target before the first repeat (at the"
        " largest client count, so every pool fills); 0: none; default 5",
    )
    parser.add_argument(
        "--install",
        action="store_true",
        help=f"install missing packages with apt-get (root): {INSTALL_HINT}",
    )
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out pgbouncer/pgpool when their package is missing, instead of"
        " failing (for the smoke test; the output says what was left out)",
    )
    parser.add_argument(
        "--pooler-set",
        type=_pooler_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the pooler's config (dotted, value read as YAML),"
        " e.g. --pooler-set pool.mode=transaction; repeatable",
    )
    parser.add_argument("--json", type=Path, help="also write every run's raw numbers here")
    return parser.parse_args(argv)


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def resolve_targets(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The targets to run and notes on those left out; raises when a package is missing."""
    targets: list[str] = list(args.targets)
    missing = missing_packages(targets)
    if missing and args.install:
        install_packages(sorted(set(missing.values())))
        missing = missing_packages(targets)
    notes = []
    if missing:
        listing = ", ".join(f"{t} (Debian package {p!r})" for t, p in missing.items())
        if not args.skip_missing:
            raise BenchError(
                f"not installed: {listing}. Install with: {INSTALL_HINT}"
                " (or rerun with --install, as root), or leave them out with --targets"
            )
        for target, package in missing.items():
            notes.append(
                f"SKIPPED {target}: Debian package {package!r} is not installed ({INSTALL_HINT})"
            )
            targets.remove(target)
    for program in ("pgbench", "psql"):
        if shutil.which(program) is None:
            raise BenchError(f"{program} not found on PATH (PostgreSQL client package)")
    return targets, notes


def setup_cluster(cluster: LocalCluster, scale: int) -> None:
    cluster.start()
    primary = cluster.primary
    say(f"pgbench -i -s {scale} on the primary")
    init = subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(scale), *connect_args(primary.host, primary.port)],
        capture_output=True,
        text=True,
        env=pgbench_env(),
    )
    if init.returncode != 0:
        raise BenchError(f"pgbench -i failed:\n{init.stderr.strip()}")
    lsn = primary.psql("CHECKPOINT; SELECT pg_current_wal_lsn()", dbname=DATABASE).split()[-1]
    deadline = time.monotonic() + 120
    for node in cluster.standbys:
        while node.psql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'") != "t":
            if time.monotonic() > deadline:
                raise BenchError(f"{node.name} did not replay the pgbench tables in 120 s")
            time.sleep(0.1)


def start_targets(
    targets: Sequence[str],
    services: Services,
    cluster: LocalCluster,
    workdir: Path,
    pool_size: int,
    pooler_set: Sequence[tuple[str, object]],
    versions: list[str],
    routing: bool = False,
) -> dict[str, Target]:
    """Start every proxy in ``targets``, each in a directory of its own, and wait for all."""
    ports = iter(find_free_ports(len(ALL_TARGETS) + 1))
    started: dict[str, Target] = {}
    for name in targets:
        if name == "direct":
            started[name] = Target("direct", cluster.primary.port)
            continue
        sub = _server_dir(workdir / name)
        if name in ("pooler", "pooler-unix"):
            target = start_pooler(
                services, cluster, sub, next(ports), pool_size, pooler_set, name, routing
            )
        elif name in ("relay", "relay-unix"):
            target = start_relay(services, cluster, sub, next(ports), name)
        elif name == "pgbouncer":
            versions.append(program_version([find_program("pgbouncer") or "", "-V"]))
            target = start_pgbouncer(services, cluster, sub, next(ports), pool_size)
        else:
            versions.append(program_version([find_program("pgpool") or "", "--version"]))
            # A few children more than clients: one that is still resetting after the
            # previous run must not make a new client wait.
            target = start_pgpool(services, cluster, sub, next(ports), next(ports), pool_size + 4)
        target.log = sub / f"{name}.log"
        started[name] = target
    for name, target in started.items():
        if target.log is not None:
            wait_ready(target, services)
        say(f"{name} ready on port {target.port}")
    return started


def plan(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """Every (script, mode, clients) to run, in the order of the runs."""
    cells: list[tuple[str, str, int]] = []
    for script in args.scripts:
        tpcb = script == "tpcb-like"
        modes = (args.tpcb_modes if tpcb else None) or args.modes
        clients = (args.tpcb_clients if tpcb else None) or args.clients
        cells.extend((script, mode, count) for mode in modes for count in clients)
    return cells


def planned_runs(args: argparse.Namespace, targets: Sequence[str]) -> int:
    """How many measured runs ``args`` asks for (unsupported ones left out)."""
    supported = (unsupported(name, mode) is None for _, mode, _ in plan(args) for name in targets)
    repeats: int = args.repeats
    return repeats * sum(supported)


def run_matrix(
    args: argparse.Namespace,
    targets: Sequence[str],
    started: dict[str, Target],
    services: Services,
    runs: list[Run],
    nodes: Sequence[int] = (),
) -> None:
    """Warm up, then every (repeat, script, mode, clients, target), appending to ``runs``;
    ``nodes``: the postmasters whose CPU each run records."""
    cells = plan(args)
    timeout = args.duration + 120.0
    if args.warmup > 0:
        most = max(count for _, _, count in cells)
        for name in targets:
            mode = next((m for m in args.modes if unsupported(name, m) is None), "simple")
            warm = Run(0, mode, most, name)
            pgbench(started[name], mode, most, args.warmup, warm, timeout)
            result = warm.error or f"{warm.tps or 0:.0f} tps"
            say(f"warm-up {name} c={most}: {result}")
    total = planned_runs(args, targets)
    for repeat in range(1, args.repeats + 1):
        # Rotate the order each repeat, so that no target always runs first after a
        # change of mode or client count.
        shift = (repeat - 1) % len(targets)
        order = [*targets[shift:], *targets[:shift]]
        for script, mode, count in cells:
            for name in order:
                if unsupported(name, mode):
                    continue
                run = Run(repeat, mode, count, name, script=script)
                pgbench(started[name], mode, count, args.duration, run, timeout, nodes)
                runs.append(run)
                say(
                    f"[{len(runs)}/{total}] repeat {repeat} {script} {mode} c={count}"
                    f" {describe(run)}"
                )
                services.check_alive(started[name])


def pgpool_reads(target: Target) -> str | None:
    """pgpool-II's SELECT count per node, to show its load balancing did spread reads."""
    out = subprocess.run(
        psql_command(target.port, "SHOW POOL_NODES"),
        capture_output=True,
        text=True,
        env=pgbench_env(),
        timeout=30,
    )
    if out.returncode != 0:
        return None
    # Columns: node_id hostname port status pg_status lb_weight role pg_role select_cnt ...
    rows = [line.split("\t") for line in out.stdout.splitlines() if line.count("\t") >= 8]
    return ", ".join(f"node {r[0]} ({r[6]}) {r[8]}" for r in rows) or None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        targets, notes = resolve_targets(args)
    except BenchError as exc:
        say(f"pgbench_compare: {exc}")
        return 2
    for note in notes:
        say(note)
    pool_size = max(64, *(count for _, _, count in plan(args)))
    runs: list[Run] = []
    services = Services()
    workdir = server_tempdir("pooler-bench-")
    interrupted = False
    versions = [f"pooler {pooler_revision()}"]
    cluster: LocalCluster | None = None
    with sigterm_as_interrupt():
        try:
            cluster = LocalCluster(
                workdir / "cluster",
                users={USER: PASSWORD},
                databases={DATABASE: USER},
                # Every pooling target keeps a server connection per client of the
                # largest run (pgpool-II one per child and node, a few children more),
                # and the unpooled targets' clients come on top.
                settings={"max_connections": str(len(targets) * (pool_size + 4) + 50)},
                progress=lambda line: say(f"cluster: {line}"),
            )
            versions.append(program_version([str(find_bindir() / "postgres"), "--version"]))
            setup_cluster(cluster, args.scale)
            started = start_targets(
                targets,
                services,
                cluster,
                workdir,
                pool_size,
                args.pooler_set,
                versions,
                args.routing,
            )
            nodes = [pid for n in cluster.nodes if (pid := n.postmaster_pid()) is not None]
            run_matrix(args, targets, started, services, runs, nodes)
            if "pgpool" in started and (reads := pgpool_reads(started["pgpool"])):
                notes.append(f"pgpool-II SELECTs per node (SHOW POOL_NODES): {reads}")
        except KeyboardInterrupt:
            interrupted = True
            say("interrupted: stopping everything")
        except (BenchError, ClusterError) as exc:
            say(f"pgbench_compare: {exc}")
            return 2
        finally:
            # A second Ctrl-C must not cut the clean-up short and leave servers behind.
            on_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            services.stop_all()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.destroy()
            shutil.rmtree(workdir, ignore_errors=True)
            if args.json is not None:
                args.json.write_text(json.dumps([asdict(r) for r in runs], indent=1) + "\n")
            signal.signal(signal.SIGINT, on_int)
    if runs:
        print_report(args, targets, runs, notes, versions, interrupted)
    bad = any(r.error or r.failed for r in runs)
    return 130 if interrupted else (1 if bad else 0)


def print_report(
    args: argparse.Namespace,
    targets: Sequence[str],
    runs: Sequence[Run],
    notes: Sequence[str],
    versions: Sequence[str],
    interrupted: bool,
) -> None:
    routing = (
        "routing on: the pooler (transaction pooling) and pgpool-II spread reads over the"
        " primary and 2 standbys; direct, relay and PgBouncer use the primary"
        if args.routing
        else "routing off: the pooler sends everything to the primary"
    )
    print(
        f"pgbench, scale {args.scale}, -T {args.duration}, {args.repeats} repeats"
        f" (median TPS; spread = (max - min) / median); {routing}; {'; '.join(versions)}"
    )
    cells = plan(args)
    total = planned_runs(args, targets)
    if interrupted:
        print(f"\nINTERRUPTED after {len(runs)} of {total} runs")
    for script in args.scripts:
        mine = [r for r in runs if r.script == script]
        modes = list(dict.fromkeys(m for s, m, _ in cells if s == script))
        clients = list(dict.fromkeys(c for s, _, c in cells if s == script))
        bars = PGPOOL_BARS if args.routing and script == "select-only" else None
        print(f"\n### {script} (pgbench{' -S' if script == 'select-only' else ''})\n")
        print("\n".join(render_table(mine, modes, clients, targets, bars)).rstrip())
        if line := render_node_cpu(mine, targets, max(clients)):
            print(f"\n{line}")
    for note in notes:
        print()
        print(note)


if __name__ == "__main__":
    sys.exit(main())
