"""Maintenance windows: when may a node take a slot. Pure: time is always passed in.

Three syntaxes, because users bring their configuration with them:

- locksmith: ``{"start": "Thu 04:00", "length": "1h"}`` (``start`` without a day means every day)
- kured:     ``{"days": ["mon", "tue"], "start": "22:00", "end": "06:00"}``
- Zincati:   ``{"days": ["Sat", "Sun"], "start_time": "22:30", "length_minutes": 60}``

Each may carry ``time_zone`` (an IANA name); otherwise the agent's ``time_zone`` applies.

Semantics, chosen to be unsurprising across midnight, the end of the week and DST:

- A window *starts* at a wall-clock time on each of its days, in its zone. A start that does not
  exist (spring forward) happens at the same offset as just before the gap, i.e. later by the gap;
  an ambiguous start (fall back) is the first occurrence.
- locksmith and Zincati windows last ``length`` of elapsed time. kured windows end at the wall
  clock ``end``, on the same day if it is after ``start``, else on the next day (wrapping midnight).
- The day names the day the window *starts*: "Sat 23:00" + 2h is open at Sunday 00:30.
- No windows at all means "always open".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from rebootcoord.core.durations import parse_duration

ALL_DAYS = frozenset(range(7))  # Monday = 0, as datetime.weekday()

_DAY_NAMES = {
    "mo": 0, "mon": 0, "monday": 0,
    "tu": 1, "tue": 1, "tues": 1, "tuesday": 1,
    "we": 2, "wed": 2, "wednesday": 2,
    "th": 3, "thu": 3, "thur": 3, "thurs": 3, "thursday": 3,
    "fr": 4, "fri": 4, "friday": 4,
    "sa": 5, "sat": 5, "saturday": 5,
    "su": 6, "sun": 6, "sunday": 6,
}  # fmt: skip
_DAY_ABBR = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CLOCK = re.compile(r"^(\d{1,2})(?::(\d{2}))?(?::(\d{2}))?\s*([ap]m)?$", re.IGNORECASE)
MAX_LENGTH = timedelta(days=7)

# How the configuration layer turns a zone name into a tzinfo (raising WindowSpecError).
ZoneLoader = Callable[[object, str], tzinfo]


class WindowSpecError(ValueError):
    """A window that cannot be understood; the message says what was expected."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"{key}: got {value!r}, expected {expected}")


def parse_day(value: object, key: str = "days") -> int:
    """A weekday name (kured, Zincati, locksmith spellings) or a number, Sunday = 0 as in Go."""
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value <= 6:
            return (value - 1) % 7  # Go's time.Weekday: Sunday = 0
        raise WindowSpecError(key, value, "a weekday number from 0 (Sunday) to 6 (Saturday)")
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return parse_day(int(text), key)
        if text in _DAY_NAMES:
            return _DAY_NAMES[text]
    raise WindowSpecError(key, value, "a weekday such as mon, Tue, wednesday, or 0-6 (Sunday = 0)")


def parse_clock(value: object, key: str) -> time:
    """A time of day: "04:00", "4", "22:30:15", "3pm", "03:04pm"."""
    match = _CLOCK.match(value.strip()) if isinstance(value, str) else None
    if isinstance(value, int) and not isinstance(value, bool):
        match = _CLOCK.match(str(value))
    expected = 'a time of day such as "04:00", "22:30:15" or "3pm"'
    if match is None:
        raise WindowSpecError(key, value, expected)
    hour, minute, second = (int(g) if g else 0 for g in match.group(1, 2, 3))
    meridiem = (match.group(4) or "").lower()
    if meridiem:
        if not 1 <= hour <= 12:
            raise WindowSpecError(key, value, expected)
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    if hour > 23 or minute > 59 or second > 59:
        raise WindowSpecError(key, value, expected)
    return time(hour, minute, second)


