"""Whether to promote a standby, and which (sans-IO): plain values in, a decision out.

When the monitor's view has no primary and the node that was the primary is DOWN,
``decide`` looks at what was last known of the old primary (``LastPrimary``: its WAL
position and its ``synchronous_standby_names``) and at what each standby says now
(``StandbyReport``: is its WAL receiver still streaming, how far has it received), and
answers ``Promote`` (which node, and how many bytes of acknowledged writes may be lost),
``Refuse`` (why not: the writes stay refused until a person acts, or until the reason
goes away) or None (there is a primary, or nothing failed).

The rules, strictest first:

- A standby whose WAL receiver still streams from the old primary says that it is
  alive: only the pooler lost it (a network split, an overload). Promoting then would
  make two primaries, so nothing is promoted while any standby asked says so (a primary
  that hangs with its connections open is seen dead by its standbys after their
  ``wal_receiver_timeout``).
- Synchronous replication, ``ANY k (s1, ..., sn)`` (``FIRST k`` alike: a commit is
  acknowledged once on ``k`` of the ``n`` listed standbys): promote only once
  ``n - k + 1`` listed standbys say their WAL receiver no longer streams (their WAL is
  final); at least one of them has every acknowledged commit, so the one among them that
  flushed the most loses nothing that was acknowledged.
- Asynchronous replication: promote the standby that flushed the most, only if it
  received all but at most ``failover.max_lag_bytes`` of the WAL the old primary had at
  its last check (Patroni's ``maximum_lag_on_failover``): that bound is what may be lost.

The rest of this module is the text the actions need: the application name a standby's
WAL receiver uses (``walreceiver_name``), the conninfo and slot name that repoint it
(``primary_conninfo``, ``slot_name``), and pgpool-II's ``failover_command`` placeholders
(``command_line``).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from pooler.cluster.nodes import ClusterView, NodeStatus
from pooler.config import Backend, Failover

__all__ = [
    "CommandValues",
    "LastPrimary",
    "Promote",
    "Quorum",
    "Refuse",
    "StandbyReport",
    "command_line",
    "decide",
    "parse_synchronous_standby_names",
    "primary_conninfo",
    "slot_name",
    "walreceiver_name",
]


@dataclass(frozen=True, slots=True)
class Quorum:
    """A ``synchronous_standby_names`` that is not empty: a commit is acknowledged once
    ``k`` of the listed standbys have it (``ANY``), or the ``k`` first connected ones in
    list order (``FIRST``); either way on at least ``k`` of them."""

    k: int
    #: The standbys' application names, as written (compared case-insensitively, as
    #: PostgreSQL does); ``*`` matches every standby.
    names: tuple[str, ...]
    method: str = "FIRST"

    def lists(self, name: str) -> bool:
        """Whether the standby whose WAL receiver calls itself ``name`` is listed."""
        return any(listed == "*" or listed.lower() == name.lower() for listed in self.names)


# The tokens of PostgreSQL's syncrep grammar: a double-quoted name ("" is a quote in
# it), a word or number, or one of ( , ) *.
_TOKEN = re.compile(r'\s*(?:"((?:[^"]|"")*)"|([^\s,()"*]+)|([(),*]))')
_OPEN, _CLOSE, _COMMA = ("(", False), (")", False), (",", False)


def parse_synchronous_standby_names(text: str) -> Quorum | None:
    """``synchronous_standby_names`` as PostgreSQL reads it; None when empty
    (asynchronous replication). Raises ValueError for text PostgreSQL would refuse."""
    tokens: list[tuple[str, bool]] = []  # (text, quoted)
    position = 0
    text = text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"cannot read synchronous_standby_names {text!r}")
        quoted, word, symbol = match.groups()
        if quoted is not None:
            tokens.append((quoted.replace('""', '"'), True))
        else:
            tokens.append((word or symbol, False))
        position = match.end()
    if not tokens:
        return None
    bad = ValueError(f"cannot read synchronous_standby_names {text!r}")
    method = "FIRST"
    head, quoted = tokens[0]
    if len(tokens) > 2 and not quoted and head.upper() in ("ANY", "FIRST") and tokens[2] == _OPEN:
        method, tokens = head.upper(), tokens[1:]
    if len(tokens) > 1 and tokens[1] == _OPEN:
        count, _ = tokens[0]
        if not count.isdigit() or tokens[-1] != _CLOSE:
            raise bad
        k, tokens = int(count), tokens[2:-1]
    else:
        # A plain list: the first one connected is the synchronous standby.
        k = 1
    names = [name for name, _ in tokens[::2]]
    if not names or len(tokens) % 2 == 0 or any(sep != _COMMA for sep in tokens[1::2]):
        raise bad
    if k < 1:
        # PostgreSQL takes 0 for "no synchronous standby".
        return None
    return Quorum(k, tuple(names), method)


@dataclass(frozen=True, slots=True)
class LastPrimary:
    """What was last seen of the primary while it was up."""

    node: int
    #: Its WAL position at its last check (``pg_current_wal_lsn()``).
    lsn: int | None
    #: Its ``synchronous_standby_names``; None: asynchronous replication.
    sync: Quorum | None = None
    #: False until ``synchronous_standby_names`` was read from it.
    sync_known: bool = False


@dataclass(frozen=True, slots=True)
class StandbyReport:
    """What a standby says about its WAL receiver while the primary is down."""

    node: int
    #: The application name its WAL receiver connects with (see ``walreceiver_name``).
    name: str
    #: Its WAL receiver streams (``pg_stat_wal_receiver.status``): its WAL is not final.
    streaming: bool
    #: The last WAL position received and flushed (``pg_last_wal_receive_lsn()``).
    flush_lsn: int | None
    #: The last WAL position received (written, maybe not flushed), while it has a WAL
    #: receiver.
    receive_lsn: int | None = None

    @property
    def received(self) -> int:
        """The furthest WAL position it has (0 when it never received any)."""
        return max(self.flush_lsn or 0, self.receive_lsn or 0)


@dataclass(frozen=True, slots=True)
class Promote:
    """Promote ``node``."""

    node: int
    #: How far its WAL is behind the old primary's position at its last check (0 with
    #: synchronous replication, where only unacknowledged commits can be beyond it).
    behind: int
    #: Bytes of acknowledged writes possibly lost: 0 with synchronous replication, else
    #: failover.max_lag_bytes (what was written after the last check may be lost too).
    lost_bound: int
    #: Why this node, for the log.
    why: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Promote nothing; ``reason`` says why (the same reason while nothing changes)."""

    reason: str


