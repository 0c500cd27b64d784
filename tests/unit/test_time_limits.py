"""The worker's request handling: a message's ``timelimit`` header may lower the worker's time limits, never
raise them (issue 10, D10); dead pool processes' workspaces are swept when a new one starts work."""

from __future__ import annotations

from typing import Any

import pytest

from morag_worker.core.execution.consumer import capped_time_limits, first_task_of

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("asked", "capped"),
    [
        ([10**9, 10**9], (60.0, 30.0)),  # more than the worker allows: the worker's own
        ([20, 10], (20.0, 10.0)),  # less: the submitter's
        ([None, 10], (None, 10.0)),  # None: the worker's own applies
        ([0, -5], (None, None)),
        (["9999", True], (None, None)),  # not numbers: ignored, never trusted
        ("9999", (None, None)),
        ([1, 2, 3], (None, None)),
        (None, (None, None)),
    ],
)
def test_message_time_limits_are_capped_at_the_workers_own(asked: Any, capped: tuple[Any, Any]) -> None:
    assert capped_time_limits(asked, hard=60, soft=30) == capped


def test_without_own_limits_a_message_may_set_them() -> None:
    assert capped_time_limits([100, 50], hard=None, soft=None) == (100.0, 50.0)


def test_a_pool_process_counts_as_new_only_at_its_first_task() -> None:
    """The main process sweeps dead pool processes' workspaces when a new one takes its first task
    (it replaced one that may have died after its failure was handled), not at every task."""
    assert first_task_of(-101) is True
    assert first_task_of(-101) is False
    assert first_task_of(-102) is True
