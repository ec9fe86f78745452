"""Which pods a drain evicts, and which make it refuse, as kubectl drain decides."""

from __future__ import annotations

from typing import Any

import pytest

from rebootcoord.adapters.kube.nodes import DrainOptions, plan_drain


def pod(name: str, *, owner: str | None = "ReplicaSet", emptydir: bool = False, mirror: bool = False,
        phase: str = "Running", deleting: bool = False) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": name}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "x", "controller": True}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    volumes = [{"name": "scratch", "emptyDir": {}}] if emptydir else []
    return {"metadata": meta, "spec": {"volumes": volumes}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("the_pod", "options", "outcome"),
    [
        (pod("web"), DrainOptions(), "evict"),
        (pod("ds", owner="DaemonSet"), DrainOptions(), "skip"),
        (pod("static", owner="Node", mirror=True), DrainOptions(), "skip"),
        (pod("bare", owner=None), DrainOptions(), "refuse"),
        (pod("bare", owner=None), DrainOptions(force=True), "evict"),
        (pod("cache", emptydir=True), DrainOptions(), "refuse"),
        (pod("cache", emptydir=True), DrainOptions(delete_emptydir_data=True), "evict"),
        (pod("done", owner=None, phase="Succeeded"), DrainOptions(), "evict"),
        (pod("leaving", owner=None, deleting=True), DrainOptions(), "evict"),
    ],
    ids=[
        "replicated",
        "daemonset",
        "mirror",
        "unreplicated",
        "unreplicated-forced",
        "emptydir",
        "emptydir-allowed",
        "finished",
        "terminating",
    ],
)
def test_plan(the_pod: dict[str, Any], options: DrainOptions, outcome: str) -> None:
    evict, refused = plan_drain([the_pod], options)
    assert {"evict": (1, 0), "skip": (0, 0), "refuse": (0, 1)}[outcome] == (len(evict), len(refused))
    if outcome == "refuse":
        assert "ns/" in refused[0] and "set drain_" in refused[0]
