"""Sizes, rates and durations in words, the same in every front end (tray, window, terminal, errors).

Sizes use binary IEC units (B, KiB, MiB, GiB, TiB; 1 KiB = 1024 B), for three reasons: the CLI,
the download errors and the terminal view already printed them; the download limits are powers
of two, so "over the 2.0 GiB limit" reads exactly; and the suffix says which unit is meant,
where "KB" or "MB" leaves a reader to guess between 1000 and 1024.

Pure functions, no Qt, no I/O; safe on any thread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "EnvLimit",
    "env_limit_changes",
    "human_bytes",
    "human_count",
    "human_duration",
    "human_rate",
    "positive_env_number",
]

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
_STEP = 1024


def human_bytes(n: float) -> str:
    """``"0 B"``, ``"512 B"``, ``"1.5 KiB"``, ``"12.3 MiB"``, ``"350 KiB"``; ``"?"`` when not a size.

    One decimal below 100 of a unit, none above; 1023 KiB stays KiB (units step at 1024).
    """
    if not math.isfinite(n) or n < 0:
        return "?"
    value = float(n)
    for unit in _UNITS:
        if value < _STEP or unit == _UNITS[-1]:
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        value /= _STEP
    raise AssertionError("unreachable")


def human_count(n: float) -> str:
    """A count of a processor's own units (pages, seconds of audio): ``"3"``, ``"2.5"``, ``"1,204"``."""
    if not math.isfinite(n):
        return "?"
    if abs(n - round(n)) < 1e-9:
        return f"{int(round(n)):,}"
    return f"{n:,.1f}"


def human_rate(per_second: float, *, unit: str | None = "bytes") -> str:
    """``"4.1 MiB/s"`` for bytes (the default); ``"2.5 pages/s"`` for ``unit="pages"``; ``"2.5/s"``."""
    if unit == "bytes":
        return f"{human_bytes(per_second)}/s"
    suffix = f" {unit}/s" if unit else "/s"
    return f"{human_count(per_second)}{suffix}"


def human_duration(seconds: float) -> str:
    """``"0 s"``, ``"45 s"``, ``"3 min 20 s"``, ``"3 min"``, ``"1 h 05 min"``, ``"2 d 3 h"``; else ``"?"``."""
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


def positive_env_number(env: Mapping[str, str], name: str) -> float | None:
    """``env[name]`` as a positive finite number, or None when it is unset or blank.

    Raises:
        ValueError: The value is not a positive finite number (``name`` is in the message).
    """
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {raw[:40]!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, not {raw[:40]!r}")
    return value


@dataclass(frozen=True)
class EnvLimit:
    """How one environment variable sets one field of a limits dataclass."""

    attribute: str
    scale: int = 1  # the variable's unit in the field's (MiB for a ``..._MB`` variable of bytes)
    whole: bool = False  # only a whole number is accepted


def env_limit_changes(env: Mapping[str, str], table: Mapping[str, EnvLimit]) -> dict[str, Any]:
    """The fields that the variables of ``table`` set in ``env``, for ``dataclasses.replace``.

    A scaled or whole value becomes an ``int``; others stay ``float``.

    Raises:
        ValueError: A variable is not a positive (whole, where asked) number; its name is in the message.
    """
    changes: dict[str, Any] = {}
    for name, limit in table.items():
        value = positive_env_number(env, name)
        if value is None:
            continue
        if limit.whole and not value.is_integer():
            raise ValueError(f"{name} must be a whole number, not {env[name].strip()[:40]!r}")
        changes[limit.attribute] = int(value * limit.scale) if limit.whole or limit.scale != 1 else value
    return changes
