"""pytest plugin: the real Kubernetes test control plane as fixtures.

Register it once, from the root conftest: ``pytest_plugins = ["tests.support.kubecluster"]``.

Fixtures:
    kube_testbin   (session)  the binaries in testbin/; fails, naming what to run or install, when
                              they are missing or stale (never skips)
    kube_cluster   (session)  a started :class:`~tests.support.cluster.KubeCluster`, with an
                              API audit log (``kube_cluster.audit_log``); set
                              TESTS_KUBE_CLUSTER=.cluster/state.json to use the one
                              ``make cluster`` runs instead of starting another
    kube           (function) a :class:`KubeTestEnv`: a fresh namespace, an admin client, and node
                              helpers that delete at teardown the nodes the test made
    kube_namespace (function) ``kube.namespace``
    kube_nodes     (function) ``kube.create_nodes``
    real_node      (session)  a :class:`~tests.support.realnode.RealNode` (kubelet + containerd +
                              runc) joined to ``kube_cluster`` beside its kwok nodes; with
                              TESTS_KUBE_CLUSTER, the one ``make cluster REAL_NODES=1`` runs

Also wait helpers for tests (poll with a deadline; never sleep): :func:`wait_for_pods`,
:func:`wait_for_deployment`, :func:`wait_for_pdb`, and :func:`api_status`.

Owns no process itself: :mod:`tests.support.cluster` starts and stops them.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from tests.support.cluster import (
    DEFAULT_ZONES,
    ClusterError,
    FakeNode,
    KubeCluster,
    Testbin,
    TestbinMissing,
    wait_for,
)
from tests.support.realnode import RealNode

__all__ = [
    "KubeTestEnv",
    "api_status",
    "wait_for_deployment",
    "wait_for_pdb",
    "wait_for_pods",
]

ATTACH_ENV = "TESTS_KUBE_CLUSTER"
REAL_NODE_STATE = "realnode.json"  # beside the attached cluster's state.json


@pytest.fixture(scope="session")
def kube_testbin() -> Testbin:
    if os.environ.get(ATTACH_ENV):
        return Testbin.locate(check_pins=False)
    try:
        return Testbin.locate()
    except TestbinMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def kube_cluster(kube_testbin: Testbin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    attach = os.environ.get(ATTACH_ENV)
    if attach:
        yield KubeCluster.attach(Path(attach))
        return
    # Audited: tests.support.rbac accounts for the rights an identity used from the audit log.
    cluster = KubeCluster(tmp_path_factory.mktemp("kube"), testbin=kube_testbin, audit=True)
    try:
        cluster.start()
    except ClusterError as exc:  # start() already stopped whatever had started
        pytest.fail(f"the test control plane did not start: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def real_node(kube_cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    attach = os.environ.get(ATTACH_ENV)
    if attach:
        state = Path(attach).parent / REAL_NODE_STATE
        if not state.exists():
            pytest.fail(f"{ATTACH_ENV} names a cluster without a real node: `make cluster REAL_NODES=1`")
        yield RealNode.attach(kube_cluster, state)
        return
    node = RealNode(kube_cluster, tmp_path_factory.mktemp("realnode", numbered=True))
    try:
        node.start()
    except ClusterError as exc:  # start() already stopped whatever had started
        pytest.fail(f"the real node did not start: {exc}", pytrace=False)
    try:
        yield node
    finally:
        node.stop()


@dataclass
class KubeTestEnv:
    """One test's share of the session cluster: its namespace and the nodes it made."""

    cluster: KubeCluster
    namespace: str
    api: Any  # kubernetes.client.ApiClient, admin
    nodes: list[str] = field(default_factory=list)

    @property
    def core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api)

    @property
    def policy(self) -> k8s.PolicyV1Api:
        return k8s.PolicyV1Api(self.api)

    @property
    def coordination(self) -> k8s.CoordinationV1Api:
        return k8s.CoordinationV1Api(self.api)

    @property
    def rbac(self) -> k8s.RbacAuthorizationV1Api:
        return k8s.RbacAuthorizationV1Api(self.api)

    def create_nodes(
        self,
        count: int,
        *,
        prefix: str | None = None,
        labels: Mapping[str, str] | None = None,
        zones: Sequence[str] = DEFAULT_ZONES,
        wait: bool = True,
    ) -> list[FakeNode]:
        """:meth:`KubeCluster.create_nodes`, deleted again when the test ends. The default prefix
        is unique to the test (nodes are cluster-wide; the namespace is not a boundary for them)."""
        made = self.cluster.create_nodes(
            count,
            prefix=prefix or f"{self.namespace}-node",
            labels=labels,
            zones=zones,
            wait=False,
        )
        self.nodes.extend(n.name for n in made)
        if wait:
            self.cluster.wait_nodes_ready([n.name for n in made], True)
        return made

    def set_node_ready(self, name: str, ready: bool, *, wait: bool = True) -> None:
        """:meth:`KubeCluster.set_node_ready`: Ready=False/True reported by a live kubelet."""
        self.cluster.set_node_ready(name, ready, wait=wait)

    def set_kubelet_running(self, name: str, running: bool, *, wait: bool = True) -> None:
        """:meth:`KubeCluster.set_kubelet_running`: a silent node (Ready=Unknown), and back."""
        self.cluster.set_kubelet_running(name, running, wait=wait)

    def delete_node(self, name: str) -> None:
        self.cluster.delete_node(name)
        if name in self.nodes:
            self.nodes.remove(name)

    def service_account(self, name: str, *, token: bool = False) -> Any:
        """Create ServiceAccount ``name`` in the test namespace; return an ApiClient acting as it
        (impersonation, or a real TokenRequest token with ``token=True``)."""
        self.core.create_namespaced_service_account(self.namespace, {"metadata": {"name": name}})
        return self.cluster.service_account_client(self.namespace, name, token=token)

    def cleanup(self) -> None:
        for name in list(self.nodes):
            self.cluster.delete_node(name, wait=False)
        self.nodes.clear()
        try:
            # Not waited for: the namespace controller and kwok finish it in the background.
            self.core.delete_namespace(self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise


def _namespace_for(request: pytest.FixtureRequest) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


@pytest.fixture
def kube(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[KubeTestEnv]:
    namespace = _namespace_for(request)
    api = kube_cluster.api_client()
    env = KubeTestEnv(cluster=kube_cluster, namespace=namespace, api=api)
    env.core.create_namespace({"metadata": {"name": namespace}})
    try:
        # The ServiceAccount admission plugin refuses pods until the "default" account exists.
        wait_for(
            lambda: env.core.read_namespaced_service_account("default", namespace),
            timeout=30,
            what=f"ServiceAccount {namespace}/default",
            ignore=(ApiException,),
        )
        yield env
    finally:
        env.cleanup()
        api.close()


@pytest.fixture
def kube_namespace(kube: KubeTestEnv) -> str:
    return kube.namespace


@pytest.fixture
def kube_nodes(kube: KubeTestEnv) -> Any:
    return kube.create_nodes


# --------------------------------------------------------------------------------------------
# Wait helpers


def api_status(exc: BaseException) -> int | None:
    """The HTTP status of a kubernetes client error (None for anything else)."""
    return exc.status if isinstance(exc, ApiException) else None


def _pod_ready(pod: Any) -> bool:
    if pod.metadata.deletion_timestamp is not None or pod.status.phase != "Running":
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or ())


def wait_for_pods(
    api: Any,
    namespace: str,
    selector: str,
    *,
    count: int,
    ready: bool = True,
    timeout: float = 60.0,
) -> list[Any]:
    """Wait until exactly ``count`` pods match ``selector`` (not terminating) and, with ``ready``,
    all are Running and Ready; return them."""
    core = k8s.CoreV1Api(api)

    def check() -> list[Any] | None:
        pods = [
            p
            for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if p.metadata.deletion_timestamp is None
        ]
        if len(pods) != count or (ready and not all(_pod_ready(p) for p in pods)):
            return None
        return pods

    return wait_for(check, timeout=timeout, what=f"{count} ready pods {selector!r} in {namespace}")


def wait_for_deployment(api: Any, namespace: str, name: str, *, timeout: float = 60.0) -> Any:
    """Wait until Deployment ``name`` has all its replicas updated and available."""
    apps = k8s.AppsV1Api(api)

    def check() -> Any:
        d = apps.read_namespaced_deployment(name, namespace)
        want = d.spec.replicas if d.spec.replicas is not None else 1
        s = d.status
        done = (
            (s.observed_generation or 0) >= d.metadata.generation
            and (s.updated_replicas or 0) == want
            and (s.available_replicas or 0) == want
            and (s.replicas or 0) == want
        )
        return d if done else None

    return wait_for(check, timeout=timeout, what=f"Deployment {namespace}/{name} available")


def wait_for_pdb(
    api: Any,
    namespace: str,
    name: str,
    *,
    disruptions_allowed: int,
    timeout: float = 60.0,
) -> Any:
    """Wait until PodDisruptionBudget ``name`` is observed and allows ``disruptions_allowed``."""
    policy = k8s.PolicyV1Api(api)

    def check() -> Any:
        pdb = policy.read_namespaced_pod_disruption_budget(name, namespace)
        s = pdb.status
        if s is None or (s.observed_generation or 0) < pdb.metadata.generation:
            return None
        return pdb if s.disruptions_allowed == disruptions_allowed else None

    return wait_for(
        check,
        timeout=timeout,
        what=f"PDB {namespace}/{name} disruptionsAllowed={disruptions_allowed}",
    )
