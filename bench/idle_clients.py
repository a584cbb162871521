"""Idle clients: resident memory per logged-in idle client, the pooler beside PgBouncer,
and the pooler's CPU while clients wait for a server.

Usage: ``bench/idle_clients [--clients 10000] [--waiters 500] [--servers 5]``.
One LocalCluster (a primary), the pooler (transaction pooling) and PgBouncer
(transaction mode), each with ``--servers`` server connections. For each proxy: its
resident memory, then ``--clients`` clients log in (SCRAM) and stay idle, then its
resident memory again; the difference per client is reported. Then, through the
pooler: ``--servers`` clients each hold a transaction open (every server taken),
``--waiters`` more send a query each and wait; the pooler's CPU over 5 s of that wait
is reported as a share of one core. A Markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pgbench_compare import (
    DATABASE,
    PASSWORD,
    USER,
    BenchError,
    Services,
    Target,
    _server_dir,
    find_program,
    say,
    setup_cluster,
    start_pgbouncer,
    start_pooler,
    tree_cpu_seconds,
    wait_ready,
)

from pooler.localcluster import LocalCluster, find_free_ports, server_tempdir
from pooler.protocol import messages as m
from pooler.protocol.codec import build_startup_message
from pooler.protocol.scram import ScramClient

#: Seconds over which the waiting clients' cost is measured.
WAIT_WINDOW = 5.0


def rss_mib(pid: int) -> float:
    """Resident memory of one process, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def _read_message(sock: socket.socket) -> tuple[int, bytes]:
    header = _read_exactly(sock, 5)
    length = int.from_bytes(header[1:5], "big")
    return header[0], _read_exactly(sock, length - 4)


def _read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise BenchError("the proxy closed a connection during login")
        data += chunk
    return data


def login(port: int) -> socket.socket:
    """A client socket logged in as the bench user (SCRAM), ready for a query."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(build_startup_message({"user": USER, "database": DATABASE}))
    scram: ScramClient | None = None
    while True:
        t, body = _read_message(sock)
        if t == m.READY_FOR_QUERY:
            return sock
        if t == m.ERROR_RESPONSE:
            raise BenchError(f"login refused: {m.parse_fields(body).get('M')}")
        if t != m.AUTHENTICATION:
            continue
        code, data = int.from_bytes(body[:4], "big"), body[4:]
        if code == m.AUTH_SASL:
            scram = ScramClient(USER, PASSWORD)
            mechanisms = [x.decode() for x in data.split(b"\0") if x]
            sock.sendall(m.sasl_initial_response(*scram.client_first(mechanisms)))
        elif code == m.AUTH_SASL_CONTINUE and scram is not None:
            sock.sendall(m.password_message(scram.handle_server_first(data)))
        elif code == m.AUTH_SASL_FINAL and scram is not None:
            scram.handle_server_final(data)


def query(sock: socket.socket, sql: str) -> None:
    """Run ``sql`` and read up to its ReadyForQuery."""
    sock.sendall(m.query(sql))
    while _read_message(sock)[0] != m.READY_FOR_QUERY:
        pass


def idle_memory(target: Target, clients: int) -> tuple[float, float]:
    """Resident memory before and with ``clients`` logged-in idle clients, MiB."""
    assert target.pid is not None
    with contextlib.closing(login(target.port)) as first:
        query(first, "SELECT 1")  # the pool has a server and knows its parameters
    time.sleep(0.5)
    pid = _proxy_pid(target.pid)
    before = rss_mib(pid)
    with _clients(target.port, clients):
        time.sleep(1)
        return before, rss_mib(pid)


@contextlib.contextmanager
def _clients(port: int, count: int) -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    try:
        for i in range(count):
            socks.append(login(port))
            if (i + 1) % 1000 == 0:
                say(f"  {i + 1} clients logged in")
        yield socks
    finally:
        for sock in socks:
            sock.close()


def _proxy_pid(root: int) -> int:
    """The process doing the work: PgBouncer runs under runuser as root's child."""
    children = Path(f"/proc/{root}/task/{root}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else root


def waiting_cpu(target: Target, servers: int, waiters: int) -> float:
    """The pooler's CPU, as a share of one core, while ``waiters`` clients wait for one
    of ``servers`` servers that are all held in open transactions."""
    assert target.pid is not None
    with _clients(target.port, servers) as holders, _clients(target.port, waiters) as waiting:
        for sock in holders:
            query(sock, "BEGIN")
        for sock in waiting:
            sock.sendall(m.query("SELECT 1"))
        time.sleep(1)
        start = sum(tree_cpu_seconds(target.pid))
        time.sleep(WAIT_WINDOW)
        used = sum(tree_cpu_seconds(target.pid)) - start
        for sock in holders:
            query(sock, "COMMIT")
        for sock in waiting:
            sock.settimeout(60)
            while _read_message(sock)[0] != m.READY_FOR_QUERY:
                pass
    return used / WAIT_WINDOW


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10_000, help="idle clients")
    parser.add_argument("--waiters", type=int, default=500, help="clients waiting")
    parser.add_argument("--servers", type=int, default=5, help="server connections")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.clients + args.waiters + 1000:
        raise BenchError(f"the open files limit ({hard}) is too low for {args.clients} clients")
    workdir = server_tempdir("pooler-idle-")
    cluster = LocalCluster(
        workdir / "cluster",
        standbys=0,
        users={USER: PASSWORD},
        databases={DATABASE: USER},
        settings={"max_connections": str(args.servers * 2 + 50)},
    )
    services = Services()
    rows: list[str] = []
    try:
        say("starting a primary")
        setup_cluster(cluster, 1)
        ports = iter(find_free_ports(2))
        overrides = [("pool.mode", "transaction"), ("pool.max_clients", args.clients + 1000)]
        pooler_dir = _server_dir(workdir / "pooler")
        targets = [
            start_pooler(services, cluster, pooler_dir, next(ports), args.servers, overrides)
        ]
        if find_program("pgbouncer") is not None:
            bouncer_dir = _server_dir(workdir / "pgbouncer")
            max_clients = args.clients + 1000
            targets.append(
                start_pgbouncer(
                    services, cluster, bouncer_dir, next(ports), args.servers, max_clients
                )
            )
        else:
            say("pgbouncer is not installed: measuring the pooler alone")
        for target in targets:
            target.log = workdir / target.name / f"{target.name}.log"
            wait_ready(target, services)
        for target in targets:
            say(f"{target.name}: {args.clients} idle clients")
            before, after = idle_memory(target, args.clients)
            per_client = (after - before) * 1024 / args.clients
            rows.append(
                f"| {target.name} | {before:.1f} | {after:.1f} | {after - before:.1f} |"
                f" {per_client:.2f} |"
            )
        say(f"pooler: {args.waiters} clients waiting for {args.servers} servers")
        cpu = waiting_cpu(targets[0], args.servers, args.waiters)
    finally:
        services.stop_all()
        cluster.destroy()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{args.clients} logged-in idle clients, {args.servers} server connections\n")
    print("| proxy | RSS before, MiB | RSS with clients, MiB | added, MiB | KiB per client |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(
        f"\npooler CPU while {args.waiters} clients wait for {args.servers} busy servers:"
        f" {cpu * 100:.2f}% of one core"
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"idle_clients: {exc}", file=sys.stderr)
        sys.exit(1)
