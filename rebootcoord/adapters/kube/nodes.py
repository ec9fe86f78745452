"""Node operations through the Kubernetes API: cordon, drain (Eviction API, policy/v1, so
PodDisruptionBudgets are honoured), uncordon, annotations, labels, a taint, and Events on the Node.

Drain follows ``kubectl drain``: DaemonSet and mirror pods stay; pods with emptyDir volumes and
pods no controller manages are refused unless ``drain_delete_emptydir_data`` / ``drain_force``;
evictions run in parallel; a 429 (a PodDisruptionBudget says not now) is retried with backoff
until ``drain_timeout``; the drain ends when the evicted pods are gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rebootcoord.adapters.kube.api import (
    ZONE_LABEL,
    Kube,
    NotFound,
    TooManyRequests,
    micro_time,
    node_pods,
    path_segment,
    pod_finished,
    pod_name,
)
from rebootcoord.core.types import NodeName, Phase
from rebootcoord.errors import (
    ApiError,
    BackendUnavailable,
    DrainInterrupted,
    DrainTimeout,
    NodeOperationError,
)

log = logging.getLogger(__name__)

ANN_PREFIX = "rebootcoord.io/"
ANN_PHASE = ANN_PREFIX + "phase"
ANN_REASON = ANN_PREFIX + "reason"
ANN_SINCE = ANN_PREFIX + "phase-since"
ANN_LAST_REBOOT = ANN_PREFIX + "last-reboot"
ANN_CORDONED = ANN_PREFIX + "cordoned-by-rebootcoord"
EVENTS_NAMESPACE = "default"
WAITING_TAINT = {"key": "rebootcoord.io/reboot-pending", "effect": "PreferNoSchedule"}
#: The Node a read or a patch answered serves, once, a question asked within this many seconds
#: (whether our cordon is on it at start-up, the Ready check after a reboot) instead of a GET.
FRESH_FOR = 5.0

# Which Event a phase change writes on the Node.
PHASE_EVENTS = {
    Phase.PENDING: "RebootRequired",
    Phase.WAITING: "WaitingForSlot",
    Phase.LOCKED: "SlotAcquired",
    Phase.DRAINING: "Draining",
    Phase.REBOOTING: "Rebooting",
    Phase.VERIFYING: "Rebooted",
    Phase.RELEASING: "Releasing",
    Phase.IDLE: "SlotReleased",
}


@dataclass(frozen=True)
class DrainOptions:
    timeout: float = 900.0
    grace_period: int = -1
    pod_selector: str = ""
    delete_emptydir_data: bool = False
    force: bool = False
    parallelism: int = 5
    retry_429_after: float = 5.0


class KubeNodeOps:
    def __init__(
        self,
        kube: Kube,
        node: NodeName,
        *,
        drain: DrainOptions | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.node = node
        self.options = drain or DrainOptions()
        self.clock = clock
        self.path = f"/api/v1/nodes/{path_segment(node)}"
        self._uid: str | None = None
        self._answered: tuple[float, dict[str, Any]] | None = None  # (monotonic time, the Node)
        self._deferred: dict[str, str] = {}  # phase annotations for the next patch (announce)

    # ------------------------------------------------------------------------------------------
    # the node object

    def read(self) -> dict[str, Any]:
        try:
            node: dict[str, Any] = self.kube.get(self.path)
        except NotFound as exc:
            raise NodeOperationError(f"Node {self.node} does not exist") from exc
        self._uid = node["metadata"].get("uid")
        self._answered = (time.monotonic(), node)
        return node

    def fresh(self) -> dict[str, Any] | None:
        """The Node as a read or a patch of this agent answered it less than FRESH_FOR seconds
        ago, once (then forgotten); None otherwise. What a GET now would say, but for a change
        made in those seconds by someone else -- only for questions a moment's lag cannot make
        unsafe (never whether the node was schedulable before our cordon: that is a GET)."""
        answered, self._answered = self._answered, None
        if answered is None or time.monotonic() - answered[0] > FRESH_FOR:
            return None
        return answered[1]

    def zone(self) -> str:
        """The Node's zone label, read at start-up ("" without one, or without the Node); the
        answer serves the start-up's next question (``fresh``)."""
        try:
            node = self.read()
        except NodeOperationError:
            return ""
        except BackendUnavailable as exc:
            log.warning("cannot read the zone of Node %s: %s (max_holders_per_zone counts it in none)",
                        self.node, exc)  # fmt: skip
            return ""
        return str(((node.get("metadata") or {}).get("labels") or {}).get(ZONE_LABEL, ""))

    def _patch(self, body: dict[str, Any]) -> None:
        """A merge patch of the Node, with the phase annotations an announce deferred; its answer
        is the Node, whose uid the Events name (no GET for it)."""
        if self._deferred:
            meta = body.setdefault("metadata", {})
            meta["annotations"] = {**self._deferred, **(meta.get("annotations") or {})}
        node = self.kube.merge_patch(self.path, body)
        self._deferred = {}
        if isinstance(node, dict):
            self._uid = (node.get("metadata") or {}).get("uid") or self._uid
            self._answered = (time.monotonic(), node)

    def is_unschedulable(self) -> bool:
        return bool((self.read().get("spec") or {}).get("unschedulable"))

    def cordon(self) -> None:
        self._patch({"spec": {"unschedulable": True}, "metadata": {"annotations": {ANN_CORDONED: "true"}}})

    def cordoned_by_us(self) -> bool:
        node = self.fresh() or self.read()
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        return bool((node.get("spec") or {}).get("unschedulable")) and annotations.get(ANN_CORDONED) == "true"

    def uncordon(self) -> None:
        self._patch({"spec": {"unschedulable": None}, "metadata": {"annotations": {ANN_CORDONED: None}}})

    def node_exists(self, node: NodeName) -> bool | None:
        try:
            self.kube.get(f"/api/v1/nodes/{path_segment(node)}")
        except NotFound:
            return False
        return True

    def set_labels(self, labels: Sequence[tuple[str, str]]) -> None:
        if labels:
            self._patch({"metadata": {"labels": dict(labels)}})

    def set_waiting_taint(self, present: bool) -> None:
        node = self.read()
        taints = list((node.get("spec") or {}).get("taints") or [])
        has = any(t.get("key") == WAITING_TAINT["key"] for t in taints)
        if has == present:
            return
        if present:
            taints.append(dict(WAITING_TAINT))
        else:
            taints = [t for t in taints if t.get("key") != WAITING_TAINT["key"]]
        # resourceVersion in a merge patch makes it a compare-and-swap (taints is a whole list).
        self._patch(
            {"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": taints}}
        )

    def announce(
        self, phase: Phase, reason: str, *, warning: bool = False, event_reason: str = "", defer: bool = False
    ) -> None:
        now = self.clock()
        annotations = {ANN_PHASE: phase.value, ANN_REASON: reason[:1000], ANN_SINCE: _iso(now)}
        if phase is Phase.VERIFYING and not warning:
            annotations[ANN_LAST_REBOOT] = _iso(now)
        if defer:
            self._deferred.update(annotations)  # the next patch carries them (the Event: now)
        else:
            self._patch({"metadata": {"annotations": annotations}})
        kind = event_reason or PHASE_EVENTS.get(phase, phase.value.capitalize())
        self.event(kind, reason, warning=warning)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        """An Event about the Node; ``kubectl describe node`` shows it. Events about cluster-scoped
        objects must live in namespace "default" (the API server refuses others), as the
        kubelet's do."""
        if self._uid is None:
            self.read()
        now = micro_time(self.clock())
        stamp = now[:19] + "Z"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.node}.", "namespace": EVENTS_NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": self.node, "uid": self._uid},
            "reason": reason,
            "message": message[:1000],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "rebootcoord", "host": self.node},
            "reportingComponent": "rebootcoord.io/agent",
            "reportingInstance": self.node,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "eventTime": now,
            "action": reason,
            "count": 1,
        }
        try:
            self.kube.create(f"/api/v1/namespaces/{EVENTS_NAMESPACE}/events", body)
        except ApiError as exc:
            log.warning("cannot record event %s on node %s: %s", reason, self.node, exc)

    # ------------------------------------------------------------------------------------------
    # drain

    def pods(self, label_selector: str = "") -> list[dict[str, Any]]:
        return node_pods(self.kube, self.node, label_selector)

    def drain(self, stop: threading.Event) -> None:
        if self._deferred:
            self._patch({})  # no cordon of ours carried the phase: the node is told now
        o = self.options
        deadline = time.monotonic() + o.timeout
        evict, refused = plan_drain(self.pods(o.pod_selector), o)
        if refused:
            raise NodeOperationError("cannot drain: " + "; ".join(refused))
        log.info("draining node %s: evicting %d pod(s)", self.node, len(evict))
        with ThreadPoolExecutor(max_workers=o.parallelism, thread_name_prefix="evict") as pool:
            results = list(pool.map(lambda pod: self._evict(pod, deadline, stop), evict))
        failures = [r for r in results if r]
        if failures:
            raise NodeOperationError("evictions failed: " + "; ".join(failures))
        self._wait_gone({p["metadata"]["uid"] for p in evict}, deadline, stop)

    def _evict(self, pod: dict[str, Any], deadline: float, stop: threading.Event) -> str:
        """Evict one pod, retrying 429s until the deadline. Returns "" or why it failed."""
        meta = pod["metadata"]
        ns, name = meta["namespace"], meta["name"]
        body: dict[str, Any] = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": ns},
        }
        if self.options.grace_period >= 0:
            body["deleteOptions"] = {"gracePeriodSeconds": self.options.grace_period}
        path = f"/api/v1/namespaces/{path_segment(ns)}/pods/{path_segment(name)}/eviction"
        while True:
            if stop.is_set():
                return f"{ns}/{name}: interrupted"
            try:
                self.kube.call(lambda: self.kube.request("POST", path, body=body))
                return ""
            except NotFound:
                return ""  # gone already
            except TooManyRequests as exc:
                if time.monotonic() >= deadline:
                    return f"{ns}/{name}: still refused at the drain timeout ({exc.message})"
                log.info("eviction of %s/%s refused for now: %s", ns, name, exc.message)
                stop.wait(min(self.options.retry_429_after, max(0.0, deadline - time.monotonic())))
            except ApiError as exc:
                return f"{ns}/{name}: {exc}"

    def _wait_gone(self, uids: set[str], deadline: float, stop: threading.Event) -> None:
        while True:
            remaining = [p for p in self.pods() if p["metadata"]["uid"] in uids]
            if not remaining:
                return
            if stop.is_set():
                raise DrainInterrupted("the agent is stopping")
            if time.monotonic() >= deadline:
                names = ", ".join(pod_name(p) for p in remaining[:10])
                raise DrainTimeout(f"pods still on the node at the drain timeout: {names}")
            stop.wait(1.0)


def plan_drain(
    pods: Sequence[dict[str, Any]], options: DrainOptions
) -> tuple[list[dict[str, Any]], list[str]]:
    """Which pods to evict, and which pods make the drain refuse (as kubectl drain would). Pure."""
    evict: list[dict[str, Any]] = []
    refused: list[str] = []
    for pod in pods:
        meta = pod["metadata"]
        ident = pod_name(pod)
        if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
            continue  # a static pod's mirror: the kubelet owns it
        if meta.get("deletionTimestamp"):
            evict.append(pod)  # on its way out; wait for it
            continue
        owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
        if any(o.get("kind") == "DaemonSet" for o in owners):
            continue
        if pod_finished(pod):
            evict.append(pod)
            continue
        if not owners and not options.force:
            refused.append(f"{ident} is managed by no controller (set drain_force to evict it)")
            continue
        volumes = (pod.get("spec") or {}).get("volumes") or []
        if any("emptyDir" in v for v in volumes) and not options.delete_emptydir_data:
            refused.append(f"{ident} uses emptyDir (set drain_delete_emptydir_data to evict it)")
            continue
        evict.append(pod)
    return evict, refused


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
