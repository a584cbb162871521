"""The pooler's configuration: a YAML file read into frozen dataclasses.

``load_config(path)`` reads and checks a file; ``parse_config(data)`` checks data that is
already loaded. Either returns a ``Config`` or raises ``ConfigError``, whose message has
one line per problem, each ``<file>: <key path>: <reason>``: every problem in the file is
reported at once, so an operator fixes them in one round. ``check_warnings(config)`` lists
what is valid but probably not what the operator meant (``pooler check`` prints it).

``etc/pooler.yaml`` documents every key. The dataclasses carry the defaults; only
``parse_config`` validates, so build a ``Config`` through it, not by hand, outside tests.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import math
import os
import re
import ssl
import types
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args
from urllib.parse import urlsplit

import yaml

from pooler.protocol.md5 import is_md5_hash
from pooler.protocol.scram import ScramSecret
from pooler.units import parse_duration, parse_size

__all__ = [
    "MAX_ALLOC_SIZE",
    "Auth",
    "AuthMethod",
    "Backend",
    "Config",
    "ConfigError",
    "Failover",
    "HealthCheck",
    "Limits",
    "Listen",
    "LoadBalance",
    "Log",
    "LogFormat",
    "LogLevel",
    "Pool",
    "PoolMode",
    "QueryCache",
    "Tls",
    "auth_secret_key",
    "check_warnings",
    "is_scram_secret",
    "load_config",
    "parse_config",
]

AuthMethod = Literal["scram-sha-256", "md5", "trust"]
PoolMode = Literal["session", "transaction"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]

#: PostgreSQL's MaxAllocSize (1GB - 1): no PostgreSQL message can be longer, so a
#: configured ``limits.max_message_size`` of 1GB is stored as this.
MAX_ALLOC_SIZE = 0x3FFFFFFF
_MIN_MESSAGE_SIZE = 8 * 1024
# PostgreSQL truncates longer names (NAMEDATALEN - 1), so a longer user could never log in.
_MAX_NAME_BYTES = 63
_SCRAM_PREFIX = "SCRAM-SHA-256$"


@dataclass(frozen=True, slots=True)
class Listen:
    """Where the pooler accepts client connections."""

    host: str = "127.0.0.1"
    port: int = 9999


@dataclass(frozen=True, slots=True)
class Backend:
    """One PostgreSQL node. Its position in ``Config.backends`` is its node id; whether it
    is the primary or a standby is discovered at run time, never configured."""

    host: str
    port: int = 5432
    #: This node's share of load-balanced reads (pgpool-II's backend_weight; the
    #: primary's too); 0 sends it reads only when no other node can take them.
    weight: float = 1.0
    #: Connect through the Unix socket in this directory instead of TCP to ``host``.
    unix_socket_dir: str | None = None
    #: A label for logs and admin views.
    name: str | None = None

    @property
    def unix_socket_path(self) -> str | None:
        """The socket file PostgreSQL creates for ``port`` in ``unix_socket_dir``, if set."""
        if self.unix_socket_dir is None:
            return None
        return os.path.join(self.unix_socket_dir, f".s.PGSQL.{self.port}")


@dataclass(frozen=True, slots=True)
class Auth:
    """How clients log in to the pooler."""

    method: AuthMethod = "scram-sha-256"
    #: Key of the HMAC that derives mock SCRAM salts for unknown users; see
    #: ``auth_secret_key``.
    secret: str | None = None
    #: Seconds a client has to log in before it is dropped (PostgreSQL's
    #: authentication_timeout).
    timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Pool:
    """Server connection pools, one per (node, database, user)."""

    mode: PoolMode = "transaction"
    #: Server connections per (node, database, user), across all startup-parameter sets.
    size: int = 20
    max_clients: int = 1000
    #: Seconds to open and authenticate a server connection.
    connect_timeout: float = 5.0
    #: Seconds a client may wait for a server connection; 0 waits forever.
    checkout_timeout: float = 0.0
    #: Seconds an unused server connection is kept; 0 keeps it forever.
    idle_timeout: float = 600.0
    #: Sent before a server connection passes to another client; "" sends nothing.
    reset_query: str = "DISCARD ALL"


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what one client or server may make the pooler hold."""

    #: Largest message length (the protocol's length field) accepted from either side.
    max_message_size: int = MAX_ALLOC_SIZE


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How the cluster monitor logs in to each node and how often it looks."""

    user: str = "postgres"
    #: None logs in without a password. When the key is absent from the file, the
    #: user's plain password in ``users`` is taken.
    password: str | None = None
    database: str = "postgres"
    #: Seconds between checks of one node; 0 checks nothing (pgpool-II's
    #: health_check_period 0): node 0 is then taken for the primary and every node for up.
    period: float = 1.0
    #: Seconds one check may take.
    timeout: float = 2.0
    #: Failed checks retried before the node counts as down.
    max_retries: int = 1
    #: Seconds between those retries.
    retry_delay: float = 1.0


@dataclass(frozen=True, slots=True)
class Failover:
    """What happens when the primary goes down (see ``pooler.cluster.failover``)."""

    #: Promote a standby when the primary is down (and it is safe: see max_lag_bytes);
    #: false whenever ``patroni_urls`` is set.
    auto_promote: bool = True
    #: Repoint the other standbys at the new primary.
    follow_primary: bool = True
    #: Seconds a repointed standby has to stream from the new primary before it is
    #: reported as one that needs pg_rewind.
    follow_timeout: float = 30.0
    #: Run instead of the builtin promotion, when set (pgpool-II's failover_command);
    #: also when a standby goes down.
    command: str | None = None
    #: Asynchronous replication: promote only a standby at most this many bytes of WAL
    #: behind the old primary's last known position (Patroni's maximum_lag_on_failover).
    max_lag_bytes: int = 1024**2
    #: Who the standbys that follow a new primary replicate as; None: the health check
    #: user (and its password).
    replication_user: str | None = None
    replication_password: str | None = None
    #: A standby that was down (or a false primary) and answers again comes back into
    #: rotation once it streams from the primary; false: it stays detached until ATTACH
    #: NODE (pgpool-II's auto_failback).
    auto_failback: bool = True
    #: Run after a switchover (PROMOTE NODE) to restart the old primary as a standby of
    #: the new one, with failover.command's placeholders; None: the old primary stays
    #: fenced until the operator rebuilds it and attaches it.
    switchover_command: str | None = None
    #: The REST API base URLs of the Patroni members (``http://host:8008``): Patroni
    #: decides who is primary, the pooler follows its ``/cluster`` view and promotes
    #: nothing (see ``pooler.cluster.patroni``). Empty: the pooler decides.
    patroni_urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LoadBalance:
    """How reads are spread over the nodes (both pool modes)."""

    enabled: bool = True
    #: A standby further behind the primary than this many bytes of WAL gets no reads;
    #: 0 sets no limit (pgpool-II's delay_threshold).
    max_lag_bytes: int = 0
    #: A standby further behind than this many seconds gets no reads; 0: no limit.
    max_lag_seconds: float = 0.0
    #: With no node fit for a read, the primary serves it (else the client gets an error).
    fallback_to_primary: bool = True
    #: After a client's write, its reads go only to nodes that have replayed it.
    read_your_writes: bool = True
    #: Seconds between two reads of each database's catalog from the primary (function
    #: volatility, unlogged tables, views); 0 reads it only at first use and after DDL.
    catalog_refresh: float = 60.0
    #: Functions that write whatever the catalog says (pgpool-II's write_function_list).
    write_functions: frozenset[str] = frozenset()
    #: Volatile functions that do not write (pgpool-II's read_only_function_list).
    read_only_functions: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class QueryCache:
    """The in-memory result cache (``pooler.cache``; transaction pooling only)."""

    enabled: bool = False
    #: Bytes of results kept in all.
    max_size: int = 64 * 1024**2
    #: Largest result that is cached, in bytes.
    max_entry_size: int = 1024**2
    #: Seconds an entry lives; 0 keeps it until a write invalidates it or it is evicted.
    ttl: float = 0.0


@dataclass(frozen=True, slots=True)
class Tls:
    """Certificate and key for TLS to clients: both set (absolute paths) or neither."""

    cert: str | None = None
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Metrics:
    """The Prometheus endpoint (pooler.admin.metrics)."""

    host: str = "127.0.0.1"
    #: 0: no endpoint.
    port: int = 0


@dataclass(frozen=True, slots=True)
class Admin:
    """Admin commands (pooler.admin)."""

    #: The read-only pgpool-II views (SHOW POOL_NODES, ...) only for admin_users.
    restrict_show: bool = False
    #: Seconds over which SHOW STATS' averages are taken (PgBouncer's stats_period).
    stats_period: float = 60.0


@dataclass(frozen=True, slots=True)
class Log:
    """Logging to stderr."""

    level: LogLevel = "info"
    format: LogFormat = "json"


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration. ``backends`` and ``users`` have no default."""

    listen: Listen = Listen()
    backends: tuple[Backend, ...]
    #: User name -> plain password or SCRAM-SHA-256 secret; read-only.
    users: Mapping[str, str]
    #: Users allowed to run admin commands; each is in ``users``.
    admin_users: frozenset[str] = frozenset()
    admin: Admin = Admin()
    metrics: Metrics = Metrics()
    auth: Auth = Auth()
    pool: Pool = Pool()
    limits: Limits = Limits()
    health_check: HealthCheck = HealthCheck()
    failover: Failover = Failover()
    load_balance: LoadBalance = LoadBalance()
    query_cache: QueryCache = QueryCache()
    tls: Tls = Tls()
    log: Log = Log()
    #: Seconds clients get to finish on shutdown before they are disconnected.
    shutdown_timeout: float = 5.0


