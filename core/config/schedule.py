"""Weekly time windows in which a contributor lends the machine: parsing, checking and asking.

The text a person types, e.g. ``"Mon-Fri 18:00-08:00, Sat-Sun all day"``, is a comma-separated
list of rules; each rule is one or more days (``Mon``, ``Mon-Fri``, ``Sat-Sun``, ``Fri-Mon``, or
several joined by ``/``: ``Mon/Wed/Fri``) followed by a time range ``HH:MM-HH:MM`` or ``all day``.
A range whose end is not after its start wraps the day, as in BOINC's preferences: ``Mon
18:00-08:00`` means Monday 00:00-08:00 and Monday 18:00-24:00. ``24:00`` is allowed as an end.

Everything is local wall-clock time (a naive ``datetime`` from ``datetime.now()``), so a window
follows daylight saving time: "18:00" is 18:00 on the clock on both sides of a change, and no
duration is ever added across one. Pure functions, any thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["DAY_NAMES", "ScheduleError", "WeeklyWindows", "parse_windows"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MINUTES_PER_DAY = 24 * 60
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


class ScheduleError(ValueError):
    """Text that is not a list of weekly windows; ``str()`` says which part and why."""


@dataclass(frozen=True)
class _Span:
    day: int  # 0 = Monday
    start: int  # minutes after midnight, inclusive
    end: int  # minutes after midnight, exclusive (1440 = midnight at the end of the day)


@dataclass(frozen=True)
class WeeklyWindows:
    """A parsed list of weekly windows; ``text`` is what the person typed, tidied."""

    text: str
    spans: tuple[_Span, ...]

    def contains(self, when: datetime) -> bool:
        """True when the local wall-clock time ``when`` lies inside a window."""
        day, minute = when.weekday(), when.hour * 60 + when.minute
        return any(s.day == day and s.start <= minute < s.end for s in self.spans)

    def next_start(self, when: datetime) -> datetime | None:
        """The next local wall-clock time after ``when`` at which a window begins; None when none does."""
        base = when.replace(second=0, microsecond=0)
        today = base.replace(hour=0, minute=0)
        minute = base.hour * 60 + base.minute
        for offset in range(8):
            day = (base.weekday() + offset) % 7
            starts = sorted(
                s.start
                for s in self.spans
                if s.day == day and not self._continues(s)
                if offset or s.start > minute
            )
            if starts:
                return today + timedelta(days=offset, minutes=starts[0])
        return None

    def _continues(self, span: _Span) -> bool:
        # A span starting at midnight that carries on from yesterday's is not a new start.
        if span.start != 0:
            return False
        yesterday = (span.day - 1) % 7
        return any(s.day == yesterday and s.end == _MINUTES_PER_DAY for s in self.spans)


def _clock(text: str, rule: str, *, end: bool) -> int:
    match = _TIME.match(text)
    if not match:
        raise ScheduleError(f"{rule!r}: {text!r} is not a time like 18:00")
    hours, minutes = int(match.group(1)), int(match.group(2))
    if minutes > 59 or hours > 24 or (hours == 24 and (minutes or not end)):
        raise ScheduleError(f"{rule!r}: {text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _day(text: str, rule: str) -> int:
    key = text.strip().lower()[:3]
    if len(text.strip()) < 3 or key not in DAY_NAMES:
        names = ", ".join(d.capitalize() for d in DAY_NAMES)
        raise ScheduleError(f"{rule!r}: {text.strip()!r} is not a day; use {names}")
    return DAY_NAMES.index(key)


def _days(text: str, rule: str) -> list[int]:
    days: list[int] = []
    for part in text.split("/"):
        if "-" in part:
            first, last = (_day(p, rule) for p in part.split("-", 1))
            span = (last - first) % 7
            days.extend((first + n) % 7 for n in range(span + 1))
        else:
            days.append(_day(part, rule))
    return days


def _rule(rule: str) -> list[_Span]:
    words = rule.split()
    if len(words) < 2:
        raise ScheduleError(f"{rule!r}: give days and a time range, e.g. 'Mon-Fri 18:00-08:00'")
    days = _days(words[0], rule)
    when = " ".join(words[1:]).lower()
    if when in ("all day", "all-day", "00:00-24:00"):
        return [_Span(day, 0, _MINUTES_PER_DAY) for day in days]
    if "-" not in when or " " in when:
        raise ScheduleError(f"{rule!r}: {' '.join(words[1:])!r} is not a range like 18:00-08:00 or 'all day'")
    first, last = when.split("-", 1)
    start, end = _clock(first, rule, end=False), _clock(last, rule, end=True)
    if start == end:
        raise ScheduleError(f"{rule!r}: the range starts and ends at the same time; use 'all day'")
    if end > start:
        return [_Span(day, start, end) for day in days]
    spans = []  # wraps the day (BOINC's rule): this day's early hours and its late ones
    for day in days:
        if end > 0:
            spans.append(_Span(day, 0, end))
        spans.append(_Span(day, start, _MINUTES_PER_DAY))
    return spans


def parse_windows(text: str) -> WeeklyWindows | None:
    """The windows ``text`` describes; None for an empty text (any time is fine).

    Raises:
        ScheduleError: A rule is not understood; the message quotes it.
    """
    if not isinstance(text, str):
        raise ScheduleError("time windows must be text like 'Mon-Fri 18:00-08:00, Sat-Sun all day'")
    rules = [r.strip() for r in text.replace(";", ",").split(",")]
    rules = [r for r in rules if r]
    if not rules:
        return None
    spans: list[_Span] = []
    for rule in rules:
        spans.extend(_rule(rule))
    return WeeklyWindows(", ".join(rules), tuple(spans))
