"""The data path's modules compiled with mypyc, and what to do when they are stale.

``setup.py`` compiles the modules of ``COMPILED`` into C extensions placed next to their
sources (``pip install``, ``pip install -e`` and ``scripts/setup-venv`` do it). Python
imports an extension before the source of the same name, so an extension older than
its source would run code that is no longer in the file: ``use_fresh_code`` (called by
``pooler/__init__.py`` before anything else of the pooler is imported) then has every
one of them imported from source instead, since compiled modules call each other
directly and cannot be mixed with sources. ``STATE`` says which happened.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Literal

#: Modules compiled by setup.py: everything a request and its answer pass through.
COMPILED = (
    "pooler.protocol.codec",
    "pooler.protocol.messages",
    "pooler.protocol.outstanding",
    "pooler.engine.actions",
    "pooler.engine.client",
    "pooler.engine.server",
    "pooler.engine.session_state",
    "pooler.engine.settings",
    "pooler.engine.statements",
    "pooler.net.client",
    "pooler.net.server",
    "pooler.pool",
    "pooler.routing.balancer",
    "pooler.routing.search_path",
    "pooler.routing.targets",
    "pooler.cache.answer",
    "pooler.cache.key",
    "pooler.cache.positions",
    "pooler.cache.query_cache",
    "pooler.cache.session",
    "pooler.cache.store",
    "pooler.app",
    "pooler.admin.port",
    "pooler.admin.words",
)

#: The library all of them are compiled into (setup.py's group_name).
SHARED = "pooler.compiled__mypyc"

#: The directory that holds the ``pooler`` package.
ROOT = Path(__file__).resolve().parent.parent

State = Literal["compiled", "pure", "stale"]

#: "compiled": the extensions run; "pure": none was built (or POOLER_PURE_PYTHON was
#: set when installing); "stale": a source changed after the build (or an extension is
#: missing), so all of them run from source.
STATE: State = "pure"


def source_path(module: str, root: Path = ROOT) -> Path:
    """The .py file of ``module``."""
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extension_path(module: str, root: Path = ROOT) -> Path | None:
    """The compiled extension of ``module`` next to its source, if one was built."""
    source = source_path(module, root)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_suffix(suffix)
        if candidate.exists():
            return candidate
    return None


def stale_modules(modules: Sequence[str] = COMPILED, root: Path = ROOT) -> list[str]:
    """Modules whose extension is missing or older than their source."""
    stale = []
    for module in modules:
        built = extension_path(module, root)
        if built is None or source_path(module, root).stat().st_mtime > built.stat().st_mtime:
            stale.append(module)
    return stale


def _library_stale(shared: str, root: Path) -> bool:
    """The library is missing, or older than the build's own description (setup.py,
    in a checkout)."""
    library = extension_path(shared, root)
    if library is None:
        return True
    setup = root / "setup.py"
    return setup.exists() and setup.stat().st_mtime > library.stat().st_mtime


def state_of(
    modules: Sequence[str] = COMPILED, root: Path = ROOT, shared: str | None = SHARED
) -> State:
    """Whether ``modules`` (compiled into ``shared``) are compiled, not compiled at
    all, or compiled but stale."""
    if all(extension_path(module, root) is None for module in modules):
        return "pure"
    if stale_modules(modules, root) or (shared is not None and _library_stale(shared, root)):
        return "stale"
    return "compiled"


class FromSource(MetaPathFinder):
    """Imports ``modules`` from their sources under ``root``, extensions or not."""

    def __init__(self, modules: Sequence[str] = COMPILED, root: Path = ROOT) -> None:
        self.modules = frozenset(modules)
        self.root = root

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname, self.root))


def use_fresh_code() -> None:
    """Set ``STATE``; when the extensions are stale, import the sources instead."""
    global STATE
    STATE = state_of()
    if STATE == "stale":
        sys.meta_path.insert(0, FromSource())
