"""The rules for when to contribute (issue 13, items 2 and 3), each driven through plain readings.

Hysteresis of the GPU temperature, the GPU memory a speech model needs, idle time, battery,
full screen, and weekly windows (across midnight, and on both days of a daylight saving change,
where only local wall-clock time counts), plus the settings and variables that carry the rules.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from morag_worker.core.config.schedule import ScheduleError, parse_windows
from morag_worker.core.config.settings import Settings, SettingsError, apply_env, intake_env
from morag_worker.core.execution.health.intake_rules import (
    GpuReading,
    IntakeRules,
    Readings,
    evaluate,
    vram_needed_mb,
)

pytestmark = pytest.mark.unit

MONDAY_NOON = datetime(2026, 12, 7, 12, 0)  # a Monday
RULES = IntakeRules(temp_limit_c=83, temp_resume_c=78)


def at(temp: int, *, hot: bool = False, rules: IntakeRules = RULES) -> tuple[str | None, bool]:
    verdict = evaluate(rules, Readings(MONDAY_NOON, gpu=GpuReading(temp, 20_000)), hot=hot)
    return verdict.reason, verdict.hot


# ---- GPU temperature, with hysteresis ---------------------------------------------------------


def test_the_gpu_is_held_at_its_limit_and_released_only_below_the_resume_temperature() -> None:
    assert at(82) == (None, False)
    reason, hot = at(86)
    assert (reason, hot) == ("GPU at 86 °C, waiting for 78 °C", True)
    assert at(83) == ("GPU at 83 °C, waiting for 78 °C", True)  # the limit itself holds
    # Cooling, but not yet to 78 °C: still held (no flapping around the limit).
    assert at(80, hot=True) == ("GPU at 80 °C, waiting for 78 °C", True)
    assert at(79, hot=True)[1] is True
    assert at(78, hot=True) == (None, False)
    # Released: it takes the limit again (not 79) to hold anew.
    assert at(82, hot=False) == (None, False)


def test_no_limit_or_no_temperature_never_holds() -> None:
    assert at(99, rules=IntakeRules(temp_limit_c=None, temp_resume_c=None)) == (None, False)
    verdict = evaluate(RULES, Readings(MONDAY_NOON, gpu=GpuReading(None, 20_000)), hot=True)
    assert verdict.reason is None and not verdict.hot
    assert evaluate(RULES, Readings(MONDAY_NOON, gpu=None), hot=True) == evaluate(
        RULES, Readings(MONDAY_NOON)
    )


def test_the_default_resume_temperature_is_five_degrees_under_the_limit() -> None:
    assert Settings().gpu_temp_limit_c == 83 and Settings().temp_resume_c == 78
    assert Settings(gpu_temp_limit_c=90).temp_resume_c == 85
    assert Settings(gpu_temp_limit_c=None).temp_resume_c is None
    assert IntakeRules.from_settings(Settings()).temp_resume_c == 78


# ---- GPU memory -------------------------------------------------------------------------------


def test_the_memory_a_speech_model_needs_is_estimated_from_its_name_or_its_weights() -> None:
    assert (
        vram_needed_mb("tiny")
        < vram_needed_mb("small")
        < vram_needed_mb("medium")
        < vram_needed_mb("large-v3")
    )
    assert (
        vram_needed_mb("large-v3", "int8")
        < vram_needed_mb("large-v3")
        < vram_needed_mb("large-v3", "float32")
    )
    assert vram_needed_mb("large-v3-turbo") == vram_needed_mb("turbo") < vram_needed_mb("large-v2")
    assert vram_needed_mb("distil-large-v3") < vram_needed_mb("large-v3")
    assert vram_needed_mb("Systran/faster-whisper-medium") == vram_needed_mb("medium")
    # A folder of one's own: its weights, half again, and the runtime.
    assert vram_needed_mb("/models/my-whisper", model_bytes=1024 * 1024 * 1024) == 1536 + 300


def test_too_little_free_memory_holds_work_and_says_how_much_is_needed() -> None:
    rules = RULES.needing(1600, "the small speech model")
    short = Readings(MONDAY_NOON, gpu=GpuReading(60, 1200))
    assert (
        evaluate(rules, short).reason == "The GPU has 1.2 GB free; the small speech model needs about 1.6 GB"
    )
    assert evaluate(rules, Readings(MONDAY_NOON, gpu=GpuReading(60, 1700))).reason is None
    # The worker's own model, loaded by an earlier task, counts as free for it.
    assert evaluate(rules, Readings(MONDAY_NOON, gpu=GpuReading(60, 300, own_mb=1500))).reason is None
    # Documents only (no transcription on the GPU): memory is not asked for.
    assert evaluate(RULES, short).reason is None


def test_heat_is_named_before_memory() -> None:
    rules = RULES.needing(1600, "the small speech model")
    assert (
        evaluate(rules, Readings(MONDAY_NOON, gpu=GpuReading(90, 100))).reason
        == "GPU at 90 °C, waiting for 78 °C"
    )


# ---- idle, battery, full screen ---------------------------------------------------------------


def test_only_after_minutes_without_input() -> None:
    rules = IntakeRules(idle_minutes=10)
    busy = evaluate(rules, Readings(MONDAY_NOON, idle_s=42))
    assert busy.reason == "The computer is in use; waiting for 10 minutes without input"
    assert evaluate(rules, Readings(MONDAY_NOON, idle_s=600)).reason is None
    assert evaluate(rules, Readings(MONDAY_NOON, idle_s=None)).reason is None  # cannot tell: no hold
    assert evaluate(IntakeRules(idle_minutes=0), Readings(MONDAY_NOON, idle_s=0)).reason is None  # off


def test_not_on_battery() -> None:
    assert (
        evaluate(IntakeRules(), Readings(MONDAY_NOON, on_battery=True)).reason
        == "The computer runs on its battery"
    )
    assert evaluate(IntakeRules(), Readings(MONDAY_NOON, on_battery=False)).reason is None
    assert evaluate(IntakeRules(), Readings(MONDAY_NOON, on_battery=None)).reason is None  # a desktop
    assert (
        evaluate(IntakeRules(pause_on_battery=False), Readings(MONDAY_NOON, on_battery=True)).reason is None
    )


def test_not_while_a_full_screen_app_holds_the_screen() -> None:
    full = Readings(MONDAY_NOON, fullscreen=True)
    assert evaluate(IntakeRules(), full).reason == "A full-screen app or game is running"
    assert evaluate(IntakeRules(pause_when_fullscreen=False), full).reason is None


# ---- weekly windows ---------------------------------------------------------------------------


def test_windows_across_midnight_follow_boinc_s_rule() -> None:
    windows = parse_windows("Mon-Fri 18:00-08:00, Sat-Sun all day")
    assert windows is not None
    monday = datetime(2026, 12, 7)
    assert windows.contains(monday.replace(hour=7, minute=59))
    assert not windows.contains(monday.replace(hour=8))
    assert not windows.contains(monday.replace(hour=17, minute=59))
    assert windows.contains(monday.replace(hour=18))
    assert windows.contains(monday.replace(hour=23, minute=59))
    saturday = datetime(2026, 12, 12, 12, 0)
    assert windows.contains(saturday) and windows.contains(saturday.replace(hour=0))


def test_outside_the_windows_the_reason_says_when_work_resumes() -> None:
    rules = IntakeRules(windows=parse_windows("Mon-Fri 18:00-08:00, Sat-Sun all day"))
    assert evaluate(rules, Readings(MONDAY_NOON)).reason == (
        "Outside your contribution hours (Mon-Fri 18:00-08:00, Sat-Sun all day); resuming at 18:00"
    )
    assert evaluate(rules, Readings(MONDAY_NOON.replace(hour=19))).reason is None
    weekend = IntakeRules(windows=parse_windows("Sat-Sun all day"))
    assert evaluate(weekend, Readings(MONDAY_NOON)).reason.endswith("resuming at Sat 00:00")  # type: ignore[union-attr]


def test_a_window_that_starts_at_midnight_after_a_whole_day_is_not_a_new_start() -> None:
    windows = parse_windows("Sat all day, Sun 00:00-12:00, Mon 09:00-10:00")
    assert windows is not None
    friday = datetime(2026, 12, 11, 12, 0)
    assert windows.next_start(friday) == datetime(2026, 12, 12, 0, 0)
    sunday = datetime(2026, 12, 13, 13, 0)
    assert windows.next_start(sunday) == datetime(2026, 12, 14, 9, 0)


@pytest.mark.parametrize(
    "day",
    [
        datetime(2026, 3, 29),  # Europe: clocks go forward at 02:00 (02:00-02:59 never happen)
        datetime(2026, 10, 25),  # Europe: clocks go back at 03:00 (02:00-02:59 happen twice)
        datetime(2026, 3, 8),  # United States: forward
        datetime(2026, 11, 1),  # United States: back
    ],
)
def test_windows_use_wall_clock_time_on_the_days_daylight_saving_changes(day: datetime) -> None:
    """Only the local clock's hour and minute count, so "18:00" is 18:00 on both sides of a
    change, and the repeated or skipped hour does not shift the windows."""
    windows = parse_windows("Mon-Sun 01:30-03:30")
    assert windows is not None
    for hour, minute, inside in [(1, 29, False), (1, 30, True), (2, 30, True), (3, 29, True), (3, 30, False)]:
        assert windows.contains(day.replace(hour=hour, minute=minute)) is inside
    # The same wall-clock minute twice (clocks going back: fold 0 and fold 1) is inside both times.
    assert windows.contains(day.replace(hour=2, minute=30, fold=1))


def test_a_clock_running_through_the_change_sees_the_window_by_its_wall_clock_hours() -> None:
    """The gate's clock is ``datetime.now()``: local time. Walk a real zone through both changes."""
    berlin = ZoneInfo("Europe/Berlin")
    windows = parse_windows("Sun 01:00-04:00")
    assert windows is not None

    def local(utc_hour: int, minute: int, day: int, month: int) -> datetime:
        instant = datetime(2026, month, day, utc_hour, minute, tzinfo=UTC)
        return instant.astimezone(berlin).replace(tzinfo=None)

    # Spring: 02:00 CET becomes 03:00 CEST; the window opens at 01:00 and closes at 04:00 local.
    assert local(23, 59, 28, 3).hour == 0 and not windows.contains(local(23, 59, 28, 3))
    assert windows.contains(local(0, 0, 29, 3))  # 01:00 CET
    assert windows.contains(local(1, 0, 29, 3))  # 03:00 CEST, an hour of UTC later
    assert not windows.contains(local(2, 0, 29, 3))  # 04:00 CEST: two hours of UTC after opening
    # Autumn: 03:00 CEST becomes 02:00 CET; the window lasts four hours of UTC.
    assert windows.contains(local(23, 0, 24, 10)) and not windows.contains(local(22, 59, 24, 10))
    assert windows.contains(local(2, 59, 25, 10)) and not windows.contains(local(3, 0, 25, 10))
    # The next start is named in wall-clock time, whatever the offset in between.
    assert windows.next_start(datetime(2026, 3, 28, 12, 0)) == datetime(2026, 3, 29, 1, 0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Mon-Fri", "give days and a time range"),
        ("Moonday 18:00-08:00", "'Moonday' is not a day"),
        ("Mon-Fri 18-08", "is not a time like 18:00"),
        ("Mon 25:00-26:00", "is not a time of day"),
        ("Mon 18:00-18:00", "starts and ends at the same time"),
        ("Mon sometimes", "is not a range like 18:00-08:00 or 'all day'"),
        ("Mon 24:00-08:00", "is not a time of day"),
    ],
)
def test_windows_that_do_not_parse_say_which_part_and_why(text: str, words: str) -> None:
    with pytest.raises(ScheduleError, match=words):
        parse_windows(text)
    with pytest.raises(SettingsError, match="time_windows"):
        Settings(time_windows=text)


