"""How the GUI shows each ``WorkerState``: one table, ``PRESENTATION``, read by every view.

The tray icon (icon and tooltip), the menu's actions (which are enabled, "Start" or "Resume"),
the progress window (header title and detail, task rows, the empty-list text), the controller
(whether a worker child runs) and the notification policy (what to say when a state arrives
unasked) all look a state up here, so a new ``WorkerState`` is one entry in ``PRESENTATION``;
``tests/gui/test_state_presentation.py`` fails while a state has none.

Texts that depend on the moment (the tasks in flight, a retry or snooze time) are small pure
functions of a ``Moment``. ``TrayLook``, ``Level`` and ``Notice`` live here too because the
table names them; they are plain values.

Pure Python, no Qt: safe on any thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

from morag_worker.core.supervisor.events import (
    PAUSED,
    RECONNECTING,
    Problem,
    TaskProgress,
    WorkerState,
    WorkerStatus,
)
from morag_worker.core.wording import sentence

from .format import clock_time, percent_text

__all__ = [
    "PRESENTATION",
    "WORKER_ACTIONS",
    "Level",
    "Moment",
    "Notice",
    "NoticeText",
    "Notify",
    "StatePresentation",
    "TrayLook",
    "overall_percent",
    "key_problem",
    "presentation",
    "task_percent",
]

#: Actions whose availability depends on the worker's state (attribute names of ``WorkerActions``).
WORKER_ACTIONS = ("start", "finish", "stop_now", "snooze")


class TrayLook(Enum):
    """What the tray icon shows; each has ``tray-<value>-<theme>.svg`` in ``resources``."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    WAITING = "waiting"
    WORKING = "working"
    FINISHING = "finishing"
    SNOOZED = "snoozed"
    ERROR = "error"


class Level(Enum):
    """How serious a notice is (the balloon's icon, the banner's colour)."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Notice:
    """One notification: a short title and a sentence or two."""

    title: str
    message: str
    level: Level = Level.INFO


@dataclass(frozen=True)
class NoticeText:
    """A notice whose message is the status's own sentence, or ``fallback`` when it has none."""

    title: str
    fallback: str
    level: Level = Level.INFO
    suffix: str = ""  # appended to the message either way

    def notice(self, detail: str) -> Notice:
        return Notice(self.title, sentence(detail or self.fallback) + self.suffix, self.level)


class Notify(Enum):
    """When arriving in a state is worth a notification."""

    NEVER = "never"
    ALWAYS = "always"  # even when the user's request led here (an error stops the worker)
    ONCE_PER_OUTAGE = "once_per_outage"  # the first of a run of retries
    UNASKED_FROM_WORK = "unasked_from_work"  # only when a working worker got here on its own


@dataclass(frozen=True)
class Moment:
    """What a text may depend on: the status, the tasks in flight, and now (epoch seconds)."""

    status: WorkerStatus
    tasks: Sequence[TaskProgress]
    now: float

    @property
    def who(self) -> str:
        """``"Signed in as alice · gpu-tasks-alice, cpu-tasks-alice"``; parts left out when unknown."""
        status = self.status
        parts = (f"Signed in as {status.user_id}" if status.user_id else "", ", ".join(status.queues))
        return " · ".join(part for part in parts if part)


