"""The config loader: every error names its key, defaults, sizes, warnings, the CLI."""

from __future__ import annotations

import base64
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from pooler.config import (
    MAX_ALLOC_SIZE,
    Auth,
    Backend,
    Config,
    ConfigError,
    HealthCheck,
    Pool,
    QueryCache,
    auth_secret_key,
    check_warnings,
    is_scram_secret,
    load_config,
    parse_config,
)
from pooler.protocol.scram import ScramSecret
from pooler.units import parse_duration, parse_size

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "etc" / "pooler.yaml"
CORPUS = Path(__file__).resolve().parent / "config_errors"
CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))
MINIMAL: dict[str, Any] = {"backends": [{"host": "127.0.0.1"}], "users": {"app": "app"}}
KEY = base64.b64encode(bytes(range(32))).decode()
SCRAM = f"SCRAM-SHA-256$4096:c2FsdHNhbHQ=${KEY}:{KEY}"


def problems(data: object) -> tuple[str, ...]:
    """The problems parse_config reports for ``data``; fails if it reports none."""
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


def with_minimal(**sections: object) -> dict[str, Any]:
    return {**MINIMAL, **sections}


def expected_lines(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


def matches(pattern: str, problem: str) -> bool:
    """``*`` in a corpus expectation stands for any text (absolute paths, long lists)."""
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    return re.fullmatch(regex, problem) is not None


# --- The corpus: one file per mistake, its expected problems in "# expect:" lines. ---


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS_FILES) >= 25
    assert all(expected_lines(path) for path in CORPUS_FILES)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_corpus(path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    expected = expected_lines(path)
    got = info.value.problems
    # All problems are reported, in the order found, and nothing else.
    assert len(got) == len(expected), got
    for pattern, problem in zip(expected, got, strict=True):
        assert matches(pattern, problem), (pattern, problem)
    lines = str(info.value).splitlines()
    assert lines == [f"{path}: {problem}" for problem in got]


def test_passwords_and_secrets_never_appear_in_errors() -> None:
    message = str(ConfigError("x", problems(with_minimal(users={"app": 987654321}))))
    assert "987654321" not in message
    broken = SCRAM.replace(KEY, "c2hvcnQ=", 1)
    assert "c2FsdHNhbHQ" not in " ".join(problems(with_minimal(users={"app": broken})))
    secret = {"auth": {"secret": ["hunter2"]}}
    assert "hunter2" not in " ".join(problems(with_minimal(**secret)))


# --- Files, YAML and the top level ----------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = f"^{re.escape(str(path))}: cannot read the file: No such file or directory$"
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path))}: cannot read the file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", 'the config is empty; it needs at least "backends" and "users"'),
        (b"users: {app: \xe9}\n", "not valid YAML: *"),
        (b"[" * 5000 + b"]" * 5000, "*"),
        (b"a: *nope\n", "line 1, column 4: found undefined alias 'nope'"),
        (b"---\na: 1\n---\nb: 2\n", "line 3, column 1: but found another document*"),
        (b"just words\n", 'the top level must be a mapping of keys, got "just words"'),
    ],
    ids=["empty", "not-utf8", "deep", "alias", "two-documents", "scalar"],
)
def test_file_level_problems(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert len(info.value.problems) == 1
    assert matches(problem, info.value.problems[0])


def test_merge_keys_may_override() -> None:
    text = "base: &b {size: 5, mode: session}\n"
    data = yaml.load(text + "pool: {<<: *b, size: 7}\n", Loader=yaml.SafeLoader)
    del data["base"]
    assert parse_config(with_minimal(pool=data["pool"])).pool.size == 7


def test_source_prefixes_every_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"pool": {"size": 0}}, source="here.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("here.yaml: ") for line in lines)
    assert info.value.source == "here.yaml"


# --- Valid configs and defaults -------------------------------------------------------


