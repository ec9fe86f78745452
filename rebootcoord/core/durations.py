"""Go-style durations ("1h30m", "250ms", "1.5h"), as locksmith and kured users write them. Pure."""

from __future__ import annotations

import math
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
    durations are refused: nothing in rebootcoord waits a negative time; so is anything above
    MAX_DURATION (a year: no wait of the agent is longer, and Python's waits overflow past ~292
    years), infinite or not a number.
    """
    if isinstance(value, bool):
        raise ValueError(DURATION_EXPECTED)
    if isinstance(value, int | float):
        seconds = _seconds(value)
    elif isinstance(value, str):
        seconds = _text_seconds(value.strip())
    else:
        raise ValueError(DURATION_EXPECTED)
    if seconds < 0:
        raise ValueError(DURATION_EXPECTED + " (not negative)")
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError("a duration of at most 366d")
    return timedelta(seconds=seconds)


#: The longest duration any key takes (some keys have lower bounds of their own).
MAX_DURATION = timedelta(days=366)


def _seconds(value: int | float) -> float:
    if isinstance(value, int) and abs(value) > 10**15:
        return math.inf  # above any bound: refused by the caller, without converting it
    number = float(value)
    if math.isnan(number):
        raise ValueError(DURATION_EXPECTED)
    return number


def _text_seconds(text: str) -> float:
    if len(text) > 64:
        raise ValueError(DURATION_EXPECTED + f" (not {len(text)} characters)")
    if text in {"0", "0s"}:
        return 0.0
    try:
        return _seconds(float(text))
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
    return total


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