@dataclass(frozen=True)
class StatePresentation:
    """Everything the GUI shows or decides by one ``WorkerState``.

    Attributes:
        look: The tray icon with no task in flight.
        busy_look: The tray icon with a task in flight.
        tooltip: The tray tooltip's text (without the app's name; ``tray_icon`` adds it and truncates).
        header: The progress window's title and detail line.
        enabled: Which of ``WORKER_ACTIONS`` may be asked.
        enabled_by: When given, decides ``enabled`` by the status (finishing: what follows).
        start_label: The text of the start action ("Resume" while snoozed).
        idle: No worker child runs and none will start on its own: quitting closes at once, new
            settings apply at the next start.
        child_runs: A worker child runs (or is starting): tasks may be in flight. When False the
            tasks in flight are over.
        shows_tasks: The window keeps its task rows (they go when the state has none).
        empty_text: The window's text when no task is in flight.
        notify: When arriving here is notified.
        notice: What is said then.
        recovered: What is said when the worker runs again after this state, unasked.
        ends_outage: Arriving here closes a run of retries (the next BACKOFF is news again).
        works: The worker works (again) here: the previous state's ``recovered`` may be said.
    """

    look: TrayLook
    busy_look: TrayLook
    tooltip: Callable[[Moment], str]
    header: Callable[[Moment], tuple[str, str]]
    enabled: frozenset[str]
    idle: bool
    child_runs: bool
    start_label: str = "Start"
    shows_tasks: bool = False
    empty_text: Callable[[Moment], str] = lambda _m: "No task in progress."
    notify: Notify = Notify.NEVER
    notice: NoticeText | None = None
    recovered: NoticeText | None = None
    ends_outage: bool = False
    works: bool = False
    enabled_by: Callable[[WorkerStatus], frozenset[str]] | None = None

    def look_for(self, status: WorkerStatus, busy: bool) -> TrayLook:
        """The icon: ``busy_look`` with a task in flight, else ``look``; never the working colours
        while the worker has lost the broker (a revoked key is being found out then)."""
        if status.message == RECONNECTING:
            return TrayLook.CONNECTING
        return self.busy_look if busy else self.look

    def actions(self, status: WorkerStatus) -> frozenset[str]:
        """Which of ``WORKER_ACTIONS`` may be asked with ``status`` (``enabled`` unless it depends)."""
        return self.enabled_by(status) if self.enabled_by is not None else self.enabled


# -- percentages ---------------------------------------------------------------------


def task_percent(progress: TaskProgress) -> float | None:
    """The task's percentage: as reported, else ``done / total``; None when unknown."""
    if progress.percent is not None:
        return progress.percent
    if progress.total:
        return 100.0 * progress.done / progress.total
    return None


def overall_percent(tasks: Sequence[TaskProgress]) -> float | None:
    """The mean of the tasks' known percentages, or None when none is known."""
    known = [pct for t in tasks if (pct := task_percent(t)) is not None]
    return sum(known) / len(known) if known else None


# -- the texts, state by state ----------------------------------------------------------------------


def _snoozed_until(m: Moment) -> str:
    until = m.status.snoozed_until
    return f"Snoozed until {clock_time(until, m.now)}" if until is not None else "Snoozed until you resume"


def _running_tooltip(m: Moment) -> str:
    if m.status.message == RECONNECTING:
        return "Reconnecting…"
    if not m.tasks:
        queues = m.status.queues
        return "Waiting for work" + (f" on {', '.join(queues)}" if queues else "")
    pct = percent_text(overall_percent(m.tasks))
    if len(m.tasks) == 1:
        name = m.tasks[0].filename or "a task"
        return f"Working on {name}" + (f": {pct}" if pct else "")
    return f"Working on {len(m.tasks)} tasks" + (f": {pct}" if pct else "")


def _running_header(m: Moment) -> tuple[str, str]:
    if m.status.message == RECONNECTING:
        return "Reconnecting…", "The connection to your queue was lost; the worker is reconnecting."
    if m.tasks:
        pct = percent_text(overall_percent(m.tasks))
        return (f"Working: {pct}" if pct else "Working"), m.who
    return "Waiting for work", m.who or m.status.message


def _finishing_count(m: Moment) -> int:
    return max(len(m.tasks), m.status.active_tasks)


def _finishing_title(m: Moment) -> str:
    count = _finishing_count(m)
    if count > 1:
        return f"Finishing {count} tasks"
    return "Finishing the current task" if count else "Finishing"


