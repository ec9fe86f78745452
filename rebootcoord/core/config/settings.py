"""The effective configuration, in sections: each part of the daemon receives the sections it uses.

Every key is declared once, as a field of one section, with its parser and its help text; a field's
name is the key's name (``etcd_endpoints`` is ``settings.etcd.etcd_endpoints``, ``$REBOOTCOORD_
ETCD_ENDPOINTS`` and ``--etcd-endpoints``), so that a key is found by one search. Pure.
"""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rebootcoord.core.bounds import MAX_FLEETLOCK_WAITERS
from rebootcoord.core.config.parsers import (
    CheckSpec,
    ClientIds,
    DetectorSpec,
    p_address,
    p_argv,
    p_bool,
    p_checks,
    p_client_ids,
    p_detectors,
    p_duration,
    p_endpoints,
    p_enum,
    p_grace,
    p_group,
    p_groups,
    p_holder_id,
    p_int,
    p_labels,
    p_namespace,
    p_notify_events,
    p_notify_templates,
    p_notify_urls,
    p_opt_str,
    p_opt_url,
    p_poll_ttl,
    p_positive_duration,
    p_regex,
    p_selector,
    p_signal,
    p_str,
    p_waiter_ttl,
    p_waves,
    p_windows_raw,
    p_zone,
    signal_name,
)
from rebootcoord.core.durations import format_duration
from rebootcoord.core.notices import EVENTS, Templates
from rebootcoord.core.rollout import WavePlan, WaveSize
from rebootcoord.core.semaphore import MAX_SLOTS, Limits
from rebootcoord.core.types import Group, HolderId, NodeName
from rebootcoord.core.windows import Schedule
from rebootcoord.errors import mask_urls, masked_url

ENV_PREFIX = "REBOOTCOORD_"
ENV_CONFIG_FILE = "REBOOTCOORD_CONFIG"
MASK = "********"


def _key(default: Any, parse: Callable[[object], Any], help: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help, "secret": secret})


@dataclass(frozen=True)
class Identity:
    """Who this agent is in its group."""

    node_name: str = _key("", p_str, "this node's name (default: $NODE_NAME, else the hostname)")
    holder_id: str = _key("", p_holder_id, "id in the semaphore (default: node_name)")
    group: Group = _key(Group("default"), p_group, "the reboot group sharing one budget")
    zone: str = _key(
        "",
        p_str,
        "this node's zone for max_holders_per_zone (default on Kubernetes: the Node's "
        "topology.kubernetes.io/zone label)",
    )

    @property
    def holder(self) -> HolderId:
        return HolderId(self.holder_id or self.node_name)

    @property
    def node(self) -> NodeName:
        return NodeName(self.node_name)


@dataclass(frozen=True)
class SemaphoreSettings:
    """The group's budget and how long places and slots live, whatever the store."""

    backend: str = _key(
        "etcd", p_enum("etcd", "kubernetes", "fleetlock"), "semaphore backend (fleetlock: a FleetLock server)"
    )
    max_holders: int = _key(1, p_int(1, MAX_SLOTS), "slots of the group, used when the semaphore is created")
    max_holders_per_zone: int = _key(
        0,
        p_int(0, MAX_SLOTS),
        "at most this many holders in one zone at once, checked with the slot (0: no limit)",
    )
    waiter_ttl: timedelta = _key(
        timedelta(seconds=30),
        p_waiter_ttl,
        "a waiting agent that is gone (process, pod or node) loses its place in the queue after this",
    )
    lease_ttl: timedelta = _key(
        timedelta(0), p_duration, "Lease backend: reclaim a slot held longer than this (0: never)"
    )
    max_unavailable_percent: int = _key(
        0,
        p_int(0, 100),
        "at most this percentage of the group's nodes rebooting at once, and at least one; the "
        "nodes are those heard of in the last 14 days (0: no limit)",
    )
    waves: tuple[WaveSize, ...] = _key(
        (),
        p_waves,
        'reboot a rollout in waves of these cumulative sizes, such as [1, "10%", "50%", "100%"]: '
        "a wave opens when every node of the last is back healthy and soaked (empty: no waves)",
    )
    wave_soak: timedelta = _key(
        timedelta(minutes=10), p_duration, "how long a wave's last node stays healthy before the next opens"
    )
    wave_drain_failures: int = _key(
        3, p_int(0, 1000), "drains failing this many times in one wave pause the group (0: never)"
    )
    rollout_expiry: timedelta = _key(
        timedelta(days=7),
        p_duration,
        "a rollout in which no node held a slot, opened a wave or came back for this long ends; the "
        "next node starts a new one with the first wave (0: only its last wave ends it)",
    )

    @property
    def wave_plan(self) -> WavePlan | None:
        if not self.waves:
            return None
        return WavePlan(
            self.waves,
            self.wave_soak.total_seconds(),
            self.wave_drain_failures,
            self.rollout_expiry.total_seconds(),
        )

    @property
    def limits(self) -> Limits:
        """The budgets a slot must fit (zone, group, waves), for the agent and the server."""
        return Limits(self.max_holders_per_zone, self.max_unavailable_percent, self.wave_plan)


