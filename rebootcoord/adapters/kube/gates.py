"""Gates in Kubernetes mode. Before taking a slot: pods matching a selector on the node, and the
number of unavailable nodes in the group. After the reboot: the Node is Ready (with the new boot
ID), and optionally every pod on it is Ready. Each is a ``Check``: ok, or why not."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rebootcoord.adapters.kube.api import Kube, NotFound, node_pods, path_segment, pod_finished, pod_name
from rebootcoord.core.types import NodeName
from rebootcoord.errors import BackendUnavailable
from rebootcoord.ports import CheckResult


def is_ready(conditions: list[dict[str, Any]] | None) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions or [])


@dataclass
class PodBlocker:
    """Pods on this node that match the selector block the reboot (kured's --blocking-pod-selector)."""

    kube: Kube
    node: NodeName
    selector: str
    name: str = "blocking-pods"

    def check(self) -> CheckResult:
        try:
            found = node_pods(self.kube, self.node, self.selector)
        except BackendUnavailable as exc:
            return CheckResult(False, self.name, f"cannot list pods: {exc}")
        pods = [pod_name(p) for p in found if not pod_finished(p)]
        if pods:
            return CheckResult(
                False, self.name, f"pods matching {self.selector!r} run here: {', '.join(pods[:5])}"
            )
        return CheckResult(True, self.name)


@dataclass
class NodeBudget:
    """Take no slot while more than ``max_unavailable`` nodes of the group are NotReady or cordoned."""

    kube: Kube
    max_unavailable: int
    selector: str = ""
    name: str = "node-budget"

    def check(self) -> CheckResult:
        try:
            doc = self.kube.list_objects("/api/v1/nodes", labelSelector=self.selector or None)
        except BackendUnavailable as exc:
            return CheckResult(False, self.name, f"cannot list nodes: {exc}")
        down = [
            n["metadata"]["name"]
            for n in doc.get("items") or []
            if (n.get("spec") or {}).get("unschedulable")
            or not is_ready((n.get("status") or {}).get("conditions"))
        ]
        if len(down) > self.max_unavailable:
            return CheckResult(
                False,
                self.name,
                f"{len(down)} nodes unavailable (more than {self.max_unavailable}): "
                + ", ".join(sorted(down)[:10]),
            )
        return CheckResult(True, self.name)


@dataclass
class NodeReady:
    """After the reboot: the Node is Ready, and its kubelet reports the boot we are in."""

    kube: Kube
    node: NodeName
    boot_id: Callable[[], str]
    name: str = "node-ready"

    def check(self) -> CheckResult:
        try:
            node = self.kube.get(f"/api/v1/nodes/{path_segment(self.node)}")
        except NotFound:
            return CheckResult(False, self.name, f"Node {self.node} does not exist")
        except BackendUnavailable as exc:
            return CheckResult(False, self.name, str(exc))
        status = node.get("status") or {}
        if not is_ready(status.get("conditions")):
            return CheckResult(False, self.name, f"Node {self.node} is not Ready")
        reported = (status.get("nodeInfo") or {}).get("bootID") or ""
        current = self.boot_id()
        if reported and reported != current:
            return CheckResult(False, self.name, f"the kubelet still reports boot {reported}, not {current}")
        return CheckResult(True, self.name)


@dataclass
class PodsReady:
    """After the reboot: every running pod on the node is Ready."""

    kube: Kube
    node: NodeName
    name: str = "pods-ready"

    def check(self) -> CheckResult:
        try:
            found = node_pods(self.kube, self.node)
        except BackendUnavailable as exc:
            return CheckResult(False, self.name, str(exc))
        unready = [
            pod_name(p)
            for p in found
            if not pod_finished(p) and not is_ready((p.get("status") or {}).get("conditions"))
        ]
        if unready:
            return CheckResult(False, self.name, f"pods not Ready: {', '.join(unready[:5])}")
        return CheckResult(True, self.name)


@dataclass
class NodeBootId:
    """The boot ID as the kubelet reports it in ``status.nodeInfo.bootID`` (boot_id_source: node)."""

    kube: Kube
    node: NodeName

    def __call__(self) -> str:
        node = self.kube.get(f"/api/v1/nodes/{path_segment(self.node)}")
        boot = ((node.get("status") or {}).get("nodeInfo") or {}).get("bootID") or ""
        if not boot:
            raise BackendUnavailable(f"Node {self.node} reports no bootID")
        return str(boot)
