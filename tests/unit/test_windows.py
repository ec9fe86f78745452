"""Maintenance windows: the three syntaxes, midnight and week wrap, DST, and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rebootcoord.core.config import load_zone
from rebootcoord.core.windows import Schedule, Window, WindowSpecError, parse_window

UTCZ = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def w(spec: object, zone: ZoneInfo = UTCZ) -> Window:
    return parse_window(spec, zone, "windows[0]", load_zone)


def at(text: str, zone: ZoneInfo = UTCZ) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone)


# 2026-11-26 is a Thursday.
@pytest.mark.parametrize(
    ("spec", "moment", "inside"),
    [
        ({"start": "Thu 04:00", "length": "1h"}, "2026-11-26T04:00:00", True),
        ({"start": "Thu 04:00", "length": "1h"}, "2026-11-26T04:59:59", True),
        ({"start": "Thu 04:00", "length": "1h"}, "2026-11-26T05:00:00", False),
        ({"start": "Thu 04:00", "length": "1h"}, "2026-11-26T03:59:59", False),
        ({"start": "Thu 04:00", "length": "1h"}, "2026-11-27T04:30:00", False),
        ({"start": "04:00", "length": "30m"}, "2026-11-27T04:10:00", True),
        ({"days": ["mon", "thu"], "start": "22:00", "end": "06:00"}, "2026-11-26T23:00:00", True),
        ({"days": ["mon", "thu"], "start": "22:00", "end": "06:00"}, "2026-11-27T05:59:00", True),
        ({"days": ["mon", "thu"], "start": "22:00", "end": "06:00"}, "2026-11-27T06:00:00", False),
        ({"days": ["mon", "thu"], "start": "22:00", "end": "06:00"}, "2026-11-26T05:00:00", False),
        ({"days": ["Sat"], "start_time": "23:00", "length_minutes": 120}, "2026-11-29T00:30:00", True),
        ({"days": ["Sun"], "start_time": "23:30", "length_minutes": 60}, "2026-11-30T00:15:00", True),
        ({"days": "sa,su", "start": "3pm", "end": "5pm"}, "2026-11-28T16:00:00", True),
        ("Thu 04:00 1h", "2026-11-26T04:30:00", True),
        ({"days": [0], "start": "0:00", "end": "23:59"}, "2026-11-29T12:00:00", True),  # 0 = Sunday
    ],
    ids=lambda v: str(v)[:40],
)
def test_window_syntaxes(spec: object, moment: str, inside: bool) -> None:
    assert Schedule((w(spec),)).contains(at(moment)) is inside


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"start": "Thx 04:00", "length": "1h"}, "windows[0].start"),
        ({"start": "Thu 25:00", "length": "1h"}, "windows[0].start"),
        ({"start": "Thu 04:00", "length": "-1h"}, "windows[0].length"),
        ({"start": "Thu 04:00", "length": "8d"}, "windows[0].length"),
        ({"start": "Thu 04:00", "length": "soon"}, "windows[0].length"),
        ({"days": ["funday"], "start": "1:00", "end": "2:00"}, "windows[0].days"),
        ({"days": [], "start": "1:00", "end": "2:00"}, "windows[0].days"),
        ({"start": "1:00", "end": "1:00"}, "windows[0].end"),
        ({"days": ["mon"], "start_time": "1:00", "length_minutes": 0}, "windows[0].length_minutes"),
        ({"days": ["mon"], "start_time": "1:00", "length_minutes": "60"}, "windows[0].length_minutes"),
        ({"start": "1:00", "length": "1h", "time_zone": "Mars/Olympus"}, "windows[0].time_zone"),
        ({"start": "1:00", "length": "1h", "end": "2:00"}, "windows[0]"),
        (42, "windows[0]"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_windows_name_the_key(spec: object, key: str) -> None:
    with pytest.raises(WindowSpecError) as info:
        w(spec)
    assert info.value.key == key
    assert "expected" in str(info.value)


def test_status_reports_next_open_and_close() -> None:
    schedule = Schedule(
        (w({"start": "Thu 04:00", "length": "1h"}), w({"start": "Sat 02:00", "length": "2h"}))
    )
    closed = schedule.status(at("2026-11-26T06:00:00"))
    assert not closed.open
    assert closed.next_open == at("2026-11-28T02:00:00")
    opened = schedule.status(at("2026-11-26T04:15:00"))
    assert opened.open and opened.closes_at == at("2026-11-26T05:00:00")


def test_touching_windows_merge_for_closes_at() -> None:
    schedule = Schedule(
        (w({"start": "Thu 04:00", "length": "1h"}), w({"start": "Thu 05:00", "length": "1h"}))
    )
    assert schedule.status(at("2026-11-26T04:30:00")).closes_at == at("2026-11-26T06:00:00")


def test_week_wrap_next_open() -> None:
    schedule = Schedule((w({"start": "Mon 01:00", "length": "1h"}),))
    # Sunday evening: the next window is tomorrow, across the week boundary.
    assert schedule.status(at("2026-11-29T22:00:00")).next_open == at("2026-11-30T01:00:00")


def test_no_windows_means_always_open() -> None:
    assert Schedule().status(at("2026-11-26T12:00:00")).open


def test_time_zone_applies() -> None:
    window = w({"start": "Thu 04:00", "length": "1h"}, BERLIN)
    # 04:30 in Berlin (UTC+1 in November) is 03:30 UTC.
    assert Schedule((window,)).contains(datetime(2026, 11, 26, 3, 30, tzinfo=UTC))
    assert not Schedule((window,)).contains(datetime(2026, 11, 26, 4, 30, tzinfo=UTC))


def test_spring_forward_gap_shifts_start_later() -> None:
    # 2026-03-08 02:00 EST jumps to 03:00 EDT: 02:30 does not exist.
    window = w({"start": "Sun 02:30", "length": "1h"}, NEW_YORK)
    start, end = window.occurrence(datetime(2026, 3, 8).date())  # type: ignore[misc]
    assert end - start == timedelta(hours=1)
    assert start == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)  # 02:30 EST = 03:30 EDT


def test_fall_back_ambiguous_start_takes_the_first() -> None:
    # 2026-11-01 01:30 happens twice in New York; the window starts at the first (EDT).
    window = w({"start": "Sun 01:30", "length": "30m"}, NEW_YORK)
    start, end = window.occurrence(datetime(2026, 11, 1).date())  # type: ignore[misc]
    assert start == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert end - start == timedelta(minutes=30)


def test_kured_window_over_dst_ends_at_wall_clock() -> None:
    # Night of the fall-back: 22:00 to 06:00 wall clock lasts 9 real hours.
    window = w({"days": ["sa"], "start": "22:00", "end": "06:00"}, NEW_YORK)
    start, end = window.occurrence(datetime(2026, 10, 31).date())  # type: ignore[misc]
    assert end - start == timedelta(hours=9)


# ---------------------------------------------------------------------------------------------
# properties

ZONES = st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"])
MOMENTS = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)


@st.composite
def windows(draw: st.DrawFn) -> Window:
    zone = ZoneInfo(draw(ZONES))
    days = draw(st.sets(st.integers(0, 6), min_size=1))
    hour, minute = draw(st.integers(0, 23)), draw(st.integers(0, 59))
    style = draw(st.sampled_from(["length", "end"]))
    day_names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    if style == "length":
        minutes = draw(st.integers(1, 3 * 24 * 60))
        spec: dict[str, object] = {
            "days": [day_names[d] for d in days],
            "start_time": f"{hour:02d}:{minute:02d}",
            "length_minutes": minutes,
        }
    else:
        end_h, end_m = draw(st.integers(0, 23)), draw(st.integers(0, 59))
        if (end_h, end_m) == (hour, minute):
            end_m = (end_m + 1) % 60
        spec = {
            "days": [day_names[d] for d in days],
            "start": f"{hour}:{minute:02d}",
            "end": f"{end_h}:{end_m:02d}",
        }
    return parse_window(spec, zone, "w", load_zone)


@settings(max_examples=300, deadline=None)
@given(windows(), MOMENTS)
def test_next_open_is_open_and_nothing_opens_before_it(window: Window, now: datetime) -> None:
    schedule = Schedule((window,))
    status = schedule.status(now)
    if status.open:
        assert status.closes_at is not None and status.closes_at > now
        assert schedule.contains(status.closes_at - timedelta(microseconds=1))
        # closed at closes_at, unless the windows chain on for more than a week (always open)
        assert not schedule.contains(status.closes_at) or status.closes_at - now > timedelta(days=7)
        return
    assert status.next_open is not None and status.next_open > now
    assert schedule.contains(status.next_open)
    # It stays closed until then (sampled, including just before).
    assert not schedule.contains(max(now, status.next_open - timedelta(microseconds=1)))
    span = status.next_open - now
    for fraction in (0.25, 0.5, 0.75):
        assert not schedule.contains(now + span * fraction)


@settings(max_examples=300, deadline=None)
@given(windows(), MOMENTS)
def test_contains_matches_an_occurrence(window: Window, now: datetime) -> None:
    local_day = now.astimezone(window.zone).date()
    occurrences = [window.occurrence(local_day + timedelta(days=k)) for k in range(-8, 2)]
    inside = any(o is not None and o[0] <= now < o[1] for o in occurrences)
    assert Schedule((window,)).contains(now) is inside


@settings(max_examples=200, deadline=None)
@given(windows(), st.dates(min_value=datetime(2025, 1, 1).date(), max_value=datetime(2030, 12, 31).date()))
def test_length_windows_last_exactly_their_length(window: Window, day: object) -> None:
    occurrence = window.occurrence(day)  # type: ignore[arg-type]
    if occurrence is None or window.length is None:
        return
    start, end = occurrence
    assert end - start == window.length


@settings(max_examples=200, deadline=None)
@given(st.lists(windows(), min_size=1, max_size=4), MOMENTS)
def test_several_windows_are_open_when_any_is(ws: list[Window], now: datetime) -> None:
    assert Schedule(tuple(ws)).contains(now) is any(Schedule((x,)).contains(now) for x in ws)
