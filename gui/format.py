"""Numbers and times in words a contributor reads at a glance: sizes, rates, durations, clock times.

Pure functions, no Qt; safe on any thread.
"""

from __future__ import annotations

import math
import time

__all__ = ["clock_time", "human_bytes", "human_count", "human_duration", "human_rate", "percent_text"]

_UNITS = ("B", "kB", "MB", "GB", "TB")


def human_bytes(n: float) -> str:
    """``"0 B"``, ``"512 B"``, ``"1.5 kB"``, ``"12.3 MB"`` (decimal units, as download tools show)."""
    if not math.isfinite(n) or n < 0:
        return "?"
    value = float(n)
    for unit in _UNITS:
        if value < 1000 or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def human_rate(per_second: float, *, unit_bytes: bool = True, unit: str = "") -> str:
    """``"4.1 MB/s"`` for bytes, ``"2.5 pages/s"`` (or ``"2.5/s"``) for other units."""
    if unit_bytes:
        return f"{human_bytes(per_second)}/s"
    suffix = f" {unit}/s" if unit else "/s"
    return f"{human_count(per_second)}{suffix}"


def human_count(n: float) -> str:
    """A count of the processor's own units: ``"3"``, ``"2.5"``, ``"1,204"``."""
    if not math.isfinite(n):
        return "?"
    if abs(n - round(n)) < 1e-9:
        return f"{int(round(n)):,}"
    return f"{n:,.1f}"


def human_duration(seconds: float) -> str:
    """``"0 s"``, ``"45 s"``, ``"3 min 20 s"``, ``"1 h 05 min"``, ``"2 d 3 h"``."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    minutes, s = divmod(s, 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s" if s else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def percent_text(percent: float | None) -> str:
    """``"42 %"``; ``""`` when unknown."""
    if percent is None or not math.isfinite(percent):
        return ""
    return f"{max(0.0, min(100.0, percent)):.0f} %"


def clock_time(epoch: float, now: float | None = None) -> str:
    """``"14:05"`` today, ``"Nov 27, 14:05"`` another day this year, else ``"2025-11-27 14:05"``."""
    moment = time.localtime(epoch)
    today = time.localtime(now if now is not None else time.time())
    if moment[:3] == today[:3]:
        return time.strftime("%H:%M", moment)
    if moment.tm_year == today.tm_year:
        return time.strftime("%b %d, %H:%M", moment)
    return time.strftime("%Y-%m-%d %H:%M", moment)
