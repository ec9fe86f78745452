"""Builds adapters from settings. The only place that knows every adapter; imported by the CLIs.

Backends are imported lazily: an etcd agent never loads the kubernetes package (memory).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry

from rebootcoord import __version__
from rebootcoord.adapters.checks import build_checks
from rebootcoord.adapters.detectors import build_detectors
from rebootcoord.adapters.host import Host, NoNodeOps
from rebootcoord.adapters.rebooters import build_rebooter
from rebootcoord.core.config import Settings
from rebootcoord.core.types import Group, NodeName
from rebootcoord.daemon.agent import Agent, AgentParts, AgentSettings
from rebootcoord.daemon.events import EventLog
from rebootcoord.daemon.group import GroupClient
from rebootcoord.daemon.metrics import Metrics
from rebootcoord.errors import UsageError
from rebootcoord.ports import Check, GroupCatalog, NodeOps, Notifier, Semaphore

if TYPE_CHECKING:  # the FleetLock server's rules: an agent never loads them
    from rebootcoord.daemon.fleetlock import FleetLockService


def connect_kube(
    settings: Settings, *, retry_for: float = 30.0, role: str = "agent", stop: threading.Event | None = None
) -> Any:
    from rebootcoord.adapters.kube.api import Kube, KubeOptions

    return Kube.connect(
        KubeOptions(
            kubeconfig=settings.kube.kubeconfig,
            context=settings.kube.kube_context,
            retry_for=retry_for,
            user_agent=f"rebootcoord/{__version__} ({role}; {settings.identity.node_name})",
            stop=stop,
        )
    )


def kube_namespace(settings: Settings) -> str:
    from rebootcoord.adapters.kube.api import default_namespace

    return settings.kube.namespace or default_namespace()


def build_semaphore(
    settings: Settings,
    *,
    retry_for: float = 30.0,
    kube: Any = None,
    owner: Any = None,
    stop: threading.Event | None = None,
) -> GroupClient:
    """The group's semaphore: its store and wait queue on the configured backend, behind the one
    compare-and-swap loop. ``retry_for``: how long one call retries transient errors (the agent
    waits; rebootctl not). ``owner``: the agent's Pod, which its waiter Lease goes with."""
    return build_semaphore_and_catalog(settings, retry_for=retry_for, kube=kube, owner=owner, stop=stop)[0]


def build_semaphore_and_catalog(
    settings: Settings,
    *,
    retry_for: float = 30.0,
    kube: Any = None,
    owner: Any = None,
    stop: threading.Event | None = None,
) -> tuple[GroupClient, GroupCatalog]:
    """``build_semaphore``, with the catalog of the groups beside it on the same connection
    (rebootctl names the groups that exist when asked for one that does not)."""
    ttl = settings.semaphore.waiter_ttl.total_seconds()
    if settings.semaphore.backend == "fleetlock":
        raise UsageError(
            "backend: got 'fleetlock', which only the agent speaks; rebootctl needs the store the "
            "FleetLock server uses (backend etcd or kubernetes, as the server is configured)"
        )
    opener = group_opener(settings, ttl=ttl, retry_for=retry_for, kube=kube, owner=owner, stop=stop)
    client = opener.open(settings.identity.group)
    client.on_close = opener.close  # the one group of this process: its connection goes with it
    return client, opener.catalog