def _local(day: date, clock: time, zone: tzinfo) -> datetime:
    """Wall clock to an aware datetime. fold=0: first of an ambiguous pair; a gap shifts later."""
    naive = datetime.combine(day, clock)
    aware = naive.replace(tzinfo=zone, fold=0)
    # Normalise through UTC so a non-existent wall time maps to a real instant.
    return aware.astimezone(UTC)


@dataclass(frozen=True)
class Window:
    """One weekly recurring window. ``end_clock`` set means kured style; else ``length``."""

    days: frozenset[int]
    start: time
    zone: tzinfo
    length: timedelta | None = None
    end_clock: time | None = None
    label: str = ""

    def occurrence(self, day: date) -> tuple[datetime, datetime] | None:
        """The [start, end) of the window that starts on local ``day``, in UTC, if any."""
        if day.weekday() not in self.days:
            return None
        start = _local(day, self.start, self.zone)
        if self.end_clock is not None:
            end_day = day if self.end_clock > self.start else day + timedelta(days=1)
            end = _local(end_day, self.end_clock, self.zone)
        else:
            assert self.length is not None
            end = start + self.length
        return start, end

    def _candidates(self, now: datetime, ahead_days: int) -> list[tuple[datetime, datetime]]:
        local_today = now.astimezone(self.zone).date()
        out = []
        for offset in range(-8, ahead_days + 1):
            occ = self.occurrence(local_today + timedelta(days=offset))
            if occ is not None and occ[1] > occ[0]:
                out.append(occ)
        return out

    def current(self, now: datetime) -> tuple[datetime, datetime] | None:
        """The occurrence containing ``now`` (start inclusive, end exclusive), if any."""
        for start, end in self._candidates(now, 0):
            if start <= now < end:
                return start, end
        return None

    def next_start(self, now: datetime) -> datetime | None:
        """The first occurrence start strictly after ``now``."""
        starts = [s for s, _ in self._candidates(now, 8) if s > now]
        return min(starts) if starts else None

    def describe(self) -> str:
        days = ",".join(_DAY_ABBR[d] for d in sorted(self.days)) if self.days != ALL_DAYS else "daily"
        zone = str(getattr(self.zone, "key", self.zone))
        if self.end_clock is not None:
            return f"{days} {self.start:%H:%M}-{self.end_clock:%H:%M} {zone}"
        assert self.length is not None
        return f"{days} {self.start:%H:%M} +{self.length} {zone}"


@dataclass(frozen=True)
class WindowStatus:
    open: bool
    closes_at: datetime | None  # when the current window closes (None when closed or always open)
    next_open: datetime | None  # when the next window opens (None when open now or never)


@dataclass(frozen=True)
class Schedule:
    """Several windows; open when any is. No windows: always open."""

    windows: tuple[Window, ...] = ()

    def status(self, now: datetime) -> WindowStatus:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if not self.windows:
            return WindowStatus(open=True, closes_at=None, next_open=None)
        current = [occ for w in self.windows if (occ := w.current(now)) is not None]
        if current:
            return WindowStatus(open=True, closes_at=self._merged_end(now), next_open=None)
        starts = [s for w in self.windows if (s := w.next_start(now)) is not None]
        return WindowStatus(open=False, closes_at=None, next_open=min(starts) if starts else None)

    def contains(self, now: datetime) -> bool:
        return self.status(now).open

    def _merged_end(self, now: datetime) -> datetime:
        """End of the open stretch around ``now``, following windows that overlap or touch."""
        end = now
        for _ in range(64):  # bounded: each step moves end to a later occurrence end
            ends = [occ[1] for w in self.windows if (occ := w.current(end)) is not None]
            if not ends:
                break
            end = max(ends)
        return end


