"""The hub's periodic maintenance: ACL users, expired keys and stranded work (DESIGN §3).

One asyncio task in the hub's lifespan runs a round at start-up and then every ``interval_s``:

1. **ACL users.** Redis keeps ACL users in memory only. The first round provisions every user from
   the key store; later rounds do it again when the marker user is gone (Redis restarted).
2. **Expired keys.** ``sweep_expired`` removes them, and through the ACL hook their passwords,
   disconnecting workers that logged in with them.
3. **Stranded work.** The watchdog puts back in their queue the deliveries no live worker claims
   (presence) and those older than the visibility timeout (blocking kombu and redis-py calls, so in
   a worker thread). It also runs between rounds, every ``watchdog_interval_s`` (15 s) when that is
   shorter than the round's interval: with presence's 30 s TTL, a dead worker's task is back in its
   queue within 45 s of the death plus one restore.

A failing step is logged and the others still run; the next round tries again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from morag_worker.core.auth import APIKeyService
from morag_worker.core.server.acl import RedisAclHook
from morag_worker.core.server.watchdog import Watchdog

__all__ = ["WATCHDOG_INTERVAL_S", "HubMaintenance", "MaintenanceRound"]

log = structlog.get_logger(__name__)

WATCHDOG_INTERVAL_S = 15.0


@dataclass
class MaintenanceRound:
    """What one round did (``None``: that step did not run or failed, see ``errors``)."""

    users_synced: int | None = None
    keys_swept: int | None = None
    deliveries_restored: int | None = None
    errors: dict[str, str] = field(default_factory=dict)


class HubMaintenance:
    """Runs on the hub's event loop; the watchdog's blocking pass goes to a thread."""

    def __init__(
        self,
        keys: APIKeyService,
        acl: RedisAclHook,
        watchdog: Watchdog | None,
        interval_s: float,
        *,
        watchdog_interval_s: float = WATCHDOG_INTERVAL_S,
    ) -> None:
        if interval_s <= 0 or watchdog_interval_s <= 0:
            raise ValueError("the maintenance interval must be positive")
        self.watchdog_interval_s = watchdog_interval_s
        self._keys = keys
        self._acl = acl
        self._watchdog = watchdog
        self.interval_s = interval_s
        self._provisioned = False
        self.rounds = 0

    async def run_once(self) -> MaintenanceRound:
        result = MaintenanceRound()
        try:
            if not self._provisioned or not await self._acl.acls_present():
                result.users_synced = await self._acl.sync_all()
                self._provisioned = True
                log.info("hub.acl_provisioned", users=result.users_synced)
        except Exception as exc:  # noqa: BLE001 - logged; retried next round
            result.errors["acl"] = repr(exc)
        try:
            result.keys_swept = len(await self._keys.sweep_expired())
        except Exception as exc:  # noqa: BLE001 - logged; retried next round
            result.errors["sweep"] = repr(exc)
        await self._restore(result)
        self.rounds += 1
        if result.errors:
            log.warning("hub.maintenance_errors", errors=result.errors)
        return result

    async def _restore(self, result: MaintenanceRound) -> None:
        if self._watchdog is None:
            return
        try:
            report = await asyncio.to_thread(self._watchdog.run)
            result.deliveries_restored = report.total
            if report.failed:
                result.errors["watchdog"] = f"restore failed for {sorted(report.failed)}"
        except Exception as exc:  # noqa: BLE001 - logged; retried next round
            result.errors["watchdog"] = repr(exc)

    async def restore_once(self) -> MaintenanceRound:
        """The watchdog alone (between full rounds)."""
        result = MaintenanceRound()
        await self._restore(result)
        if result.errors:
            log.warning("hub.maintenance_errors", errors=result.errors)
        return result

    async def run(self) -> None:
        """Run rounds until cancelled (the hub's shutdown); the watchdog also runs in between."""
        loop = asyncio.get_running_loop()
        tick = min(self.interval_s, self.watchdog_interval_s)
        next_round = loop.time()
        while True:
            if loop.time() >= next_round:
                next_round = loop.time() + self.interval_s
                await self.run_once()
            else:
                await self.restore_once()
            await asyncio.sleep(max(0.0, min(tick, next_round - loop.time())))