def test_windows_parse_days_in_several_spellings() -> None:
    assert parse_windows("") is None and parse_windows(" , ") is None
    windows = parse_windows("monday/Wed/FRIDAY 09:00-17:00; Fri-Mon 20:00-24:00")
    assert windows is not None and windows.text == "monday/Wed/FRIDAY 09:00-17:00, Fri-Mon 20:00-24:00"
    assert windows.contains(datetime(2026, 12, 9, 10, 0))  # Wednesday
    assert not windows.contains(datetime(2026, 12, 8, 10, 0))  # Tuesday
    assert windows.contains(datetime(2026, 12, 13, 21, 0))  # Sunday, inside Fri-Mon


# ---- settings and variables -------------------------------------------------------------------


def test_defaults_hold_for_heat_and_battery_only() -> None:
    rules = IntakeRules.from_settings(Settings())
    assert (rules.temp_limit_c, rules.idle_minutes, rules.pause_on_battery, rules.windows) == (
        83,
        0,
        True,
        None,
    )
    assert rules.pause_when_fullscreen is True


def test_the_rules_travel_to_the_child_as_variables_and_back() -> None:
    settings = dataclasses.replace(
        Settings(),
        gpu_temp_limit_c=80,
        gpu_temp_resume_c=70,
        idle_minutes=5,
        pause_on_battery=False,
        time_windows="Sat-Sun all day",
        pause_when_fullscreen=False,
    )
    env = intake_env(settings)
    assert env["MORAG_GPU_TEMP_LIMIT_C"] == "80" and env["MORAG_PAUSE_ON_BATTERY"] == "off"
    assert IntakeRules.from_env(env) == IntakeRules.from_settings(settings)
    off = intake_env(dataclasses.replace(Settings(), gpu_temp_limit_c=None))
    assert IntakeRules.from_env(off).temp_limit_c is None


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"MORAG_GPU_TEMP_LIMIT_C": "hot"}, "MORAG_GPU_TEMP_LIMIT_C must be a whole number"),
        (
            {"MORAG_GPU_TEMP_LIMIT_C": "200"},
            "MORAG_GPU_TEMP_LIMIT_C: gpu_temp_limit_c must be a whole number from 40",
        ),
        ({"MORAG_GPU_TEMP_RESUME_C": "85"}, "must be below gpu_temp_limit_c"),
        ({"MORAG_PAUSE_ON_BATTERY": "maybe"}, "MORAG_PAUSE_ON_BATTERY must be on or off"),
        ({"MORAG_TIME_WINDOWS": "Mon 9-5"}, "MORAG_TIME_WINDOWS: time_windows: 'Mon 9-5'"),
        ({"MORAG_IDLE_MINUTES": "-3"}, "MORAG_IDLE_MINUTES must be a whole number"),
    ],
)
def test_bad_variables_are_refused_with_their_names(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        apply_env(Settings(), env)


def test_settings_files_without_the_rules_load_with_the_defaults() -> None:
    old = Settings.from_dict({"hub_url": "http://hub:8700", "concurrency": 1})
    assert old.gpu_temp_limit_c == 83 and old.time_windows == "" and old.idle_minutes == 0
    round_trip = Settings.from_dict({k: v for k, v in old.to_dict().items() if k != "version"})
    assert round_trip == old
