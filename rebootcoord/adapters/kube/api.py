"""A small JSON client for the Kubernetes API, on top of the ``kubernetes`` package's
configuration loading (kubeconfig, in-cluster service account with token refresh) and HTTP pool.

Why not the generated API classes: they validate every body with pydantic and turn every object
into a model, which costs memory and CPU in an agent that runs on every node, and they serialize
MicroTime fields without the fixed six digits the API server expects. Here bodies are dicts.

Errors are translated once, in ``request``: 409 -> Conflict, transport errors, 429 and 5xx ->
BackendUnavailable (retried with backoff), anything else -> ApiError with the server's message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import urllib3

from rebootcoord.adapters.retry import retrying as retrying_for
from rebootcoord.errors import ApiError, BackendUnavailable, ConfigError, Conflict, Problem

log = logging.getLogger(__name__)
T = TypeVar("T")

SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class NotFound(ApiError):
    pass


class TooManyRequests(ApiError):
    """429: for an eviction, a PodDisruptionBudget says not now."""


@dataclass(frozen=True)
class KubeOptions:
    kubeconfig: str | None = None
    context: str | None = None
    timeout: float = 30.0
    retry_for: float = 30.0
    user_agent: str = ""  # e.g. "rebootcoord/0.1.0 (agent; node-a)": audit logs tell agents apart
    stop: threading.Event | None = field(default=None, compare=False)  # set: back-offs end at once


def micro_time(when: float) -> str:
    """A MicroTime as the API server parses it: RFC 3339 with exactly six fractional digits."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_pods(kube: Kube, node: str, label_selector: str = "") -> list[dict[str, Any]]:
    """The pods bound to ``node`` (optionally only those matching ``label_selector``)."""
    doc = kube.list_objects(
        "/api/v1/pods", fieldSelector=f"spec.nodeName={node}", labelSelector=label_selector or None
    )
    return list(doc.get("items") or [])


ZONE_LABEL = "topology.kubernetes.io/zone"


def node_zone(kube: Kube, node: str) -> str:
    """The Node's zone label, read once at start ("" without one, or without the Node)."""
    try:
        found = kube.get(f"/api/v1/nodes/{path_segment(node)}")
    except NotFound:
        return ""
    except BackendUnavailable as exc:
        log.warning("cannot read the zone of Node %s: %s (max_holders_per_zone counts it in none)", node, exc)
        return ""
    return str(((found.get("metadata") or {}).get("labels") or {}).get(ZONE_LABEL, ""))


