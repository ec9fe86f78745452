"""Retries of transient backend errors, with jittered exponential backoff (tenacity)."""

from __future__ import annotations

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_random_exponential

from rebootcoord.errors import BackendUnavailable


def retrying(retry_for: float, *, first_wait: float = 0.05, max_wait: float = 2.0) -> Retrying:
    """Retry BackendUnavailable for up to ``retry_for`` seconds (0: one attempt), then re-raise it."""
    return Retrying(
        retry=retry_if_exception_type(BackendUnavailable),
        wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
        stop=stop_after_delay(retry_for),
        reraise=True,
    )
