"""Go-style durations ("1h30m", "250ms", "1.5h"), as locksmith and kured users write them. Pure."""

from __future__ import annotations

import re
from datetime import timedelta

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")

DURATION_EXPECTED = 'a duration such as "90s", "5m", "1h30m" or a number of seconds'


def parse_duration(value: object) -> timedelta:
    """Parse a duration; raise ValueError (with what was expected) on anything else.

    Numbers are seconds. Strings follow Go's time.ParseDuration, plus "d" for days. Negative
    durations are refused: nothing in rebootcoord waits a negative time.
    """
    if isinstance(value, bool):
        raise ValueError(DURATION_EXPECTED)
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(DURATION_EXPECTED + " (not negative)")
        return timedelta(seconds=float(value))
    if not isinstance(value, str):
        raise ValueError(DURATION_EXPECTED)
    text = value.strip()
    if text in {"0", "0s"}:
        return timedelta(0)
    try:
        return timedelta(seconds=float(text)) if float(text) >= 0 else _fail()
    except ValueError:
        pass
    pos = 0
    total = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            _fail()
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0:
        _fail()
    return timedelta(seconds=total)


def _fail() -> timedelta:
    raise ValueError(DURATION_EXPECTED)


def format_duration(delta: timedelta) -> str:
    """Render a duration the way parse_duration reads it back ("1h30m", "250ms")."""
    total = delta.total_seconds()
    if total == 0:
        return "0s"
    if total < 1:
        return f"{round(total * 1000)}ms"
    out = []
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        out.append(f"{int(hours)}h")
    if minutes:
        out.append(f"{int(minutes)}m")
    if seconds:
        out.append(f"{seconds:g}s")
    return "".join(out)