def parse_window(spec: object, default_zone: tzinfo, key: str, zones: ZoneLoader) -> Window:
    """Build a Window from one of the three syntaxes (see the module docstring)."""
    if isinstance(spec, str):
        # locksmith's two variables in one string: "Thu 04:00 1h"
        parts = spec.split()
        if len(parts) in (2, 3):
            spec = {"start": " ".join(parts[:-1]), "length": parts[-1]}
        else:
            raise WindowSpecError(key, spec, 'a mapping, or "[Ddd ]HH:MM <length>" such as "Thu 04:00 1h"')
    if not isinstance(spec, Mapping):
        raise WindowSpecError(
            key,
            spec,
            "a mapping with start+length, days+start+end, or days+start_time+length_minutes",
        )
    zone = default_zone
    if "time_zone" in spec:
        zone = zones(spec["time_zone"], f"{key}.time_zone")
    keys = set(spec) - {"time_zone"}
    if keys <= {"days", "start_time", "length_minutes"} and "length_minutes" in keys:
        return _zincati(spec, zone, key)
    if keys <= {"days", "start", "end"} and "end" in keys:
        return _kured(spec, zone, key)
    if keys <= {"start", "length"} and keys == {"start", "length"}:
        return _locksmith(spec, zone, key)
    raise WindowSpecError(
        key,
        dict(spec),
        "one of {start, length} (locksmith), {days, start, end} (kured) or "
        "{days, start_time, length_minutes} (Zincati), each with an optional time_zone",
    )


def _days(value: object, key: str) -> frozenset[int]:
    if value is None:
        return ALL_DAYS
    items: Sequence[object]
    if isinstance(value, str):
        items = [v for v in re.split(r"[,\s]+", value) if v]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise WindowSpecError(key, value, "a list of weekdays such as [mon, tue]")
    if not items:
        raise WindowSpecError(key, value, "at least one weekday")
    return frozenset(parse_day(v, key) for v in items)


def _length(value: object, key: str) -> timedelta:
    try:
        length = parse_duration(value)
    except ValueError as exc:
        raise WindowSpecError(key, value, str(exc)) from None
    if not timedelta(0) < length <= MAX_LENGTH:
        raise WindowSpecError(key, value, "a length above 0 and at most 7 days")
    return length


def _locksmith(spec: Mapping[str, object], zone: tzinfo, key: str) -> Window:
    start = spec["start"]
    if not isinstance(start, str):
        raise WindowSpecError(f"{key}.start", start, '"[Ddd ]HH:MM" such as "Thu 04:00"')
    parts = start.split()
    days = ALL_DAYS
    if len(parts) == 2:
        days = frozenset({parse_day(parts[0], f"{key}.start")})
        clock_text = parts[1]
    elif len(parts) == 1:
        clock_text = parts[0]
    else:
        raise WindowSpecError(f"{key}.start", start, '"[Ddd ]HH:MM" such as "Thu 04:00"')
    clock = parse_clock(clock_text, f"{key}.start")
    length = _length(spec["length"], f"{key}.length")
    return Window(days=days, start=clock, zone=zone, length=length, label=f"{start} +{spec['length']}")


def _kured(spec: Mapping[str, object], zone: tzinfo, key: str) -> Window:
    days = _days(spec.get("days"), f"{key}.days")
    start = parse_clock(spec.get("start", "0:00"), f"{key}.start")
    end = parse_clock(spec["end"], f"{key}.end")
    if start == end:
        raise WindowSpecError(f"{key}.end", spec["end"], "an end different from start")
    return Window(days=days, start=start, zone=zone, end_clock=end)


def _zincati(spec: Mapping[str, object], zone: tzinfo, key: str) -> Window:
    days = _days(spec.get("days"), f"{key}.days")
    start = parse_clock(spec.get("start_time"), f"{key}.start_time")
    minutes = spec["length_minutes"]
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise WindowSpecError(f"{key}.length_minutes", minutes, "a whole number of minutes >= 1")
    return Window(days=days, start=start, zone=zone, length=_length(minutes * 60, f"{key}.length_minutes"))
