"""Start ``pooler run`` processes by forking one that has imported the pooler already.

The suite starts some three hundred poolers; each spent most of its 0.4 s start in
Python's start-up and imports. The zygote pays that once: ``python tests/zygote.py``
imports the pooler, then reads one JSON request per line on stdin and answers one JSON
line on stdout:

- ``{"start": [argv...], "log": path}``: fork a child that runs ``pooler`` with that
  argv, stdout and stderr to ``log``, stdin from /dev/null; answers ``{"pid": n}``;
- ``{"poll": pid}``: ``{"status": code}`` once the child has exited (as
  ``subprocess.Popen.returncode``: minus the signal that killed it), else
  ``{"status": null}``.

The child is the process ``pooler run`` would be, less the imports: it runs
``pooler.cli.main`` with default signal handling. The zygote never runs an event loop
and starts no thread, so nothing it holds is half-locked in a child.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from types import FrameType

# What ``pooler run`` imports, paid once here (``pooler.cli`` imports it lazily).
import pooler.app
import pooler.cli
import pooler.serve

_PRELOADED = (pooler.app, pooler.serve)
_statuses: dict[int, int] = {}


def _reap(signum: int, frame: FrameType | None) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _statuses[pid] = os.waitstatus_to_exitcode(status)


def _child(argv: list[str], log: str) -> None:
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(null)
        os.close(out)
        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        sys.argv = ["pooler", *argv]
        code = pooler.cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    """Serve requests until stdin ends."""
    signal.signal(signal.SIGCHLD, _reap)
    for line in sys.stdin:
        request = json.loads(line)
        if "start" in request:
            pid = os.fork()
            if pid == 0:
                _child(request["start"], request["log"])
            answer: dict[str, int | None] = {"pid": pid}
        else:
            _reap(signal.SIGCHLD, None)
            answer = {"status": _statuses.get(request["poll"])}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