def test_minimal_config_takes_every_default() -> None:
    config = parse_config(MINIMAL)
    assert config == Config(
        backends=(Backend(host="127.0.0.1"),),
        users={"app": "app"},
    )
    assert config.listen.host == "127.0.0.1"
    assert config.listen.port == 9999
    assert config.backends[0].port == 5432
    assert config.backends[0].weight == 1.0
    assert config.admin_users == frozenset()
    assert config.auth == Auth(method="scram-sha-256", secret=None)
    assert config.pool == Pool(
        mode="transaction",
        size=20,
        max_clients=1000,
        connect_timeout=5.0,
        checkout_timeout=0.0,
        idle_timeout=600.0,
        reset_query="DISCARD ALL",
    )
    assert config.limits.max_message_size == MAX_ALLOC_SIZE
    assert config.query_cache == QueryCache(
        enabled=False, max_size=64 * 1024**2, max_entry_size=1024**2, ttl=0.0
    )
    assert config.failover.auto_promote and config.failover.follow_primary
    assert config.failover.auto_failback and config.failover.switchover_command is None
    assert config.load_balance.enabled
    assert config.tls.cert is None and config.tls.key is None
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.shutdown_timeout == 5.0
    assert check_warnings(config) == []


def test_patroni_urls_turn_auto_promote_off() -> None:
    urls = ["http://127.0.0.1:8008", "https://db2.example:8008/"]
    failover = parse_config(with_minimal(failover={"patroni_urls": urls})).failover
    assert failover.patroni_urls == tuple(urls)
    assert not failover.auto_promote
    explicit = with_minimal(failover={"patroni_urls": urls, "auto_promote": False})
    assert parse_config(explicit).failover == failover
    assert parse_config(with_minimal(failover={"patroni_urls": []})).failover.auto_promote


def test_null_sections_keep_their_defaults() -> None:
    config = parse_config(with_minimal(pool=None, listen=None, tls=None, admin_users=None))
    assert config.pool == Pool()
    assert config.admin_users == frozenset()


def test_config_is_frozen_and_users_read_only() -> None:
    config = parse_config(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.pool = Pool()  # type: ignore[misc]
    assert isinstance(config.users, types.MappingProxyType)
    with pytest.raises(TypeError):
        config.users["eve"] = "x"  # type: ignore[index]


def test_sample_config_parses_with_the_issue_values() -> None:
    config = load_config(SAMPLE)
    assert [(b.host, b.port, b.weight) for b in config.backends] == [
        ("127.0.0.1", 5432, 1.0),
        ("127.0.0.1", 5433, 1.0),
    ]
    assert dict(config.users) == {"app": "app", "postgres": "postgres"}
    assert config.admin_users == frozenset({"postgres"})
    assert config.listen.port == 9999
    assert config.health_check.password == "postgres"
    assert config.limits.max_message_size == MAX_ALLOC_SIZE
    assert check_warnings(config) == []


def _keys(data: object, prefix: str = "") -> set[str]:
    """Every key path in loaded YAML, list elements merged: "backends.weight"."""
    if isinstance(data, dict):
        found = set()
        for key, value in data.items():
            found |= {f"{prefix}{key}"} | _keys(value, f"{prefix}{key}.")
        return found
    if isinstance(data, list):
        return set().union(*(_keys(item, prefix) for item in data))
    return set()


def _fields(cls: type, prefix: str = "") -> set[str]:
    """Every key path the dataclasses define, e.g. "pool.size", "backends.weight"."""
    found = set()
    for f in dataclasses.fields(cls):
        found.add(prefix + f.name)
        nested = type(f.default) if dataclasses.is_dataclass(f.default) else None
        if f.name == "backends":
            nested = Backend
        if nested is not None:
            found |= _fields(nested, f"{prefix}{f.name}.")
    return found


def test_sample_documents_every_key() -> None:
    assert _fields(Config) <= _keys(yaml.safe_load(SAMPLE.read_text()))


def test_issue_example_is_accepted() -> None:
    text = """
    listen: {host: 127.0.0.1, port: 9999}
    backends:
      - {host: 127.0.0.1, port: 5432, weight: 1}
      - {host: 127.0.0.1, port: 5433, weight: 1}
    users: {app: app, postgres: postgres}
    admin_users: [postgres]
    auth: {method: scram-sha-256}
    pool: {mode: session, size: 20, max_clients: 1000}
    limits: {max_message_size: 1GB}
    health_check: {user: postgres, password: postgres, period: 1, timeout: 2, max_retries: 1}
    failover: {auto_promote: true, follow_primary: true}
    load_balance: {enabled: true}
    query_cache: {enabled: false}
    tls: {cert: null, key: null}
    """
    config = parse_config(yaml.safe_load(text))
    assert config.health_check == HealthCheck(user="postgres", password="postgres")


def test_units_in_durations_and_sizes() -> None:
    config = parse_config(
        with_minimal(
            pool={"idle_timeout": "10min", "connect_timeout": "500ms", "checkout_timeout": 2.5},
            query_cache={"max_size": "1.5GB", "max_entry_size": "64kB", "ttl": "1h"},
            limits={"max_message_size": "512MB"},
        )
    )
    assert config.pool.idle_timeout == 600.0
    assert config.pool.connect_timeout == 0.5
    assert config.pool.checkout_timeout == 2.5
    assert config.query_cache.max_size == 1536 * 1024**2
    assert config.query_cache.max_entry_size == 65536
    assert config.query_cache.ttl == 3600.0
    assert config.limits.max_message_size == 512 * 1024**2


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("1GB", MAX_ALLOC_SIZE),
        ("1024MB", MAX_ALLOC_SIZE),
        (1024**3, MAX_ALLOC_SIZE),
        ("8kB", 8192),
        (65536, 65536),
        ("1023MB", 1023 * 1024**2),
    ],
)
def test_max_message_size_is_capped_at_postgres_limit(written: object, stored: int) -> None:
    config = parse_config(with_minimal(limits={"max_message_size": written}))
    assert config.limits.max_message_size == stored