@dataclass(frozen=True)
class FleetLockSettings:
    """The FleetLock protocol: the server (`rebootcoord fleetlock-server`) and the agent's client."""

    fleetlock_listen: str = _key("0.0.0.0:9729", p_address, "fleetlock-server: where it answers FleetLock")
    fleetlock_tls_cert_file: str | None = _key(None, p_opt_str, "fleetlock-server: TLS certificate (PEM)")
    fleetlock_tls_key_file: str | None = _key(None, p_opt_str, "fleetlock-server: TLS private key (PEM)")
    fleetlock_tls_client_ca_file: str | None = _key(
        None,
        p_opt_str,
        "fleetlock-server: require client certificates signed by this CA; a certificate then binds "
        "the ids a client may act as (its CN and DNS/URI SANs, and fleetlock_client_ids)",
    )
    fleetlock_client_ids: ClientIds = _key(
        ClientIds(),
        p_client_ids,
        "fleetlock-server with client certificates: certificate name (CN, DNS or URI SAN) -> the "
        "further ids it may act as, such as Zincati's app-specific machine id",
    )
    fleetlock_waiter_ttl: timedelta = _key(
        timedelta(minutes=15),
        p_poll_ttl,
        "fleetlock-server: the longest a client refused for want of a slot keeps its place in line "
        "without asking again (it keeps it 1.5 of its own poll intervals, Zincati's 5 minutes "
        "after its first poll)",
    )
    fleetlock_max_waiters: int = _key(
        1000,
        p_int(1, MAX_FLEETLOCK_WAITERS),
        "fleetlock-server: the most FleetLock clients in one group's line; more are refused "
        "(line_full) until places free",
    )
    fleetlock_unknown_id: str = _key(
        "refuse",
        p_enum("refuse", "grant"),
        "fleetlock-server on Kubernetes: a client id that maps to no Node is refused, or granted "
        "a slot without node operations",
    )
    fleetlock_ids_by_node_name: bool = _key(
        False,
        p_bool,
        "fleetlock-server on Kubernetes: also map a client id to the Node of that name (names are "
        "no secret: anyone who reaches the server could then cordon and drain any Node)",
    )
    fleetlock_groups: tuple[Group, ...] = _key(
        (),
        p_groups,
        "fleetlock-server: the groups it serves (others: unknown_group); empty: the group key's",
    )
    fleetlock_any_group: bool = _key(
        False,
        p_bool,
        "fleetlock-server: also serve groups not in fleetlock_groups -- those that exist, and new "
        "ones while the store holds fewer than fleetlock_max_groups",
    )
    fleetlock_max_groups: int = _key(
        64,
        p_int(1, 10_000),
        "fleetlock-server with fleetlock_any_group: the most groups the store may hold before new "
        "ones are refused (unknown_group)",
    )
    fleetlock_workers: int = _key(64, p_int(1, 1024), "fleetlock-server: requests answered at once")
    fleetlock_url: str = _key("", p_opt_url, "backend fleetlock: the FleetLock server's base URL")
    fleetlock_ca_file: str | None = _key(None, p_opt_str, "backend fleetlock: CA bundle for the server")
    fleetlock_cert_file: str | None = _key(
        None, p_opt_str, "backend fleetlock: client certificate for a server that requires one (PEM)"
    )
    fleetlock_key_file: str | None = _key(None, p_opt_str, "backend fleetlock: the client certificate's key")
    fleetlock_state_dir: str = _key(
        "/var/lib/rebootcoord",
        p_str,
        "backend fleetlock: where the agent keeps its holder record across reboots (a FleetLock "
        "server keeps none)",
    )
    fleetlock_poll_interval: timedelta = _key(
        timedelta(seconds=30),
        p_positive_duration,
        "backend fleetlock: ask again this often (jittered) while no slot is granted",
    )


