"""Simulated reboots of kwok nodes: what happens to the Node object while its host reboots.

Going down, the Node turns NotReady; coming back, its kubelet reports the new boot ID in
``status.nodeInfo.bootID`` and the Node turns Ready. kwok plays the kubelet; how a node is taken
down depends on the kwok stages in use. The defaults match the stages of this repository's test
control plane (``tests/support/kwok_stages.yaml``, which ``make cluster`` runs): an annotation
makes kwok report NotReady until it is removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rebootcoord.adapters.kube.api import Kube, path_segment

NOT_READY_ANNOTATION = "kwok.rebootcoord.test/not-ready"


@dataclass
class KwokRebootHooks:
    kube: Kube
    not_ready_annotation: str = NOT_READY_ANNOTATION

    def down(self, node: str) -> None:
        self.kube.merge_patch(
            f"/api/v1/nodes/{path_segment(node)}",
            {"metadata": {"annotations": {self.not_ready_annotation: "true"}}},
        )

    def up(self, node: str, boot_id: str) -> None:
        path = f"/api/v1/nodes/{path_segment(node)}"
        self.kube.merge_patch(path + "/status", {"status": {"nodeInfo": {"bootID": boot_id}}})
        self.kube.merge_patch(path, {"metadata": {"annotations": {self.not_ready_annotation: None}}})


def kwok_nodes(kube: Kube, selector: str, count: int) -> list[str]:
    """The first ``count`` Nodes matching ``selector``, by name."""
    doc: Any = kube.list_objects("/api/v1/nodes", labelSelector=selector or None)
    names = sorted(n["metadata"]["name"] for n in doc.get("items") or [])
    if len(names) < count:
        raise ValueError(f"{len(names)} Nodes match {selector!r}, {count} wanted")
    return names[:count]
