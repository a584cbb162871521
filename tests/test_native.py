"""The compiled data path (pooler.native): built, never stale, and answering as its source.

mypyc's C is not Python: the differential tests feed the same bytes to a compiled
module and to its source loaded beside it and compare what comes out (a negative bytes
slice length was such a difference: ``b"S"[1:-1]`` raised in compiled code).
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pooler import native
from pooler.engine import statements
from pooler.protocol import codec
from pooler.protocol import messages as m

_SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def test_this_checkout_runs_the_compiled_data_path() -> None:
    """scripts/setup-venv (run by scripts/test) compiles what changed: the tests run the
    code that ships, not a slower or older copy of it."""
    if os.environ.get("POOLER_PURE_PYTHON"):
        assert native.STATE != "compiled"
        return
    assert native.STATE == "compiled", (
        f"pooler.native.STATE is {native.STATE!r} (stale: {native.stale_modules()}); "
        "run scripts/setup-venv"
    )
    assert codec.__file__ is not None and codec.__file__.endswith(_SUFFIX)


def test_the_compiled_path_loads_from_any_directory(tmp_path: Path) -> None:
    """As `pooler run` started from elsewhere: an editable install's finder knows the
    package only, so everything compiled must live inside it."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import pooler.native as n, pooler.engine.client as c; print(n.STATE, c.__file__)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    if not os.environ.get("POOLER_PURE_PYTHON"):
        assert done.stdout.startswith("compiled "), done.stdout


def _tree(root: Path, built: dict[str, float | None]) -> None:
    """Sources dated 1000 and extensions dated as ``built`` says (None: not built)."""
    for module, when in built.items():
        source = native.source_path(module, root)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text("")
        os.utime(source, (1000, 1000))
        if when is not None:
            extension = source.with_suffix(_SUFFIX)
            extension.write_bytes(b"")
            os.utime(extension, (when, when))


@pytest.mark.parametrize(
    ("built", "state"),
    [
        ({"p.a": None, "p.b": None}, "pure"),
        ({"p.a": 2000, "p.b": 1000}, "compiled"),
        ({"p.a": 2000, "p.b": 999}, "stale"),
        ({"p.a": 2000, "p.b": None}, "stale"),
    ],
)
def test_state_follows_the_dates_of_sources_and_extensions(
    tmp_path: Path, built: dict[str, float | None], state: str
) -> None:
    _tree(tmp_path, built)
    assert native.state_of(list(built), tmp_path, None) == state


def test_a_missing_or_older_library_is_stale(tmp_path: Path) -> None:
    """The extensions are shims that load one shared library; setup.py says how it is
    built (its name, the corrections to mypyc's runtime)."""
    _tree(tmp_path, {"p.a": 2000, "p.lib": 2000})
    native.source_path("p.lib", tmp_path).unlink()
    assert native.state_of(["p.a"], tmp_path, "p.lib") == "compiled"
    setup = tmp_path / "setup.py"
    setup.write_text("")
    os.utime(setup, (3000, 3000))
    assert native.state_of(["p.a"], tmp_path, "p.lib") == "stale"
    native.extension_path("p.lib", tmp_path).unlink()  # type: ignore[union-attr]
    os.utime(setup, (1000, 1000))
    assert native.state_of(["p.a"], tmp_path, "p.lib") == "stale"


def test_stale_modules_are_imported_from_source(tmp_path: Path) -> None:
    """An extension that is there (here one that cannot even load) is passed over."""
    package = tmp_path / "nativeprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text("WHERE = 'source'\n")
    (package / f"mod{_SUFFIX}").write_bytes(b"not an extension")
    finder = native.FromSource(["nativeprobe.mod"], tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ImportError):
            importlib.import_module("nativeprobe.mod")
        sys.meta_path.insert(0, finder)
        assert importlib.import_module("nativeprobe.mod").WHERE == "source"
    finally:
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        sys.path.remove(str(tmp_path))
        for name in ("nativeprobe.mod", "nativeprobe"):
            sys.modules.pop(name, None)


# --- the compiled modules against their sources ------------------------------------


def _source_of(module: ModuleType) -> ModuleType:
    """``module`` loaded again from its .py file, under another name."""
    name = f"_source_of_{module.__name__.replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(name, native.source_path(module.__name__))
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded  # dataclasses look their module up
    spec.loader.exec_module(loaded)
    return loaded


@pytest.fixture(scope="module")
def sources() -> Iterator[dict[str, ModuleType]]:
    loaded = {"codec": _source_of(codec), "statements": _source_of(statements)}
    yield loaded
    for module in loaded.values():
        sys.modules.pop(module.__name__, None)


def _outcome(call: Any) -> object:
    """What a call gave, comparable between compiled and source classes."""
    try:
        return ("ok", _plain(call()))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


def _plain(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bytes | bytearray | int | str | type(None)):
        return value
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    # (Of the instance: a compiled class keeps it behind a descriptor.)
    fields: tuple[str, ...] = value.__match_args__  # type: ignore[attr-defined]
    return (type(value).__name__, *(_plain(getattr(value, f)) for f in fields))


_TYPES = [*b"QPBDECSHXFdcf", 0, 255]
_stream = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(_TYPES), st.binary(max_size=40)).map(lambda tb: codec.frame(*tb)),
        st.binary(max_size=12),
    ),
    max_size=8,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=_stream, cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_scanner_as_its_source(
    sources: dict[str, ModuleType], data: bytes, cuts: list[int]
) -> None:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in itertools.pairwise(points)]
    split = frozenset({m.QUERY, m.PARSE, m.CLOSE})
    kwargs: dict[str, Any] = {
        "track": frozenset({m.SYNC, m.BIND}),
        "stop": frozenset({m.TERMINATE}),
    }
    limits = codec.frontend_limits(100)
    scanners = [
        codec.Scanner(split, frozenset({m.DESCRIBE}), limits, **kwargs),
        sources["codec"].Scanner(split, frozenset({m.DESCRIBE}), limits, **kwargs),
    ]
    runs: list[list[object]] = [[], []]
    for chunk in chunks:
        for scanner, run in zip(scanners, runs, strict=True):
            run.append(_outcome(lambda s=scanner, c=chunk: s.feed(c)))
            run.append((list(scanner.tracked), scanner.last_type, scanner.ready_count))
    assert runs[0] == runs[1]


@settings(max_examples=300, deadline=None)
@given(packet=st.binary(max_size=60), params=st.lists(st.text(max_size=6), max_size=6))
def test_startup_packets_as_their_source(
    sources: dict[str, ModuleType], packet: bytes, params: list[str]
) -> None:
    pairs = tuple(zip(params[::2], params[1::2], strict=False))
    built = codec.build_startup_message(pairs)[4:]
    for body in (packet, built, built[:-1] + packet):
        assert _outcome(lambda b=body: codec.parse_startup_packet(b)) == _outcome(
            lambda b=body: sources["codec"].parse_startup_packet(b)
        )


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from([m.DESCRIBE, m.CLOSE]), body=st.binary(max_size=12))
def test_describe_and_close_as_their_source(
    sources: dict[str, ModuleType], kind: int, body: bytes
) -> None:
    source = sources["statements"]
    assert _outcome(
        lambda: statements.rewrite_describe_or_close(
            kind, body, statements.ClientStatements(), None
        )
    ) == _outcome(
        lambda: source.rewrite_describe_or_close(kind, body, source.ClientStatements(), None)
    )