@dataclass(frozen=True)
class EtcdSettings:
    """Where the etcd backend is and how to authenticate."""

    etcd_endpoints: tuple[str, ...] = _key(("http://127.0.0.1:2379",), p_endpoints, "etcd v3 endpoints")
    etcd_key_prefix: str = _key("com.coreos.airlock", p_str, "key prefix (airlock's by default)")
    etcd_ca_file: str | None = _key(None, p_opt_str, "CA bundle to verify etcd's certificate")
    etcd_cert_file: str | None = _key(None, p_opt_str, "client certificate for etcd")
    etcd_key_file: str | None = _key(None, p_opt_str, "client key for etcd")
    etcd_username: str | None = _key(None, p_opt_str, "etcd user")
    etcd_password: str | None = _key(None, p_opt_str, "etcd password", secret=True)
    etcd_allow_plaintext_password: bool = _key(
        False, p_bool, "send etcd_password over http:// endpoints (readable by anyone on the path)"
    )
    etcd_timeout: timedelta = _key(timedelta(seconds=5), p_positive_duration, "timeout of one etcd call")


@dataclass(frozen=True)
class KubeSettings:
    """Where the Kubernetes cluster is."""

    kubeconfig: str | None = _key(
        None, p_opt_str, "kubeconfig file (default: in-cluster, else ~/.kube/config)"
    )
    kube_context: str | None = _key(None, p_opt_str, "kubeconfig context")
    namespace: str = _key(
        "", p_namespace, "namespace of the Leases and events (default: the pod's, else default)"
    )


@dataclass(frozen=True)
class HostSettings:
    """How the agent reaches its host: the file system, the boot ID, host commands."""

    host_root: str = _key("/", p_str, "where the host's file system is mounted")
    boot_id_file: str = _key("/proc/sys/kernel/random/boot_id", p_str, "the host's boot ID")
    boot_id_source: str = _key(
        "file", p_enum("file", "node"), "boot ID from boot_id_file or the Node's nodeInfo"
    )
    host_exec: str = _key(
        "direct", p_enum("direct", "nsenter"), "run host commands directly or in PID 1's namespaces"
    )
    nsenter_argv: tuple[str, ...] = _key(
        ("nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--"),
        p_argv,
        "prefix for host commands when host_exec is nsenter",
    )


@dataclass(frozen=True)
class DetectionSettings:
    """How and how often a pending reboot is detected."""

    detectors: tuple[DetectorSpec, ...] = _key(
        (DetectorSpec(type="sentinel", name="sentinel"),),
        p_detectors,
        "how to detect a pending reboot",
    )
    check_interval: timedelta = _key(timedelta(seconds=60), p_positive_duration, "how often detectors run")


@dataclass(frozen=True)
class WindowSettings:
    """When reboots may start. ``schedule`` is derived from the two keys by the loader."""

    windows: tuple[object, ...] = _key((), p_windows_raw, "maintenance windows; none means always")
    time_zone: str = _key("UTC", p_zone, "IANA zone of windows without their own")
    expected_cycle: timedelta = _key(
        timedelta(minutes=15),
        p_duration,
        "a slot is taken only when this much time is left in the window (drain, reboot, checks); "
        "0: any time the window is open",
    )
    schedule: Schedule = field(default=Schedule(), metadata={"derived": True})


@dataclass(frozen=True)
class RebootSettings:
    """How the node is rebooted, and when a reboot that did not happen is tried again."""

    reboot_method: str = _key("command", p_enum("command", "signal"), "how to reboot")
    reboot_command: tuple[str, ...] = _key(("systemctl", "reboot"), p_argv, "argv of the reboot command")
    reboot_signal: int = _key(int(signal.SIGRTMIN) + 5, p_signal, "signal sent to PID 1 by the signal method")
    reboot_signal_relay: str | None = _key(
        None,
        p_opt_str,
        "signal method: ask the relay on this Unix socket to send the signal (rebootcoord signal-relay)",
    )
    reboot_timeout: timedelta = _key(
        timedelta(minutes=10),
        p_positive_duration,
        "when the boot ID has not changed by then, the reboot is retried",
    )


