"""The hub's maintenance loop: full rounds at their interval, the watchdog alone in between."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from morag_worker.core.server.hub.maintenance import WATCHDOG_INTERVAL_S, HubMaintenance
from morag_worker.core.server.watchdog import RestoreReport

pytestmark = pytest.mark.unit


class FakeAcl:
    async def acls_present(self) -> bool:
        return True

    async def sync_all(self) -> int:
        return 0


class FakeKeys:
    def __init__(self) -> None:
        self.sweeps = 0

    async def sweep_expired(self) -> list[str]:
        self.sweeps += 1
        return []


class FakeWatchdog:
    def __init__(self) -> None:
        self.runs = 0

    def run(self) -> RestoreReport:
        self.runs += 1
        return RestoreReport()


def test_the_watchdog_runs_between_rounds_and_by_default_every_15_s() -> None:
    assert WATCHDOG_INTERVAL_S <= 15
    keys, dog = FakeKeys(), FakeWatchdog()
    maintenance = HubMaintenance(keys, FakeAcl(), dog, 3600, watchdog_interval_s=0.01)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.create_task(maintenance.run())
        while dog.runs < 5:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 10))
    assert maintenance.rounds == 1 and keys.sweeps == 1 and dog.runs >= 5


def test_the_intervals_must_be_positive() -> None:
    kwargs: dict[str, Any] = {"watchdog_interval_s": 0}
    with pytest.raises(ValueError):
        HubMaintenance(FakeKeys(), FakeAcl(), None, 60, **kwargs)  # type: ignore[arg-type]
