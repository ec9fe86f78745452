"""``rebootcoord``: the agent, the simulated fleet, the version. The composition root."""

from __future__ import annotations

import argparse
import logging
import os
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
    add_completion_parser,
    add_config_flags,
    add_versions,
    completion_script,
    exit_with,
    offer_completions,
    reported,
    settings_from_args,
    setup_logging,
)
from rebootcoord.cli.wiring import build_agent
from rebootcoord.core.config import Settings, to_plain
from rebootcoord.daemon import metrics as metrics_server
from rebootcoord.errors import ConfigError, Problem, UsageError

#: What the agent's and the server's --help say of where their configuration comes from.
CONFIG_EPILOG = (
    "Every key comes from a flag, from $REBOOTCOORD_<KEY> or from the YAML file's <key> (--config "
    "FILE or $REBOOTCOORD_CONFIG), in that order of precedence, then its default. Lists and "
    "mappings in flags and variables are YAML flow ([systemctl, reboot]) or comma-separated. "
    "--print-config shows the result, secrets masked. Exit codes: 0 stopped (SIGTERM, SIGINT); 2 "
    "usage or configuration error (every problem named: key, value, source, what was expected); 3 "
    "the backend refused who we are (a wrong etcd password, a missing right)."
)
CONFIG_USAGE = "%(prog)s [--config FILE] [--print-config] [--<key> VALUE ...]"


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="rebootcoord",
        description="Coordinates the reboots of a fleet: a per-node agent takes a slot of its "
        "group's semaphore (etcd or a Kubernetes Lease), drains, reboots, checks the node and gives "
        "the slot back; a FleetLock server lets Zincati nodes share the same budget.",
        epilog="`rebootcoord COMMAND --help` describes each command. Operators steer the groups "
        "with rebootctl.",
    )
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser, metavar="COMMAND")
    agent = sub.add_parser(
        "agent",
        help="run the per-node agent",
        description="Watch this node's update engine; when it needs a reboot, take a slot of the "
        "group, drain the node, reboot it, check it after boot, uncordon it and give the slot back.",
        usage=CONFIG_USAGE,
        epilog=CONFIG_EPILOG,
    )
    agent.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    add_config_flags(agent)
    server = sub.add_parser(
        "fleetlock-server",
        help="answer FleetLock (Zincati's reboot coordination) over the same groups as the agents",
        description="Serve FleetLock v1 (POST /v1/pre-reboot, /v1/steady-state) on fleetlock_listen; "
        "/metrics and /healthz on metrics_address. Stateless: replicas share the backend.",
        usage=CONFIG_USAGE,
        epilog=CONFIG_EPILOG,
    )
    server.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    add_config_flags(server, aliases={"fleetlock_listen": ("--listen",)})
    relay = sub.add_parser(
        "signal-relay",
        help="send the reboot signal to PID 1 when the agent asks (the chart's signal method)",
        description="Listen on a Unix socket; on each request of a peer with the allowed uid, send "
        "the reboot signal to PID 1. Needs CAP_KILL and the host's PID namespace, nothing else.",
    )
    relay.add_argument("--socket", required=True, metavar="PATH", help="the Unix socket to listen on")
    relay.add_argument("--signal", default="SIGRTMIN+5", help="the signal to send (default SIGRTMIN+5)")
    relay.add_argument("--allow-uid", type=int, default=None, metavar="UID", help="the agent's uid")
    relay.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="log lines: %(choices)s (default text)"
    )
    from rebootcoord.sim.args import add_simulate_parser

    add_simulate_parser(sub)
    add_completion_parser(sub, "rebootcoord")
    add_versions(p, f"rebootcoord {__version__}")
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


def print_config(settings: Settings) -> int:
    sys.stdout.write(yaml.safe_dump(to_plain(settings), sort_keys=False))
    return 0