@dataclass(frozen=True)
class VerifySettings:
    """What proves the node healthy after its reboot, before the slot is released."""

    health_checks: tuple[CheckSpec, ...] = _key((), p_checks, "post-reboot checks (command or http)")
    verify_interval: timedelta = _key(
        timedelta(seconds=30), p_positive_duration, "retry period of failing checks"
    )
    release_delay: timedelta = _key(timedelta(0), p_duration, "hold the slot this long after the checks pass")
    pause_group_after: timedelta = _key(
        timedelta(minutes=15),
        p_duration,
        "a node whose post-reboot checks still fail this long after its reboot pauses its group, "
        "with the node and the checks as the reason (stop the line; 0: never)",
    )
    verify_node_ready: bool = _key(True, p_bool, "after the reboot, the Node must be Ready (Kubernetes)")
    verify_pods_ready: bool = _key(False, p_bool, "after the reboot, the pods on the node must be Ready")


@dataclass(frozen=True)
class DrainSettings:
    """What is done to the Kubernetes Node around its reboot: cordon, drain, labels, taint."""

    node_ops: str = _key(
        "auto",
        p_enum("auto", "kubernetes", "none"),
        "cordon and drain through Kubernetes (auto: with that backend)",
    )
    drain_timeout: timedelta = _key(timedelta(minutes=15), p_positive_duration, "give up draining after this")
    drain_grace_period: int = _key(
        -1, p_grace, "termination grace of evicted pods in seconds; -1: the pod's own"
    )
    drain_pod_selector: str = _key("", p_selector, "evict only pods matching this label selector")
    drain_delete_emptydir_data: bool = _key(False, p_bool, "evict pods with emptyDir volumes (kubectl drain)")
    drain_force: bool = _key(False, p_bool, "evict pods no controller manages (kubectl drain --force)")
    drain_parallelism: int = _key(5, p_int(1, 100), "evictions in flight at once")
    drain_failure: str = _key(
        "abort", p_enum("abort", "force"), "on drain failure: abort (uncordon, release) or reboot anyway"
    )
    pre_reboot_labels: tuple[tuple[str, str], ...] = _key(
        (), p_labels, 'node labels set before the drain ("k=v")'
    )
    post_reboot_labels: tuple[tuple[str, str], ...] = _key(
        (), p_labels, 'node labels set after the reboot ("k=v")'
    )
    taint_while_waiting: bool = _key(False, p_bool, "PreferNoSchedule taint while waiting for a slot")


@dataclass(frozen=True)
class GateSettings:
    """What blocks taking a slot: pods, alerts, too many nodes down, a PodDisruptionBudget."""

    blocking_pod_selector: str = _key("", p_selector, "pods on this node matching it block the reboot")
    prometheus_url: str = _key("", p_opt_url, "Prometheus whose firing alerts block the reboot")
    prometheus_alert_filter: str = _key("", p_regex, "alerts whose name matches are ignored")
    prometheus_alert_filter_match_only: bool = _key(
        False, p_bool, "invert: only alerts whose name matches prometheus_alert_filter block"
    )
    max_unavailable_nodes: int = _key(
        -1,
        p_int(-1, 100_000),
        "take no slot while more nodes of the group are NotReady or cordoned (-1: off)",
    )
    group_node_selector: str = _key("", p_selector, "label selector of the group's nodes (budget gate)")
    pdb_precheck: bool = _key(
        True,
        p_bool,
        "take no slot while a PodDisruptionBudget covering a pod the drain would evict allows no "
        "disruption (PDBBlocked; Kubernetes node operations)",
    )


@dataclass(frozen=True)
class ObservabilitySettings:
    """Logs, metrics and the event file."""

    metrics_address: str = _key("0.0.0.0:9727", p_address, 'metrics and /healthz listener; "" disables')
    log_format: str = _key("text", p_enum("text", "json"), "log line format")
    log_level: str = _key("info", p_enum("debug", "info", "warning", "error"), "log level")
    events_file: str | None = _key(None, p_opt_str, "append one JSON line per phase change here")