def test_scram_secret_is_accepted_and_parsed() -> None:
    config = parse_config(with_minimal(users={"app": SCRAM}))
    assert is_scram_secret(config.users["app"])
    secret = ScramSecret.parse(SCRAM)
    assert secret.iterations == 4096
    assert secret.salt == b"saltsalt"
    assert secret.stored_key == secret.server_key == bytes(range(32))


def test_md5_looking_password_is_a_plain_password_with_a_warning() -> None:
    md5 = "md5" + "0" * 32
    config = parse_config(with_minimal(users={"app": md5}))
    assert config.users["app"] == md5
    assert check_warnings(config) == [
        "users.app: looks like an md5 secret from pg_authid, but is used as a plain password"
    ]


def test_backend_options_and_socket_path(tmp_path: Path) -> None:
    backends = [
        {"host": "db", "unix_socket_dir": "/run/pg", "port": 5433, "name": "a", "weight": 0},
        {"host": "db", "unix_socket_dir": "sockets", "weight": 2.5},
        {"host": "db"},
    ]
    config = parse_config({**MINIMAL, "backends": backends}, base_dir=tmp_path)
    first, second, third = config.backends
    assert first.unix_socket_path == "/run/pg/.s.PGSQL.5433"
    assert (first.name, first.weight) == ("a", 0.0)
    assert second.unix_socket_dir == str(tmp_path / "sockets")
    assert second.weight == 2.5
    assert third.unix_socket_path is None


def test_health_check_password_defaults_to_the_users_password() -> None:
    users = {"app": "app", "postgres": "pg-pass", "scram": SCRAM}
    base = {**MINIMAL, "users": users}
    assert parse_config(base).health_check.password == "pg-pass"
    checks = {
        "app": "app",
        "scram": None,  # a SCRAM secret is no password to log in with
        "monitor": None,  # not a user: logs in without a password
    }
    for user, password in checks.items():
        config = parse_config({**base, "health_check": {"user": user}})
        assert config.health_check.password == password, user
    explicit = {"user": "postgres", "password": None}
    assert parse_config({**base, "health_check": explicit}).health_check.password is None
    own = {"user": "monitor", "password": "m"}
    assert parse_config({**base, "health_check": own}).health_check.password == "m"


def test_several_problems_in_one_section_are_all_reported() -> None:
    got = problems(with_minimal(pool={"size": -1, "max_clients": "many", "mode": "x"}))
    assert [p.split(":")[0] for p in got] == ["pool.mode", "pool.size", "pool.max_clients"]


