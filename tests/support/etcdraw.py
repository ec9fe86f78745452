"""Raw etcd access for tests: what airlock, etcdctl or an attacker would do to our keys."""

from __future__ import annotations

import json
import threading
from typing import Any

import etcd3
import etcd3.events

from rebootcoord.sim.etcd_server import EtcdServer


def raw_client(etcd: EtcdServer) -> etcd3.MultiEndpointEtcd3Client:
    host, port = etcd.endpoint.split("//")[1].split(":")
    return etcd3.client(host=host, port=int(port))


def slot_history(etcd: EtcdServer, key: str) -> list[dict[str, Any]]:
    """Every value the key ever had, replayed by a watch from revision 1."""
    client = raw_client(etcd)
    current_rev = client.get_response(key).header.revision
    events: list[dict[str, Any]] = []
    done = threading.Event()

    def on(response: object) -> None:
        for event in getattr(response, "events", []):
            if isinstance(event, etcd3.events.PutEvent):
                events.append(json.loads(event.value))
            if event.mod_revision >= current_rev:
                done.set()

    watch_id = client.add_watch_callback(key, on, start_revision=1)
    done.wait(10)
    client.cancel_watch(watch_id)
    client.close()
    return events
