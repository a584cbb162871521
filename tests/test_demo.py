"""``pooler demo`` end to end: cluster, pooler, connect through it, Ctrl-C, run again."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pooler.localcluster import LocalCluster, find_bindir, find_free_ports, port_is_free

pytestmark = pytest.mark.slow

STARTUP_TIMEOUT = 60.0
EXIT_TIMEOUT = 15.0


@dataclass
class Demo:
    """A running ``pooler demo`` and what it printed."""

    proc: subprocess.Popen[str]
    stderr_path: Path
    lines: queue.Queue[str]

    def wait_for_line(self, prefix: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The first stdout line that starts with ``prefix`` once stripped; fails with stderr."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.strip().startswith(prefix):
                return line.strip()
        pytest.fail(f"the demo printed no {prefix!r} line; its stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _start_demo(directory: Path, port: int, port_base: int, log: Path) -> Demo:
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pooler", "demo", "--dir", str(directory),
             "--port", str(port), "--port-base", str(port_base)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return Demo(proc, log, lines)


def _psql(conninfo: str, sql: str) -> str:
    result = subprocess.run(
        [str(find_bindir() / "psql"), "-X", "-A", "-t", "-c", sql, conninfo],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _psql_when_ready(conninfo: str, sql: str, timeout: float = 10.0) -> str:
    """The demo prints how to connect just before the pooler binds its port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _psql(conninfo, sql)
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stop(demo: Demo, sig: signal.Signals) -> int:
    demo.proc.send_signal(sig)
    try:
        return demo.proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        demo.proc.kill()
        pytest.fail(f"the demo did not exit within {EXIT_TIMEOUT:.0f} s of {sig.name}")


@pytest.fixture
def ports() -> tuple[int, int]:
    """A pooler port and the first of three consecutive node ports, all free."""
    node_ports = find_free_ports(3, consecutive=True)
    pooler_port = next(p for p in find_free_ports(4) if p not in node_ports)
    return pooler_port, node_ports[0]


def test_demo_serves_through_the_pooler_stops_on_ctrl_c_and_reuses_its_directory(
    server_dir: Path, tmp_path: Path, ports: tuple[int, int]
) -> None:
    port, port_base = ports
    directory = server_dir / "demo"
    node_ports = [port_base, port_base + 1, port_base + 2]
    demos: list[Demo] = []
    try:
        first = _start_demo(directory, port, port_base, tmp_path / "first.log")
        demos.append(first)
        dsn = first.wait_for_line("postgresql://")
        assert dsn == f"postgresql://app:app@127.0.0.1:{port}/app"
        through_pooler = f"host=127.0.0.1 port={port} user=app dbname=app password=app"
        assert _psql_when_ready(through_pooler, "SELECT current_user, current_database()") == (
            "app|app"
        )
        admin = f"host=127.0.0.1 port={port} user=postgres dbname=postgres password=postgres"
        assert _psql(admin, "SELECT 1") == "1"
        primary = f"host=127.0.0.1 port={port_base} user=postgres dbname=postgres password=postgres"
        streaming = "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        assert _psql(primary, streaming) == "2"

        assert _stop(first, signal.SIGINT) == 0, first.stderr()
        for name in ("primary", "standby1", "standby2"):
            assert not (directory / name / "postmaster.pid").exists(), name
        assert all(port_is_free(p) for p in [port, *node_ports])

        started = time.monotonic()
        second = _start_demo(directory, port, port_base, tmp_path / "second.log")
        demos.append(second)
        second.wait_for_line("postgresql://")
        assert _psql_when_ready(through_pooler, "SELECT 1") == "1"
        reuse_seconds = time.monotonic() - started
        assert "reusing" in second.stderr()
        assert "initdb" not in second.stderr()
        assert reuse_seconds < 20, second.stderr()
        assert _stop(second, signal.SIGTERM) == 0, second.stderr()
        assert all(port_is_free(p) for p in [port, *node_ports])
    finally:
        # Whatever failed above, leave no servers behind.
        for demo in demos:
            if demo.proc.poll() is None:
                demo.proc.kill()
                demo.proc.wait()
        if directory.exists():
            LocalCluster(directory, ports=node_ports).stop()
