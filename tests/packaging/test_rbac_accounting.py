"""tests.support.rbac on synthetic audit events: which grants a user used, which requests failed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.support.rbac import Grant, Request, denied_requests, grants_from, parse_audit_events, unused_grants

SA = "system:serviceaccount:ops:rebootcoord"
_ids = itertools.count()


def event(
    verb: str,
    resource: str | None,
    *,
    group: str = "",
    namespace: str | None = None,
    name: str | None = None,
    subresource: str | None = None,
    user: str = SA,
    impersonated: str | None = None,
    code: int | None = 200,
    decision: str | None = "allow",
    stage: str = "ResponseComplete",
    audit_id: str | None = None,
    uri: str = "/x",
) -> dict[str, Any]:
    """An audit.k8s.io/v1 Event at the Metadata level, as kube-apiserver writes it."""
    ev: dict[str, Any] = {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id or f"id-{next(_ids)}",
        "stage": stage,
        "requestURI": uri,
        "verb": verb,
        "user": {"username": user, "groups": ["system:authenticated"]},
        "annotations": {},
    }
    if impersonated:
        ev["impersonatedUser"] = {"username": impersonated}
    if resource:
        ref = {"resource": resource, "apiGroup": group, "apiVersion": "v1"}
        ref |= {
            k: v for k, v in (("namespace", namespace), ("name", name), ("subresource", subresource)) if v
        }
        ev["objectRef"] = ref
    if code is not None:
        ev["responseStatus"] = {"metadata": {}, "code": code}
    if decision is not None:
        ev["annotations"]["authorization.k8s.io/decision"] = decision
    return ev


def _role(kind: str, name: str, rules: list[dict[str, Any]], namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {"kind": kind, "metadata": meta, "rules": rules}


def _binding(kind: str, name: str, role_kind: str, namespace: str | None = None) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": namespace} if namespace else {})
    return {
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "rebootcoord", "namespace": "ops"}],
    }


# The chart's rules, written out here as the tests' own fixture (the chart is tested elsewhere).
OBJECTS = [
    _role(
        "Role",
        "rebootcoord",
        [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ],
        "ops",
    ),
    _binding("RoleBinding", "rebootcoord", "Role", "ops"),
    _role(
        "ClusterRole",
        "rebootcoord",
        [
            {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
            {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
        ],
    ),
    _binding("ClusterRoleBinding", "rebootcoord", "ClusterRole"),
]
RULES = grants_from(OBJECTS)


def test_rules_expand_to_one_grant_per_verb_and_scope() -> None:
    assert {(g.api_group, g.resource, g.verb, g.namespace) for g in RULES} == {
        ("coordination.k8s.io", "leases", "get", "ops"),
        ("coordination.k8s.io", "leases", "create", "ops"),
        ("", "events", "create", "ops"),
        ("", "events", "patch", "ops"),
        ("", "nodes", "get", None),
        ("", "nodes", "patch", None),
        ("", "pods/eviction", "create", None),
    }
    assert {g.source for g in RULES} == {"Role/rebootcoord", "ClusterRole/rebootcoord"}


def test_a_clusterrole_bound_in_a_namespace_is_scoped_to_it() -> None:
    objects = [OBJECTS[2], _binding("RoleBinding", "rebootcoord", "ClusterRole", "ops")]
    assert {g.namespace for g in grants_from(objects)} == {"ops"}


def test_grants_of_other_subjects_are_not_ours() -> None:
    assert grants_from(OBJECTS, subject=("other", "rebootcoord")) == []


ALL_USED = [
    event("get", "leases", group="coordination.k8s.io", namespace="ops", name="rebootcoord-default"),
    event("create", "leases", group="coordination.k8s.io", namespace="ops"),
    event("create", "events", namespace="ops"),
    event("patch", "events", namespace="ops", name="node-1.17a"),
    event("get", "nodes", name="node-1"),
    event("patch", "nodes", name="node-1"),
    event("create", "pods", namespace="default", name="web-1", subresource="eviction"),
]


def test_every_grant_used_leaves_none_unused() -> None:
    assert unused_grants(RULES, ALL_USED, user=SA) == []
    assert denied_requests(ALL_USED, user=SA) == []


@pytest.mark.parametrize(
    ("missing", "unused"),
    [
        (0, ("coordination.k8s.io", "leases", "get")),
        (3, ("", "events", "patch")),
        (6, ("", "pods/eviction", "create")),
    ],
    ids=["lease-get", "event-patch", "eviction"],
)
def test_a_grant_nobody_used_is_reported(missing: int, unused: tuple[str, str, str]) -> None:
    events = [e for i, e in enumerate(ALL_USED) if i != missing]
    assert [(g.api_group, g.resource, g.verb) for g in unused_grants(RULES, events, user=SA)] == [unused]


@pytest.mark.parametrize(
    "stray",
    [
        pytest.param(
            event("get", "leases", group="coordination.k8s.io", namespace="other"), id="other-namespace"
        ),
        pytest.param(event("get", "nodes", user="system:serviceaccount:ops:else"), id="other-user"),
        pytest.param(event("get", "nodes", decision="forbid", code=403), id="denied"),
        pytest.param(event("create", "pods", namespace="default"), id="pods-is-not-pods-eviction"),
        pytest.param(event("get", "leases", namespace="ops"), id="core-group-is-not-coordination"),
        pytest.param(event("list", "nodes"), id="other-verb"),
    ],
)
def test_requests_that_do_not_use_a_grant(stray: dict[str, Any]) -> None:
    rules = [g for g in RULES if g.resource in ("leases", "nodes") and g.verb == "get"]
    assert unused_grants(rules, [stray], user=SA) == sorted(rules, key=Grant.sort_key)


def test_impersonated_requests_count_for_the_impersonated_user() -> None:
    ev = event("get", "nodes", name="n", user="admin", impersonated=SA)
    (request,) = parse_audit_events([ev])
    assert request.user == SA
    get_nodes = [g for g in RULES if g.resource == "nodes" and g.verb == "get"]
    assert unused_grants(get_nodes, [ev], user=SA) == []
    assert unused_grants(get_nodes, [ev], user="admin") == get_nodes


def test_denied_requests_by_decision_or_by_status() -> None:
    events = [
        event("list", "secrets", namespace="ops", decision="forbid", code=403),
        event("delete", "nodes", name="node-1", decision=None, code=403),  # no annotation: the status
        event("create", "pods", namespace="ops", code=403),  # allowed, then refused by admission
        event("get", "nodes", name="node-2", code=404),  # allowed; the node is gone
        event("list", "secrets", user="someone-else", decision="forbid", code=403),
    ]
    denied = denied_requests(events, user=SA)
    assert [(r.verb, r.resource) for r in denied] == [("list", "secrets"), ("delete", "nodes")]
    assert all(isinstance(r, Request) and r.denied for r in denied)
    assert len(denied_requests(events)) == 3  # every user


def test_one_request_per_audit_id_at_its_last_stage() -> None:
    started = event(
        "watch", "leases", group="coordination.k8s.io", namespace="ops", stage="ResponseStarted", audit_id="w"
    )
    started["responseStatus"] = {"code": 200}
    done = event("watch", "leases", group="coordination.k8s.io", namespace="ops", audit_id="w", code=200)
    for order in ([started, done], [done, started]):
        (request,) = parse_audit_events(order)
        assert request.verb == "watch" and request.audit_id == "w"


def test_an_open_watch_counts() -> None:
    watch = event("watch", "nodes", stage="ResponseStarted", code=None)
    rules = [Grant("", "nodes", "watch", None)]
    assert unused_grants(rules, [watch], user=SA) == []


def test_non_resource_requests_use_no_grant_but_can_be_denied() -> None:
    version = event("get", None, uri="/version")
    denied = event("get", None, uri="/metrics", decision="forbid", code=403)
    assert unused_grants(RULES, [version], user=SA) == RULES
    assert [r.uri for r in denied_requests([version, denied], user=SA)] == ["/metrics"]


@pytest.mark.parametrize(
    ("grant", "allowed"),
    [
        (Grant("*", "*", "*"), True),
        (Grant("", "pods/*", "create"), True),
        (Grant("", "*/eviction", "create"), True),
        (Grant("", "pods", "create"), False),
        (Grant("", "pods/eviction", "create", "default"), True),
        (Grant("", "pods/eviction", "create", "kube-system"), False),
        (Grant("", "pods/eviction", "create", None, frozenset({"web-1"})), True),
        (Grant("", "pods/eviction", "create", None, frozenset({"web-2"})), False),
    ],
    ids=["all", "pods-star", "star-eviction", "pods-only", "same-ns", "other-ns", "named", "other-name"],
)
def test_rbac_matching(grant: Grant, allowed: bool) -> None:
    (eviction,) = parse_audit_events([ALL_USED[-1]])
    assert grant.allows(eviction) is allowed
