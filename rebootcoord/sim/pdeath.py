"""``python -m rebootcoord.sim.pdeath PROGRAM ARGS...``: exec PROGRAM so that it dies with its parent.

Simulated agents and test servers must not outlive the simulator or the test run, even when it is
killed with SIGKILL. PR_SET_PDEATHSIG survives execve; setting it here, in a fresh process, avoids
``preexec_fn`` (unsafe once the parent has threads). Note: the signal fires when the *thread* that
started the child exits, so spawn from a long-lived thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m rebootcoord.sim.pdeath PROGRAM [ARGS...]")
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)
    os.execvp(sys.argv[1], sys.argv[1:])  # noqa: S606 - argv from our own launcher


if __name__ == "__main__":
    main()
