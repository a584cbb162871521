"""Shared fixtures: a real PostgreSQL cluster (primary + two streaming standbys) and
poolers started as ``pooler run`` processes in front of it (forked by ``tests/zygote.py``,
which imported the pooler once; ``POOLER_TESTS_NO_ZYGOTE=1``: ``python -m pooler run``).

``cluster``: started once per session. ``cluster_factory``: more clusters, for tests that
break theirs (failover). ``start_pooler(**overrides)``: a pooler for ``cluster`` (or for
another cluster passed first), with ``overrides`` deep-merged into the config.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from pooler.localcluster import LocalCluster, find_free_ports, server_tempdir

#: How the fixture runs a pooler; the config file's path is appended.
POOLER_COMMAND = [sys.executable, "-m", "pooler", "run", "--config"]
POOLER_START_TIMEOUT = 10.0


class ForkedProcess:
    """A pooler the zygote forked: what the tests use of ``subprocess.Popen``."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self._zygote = zygote
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(["pooler", str(self.pid)], timeout or 0.0)
            time.sleep(0.005)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """``tests/zygote.py``, started on first use: forks poolers that skip Python's
    start-up and imports (0.3 s of each of some three hundred starts)."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _ask(self, request: dict[str, Any]) -> Any:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with self._lock:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            return json.loads(self._proc.stdout.readline())

    def start(self, argv: list[str], log: Path) -> ForkedProcess:
        return ForkedProcess(self, self._ask({"start": argv, "log": str(log)})["pid"])

    def status(self, pid: int) -> int | None:
        status: int | None = self._ask({"poll": pid})["status"]
        return status

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(10)


_zygote: Zygote | None = None


def _fork_pooler(config_path: Path, log_path: Path) -> ForkedProcess | None:
    """A pooler forked by the zygote, or None when the environment asks for none."""
    global _zygote
    if os.environ.get("POOLER_TESTS_NO_ZYGOTE"):
        return None
    if _zygote is None:
        _zygote = Zygote()
    return _zygote.start(["run", "--config", str(config_path)], log_path)


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    """A primary and two streaming hot standbys, shared by the whole test session.

    Tests must leave it as they found it: primary first, both standbys streaming. A test
    that stops, promotes or breaks nodes takes a cluster from ``cluster_factory``.
    """
    local = LocalCluster(server_tempdir("pooler-test-"))
    try:
        local.start()
        yield local
    finally:
        local.destroy()


ClusterFactory = Callable[..., LocalCluster]


@pytest.fixture
def cluster_factory() -> Iterator[ClusterFactory]:
    """``make(**kwargs)``: a started LocalCluster of its own, destroyed after the test.

    ``kwargs`` go to LocalCluster (``standbys=1``, ``settings={...}``, ...).
    """
    made: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        local = LocalCluster(server_tempdir("pooler-test-"), **kwargs)
        made.append(local)
        local.start()
        return local

    yield make
    for local in made:
        local.destroy()


@dataclass
class PoolerProcess:
    """A ``pooler run`` subprocess, listening on ``host:port``."""

    proc: subprocess.Popen[bytes] | ForkedProcess
    host: str
    port: int
    config_path: Path
    log_path: Path

    def dsn(self, user: str = "app", password: str = "app", dbname: str = "app") -> str:
        """A libpq keyword DSN that reaches the pooler over TCP."""
        return f"host={self.host} port={self.port} user={user} password={password} dbname={dbname}"

    def log_text(self) -> str:
        """Everything the pooler wrote to stderr so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig``, wait up to ``timeout`` s, kill if still running; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.wait()


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it; nested mappings merge, the rest replaces."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _accepts_connections(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def launch_pooler(config: Mapping[str, Any], workdir: Path, forked: bool = True) -> PoolerProcess:
    """Run ``pooler run`` with ``config`` (written to ``workdir``) until it listens on
    ``config["listen"]``; the caller stops it. ``forked=False``: a process of its own
    (``python -m pooler run``), for tests that measure its memory: a forked child's
    resident set counts pages it shares with the zygote.

    Raises RuntimeError with the pooler's output when it does not accept TCP
    connections within POOLER_START_TIMEOUT seconds.
    """
    config_path = workdir / "pooler.yaml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    log_path = workdir / "stderr.log"
    proc: subprocess.Popen[bytes] | ForkedProcess | None = (
        _fork_pooler(config_path, log_path) if forked else None
    )
    if proc is None:
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*POOLER_COMMAND, str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    port = config["listen"]["port"]
    pooler = PoolerProcess(proc, "127.0.0.1", port, config_path, log_path)
    deadline = time.monotonic() + POOLER_START_TIMEOUT
    while not _accepts_connections(pooler.host, port):
        if proc.poll() is not None:
            raise RuntimeError(
                f"pooler exited with status {proc.returncode} before listening on port"
                f" {port}; its output:\n{pooler.log_text()}"
            )
        if time.monotonic() > deadline:
            pooler.stop(signal.SIGKILL)
            raise RuntimeError(
                f"pooler did not listen on port {port} within {POOLER_START_TIMEOUT:.0f} s;"
                f" its output:\n{pooler.log_text()}"
            )
        # Short: hundreds of tests start a pooler, each waiting here.
        time.sleep(0.01)
    return pooler


class StartPooler(Protocol):
    """The ``start_pooler`` fixture: ``start_pooler([cluster], **config_overrides)``."""

    def __call__(
        self, target: LocalCluster | None = None, /, *, forked: bool = True, **overrides: Any
    ) -> PoolerProcess: ...


@pytest.fixture
def start_pooler(
    cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartPooler]:
    """Start poolers (for ``cluster`` unless another is given); all stop after the test.

    Raises (failing the test) with the pooler's stderr when it does not accept TCP
    connections within POOLER_START_TIMEOUT seconds. ``pool={"mode": "session"}``
    without ``load_balance`` gets ``load_balance.enabled: false``.
    """
    started: list[PoolerProcess] = []

    def start(
        target: LocalCluster | None = None, /, *, forked: bool = True, **overrides: Any
    ) -> PoolerProcess:
        served = target if target is not None else cluster
        port = find_free_ports(1)[0]
        if overrides.get("pool", {}).get("mode") == "session" and "load_balance" not in overrides:
            # Session mode here means one server for the client's whole session, the
            # relay the tests written for it check: routing in session mode (each
            # client keeping one server per node) is asked for by its own tests.
            overrides = {**overrides, "load_balance": {"enabled": False}}
        config = _deep_merge(served.pooler_config(port), overrides)
        pooler = launch_pooler(config, tmp_path_factory.mktemp("pooler"), forked)
        started.append(pooler)
        return pooler

    yield start
    for pooler in started:
        pooler.stop()


@pytest.fixture(params=["transaction", "session"])
def pooler(start_pooler: StartPooler, request: pytest.FixtureRequest) -> PoolerProcess:
    """A pooler with the default test config in front of ``cluster``, once in each pool
    mode: what a client sees must not depend on it."""
    return start_pooler(pool={"mode": request.param})


@pytest.fixture
def session_pooler(start_pooler: StartPooler) -> PoolerProcess:
    """A pooler in session mode, for what only session mode promises (one server for
    the client's whole session, its real pid)."""
    return start_pooler(pool={"mode": "session"})


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """An empty directory the PostgreSQL servers can reach (mode 0755), removed after."""
    path = server_tempdir("pooler-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)
