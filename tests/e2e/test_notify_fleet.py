"""One agent process of a simulated fleet on a real etcd notifies its cycle through apprise to a
receiver on loopback: the reboot's notice goes out although the reboot stops the agent (SIGTERM)
right after it; a receiver that hangs beside it does not hold up the cycle; the agent's log, at
debug level, holds no part of the URLs' secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from rebootcoord.sim.etcd_server import EtcdServer
from rebootcoord.sim.fleet import Fleet
from tests.conftest import wait_for
from tests.support.webhook import hanging, receiving

pytestmark = pytest.mark.e2e

PASSWORD = "pw-Hunter2xyz"
TOKEN = "T0kenInThePath"


def test_an_agent_process_notifies_drain_reboot_and_done_and_keeps_its_urls_out_of_its_log(
    etcd: EtcdServer, prefix: str, tmp_path: Path
) -> None:
    with receiving() as receiver, hanging() as stuck:
        fleet = Fleet(
            str(tmp_path / "run"),
            nodes=1,
            endpoint=etcd.endpoint,
            max_holders=1,
            reboot_seconds=0.5,
            agent_config={
                "etcd_key_prefix": prefix,
                "log_level": "debug",
                "notify_timeout": "2s",
                "notify_urls": [
                    f"json://127.0.0.1:{stuck.port}/stuck/{TOKEN}",
                    f"json://bot:{PASSWORD}@127.0.0.1:{receiver.port}/hooks/{TOKEN}",
                ],
                # The fleet fills {node}-style placeholders of its own: doubled, they reach the agent.
                "notify_templates": {"done": "{{node}} back in boot {{boot_id}}"},
            },
        )
        with fleet:
            wait_for(fleet.done, timeout=120, interval=0.2, what="the node's cycle")
            got = receiver.wait(3)
            [node] = fleet.nodes.values()
            log = Path(node.log_file).read_text(errors="replace")
    assert [g["data"]["title"] for g in got] == [
        f"rebootcoord: {node.name} drain",
        f"rebootcoord: {node.name} reboot",
        f"rebootcoord: {node.name} done",
    ]
    assert got[2]["data"]["message"] == f"{node.name} back in boot {node.boot_id}"
    assert all(g["path"] == f"/hooks/{TOKEN}" for g in got)
    assert not fleet.violations
    assert "notification drain to notify_urls[0] (JSON) failed" in log, log[-3000:]
    assert PASSWORD not in log and TOKEN not in log