def group_opener(
    settings: Settings,
    *,
    ttl: float,
    background: bool = True,
    retry_for: float = 30.0,
    kube: Any = None,
    owner: Any = None,
    stop: threading.Event | None = None,
) -> GroupOpener:
    """Opens a group's GroupClient on the configured backend, every group on one connection.
    ``ttl``: a waiter's place; ``background``: this process keeps its places alive (an agent),
    else each join keeps a place for its client's poll interval (the FleetLock server's
    pollers), at most ``ttl``."""
    if settings.semaphore.backend == "kubernetes":
        from rebootcoord.adapters.kube.lease import LeaseGroupCatalog, LeaseGroupStore, LeaseWaitQueue

        api = kube or connect_kube(settings, retry_for=retry_for, role="rebootctl")
        namespace = kube_namespace(settings)
        return GroupOpener(
            lambda group: GroupClient(
                LeaseGroupStore(api, namespace=namespace, group=group),
                LeaseWaitQueue(
                    api, namespace=namespace, group=group, ttl=ttl, owner=owner, background=background
                ),
                stop=stop,
                write_first=background,  # an agent; not the FleetLock server's many clients
            ),
            LeaseGroupCatalog(api, namespace=namespace),
            lambda: None,
        )
    from rebootcoord.adapters.etcd import EtcdGroupCatalog, EtcdGroupStore, EtcdWaitQueue, GroupMirror

    conn = etcd_connection(settings, retry_for=retry_for, stop=stop)
    prefix = settings.etcd.etcd_key_prefix

    def open_group(group: Group) -> GroupClient:
        # The FleetLock server (no background places: its clients poll) keeps each group in
        # memory from a watch, to refuse a waiting client's poll without asking etcd.
        mirror = None if background else GroupMirror(conn, prefix=prefix, group=group)
        return GroupClient(
            EtcdGroupStore(conn, prefix=prefix, group=group, owns_connection=False, mirror=mirror),
            EtcdWaitQueue(conn, prefix=prefix, group=group, ttl=ttl, background=background, mirror=mirror),
            stop=stop,
        )

    return GroupOpener(open_group, EtcdGroupCatalog(conn, prefix=prefix), conn.close)


@dataclass(frozen=True)
class GroupOpener:
    """Groups on one connection: ``open`` one (closing it leaves the connection to the others),
    count them (``catalog``), ``close`` the connection when every group is done."""

    open: Callable[[Group], GroupClient]
    catalog: GroupCatalog
    close: Callable[[], None]


def fleetlock_semaphore(settings: Settings) -> Semaphore:
    """backend: fleetlock -- the agent's semaphore is a FleetLock server."""
    from rebootcoord.adapters.fleetlock import FleetLockSemaphore

    fl = settings.fleetlock
    if not fl.fleetlock_url:
        raise UsageError("fleetlock_url: got '', expected the FleetLock server's http(s):// URL")
    if bool(fl.fleetlock_cert_file) != bool(fl.fleetlock_key_file):
        raise UsageError("fleetlock_cert_file and fleetlock_key_file: give both or neither")
    try:
        return FleetLockSemaphore(
            fl.fleetlock_url,
            group=settings.identity.group,
            holder=settings.identity.holder,
            max_holders=settings.semaphore.max_holders,
            state_dir=fl.fleetlock_state_dir,
            poll_interval=fl.fleetlock_poll_interval.total_seconds(),
            ca_file=fl.fleetlock_ca_file,
            cert_file=fl.fleetlock_cert_file,
            key_file=fl.fleetlock_key_file,
        )
    except OSError as exc:  # ssl.SSLError too
        raise UsageError(
            f"fleetlock_ca_file {fl.fleetlock_ca_file!r}, fleetlock_cert_file {fl.fleetlock_cert_file!r}, "
            f"fleetlock_key_file {fl.fleetlock_key_file!r}: cannot be used: {exc}"
        ) from exc


def etcd_connection(settings: Settings, *, retry_for: float, stop: threading.Event | None) -> Any:
    from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions

    return EtcdConnection(
        EtcdOptions(
            endpoints=settings.etcd.etcd_endpoints,
            timeout=settings.etcd.etcd_timeout.total_seconds(),
            ca_file=settings.etcd.etcd_ca_file,
            cert_file=settings.etcd.etcd_cert_file,
            key_file=settings.etcd.etcd_key_file,
            username=settings.etcd.etcd_username,
            password=settings.etcd.etcd_password,
            retry_for=retry_for,
            stop=stop,
        )
    )


def drain_options(settings: Settings) -> Any:
    from rebootcoord.adapters.kube.nodes import DrainOptions

    return DrainOptions(
        timeout=settings.drain.drain_timeout.total_seconds(),
        grace_period=settings.drain.drain_grace_period,
        pod_selector=settings.drain.drain_pod_selector,
        delete_emptydir_data=settings.drain.drain_delete_emptydir_data,
        force=settings.drain.drain_force,
        parallelism=settings.drain.drain_parallelism,
    )


def pod_owner(settings: Settings, env: Mapping[str, str]) -> Any:
    """The agent's own Pod (downward API: POD_NAME, POD_UID), if it runs in one and its waiter
    Leases live in the Pod's namespace (an owner must be in the same namespace)."""
    from rebootcoord.adapters.kube.lease import PodRef

    name, uid = env.get("POD_NAME"), env.get("POD_UID")
    if not name or not uid or kube_namespace(settings) != (env.get("POD_NAMESPACE") or ""):
        return None
    return PodRef(name, uid)


