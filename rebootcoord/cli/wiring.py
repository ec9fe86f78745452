"""Builds adapters from settings. The only place that knows every adapter; imported by the CLIs."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from rebootcoord import __version__
from rebootcoord.adapters.checks import build_checks
from rebootcoord.adapters.detectors import build_detectors
from rebootcoord.adapters.host import Host
from rebootcoord.adapters.rebooters import build_rebooter
from rebootcoord.core.config import Settings
from rebootcoord.daemon.agent import Agent, AgentParts
from rebootcoord.daemon.events import EventLog
from rebootcoord.daemon.metrics import Metrics
from rebootcoord.errors import UsageError
from rebootcoord.ports import Semaphore


def build_semaphore(settings: Settings, *, retry_for: float = 30.0) -> Semaphore:
    """``retry_for``: how long one call retries transient errors (the agent waits; rebootctl not)."""
    if settings.backend == "etcd":
        from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions, EtcdSemaphore

        conn = EtcdConnection(
            EtcdOptions(
                endpoints=settings.etcd_endpoints,
                timeout=settings.etcd_timeout.total_seconds(),
                ca_file=settings.etcd_ca_file,
                cert_file=settings.etcd_cert_file,
                key_file=settings.etcd_key_file,
                username=settings.etcd_username,
                password=settings.etcd_password,
                retry_for=retry_for,
            )
        )
        return EtcdSemaphore(
            conn,
            prefix=settings.etcd_key_prefix,
            group=settings.group,
            waiter_ttl=settings.waiter_ttl.total_seconds(),
        )
    raise UsageError(f"backend {settings.backend!r} is not available in this build")


def build_host(settings: Settings) -> Host:
    prefix = settings.nsenter_argv if settings.host_exec == "nsenter" else ()
    return Host(root=settings.host_root, boot_id_file=settings.boot_id_file, exec_prefix=prefix)


def build_agent(settings: Settings, stop: threading.Event, registry: CollectorRegistry) -> Agent:
    host = build_host(settings)
    metrics = Metrics(registry, node=settings.node_name, group=settings.group)
    metrics.info.labels(__version__, settings.node_name, settings.group, settings.backend).set(1)
    parts = AgentParts(
        settings=settings,
        semaphore=build_semaphore(settings),
        detectors=build_detectors(settings.detectors, host),
        rebooter=build_rebooter(
            settings.reboot_method, host, settings.reboot_command, settings.reboot_signal
        ),
        host=host,
        metrics=metrics,
        events=EventLog(settings.events_file),
        checks=build_checks(settings.health_checks, host),
    )
    return Agent(parts, stop)
