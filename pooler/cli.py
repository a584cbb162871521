"""Command line: ``pooler run | check | demo``."""

from __future__ import annotations

import argparse
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pooler",
        description="PostgreSQL query-routing connection pooler",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pooler in the foreground (logs to stderr)")
    run.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")

    check = sub.add_parser("check", help="validate a config file and report problems")
    check.add_argument("--config", "-c", required=True, metavar="FILE", help="YAML config file")

    demo = sub.add_parser(
        "demo", help="start a local primary, two standbys and the pooler in front of them"
    )
    demo.add_argument("--dir", default="./pooler-demo", help="data directory (reused if present)")
    demo.add_argument("--port", type=int, default=9999, help="pooler port (default 9999)")
    demo.add_argument(
        "--port-base", type=int, default=55432, help="first node port (default 55432)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pooler`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    from pooler.config import ConfigError, check_warnings, load_config

    if args.command == "demo":
        from pooler.demo import main as demo_main

        return demo_main(directory=args.dir, port=args.port, port_base=args.port_base)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"pooler: {line}", file=sys.stderr)
        return 2
    if args.command == "check":
        warnings = check_warnings(config)
        for warning in warnings:
            print(f"pooler: warning: {warning}", file=sys.stderr)
        print(f"{args.config}: OK" + (f" ({len(warnings)} warnings)" if warnings else ""))
        return 0
    from pooler.serve import run

    return run(config, args.config)
