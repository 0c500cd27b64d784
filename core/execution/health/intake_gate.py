"""The intake gate: the worker takes a new task only while the person's rules allow it.

:class:`IntakeGateStep` (a worker bootstep) runs :class:`IntakeGate` on a daemon thread of the
worker's main process. Every few seconds the gate reads the sensors (``sensors.py``) that the
rules in force need, asks ``intake_rules.evaluate``, and when the answer changes, records it in
the runtime's :class:`IntakeHold` and says so on the progress channel (an ``intake`` message with
``held`` and ``reason``), from where the supervisor shows it ("Paused: GPU at 86 °C, waiting for
78 °C"). The hub gate's step (``hub_outage.py``) pauses the consumer's task queues while either
gate holds, on the consumer's own thread, so the two never fight over them. A task in hand is never
touched: the consumer stops taking new ones and the running one finishes.

Why everything is evaluated here, in the child, rather than partly in the supervisor: the child
runs in the same desktop session as the supervisor that launched it (it inherits ``DISPLAY`` and
the session bus), a headless worker has the same child without a front end, and the pausing
happens here anyway. One place decides, and one integration test drives all of it through
``MORAG_TEST_SENSORS``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from celery import bootsteps

from morag_worker.core.config.settings import SettingsError
from morag_worker.core.execution.health.intake_rules import (
    IntakeRules,
    Readings,
    Verdict,
    evaluate,
    vram_needed_mb,
)
from morag_worker.core.execution.health.sensors import (
    GPU_INDEX_ENV,
    TEST_SENSORS_ENV,
    Sensors,
    sensors_from_env,
)

__all__ = ["POLL_ENV", "IntakeGate", "IntakeGateStep", "IntakeHold", "rules_for_worker"]

log = structlog.get_logger(__name__)

POLL_ENV = "MORAG_INTAKE_POLL_S"
DEFAULT_POLL_S = 3.0


class IntakeHold:
    """Why this worker takes no new task now (None: it takes them); shared by the main process's threads.

    A single attribute assignment is atomic for Python threads; readers see the old reason or the new.
    """

    def __init__(self) -> None:
        self.reason: str | None = None

    @property
    def held(self) -> bool:
        return self.reason is not None


Report = Callable[..., object]
"""Sends one ``intake`` message on the progress channel: ``report(held=..., reason=...)``."""


class IntakeGate:
    """Evaluates the rules every ``poll_s`` seconds and reports each change of the verdict.

    Args:
        rules: The person's rules.
        sensors: Where the readings come from.
        hold: Where the verdict is kept for the consumer's thread, the heartbeat and presence.
        report: Tells the supervisor.
        now: Local wall-clock time (naive), for the time windows; tests inject it.
    """

    def __init__(
        self,
        rules: IntakeRules,
        sensors: Sensors,
        hold: IntakeHold,
        report: Report,
        *,
        poll_s: float = DEFAULT_POLL_S,
        now: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.rules = rules
        self._sensors = sensors
        self.hold = hold
        self._report = report
        self._poll = poll_s
        self._now = now
        self._verdict = Verdict(None)
        self.checks = 0

    def readings(self) -> Readings:
        """Reads only the sensors whose rule is on (an idle query on every poll costs a D-Bus call)."""
        rules, sensors = self.rules, self._sensors
        gpu_rules = rules.temp_limit_c is not None or rules.vram_needed_mb > 0
        return Readings(
            now=self._now(),
            gpu=sensors.gpu() if gpu_rules else None,
            idle_s=sensors.idle_s() if rules.idle_minutes else None,
            on_battery=sensors.on_battery() if rules.pause_on_battery else None,
            fullscreen=sensors.fullscreen() if rules.pause_when_fullscreen else None,
        )

    def check(self) -> Verdict:
        """One evaluation; reports when the reason changed."""
        self.checks += 1
        try:
            readings = self.readings()
        except Exception as exc:  # noqa: BLE001 - a failing sensor never stops the worker
            log.warning("intake.sensors_failed", error=type(exc).__name__, message=str(exc)[:200])
            readings = Readings(now=self._now())
        verdict = evaluate(self.rules, readings, hot=self._verdict.hot)
        if verdict.reason != self._verdict.reason:
            if verdict.held:
                log.info("intake.held", reason=verdict.reason)
            else:
                log.info("intake.open", was=self._verdict.reason)
            self.hold.reason = verdict.reason
            self._report(held=verdict.held, reason=verdict.reason)
        self._verdict = verdict
        return verdict

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.check()
            stop.wait(self._poll)


def rules_for_worker(env: Mapping[str, str]) -> IntakeRules:
    """The rules handed down by the supervisor, with the GPU memory this worker's transcriptions need.

    The memory rule applies when faster-whisper is installed, transcription may use the GPU and
    the supervisor chose one for this child (or the tests' sensors play one).

    Raises:
        SettingsError: A rule's variable holds a value that is not allowed.
    """
    rules = IntakeRules.from_env(env)
    device = (env.get("MORAG_WHISPER_DEVICE") or "auto").strip().lower()
    has_gpu = bool(env.get(GPU_INDEX_ENV, "").strip() or env.get(TEST_SENSORS_ENV, "").strip())
    if device == "cpu" or not has_gpu or importlib.util.find_spec("faster_whisper") is None:
        return rules
    model = (env.get("MORAG_WHISPER_MODEL") or "").strip() or "small"
    compute = (env.get("MORAG_WHISPER_COMPUTE_TYPE") or "").strip() or "default"
    folder = Path(model)
    size = None
    if folder.is_dir():
        size = sum(p.stat().st_size for p in folder.glob("*.bin"))
    need = vram_needed_mb(model, compute, model_bytes=size)
    label = folder.name if size is not None else model
    return rules.needing(need, f"the {label} speech model")


def _poll_s(env: Mapping[str, str]) -> float:
    try:
        value = float(env.get(POLL_ENV, "") or DEFAULT_POLL_S)
    except ValueError:
        return DEFAULT_POLL_S
    return value if 0.05 <= value <= 300 else DEFAULT_POLL_S


class IntakeGateStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Runs the intake gate; enabled for a contributor's worker (one with a hub)."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        from morag_worker.core.execution.context import get_runtime

        runtime = get_runtime()
        self.hold = runtime.intake
        self.channel = runtime.channel
        self.enabled = runtime.hub_url is not None
        self.gate: IntakeGate | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        super().__init__(worker, **kwargs)

    def start(self, worker: Any) -> None:
        env = dict(os.environ)
        try:
            rules = rules_for_worker(env)
        except SettingsError as exc:  # the supervisor checked them; only a hand-started worker gets here
            log.error("intake.rules_invalid", error=str(exc))
            rules = IntakeRules()
        log.info(
            "intake.rules",
            temp_limit_c=rules.temp_limit_c,
            temp_resume_c=rules.temp_resume_c,
            vram_needed_mb=rules.vram_needed_mb,
            idle_minutes=rules.idle_minutes,
            pause_on_battery=rules.pause_on_battery,
            windows=rules.windows.text if rules.windows else None,
            pause_when_fullscreen=rules.pause_when_fullscreen,
        )
        self.gate = IntakeGate(rules, sensors_from_env(env), self.hold, self._send, poll_s=_poll_s(env))
        self.gate.check()  # before the consumer starts: a worker started in the heat takes nothing
        self._thread = threading.Thread(
            target=self.gate.run, args=(self._stop,), name="morag-intake-gate", daemon=True
        )
        self._thread.start()

    def _send(self, **fields: Any) -> None:
        if self.channel is not None:
            self.channel.send("intake", **fields)

    def stop(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def info(self, worker: Any) -> Mapping[str, Any]:
        return {"intake_gate": self.enabled}