class ConfigError(Exception):
    """A configuration that cannot be used.

    ``str()`` is one line per problem, each starting with the file (or ``source``) name:
    ``/etc/pooler.yaml: pool.size: must be a positive integer, got "x"``.
    """

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        #: The problems without the source prefix, in the order they were found.
        self.problems = tuple(problems)
        super().__init__("\n".join(f"{source}: {problem}" for problem in self.problems))


def is_scram_secret(value: str) -> bool:
    """Whether a ``users`` value is a SCRAM-SHA-256 secret rather than a plain password."""
    return value.startswith(_SCRAM_PREFIX)


def auth_secret_key(config: Config) -> bytes:
    """The HMAC key that derives mock SCRAM salts: ``auth.secret`` when set, otherwise a
    SHA-256 over the sorted users and their passwords or secrets, so the salts stay the
    same across restarts and differ between deployments without any setting."""
    if config.auth.secret is not None:
        return config.auth.secret.encode()
    credentials = json.dumps(sorted(config.users.items())).encode()
    return hashlib.sha256(b"pooler auth secret\0" + credentials).digest()


# --- Reading -----------------------------------------------------------------------------

T = TypeVar("T")
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class _Kind(Generic[T]):
    """What a key accepts: ``parse`` raises ValueError for anything else, which is reported
    as ``must be <what>, got <value>``."""

    what: str
    parse: Callable[[object], T]
    #: A password or key: a problem names the value's type, never the value.
    secret: bool = False


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "a mapping"}
    return names.get(type(value), f"a {type(value).__name__}")


