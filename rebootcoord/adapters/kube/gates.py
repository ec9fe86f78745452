"""Gates in Kubernetes mode. Before taking a slot: pods matching a selector on the node, the
number of unavailable nodes in the group, and the PodDisruptionBudgets of the pods the drain would
evict. After the reboot: the Node is Ready (with the new boot ID), and optionally every pod on it
is Ready. Each is a ``Check``: ok, or why not. Gates only read; they never change the cluster."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rebootcoord.adapters.kube.api import Kube, NotFound, node_pods, path_segment, pod_finished, pod_name
from rebootcoord.adapters.kube.nodes import DrainOptions, plan_drain
from rebootcoord.core.types import NodeName
from rebootcoord.errors import ApiError, BackendUnavailable
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


PDB_BLOCKED = "PDBBlocked"
PDB_PATH = "/apis/policy/v1/poddisruptionbudgets"


@dataclass
class PdbPrecheck:
    """Take no slot while the drain would be kept waiting by a PodDisruptionBudget: one that covers
    a pod the drain would evict (``plan_drain``'s rules, with the drain's own options) and allows
    no disruption now (``pdb_precheck``). The drain itself still asks the Eviction API, which
    decides; this only keeps the node from being cordoned for a drain that cannot start."""

    kube: Kube
    node: NodeName
    drain: DrainOptions
    name: str = "pdb"

    def check(self) -> CheckResult:
        try:
            evict, _ = plan_drain(node_pods(self.kube, self.node, self.drain.pod_selector), self.drain)
            guarded = [p for p in evict if not evicted_without_budget(p)]
            if not guarded:
                return CheckResult(True, self.name)  # nothing to ask a budget about: no list
            budgets = list(self.kube.list_objects(PDB_PATH).get("items") or [])
        except (BackendUnavailable, ApiError) as exc:
            # Not knowing is not "allowed": the node waits, and says why.
            return CheckResult(False, self.name, f"cannot tell: {exc}", reason=PDB_BLOCKED)
        problems = pdb_problems(guarded, budgets)
        if problems:
            return CheckResult(False, self.name, "; ".join(problems[:5]), reason=PDB_BLOCKED)
        return CheckResult(True, self.name)


def evicted_without_budget(pod: dict[str, Any]) -> bool:
    """The Eviction API deletes these without asking a budget: terminal or Pending pods, and pods
    being deleted already (canIgnorePDB in kube-apiserver's eviction handler). Pure."""
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed", "Pending") or bool(pod["metadata"].get("deletionTimestamp"))


def pdb_problems(pods: Sequence[dict[str, Any]], budgets: Sequence[dict[str, Any]]) -> list[str]:
    """Why evicting ``pods`` would be refused now, one line per budget (or per pod under several
    budgets); [] when every eviction would be allowed. Pure.

    As the Eviction API decides (kube-apiserver, pkg/registry/core/pod/storage/eviction.go): a
    pod's budgets are those of its namespace whose selector matches its labels; a pod under two
    or more is refused (500) whatever they allow; a pod that is not Ready passes when its budget's
    ``unhealthyPodEvictionPolicy`` is AlwaysAllow, or when the budget is met without it
    (currentHealthy >= desiredHealthy > 0); otherwise the budget must have been observed at its
    generation and allow a disruption.

    One budget covering several pods here needs ``disruptionsAllowed >= 1``, not one per pod: the
    drain evicts what it may and retries the rest (429) while the evicted pods come back elsewhere,
    which is what a budget is for. Asking for one per pod would hold back every node that runs two
    replicas of a ``maxUnavailable: 1`` app, although its drain finishes in one reschedule.
    """
    guarding: dict[tuple[str, str], tuple[dict[str, Any], list[str]]] = {}
    problems: list[str] = []
    for pod in pods:
        if evicted_without_budget(pod):
            continue
        meta = pod["metadata"]
        namespace = meta.get("namespace", "")
        labels = meta.get("labels") or {}
        covering = [
            b
            for b in budgets
            if b["metadata"].get("namespace") == namespace
            and selector_matches((b.get("spec") or {}).get("selector"), labels)
        ]
        if len(covering) > 1:
            names = ", ".join(sorted(b["metadata"]["name"] for b in covering))
            problems.append(
                f"{pod_name(pod)} is covered by {len(covering)} PodDisruptionBudgets ({names}): "
                "the Eviction API refuses to evict it"
            )
            continue
        if not covering:
            continue
        (budget,) = covering
        if not is_ready((pod.get("status") or {}).get("conditions")) and _unhealthy_may_go(budget):
            continue
        key = (namespace, budget["metadata"]["name"])
        guarding.setdefault(key, (budget, []))[1].append(pod_name(pod))
    for (namespace, name), (budget, here) in sorted(guarding.items()):
        status = budget.get("status") or {}
        pods_here = ", ".join(here[:5]) + (f" and {len(here) - 5} more" if len(here) > 5 else "")
        if int(status.get("observedGeneration") or 0) < int(budget["metadata"].get("generation") or 0):
            problems.append(
                f"PodDisruptionBudget {namespace}/{name} is not yet processed by the disruption "
                f"controller (it covers {pods_here} here)"
            )
            continue
        allowed = int(status.get("disruptionsAllowed") or 0)
        if allowed < 1:
            problems.append(
                f"PodDisruptionBudget {namespace}/{name} allows {allowed} disruptions "
                f"({status.get('currentHealthy', '?')} healthy, {status.get('desiredHealthy', '?')} "
                f"needed; it covers {pods_here} here)"
            )
    return problems


def _unhealthy_may_go(budget: dict[str, Any]) -> bool:
    """A pod that is not Ready may be evicted under this budget whatever it allows."""
    if (budget.get("spec") or {}).get("unhealthyPodEvictionPolicy") == "AlwaysAllow":
        return True
    status = budget.get("status") or {}
    desired = int(status.get("desiredHealthy") or 0)
    return desired > 0 and int(status.get("currentHealthy") or 0) >= desired


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector against a pod's labels, as the API server's
    LabelSelectorAsSelector: None matches nothing, {} everything (a policy/v1 budget's "all pods
    of the namespace"), an invalid selector nothing. Pure."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op in ("In", "NotIn"):
            if not values:
                return False  # invalid: matches nothing
            present = key in labels and labels[key] in values
            if present != (op == "In"):
                return False
        elif op in ("Exists", "DoesNotExist"):
            if values:
                return False  # invalid
            if (key in labels) != (op == "Exists"):
                return False
        else:
            return False  # unknown operator: invalid
    return True


@dataclass
class NodeReady:
    """After the reboot: the Node is Ready, and its kubelet reports the boot we are in."""

    kube: Kube
    node: NodeName
    boot_id: Callable[[], str]
    name: str = "node-ready"
    #: The Node as the agent's own patch answered it a moment ago (KubeNodeOps.fresh), once:
    #: the VERIFYING phase's patch comes right before the first check, with no GET.
    seen: Callable[[], dict[str, Any] | None] | None = None

    def check(self) -> CheckResult:
        try:
            node = (self.seen() if self.seen is not None else None) or self.kube.get(
                f"/api/v1/nodes/{path_segment(self.node)}"
            )
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