def _after_finishing(m: Moment) -> str:
    """What follows, as the end of a sentence: "the worker pauses", "the worker snoozes until 14:05"."""
    then = m.status.then
    if then is WorkerState.STARTING:
        return "the worker restarts and takes new tasks again"
    if then is WorkerState.SNOOZED:
        until = m.status.snoozed_until
        return "the worker snoozes " + (
            f"until {clock_time(until, m.now)}" if until is not None else "until you resume"
        )
    return "the worker pauses"


def _finishing_tooltip(m: Moment) -> str:
    then = m.status.then
    short = (
        "restarting"
        if then is WorkerState.STARTING
        else "snoozing"
        if then is WorkerState.SNOOZED
        else "pausing"
    )
    text = f"{_finishing_title(m)}, then {short}"
    if m.tasks and (pct := percent_text(overall_percent(m.tasks))):
        text += f" ({pct})"
    return text


def _finishing_header(m: Moment) -> tuple[str, str]:
    count = _finishing_count(m)
    done = "they are done" if count > 1 else "it is done"
    detail = f"No new task is taken; when {done}, {_after_finishing(m)}."
    if m.status.then is not WorkerState.STARTING:
        detail += " Choose Resume to keep working."
    return _finishing_title(m), detail


def _finishing_actions(status: WorkerStatus) -> frozenset[str]:
    if status.then is WorkerState.STARTING:  # already resuming: pausing or snoozing undo it
        return frozenset({"finish", "stop_now", "snooze"})
    if status.then is WorkerState.SNOOZED:
        return frozenset({"start", "finish", "stop_now", "snooze"})
    return frozenset({"start", "stop_now", "snooze"})


def _backoff_tooltip(m: Moment) -> str:
    status = m.status
    text = "Cannot connect" + (
        f"; retrying at {clock_time(status.retry_at, m.now)}" if status.retry_at else ""
    )
    return text + (f": {status.message}" if status.message else "")


def _backoff_header(m: Moment) -> tuple[str, str]:
    status = m.status
    retry = f" Retrying at {clock_time(status.retry_at, m.now)}." if status.retry_at else " Retrying soon."
    return "Cannot connect", sentence(status.message or "The hub or the broker cannot be reached.") + retry


def _starting_header(m: Moment) -> tuple[str, str]:
    """While the hub is asked: the hub's address, and how to stop waiting for it."""
    message = sentence(m.status.message) if m.status.message else "Connecting to the hub and the broker."
    if m.status.message.startswith("Connecting to the hub"):
        message += " Choose Stop now to stop waiting."
    return "Connecting…", message


def _hub_retry(m: Moment) -> str:
    """``"Hub unreachable, retrying in 8 s."``, counting down to the status's ``retry_at``."""
    retry_at = m.status.retry_at
    if retry_at is None:
        return m.status.message or "Hub unreachable, retrying soon."
    left = math.ceil(retry_at - m.now)
    return f"Hub unreachable, retrying in {left} s." if left > 0 else "Hub unreachable, retrying now."


def _hub_wait_header(m: Moment) -> tuple[str, str]:
    waiting = "; the task in hand waits for it" if m.tasks else ""
    return "Hub unreachable", f"{_hub_retry(m)} No new task is taken until the hub answers{waiting}."


def _held_reason(m: Moment) -> str:
    """``"GPU at 86 °C, waiting for 78 °C"``: why the contributor's rules take no new task now."""
    return m.status.held_reason or "your rules for when to contribute"


def _held_tooltip(m: Moment) -> str:
    text = f"Paused: {_held_reason(m)}"
    if m.tasks:
        text += "; finishing the task in hand" if len(m.tasks) == 1 else f"; finishing {len(m.tasks)} tasks"
    return text


def _held_header(m: Moment) -> tuple[str, str]:
    finishing = " The task in hand finishes first." if m.tasks else ""
    return (
        "Paused by your rules",
        f"{sentence(_held_reason(m))}{finishing} New tasks are taken again by themselves; "
        "the rules are under Settings, When to contribute.",
    )


