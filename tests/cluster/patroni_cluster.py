"""A Patroni cluster on loopback for the tests: one etcd, three Patroni members.

etcd (the Debian ``etcd-server`` package, 3.4) runs as this process's user; each Patroni
member runs as the PostgreSQL server account (``postgres`` when we are root: PostgreSQL
refuses root, and Patroni starts PostgreSQL itself), from an interpreter that account
can run, with this venv's packages on its path. Everything lives in one directory from
``server_tempdir``; every port is free at start. Patroni's timings are the smallest it
accepts (ttl 20, loop_wait 1, retry_timeout 3), with ``synchronous_mode`` on and
``primary_start_timeout: 0`` (a crashed leader fails over at once instead of being
restarted for 5 minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pooler.localcluster import (
    SERVER_OS_USER,
    find_bindir,
    find_free_ports,
    server_can_reach,
)

SCOPE = "pooler-test"
USERS = {"postgres": "postgres", "app": "app"}
REPLICATION = ("replicator", "replicator")
START_TIMEOUT = 60.0

#: What the members run with; the fixture's pooler logs in with USERS over TCP (SCRAM).
_PG_HBA = [
    "local all all trust",
    "local replication all trust",
    "host all all 127.0.0.1/32 scram-sha-256",
    "host replication all 127.0.0.1/32 scram-sha-256",
]


class PatroniError(RuntimeError):
    """The Patroni cluster could not be started or did not reach the state asked for."""


def _account() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    return pwd.getpwnam(SERVER_OS_USER)


def _as_server() -> dict[str, Any]:
    """Popen arguments that run a program as the server account."""
    if os.geteuid() != 0:
        return {}
    account = _account()
    return {
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid),
    }


def _copy_patroni(dest: Path) -> None:
    """Copy the distributions Patroni needs (its etcd3 extra, and psycopg, which it
    uses but does not require) from this venv into ``dest``, for a server account that
    cannot reach the venv."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [("patroni", ("etcd3",)), ("psycopg", ("binary",))]
    while todo:
        name, extras = todo.pop()
        if canonicalize_name(name) in seen:
            continue
        seen.add(canonicalize_name(name))
        dist = metadata.distribution(name)
        base = Path(str(dist.locate_file("")))
        for file in dist.files or []:
            if file.parts[0] == "..":  # console scripts, outside site-packages
                continue
            target = dest / file
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(base / file, target)
        for text in dist.requires or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in extras or ("",)):
                todo.append((requirement.name, tuple(requirement.extras)))


