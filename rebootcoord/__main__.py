"""``python -m rebootcoord`` is ``rebootcoord``."""

from rebootcoord.cli.main import entrypoint

entrypoint()