def _stopped_title(m: Moment) -> str:
    """ "Paused" after "Finish current task and pause", else "Stopped"."""
    return "Paused" if m.status.message == PAUSED else "Stopped"


def _stopped_header(m: Moment) -> tuple[str, str]:
    message = m.status.message
    if message in ("", "Stopped", PAUSED):
        return _stopped_title(m), "Choose Start to work."
    return _stopped_title(m), sentence(message)


def key_problem(status: WorkerStatus) -> tuple[str, str] | None:
    """(title, sentence) when the worker stopped for want of a usable key; None otherwise.

    The supervisor's own message is the terminal's (it names ``morag-worker login`` and
    ``--api-key-file``); a window says what happened and the button that fixes it.
    """
    if status.problem is Problem.KEY_REJECTED:
        return (
            "API key refused",
            "The hub did not accept the API key: it may have been revoked or have expired. "
            "Choose Enter key… and paste a valid key from your MoRAG account.",
        )
    if status.problem is Problem.NO_API_KEY:
        if status.message.lower().startswith("no api key"):
            return (
                "API key missing",
                "No API key is stored for this hub. "
                "Choose Enter key… and paste the key from your MoRAG account.",
            )
        return (
            "API key unavailable",
            "The API key could not be read from where it is kept. Choose Enter key… to enter it again.",
        )
    return None


def _crashed_header(m: Moment) -> tuple[str, str]:
    if (key := key_problem(m.status)) is not None:
        return key
    message = m.status.message
    return "Stopped by an error", sentence(message) if message else "See the Log tab for details."


def _crashed_tooltip(m: Moment) -> str:
    if (key := key_problem(m.status)) is not None:
        return key[0]
    return "Stopped by an error" + (f": {m.status.message}" if m.status.message else "")


def _waiting_for_work(m: Moment) -> str:
    text = "No task right now. Waiting for work from your queues…"
    return text + (f"\n{m.status.notice}" if m.status.notice else "")


def _text(text: str) -> Callable[[Moment], str]:
    return lambda _m: text


_WORKING_ACTIONS = frozenset({"finish", "stop_now", "snooze"})
_IDLE_ACTIONS = frozenset({"start", "snooze"})