def test_user_names_with_dots_are_quoted_in_key_paths() -> None:
    got = problems(with_minimal(users={"a.b": 1}))
    assert got[0].startswith('users["a.b"]: must be a non-empty string')


def test_admin_users_must_be_users() -> None:
    config = parse_config(with_minimal(admin_users=["app", "app"]))
    assert config.admin_users == frozenset({"app"})
    assert problems(with_minimal(admin_users=[1])) == (
        "admin_users: must be a list of user names, got a list",
    )


def test_invalid_max_size_does_not_also_report_entry_size() -> None:
    got = problems(with_minimal(query_cache={"max_size": "big", "max_entry_size": "100MB"}))
    assert len(got) == 1 and got[0].startswith("query_cache.max_size:")


# --- TLS ------------------------------------------------------------------------------


def _make_cert(directory: Path, name: str) -> None:
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
            str(directory / f"{name}.key"),
            "-out",
            str(directory / f"{name}.crt"),
        ],
        check=True,
        capture_output=True,
    )


needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


@needs_openssl
def test_tls_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    _make_cert(tmp_path, "server")
    path = tmp_path / "pooler.yaml"
    path.write_text(yaml.safe_dump(with_minimal(tls={"cert": "server.crt", "key": "server.key"})))
    config = load_config(path)
    assert config.tls.cert == str(tmp_path / "server.crt")
    assert config.tls.key == str(tmp_path / "server.key")


@needs_openssl
def test_tls_key_of_another_certificate_is_rejected(tmp_path: Path) -> None:
    _make_cert(tmp_path, "one")
    _make_cert(tmp_path, "two")
    tls = {"cert": "one.crt", "key": "two.key"}
    with pytest.raises(ConfigError) as info:
        parse_config(with_minimal(tls=tls), base_dir=tmp_path)
    assert info.value.problems[0].startswith("tls: cannot use cert and key: ")


def test_tls_file_that_is_not_pem(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("not a certificate")
    (tmp_path / "k").write_text("not a key")
    got = problems(with_minimal(tls={"cert": str(tmp_path / "c"), "key": str(tmp_path / "k")}))
    assert len(got) == 1 and got[0].startswith("tls: cannot use cert and key: ")


# --- Warnings and the auth key --------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "warning"),
    [
        (
            {"users": {"app": SCRAM}, "auth": {"method": "md5"}},
            "users.app: a SCRAM secret works only with auth.method scram-sha-256: md5 clients*",
        ),
        (
            {"users": {"app": SCRAM}, "auth": {"method": "trust"}},
            "users.app: a SCRAM secret works only with auth.method scram-sha-256: with trust*",
        ),
        (
            {"users": {"app": "a", "postgres": SCRAM}},
            'health_check.user: "postgres" has only a SCRAM secret in users*',
        ),
        ({"query_cache": {"enabled": True}}, "query_cache.enabled: *not yet in effect"),
        (
            {"failover": {"command": "promote.sh"}, "health_check": {"period": 0}},
            "failover.command: never runs*",
        ),
        (
            {"auth": {"method": "trust"}, "listen": {"host": "0.0.0.0"}},
            "auth.method: trust lets anyone who reaches 0.0.0.0:9999 log in*",
        ),
        ({"pool": {"reset_query": ""}}, "pool.reset_query: empty, so one client's session*"),
    ],
    ids=[
        "scram-md5",
        "scram-trust",
        "health-scram",
        "cache",
        "command",
        "trust-open",
        "no-reset",
    ],
)
def test_warnings(sections: dict[str, Any], warning: str) -> None:
    warnings = check_warnings(parse_config(with_minimal(**sections)))
    assert len(warnings) == 1, warnings
    assert matches(warning, warnings[0]), warnings


def test_trust_on_loopback_is_no_warning() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        config = parse_config(with_minimal(auth={"method": "trust"}, listen={"host": host}))
        assert check_warnings(config) == []


