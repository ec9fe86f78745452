"""``rebootcoord``: the agent, the simulated fleet, the version. The composition root."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import yaml
from prometheus_client import CollectorRegistry

from rebootcoord import __version__
from rebootcoord.cli.common import (
    EXIT_USAGE,
    Parser,
    add_config_flags,
    reported,
    settings_from_args,
    setup_logging,
)
from rebootcoord.cli.wiring import build_agent
from rebootcoord.core.config import to_plain
from rebootcoord.daemon import metrics as metrics_server


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="rebootcoord", description="Coordinates the reboots of a fleet.")
    p.add_argument("--version", action="version", version=f"rebootcoord {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    agent = sub.add_parser("agent", help="run the per-node agent")
    agent.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    add_config_flags(agent)
    relay = sub.add_parser(
        "signal-relay",
        help="send the reboot signal to PID 1 when the agent asks (the chart's signal method)",
        description="Listen on a Unix socket; on each request of a peer with the allowed uid, send "
        "the reboot signal to PID 1. Needs CAP_KILL and the host's PID namespace, nothing else.",
    )
    relay.add_argument("--socket", required=True, metavar="PATH", help="the Unix socket to listen on")
    relay.add_argument("--signal", default="SIGRTMIN+5", help="the signal to send (default SIGRTMIN+5)")
    relay.add_argument("--allow-uid", type=int, default=None, metavar="UID", help="the agent's uid")
    relay.add_argument("--log-format", choices=("text", "json"), default="text")
    from rebootcoord.sim.cli import add_simulate_parser

    add_simulate_parser(sub)
    return p


def run_signal_relay(args: argparse.Namespace) -> int:
    from rebootcoord.adapters.relay import SignalRelay
    from rebootcoord.core.config import Invalid, p_signal

    try:
        signum = p_signal(args.signal)
    except Invalid as exc:
        print(
            f"rebootcoord signal-relay: --signal: got {args.signal!r}, expected {exc.expected}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    setup_logging("info", args.log_format)
    relay = SignalRelay(args.socket, signal=signum, allow_uid=args.allow_uid)
    try:
        relay.bind()
    except OSError as exc:
        print(f"rebootcoord signal-relay: --socket {args.socket!r}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        relay.serve(stop)
    finally:
        relay.close()
    return 0


def run_agent(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(to_plain(settings), sort_keys=False))
        return 0
    setup_logging(settings.observability.log_level, settings.observability.log_format)
    stop = threading.Event()
    registry = CollectorRegistry()
    agent = build_agent(settings, stop, registry)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        agent.shutdown()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop_metrics = None
    if settings.observability.metrics_address:
        try:
            stop_metrics, _port = metrics_server.serve(
                settings.observability.metrics_address, registry, agent.heartbeat.healthy
            )
        except OSError as exc:
            print(
                f"rebootcoord agent: metrics_address {settings.observability.metrics_address!r}: {exc}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    try:
        return agent.run()
    finally:
        if stop_metrics:
            stop_metrics()
        agent.p.semaphore.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "agent":
        return reported("rebootcoord agent", lambda: run_agent(args))
    if args.command == "signal-relay":
        return run_signal_relay(args)
    if args.command == "simulate":
        from rebootcoord.sim.cli import run_simulate

        return run_simulate(args)
    return EXIT_USAGE


def entrypoint() -> None:
    sys.exit(main())
