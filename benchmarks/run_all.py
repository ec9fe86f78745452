"""Run every benchmark; each prints JSON and writes benchmarks/out/.

fleetlock_peers.py needs the airlock binary (tests/support/peers.py: $TESTS_AIRLOCK_BIN, testbin/
or ../shared/peers/). The last six need `make testbin`; realnode.py also root and `make image`.
The fault campaign is `make faults`.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

for script in (
    "footprint.py",
    "handoff.py",
    "rollout.py",
    "metrics_flood.py",
    "fleetlock_profile.py",
    "fleetlock_peers.py",
    "controlplane.py",
    "handoff_kube.py",
    "requests_kube.py",
    "scale.py",
    "fleetlock.py",
    "realnode.py",
):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, script)], check=True)
