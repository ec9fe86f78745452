"""The real node leaves the machine as it found it: while it runs, the machine's sysctls are
untouched (the kubelet sees files in its namespace); after teardown, sysctls, mounts and cgroups
are as before and no process of it is left. Tried on the session's own node, which then starts
again for the tests after this one."""

from __future__ import annotations

import time

import pytest

from tests.support.realnode import KUBELET_SYSCTLS, HostState, RealNode, kill_leftovers

pytestmark = [pytest.mark.kube, pytest.mark.real_node, pytest.mark.timeout(600)]


def test_the_node_never_changes_the_machine(real_node: RealNode) -> None:
    if real_node.found is None:
        pytest.skip("attached to the node of `make cluster REAL_NODES=1`, which this test must not stop")
    found = real_node.found
    # Running: the kubelet reads the values it wants from its namespace; the machine keeps its own.
    inside = {name: real_node.host_path(f"/proc/sys/{name}").read_text().strip() for name in KUBELET_SYSCTLS}
    assert inside == KUBELET_SYSCTLS
    running = HostState.capture()
    assert running.sysctls == found.sysctls
    assert running.mounts == found.mounts, "the node's mounts stay in its namespace"
    assert running.cgroups > found.cgroups, "the kubelet made its kubepods cgroups"

    t0 = time.monotonic()
    real_node.stop()
    stopped = time.monotonic() - t0
    try:
        after = HostState.capture()
        assert after.sysctls == found.sysctls
        assert after.mounts == found.mounts
        assert after.cgroups == found.cgroups, sorted(after.cgroups ^ found.cgroups)[:10]
        assert kill_leftovers() == set(), "no container, shim, containerd or kubelet left"
        print(f"real node teardown: {stopped:.1f}s")
    finally:
        real_node.start()