Decision = Promote | Refuse | None


def decide(
    view: ClusterView,
    last: LastPrimary | None,
    reports: Sequence[StandbyReport],
    policy: Failover,
) -> Decision:
    """What to do about the primary in ``view``.

    ``last``: the old primary as last seen (None if no primary was ever seen);
    ``reports``: what the standbys that could be asked said just now (a standby that did
    not answer has none and cannot be promoted).
    """
    if view.primary is not None or last is None:
        return None
    if view.nodes[last.node].status is not NodeStatus.DOWN:
        # Detached by the operator, or back in recovery: a person is at work.
        return None
    if not policy.auto_promote:
        return Refuse("failover.auto_promote is false: promote a standby by hand")
    standbys = {state.node for state in view.nodes if state.is_standby and state.node != last.node}
    if not standbys:
        return Refuse("no standby is up to take over")
    candidates = [report for report in reports if report.node in standbys]
    if not candidates:
        return Refuse("no standby answered the questions about its WAL")
    alive = [report for report in candidates if report.streaming]
    if alive:
        return Refuse(
            f"{_names(alive)} still stream from the old primary: it is alive for them and "
            f"only the pooler cannot reach it; promoting would make two primaries"
        )
    if not last.sync_known:
        return Refuse(
            "the old primary's synchronous_standby_names was never read, so it is unknown "
            "which standby has every acknowledged commit"
        )
    if last.sync is not None:
        return _decide_sync(last.sync, candidates, len(view.nodes) - 1)
    return _decide_async(last, candidates, policy.max_lag_bytes)


def _best(reports: Sequence[StandbyReport]) -> StandbyReport:
    """The standby with the most WAL (flushed first), then the lowest node id."""
    return max(reports, key=lambda r: (r.flush_lsn or 0, r.received, -r.node))


def _names(reports: Sequence[StandbyReport]) -> str:
    return ", ".join(f"node {r.node} ({r.name})" for r in reports) or "none"


def _decide_sync(quorum: Quorum, candidates: Sequence[StandbyReport], standbys: int) -> Decision:
    listed = [report for report in candidates if quorum.lists(report.name)]
    # "*" lists every standby there is, up or not.
    n = standbys if "*" in quorum.names else len(quorum.names)
    needed = max(1, n - quorum.k + 1)
    setting = f"{quorum.method} {quorum.k} ({', '.join(quorum.names)})"
    if len(listed) < needed:
        return Refuse(
            f"synchronous replication ({setting}): a commit was acknowledged once on "
            f"{quorum.k} of {n} standbys, so {needed} of them must say they stopped "
            f"streaming from the old primary before one is sure to have every acknowledged "
            f"commit; only {_names(listed)} did"
        )
    best = _best(listed)
    return Promote(
        best.node,
        0,
        0,
        f"synchronous replication ({setting}): the most WAL of {_names(listed)}, which "
        f"stopped streaming; no acknowledged commit is lost",
    )


