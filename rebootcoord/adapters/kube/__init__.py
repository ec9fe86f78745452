"""Kubernetes adapters: the Lease semaphore, node operations, gates and events.

Only these modules import the ``kubernetes`` package, and only for configuration loading and its
HTTP client; requests and responses are plain JSON (no generated models), see ``api``.
"""