_TABLE: dict[WorkerState, StatePresentation] = {
    WorkerState.STOPPED: StatePresentation(
        look=TrayLook.STOPPED,
        busy_look=TrayLook.STOPPED,
        tooltip=_stopped_title,
        header=_stopped_header,
        enabled=_IDLE_ACTIONS,
        idle=True,
        child_runs=False,
        notify=Notify.UNASKED_FROM_WORK,
        notice=NoticeText(
            "MoRAG Worker stopped", "The worker stopped. Choose Start to resume.", Level.WARNING
        ),
        ends_outage=True,
    ),
    WorkerState.STARTING: StatePresentation(
        look=TrayLook.CONNECTING,
        busy_look=TrayLook.CONNECTING,
        tooltip=_text("Connecting…"),
        header=_starting_header,
        enabled=_WORKING_ACTIONS,
        idle=False,
        child_runs=True,
    ),
    WorkerState.RUNNING: StatePresentation(
        look=TrayLook.WAITING,
        busy_look=TrayLook.WORKING,
        tooltip=_running_tooltip,
        header=_running_header,
        enabled=_WORKING_ACTIONS,
        idle=False,
        child_runs=True,
        shows_tasks=True,
        empty_text=_waiting_for_work,
        ends_outage=True,
        works=True,
    ),
    WorkerState.WAITING_FOR_HUB: StatePresentation(
        look=TrayLook.CONNECTING,
        busy_look=TrayLook.CONNECTING,
        tooltip=_hub_retry,
        header=_hub_wait_header,
        enabled=_WORKING_ACTIONS,
        idle=False,
        child_runs=True,
        shows_tasks=True,
        empty_text=_text("No task in progress. No new task is taken until the hub answers."),
        notify=Notify.ONCE_PER_OUTAGE,
        notice=NoticeText(
            "MoRAG Worker cannot reach the hub",
            "Hub unreachable.",
            Level.WARNING,
            suffix=" No new task is taken meanwhile, and no task is lost; no action is needed.",
        ),
        recovered=NoticeText("MoRAG Worker reaches the hub again", "Waiting for work.", Level.INFO),
    ),
    WorkerState.HELD_BACK: StatePresentation(
        look=TrayLook.SNOOZED,
        busy_look=TrayLook.WORKING,
        tooltip=_held_tooltip,
        header=_held_header,
        enabled=_WORKING_ACTIONS,
        idle=False,
        child_runs=True,
        shows_tasks=True,
        empty_text=lambda m: f"No task in progress. No new task is taken: {_held_reason(m)}.",
        ends_outage=True,
        works=True,
    ),
    WorkerState.FINISHING: StatePresentation(
        look=TrayLook.FINISHING,
        busy_look=TrayLook.FINISHING,
        tooltip=_finishing_tooltip,
        header=_finishing_header,
        enabled=frozenset({"start", "stop_now", "snooze"}),
        enabled_by=_finishing_actions,
        idle=False,
        child_runs=True,
        start_label="Resume",
        shows_tasks=True,
    ),
    WorkerState.STOPPING: StatePresentation(
        look=TrayLook.FINISHING,
        busy_look=TrayLook.FINISHING,
        tooltip=_text("Stopping; the task goes back to the queue"),
        header=lambda _m: ("Stopping", "The task in progress goes back to your queue."),
        enabled=frozenset(),
        idle=False,
        child_runs=True,
    ),
    WorkerState.BACKOFF: StatePresentation(
        look=TrayLook.ERROR,
        busy_look=TrayLook.ERROR,
        tooltip=_backoff_tooltip,
        header=_backoff_header,
        enabled=frozenset({"start", "stop_now", "snooze"}),
        idle=False,
        child_runs=False,
        notify=Notify.ONCE_PER_OUTAGE,
        notice=NoticeText(
            "MoRAG Worker cannot connect",
            "The hub or the broker cannot be reached.",
            Level.WARNING,
            suffix=" It keeps retrying; no action is needed if your network is down.",
        ),
        recovered=NoticeText("MoRAG Worker is connected again", "Waiting for work.", Level.INFO),
    ),
    WorkerState.CRASHED: StatePresentation(
        look=TrayLook.ERROR,
        busy_look=TrayLook.ERROR,
        tooltip=_crashed_tooltip,
        header=_crashed_header,
        enabled=_IDLE_ACTIONS,
        idle=True,
        child_runs=False,
        notify=Notify.ALWAYS,
        notice=NoticeText(
            "MoRAG Worker stopped after an error",
            "The worker could not keep running.",
            Level.ERROR,
            suffix=" See the log for details.",
        ),
        recovered=NoticeText("MoRAG Worker is running again", "Waiting for work.", Level.INFO),
    ),
    WorkerState.SNOOZED: StatePresentation(
        look=TrayLook.SNOOZED,
        busy_look=TrayLook.SNOOZED,
        tooltip=_snoozed_until,
        header=lambda m: (_snoozed_until(m), "Choose Resume to start again now."),
        enabled=_IDLE_ACTIONS,
        idle=True,
        child_runs=False,
        start_label="Resume",
        notify=Notify.UNASKED_FROM_WORK,
        notice=NoticeText("MoRAG Worker paused", "The worker is snoozed.", Level.INFO),
        ends_outage=True,
    ),
}

#: The presentation of every ``WorkerState`` (read-only).
PRESENTATION: Mapping[WorkerState, StatePresentation] = MappingProxyType(_TABLE)


def presentation(state: WorkerState) -> StatePresentation:
    """``PRESENTATION[state]``."""
    return PRESENTATION[state]
