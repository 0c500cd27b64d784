"""core.units: sizes in binary IEC units, rates, counts and durations, as every front end shows them."""

from __future__ import annotations

import math

import pytest

from morag_worker.core.units import human_bytes, human_count, human_duration, human_rate

pytestmark = pytest.mark.unit

KiB = 1024
MiB = KiB * KiB
GiB = MiB * KiB


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (KiB, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (350 * KiB, "350 KiB"),
        (1023 * KiB, "1023 KiB"),
        (12.3 * MiB, "12.3 MiB"),
        (5 * GiB, "5.0 GiB"),
        (3 * 1024 * GiB, "3.0 TiB"),
        (5000 * 1024 * GiB, "5000 TiB"),
    ],
)
def test_bytes_use_iec_units(n: float, text: str) -> None:
    assert human_bytes(n) == text


@pytest.mark.parametrize("bad", [-1, math.nan, math.inf])
def test_bytes_that_are_not_a_size(bad: float) -> None:
    assert human_bytes(bad) == "?"


def test_rates() -> None:
    assert human_rate(4.1 * MiB) == "4.1 MiB/s"
    assert human_rate(2.5, unit="pages") == "2.5 pages/s"
    assert human_rate(3, unit=None) == "3/s"


def test_counts() -> None:
    assert (human_count(3), human_count(2.5), human_count(1204)) == ("3", "2.5", "1,204")
    assert human_count(math.nan) == "?"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (44.6, "45 s"),
        (200, "3 min 20 s"),
        (180, "3 min"),
        (3900, "1 h 05 min"),
        (2 * 86400 + 3 * 3600 + 59, "2 d 3 h"),
        (-1, "?"),
        (math.inf, "?"),
    ],
)
def test_durations(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text
