"""The ``mobike-vici`` command line: argument parsing and exit codes, nothing else.

Exit codes: 0 success, 1 runtime failure (daemon not reachable, cannot bind),
2 usage or configuration error (``FILE:LINE: message`` on stderr, nothing started),
an events file that cannot be opened (a symbolic link, for one) included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import TextIO

from .config.model import Config, ConfigError
from .daemon.control import ControlError, default_path

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


def _load_config(path: str) -> Config:
    """The config loader (a seam for tests; the loader lives in ``mobike_vici.config``)."""
    from .config import load_config

    config: Config = load_config(path)
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobike-vici",
        description="MOBIKE (RFC 4555) controller for strongSwan, with a native IKEv2 core.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    native = sub.add_parser("native", help="run the native IKEv2 daemon (UDP 500/4500)")
    native.add_argument("--config", required=True, metavar="FILE",
                        help="swanctl.conf-style file with connections, secrets, pools")
    native.add_argument("--events", metavar="FILE",
                        help="append JSON-lines events to FILE (default: stdout)")
    native.add_argument("--control", metavar="PATH", default=None,
                        help=f"control socket (default: {default_path()})")

    run = sub.add_parser("run", help="steer charon: probe paths, move IKE_SAs by routes")
    run.add_argument("--config", required=True, metavar="FILE",
                     help="swanctl.conf (plus a mobike { } section), loaded into charon")
    run.add_argument("--vici", metavar="URI", default="unix:///var/run/charon.vici",
                     help="charon's VICI socket (default: %(default)s)")
    run.add_argument("--events", metavar="FILE",
                     help="append JSON-lines events to FILE (default: stdout)")
    run.add_argument("--control", metavar="PATH", default=None,
                     help=f"control socket (default: {default_path()})")
    run.add_argument("--strongswan-conf", metavar="FILE", default=None,
                     help="charon's strongswan.conf, to check prefer_best_path"
                     " (default: $STRONGSWAN_CONF or /etc/strongswan.conf)")

    status = sub.add_parser("status", help="show the running daemon's SAs")
    status.add_argument("--json", action="store_true", help="print the raw JSON answer")
    status.add_argument("--control", metavar="PATH", default=None,
                        help=f"control socket (default: {default_path()})")

    sub.add_parser("demo", help="run the demo on the embedded native core")
    return parser


@contextlib.contextmanager
def _events_stream(path: str | None) -> Iterator[TextIO]:
    """stdout, or ``path`` opened by ``open_events_file`` (EventsFileError: exit 2)."""
    if path is None:
        yield sys.stdout
        return
    from .eventlog import open_events_file

    with open_events_file(path) as stream:
        yield stream


def _events_error(exc: Exception) -> int:
    print(f"mobike-vici: --events {exc}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_native(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{args.config}:0: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    from .daemon.native import run_native
    from .eventlog import EventsFileError

    try:
        with _events_stream(args.events) as events:
            return run_native(config, events, args.control or default_path())
    except EventsFileError as exc:
        return _events_error(exc)
    except OSError as exc:
        print(f"mobike-vici: {args.events}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = _load_config(args.config)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{args.config}:0: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    from .daemon.controller import run_controller
    from .eventlog import EventsFileError

    try:
        with _events_stream(args.events) as events:
            return run_controller(config, events, args.vici, args.control or default_path(),
                                  args.strongswan_conf)
    except EventsFileError as exc:
        return _events_error(exc)
    except OSError as exc:
        print(f"mobike-vici: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_status(args: argparse.Namespace) -> int:
    from .daemon.control import request
    from .daemon.status import format_status

    path = args.control or default_path()
    try:
        answer = request(path, "status")
    except ControlError as exc:
        print(f"mobike-vici: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(format_status(answer))
    if answer.get("ok") is not True:
        print(f"mobike-vici: {answer.get('error', 'the daemon reported an error')}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_demo(_args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module(".demo", __package__)
    except ModuleNotFoundError as exc:
        print(f"mobike-vici: the demo is not available: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    result: object = demo.run_demo()
    return result if isinstance(result, int) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"native": _cmd_native, "run": _cmd_run, "status": _cmd_status, "demo": _cmd_demo}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        return 130
