"""``pooler demo``: a local primary, two streaming standbys and the pooler in front of them.

The first command of the README: one process that needs nothing but a PostgreSQL server
installation. The cluster's data stays in the demo directory, so the next run reuses it
and starts in a second. Ctrl-C (or SIGTERM) stops the pooler and then the cluster.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from pooler.config import Config, ConfigError, load_config
from pooler.localcluster import (
    SERVER_OS_USER,
    ClusterError,
    LocalCluster,
    PortInUseError,
    find_bindir,
    port_is_free,
    server_can_reach,
)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _Interrupted(Exception):
    """SIGINT or SIGTERM arrived while the demo was not yet serving."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _say(line: str) -> None:
    # A closed terminal or pipe must not stop the demo from stopping its cluster.
    with contextlib.suppress(OSError):
        print(f"pooler demo: {line}", file=sys.stderr, flush=True)


@contextmanager
def _signals(handler: _Handler) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` inside the block."""
    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signum)


def data_directory(requested: Path) -> Path:
    """Where the demo keeps its cluster: ``requested`` unless the servers cannot reach it.

    As root the servers run as the ``postgres`` OS user, who cannot enter a checkout under
    /root; the fallback name derives from the requested path, so a rerun finds it again.
    """
    requested = requested.absolute()
    if server_can_reach(requested):
        return requested
    digest = hashlib.sha256(str(requested).encode()).hexdigest()[:12]
    return Path("/var/tmp") / f"pooler-demo-{digest}"


def main(directory: str = "./pooler-demo", port: int = 9999, port_base: int = 55432) -> int:
    """Run the demo until Ctrl-C or SIGTERM; return the exit status (1 when it cannot)."""
    requested = Path(directory).absolute()
    base_dir = data_directory(requested)
    if base_dir != requested:
        _say(
            f"the {SERVER_OS_USER!r} OS user cannot reach {requested},"
            f" so the demo keeps its data in {base_dir}"
        )
    node_ports = [port_base, port_base + 1, port_base + 2]
    if not (0 < port < 65536 and 0 < port_base < 65534):
        _say("ports must be between 1 and 65535 (the node ports too: --port-base, +1, +2)")
        return 1
    if port in node_ports:
        _say(f"--port {port} is one of the node ports {node_ports}; pick another")
        return 1
    if not port_is_free(port):
        _say(f"port {port} is already in use; pick another with --port")
        return 1
    # Synchronous (ANY 1 of the two standbys), so that a failover loses no
    # acknowledged write.
    cluster = LocalCluster(base_dir, ports=node_ports, progress=_say, synchronous=1)
    try:
        # The pooler's event loop takes SIGINT and SIGTERM over while it runs; until
        # then they must still reach the `finally` that stops the cluster.
        with _signals(_interrupt):
            cluster.start()
            # People read the demo's log in a terminal, not a log collector.
            data = {**cluster.pooler_config(port), "log": {"format": "text"}}
            config = _write_config(base_dir / "pooler.yaml", data)
            _print_connect_info(cluster, port)
            from pooler.serve import run

            return run(config)
    except PortInUseError as exc:
        _say(f"{exc}; pick other node ports with --port-base")
    except (ClusterError, ConfigError, OSError) as exc:
        _say(str(exc))
    except _Interrupted as exc:
        _say(f"{exc}: stopping")
        return 128 + exc.signum
    finally:
        # A second Ctrl-C must not cut the shutdown short and leave servers running.
        with _signals(signal.SIG_IGN):
            cluster.stop()
    return 1


def _write_config(path: Path, data: dict[str, object]) -> Config:
    header = "# Written by `pooler demo` on every run; edits here are lost.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def _print_connect_info(cluster: LocalCluster, port: int) -> None:
    standbys = " and ".join(str(n.port) for n in cluster.standbys)
    _say(
        f"pooler on 127.0.0.1:{port} in front of the primary on port {cluster.primary.port}"
        f" and the standbys on {standbys}; config in {cluster.base_dir / 'pooler.yaml'}"
    )
    print(
        "Connect with:\n"
        f'  psql "host=127.0.0.1 port={port} user=app dbname=app password=app"\n'
        f"  postgresql://app:app@127.0.0.1:{port}/app\n"
        "Superuser: postgres, password postgres. Stop with Ctrl-C.\n"
        "Reads spread over the nodes: run  SELECT inet_server_port();  a few times.\n"
        "Fail the primary over:\n"
        f"  runuser -u postgres -- {find_bindir() / 'pg_ctl'} stop -m immediate"
        f" -D {cluster.primary.datadir}",
        flush=True,
    )
