"""Percentages and clock times in words, as the tray and the window show them.

Sizes, rates and durations are ``morag_worker.core.units`` (one formatter for the GUI and the
terminal); this module keeps what only the GUI shows. Pure functions, no Qt; safe on any thread.
"""

from __future__ import annotations

import math
import time

from morag_worker import DISPLAY_NAME

__all__ = ["clock_time", "percent_text", "window_title"]

#: Between a window's own title and the app's name, as Qt joins them on Linux and Windows.
TITLE_SEPARATOR = " \u2014 "


def window_title(what: str) -> str:
    """``"Settings — MoRAG Worker"``: the app's name once, at the end.

    Qt appends the application's display name to every title that does not already end with it
    (``QPlatformWindow::formatWindowTitle``), so a title that starts with the name would show it
    twice ("MoRAG Worker Settings — MoRAG Worker").
    """
    what = what.strip()
    if not what or what == DISPLAY_NAME:
        return DISPLAY_NAME
    if what.endswith(DISPLAY_NAME):
        return what
    return f"{what}{TITLE_SEPARATOR}{DISPLAY_NAME}"


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
