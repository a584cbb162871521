"""A local PostgreSQL streaming-replication cluster: one primary and hot standbys.

Used by the test fixtures, ``pooler demo``, the benchmarks and the parser oracle. The
cluster lives in one directory::

    base_dir/primary/     data directory of the primary (log: postgresql.log inside)
    base_dir/standby1/    standbys, made with pg_basebackup from a replication slot each
    base_dir/sock/        unix sockets (or /tmp/pooler-sock-<hash> when that path is long)

``start()`` creates whatever is missing and reuses the rest, so running it again on the
same directory is fast. Every start rewrites ``pooler_node.conf`` in each data directory
(the ``include``d file with ports, socket directory and replication settings), so a
reused cluster may come up on other ports.

PostgreSQL refuses to run as root: when this process is root, every server program runs
as the ``postgres`` OS user, which must be able to reach ``base_dir``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal
from urllib.parse import quote

__all__ = [
    "SERVER_OS_USER",
    "ClusterError",
    "LocalCluster",
    "Node",
    "PortInUseError",
    "find_bindir",
    "find_free_ports",
    "port_is_free",
    "server_can_reach",
    "server_tempdir",
]

#: The OS user the servers run as when this process is root.
SERVER_OS_USER = "postgres"
#: The database superuser made by initdb; standbys replicate as this role.
SUPERUSER = "postgres"

_LOG_NAME = "postgresql.log"
_NODE_CONF = "pooler_node.conf"
# sun_path holds 108 bytes including the terminating NUL.
_SOCKET_PATH_MAX = 107
_LOG_TAIL_LINES = 15
_RAM_DIR = "/dev/shm"
_RAM_DIR_MIN_FREE = 2 * 1024**3

DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "127.0.0.1",
    "password_encryption": "scram-sha-256",
    "wal_level": "logical",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    # Benchmarks read on the standbys while the primary writes; feedback keeps vacuum on
    # the primary from cancelling those reads with recovery conflicts.
    "hot_standby_feedback": "on",
    # 64 benchmark clients plus the pools of a few poolers.
    "max_connections": "200",
    # Throwaway clusters: durability costs seconds per test run and buys nothing.
    "fsync": "off",
    "logging_collector": "off",
}

_PG_HBA = """\
# Written by pooler.localcluster. The unix socket trusts everyone: it is the fixture's
# own admin door. Every TCP connection, replication included, must pass SCRAM.
local   all          all                   trust
local   replication  all                   trust
host    all          all   127.0.0.1/32    scram-sha-256
host    all          all   ::1/128         scram-sha-256
host    replication  all   127.0.0.1/32    scram-sha-256
host    replication  all   ::1/128         scram-sha-256
"""


class ClusterError(RuntimeError):
    """A cluster could not be created, started or stopped; the message says why."""


class PortInUseError(ClusterError):
    """A fixed port that a node needs is taken by another process."""

    def __init__(self, port: int, node: str) -> None:
        super().__init__(f"port {port} (for node {node}) is already in use by another process")
        self.port = port
        self.node = node


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _server_account() -> pwd.struct_passwd:
    """The account the servers run as: ``postgres`` when root, else ourselves."""
    if not _running_as_root():
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(SERVER_OS_USER)
    except KeyError:
        raise ClusterError(
            f"running as root, but there is no {SERVER_OS_USER!r} OS user to run PostgreSQL"
            " as (PostgreSQL refuses to run as root)"
        ) from None


def find_bindir() -> Path:
    """Directory of the PostgreSQL server programs (initdb, pg_ctl, pg_basebackup).

    Tries ``pg_config --bindir``, then ``PATH``, then the newest
    ``/usr/lib/postgresql/*/bin`` (Debian keeps the server programs off ``PATH``).
    """
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out and (Path(out) / "initdb").exists():
                return Path(out)
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    raise ClusterError(
        "PostgreSQL server programs not found (no initdb via pg_config, PATH or"
        " /usr/lib/postgresql/*/bin); install the PostgreSQL server package"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` (TCP) and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same as PostgreSQL and the pooler: a port in TIME_WAIT is still usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def find_free_ports(count: int = 1, *, consecutive: bool = False) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now.

    With ``consecutive``, the ports are ``p, p+1, ...`` (for ``pooler demo --port-base``).
    """
    ports: list[int] = []
    for _ in range(1000):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if consecutive:
            candidate = list(range(port, port + count))
            if candidate[-1] < 65536 and all(port_is_free(p) for p in candidate):
                return candidate
        elif port not in ports:
            ports.append(port)
            if len(ports) == count:
                return ports
    raise ClusterError(f"could not find {count} free TCP ports on 127.0.0.1")


def _first_unreachable(path: Path) -> Path | None:
    """The first directory on the way to ``path`` the server account cannot search."""
    if not _running_as_root():
        return None
    account = _server_account()
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    path = path.absolute()
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            # We create the rest ourselves, with mode 0755.
            return None
        if st.st_uid == account.pw_uid:
            allowed = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            allowed = bool(st.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(st.st_mode & stat.S_IXOTH)
        if not allowed:
            return directory
    return None


def server_can_reach(path: Path | str) -> bool:
    """Whether the OS user the servers run as can reach ``path`` (always true unless root)."""
    return _first_unreachable(Path(path)) is None


def server_tempdir(prefix: str = "pooler-") -> Path:
    """A new empty directory the servers can use (mode 0755); the caller removes it.

    In /dev/shm when it has room: a cluster is some 3,000 small files, and creating them
    on the disk of our 2-core test VM took 3 of the 4 seconds a cluster needed in /tmp.
    """
    parent = None
    with contextlib.suppress(OSError):
        # Docker gives containers a 64 MB /dev/shm: too small for a few clusters.
        if shutil.disk_usage(_RAM_DIR).free >= _RAM_DIR_MIN_FREE:
            parent = _RAM_DIR
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    path.chmod(0o755)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_ident(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _Runner:
    """Runs PostgreSQL programs as the server account, with a clean environment."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        account = _server_account()
        self.uid = account.pw_uid
        self.gid = account.pw_gid
        self.groups = os.getgrouplist(account.pw_name, account.pw_gid)
        # PG* variables of the caller's shell (PGHOST, PGPORT, PGPASSWORD...) would
        # silently redirect our admin connections.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env.update(HOME=account.pw_dir, LC_ALL="C", LANG="C")

    def popen(self, args: Sequence[str | Path], *, detach: bool = False) -> subprocess.Popen[str]:
        """Start ``bindir/args[0] args[1:]``; ``detach`` puts it in a session of its own."""
        cmd = [str(self.bindir / str(args[0])), *map(str, args[1:])]
        as_server: dict[str, object] = {}
        if _running_as_root():
            as_server = {"user": self.uid, "group": self.gid, "extra_groups": self.groups}
        if not Path(cmd[0]).exists():
            raise ClusterError(f"PostgreSQL program {cmd[0]} not found")
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd="/",
            env=self.env,
            # A server started from a terminal would get the user's Ctrl-C too and shut
            # down behind our back; we stop it ourselves, in order.
            start_new_session=detach,
            **as_server,
        )

    def run_all(
        self,
        jobs: Sequence[tuple[Sequence[str | Path], str, Path | None]],
        *,
        timeout: float = 120,
        detach: bool = False,
        stdin: str | None = None,
    ) -> list[str]:
        """Run (args, description, log file) jobs in parallel; return their outputs.

        Raises ClusterError naming the first job that failed, with its stderr and the
        tail of its log file.
        """
        procs = [self.popen(args, detach=detach) for args, _, _ in jobs]
        outputs: list[tuple[int, str, str]] = []
        try:
            for proc in procs:
                out, err = proc.communicate(stdin, timeout=timeout)
                outputs.append((proc.returncode, out, err))
        except subprocess.TimeoutExpired:
            failed = jobs[len(outputs)]
            raise ClusterError(f"{failed[1]} did not finish within {timeout:.0f} s") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for (_, what, log), (code, _, err) in zip(jobs, outputs, strict=True):
            if code != 0:
                details = err.strip()
                if log is not None and (log_tail := _tail(log)):
                    details += f"\n--- {log} (last lines) ---\n{log_tail}"
                raise ClusterError(f"{what} failed (exit status {code})\n{details}".rstrip())
        return [out for _, out, _ in outputs]

    def run(
        self,
        args: Sequence[str | Path],
        what: str,
        *,
        log: Path | None = None,
        timeout: float = 120,
        stdin: str | None = None,
    ) -> str:
        """Run one program; see ``run_all``."""
        return self.run_all([(args, what, log)], timeout=timeout, stdin=stdin)[0]

    def make_dir(self, path: Path, mode: int) -> None:
        """Create ``path`` (and missing parents, mode 0755) owned by the server account."""
        for parent in reversed(path.parents):
            if not parent.exists():
                parent.mkdir(mode=0o755)
                parent.chmod(0o755)
        path.mkdir(mode=mode)
        path.chmod(mode)
        if _running_as_root():
            os.chown(path, self.uid, self.gid)

    def write_file(self, path: Path, text: str) -> None:
        """Write a file the server account owns (it edits some of them, e.g. on promote)."""
        path.write_text(text)
        if _running_as_root():
            os.chown(path, self.uid, self.gid)