def test_auth_secret_key() -> None:
    configured = parse_config(with_minimal(auth={"secret": "s3cret"}))
    assert auth_secret_key(configured) == b"s3cret"
    derived = auth_secret_key(parse_config(MINIMAL))
    assert len(derived) == 32
    assert auth_secret_key(parse_config(MINIMAL)) == derived
    reordered = with_minimal(users={"b": "2", "app": "app"})
    assert auth_secret_key(parse_config(reordered)) == auth_secret_key(
        parse_config(with_minimal(users={"app": "app", "b": "2"}))
    )
    changed = with_minimal(users={"app": "other"})
    assert auth_secret_key(parse_config(changed)) != derived


# --- Sizes and durations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        (0, 0),
        (65536, 65536),
        ("64kB", 65536),
        ("64KB", 65536),
        ("512MB", 512 * 1024**2),
        ("1GB", 1024**3),
        ("1gb", 1024**3),
        ("2TB", 2 * 1024**4),
        ("1.5kB", 1536),
        (" 8 MB ", 8 * 1024**2),
        ("100B", 100),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text", ["", "kB", "1XB", "-1", -1, "1 2MB", True, 1.5, None, "1e3", "9" * 400 + "TB"]
)
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (1, 1.0),
        (0.25, 0.25),
        ("5", 5.0),
        ("500ms", 0.5),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("250us", 0.00025),
        ("3 s", 3.0),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["", "fast", "5 parsecs", -1, "-1s", True, float("inf"), float("nan"), 10**400, []]
)
def test_parse_duration_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["B", "kB", "MB", "GB", "TB"]))
def test_size_units_are_powers_of_1024(number: int, unit: str) -> None:
    power = ["B", "kB", "MB", "GB", "TB"].index(unit)
    assert parse_size(f"{number}{unit}") == number * 1024**power


# --- Whatever the input: a Config or a ConfigError, never another exception -----------

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)
_section_keys = sorted({name.split(".")[-1] for name in _fields(Config)})


@given(_values)
def test_any_data_gives_config_or_config_error(data: object) -> None:
    try:
        parse_config(data)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        assert len(lines) == len(exc.problems) > 0
        assert all(line.startswith("<config>: ") for line in lines)


@given(
    st.sampled_from([f.name for f in dataclasses.fields(Config)]),
    st.dictionaries(st.sampled_from(_section_keys) | st.text(max_size=6), _values, max_size=4)
    | _values,
)
def test_any_section_gives_config_or_config_error(section: str, value: object) -> None:
    try:
        parse_config({**MINIMAL, section: value})
    except ConfigError as exc:
        assert len(str(exc).splitlines()) == len(exc.problems) > 0


# --- End to end through the command line ----------------------------------------------


def pooler(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pooler", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


BAD = CORPUS / "pool_size_not_integer.yaml"
BAD_MESSAGE = f'{BAD}: pool.size: must be a positive integer, got "x"'


@pytest.mark.parametrize("command", ["check", "run"])
def test_cli_bad_config_exits_2_with_the_message(command: str) -> None:
    result = pooler(command, "--config", str(BAD))
    assert result.returncode == 2
    assert BAD_MESSAGE in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cli_syntax_error_and_missing_file() -> None:
    result = pooler("check", "--config", str(CORPUS / "syntax_bad_indent.yaml"))
    assert result.returncode == 2
    assert "line 5, column 9: mapping values are not allowed here" in result.stderr
    missing = pooler("run", "--config", "no/such/file.yaml")
    assert missing.returncode == 2
    assert "no/such/file.yaml: cannot read the file" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


def test_cli_check_sample_is_clean() -> None:
    result = pooler("check", "--config", "etc/pooler.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "etc/pooler.yaml: OK" in result.stdout


def test_cli_check_prints_warnings(tmp_path: Path) -> None:
    path = tmp_path / "pooler.yaml"
    path.write_text(yaml.safe_dump(with_minimal(query_cache={"enabled": True})))
    result = pooler("check", "--config", str(path))
    assert result.returncode == 0
    assert "warning: query_cache.enabled: the query cache is not yet in effect" in result.stderr
    assert "OK (1 warnings)" in result.stdout