def _patroni_python(base_dir: Path) -> tuple[str, dict[str, str]]:
    """An interpreter the server account can run that imports this venv's Patroni, and
    the environment for it: this one when the account can reach it, else the system's
    ``python3.X`` of the same version (a pyenv interpreter under /root is out of its
    reach), with this venv's site-packages on PYTHONPATH, or a copy of what Patroni
    needs from it in ``base_dir`` when those are out of reach too."""
    paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    if not all(server_can_reach(path) for path in paths):
        copy = base_dir / "pylib"
        _copy_patroni(copy)
        paths = [str(copy)]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [os.path.realpath(sys.executable), f"/usr/bin/{version}", shutil.which(version)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PYTHON"))}
    env.update(HOME=_account().pw_dir, LC_ALL="C.UTF-8", LANG="C.UTF-8")
    env["PYTHONPATH"] = os.pathsep.join(paths)
    tried = []
    for python in dict.fromkeys(c for c in candidates if c):
        if not (os.path.exists(python) and server_can_reach(python)):
            tried.append(f"{python}: out of the server account's reach")
            continue
        probe = subprocess.run(
            [python, "-c", "import patroni, psycopg"],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
            **_as_server(),
        )
        if probe.returncode == 0:
            return python, env
        tried.append(f"{python}: {probe.stderr.strip().splitlines()[-1:]}")
    raise PatroniError("no interpreter runs Patroni as the server account: " + "; ".join(tried))


def http(method: str, url: str, body: object = None, timeout: float = 5.0) -> tuple[int, Any]:
    """One request to a Patroni REST API: (status, parsed JSON body or text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


@dataclass
class Member:
    """One Patroni member and its PostgreSQL node."""

    name: str
    port: int
    rest_port: int
    config_path: Path
    datadir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its REST API's base URL."""
        return f"http://127.0.0.1:{self.rest_port}"


class PatroniCluster:
    """etcd and three Patroni members in ``base_dir``; ``start()`` returns once there is
    a leader and both replicas stream from it."""

    def __init__(self, base_dir: Path, members: int = 3) -> None:
        self.base_dir = base_dir
        ports = find_free_ports(2 + 2 * members)
        self.etcd_port, self.etcd_peer_port = ports[:2]
        self.socket_dir = base_dir / "sock"
        self.members = [
            Member(
                f"node{i}",
                ports[2 + 2 * i],
                ports[3 + 2 * i],
                base_dir / f"node{i}.yml",
                base_dir / f"node{i}" / "data",
                base_dir / f"node{i}.log",
            )
            for i in range(members)
        ]
        self.bindir = find_bindir()
        self._etcd: subprocess.Popen[bytes] | None = None
        self._python: tuple[str, dict[str, str]] | None = None

    # --- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        """etcd, then every member; wait until the cluster is healthy."""
        self._python = _patroni_python(self.base_dir)
        self._start_etcd()
        account = _account()
        for directory in (self.socket_dir, *(m.datadir.parent for m in self.members)):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chown(directory, account.pw_uid, account.pw_gid)
        for member in self.members:
            member.config_path.write_text(yaml.safe_dump(self._config(member), sort_keys=False))
            self.start_member(member)
        leader = self.wait_healthy(START_TIMEOUT)
        self.psql(leader, "CREATE ROLE app LOGIN PASSWORD 'app'")
        self.psql(leader, "CREATE DATABASE app OWNER app")

    def _start_etcd(self) -> None:
        etcd = shutil.which("etcd")
        if etcd is None:
            raise PatroniError("etcd not found: install the Debian package etcd-server")
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        log = (self.base_dir / "etcd.log").open("wb")
        self._etcd = subprocess.Popen(
            [
                etcd,
                "--name=etcd0",
                f"--data-dir={self.base_dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=etcd0={peer}",
                "--unsafe-no-fsync",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError, ValueError):
                if http("GET", f"{client}/health", timeout=1)[0] == 200:
                    return
            if self._etcd.poll() is not None or time.monotonic() > deadline:
                tail = (self.base_dir / "etcd.log").read_text(errors="replace")[-2000:]
                raise PatroniError(f"etcd did not start:\n{tail}")
            time.sleep(0.1)

    def _config(self, member: Member) -> dict[str, Any]:
        superuser, password = "postgres", USERS["postgres"]
        return {
            "scope": SCOPE,
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"127.0.0.1:{member.rest_port}",
                "connect_address": f"127.0.0.1:{member.rest_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": 20,
                    "loop_wait": 1,
                    "retry_timeout": 3,
                    "primary_start_timeout": 0,
                    "maximum_lag_on_failover": 1024**2,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "max_connections": 100,
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "hot_standby": "on",
                            "wal_keep_size": "128MB",
                            # Throwaway cluster: the OS does not crash under it.
                            "fsync": "off",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}, "data-checksums"],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.port}",
                "connect_address": f"127.0.0.1:{member.port}",
                "data_dir": str(member.datadir),
                "bin_dir": str(self.bindir),
                "pgpass": str(member.datadir.parent / "pgpass"),
                "authentication": {
                    "superuser": {"username": superuser, "password": password},
                    "replication": {"username": REPLICATION[0], "password": REPLICATION[1]},
                    "rewind": {"username": superuser, "password": password},
                },
                "parameters": {"unix_socket_directories": str(self.socket_dir)},
                "pg_hba": _PG_HBA,
            },
        }

    def start_member(self, member: Member) -> None:
        """Start the Patroni of ``member`` (it starts PostgreSQL)."""
        assert self._python is not None
        python, env = self._python
        with member.log_path.open("ab") as log:
            member.proc = subprocess.Popen(
                [python, "-m", "patroni", str(member.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=env,
                start_new_session=True,
                **_as_server(),
            )

    def stop(self) -> None:
        """Stop every member (Patroni stops its PostgreSQL), then etcd."""
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.terminate()
        for member in self.members:
            if member.proc is not None:
                try:
                    member.proc.wait(20)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(member.proc.pid, signal.SIGKILL)
                    member.proc.wait()
            # A postmaster left behind by a killed Patroni.
            self.stop_postgres(member, "immediate", check=False)
        if self._etcd is not None and self._etcd.poll() is None:
            self._etcd.terminate()
            self._etcd.wait(10)

    def destroy(self) -> None:
        """Stop everything and remove the directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # --- looking and acting -----------------------------------------------------------

    def view(self) -> dict[str, Any]:
        """``GET /cluster`` from the first member that answers."""
        for member in self.members:
            with contextlib.suppress(OSError, ValueError):
                status, body = http("GET", f"{member.url}/cluster", timeout=2)
                if status == 200 and isinstance(body, dict):
                    return body
        raise PatroniError("no Patroni member answers GET /cluster")

    def leader(self) -> Member | None:
        """The member Patroni names leader and runs, if any."""
        with contextlib.suppress(PatroniError):
            for row in self.view().get("members", []):
                if row.get("role") == "leader" and row.get("state") == "running":
                    return self.member(row["name"])
        return None

    def member(self, name: str) -> Member:
        return next(m for m in self.members if m.name == name)

    def healthy(self) -> Member | None:
        """The leader, when it runs and every other member streams from it."""
        try:
            view = self.view()
        except PatroniError:
            return None
        rows = view.get("members", [])
        leaders = [r for r in rows if r.get("role") == "leader" and r.get("state") == "running"]
        replicas = [r for r in rows if r.get("role") in ("replica", "sync_standby")]
        if len(leaders) != 1 or len(replicas) != len(self.members) - 1:
            return None
        if not all(r.get("state") == "streaming" for r in replicas):
            return None
        if not any(r.get("role") == "sync_standby" for r in replicas):
            return None
        return self.member(leaders[0]["name"])

    def wait_healthy(self, timeout: float) -> Member:
        """Wait until ``healthy()``; its leader."""
        return self.wait_for(self.healthy, timeout, "a leader with two streaming replicas")

    def new_leader(self, old: Member | None) -> Member | None:
        """The running leader, if it is not ``old``."""
        leader = self.leader()
        return leader if leader is not old else None

    def wait_for(self, condition: Callable[[], Member | None], timeout: float, what: str) -> Member:
        deadline = time.monotonic() + timeout
        while True:
            found = condition()
            if found is not None:
                return found
            if time.monotonic() > deadline:
                logs = "\n".join(
                    f"--- {m.name} ---\n"
                    + "\n".join(m.log_path.read_text(errors="replace").splitlines()[-8:])
                    for m in self.members
                    if m.log_path.exists()
                )
                raise PatroniError(f"no {what} within {timeout:.0f} s\n{self.safe_view()}\n{logs}")
            time.sleep(0.2)

    def safe_view(self) -> str:
        try:
            return json.dumps(self.view())
        except PatroniError as exc:
            return str(exc)

    def pooler_config(self, port: int) -> dict[str, Any]:
        """A pooler config: the three nodes over TCP, Patroni's REST APIs as authority."""
        return {
            "listen": {"host": "127.0.0.1", "port": port},
            "backends": [
                {"name": m.name, "host": "127.0.0.1", "port": m.port} for m in self.members
            ],
            "users": dict(USERS),
            "admin_users": ["postgres"],
            "health_check": {"user": "postgres", "password": USERS["postgres"]},
            "failover": {"patroni_urls": [m.url for m in self.members]},
        }

    def _run(self, args: list[str], timeout: float = 30) -> str:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, cwd="/", **_as_server()
        )
        if done.returncode != 0:
            raise PatroniError(f"{' '.join(args)} failed: {done.stderr.strip()}")
        return str(done.stdout)

    def psql(self, member: Member, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` on ``member`` over its Unix socket; unaligned output."""
        return self._run(
            [
                str(self.bindir / "psql"),
                "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(member.port),
                "-U", "postgres", "-d", dbname, "-c", sql,
            ]
        ).rstrip("\n")  # fmt: skip

    def in_recovery(self, member: Member) -> bool | None:
        """``pg_is_in_recovery()`` on ``member``, None when it does not answer."""
        try:
            return self.psql(member, "SELECT pg_is_in_recovery()") == "t"
        except (PatroniError, subprocess.TimeoutExpired):
            return None

    def stop_postgres(self, member: Member, mode: str = "immediate", *, check: bool = True) -> None:
        """``pg_ctl stop -m mode`` of ``member``'s PostgreSQL (its Patroni stays)."""
        if not (member.datadir / "postmaster.pid").exists():
            return
        try:
            pg_ctl = str(self.bindir / "pg_ctl")
            self._run([pg_ctl, "stop", "-w", "-m", mode, "-D", str(member.datadir)])
        except PatroniError:
            if check:
                raise
