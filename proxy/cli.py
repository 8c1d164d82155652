"""The ``tls13-proxy`` command: ``run`` (default) and ``check`` a configuration, ``--version``.

``tls13-proxy`` with no arguments runs the embedded default (https://localhost:8443/ with a
self-signed certificate in front of the demo page). ``tls13-proxy check --config FILE`` loads and
validates everything the file names — like ``nginx -t`` — and exits non-zero listing every error.

Exit codes: 0 success, 1 invalid configuration, 2 bad command line, 3 the daemon is not
available in this installation; ``run`` otherwise returns what the daemon returns.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from proxy import __version__
from proxy.settings import (
    ConfigError,
    ConfigProblem,
    Settings,
    embedded_default,
    load_settings,
)

PROG = "tls13-proxy"
EXIT_OK = 0
EXIT_CONFIG = 1
EXIT_USAGE = 2
EXIT_NO_DAEMON = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A TLS 1.3 terminating reverse proxy. With no arguments: serve "
        "https://localhost:8443/ (self-signed) in front of the built-in demo page.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument(
        "command",
        nargs="?",
        choices=("run", "check"),
        default="run",
        help="run the proxy (default) or check the configuration and exit",
    )
    parser.add_argument(
        "-c", "--config", type=Path, help="configuration file (default: the embedded default)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="state directory (overrides global.state_dir; default: $STATE_DIRECTORY, "
        "/var/lib/tls13-proxy as root, else ~/.local/state/tls13-proxy)",
    )
    return parser


def _print_problems(kind: str, problems: Sequence[ConfigProblem], out: TextIO) -> None:
    for problem in problems:
        print(f"{PROG}: {kind}: {problem}", file=out)


def _summary(settings: Settings) -> str:
    def count(items: Sequence[object], noun: str) -> str:
        return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"

    return ", ".join(
        (
            count(settings.listeners, "listener"),
            count(settings.routes, "route"),
            count(settings.backends, "backend pool"),
            count(settings.certificates, "certificate"),
        )
    )


def load(config: Path | None, state_dir: Path | None) -> Settings:
    """The settings the command line asks for (a file, or the embedded default).

    ``--state-dir`` overrides ``global.state_dir`` of a file too (handy for trying a
    configuration as an unprivileged user).
    """
    if config is None:
        return embedded_default(state_dir.resolve() if state_dir is not None else None)
    settings = load_settings(config)
    if state_dir is None:
        return settings
    new_global = dataclasses.replace(settings.global_, state_dir=state_dir.resolve())
    return dataclasses.replace(settings, global_=new_global)


def _run_daemon(settings: Settings, config: Path | None) -> int:
    try:
        daemon = importlib.import_module("proxy.daemon")
    except ModuleNotFoundError as exc:
        if exc.name != "proxy.daemon":
            raise
        print(
            f"{PROG}: error: the daemon (proxy.daemon) is not part of this installation; "
            f"only '{PROG} check' is available",
            file=sys.stderr,
        )
        return EXIT_NO_DAEMON
    result = daemon.run(settings, config)
    return int(result) if isinstance(result, int) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tls13-proxy`` console script."""
    args = build_parser().parse_args(argv)
    label = str(args.config) if args.config is not None else "<embedded default>"
    try:
        settings = load(args.config, args.state_dir)
    except ConfigError as exc:
        _print_problems("error", exc.problems, sys.stderr)
        _print_problems("warning", exc.warnings, sys.stderr)
        count = len(exc.problems)
        print(
            f"{PROG}: configuration {label} is invalid ({count} error{'s' if count != 1 else ''})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.command == "check":
        _print_problems("warning", settings.warnings, sys.stderr)
        print(f"{PROG}: configuration {label} is valid: {_summary(settings)}")
        return EXIT_OK
    # The daemon logs the warnings itself (in the configured log format). It gets an absolute
    # path so that a reload finds the file whatever its working directory is by then.
    config = args.config.resolve() if args.config is not None else None
    return _run_daemon(settings, config)
