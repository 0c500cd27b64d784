"""The one per-state table: every WorkerState has a row, and each row is complete and coherent."""

from __future__ import annotations

import pytest

from morag_worker.core.supervisor.events import TaskProgress, WorkerState, WorkerStatus
from morag_worker.gui.notifications import NotificationPolicy
from morag_worker.gui.state_presentation import (
    PRESENTATION,
    WORKER_ACTIONS,
    Moment,
    Notify,
    TrayLook,
    presentation,
)
from tests.gui.conftest import NOW

pytestmark = pytest.mark.gui


def test_every_worker_state_has_a_presentation() -> None:
    # A new WorkerState fails here first: add its row to state_presentation._TABLE.
    assert set(PRESENTATION) == set(WorkerState)


@pytest.mark.parametrize("state", list(WorkerState))
def test_each_row_is_usable(state: WorkerState) -> None:
    shown = presentation(state)
    assert isinstance(shown.look, TrayLook) and isinstance(shown.busy_look, TrayLook)
    assert shown.enabled <= set(WORKER_ACTIONS)
    assert (shown.notify is Notify.NEVER) == (shown.notice is None)
    assert not (shown.idle and shown.child_runs)
    task = TaskProgress("t", "PROCESSING", 1, 2, None, filename="a.pdf")
    for tasks in ([], [task]):
        moment = Moment(WorkerStatus(state, "why", user_id="alice", queues=("q",)), tasks, NOW)
        assert shown.tooltip(moment)
        title, _detail = shown.header(moment)
        assert title
        assert shown.empty_text(moment)


def test_only_the_working_states_look_different_with_a_task() -> None:
    # HELD_BACK: paused by the contributor's rules, but a task in hand still finishes.
    differ = {state for state, shown in PRESENTATION.items() if shown.look is not shown.busy_look}
    assert differ == {WorkerState.RUNNING, WorkerState.HELD_BACK}
    assert presentation(WorkerState.HELD_BACK).busy_look is TrayLook.WORKING
    assert presentation(WorkerState.RUNNING).busy_look is TrayLook.WORKING


@pytest.mark.parametrize(
    ("status", "tooltip", "header"),
    [
        (WorkerStatus(WorkerState.STOPPED, "Stopped"), "Stopped", ("Stopped", "Choose Start to work.")),
        (
            WorkerStatus(WorkerState.STARTING),
            "Connecting…",
            ("Connecting…", "Connecting to the hub and the broker."),
        ),
        (
            WorkerStatus(WorkerState.STOPPING),
            "Stopping; the task goes back to the queue",
            ("Stopping", "The task in progress goes back to your queue."),
        ),
        (
            WorkerStatus(WorkerState.BACKOFF, "hub unreachable"),
            "Cannot connect: hub unreachable",
            ("Cannot connect", "Hub unreachable. Retrying soon."),
        ),
        (
            WorkerStatus(WorkerState.CRASHED),
            "Stopped by an error",
            ("Stopped by an error", "See the Log tab for details."),
        ),
        (
            WorkerStatus(WorkerState.SNOOZED),
            "Snoozed until you resume",
            ("Snoozed until you resume", "Choose Resume to start again now."),
        ),
    ],
)
def test_texts_without_tasks(status: WorkerStatus, tooltip: str, header: tuple[str, str]) -> None:
    moment = Moment(status, [], NOW)
    shown = presentation(status.state)
    assert (shown.tooltip(moment), shown.header(moment)) == (tooltip, header)


def test_waiting_for_the_hub_counts_down_to_the_next_try() -> None:
    shown = presentation(WorkerState.WAITING_FOR_HUB)
    status = WorkerStatus(
        WorkerState.WAITING_FOR_HUB, "Hub unreachable, retrying in 8 s.", retry_at=NOW + 7.2
    )
    assert shown.tooltip(Moment(status, [], NOW)) == "Hub unreachable, retrying in 8 s."
    assert shown.tooltip(Moment(status, [], NOW + 5)) == "Hub unreachable, retrying in 3 s."
    assert shown.tooltip(Moment(status, [], NOW + 9)) == "Hub unreachable, retrying now."
    task = TaskProgress("t", "DOWNLOADING", 1, 2, None, filename="a.pdf")
    assert shown.header(Moment(status, [task], NOW)) == (
        "Hub unreachable",
        "Hub unreachable, retrying in 8 s. No new task is taken until the hub answers; "
        "the task in hand waits for it.",
    )
    assert shown.child_runs and shown.shows_tasks and not shown.idle