@dataclass
class Node:
    """One PostgreSQL server of a LocalCluster."""

    name: str
    port: int
    datadir: Path
    socket_dir: Path
    host: str = "127.0.0.1"
    bindir: Path | None = field(default=None, repr=False, compare=False)

    def dsn(
        self, user: str = "postgres", password: str = "postgres", dbname: str = "postgres"
    ) -> str:
        """A libpq URI reaching this node over TCP (so it authenticates with SCRAM)."""
        return (
            f"postgresql://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{quote(dbname, safe='')}"
        )

    @property
    def log_path(self) -> Path:
        """The server log (``pg_ctl -l``)."""
        return self.datadir / _LOG_NAME

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server log, for error messages."""
        return _tail(self.log_path, lines)

    def postmaster_pid(self) -> int | None:
        """PID of this node's running postmaster, or None when it is not running."""
        try:
            lines = (self.datadir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) else None

    def running_port(self) -> int | None:
        """The port the running postmaster listens on (from postmaster.pid), if running."""
        if self.postmaster_pid() is None:
            return None
        try:
            return int((self.datadir / "postmaster.pid").read_text().splitlines()[3])
        except (OSError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        """Whether a postmaster is running on this data directory."""
        return self.postmaster_pid() is not None

    def psql(
        self, sql: str, *, user: str = SUPERUSER, dbname: str = "postgres", timeout: float = 60
    ) -> str:
        """Run SQL over the unix socket (trusted, no password); return unaligned output.

        Rows come one per line, columns separated by ``|``; raises ClusterError when the
        SQL fails.
        """
        runner = _Runner(self.bindir or find_bindir())
        out = runner.run(
            [
                "psql",
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.socket_dir,
                "-p",
                str(self.port),
                "-U",
                user,
                "-d",
                dbname,
                "-f",
                "-",
            ],
            f"psql on {self.name} (port {self.port})",
            timeout=timeout,
            stdin=sql,
        )
        return out.rstrip("\n")


class LocalCluster:
    """A primary and ``standbys`` streaming hot standbys in ``base_dir``.

    ``ports``: one per node (primary first); None picks free ports now. ``users``: role ->
    password (``postgres`` is the superuser, standbys replicate as it). ``databases``:
    database -> owner. ``settings``: postgresql.conf overrides (values are quoted for you).
    ``synchronous``: a quorum k above 0 makes replication synchronous once the standbys
    stream, ``synchronous_standby_names = 'ANY k (standby1, ...)'`` on every node (so a
    promoted standby keeps it). ``progress`` gets one line per step. Also a context
    manager: start on enter, stop on exit.
    """

    def __init__(
        self,
        base_dir: Path | str,
        *,
        standbys: int = 2,
        ports: list[int] | None = None,
        users: Mapping[str, str] | None = None,
        databases: Mapping[str, str] | None = None,
        settings: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
        bindir: Path | str | None = None,
        synchronous: int = 0,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.users: dict[str, str] = dict(
            users if users is not None else {"postgres": "postgres", "app": "app"}
        )
        self.databases: dict[str, str] = dict(
            databases if databases is not None else {"app": "app"}
        )
        if SUPERUSER not in self.users:
            raise ValueError(f"users must give the superuser {SUPERUSER!r} a password")
        for db, owner in self.databases.items():
            if owner not in self.users:
                raise ValueError(f"database {db!r} is owned by {owner!r}, who is not in users")
        self.settings: dict[str, str] = {**DEFAULT_SETTINGS, **(settings or {})}
        if synchronous > standbys:
            raise ValueError(f"synchronous: a quorum of {synchronous} out of {standbys} standbys")
        self.synchronous = synchronous
        # Off until the standbys stream (each start): the setup's commits would wait.
        self._sync_on = False
        self._progress = progress
        self._bindir = Path(bindir) if bindir is not None else None
        names = ["primary", *(f"standby{i}" for i in range(1, standbys + 1))]
        self._auto_ports = ports is None
        if ports is None:
            ports = find_free_ports(len(names))
        elif len(ports) != len(names):
            raise ValueError(f"ports: need {len(names)} (primary first), got {len(ports)}")
        socket_dir = self._socket_dir()
        self.nodes: list[Node] = [
            Node(name, port, self.base_dir / name, socket_dir, bindir=self._bindir)
            for name, port in zip(names, ports, strict=True)
        ]
        self.primary: Node = self.nodes[0]
        self.standbys: list[Node] = self.nodes[1:]

    def _socket_dir(self) -> Path:
        """``base_dir/sock`` unless the socket path would pass the kernel's limit."""
        local = self.base_dir / "sock"
        # The widest name a port can give, as a reused cluster may change ports.
        if len(str(local / ".s.PGSQL.65535")) <= _SOCKET_PATH_MAX:
            return local
        digest = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"pooler-sock-{digest}"

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            # __exit__ does not run when __enter__ fails: stop what did start.
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _say(self, line: str) -> None:
        if self._progress is not None:
            self._progress(line)

    def _runner(self) -> _Runner:
        if self._bindir is None:
            self._bindir = find_bindir()
            for node in self.nodes:
                node.bindir = self._bindir
        return _Runner(self._bindir)

    # -- start ---------------------------------------------------------------------

    def start(self) -> None:
        """Create what is missing, reuse what exists, start every node, wait for streaming."""
        started = time.monotonic()
        blocked = _first_unreachable(self.base_dir)
        if blocked is not None:
            raise ClusterError(
                f"the {SERVER_OS_USER!r} OS user cannot reach {self.base_dir}: {blocked} is"
                f" mode {blocked.stat().st_mode & 0o777:04o}; use a directory it can enter"
                " (e.g. under /tmp or /var/tmp)"
            )
        runner = self._runner()
        self._sync_on = False
        self._check_roles()
        self._prepare_ports(runner)
        if (self.primary.datadir / "PG_VERSION").exists():
            self._say(f"reusing the cluster in {self.base_dir}")
        else:
            self._init_primary(runner)
        socket_dir = self.primary.socket_dir
        if not socket_dir.is_dir():
            runner.make_dir(socket_dir, 0o755)
        elif socket_dir.is_symlink() or socket_dir.stat().st_uid != runner.uid:
            raise ClusterError(f"socket directory {socket_dir} belongs to someone else")
        self._write_node_conf(runner, self.primary)
        self._start_nodes(runner, [self.primary])
        self._setup_primary()
        missing = [n for n in self.standbys if not (n.datadir / "PG_VERSION").exists()]
        if missing:
            self._base_backups(runner, missing)
        for node in self.standbys:
            self._write_node_conf(runner, node)
        self._start_nodes(runner, self.standbys)
        if self.standbys:
            self._say("waiting for the standbys to stream")
            self.wait_streaming()
        if self.synchronous:
            self._say(f"synchronous replication: a quorum of {self.synchronous}")
            self._sync_on = True
            for node in self.nodes:
                self._write_node_conf(runner, node)
                node.psql("SELECT pg_reload_conf()")
        ports = ", ".join(f"{n.name} {n.port}" for n in self.nodes)
        self._say(f"cluster ready in {time.monotonic() - started:.1f} s ({ports})")

    def _check_roles(self) -> None:
        """Refuse a directory whose nodes swapped roles: a failover happened in it."""
        if (self.primary.datadir / "standby.signal").exists():
            promoted = "the primary is a standby now"
        else:
            swapped = [
                n.name
                for n in self.standbys
                if (n.datadir / "PG_VERSION").exists()
                and not (n.datadir / "standby.signal").exists()
            ]
            if not swapped:
                return
            promoted = f"{', '.join(swapped)} was promoted"
        raise ClusterError(
            f"the cluster in {self.base_dir} no longer has its original roles ({promoted});"
            f" remove that directory to start afresh"
        )

    def _init_primary(self, runner: _Runner) -> None:
        datadir = self.primary.datadir
        if datadir.exists():
            # A create that died half-way: nothing in it is worth keeping.
            shutil.rmtree(datadir)
        self._say(f"initdb of the primary in {datadir}")
        runner.make_dir(datadir, 0o700)
        runner.run(
            [
                "initdb",
                "-D",
                datadir,
                "-U",
                SUPERUSER,
                "--no-locale",
                "-E",
                "UTF8",
                "--no-sync",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ],
            "initdb",
        )
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n# Settings of pooler.localcluster, rewritten on every start.\n"
                f"include '{_NODE_CONF}'\n"
            )
        runner.write_file(datadir / "pg_hba.conf", _PG_HBA)

    def _prepare_ports(self, runner: _Runner) -> None:
        """Stop nodes running on other ports; make sure the ports we need are free."""
        stale = [n for n in self.nodes if n.is_running() and n.running_port() != n.port]
        self._stop_nodes(runner, stale, "fast")
        taken = {n.port for n in self.nodes}
        for node in self.nodes:
            if node.is_running() or self._port_free(node):
                continue
            if not self._auto_ports:
                raise PortInUseError(node.port, node.name)
            node.port = next(p for p in find_free_ports(len(taken) + 1) if p not in taken)
            taken.add(node.port)

    @staticmethod
    def _port_free(node: Node) -> bool:
        """Free over TCP and as a socket name (a live lock file means someone has it)."""
        lock = node.socket_dir / f".s.PGSQL.{node.port}.lock"
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _pid_alive(int(lock.read_text().splitlines()[0])):
                return False
        return port_is_free(node.port, node.host)

    def _write_node_conf(self, runner: _Runner, node: Node) -> None:
        lines = {
            **self.settings,
            "port": str(node.port),
            "unix_socket_directories": str(node.socket_dir),
            "cluster_name": node.name,
        }
        if self._sync_on:
            names = ", ".join(n.name for n in self.standbys)
            lines["synchronous_standby_names"] = f"ANY {self.synchronous} ({names})"
        if node is not self.primary:
            lines["primary_conninfo"] = " ".join(
                f"{key}={_conninfo_value(value)}"
                for key, value in {
                    "host": self.primary.host,
                    "port": str(self.primary.port),
                    "user": SUPERUSER,
                    "password": self.users[SUPERUSER],
                    "application_name": node.name,
                }.items()
            )
            lines["primary_slot_name"] = node.name
        text = "# Written by pooler.localcluster on every start: edits here are lost.\n"
        text += "".join(f"{key} = {_sql_literal(value)}\n" for key, value in lines.items())
        runner.write_file(node.datadir / _NODE_CONF, text)

    def _start_nodes(self, runner: _Runner, nodes: Sequence[Node]) -> None:
        todo = [n for n in nodes if not n.is_running()]
        for node in todo:
            self._say(f"starting {node.name} on port {node.port}")
        runner.run_all(
            [
                (
                    ["pg_ctl", "start", "-w", "-t", "60", "-D", n.datadir, "-l", n.log_path],
                    f"starting {n.name} (port {n.port})",
                    n.log_path,
                )
                for n in todo
            ],
            detach=True,
        )

    def _setup_primary(self) -> None:
        """Roles, passwords, databases and slots; idempotent, so it runs on every start."""
        self._say("setting up roles, databases and replication slots")
        script = []
        for user, password in self.users.items():
            script.append(
                f"SELECT format('CREATE ROLE %I LOGIN', {_sql_literal(user)}) WHERE NOT EXISTS"
                f" (SELECT FROM pg_roles WHERE rolname = {_sql_literal(user)})\n\\gexec\n"
                f"ALTER ROLE {_sql_ident(user)} LOGIN PASSWORD {_sql_literal(password)};\n"
            )
        for db, owner in self.databases.items():
            script.append(
                f"SELECT format('CREATE DATABASE %I OWNER %I', {_sql_literal(db)},"
                f" {_sql_literal(owner)}) WHERE NOT EXISTS"
                f" (SELECT FROM pg_database WHERE datname = {_sql_literal(db)})\n\\gexec\n"
            )
        for node in self.standbys:
            # Reserve WAL now: two base backups run at once, and the checkpoint of one
            # would otherwise recycle WAL the other still has to stream.
            script.append(
                f"SELECT pg_create_physical_replication_slot({_sql_literal(node.name)}, true)"
                f" WHERE NOT EXISTS (SELECT FROM pg_replication_slots"
                f" WHERE slot_name = {_sql_literal(node.name)});\n"
            )
        self.primary.psql("".join(script))

    def _base_backups(self, runner: _Runner, nodes: Sequence[Node]) -> None:
        for node in nodes:
            self._say(f"base backup of the primary for {node.name}")
            if node.datadir.exists():
                shutil.rmtree(node.datadir)
            runner.make_dir(node.datadir, 0o700)
        # Over the trusted unix socket; -R is left out on purpose: it would pin the
        # primary's current port in postgresql.auto.conf, which overrides the
        # pooler_node.conf we rewrite on every start.
        runner.run_all(
            [
                (
                    [
                        "pg_basebackup",
                        "-D",
                        n.datadir,
                        "-h",
                        self.primary.socket_dir,
                        "-p",
                        str(self.primary.port),
                        "-U",
                        SUPERUSER,
                        "-S",
                        n.name,
                        "-X",
                        "stream",
                        "-c",
                        "fast",
                        "--no-sync",
                    ],
                    f"pg_basebackup for {n.name}",
                    self.primary.log_path,
                )
                for n in nodes
            ]
        )
        for node in nodes:
            # The copy of the primary's log would make the standby's log misleading.
            node.log_path.unlink(missing_ok=True)
            runner.write_file(node.datadir / "standby.signal", "")

    def wait_streaming(self, timeout: float = 30) -> None:
        """Wait until every standby streams from the primary (pg_stat_replication)."""
        wanted = {n.name for n in self.standbys}
        deadline = time.monotonic() + timeout
        streaming: set[str] = set()
        while True:
            out = self.primary.psql(
                "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
            )
            streaming = set(out.split())
            if wanted <= streaming:
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        lagging = sorted(wanted - streaming)
        logs = "".join(
            f"\n--- {n.log_path} (last lines) ---\n{n.log_tail()}"
            for n in self.standbys
            if n.name in lagging
        )
        raise ClusterError(
            f"{', '.join(lagging)} not streaming from the primary after {timeout:.0f} s{logs}"
        )

    def pooler_config(self, port: int, host: str = "127.0.0.1") -> dict[str, object]:
        """A pooler configuration (as parsed YAML) that serves this cluster on host:port.

        Backends are the nodes over TCP, primary first; every role is a pooler user;
        the superuser is the admin and the health-check user.
        """
        return {
            "listen": {"host": host, "port": port},
            "backends": [{"name": n.name, "host": n.host, "port": n.port} for n in self.nodes],
            "users": dict(self.users),
            "admin_users": [SUPERUSER],
            "health_check": {"user": SUPERUSER, "password": self.users[SUPERUSER]},
        }

    # -- single nodes, for failover tests -----------------------------------------

    def start_node(self, node: Node) -> None:
        """Start one stopped node with its current configuration."""
        self._start_nodes(self._runner(), [node])

    def stop_node(self, node: Node, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop one node; ``immediate`` is as close to a crash as pg_ctl gets."""
        self._stop_nodes(self._runner(), [node], mode)

    def promote(self, node: Node) -> None:
        """Promote a standby and wait until it accepts writes."""
        self._runner().run(
            ["pg_ctl", "promote", "-w", "-D", node.datadir],
            f"promoting {node.name}",
            log=node.log_path,
        )

    # -- stop ----------------------------------------------------------------------

    def _stop_nodes(self, runner: _Runner, nodes: Sequence[Node], mode: str) -> None:
        running = [n for n in nodes if n.is_running()]
        for node in running:
            self._say(f"stopping {node.name}")
        try:
            runner.run_all(
                [
                    (
                        ["pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", n.datadir],
                        f"stopping {n.name}",
                        n.log_path,
                    )
                    for n in running
                ]
            )
        except ClusterError:
            if mode == "immediate":
                raise
            # A node stuck in shutdown (e.g. waiting on a dead walreceiver) must not
            # leave the caller with a running cluster.
            self._stop_nodes(runner, running, "immediate")

    def stop(self) -> None:
        """Fast shutdown of every running node; does nothing for stopped ones."""
        if any(n.is_running() for n in self.nodes):
            self._stop_nodes(self._runner(), self.nodes, "fast")

    def destroy(self) -> None:
        """Stop every node and remove the cluster's directories."""
        self.stop()
        self._say(f"removing {self.base_dir}")
        shutil.rmtree(self.base_dir, ignore_errors=True)
        socket_dir = self.primary.socket_dir
        if not socket_dir.is_relative_to(self.base_dir):
            with contextlib.suppress(OSError):
                shutil.rmtree(socket_dir)
