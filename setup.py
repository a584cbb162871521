"""Build: the data path's modules (pooler.native.COMPILED) compiled with mypyc.

Set POOLER_PURE_PYTHON=1 to install without compiling (the sources run, slower).
"""

import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, ExecError, PlatformError

# mypyc's bytes slice makes a negative length into an error where Python gives b""
# (b"S"[1:-1]: a malformed message from a client, found by tests/e2e/test_probe_fidelity).
_SLICE_BUG = "Py_ssize_t slice_len = endn - startn;"
_SLICE_FIX = "Py_ssize_t slice_len = endn > startn ? endn - startn : 0;"


class _BuildExt(build_ext):
    """Built in place, the extensions are dated now even when their C did not change
    (nor, then, what the sources say): pooler.native takes an extension older than
    its source for stale."""

    def run(self) -> None:
        try:
            super().run()
        except (CCompilerError, ExecError, PlatformError) as exc:
            # No C compiler or Python headers here: the pooler runs its sources, slower
            # (pooler.native), rather than not installing at all.
            print(
                f"pooler: the data path is not compiled ({exc}); it runs as Python", file=sys.stderr
            )
            return
        if self.inplace:
            for ext in self.extensions:
                os.utime(self.get_ext_fullpath(ext.name))


def _patched_runtime(ext: Extension) -> None:
    """Compile ``ext`` with mypyc's runtime file bytes_ops.c corrected (see _SLICE_BUG)."""
    for include in ext.include_dirs:
        original = Path(include, "bytes_ops.c")
        if original.exists():
            text = original.read_text()
            if _SLICE_BUG in text:
                patched = Path("build", "mypyc-runtime", "bytes_ops.c")
                fixed = text.replace(_SLICE_BUG, _SLICE_FIX)
                if not patched.exists() or patched.read_text() != fixed:
                    patched.parent.mkdir(parents=True, exist_ok=True)
                    patched.write_text(fixed)
                ext.include_dirs.insert(0, str(patched.parent))
                # Compiled again when the correction is newer than the extension.
                ext.depends.append(str(patched))
            return


def _ext_modules() -> list[Extension]:
    if os.environ.get("POOLER_PURE_PYTHON"):
        return []
    from mypyc.build import mypycify

    compiled = runpy.run_path("pooler/native.py")["COMPILED"]
    paths = [name.replace(".", "/") + ".py" for name in compiled]
    # The shared library goes inside the package (pooler/compiled__mypyc...so): at the
    # top level, an editable install's finder would not find it outside the checkout.
    extensions = mypycify(paths, opt_level="3", group_name="pooler.compiled")
    for ext in extensions:
        _patched_runtime(ext)
    return extensions


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": _BuildExt})
