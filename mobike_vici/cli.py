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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TextIO, TypeVar

from .config.attach import DEFAULT_SWANCTL_CONF, AttachConfig
from .config.model import Config, ConfigError
from .daemon.control import ControlError, client_path, default_path
from .eventlog import (
    LOG_LEVELS,
    SYSLOG_PRIORITY,
    EventsFileError,
    EventStream,
    SyslogLines,
    journal_stream,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

_C = TypeVar("_C")


def _load_config(path: str) -> Config:
    """The native daemon's config loader: the file, what the native core cannot honour
    refused, the credentials beside it (a seam for tests)."""
    from .daemon.credentials import load_native

    return load_native(path)


def _load_attach(path: str) -> AttachConfig:
    from .config.attach import load_attach

    return load_attach(path)


def _loaded(load: Callable[[str], _C], path: str) -> _C | None:
    """``load(path)``, or None once its error is printed (a usage error for the caller)."""
    try:
        return load(path)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
    except OSError as exc:
        print(f"{path}:0: {exc.strerror or exc}", file=sys.stderr)
    return None


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mobike-vici")
    except PackageNotFoundError:
        return "unknown"


def _hostport(text: str) -> tuple[str, int]:
    from .daemon.metrics import parse_hostport

    try:
        return parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _gateways(text: str) -> list[str]:
    import ipaddress

    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return [str(ipaddress.ip_address(item)) for item in items] or _no_gateways()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _no_gateways() -> list[str]:
    raise argparse.ArgumentTypeError("name at least one gateway address")


def _rate(text: str) -> float:
    try:
        rate = float(text.removesuffix("/s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (N or N/s)") from None
    if not 0 < rate <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: more than 0, at most 10000 per second")
    return rate


def _control_arg(parser: argparse.ArgumentParser) -> None:
    """``--control`` of a client: the daemon's socket, where the units put it by default."""
    parser.add_argument("--control", metavar="PATH", default=None,
                        help=f"the daemon's control socket (default: {client_path()})")


def _daemon_control_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--control", metavar="PATH", default=None,
                        help="control socket to create (default: $RUNTIME_DIRECTORY/"
                        f"mobike-vici.ctl under systemd, else {default_path({})})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mobike-vici",
        description="MOBIKE (RFC 4555) controller for strongSwan, with a native IKEv2 core.",
    )
    parser.add_argument("--version", action="version", version=f"mobike-vici {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    native = sub.add_parser("native", help="run the native IKEv2 daemon (UDP 500/4500)")
    native.add_argument("--config", required=True, metavar="FILE",
                        help="swanctl.conf-style file with connections, secrets, pools")
    native.add_argument("--events", metavar="FILE",
                        help="append JSON-lines events to FILE (default: stdout)")
    _daemon_control_arg(native)
    native.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                        help="least severe event written (default: %(default)s)")
    native.add_argument("--metrics", metavar="HOST:PORT", type=_hostport, default=None,
                        help="serve Prometheus metrics there (e.g. 127.0.0.1:9474; off)")

    run = sub.add_parser("run", help="steer charon: probe paths, move IKE_SAs by routes")
    run.add_argument("--config", metavar="FILE", default=DEFAULT_SWANCTL_CONF,
                     help="the swanctl.conf swanctl loads, with its mobike { } section"
                     " (default: %(default)s)")
    run.add_argument("--load", action="store_true",
                     help="load the file's connections, secrets, pools and the credentials"
                     " beside it into charon (for hosts without swanctl); unload only"
                     " what this process loaded")
    run.add_argument("--log-level", choices=LOG_LEVELS, default="info",
                     help="least severe event written (default: %(default)s)")
    run.add_argument("--vici", metavar="URI", default="unix:///var/run/charon.vici",
                     help="charon's VICI socket (default: %(default)s)")
    run.add_argument("--events", metavar="FILE",
                     help="append JSON-lines events to FILE (default: stdout)")
    _daemon_control_arg(run)
    run.add_argument("--strongswan-conf", metavar="FILE", default=None,
                     help="charon's strongswan.conf, to check prefer_best_path"
                     " (default: $STRONGSWAN_CONF or /etc/strongswan.conf)")
    run.add_argument("--metrics", metavar="HOST:PORT", type=_hostport, default=None,
                     help="serve Prometheus metrics there (e.g. 127.0.0.1:9474; off)")

    check = sub.add_parser("check-config", help="check a config file as the daemon reads it at"
                           " start and on reload; exit 2 with FILE:LINE when it is bad")
    check.add_argument("--config", metavar="FILE", default=None,
                       help=f"the file (default for run: {DEFAULT_SWANCTL_CONF}; --native:"
                       " required, as for native)")
    check.add_argument("--native", action="store_true",
                       help="check it as `native` reads it (connections, secrets, pools and"
                       " mobike { } all judged), not as `run` does (names and mobike { })")

    status = sub.add_parser("status", help="show the running daemon's SAs")
    status.add_argument("--json", action="store_true", help="print the raw JSON answer")
    _control_arg(status)

    events = sub.add_parser("events", help="print the running daemon's recent events")
    events.add_argument("--follow", "-f", action="store_true",
                        help="keep printing new events until interrupted")
    events.add_argument("--event", metavar="NAME", nargs="+", action="extend", default=[],
                        help="only these event names")
    _control_arg(events)

    prefer = sub.add_parser("prefer", help="prefer a local address for a connection "
                            "(moves after hold-down)")
    prefer.add_argument("conn", metavar="CONN")
    which = prefer.add_mutually_exclusive_group(required=True)
    which.add_argument("--local", metavar="ADDR", help="the local address to prefer")
    which.add_argument("--clear", action="store_true", help="back to the policy alone")
    _control_arg(prefer)

    move = sub.add_parser("move", help="move a connection's IKE_SA to a local address now")
    move.add_argument("conn", metavar="CONN")
    move.add_argument("--local", metavar="ADDR", required=True)
    _control_arg(move)

    drain = sub.add_parser("drain", help="redirect every IKE_SA of this gateway to the pool's "
                           "other gateways (RFC 5685), spread by load, at a bounded rate")
    drain.add_argument("--to", metavar="GW[,GW...]", type=_gateways, default=None,
                       help="only these gateways of mobike { pool } (default: every other"
                       " one that answers)")
    drain.add_argument("--rate", metavar="N/s", type=_rate, default=None,
                       help="redirects per second (default: mobike { pool { rate } }, 10)")
    _control_arg(drain)

    timeline = sub.add_parser("timeline", help="draw a handover timeline (PNG) from events")
    timeline.add_argument("events_file", metavar="EVENTS.jsonl")
    timeline.add_argument("--pings", metavar="[LABEL=]FILE", action="append", default=[],
                          help="output of ping -D through the tunnel (RTT and outages); "
                          "repeat as LABEL=FILE to draw several tunnels in one picture")
    timeline.add_argument("-o", "--output", metavar="FILE.png", required=True)
    timeline.add_argument("--title", default=None)

    demo = sub.add_parser("demo", help="run the demo on the embedded native core, or on "
                          "charon with and without the controller (--backend charon)")
    demo.add_argument("--backend", choices=("native", "charon"), default="native",
                      help="native: two native daemons; charon: charon at both ends, "
                      "`run` beside one mobile charon, the other alone (needs strongSwan:"
                      " scripts/bootstrap.sh --with-strongswan)")
    demo.add_argument("-v", "--verbose", action="store_true",
                      help="also print the raw events, routes and status on the terminal")
    demo.add_argument("--output-dir", metavar="DIR", default=None,
                      help="where events.jsonl, ping.log and timeline.png go "
                           "(default: a new temporary directory)")
    return parser


@contextlib.contextmanager
def _events_stream(path: str | None) -> Iterator[TextIO]:
    """stdout, or ``path`` opened by ``open_events_file`` (EventsFileError: exit 2)."""
    if path is None:
        yield sys.stdout
        return
    stream = EventStream(path)  # opened by eventlog.open_events_file: 0600, no symlinks
    try:
        yield stream  # type: ignore[misc]  # file-like: write and flush
    finally:
        stream.close()


def _reopener(stream: TextIO) -> Callable[[], None] | None:
    return stream.reopen if isinstance(stream, EventStream) else None


def _events_error(exc: Exception) -> int:
    print(f"mobike-vici: --events {exc}", file=sys.stderr)
    return EXIT_USAGE


def _cmd_native(args: argparse.Namespace) -> int:
    config = _loaded(_load_config, args.config)
    if config is None:
        return EXIT_USAGE
    from .daemon.native_run import run_native

    def reload_config() -> Config:
        return _load_config(args.config)

    try:
        with _events_stream(args.events) as events:
            return run_native(config, events, args.control or default_path(),
                              level=args.log_level, reload_config=reload_config,
                              reopen_events=_reopener(events), metrics=args.metrics,
                              config_file=args.config)
    except EventsFileError as exc:
        return _events_error(exc)
    except OSError as exc:
        print(f"mobike-vici: {args.events}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_run(args: argparse.Namespace) -> int:
    config = _loaded(_load_attach, args.config)
    if config is None:
        return EXIT_USAGE
    from .daemon.controller import run_controller

    try:
        with _events_stream(args.events) as events:
            return run_controller(config, events, args.vici, args.control or default_path(),
                                  args.strongswan_conf, load=args.load,
                                  level=args.log_level,
                                  reload_config=lambda: _load_attach(args.config),
                                  reopen_events=_reopener(events), metrics=args.metrics)
    except EventsFileError as exc:
        return _events_error(exc)
    except OSError as exc:
        print(f"mobike-vici: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_check_config(args: argparse.Namespace) -> int:
    """What ``run`` (or ``native``) would say of the file at start, without starting:
    ``FILE:LINE: what is wrong`` and exit 2, or one line and exit 0 (``ExecReload`` runs
    it first, so a bad file fails ``systemctl reload`` where the operator typed it)."""
    if args.native and args.config is None:
        print("mobike-vici check-config: --native needs --config FILE", file=sys.stderr)
        return EXIT_USAGE
    path = args.config or DEFAULT_SWANCTL_CONF
    try:
        conns = (_load_config(path).connections if args.native
                 else _load_attach(path).connections)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"{path}:0: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    n = len(conns)
    print(f"{path}: OK for {'native' if args.native else 'run'}"
          f" ({n} connection{'' if n == 1 else 's'})")
    return EXIT_OK


def _cmd_status(args: argparse.Namespace) -> int:
    from .daemon.control import request
    from .daemon.status import format_status

    path = args.control or client_path()
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
    if answer.get("backend") == "vici" and answer.get("vici_connected") is not True:
        print(f"mobike-vici: charon is not reachable at {answer.get('vici', '?')}",
              file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cmd_events(args: argparse.Namespace) -> int:
    from .daemon.control import follow_events

    path = args.control or client_path()
    try:
        for event in follow_events(path, list(args.event), args.follow):
            print(json.dumps(event), flush=True)
    except ControlError as exc:
        print(f"mobike-vici: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        return EXIT_OK
    return EXIT_OK


def _cmd_operator(args: argparse.Namespace) -> int:
    from .daemon.control import request

    local = None if getattr(args, "clear", False) else args.local
    try:
        answer = request(args.control or client_path(), args.command,
                         args={"conn": args.conn, "local": local})
    except ControlError as exc:
        print(f"mobike-vici: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if answer.get("ok") is not True:
        print(f"mobike-vici: {args.command} refused: {answer.get('error', 'no reason given')}",
              file=sys.stderr)
        return EXIT_FAILURE
    what = "preference cleared" if local is None else (
        f"preferring {local}" if args.command == "prefer" else f"moving to {local}")
    later = "" if answer.get("ike_sas") else " (no IKE_SA yet: applies to the next one)"
    print(f"{args.conn}: {what}{later}")
    return EXIT_OK


def _cmd_drain(args: argparse.Namespace) -> int:
    from .daemon.drain_client import run_drain

    try:
        return run_drain(args.control or client_path(), args.to, args.rate, sys.stdout,
                         sys.stderr)
    except ControlError as exc:
        print(f"mobike-vici: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_timeline(args: argparse.Namespace) -> int:
    from .timeline import PingsArg, PlotUnavailable, TimelineError, parse_pings_arg, render

    given = [parse_pings_arg(text) for text in args.pings]
    pings: PingsArg = None
    if len(given) == 1 and given[0][0] is None:
        pings = given[0][1]
    elif given:
        # Several logs in one picture: each needs a name, its file's when it has none.
        pings = [(label or Path(path).name, path) for label, path in given]
    try:
        render(args.events_file, args.output, pings=pings, title=args.title)
    except PlotUnavailable as exc:  # the plot extra is not installed: not a usage error
        print(f"mobike-vici: timeline: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except TimelineError as exc:
        print(f"mobike-vici: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"mobike-vici: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(args.output)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        demo = importlib.import_module(".demo", __package__)
    except ModuleNotFoundError as exc:
        print(f"mobike-vici: the demo is not available: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    output_dir = Path(args.output_dir) if args.output_dir is not None else None
    result: object = demo.run_demo(verbose=args.verbose, output_dir=output_dir,
                                   backend=args.backend)
    return result if isinstance(result, int) else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handlers = {"native": _cmd_native, "run": _cmd_run, "status": _cmd_status,
                "demo": _cmd_demo, "events": _cmd_events, "prefer": _cmd_operator,
                "move": _cmd_operator, "timeline": _cmd_timeline,
                "check-config": _cmd_check_config, "drain": _cmd_drain}
    stderr = sys.stderr
    if journal_stream(stderr):
        # Under systemd our messages on stderr are errors, not journald's default info.
        sys.stderr = SyslogLines(stderr, SYSLOG_PRIORITY["error"])
    try:
        code = handlers[args.command](args)
    except KeyboardInterrupt:
        code = 130
    # Put back on a return only: a traceback escaping from here is an error line too.
    sys.stderr.flush()
    sys.stderr = stderr
    return code
