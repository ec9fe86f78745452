"""rebootcoord: coordinates the reboots of a fleet so that never too many nodes are down at once.

Layers, from the outside in (checked by import-linter, see pyproject.toml):

- ``rebootcoord.cli``      composition roots: ``rebootcoord`` and ``rebootctl``
- ``rebootcoord.sim``      the simulated fleet (a real backend, agents as processes)
- ``rebootcoord.daemon``   the agent loop, metrics and the event log
- ``rebootcoord.adapters`` detectors, rebooters, gates, hosts and semaphore backends
- ``rebootcoord.core``     pure logic: configuration, windows, the semaphore value, decisions
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