@dataclass(frozen=True)
class NotifySettings:
    """Messages to people about this node's cycle, through apprise (Slack, Teams, Matrix, email,
    a generic webhook...). Sent in the background: a notification never holds up a cycle."""

    notify_urls: tuple[str, ...] = _key(
        (),
        p_notify_urls,
        "apprise URLs to notify (json://host/path, slack://..., mailto://...); empty: none. They "
        "carry tokens: --print-config shows only their schemes",
        secret=True,
    )
    notify_events: tuple[str, ...] = _key(
        EVENTS,
        p_notify_events,
        "the events notified: drain, reboot, done (back healthy, slot given back), failure (drain, "
        "reboot or post-reboot checks), paused (this node paused its group)",
    )
    notify_templates: Templates = _key(
        Templates(),
        p_notify_templates,
        "message per event, over the defaults; fields {event} {node} {group} {phase} {reason} {boot_id}",
    )
    notify_timeout: timedelta = _key(
        timedelta(seconds=10),
        p_positive_duration,
        "one notification gives up after this (connect, then answer)",
    )


@dataclass(frozen=True)
class Settings:
    """The agent's effective configuration: one frozen section per concern (as kopf's
    OperatorSettings). The sections' field metadata is the schema."""

    identity: Identity = field(default_factory=Identity)
    semaphore: SemaphoreSettings = field(default_factory=SemaphoreSettings)
    fleetlock: FleetLockSettings = field(default_factory=FleetLockSettings)
    etcd: EtcdSettings = field(default_factory=EtcdSettings)
    kube: KubeSettings = field(default_factory=KubeSettings)
    host: HostSettings = field(default_factory=HostSettings)
    detection: DetectionSettings = field(default_factory=DetectionSettings)
    windows: WindowSettings = field(default_factory=WindowSettings)
    reboot: RebootSettings = field(default_factory=RebootSettings)
    verify: VerifySettings = field(default_factory=VerifySettings)
    drain: DrainSettings = field(default_factory=DrainSettings)
    gates: GateSettings = field(default_factory=GateSettings)
    observability: ObservabilitySettings = field(default_factory=ObservabilitySettings)
    notify: NotifySettings = field(default_factory=NotifySettings)

    @classmethod
    def from_keys(cls, values: Mapping[str, Any]) -> Settings:
        """Settings from flat key -> typed value (keys left out keep their defaults)."""
        return cls().replace(**values)

    def value(self, key: str) -> Any:
        """One key's value by its flat name."""
        return getattr(getattr(self, SECTION_OF[key]), key)

    def replace(self, **values: Any) -> Settings:
        """A copy with some keys (flat names) changed. Not validated: for derived values and tests."""
        parts: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            parts.setdefault(SECTION_OF[key], {})[key] = value
        return dataclasses.replace(
            self,
            **{name: dataclasses.replace(getattr(self, name), **kv) for name, kv in parts.items()},
        )


SECTION_OF: dict[str, str] = {}
KEYS: dict[str, dataclasses.Field[Any]] = {}
for _section in dataclasses.fields(Settings):
    for _f in dataclasses.fields(_section.default_factory):  # type: ignore[arg-type]
        SECTION_OF[_f.name] = _section.name
        if not _f.metadata.get("derived"):
            KEYS[_f.name] = _f
del _section, _f


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def to_plain(settings: Settings, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The effective configuration as flat plain YAML-able data, secrets masked."""
    out: dict[str, Any] = {}
    for name, fld in KEYS.items():
        value = settings.value(name)
        if fld.metadata["secret"] and value and mask_secrets:
            out[name] = [masked_url(v) for v in value] if isinstance(value, tuple) else MASK
        else:
            out[name] = mask_urls(plain_key(name, value)) if mask_secrets else plain_key(name, value)
    return out


def plain_key(name: str, value: Any) -> Any:
    """Key ``name``'s ``value`` as the file writes it: a signal by its name, not its number."""
    if KEYS[name].metadata["parse"] is p_signal and isinstance(value, int):
        return signal_name(value)
    return plain(value)


def default_of(name: str) -> Any:
    """Key ``name``'s default value, as the file writes it."""
    fld = KEYS[name]
    value = fld.default_factory() if fld.default is dataclasses.MISSING else fld.default  # type: ignore[operator]
    return plain_key(name, value)


def plain(value: Any) -> Any:
    """A value in the file's own format, so that --print-config output loads back."""
    if isinstance(value, DetectorSpec | CheckSpec):
        return value.plain()
    if isinstance(value, WaveSize):
        return str(value) if value.percent else value.value
    if (
        isinstance(value, tuple)
        and value
        and all(isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, str) for x in v) for v in value)
    ):
        return [f"{k}={v}" for k, v in value]  # labels
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, frozenset):
        return sorted(plain(v) for v in value)
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value