def _decide_async(
    last: LastPrimary, candidates: Sequence[StandbyReport], max_lag_bytes: int
) -> Decision:
    if last.lsn is None:
        return Refuse("the old primary's WAL position was never read")
    best = _best(candidates)
    behind = max(0, last.lsn - best.received)
    if behind > max_lag_bytes:
        return Refuse(
            f"asynchronous replication: the standby with the most WAL, node {best.node}, "
            f"is {behind} bytes behind the old primary's last known position, more than "
            f"failover.max_lag_bytes ({max_lag_bytes}): promoting it would lose those writes"
        )
    return Promote(
        best.node,
        behind,
        max_lag_bytes,
        f"asynchronous replication: the most WAL of {_names(candidates)}; writes possibly "
        f"lost: up to {max_lag_bytes} bytes (failover.max_lag_bytes), {behind} bytes "
        f"behind the old primary's last known position",
    )


# --- What the actions need ----------------------------------------------------------

_CONNINFO_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def _conninfo_options(conninfo: str) -> dict[str, str]:
    """The options of a libpq connection string, ``key=value`` or URI form."""
    if conninfo.startswith(("postgresql://", "postgres://")):
        query = parse_qs(urlsplit(conninfo).query)
        return {key: values[-1] for key, values in query.items()}
    options = {}
    for key, value in _CONNINFO_PAIR.findall(conninfo):
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        options[key] = value
    return options


def walreceiver_name(primary_conninfo: str, cluster_name: str) -> str:
    """The application name a standby's WAL receiver connects with, which its primary's
    ``synchronous_standby_names`` lists: the conninfo's ``application_name``, else the
    ``cluster_name``, else ``walreceiver``."""
    name = _conninfo_options(primary_conninfo).get("application_name")
    return name or cluster_name or "walreceiver"


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def primary_conninfo(
    primary: Backend, user: str, password: str | None, application_name: str
) -> str:
    """The ``primary_conninfo`` that makes a standby stream from ``primary`` (over TCP:
    a Unix socket of the pooler's host is not the standby's)."""
    options = {"host": primary.host, "port": str(primary.port), "user": user}
    if password is not None:
        options["password"] = password
    # The name it had: the new primary's synchronous_standby_names lists it so.
    options["application_name"] = application_name
    return " ".join(f"{key}={_conninfo_value(value)}" for key, value in options.items())


def slot_name(backend: Backend, node: int) -> str:
    """The replication slot on a new primary for the standby ``backend`` (node ``node``):
    its name when it has one (slot names allow only a-z, 0-9 and _), else ``pooler_node_<id>``."""
    if backend.name:
        name = re.sub(r"[^a-z0-9_]", "_", backend.name.lower())[:63]
        if name.strip("_"):
            return name
    return f"pooler_node_{node}"


@dataclass(frozen=True, slots=True)
class CommandValues:
    """What pgpool-II 4.3 puts in a ``failover_command``, for one node that went down.

    The "main node" of pgpool-II is the live node with the lowest id; ours is the node
    that takes writes: the primary while there is one, and, when the primary goes down,
    the standby ``decide`` chose to promote (-1 when there is none).
    """

    failed: int
    new_main: int
    old_main: int
    old_primary: int


def command_line(template: str, values: CommandValues, backends: Sequence[Backend]) -> str:
    """``template`` with pgpool-II 4.3's placeholders replaced, each value shell-quoted
    (so an empty one stays one argument: write the placeholders unquoted).

    %d failed node id, %h its host, %p its port, %D its data directory (empty: the pooler
    does not know it), %m new main node id, %H its host, %r its port, %R its data
    directory (empty), %M old main node id, %P old primary node id, %N old primary host,
    %S old primary port, %% a percent sign. A node id of -1 gives an empty host and port.
    """

    def host(node: int) -> str:
        return backends[node].host if node >= 0 else ""

    def port(node: int) -> str:
        return str(backends[node].port) if node >= 0 else ""

    fields: Mapping[str, str] = {
        "d": str(values.failed),
        "h": host(values.failed),
        "p": port(values.failed),
        "D": "",
        "m": str(values.new_main),
        "H": host(values.new_main),
        "r": port(values.new_main),
        "R": "",
        "M": str(values.old_main),
        "P": str(values.old_primary),
        "N": host(values.old_primary),
        "S": port(values.old_primary),
    }

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key == "%":
            return "%"
        value = fields.get(key)
        # pgpool-II drops an unknown placeholder.
        return "" if value is None else shlex.quote(value)

    return re.sub(r"%(.)", substitute, template)
