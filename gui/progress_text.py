"""What a task row says: stage, ``page 489 of 1,588 · 47.7 pages/s · 30 s left``, and the bar's text.

The wire's progress meta has no unit (DESIGN §2: bytes while downloading, the processor's own unit
after), but processors say what they count in their message ("page 489 of 1588", "sheet 2 of 5:
Sales", "transcribed 12:34"). The row shows that message once, with thousands separators, and gives
the rate the same unit; a rate whose unit is unknown is not shown, and neither is a count without
a total ("0" alone says nothing). The bar's text is ``percent_text``, as in the header, so both
round the same way.

Pure functions, no Qt; safe on any thread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from morag_worker.core.supervisor.events import TaskProgress
from morag_worker.core.units import human_bytes, human_duration, human_rate
from morag_worker.core.wording import capitalised

from .format import percent_text
from .state_presentation import task_percent

__all__ = ["LOST_WORK_PERCENT", "RowTexts", "lost_work", "row_texts"]

#: "Stop now" asks first when a task is further along than this (a percentage).
LOST_WORK_PERCENT = 10.0

STAGE_NAMES = {"DOWNLOADING": "Downloading", "PROCESSING": "Processing"}
#: "page 489 of 1588", "sheet 2 of 5: Sales": a noun, a count, a total, and what follows.
_COUNT = re.compile(r"^(?P<noun>[A-Za-z]+) (?P<n>\d[\d,]*) of (?P<total>\d[\d,]*)(?P<rest>.*)$", re.S)
_MEDIA = re.compile(r"^transcri", re.I)


@dataclass(frozen=True)
class RowTexts:
    """The texts of one task row.

    Attributes:
        stage: "Downloading" or "Processing".
        detail: Amount, rate and time left, joined by " · "; "" when there is nothing to say.
        percent: The bar's value; None when unknown (a busy bar).
        bar_text: The bar's label, ``percent_text(percent)``.
    """

    stage: str
    detail: str
    percent: float | None
    bar_text: str


def _plural(noun: str) -> str:
    return noun if noun.endswith("s") else noun + "s"


def _with_separators(number: str) -> str:
    return f"{int(number.replace(',', '')):,}"


def _amount_and_rate(p: TaskProgress) -> tuple[str, str]:
    if p.stage == "DOWNLOADING":
        if p.total:
            amount = f"{human_bytes(p.done)} of {human_bytes(p.total)}"
        else:
            amount = f"{human_bytes(p.done)} downloaded" if p.done else ""
        return amount, (human_rate(p.speed) if p.speed else "")
    message = p.message.strip()
    if count := _COUNT.match(message):
        amount = (
            f"{count['noun']} {_with_separators(count['n'])} of {_with_separators(count['total'])}"
            f"{count['rest']}"
        )
        rate = human_rate(p.speed, unit=_plural(count["noun"].lower())) if p.speed else ""
        return capitalised(amount), rate
    if _MEDIA.match(message):
        rate = f"{p.speed:.1f}× real time" if p.speed else ""
        return capitalised(message), rate
    return capitalised(message), ""


def row_texts(p: TaskProgress) -> RowTexts:
    """The row's texts for ``p``; pure."""
    amount, rate = _amount_and_rate(p)
    parts = [amount, rate]
    if p.eta_s is not None:
        parts.append(f"{human_duration(p.eta_s)} left")
    percent = task_percent(p)
    return RowTexts(
        stage=STAGE_NAMES.get(p.stage, p.stage.title()),
        detail=" · ".join(part for part in parts if part),
        percent=percent,
        bar_text=percent_text(percent),
    )


def _what(p: TaskProgress) -> str:
    """``"report.pdf, a 4,764-page PDF,"``: as much as is known of the file."""
    name = p.filename or "a task"
    kind = name.rsplit(".", 1)[-1].upper() if "." in name else ""
    count = _COUNT.match(p.message.strip()) if p.stage != "DOWNLOADING" else None
    if count and kind:
        total = _with_separators(count["total"])
        return f"{name}, a {total}-{count['noun'].lower()} {kind},"
    return name


def lost_work(tasks: list[TaskProgress], threshold: float = LOST_WORK_PERCENT) -> list[str]:
    """What "Stop now" throws away, one sentence per task past ``threshold`` percent; pure.

    ``"33 % of report.pdf, a 4,764-page PDF, will be redone from the start."`` A task goes back to
    the queue whole: whoever takes it next starts again from its first page.
    """
    lines = []
    for p in tasks:
        percent = task_percent(p)
        if percent is not None and percent > threshold:
            lines.append(f"{percent_text(percent)} of {_what(p)} will be redone from the start.")
    return lines