def _quote(text: str) -> str:
    """``text`` in double quotes, escaped so that it cannot break the one-line-per-problem
    shape of a ConfigError: json escapes control characters, not the other line breaks
    that str.splitlines() knows."""
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted.translate({0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def _show(value: object) -> str:
    """``value`` as an operator would write it in YAML, short enough for one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value if len(value) <= 60 else value[:57] + "...")
    # Python refuses to print integers of thousands of digits.
    if (isinstance(value, int) and value.bit_length() <= 64) or isinstance(value, float):
        return repr(value)
    return _type_name(value)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key):
        return f"{path}.{key}" if path else key
    # A user name such as "a.b" must not read as a nested key.
    return f"{path}[{_quote(key)}]"


class _Reader:
    """One YAML mapping at a key path. Problems go to a list shared by the whole file
    instead of being raised, so that one run reports all of them."""

    def __init__(
        self, value: object, path: str, problems: list[str], what: str = "a mapping"
    ) -> None:
        self._path = path
        self._problems = problems
        self._known: set[str] = set()
        self._bad: set[str] = set()
        self._data: Mapping[object, object] = value if isinstance(value, dict) else {}
        # A value that is not a mapping is reported once, here, not once per missing key.
        self._wrong = not isinstance(value, dict) and value is not None and value is not _MISSING
        if self._wrong:
            self.problem(f"must be {what}, got {_show(value)}")

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def problem(self, reason: str, *keys: str | int) -> None:
        """Record a problem with this mapping, or with the value at ``keys`` below it."""
        path = self._path
        for key in keys:
            path = _join(path, key)
        self._problems.append(f"{path}: {reason}" if path else reason)

    def take(self, key: str, *, required: bool = False) -> Any:
        """The raw value of ``key``, or ``_MISSING``; ``key`` is a known key from now on."""
        self._known.add(key)
        if required and not self._wrong and key not in self._data:
            self.problem(f'missing required key "{key}"')
        return self._data.get(key, _MISSING)

    def child(self, value: object, *keys: str | int, what: str = "a mapping") -> _Reader:
        """A reader of ``value``, the mapping at ``keys`` below this one."""
        path = self._path
        for key in keys:
            path = _join(path, key)
        return _Reader(value, path, self._problems, what)

    def section(self, key: str) -> _Reader:
        """A reader of the mapping at ``key``. An absent or null one reads as empty, so a
        section whose every line is commented out keeps its defaults."""
        return self.child(self.take(key), key)

    def fields(self, **kinds: _Kind[Any]) -> dict[str, Any]:
        """The parsed values of the keys that are present and valid. Absent and invalid
        keys are left out, so a dataclass built from the result supplies its defaults."""
        values: dict[str, Any] = {}
        for key, kind in kinds.items():
            value = self.take(key)
            if value is _MISSING:
                continue
            try:
                values[key] = kind.parse(value)
            except ValueError:
                self._bad.add(key)
                got = _type_name(value) if kind.secret else _show(value)
                self.problem(f"must be {kind.what}, got {got}", key)
        return values

    def valid(self, *keys: str) -> bool:
        """Whether none of ``keys`` was reported, so a check across them says something new."""
        return not self._bad.intersection(keys)

    def read(self, cls: Callable[..., T], **kinds: _Kind[Any]) -> T:
        """``cls`` built from ``fields(**kinds)``; any other key is reported."""
        values = self.fields(**kinds)
        self.finish()
        return cls(**values)

    def names(self) -> list[str]:
        """Every string key, for mappings whose keys are data (user names)."""
        names = [key for key in self._data if isinstance(key, str)]
        self._known.update(names)
        return names

    def finish(self) -> None:
        """Report the keys nobody took: misspellings, mostly."""
        known = sorted(self._known)
        for key in self._data:
            if not isinstance(key, str):
                self.problem(f"keys must be strings, got {_show(key)}")
            elif key not in self._known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {_quote(close[0])}?)" if close else ""
                self.problem(f"unknown key {_show(key)}{hint}")


def _integer(low: int, high: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        # bool is an int in Python, but `size: true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        if value < low or (high is not None and value > high):
            raise ValueError
        return value

    return parse


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError
    weight = float(value)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError
    return weight


def _duration(*, positive: bool) -> Callable[[object], float]:
    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise ValueError
        return seconds

    return parse


def _size(low: int, high: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        size = parse_size(value)
        if not low <= size <= high:
            raise ValueError
        return size

    return parse


def _message_size(value: object) -> int:
    # "1GB" is the natural way to write "as much as PostgreSQL allows", which is 1 less.
    return min(_size(_MIN_MESSAGE_SIZE, 1024**3)(value), MAX_ALLOC_SIZE)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError
    return value


def _string(*, empty: bool) -> Callable[[object], str]:
    def parse(value: object) -> str:
        # NUL ends a string in the protocol: such a value could never reach a server.
        if not isinstance(value, str) or "\0" in value or (not empty and not value):
            raise ValueError
        return value

    return parse


def _names(value: object) -> frozenset[str]:
    # pgpool-II writes its lists as one comma-separated string.
    if isinstance(value, str):
        value = [name.strip() for name in value.split(",") if name.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError
    return frozenset(value)


def _choice(options: tuple[T, ...]) -> _Kind[T]:
    def parse(value: object) -> T:
        for option in options:
            if value == option:
                return option
        raise ValueError

    return _Kind("one of " + ", ".join(map(str, options)), parse)


def _optional(kind: _Kind[T]) -> _Kind[T | None]:
    def parse(value: object) -> T | None:
        return None if value is None else kind.parse(value)

    return _Kind(f"{kind.what} or null", parse, kind.secret)


def _path(base_dir: Path) -> _Kind[str]:
    def parse(value: object) -> str:
        return str(base_dir / Path(_string(empty=False)(value)).expanduser())

    return _Kind("a path (relative ones start at the config file's directory)", parse)


_SECONDS = "seconds, or a string with a unit: us, ms, s, min, h, d"
_BYTES = "bytes, or a string with a unit: kB, MB, GB, TB"
_PORT = _Kind("an integer from 1 to 65535", _integer(1, 65535))
_PORT_OR_OFF = _Kind("an integer from 0 (off) to 65535", _integer(0, 65535))
_POSITIVE_INT = _Kind("a positive integer", _integer(1))
_COUNT = _Kind("a non-negative integer", _integer(0))
_WEIGHT = _Kind("a non-negative number", _weight)
_DURATION = _Kind(f"a duration of 0 or more ({_SECONDS})", _duration(positive=False))
_POSITIVE_DURATION = _Kind(f"a duration above 0 ({_SECONDS})", _duration(positive=True))
_NAMES = _Kind(
    "a list of function names (name or schema.name), or one comma-separated string", _names
)
_LAG_SIZE = _Kind(f"a size of 0 or more ({_BYTES})", _size(0, 2**63 - 1))
_CACHE_SIZE = _Kind(f"a size above 0 ({_BYTES})", _size(1, 2**63 - 1))
_MESSAGE_SIZE = _Kind(f"a size from 8kB to 1GB ({_BYTES})", _message_size)
_BOOLEAN = _Kind("true or false", _boolean)
_TEXT = _Kind("a non-empty string", _string(empty=False))
_ANY_TEXT = _Kind("a string", _string(empty=True))
_SECRET = _Kind(
    "a non-empty string (quote one that YAML would read as a number or boolean)",
    _string(empty=False),
    secret=True,
)
_AUTH_METHODS: tuple[AuthMethod, ...] = get_args(AuthMethod)
_POOL_MODES: tuple[PoolMode, ...] = get_args(PoolMode)
_LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)
_LOG_FORMATS: tuple[LogFormat, ...] = get_args(LogFormat)


def _backends(top: _Reader, base_dir: Path) -> tuple[Backend, ...]:
    items = top.take("backends", required=True)
    if items is _MISSING:
        return ()
    if not isinstance(items, list):
        top.problem(f"must be a list of backends, got {_show(items)}", "backends")
        return ()
    if not items:
        top.problem("must list at least one backend", "backends")
    kinds: dict[str, _Kind[Any]] = {
        "host": _TEXT,
        "port": _PORT,
        "weight": _WEIGHT,
        "unix_socket_dir": _optional(_path(base_dir)),
        "name": _optional(_TEXT),
    }
    backends: list[Backend] = []
    first_at: dict[tuple[str, int], int] = {}
    first_named: dict[str, int] = {}
    for index, item in enumerate(items):
        reader = top.child(item, "backends", index)
        reader.take("host", required=True)
        values = reader.fields(**kinds)
        reader.finish()
        # A backend with a bad value was reported; comparing its defaults would mislead.
        if "host" not in values or not reader.valid(*kinds):
            continue
        backend = Backend(**values)
        # Two entries for one server would split its pool and count it twice in failover.
        address = (backend.unix_socket_dir or backend.host, backend.port)
        if address in first_at:
            reader.problem(f"same address as backends[{first_at[address]}]")
        first_at.setdefault(address, index)
        if backend.name is not None:
            if backend.name in first_named:
                other = first_named[backend.name]
                reader.problem(f"{_show(backend.name)} is the name of backends[{other}]", "name")
            first_named.setdefault(backend.name, index)
        backends.append(backend)
    return tuple(backends)


def _users(top: _Reader) -> Mapping[str, str]:
    value = top.take("users", required=True)
    reader = top.child(value, "users", what="a mapping of user names to passwords")
    if value is None or value == {}:
        reader.problem("must name at least one user")
    users: dict[str, str] = {}
    for name in reader.names():
        if not name or "\0" in name or len(name.encode()) > _MAX_NAME_BYTES:
            reader.problem(f"a user name must have 1 to {_MAX_NAME_BYTES} bytes, got {_show(name)}")
            continue
        password = reader.fields(**{name: _SECRET}).get(name)
        if password is None:
            continue
        if is_scram_secret(password):
            try:
                ScramSecret.parse(password)
            except ValueError as exc:
                reader.problem(str(exc), name)
                continue
        users[name] = password
    reader.finish()
    return types.MappingProxyType(users)


def _admin_users(top: _Reader, users: Mapping[str, str]) -> frozenset[str]:
    names = top.take("admin_users")
    if names is _MISSING or names is None:
        return frozenset()
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        top.problem(f"must be a list of user names, got {_show(names)}", "admin_users")
        return frozenset()
    for index, name in enumerate(names):
        if name not in users:
            top.problem(f"{_show(name)} is not one of the users", "admin_users", index)
    return frozenset(names)


def _health_check(top: _Reader, users: Mapping[str, str]) -> HealthCheck:
    reader = top.section("health_check")
    values = reader.fields(
        user=_TEXT,
        password=_optional(_SECRET),
        database=_TEXT,
        period=_DURATION,
        timeout=_POSITIVE_DURATION,
        max_retries=_COUNT,
        retry_delay=_DURATION,
    )
    reader.finish()
    _plain_password(
        reader,
        values,
        users,
        "password",
        values.get("user", HealthCheck().user),
        "the health check logs in as a client",
    )
    return HealthCheck(**values)


def _plain_password(
    reader: _Reader,
    values: dict[str, Any],
    users: Mapping[str, str],
    key: str,
    user: str | None,
    why: str,
) -> None:
    """``values[key]`` must be a plain password (``why`` says who logs in with it); when
    the key is absent, ``user``'s plain password in ``users`` is taken, if it has one:
    one password to change, not two."""
    password = values.get(key)
    if password is not None and is_scram_secret(password):
        reader.problem(f"must be a plain password: {why}", key)
    if user is not None and key not in reader:
        known = users.get(user)
        if known is not None and not is_scram_secret(known):
            values[key] = known


def _url(value: object) -> str:
    text = _string(empty=False)(value)
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError:
        raise ValueError from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError
    return text


_URL = _Kind("an http:// or https:// URL (http://host:8008)", _url)


def _patroni_urls(reader: _Reader) -> tuple[str, ...]:
    items = reader.take("patroni_urls")
    if items is _MISSING or items is None:
        return ()
    if not isinstance(items, list):
        reader.problem(
            f"must be a list of Patroni REST API URLs (http://host:8008), got {_show(items)}",
            "patroni_urls",
        )
        return ()
    urls = []
    for index, item in enumerate(items):
        try:
            urls.append(_URL.parse(item))
        except ValueError:
            reader.problem(f"must be {_URL.what}, got {_show(item)}", "patroni_urls", index)
    return tuple(urls)


def _failover(top: _Reader, users: Mapping[str, str]) -> Failover:
    reader = top.section("failover")
    patroni_urls = _patroni_urls(reader)
    values = reader.fields(
        auto_promote=_BOOLEAN,
        follow_primary=_BOOLEAN,
        follow_timeout=_POSITIVE_DURATION,
        command=_optional(_TEXT),
        max_lag_bytes=_LAG_SIZE,
        replication_user=_optional(_TEXT),
        replication_password=_optional(_SECRET),
        auto_failback=_BOOLEAN,
        switchover_command=_optional(_TEXT),
    )
    reader.finish()
    _plain_password(
        reader,
        values,
        users,
        "replication_password",
        values.get("replication_user"),
        "the standbys log in with it",
    )
    if patroni_urls:
        # Patroni promotes; a second promoter beside it would make two primaries.
        values["patroni_urls"] = patroni_urls
        if values.setdefault("auto_promote", False):
            reader.problem(
                "must be false with failover.patroni_urls: Patroni decides who is primary "
                "and the pooler promotes nothing",
                "auto_promote",
            )
        if values.get("command") is not None:
            reader.problem(
                "cannot be set with failover.patroni_urls: Patroni decides who is primary "
                "and the pooler runs no failover (use Patroni's callbacks)",
                "command",
            )
    return Failover(**values)


#: pgpool-II's names of the function lists, accepted for ours.
_PGPOOL_LISTS = {
    "write_function_list": "write_functions",
    "read_only_function_list": "read_only_functions",
}


def _load_balance(top: _Reader) -> LoadBalance:
    reader = top.section("load_balance")
    values = reader.fields(
        enabled=_BOOLEAN,
        max_lag_bytes=_LAG_SIZE,
        max_lag_seconds=_DURATION,
        fallback_to_primary=_BOOLEAN,
        read_your_writes=_BOOLEAN,
        catalog_refresh=_DURATION,
        write_functions=_NAMES,
        read_only_functions=_NAMES,
        **dict.fromkeys(_PGPOOL_LISTS, _NAMES),
    )
    reader.finish()
    for theirs, ours in _PGPOOL_LISTS.items():
        if theirs not in values:
            continue
        if ours in values:
            reader.problem(f"set {ours} or pgpool-II's {theirs}, not both", theirs)
        values[ours] = values.pop(theirs)
    return LoadBalance(**values)


def _query_cache(top: _Reader) -> QueryCache:
    reader = top.section("query_cache")
    cache = reader.read(
        QueryCache,
        enabled=_BOOLEAN,
        max_size=_CACHE_SIZE,
        max_entry_size=_CACHE_SIZE,
        ttl=_DURATION,
    )
    if cache.max_entry_size > cache.max_size and reader.valid("max_size", "max_entry_size"):
        reader.problem(
            f"must be at most max_size ({cache.max_size} bytes), got {cache.max_entry_size} bytes",
            "max_entry_size",
        )
    return cache


def _tls(top: _Reader, base_dir: Path) -> Tls:
    reader = top.section("tls")
    tls = reader.read(Tls, cert=_optional(_path(base_dir)), key=_optional(_path(base_dir)))
    if not reader.valid("cert", "key"):
        return tls
    if (tls.cert is None) != (tls.key is None):
        reader.problem("cert and key must be set together (or neither, for no TLS)")
        return tls
    unreadable = False
    for key, path in (("cert", tls.cert), ("key", tls.key)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            reader.problem(f"cannot read {_show(path)}: {exc.strerror or exc}", key)
            unreadable = True
    if tls.cert is not None and tls.key is not None and not unreadable:
        # Found now rather than at the first TLS client: a key of another certificate,
        # a file that is no PEM. A passphrase-protected key fails too: no one could type it.
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key, password=b"")
        except ssl.SSLError as exc:
            reader.problem(f"cannot use cert and key: {exc.reason or exc}")
    return tls


def parse_config(
    data: object,
    source: str = "<config>",
    *,
    base_dir: str | os.PathLike[str] | None = None,
) -> Config:
    """Check ``data`` (YAML already loaded) and return it as a ``Config``.

    ``source`` starts every line of a ``ConfigError``; relative paths in the config
    start at ``base_dir`` (default: the current directory). Raises ``ConfigError``
    listing every problem found.
    """
    if data is None:
        raise ConfigError(source, ['the config is empty; it needs at least "backends" and "users"'])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"the top level must be a mapping of keys, got {_show(data)}"])
    problems: list[str] = []
    top = _Reader(data, "", problems)
    base = Path(base_dir if base_dir is not None else ".").absolute()
    users = _users(top)
    config = Config(
        listen=top.section("listen").read(Listen, host=_TEXT, port=_PORT),
        backends=_backends(top, base),
        users=users,
        admin_users=_admin_users(top, users),
        admin=top.section("admin").read(
            Admin, restrict_show=_BOOLEAN, stats_period=_POSITIVE_DURATION
        ),
        metrics=top.section("metrics").read(Metrics, host=_TEXT, port=_PORT_OR_OFF),
        auth=top.section("auth").read(
            Auth,
            method=_choice(_AUTH_METHODS),
            secret=_optional(_SECRET),
            timeout=_POSITIVE_DURATION,
        ),
        pool=top.section("pool").read(
            Pool,
            mode=_choice(_POOL_MODES),
            size=_POSITIVE_INT,
            max_clients=_POSITIVE_INT,
            connect_timeout=_POSITIVE_DURATION,
            checkout_timeout=_DURATION,
            idle_timeout=_DURATION,
            reset_query=_ANY_TEXT,
        ),
        limits=top.section("limits").read(Limits, max_message_size=_MESSAGE_SIZE),
        health_check=_health_check(top, users),
        failover=_failover(top, users),
        load_balance=_load_balance(top),
        query_cache=_query_cache(top),
        tls=_tls(top, base),
        log=top.section("log").read(Log, level=_choice(_LOG_LEVELS), format=_choice(_LOG_FORMATS)),
        **top.fields(shutdown_timeout=_DURATION),
    )
    top.finish()
    if config.failover.patroni_urls and not config.health_check.period:
        problems.append(
            "failover.patroni_urls: needs health_check.period above 0: the pooler follows "
            "Patroni's view once per period"
        )
    if problems:
        raise ConfigError(source, problems)
    return config


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping. PyYAML keeps the last one
    silently, and a second ``pool:`` section that wipes out the first is an easy mistake
    in a long file."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            # Keys brought in by a merge (<<: *defaults) may be overridden: that is the point.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {_show(key)}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = exc.problem or exc.context or "not valid YAML"
    if exc.problem and exc.context:
        at = f" at line {exc.context_mark.line + 1}" if exc.context_mark else ""
        problem = f"{problem} ({exc.context}{at})"
    return where + problem


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and check the YAML file at ``path``. Relative paths inside it start at
    the file's directory. Raises ``ConfigError`` naming the file and every problem."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from None
    try:
        data = yaml.load(raw, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(source, [_yaml_problem(exc)]) from None
    except yaml.YAMLError as exc:  # undecodable bytes: no line to point at
        raise ConfigError(source, ["not valid YAML: " + " ".join(str(exc).split())]) from None
    except RecursionError:
        raise ConfigError(source, ["not valid YAML: nested too deeply"]) from None
    return parse_config(data, source, base_dir=Path(source).parent)


# --- Warnings ----------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def check_warnings(config: Config) -> list[str]:
    """What is valid but probably not what the operator meant, one sentence each,
    starting with the key path. ``pooler check`` prints these; ``pooler run`` runs anyway.
    """
    warnings: list[str] = []
    method = config.auth.method
    for name, secret in config.users.items():
        where = _join("users", name)
        if is_scram_secret(secret) and method != "scram-sha-256":
            why = (
                "md5 clients send a hash of the plain password, which a SCRAM secret cannot check"
                if method == "md5"
                else "with trust the pooler never learns the client key it needs to log in "
                "to the backends as this user"
            )
            warnings.append(
                f"{where}: a SCRAM secret works only with auth.method scram-sha-256: {why}"
            )
        elif is_md5_hash(secret):
            warnings.append(
                f"{where}: looks like an md5 secret from pg_authid, but is used as a plain password"
            )
    check = config.health_check
    if check.password is None and is_scram_secret(config.users.get(check.user, "")):
        warnings.append(
            f"health_check.user: {_quote(check.user)} has only a SCRAM secret in users, which "
            "cannot log in; set health_check.password"
        )
    if method == "trust" and not _is_loopback(config.listen.host):
        warnings.append(
            f"auth.method: trust lets anyone who reaches {config.listen.host}:"
            f"{config.listen.port} log in as any of the users"
        )
    if not config.pool.reset_query:
        warnings.append(
            "pool.reset_query: empty, so one client's session state (SET, prepared "
            "statements, temporary tables) reaches the next client of its server connection"
        )
    if config.failover.command is not None and not config.health_check.period:
        warnings.append(
            "failover.command: never runs: with health_check.period 0 no node is seen down"
        )
    # Drop each of these when its feature lands.
    if config.query_cache.enabled:
        warnings.append("query_cache.enabled: the query cache is not yet in effect")
    return warnings