def build_host(settings: Settings) -> Host:
    prefix = settings.host.nsenter_argv if settings.host.host_exec == "nsenter" else ()
    return Host(root=settings.host.host_root, boot_id_file=settings.host.boot_id_file, exec_prefix=prefix)


def node_zone(kube: Any, node: str) -> str:
    """The Node's ``topology.kubernetes.io/zone`` label ("" without one, or without the Node)."""
    from rebootcoord.adapters.kube.api import node_zone as zone_of

    return zone_of(kube, node)


def uses_kubernetes(settings: Settings) -> bool:
    """The Lease backend, or node operations asked for explicitly (an etcd semaphore on Kubernetes)."""
    return settings.semaphore.backend == "kubernetes" or settings.drain.node_ops == "kubernetes"


def build_notifier(settings: Settings, metrics: Metrics) -> Notifier | None:
    """apprise behind the Notifier port, when notify_urls names any service (apprise is not even
    imported otherwise). Raises ConfigError for a URL apprise cannot use: exit 2 at the start."""
    if not settings.notify.notify_urls:
        return None
    from rebootcoord.adapters.notify import OUTCOMES, AppriseNotifier

    for event in settings.notify.notify_events:
        for outcome in OUTCOMES:
            metrics.notifications.labels(event, outcome)  # zero series from the start

    def count(event: str, outcome: str) -> None:
        metrics.notifications.labels(event, outcome).inc()

    return AppriseNotifier(
        settings.notify.notify_urls,
        timeout=settings.notify.notify_timeout.total_seconds(),
        on_outcome=count,
    )


def build_agent(settings: Settings, stop: threading.Event, registry: CollectorRegistry) -> Agent:
    host = build_host(settings)
    metrics = Metrics(registry, node=settings.identity.node_name, group=settings.identity.group)
    metrics.info.labels(
        __version__, settings.identity.node_name, settings.identity.group, settings.semaphore.backend
    ).set(1)
    notifier = build_notifier(settings, metrics)  # first: a bad URL fails before any connection
    kube = connect_kube(settings, stop=stop) if uses_kubernetes(settings) else None
    checks: list[Check] = list(build_checks(settings.verify.health_checks, host))
    blockers = gates(settings, kube)(settings.identity.node)
    node_ops: NodeOps = NoNodeOps()
    boot_id = host.boot_id
    zone = settings.identity.zone
    if kube is not None:
        from rebootcoord.adapters.kube.gates import NodeBootId, NodeReady, PodsReady
        from rebootcoord.adapters.kube.nodes import KubeNodeOps

        if settings.host.boot_id_source == "node":
            boot_id = NodeBootId(kube, settings.identity.node)
        kube_ops: KubeNodeOps | None = None
        if settings.drain.node_ops != "none":
            node_ops = kube_ops = KubeNodeOps(
                kube,
                settings.identity.node,
                drain=drain_options(settings),
            )
        if not zone:
            # Through the node's operations: the answer also serves the start-up's look at our cordon.
            zone = kube_ops.zone() if kube_ops is not None else node_zone(kube, settings.identity.node)
        if settings.verify.verify_node_ready:
            seen = kube_ops.fresh if kube_ops is not None else None
            checks.insert(0, NodeReady(kube, settings.identity.node, boot_id, seen=seen))
        if settings.verify.verify_pods_ready:
            checks.append(PodsReady(kube, settings.identity.node))
    semaphore: Semaphore
    if settings.semaphore.backend == "fleetlock":
        semaphore = fleetlock_semaphore(settings)
    else:
        group_client = build_semaphore(
            settings,
            kube=kube,
            owner=pod_owner(settings, os.environ) if kube is not None else None,
            stop=stop,
        )
        group_client.on_conflict = metrics.conflicts.inc
        semaphore = group_client
    if kube is not None:
        kube.on_request = lambda verb: metrics.api_requests.labels(verb).inc()
    parts = AgentParts(
        settings=AgentSettings.of(settings),
        semaphore=semaphore,
        detectors=build_detectors(settings.detection.detectors, host),
        rebooter=build_rebooter(
            settings.reboot.reboot_method,
            host,
            settings.reboot.reboot_command,
            settings.reboot.reboot_signal,
            settings.reboot.reboot_signal_relay,
        ),
        host=host,
        metrics=metrics,
        events=EventLog(settings.observability.events_file),
        checks=checks,
        blockers=blockers,
        node_ops=node_ops,
        boot_id=boot_id,
        zone=zone,
        notifier=notifier,
    )
    return Agent(parts, stop)


