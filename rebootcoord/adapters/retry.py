"""Retries of transient backend errors, with jittered exponential backoff (tenacity)."""

from __future__ import annotations

import threading
import time

from tenacity import (
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from rebootcoord.errors import AccessDenied, BackendUnavailable, Interrupted


def retrying(
    retry_for: float,
    *,
    first_wait: float = 0.05,
    max_wait: float = 2.0,
    stop: threading.Event | None = None,
) -> Retrying:
    """Retry BackendUnavailable for up to ``retry_for`` seconds (0: one attempt), then re-raise it.
    AccessDenied is not retried. When ``stop`` is set (SIGTERM), a back-off ends at once with
    Interrupted."""

    def sleep(seconds: float) -> None:
        if stop is None:
            time.sleep(seconds)
        elif stop.wait(seconds):
            raise Interrupted("stopping: gave up a retry")

    return Retrying(
        retry=retry_if_exception_type(BackendUnavailable) & retry_if_not_exception_type(AccessDenied),
        wait=wait_random_exponential(multiplier=first_wait, max=max_wait),
        stop=stop_after_delay(retry_for),
        sleep=sleep,
        reraise=True,
    )