def pod_name(pod: dict[str, Any]) -> str:
    """``namespace/name``, as kubectl prints it."""
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def pod_finished(pod: dict[str, Any]) -> bool:
    """Its containers have terminated for good (phase Succeeded or Failed)."""
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def default_namespace() -> str:
    """The namespace to work in when none is configured: the pod's, else "default"."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SA_NAMESPACE_FILE, encoding="utf-8") as fh:
            return fh.read().strip() or "default"
    except OSError:
        return "default"


def load_api_client(options: KubeOptions) -> Any:
    """An ApiClient like kubectl would build: explicit kubeconfig, else in-cluster, else ~/.kube/config."""
    from kubernetes import client, config

    try:
        if options.kubeconfig:
            return config.new_client_from_config(config_file=options.kubeconfig, context=options.context)
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not options.context:
            config.load_incluster_config()
            return client.ApiClient()
        return config.new_client_from_config(context=options.context)
    except (config.ConfigException, OSError, ValueError) as exc:
        # Where the cluster is, is configuration: a usage error, not an outage (exit code 2).
        key, value = (
            ("kube_context", options.context) if options.context else ("kubeconfig", options.kubeconfig)
        )
        raise ConfigError([Problem(key, value, f"a usable Kubernetes configuration ({exc})")]) from exc


class Kube:
    """JSON requests to one API server. Thread-safe (urllib3's pool)."""

    def __init__(self, api_client: Any, options: KubeOptions | None = None) -> None:
        self.api_client = api_client
        self.options = options or KubeOptions()
        self.requests: Counter[str] = Counter()  # by verb, for metrics and benchmarks
        self._lock = threading.Lock()
        self.on_request: Callable[[str], None] | None = None

    @classmethod
    def connect(cls, options: KubeOptions) -> Kube:
        api_client = load_api_client(options)
        if options.user_agent:
            api_client.user_agent = options.user_agent
        return cls(api_client, options)

    def _count(self, verb: str) -> None:
        with self._lock:
            self.requests[verb] += 1
        if self.on_request is not None:
            self.on_request(verb)

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        """One request, no retry. Returns the decoded JSON body."""
        verb = method.lower()
        self._count(verb)
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        try:
            serialized = self.api_client.param_serialize(
                method=method,
                resource_path=path,
                query_params=params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(
                *serialized[:4], _request_timeout=timeout or self.options.timeout
            )
            data = response.read()
            status = int(response.status)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"Kubernetes API: {exc.__class__.__name__}: {exc}") from exc
        except Exception as exc:
            # The kubernetes package raises its own ApiException for transport-level trouble.
            if exc.__class__.__name__ in ("ApiException", "ApiValueError"):
                raise BackendUnavailable(f"Kubernetes API: {exc}") from exc
            raise
        if status < 400:
            return json.loads(data) if data else None
        message, reason = _status_message(data)
        if status == 409:
            raise Conflict(f"{method} {path}: {message}")
        if status == 404:
            raise NotFound(status, reason or "NotFound", message)
        if status == 429:
            raise TooManyRequests(status, reason or "TooManyRequests", message)
        if status >= 500:
            raise BackendUnavailable(f"Kubernetes API {status} on {method} {path}: {message}")
        raise ApiError(status, reason, f"{method} {path}: {message}")

    def call(self, fn: Callable[[], T], *, retry_for: float | None = None) -> T:
        """Run ``fn`` retrying BackendUnavailable with jittered backoff (tenacity)."""
        retrying = retrying_for(
            self.options.retry_for if retry_for is None else retry_for,
            first_wait=0.1,
            max_wait=3.0,
            stop=self.options.stop,
        )
        for attempt in retrying:
            with attempt:
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover

    # convenience ---------------------------------------------------------------------------

    def get(self, path: str, **query: Any) -> Any:
        return self.call(lambda: self.request("GET", path, query=query))

    def list_objects(self, path: str, **query: Any) -> Any:
        return self.call(lambda: self.request("GET", path, query=query))

    def create(self, path: str, body: dict[str, Any]) -> Any:
        return self.call(lambda: self.request("POST", path, body=body))

    def replace(self, path: str, body: dict[str, Any]) -> Any:
        return self.call(lambda: self.request("PUT", path, body=body))

    def merge_patch(self, path: str, body: dict[str, Any]) -> Any:
        return self.call(
            lambda: self.request("PATCH", path, body=body, content_type="application/merge-patch+json")
        )

    def json_patch(self, path: str, ops: list[dict[str, Any]]) -> Any:
        return self.call(
            lambda: self.request("PATCH", path, body=ops, content_type="application/json-patch+json")
        )

    def delete(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call(lambda: self.request("DELETE", path, body=body))

    def watch(
        self,
        path: str,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
        on_open: Callable[[Any], None] | None = None,
        **query: Any,
    ) -> Iterator[dict[str, Any]]:
        """Stream watch events (dicts with type and object) until the server ends the watch.
        ``on_open`` gets the open response: its ``shutdown()`` ends the watch from another thread."""
        self._count("watch")
        params = {
            **query,
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds,
        }
        try:
            serialized = self.api_client.param_serialize(
                method="GET",
                resource_path=path,
                query_params=[(k, v) for k, v in params.items() if v is not None],
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = self.api_client.call_api(
                *serialized[:4], _request_timeout=(self.options.timeout, timeout_seconds + 30)
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"Kubernetes watch: {exc}") from exc
        raw = response.response
        if on_open is not None:
            on_open(raw)
        try:
            if int(response.status) >= 400:
                message, _ = _status_message(raw.data)
                if int(response.status) == 410:
                    raise Gone(message)
                raise BackendUnavailable(f"Kubernetes watch {response.status}: {message}")
            buffer = b""
            for chunk in raw.stream(amt=None, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        event = json.loads(line)
                        if event.get("type") == "ERROR":
                            obj = event.get("object") or {}
                            if obj.get("code") == 410:
                                raise Gone(str(obj.get("message", "")))
                            raise BackendUnavailable(f"Kubernetes watch error: {obj.get('message')}")
                        yield event
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(f"Kubernetes watch interrupted: {exc}") from exc
        finally:
            raw.release_conn()


class Gone(BackendUnavailable):
    """410: the resourceVersion is too old; list again and watch from the new one."""


def _status_message(data: bytes | None) -> tuple[str, str]:
    try:
        doc = json.loads(data or b"{}")
        return str(doc.get("message", "")), str(doc.get("reason", ""))
    except ValueError:
        return (data or b"").decode(errors="replace")[:300], ""


def path_segment(name: str) -> str:
    return quote(name, safe="")