def build_fleetlock_service(
    settings: Settings, stop: threading.Event, registry: CollectorRegistry
) -> FleetLockService:
    """The FleetLock server: a group client per served group (one connection for all), the
    agent's rules for its clients (budgets, windows, drain failure, stop the line) and gates,
    and on Kubernetes the Node directory with the agent's drain options."""
    from rebootcoord.daemon.fleetlock import FleetLockService, ServerMetrics, ServerSettings

    fl = settings.fleetlock
    backend = settings.semaphore.backend
    if backend == "fleetlock":
        raise UsageError("backend: got 'fleetlock', expected etcd or kubernetes for the FleetLock server")
    kube = (
        connect_kube(settings, retry_for=5.0, stop=stop, role="fleetlock-server")
        if uses_kubernetes(settings)
        else None
    )
    ttl = fl.fleetlock_waiter_ttl.total_seconds()
    opener = group_opener(settings, ttl=ttl, background=False, retry_for=5.0, kube=kube, stop=stop)
    directory = None
    if kube is not None and settings.drain.node_ops != "none":
        from rebootcoord.adapters.kube.directory import KubeNodeDirectory

        directory = KubeNodeDirectory(
            kube,
            drain=drain_options(settings),
            pods_ready=settings.verify.verify_pods_ready,
            by_name=fl.fleetlock_ids_by_node_name,
        )
    service = FleetLockService(
        opener.open,
        ServerSettings(
            max_holders=settings.semaphore.max_holders,
            groups=fl.fleetlock_groups or (settings.identity.group,),
            any_group=fl.fleetlock_any_group,
            max_groups=fl.fleetlock_max_groups,
            unknown_id=fl.fleetlock_unknown_id,
            lease_names=backend == "kubernetes",
            policy=AgentSettings.of(settings).policy(),
            schedule=settings.windows.schedule,
            max_waiters=fl.fleetlock_max_waiters,
            client_ids=fl.fleetlock_client_ids,
            pre_reboot_labels=settings.drain.pre_reboot_labels,
            post_reboot_labels=settings.drain.post_reboot_labels,
        ),
        directory=directory,
        gates=gates(settings, kube if directory is not None else None),
        catalog=opener.catalog,
        metrics=ServerMetrics(registry),
        stop=stop,
    )
    service.on_close = opener.close
    return service


def gates(settings: Settings, kube: Any) -> Callable[[NodeName | None], list[Check]]:
    """The pre-acquire gates of a node (None: a FleetLock client without a Node): the agent's,
    from the same keys -- firing alerts, the node budget, and on the node's own behalf the
    blocking pods and the PDB pre-check (with node operations)."""
    shared: list[Check] = []
    if kube is not None and settings.gates.max_unavailable_nodes >= 0:
        from rebootcoord.adapters.kube.gates import NodeBudget

        shared.append(
            NodeBudget(kube, settings.gates.max_unavailable_nodes, settings.gates.group_node_selector)
        )
    if settings.gates.prometheus_url:
        from rebootcoord.adapters.prometheus import FiringAlerts

        shared.append(
            FiringAlerts(
                settings.gates.prometheus_url,
                settings.gates.prometheus_alert_filter,
                settings.gates.prometheus_alert_filter_match_only,
            )
        )

    def of(node: NodeName | None) -> list[Check]:
        if kube is None or node is None:
            return shared
        from rebootcoord.adapters.kube.gates import PdbPrecheck, PodBlocker

        own: list[Check] = []
        if settings.gates.blocking_pod_selector:
            own.append(PodBlocker(kube, node, settings.gates.blocking_pod_selector))
        if settings.drain.node_ops != "none" and settings.gates.pdb_precheck:
            # The pods this node's drain would evict, with the drain's own options.
            own.append(PdbPrecheck(kube, node, drain_options(settings)))
        return [*own, *shared]

    return of
