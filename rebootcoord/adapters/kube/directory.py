"""Which Node a FleetLock client is, and the agent's node operations on it (the server's side).

Zincati sends the machine's app-specific id for its application id (systemd's
``sd_id128_get_machine_app_specific``); a Node reports the machine id in
``status.nodeInfo.machineID``. The directory lists the Nodes once, maps every Node's app-specific
id and machine id to the Node -- and its name only with ``by_name`` (fleetlock_ids_by_node_name):
a Node's name is no secret, so anyone who can reach the server could then cordon and drain any
Node -- and lists again only when an id is not found (at most every ``REFRESH`` seconds), so a
hundred clients polling cost one list, not a hundred.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rebootcoord.adapters.kube.api import ZONE_LABEL, Kube, NotFound, path_segment
from rebootcoord.adapters.kube.gates import PodsReady, is_ready
from rebootcoord.adapters.kube.nodes import ANN_CORDONED, DrainOptions, KubeNodeOps
from rebootcoord.core.fleetlock import app_specific_id
from rebootcoord.core.types import HolderId, NodeName
from rebootcoord.ports import CheckResult, NodeFacts, NodeOps

log = logging.getLogger(__name__)

REFRESH = 10.0  # seconds between two lists of the Nodes for an id not found


class KubeNodeDirectory:
    def __init__(
        self,
        kube: Kube,
        *,
        drain: DrainOptions | None = None,
        pods_ready: bool = False,
        by_name: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.drain = drain or DrainOptions()
        self.pods_ready = pods_ready
        self.by_name = by_name
        self.clock = clock
        self._ids: dict[str, NodeName] = {}
        self._listed_at = -REFRESH
        self._lock = threading.Lock()
        self.lists = 0  # Node lists made (the benchmark's requests per client)

    def find(self, client_id: HolderId) -> NodeName | None:
        with self._lock:
            node = self._ids.get(client_id.lower())
            if node is not None or self.clock() - self._listed_at < REFRESH:
                return node
            self._ids = self._map(self.kube.list_objects("/api/v1/nodes").get("items") or [])
            self._listed_at = self.clock()
            self.lists += 1
            return self._ids.get(client_id.lower())

    def _map(self, nodes: list[dict[str, Any]]) -> dict[str, NodeName]:
        ids: dict[str, NodeName] = {}
        for item in nodes:
            name = NodeName(item["metadata"]["name"])
            if self.by_name:
                ids[name.lower()] = name
            machine = str(((item.get("status") or {}).get("nodeInfo") or {}).get("machineID") or "")
            try:
                ids[app_specific_id(machine)] = name
                ids[machine.lower()] = name
            except ValueError:
                if machine:
                    log.debug("Node %s reports a machine id that is not 32 hex digits: %r", name, machine)
        return ids

    def node_ops(self, node: NodeName) -> NodeOps:
        return KubeNodeOps(self.kube, node, drain=self.drain)

    def _node(self, node: NodeName) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.kube.get(f"/api/v1/nodes/{path_segment(node)}")
        except NotFound:
            return None
        return found

    def facts(self, node: NodeName) -> NodeFacts:
        found = self._node(node) or {}
        meta, spec = found.get("metadata") or {}, found.get("spec") or {}
        return NodeFacts(
            boot_id=str(((found.get("status") or {}).get("nodeInfo") or {}).get("bootID") or ""),
            zone=str((meta.get("labels") or {}).get(ZONE_LABEL, "")),
            cordoned_by_us=bool(spec.get("unschedulable"))
            and (meta.get("annotations") or {}).get(ANN_CORDONED) == "true",
        )

    def verify(self, node: NodeName) -> tuple[CheckResult, ...]:
        found = self._node(node)
        if found is None:
            return (CheckResult(False, "node-ready", f"Node {node} does not exist"),)
        ready = is_ready((found.get("status") or {}).get("conditions"))
        results = [CheckResult(ready, "node-ready", "" if ready else f"Node {node} is not Ready")]
        if self.pods_ready:
            results.append(PodsReady(self.kube, node).check())
        return tuple(results)
