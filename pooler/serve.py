"""Running the pooler in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import sys

import uvloop

from pooler import log as pooler_log
from pooler.admin.reload import reload
from pooler.app import Pooler
from pooler.config import Config, ConfigError

log = logging.getLogger("pooler")


def run(config: Config, path: str | None = None) -> int:
    """Serve until SIGINT or SIGTERM, then drain and return the exit status; SIGHUP
    reads ``path`` again (pooler.admin.reload)."""
    pooler_log.setup(config.log.level, config.log.format)
    _raise_open_files_limit()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_serve(config, path))


async def _serve(config: Config, path: str | None) -> int:
    pooler = Pooler(config)
    pooler.config_path = path
    try:
        await pooler.start()
    except OSError as exc:
        listen = config.listen
        print(
            f"pooler: cannot listen on {listen.host}:{listen.port}: {exc.strerror}", file=sys.stderr
        )
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if path is not None:
        loop.add_signal_handler(signal.SIGHUP, _reload, pooler)
    try:
        await stop.wait()
        log.info("shutting down", extra={"timeout": config.shutdown_timeout})
        await pooler.shutdown(config.shutdown_timeout)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


def _reload(pooler: Pooler) -> None:
    """SIGHUP: as RELOAD; a config with problems changes nothing."""
    try:
        reload(pooler)
    except ConfigError as exc:
        log.error("config not reloaded: it has problems", extra={"problems": str(exc)})


def _raise_open_files_limit() -> None:
    """Every client and server connection is a file descriptor: take the hard limit, as
    a distribution's default soft limit (1024) is below a thousand clients."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit", extra={"soft": soft, "why": str(exc)})
