"""The shared LeaseKeepAlive stream of the FleetLock server's places (adapters.etcd), on a real
etcd: many leases' refreshes on one stream, each answered with its own lease's TTL, from many
threads at once; a lease that is gone answers 0; a closed or replaced stream opens again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from rebootcoord.adapters.etcd import EtcdConnection, EtcdOptions, _KeepAliveStream
from rebootcoord.sim.etcd_server import EtcdServer

pytestmark = pytest.mark.etcd


def test_one_stream_refreshes_many_leases_from_many_threads(etcd: EtcdServer) -> None:
    conn = EtcdConnection(EtcdOptions(endpoints=(etcd.endpoint,), timeout=5.0, retry_for=5.0))
    stream = _KeepAliveStream(timeout=5.0)
    try:
        client = conn.client()
        leases = {ttl: client.lease(ttl).id for ttl in (20, 40, 60)}
        asks = [ttl for ttl in leases for _ in range(40)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda ttl: (ttl, stream.refresh(client, leases[ttl])), asks))
        # Each answer is its own lease's: a refresh resets the TTL to the granted one.
        assert all(ttl - 2 <= left <= ttl for ttl, left in answers), answers
        client.revoke_lease(leases[40])
        assert stream.refresh(client, leases[40]) <= 0  # gone: etcd answers TTL 0 on the stream
        assert stream.refresh(client, leases[20]) > 0  # and the stream goes on
        stream.close()
        assert stream.refresh(client, leases[60]) > 0  # a new stream after close
        other = EtcdConnection(EtcdOptions(endpoints=(etcd.endpoint,), timeout=5.0, retry_for=5.0))
        try:
            assert stream.refresh(other.client(), leases[60]) > 0  # another client: a stream of its own
        finally:
            other.close()
    finally:
        stream.close()
        conn.close()
