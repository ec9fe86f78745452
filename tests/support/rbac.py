"""The Helm chart's identity on the test cluster, and an account of the rights it used.

Proves two things against the real API server: the chart's RBAC is *enough* (no request of the
agent is denied) and *no more* (every granted verb on every resource is used).

1. :func:`chart_identity` renders ``charts/rebootcoord`` (``helm template``), applies its
   ServiceAccount, Role, ClusterRole and bindings, and writes a kubeconfig holding a real token of
   that ServiceAccount (TokenRequest API). Agent processes given that kubeconfig (config key
   ``kubeconfig``) are authorized by the chart's own rules and nothing else::

       with chart_identity(kube.cluster, kube.namespace) as ident:
           run_agents(kubeconfig=ident.kubeconfig_path, namespace=ident.namespace)
           assert ident.denied_requests() == []
           assert ident.unused_grants() == []

2. The cluster's audit log (``KubeCluster(audit=True)``, which the ``kube_cluster`` fixture
   turns on) records each request's user, verb, resource and authorization decision.
   :func:`read_audit_log` turns it into :class:`Request` values; :func:`unused_grants` and
   :func:`denied_requests` compare them with the :class:`Grant` values that the chart's rules
   expand to. Both also work on synthetic events (plain dicts in the audit.k8s.io/v1 format).

The audit log is written by each request's goroutine as the request ends, so a test that just made
its calls first lets it settle: :meth:`ChartIdentity.requests` does (it waits for a marker request
of its own to appear in the log).
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import REPO_ROOT, KubeCluster, wait_for

__all__ = [
    "CHART",
    "RBAC_KINDS",
    "ChartIdentity",
    "Grant",
    "Request",
    "apply_objects",
    "chart_identity",
    "denied_requests",
    "grants_from",
    "identities",
    "parse_audit_events",
    "rbac_objects",
    "read_audit_log",
    "render_chart",
    "unused_grants",
    "used_grants",
]

CHART = REPO_ROOT / "charts" / "rebootcoord"
KUBE_VERSION = "1.36.3"
RBAC_KINDS = ("ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")
_STAGE_ORDER = {"RequestReceived": 0, "ResponseStarted": 1, "ResponseComplete": 2, "Panic": 3}


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True)
class Grant:
    """One verb on one resource, granted by a Role or ClusterRole through a binding.

    ``resource`` includes the subresource (``pods/eviction``); ``namespace`` is None for a
    ClusterRole bound cluster-wide. ``"*"`` in a field matches anything, as in RBAC.
    """

    api_group: str
    resource: str
    verb: str
    namespace: str | None = None
    resource_names: frozenset[str] = frozenset()
    source: str = field(default="", compare=False)  # e.g. "ClusterRole/rebootcoord"

    def allows(self, request: Request) -> bool:
        """Whether this grant covers ``request`` (an RBAC rule's matching, for one verb)."""
        if request.resource is None:
            return False  # non-resource URLs (/version, /apis): not what the chart grants
        if self.verb not in ("*", request.verb):
            return False
        if self.api_group not in ("*", request.api_group):
            return False
        if not _resource_matches(self.resource, request.resource):
            return False
        if self.namespace is not None and request.namespace != self.namespace:
            return False
        return not self.resource_names or (request.name or "") in self.resource_names

    def sort_key(self) -> tuple[str, str, str, str, tuple[str, ...]]:
        return (
            self.namespace or "",
            self.api_group,
            self.resource,
            self.verb,
            tuple(sorted(self.resource_names)),
        )

    def __str__(self) -> str:
        group = self.api_group or "core"
        where = f"in {self.namespace}" if self.namespace is not None else "cluster-wide"
        names = f" {sorted(self.resource_names)}" if self.resource_names else ""
        return f"{self.verb} {group}/{self.resource}{names} {where} ({self.source})"


def _resource_matches(granted: str, requested: str) -> bool:
    if granted in ("*", requested):
        return True
    base, _, sub = granted.partition("/")
    req_base, _, req_sub = requested.partition("/")
    return (base == "*" and sub == req_sub) or (sub == "*" and base == req_base and bool(req_sub))


@dataclass(frozen=True)
class Request:
    """One API request as the audit log records it."""

    user: str  # the effective user: the impersonated one when impersonating
    verb: str
    api_group: str
    resource: str | None  # "pods/eviction" for a subresource; None for a non-resource URL
    namespace: str | None
    name: str | None
    code: int | None  # the response's HTTP status (None while a watch is still open)
    decision: str | None  # "allow" / "forbid": the authorizer's answer
    uri: str = ""
    audit_id: str = ""

    @property
    def denied(self) -> bool:
        """Refused by authorization (not by admission or a missing object)."""
        if self.decision is not None:
            return self.decision != "allow"
        return self.code == 403

    def __str__(self) -> str:
        group = self.api_group or "core"
        target = f"{group}/{self.resource}" if self.resource else self.uri
        where = f" in {self.namespace}" if self.namespace else ""
        name = f" {self.name}" if self.name else ""
        return f"{self.verb} {target}{name}{where} -> {self.code} ({self.decision}) by {self.user}"


def parse_audit_events(events: Iterable[Mapping[str, Any] | Request]) -> list[Request]:
    """audit.k8s.io/v1 events (dicts) -> one :class:`Request` per auditID, at its latest stage.

    :class:`Request` values pass through unchanged.
    """
    latest: dict[str, tuple[int, Request]] = {}
    out: list[Request] = []
    for event in events:
        if isinstance(event, Request):
            out.append(event)
            continue
        request = _request(event)
        stage = _STAGE_ORDER.get(str(event.get("stage", "")), 0)
        key = request.audit_id or f"#{len(latest)}"
        if key not in latest or stage >= latest[key][0]:
            latest[key] = (stage, request)
    out.extend(r for _, r in latest.values())
    return out


def _request(event: Mapping[str, Any]) -> Request:
    impersonated = event.get("impersonatedUser") or {}
    user = impersonated.get("username") or (event.get("user") or {}).get("username", "")
    ref = event.get("objectRef") or None
    status = event.get("responseStatus") or {}
    annotations = event.get("annotations") or {}
    resource = None
    if ref is not None and ref.get("resource"):
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    return Request(
        user=user,
        verb=str(event.get("verb", "")),
        api_group=(ref or {}).get("apiGroup", "") or "",
        resource=resource,
        namespace=(ref or {}).get("namespace") or None,
        name=(ref or {}).get("name") or None,
        code=status.get("code"),
        decision=annotations.get("authorization.k8s.io/decision"),
        uri=str(event.get("requestURI", "")),
        audit_id=str(event.get("auditID", "")),
    )


def read_audit_log(path: Path, *, user: str | None = None) -> list[Request]:
    """The requests in an API server audit log (JSON lines), optionally only those of ``user``.

    Lines are filtered on the raw text before parsing, so reading a long log for one user is quick.
    """
    events = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if user is not None and f'"{user}"' not in line:
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line still being written
    requests = parse_audit_events(events)
    return [r for r in requests if user is None or r.user == user]


def _of(audit_events: Iterable[Mapping[str, Any] | Request], user: str | None) -> list[Request]:
    return [r for r in parse_audit_events(audit_events) if user is None or r.user == user]


def used_grants(
    rules: Iterable[Grant], audit_events: Iterable[Mapping[str, Any] | Request], *, user: str | None = None
) -> dict[Grant, list[Request]]:
    """Each grant and the allowed requests (of ``user``, if given) that it covers."""
    allowed = [r for r in _of(audit_events, user) if not r.denied]
    return {g: [r for r in allowed if g.allows(r)] for g in rules}


def unused_grants(
    rules: Iterable[Grant], audit_events: Iterable[Mapping[str, Any] | Request], *, user: str | None = None
) -> list[Grant]:
    """The grants that no allowed request (of ``user``, if given) used: rights to take away."""
    unused = [g for g, used in used_grants(rules, audit_events, user=user).items() if not used]
    return sorted(unused, key=Grant.sort_key)


def denied_requests(
    audit_events: Iterable[Mapping[str, Any] | Request], *, user: str | None = None
) -> list[Request]:
    """The requests (of ``user``, if given) that authorization refused: rights that are missing."""
    return [r for r in _of(audit_events, user) if r.denied]


# --------------------------------------------------------------------------------------------
# The chart


def render_chart(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "rebootcoord",
    namespace: str = "rebootcoord",
    helm: Path | str | None = None,
    chart: Path = CHART,
    extra_args: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``values`` (a values file's content); the objects."""
    helm = str(helm or REPO_ROOT / "testbin" / "helm")
    argv = [helm, "template", release, str(chart), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    proc = subprocess.run(
        [*argv, "--values", "-", *extra_args],
        input=yaml.safe_dump(dict(values or {})),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"helm template failed: {proc.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def rbac_objects(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ServiceAccount, Roles, ClusterRoles and bindings among rendered objects."""
    return [dict(o) for o in objects if o.get("kind") in RBAC_KINDS]


def grants_from(
    objects: Iterable[Mapping[str, Any]], *, subject: tuple[str, str] | None = None
) -> list[Grant]:
    """The grants that bindings among ``objects`` give to ServiceAccount ``subject`` (namespace,
    name), or to any ServiceAccount subject when None: one :class:`Grant` per verb x group x
    resource of each bound rule, scoped to the binding's namespace (cluster-wide for a
    ClusterRoleBinding)."""
    objects = list(objects)
    roles = {
        (o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
        for o in objects
        if o.get("kind") in ("Role", "ClusterRole")
    }
    grants: set[Grant] = set()
    for binding in objects:
        if binding.get("kind") not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {
            (s.get("namespace"), s["name"])
            for s in binding.get("subjects") or ()
            if s.get("kind") == "ServiceAccount"
        }
        if not subjects or (subject is not None and subject not in subjects):
            continue
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        ref = binding["roleRef"]
        role = roles.get((ref["kind"], scope if ref["kind"] == "Role" else None, ref["name"]))
        if role is None:
            raise ValueError(f"{binding['kind']} {binding['metadata']['name']} refers to a missing {ref}")
        source = f"{role['kind']}/{role['metadata']['name']}"
        for rule in role.get("rules") or ():
            names = frozenset(rule.get("resourceNames") or ())
            for group in rule.get("apiGroups") or ():
                for resource in rule.get("resources") or ():
                    for verb in rule.get("verbs") or ():
                        grants.add(Grant(group, resource, verb, scope, names, source))
    return sorted(grants, key=Grant.sort_key)


def apply_objects(cluster: KubeCluster, objects: Iterable[Mapping[str, Any]]) -> str:
    """``kubectl apply`` the objects as admin; kubectl's output."""
    text = yaml.safe_dump_all([dict(o) for o in objects])
    return cluster.kubectl("apply", "-f", "-", input=text)


# --------------------------------------------------------------------------------------------
# The identity


@dataclass
class ChartIdentity:
    """The chart's ServiceAccount on the test cluster, with the chart's rules and a kubeconfig.

    A context manager: leaving it deletes the cluster-scoped objects it applied (the namespaced
    ones go with the test's namespace).
    """

    cluster: KubeCluster
    namespace: str  # the release namespace: the ServiceAccount's, the Leases' and the events'
    release: str
    service_account: str
    kubeconfig_path: Path  # a real TokenRequest token of the ServiceAccount; context namespace set
    rules: tuple[Grant, ...]  # what the chart's bindings grant to it, one verb per Grant
    objects: tuple[dict[str, Any], ...]  # the RBAC objects applied
    token: str = field(repr=False, default="")

    @property
    def username(self) -> str:
        """``system:serviceaccount:NAMESPACE:NAME``, as the API server and the audit log say."""
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` authenticated with the ServiceAccount's token."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig_path))

    def impersonating_client(self) -> Any:
        """An admin ``ApiClient`` impersonating the ServiceAccount (in-process use only: the
        Python client ignores a kubeconfig's ``as:``, so an impersonating kubeconfig would let
        an agent process act as admin; agents get :attr:`kubeconfig_path`, a real token)."""
        return self.cluster.service_account_client(self.namespace, self.service_account)

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """testbin's kubectl with the ServiceAccount's kubeconfig."""
        proc = subprocess.run(
            [str(self.cluster.testbin.path("kubectl")), f"--kubeconfig={self.kubeconfig_path}", *args],
            capture_output=True,
            text=True,
            input=input,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} as {self.username} failed: {proc.stderr.strip()}")
        return proc

    def requests(self, *, settle: bool = True, timeout: float = 15.0) -> list[Request]:
        """This identity's requests in the audit log. With ``settle``, first waits until a marker
        request made now has been logged, so that requests that returned before this call are in."""
        log = self.cluster.audit_log
        if log is None:
            raise RuntimeError("the cluster keeps no audit log: start it with KubeCluster(audit=True)")
        if settle:
            marker = f"audit-marker-{uuid.uuid4().hex[:12]}"
            self.cluster.kubectl("get", "configmap", marker, "-n", self.namespace, "--ignore-not-found")
            wait_for(
                lambda: marker in log.read_text(encoding="utf-8", errors="replace"),
                timeout=timeout,
                what=f"the audit log to record {marker}",
            )
        return read_audit_log(log, user=self.username)

    def unused_grants(self, requests: Iterable[Request] | None = None) -> list[Grant]:
        """The chart's grants that none of this identity's allowed requests used."""
        return unused_grants(
            self.rules, self.requests() if requests is None else requests, user=self.username
        )

    def denied_requests(self, requests: Iterable[Request] | None = None) -> list[Request]:
        """This identity's requests that authorization refused."""
        return denied_requests(self.requests() if requests is None else requests, user=self.username)

    def delete(self) -> None:
        """Delete what it applied outside its namespace: the ClusterRole, the ClusterRoleBinding
        and the events Role in "default" (the rest goes with the namespace)."""
        for obj in self.objects:
            where = obj["metadata"].get("namespace")
            if where == self.namespace:
                continue
            self.cluster.kubectl(
                "delete",
                obj["kind"].lower(),
                obj["metadata"]["name"],
                *(["-n", where] if where else []),
                "--ignore-not-found",
                "--wait=false",
            )

    def __enter__(self) -> ChartIdentity:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


def _component(obj: Mapping[str, Any]) -> str | None:
    return (obj["metadata"].get("labels") or {}).get("app.kubernetes.io/component")


def _fullname_for(namespace: str) -> str:
    # Cluster-scoped names (ClusterRole, ClusterRoleBinding) must not collide between tests that
    # share the session cluster: derive them from the test's namespace.
    return re.sub(r"-+$", "", f"rebootcoord-{namespace}"[:63])


def chart_identity(
    cluster: KubeCluster,
    namespace: str,
    *,
    values: Mapping[str, Any] | None = None,
    release: str = "rebootcoord",
    token_seconds: int = 4 * 3600,
    kubeconfig_dir: Path | None = None,
    component: str | None = None,
) -> ChartIdentity:
    """Render the chart for ``namespace`` (with ``values``), apply its RBAC objects to
    ``cluster``, and return the :class:`ChartIdentity` of its ServiceAccount.

    ``namespace`` must exist (the ``kube`` fixture's). Unless ``values`` set ``fullnameOverride``,
    the objects are named ``rebootcoord-<namespace>`` so that cluster-scoped ones are unique.
    The kubeconfig is written to ``kubeconfig_dir`` (default: the cluster's workdir) and holds a
    token valid ``token_seconds``. ``component``: the identity of the ServiceAccount labelled
    ``app.kubernetes.io/component=<component>`` (``fleetlock-server``: the FleetLock server's);
    None: the agents' (the one without that label).
    """
    values = dict(values or {})
    values.setdefault("fullnameOverride", _fullname_for(namespace))
    objects = rbac_objects(render_chart(values, release=release, namespace=namespace))
    accounts = [o for o in objects if o["kind"] == "ServiceAccount" and _component(o) == component]
    if len(accounts) != 1:
        raise RuntimeError(
            f"the chart rendered {len(accounts)} ServiceAccounts of {component or 'the agents'}"
        )
    sa = accounts[0]["metadata"]["name"]
    apply_objects(cluster, objects)
    token = cluster.service_account_token(namespace, sa, seconds=token_seconds)
    directory = kubeconfig_dir or cluster.workdir / "identities"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{namespace}-{sa}.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "test",
                        "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)},
                    }
                ],
                "users": [{"name": sa, "user": {"token": token}}],
                "contexts": [
                    {"name": sa, "context": {"cluster": "test", "user": sa, "namespace": namespace}}
                ],
                "current-context": sa,
            }
        )
    )
    path.chmod(0o600)
    return ChartIdentity(
        cluster=cluster,
        namespace=namespace,
        release=release,
        service_account=sa,
        kubeconfig_path=path,
        rules=tuple(grants_from(objects, subject=(namespace, sa))),
        objects=tuple(objects),
        token=token,
    )


def identities(cluster: KubeCluster, namespace: str, **kwargs: Any) -> Iterator[ChartIdentity]:
    """A generator for fixtures: yields :func:`chart_identity`'s result, then deletes it."""
    ident = chart_identity(cluster, namespace, **kwargs)
    try:
        yield ident
    finally:
        ident.delete()
