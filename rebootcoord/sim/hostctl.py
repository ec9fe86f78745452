"""The simulated host's side of a reboot: ``python -m rebootcoord.sim.hostctl --socket S reboot --node N``.

It is the agent's ``reboot_command`` in a simulation, exactly as ``systemctl reboot`` is on a real
host: it asks for the reboot and returns; the simulator then stops the agent, "boots" the node
with a new boot ID and starts the agent again. Standard library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rebootcoord-sim-hostctl")
    p.add_argument("--socket", required=True)
    sub = p.add_subparsers(dest="op", required=True)
    reboot = sub.add_parser("reboot")
    reboot.add_argument("--node", required=True)
    args = p.parse_args(argv)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(args.socket)
            s.sendall(json.dumps({"op": args.op, "node": args.node}).encode() + b"\n")
            answer = s.makefile("rb").readline().decode().strip()
    except OSError as exc:
        print(f"hostctl: the simulator at {args.socket} did not answer: {exc}", file=sys.stderr)
        return 1
    if answer != "ok":
        print(f"hostctl: {answer}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