def test_a_hub_outage_is_notified_once_and_its_end_too() -> None:
    policy = NotificationPolicy()
    assert policy.on_status(WorkerStatus(WorkerState.RUNNING, "Waiting for work"), expected=True) is None
    first = policy.on_status(
        WorkerStatus(WorkerState.WAITING_FOR_HUB, "Hub unreachable, retrying in 1 s.", retry_at=NOW),
        expected=False,
    )
    assert first is not None and first.title == "MoRAG Worker cannot reach the hub"
    assert "no task is lost" in first.message
    again = WorkerStatus(WorkerState.WAITING_FOR_HUB, "Hub unreachable, retrying in 2 s.", retry_at=NOW + 2)
    assert policy.on_status(again, expected=False) is None
    back = policy.on_status(WorkerStatus(WorkerState.RUNNING, "Working on 1 task"), expected=False)
    assert back is not None and back.title == "MoRAG Worker reaches the hub again"


def test_a_notice_built_from_a_status_message_is_sentences() -> None:
    from morag_worker.gui.notifications import NotificationPolicy

    status = WorkerStatus(
        WorkerState.BACKOFF, "Cannot reach the hub: no connection could be made; retrying in 5 s (attempt 2)"
    )
    notice = NotificationPolicy().on_status(status, expected=False)
    assert notice is not None
    assert "(attempt 2). It keeps retrying;" in notice.message and notice.message.endswith(".")


def test_finishing_texts_count_the_tasks_and_say_what_follows() -> None:
    status = WorkerStatus(WorkerState.FINISHING, "Finishing 2 tasks, then restarting", active_tasks=2,
                          then=WorkerState.STARTING)  # fmt: skip
    shown = presentation(WorkerState.FINISHING)
    title, detail = shown.header(Moment(status, [], NOW))
    assert title == "Finishing 2 tasks" and "the worker restarts" in detail and "pauses" not in detail
    assert shown.tooltip(Moment(status, [], NOW)) == "Finishing 2 tasks, then restarting"
    assert shown.actions(status) == {"finish", "stop_now", "snooze"}  # already resuming
    paused = WorkerStatus(WorkerState.FINISHING, "", active_tasks=1, then=WorkerState.STOPPED)
    assert "start" in shown.actions(paused) and shown.start_label == "Resume"
    stopped = presentation(WorkerState.STOPPED)
    assert stopped.header(Moment(WorkerStatus(WorkerState.STOPPED, "Paused"), [], NOW))[0] == "Paused"


def test_held_back_says_which_rule_holds_work_and_that_the_task_in_hand_finishes() -> None:
    shown = presentation(WorkerState.HELD_BACK)
    reason = "GPU at 86 °C, waiting for 78 °C"
    status = WorkerStatus(WorkerState.HELD_BACK, f"Paused: {reason}.", held_reason=reason)
    task = TaskProgress("t", "PROCESSING", 1, 2, None, filename="a.wav")
    assert shown.tooltip(Moment(status, [], NOW)) == "Paused: GPU at 86 °C, waiting for 78 °C"
    assert shown.tooltip(Moment(status, [task], NOW)) == (
        "Paused: GPU at 86 °C, waiting for 78 °C; finishing the task in hand"
    )
    title, detail = shown.header(Moment(status, [task], NOW))
    assert title == "Paused by your rules"
    assert detail.startswith("GPU at 86 °C, waiting for 78 °C. The task in hand finishes first.")
    assert "Settings, When to contribute" in detail
    assert shown.empty_text(Moment(status, [], NOW)) == (
        "No task in progress. No new task is taken: GPU at 86 °C, waiting for 78 °C."
    )
    # Idle, it looks paused; with a task in hand, it looks at work. No balloon: a rule is routine.
    assert (shown.look, shown.busy_look, shown.notify) == (TrayLook.SNOOZED, TrayLook.WORKING, Notify.NEVER)
    assert shown.child_runs and "finish" in shown.enabled and "stop_now" in shown.enabled