def run_agent(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if args.print_config:
        return print_config(settings)
    # Checked where the agent runs, not by the configuration's loader: the same file is read
    # elsewhere (rebootctl --config, a chart rendered and checked on another machine).
    if not os.path.isdir(settings.host.host_root):
        raise ConfigError(
            [
                Problem(
                    "host_root",
                    settings.host.host_root,
                    "an existing directory (where the host's file system is mounted)",
                )
            ]
        )
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
        if agent.p.notifier is not None:
            # A reboot stops the agent: its notice, queued just before, goes out first.
            agent.p.notifier.close(agent.s.notify.notify_timeout.total_seconds())
        agent.p.semaphore.close()


def run_fleetlock_server(args: argparse.Namespace) -> int:
    from rebootcoord.cli.wiring import build_fleetlock_service
    from rebootcoord.daemon.fleetlock import TlsFiles, start_http, tls_context

    settings = settings_from_args(args)
    if args.print_config:
        return print_config(settings)
    fl = settings.fleetlock
    if not fl.fleetlock_listen:
        raise UsageError("fleetlock_listen: got '', expected host:port such as 0.0.0.0:9729")
    if bool(fl.fleetlock_tls_cert_file) != bool(fl.fleetlock_tls_key_file):
        raise UsageError("fleetlock_tls_cert_file and fleetlock_tls_key_file: give both or neither")
    if fl.fleetlock_tls_client_ca_file and not fl.fleetlock_tls_cert_file:
        raise UsageError(
            "fleetlock_tls_client_ca_file: client certificates need TLS (fleetlock_tls_cert_file)"
        )
    setup_logging(settings.observability.log_level, settings.observability.log_format)
    stop = threading.Event()
    registry = CollectorRegistry()
    tls = None
    if fl.fleetlock_tls_cert_file and fl.fleetlock_tls_key_file:
        files = TlsFiles(
            fl.fleetlock_tls_cert_file, fl.fleetlock_tls_key_file, fl.fleetlock_tls_client_ca_file
        )
        try:
            tls = tls_context(files)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise UsageError(
                f"fleetlock_tls_cert_file {files.cert!r}, fleetlock_tls_key_file {files.key!r}, "
                f"fleetlock_tls_client_ca_file {files.client_ca!r}: cannot be used: {exc}"
            ) from exc
    service = build_fleetlock_service(settings, stop, registry)
    stoppers = []
    try:
        try:
            stop_http, port = start_http(service, fl.fleetlock_listen, workers=fl.fleetlock_workers, tls=tls)
        except OSError as exc:
            raise UsageError(f"fleetlock_listen {fl.fleetlock_listen!r}: {exc}") from exc
        stoppers.append(stop_http)
        if settings.observability.metrics_address:
            try:
                stop_metrics, _ = metrics_server.serve(
                    settings.observability.metrics_address, registry, service.healthy
                )
            except OSError as exc:
                raise UsageError(
                    f"metrics_address {settings.observability.metrics_address!r}: {exc}"
                ) from exc
            stoppers.append(stop_metrics)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        logging.getLogger(__name__).info(
            "FleetLock server on %s (port %d, %s), backend %s", fl.fleetlock_listen, port,
            "TLS" if tls else "plain HTTP", settings.semaphore.backend,
        )  # fmt: skip
        stop.wait()
    finally:
        for stopper in reversed(stoppers):
            stopper()
        service.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    offer_completions(p)
    args = p.parse_args(argv)
    if args.command == "completion":
        sys.stdout.write(completion_script("rebootcoord", args.shell))
        return 0
    if args.command == "agent":
        return reported("rebootcoord agent", lambda: run_agent(args))
    if args.command == "fleetlock-server":
        return reported("rebootcoord fleetlock-server", lambda: run_fleetlock_server(args))
    if args.command == "signal-relay":
        return run_signal_relay(args)
    if args.command == "simulate":
        from rebootcoord.sim.cli import run_simulate

        return run_simulate(args)
    return EXIT_USAGE


def entrypoint() -> None:
    exit_with(main)
