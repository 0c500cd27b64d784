"""Comparing the worker version the hub advertises with our own."""

from __future__ import annotations

import pytest

from morag_worker.core.hub_client import QueueInfo, newer_version

pytestmark = pytest.mark.unit

_INFO = {"user_id": "u", "gpu_queue": "gpu-tasks-u", "cpu_queue": "cpu-tasks-u", "broker": {}}


@pytest.mark.parametrize(
    ("advertised", "own", "expected"),
    [
        ("0.2.0", "0.1.0", "0.2.0"),
        ("0.1.1", "0.1.0", "0.1.1"),
        ("1.0", "0.9.9", "1.0"),
        ("v1.2.3", "1.2.2", "v1.2.3"),
        ("0.10.0", "0.9.0", "0.10.0"),  # numeric, not alphabetic
        ("0.2.0", "0.2.0rc1", "0.2.0"),  # the release after its candidate
        ("0.2.0rc2", "0.2.0rc1", "0.2.0rc2"),
        ("0.1.0", "0.1.0", None),
        ("0.1", "0.1.0", None),
        ("0.0.9", "0.1.0", None),  # a hub behind us says nothing
        ("0.2.0rc1", "0.2.0", None),
        ("", "0.1.0", None),
        (None, "0.1.0", None),
        ("latest", "0.1.0", None),  # unreadable: no notice rather than a wrong one
        ("0.2.0", "not-a-version", None),
    ],
)
def test_newer_version(advertised: str | None, own: str, expected: str | None) -> None:
    assert newer_version(advertised, own) == expected


def test_queue_info_reads_the_advertised_version_when_there_is_one() -> None:
    assert QueueInfo.from_json({**_INFO, "worker_version": " 0.3.0 "}).worker_version == "0.3.0"
    assert QueueInfo.from_json(_INFO).worker_version is None  # an older hub
    assert QueueInfo.from_json({**_INFO, "worker_version": 3}).worker_version is None
