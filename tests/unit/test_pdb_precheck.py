"""The PDB pre-check: from the node's pods and the cluster's PodDisruptionBudgets, would the drain's
evictions be allowed now? The Eviction API's own rules, decided without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from rebootcoord.adapters.kube.gates import (
    PDB_BLOCKED,
    PDB_PATH,
    PdbPrecheck,
    evicted_without_budget,
    pdb_problems,
    selector_matches,
)
from rebootcoord.adapters.kube.nodes import DrainOptions
from rebootcoord.core.types import NodeName
from rebootcoord.errors import ApiError, BackendUnavailable


def pod(name: str, *, app: str = "web", namespace: str = "ns", ready: bool = True, phase: str = "Running",
        deleting: bool = False, owner: str | None = "ReplicaSet") -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": name, "labels": {"app": app}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    return {"metadata": meta, "spec": {}, "status": {"phase": phase, "conditions": conditions}}


def pdb(name: str = "web", *, allowed: int = 0, selector: dict[str, Any] | str | None = "app",
        namespace: str = "ns", healthy: int = 2, desired: int = 2, generation: int = 1,
        observed: int | None = 1, policy: str | None = None) -> dict[str, Any]:  # fmt: skip
    spec: dict[str, Any] = {}
    if selector == "app":
        spec["selector"] = {"matchLabels": {"app": name}}
    elif selector is not None:
        spec["selector"] = selector
    if policy:
        spec["unhealthyPodEvictionPolicy"] = policy
    status: dict[str, Any] = {
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
    }
    if observed is not None:
        status["observedGeneration"] = observed
    return {
        "metadata": {"name": name, "namespace": namespace, "generation": generation},
        "spec": spec,
        "status": status,
    }


@pytest.mark.parametrize(
    ("pods", "budgets", "blocked"),
    [
        ([pod("web-1")], [], None),
        ([pod("web-1")], [pdb(allowed=1)], None),
        ([pod("web-1")], [pdb(allowed=0)], "web allows 0 disruptions"),
        ([pod("web-1")], [pdb(allowed=-1)], "allows -1 disruptions"),
        # One budget allowing one, two of its pods here: the drain evicts one, retries the other
        # (429) until the first is back elsewhere. Allowed.
        ([pod("web-1"), pod("web-2")], [pdb(allowed=1)], None),
        ([pod("web-1"), pod("web-2")], [pdb(allowed=0)], "covers ns/web-1, ns/web-2 here"),
        ([pod("db-1", app="db")], [pdb(allowed=0)], None),  # another app's budget
        ([pod("web-1", namespace="other")], [pdb(allowed=0)], None),  # same labels, other namespace
        ([pod("web-1")], [pdb(allowed=0, selector=None)], None),  # no selector: covers nothing
        ([pod("web-1")], [pdb(allowed=0, selector={})], "allows 0"),  # {}: every pod of the namespace
        ([pod("web-1")], [pdb(allowed=5, observed=None)], "not yet processed"),
        ([pod("web-1")], [pdb(allowed=5, generation=3, observed=2)], "not yet processed"),
        (
            [pod("web-1")],
            [pdb(allowed=1), pdb("all", allowed=1, selector={})],
            "covered by 2 PodDisruptionBudgets (all, web)",
        ),
        # Pods the Eviction API deletes without asking a budget.
        ([pod("web-1", phase="Succeeded")], [pdb(allowed=0)], None),
        ([pod("web-1", phase="Failed")], [pdb(allowed=0)], None),
        ([pod("web-1", phase="Pending")], [pdb(allowed=0)], None),
        ([pod("web-1", deleting=True)], [pdb(allowed=0)], None),
        # A pod that is not Ready: its budget is asked only when the app is short already.
        ([pod("web-1", ready=False)], [pdb(allowed=0, healthy=2, desired=2)], None),
        ([pod("web-1", ready=False)], [pdb(allowed=0, healthy=1, desired=2)], "allows 0"),
        ([pod("web-1", ready=False)], [pdb(allowed=0, healthy=0, desired=0)], "allows 0"),
        ([pod("web-1", ready=False)], [pdb(allowed=0, healthy=0, desired=2, policy="AlwaysAllow")], None),
        ([pod("web-1")], [pdb(allowed=0, policy="AlwaysAllow")], "allows 0"),  # Ready: counted
        ([pod("web-1", ready=False)], [pdb(allowed=0, healthy=2, desired=2, observed=0)], None),
        ([pod("web-1"), pod("api-1", app="api")], [pdb(allowed=1), pdb("api", allowed=0)], "api allows 0"),
    ],
    ids=[
        "no-budget",
        "allows-one",
        "allows-none",
        "negative",
        "two-pods-one-allowed",
        "two-pods-none-allowed",
        "other-app",
        "other-namespace",
        "null-selector",
        "empty-selector-covers-all",
        "never-observed",
        "stale-generation",
        "two-budgets",
        "succeeded",
        "failed",
        "pending",
        "terminating",
        "unready-budget-met",
        "unready-budget-short",
        "unready-nothing-desired",
        "unready-always-allow",
        "ready-always-allow",
        "unready-budget-met-stale",
        "one-of-two-apps",
    ],
)
def test_the_drain_would_wait_on_a_budget(
    pods: list[dict[str, Any]], budgets: list[dict[str, Any]], blocked: str | None
) -> None:
    problems = pdb_problems(pods, budgets)
    if blocked is None:
        assert problems == []
    else:
        assert len(problems) == 1 and blocked in problems[0], problems


def test_each_budget_is_named_once_with_its_pods() -> None:
    pods = [pod(f"web-{i}") for i in range(7)] + [pod("api-1", app="api")]
    problems = pdb_problems(pods, [pdb(allowed=0), pdb("api", allowed=0, healthy=3, desired=3)])
    assert problems == [
        "PodDisruptionBudget ns/api allows 0 disruptions (3 healthy, 3 needed; it covers ns/api-1 here)",
        "PodDisruptionBudget ns/web allows 0 disruptions (2 healthy, 2 needed; it covers ns/web-0, "
        "ns/web-1, ns/web-2, ns/web-3, ns/web-4 and 2 more here)",
    ]


def expr(key: str, op: str, *values: str) -> dict[str, Any]:
    """A selector of one matchExpressions requirement."""
    requirement: dict[str, Any] = {"key": key, "operator": op}
    if values:
        requirement["values"] = list(values)
    return {"matchExpressions": [requirement]}


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        (None, {"app": "web"}, False),
        ({}, {}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "web", "tier": "x"}, True),
        ({"matchLabels": {"app": "web"}}, {"app": "db"}, False),
        ({"matchLabels": {"app": "web"}}, {}, False),
        (expr("app", "In", "web", "db"), {"app": "db"}, True),
        (expr("app", "In", "web"), {}, False),
        (expr("app", "NotIn", "web"), {}, True),
        (expr("app", "NotIn", "web"), {"app": "web"}, False),
        (expr("app", "Exists"), {"app": ""}, True),
        (expr("app", "DoesNotExist"), {"app": "web"}, False),
        (expr("app", "DoesNotExist"), {}, True),
        (expr("app", "In"), {"app": "web"}, False),
        (expr("app", "Exists", "x"), {"app": "x"}, False),
        (expr("app", "Gt", "1"), {"app": "2"}, False),
        ({"matchLabels": {"app": "web"}, **expr("tier", "Exists")}, {"app": "web"}, False),
    ],
    ids=[
        "null", "empty", "labels", "labels-differ", "labels-missing", "in", "in-missing", "notin-missing",
        "notin", "exists", "doesnotexist-present", "doesnotexist", "in-without-values-invalid",
        "exists-with-values-invalid", "unknown-operator-invalid", "labels-and-expressions",
    ],
)  # fmt: skip
def test_label_selectors(selector: dict[str, Any] | None, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_pods_the_eviction_api_deletes_without_a_budget() -> None:
    assert not evicted_without_budget(pod("a"))
    assert evicted_without_budget(pod("a", phase="Pending"))
    assert evicted_without_budget(pod("a", deleting=True))


class FakeKube:
    """The two lists the check makes: the node's pods, the cluster's budgets."""

    def __init__(self, pods: list[dict[str, Any]], budgets: list[dict[str, Any]],
                 error: Exception | None = None) -> None:  # fmt: skip
        self.pods, self.budgets, self.error = pods, budgets, error
        self.paths: list[tuple[str, dict[str, Any]]] = []

    def list_objects(self, path: str, **query: Any) -> dict[str, Any]:
        self.paths.append((path, query))
        if path == PDB_PATH:
            if self.error is not None:
                raise self.error
            return {"items": self.budgets}
        assert path == "/api/v1/pods"
        return {"items": self.pods}


def precheck(kube: FakeKube, drain: DrainOptions | None = None) -> PdbPrecheck:
    return PdbPrecheck(kube, NodeName("n1"), drain or DrainOptions())  # type: ignore[arg-type]


def test_a_budget_allowing_nothing_blocks_with_its_reason() -> None:
    kube = FakeKube([pod("web-1")], [pdb(allowed=0)])
    result = precheck(kube).check()
    assert not result.ok and result.reason == PDB_BLOCKED == "PDBBlocked" and result.name == "pdb"
    assert "ns/web allows 0 disruptions" in result.detail
    assert kube.paths == [
        ("/api/v1/pods", {"fieldSelector": "spec.nodeName=n1", "labelSelector": None}),
        (PDB_PATH, {}),  # every namespace, in one request
    ]
    assert precheck(FakeKube([pod("web-1")], [pdb(allowed=1)])).check().ok


def test_only_the_pods_the_drain_would_evict_count() -> None:
    daemon = pod("agent-1", app="web", owner="DaemonSet")  # the drain leaves it
    bare = pod("web-1", owner=None)  # the drain refuses it (no drain_force): not a budget's matter
    kube = FakeKube([daemon, bare, pod("done", phase="Succeeded")], [pdb(allowed=0)])
    assert precheck(kube).check().ok
    assert [p for p, _ in kube.paths] == ["/api/v1/pods"]  # nothing to ask a budget about: no list
    assert not precheck(FakeKube([bare], [pdb(allowed=0)]), DrainOptions(force=True)).check().ok


def test_the_drains_pod_selector_is_the_checks() -> None:
    kube = FakeKube([pod("web-1")], [pdb(allowed=0)])
    precheck(kube, DrainOptions(pod_selector="tier=front")).check()
    assert kube.paths[0][1]["labelSelector"] == "tier=front"


@pytest.mark.parametrize(
    "error",
    [
        BackendUnavailable("Kubernetes API 503"),
        ApiError(403, "Forbidden", "cannot list poddisruptionbudgets"),
    ],
    ids=["unavailable", "forbidden"],
)
def test_a_budget_it_cannot_read_blocks(error: Exception) -> None:
    result = precheck(FakeKube([pod("web-1")], [], error=error)).check()
    assert not result.ok and result.reason == PDB_BLOCKED and "cannot tell" in result.detail
