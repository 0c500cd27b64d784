"""The worker supervisor (DESIGN §5): one Celery worker child for the key's user, kept running.

``Supervisor`` resolves the key, asks the hub's queue-info, builds the child's command, launches
it in its own process group, and follows it over the progress channel: RUNNING only once the child
says it is ready, restarts with capped exponential backoff (plus jitter) after a crash, a start
deadline or a stall, and stops it on request (finish, now, kill), escalating on timers. Qt-free;
both front ends drive it and hear from it through a ``SupervisorListener``.

Threads: every decision is taken on one loop thread (``morag-supervisor``) that owns all state and
makes every listener call; public methods only post to its queue, so they are thread-safe and
never block (``close`` joins). Each start attempt prepares on a short-lived thread (keychain and
HTTP block), and each child has the reader threads of ``child_process``.
"""

from __future__ import annotations

import collections
import queue
import random
import threading
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from .child_process import ChildCallbacks, ChildProcess, Launcher, SubprocessLauncher
from .gpu import GpuProbe, NvmlProbe
from .logging import redact
from .progress_channel import (
    HeartbeatMessage,
    ProgressMessage,
    ReadyMessage,
    TaskEndMessage,
    TaskStartMessage,
    parse_line,
)
from .settings import Settings
from .supervisor_plan import (
    Clock,
    HubClientFactory,
    KeyResolver,
    Prepared,
    PrepareFailed,
    SupervisorOptions,
    SystemClock,
    backoff_delay,
    prepare,
)
from .task_tracker import TaskTracker
from .worker_state import (
    Problem,
    StopMode,
    SupervisorListener,
    TaskProgress,
    TaskRecord,
    WorkerState,
    WorkerStatus,
)

__all__ = ["Supervisor", "SupervisorOptions"]

log = structlog.get_logger(__name__)

_RANK = {StopMode.FINISH: 1, StopMode.NOW: 2, StopMode.KILL: 3}
_INTERRUPTED = {
    StopMode.NOW: "stopped now; the task went back to the queue",
    StopMode.KILL: "the worker was killed; the task returns to the queue after the visibility timeout",
    None: "the worker stopped unexpectedly; the task returns to the queue after the visibility timeout",
}


class Supervisor:
    """Runs and watches one worker child. See the module docstring for threads.

    Args:
        settings: Hub URL, worker type, GPU, concurrency, temp folder (``update_settings`` later).
        key_resolver: Returns the API key; raises ``CredentialError`` when there is none.
        hub_client_factory: ``(hub_url, api_key) -> client`` with ``queue_info()`` and ``close()``.
        listener: Hears every status change, progress, finished task and child log line.
        launcher: Starts children (``SubprocessLauncher`` by default; a fake in unit tests).
        clock: Monotonic and wall time (a fake one must be followed by ``tick()``).
        gpu_probe: Lists GPUs (NVML by default).
        env: The environment the child starts from (``os.environ`` by default).
        options: Deadlines and policies.
        rng: Returns a float in [0, 1) for backoff jitter.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        key_resolver: KeyResolver,
        hub_client_factory: HubClientFactory,
        listener: SupervisorListener,
        launcher: Launcher | None = None,
        clock: Clock | None = None,
        gpu_probe: GpuProbe | None = None,
        env: Mapping[str, str] | None = None,
        options: SupervisorOptions | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        import os

        self._settings = settings
        self._key_resolver = key_resolver
        self._hub_client_factory = hub_client_factory
        self._listener = listener
        self._launcher: Launcher = launcher or SubprocessLauncher()
        self._clock: Clock = clock or SystemClock()
        self._gpu_probe: GpuProbe = gpu_probe or NvmlProbe()
        self._env = dict(env if env is not None else os.environ)
        self.options = options or SupervisorOptions()
        self._rng = rng
        self._events: queue.SimpleQueue[tuple[str, int, Any]] = queue.SimpleQueue()
        self._status = WorkerStatus(WorkerState.STOPPED, "Stopped")
        self._active: tuple[TaskProgress, ...] = ()
        # Loop-thread state.
        self._want = "stop"  # run, stop, snooze
        self._closing = False
        self._gen = 0
        self._preparing: int | None = None
        self._prepare_threads: list[threading.Thread] = []
        self._child: ChildProcess | None = None
        self._child_gen = 0
        self._ready_at: float | None = None
        self._stop_mode: StopMode | None = None
        self._stop_reason: str | None = None  # user, restart
        self._restart_problem: tuple[Problem, str] = (Problem.CRASHED, "")
        self._failures = 0
        self._snooze_until: float | None = None
        self._timers: dict[str, float] = {}
        self._heartbeat: HeartbeatMessage | None = None
        self._ready_info: ReadyMessage | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=self.options.last_output_lines)
        self._tracker = TaskTracker(self._clock.monotonic, self._clock.time)
        self._user_id: str | None = None
        self._queue: str | None = None
        self._thread = threading.Thread(target=self._loop, name="morag-supervisor", daemon=True)
        self._thread.start()

    # ---- public, any thread -------------------------------------------------------------
    @property
    def status(self) -> WorkerStatus:
        return self._status

    def active_tasks(self) -> list[TaskProgress]:
        return list(self._active)

    @property
    def child_pid(self) -> int | None:
        """The running child's process id (diagnostics, tests)."""
        child = self._child
        return child.pid if child is not None else None

    @property
    def child_info(self) -> ReadyMessage | None:
        """What the current child said when it became ready: hostname, queues, reliability settings."""
        return self._ready_info

    def start(self) -> None:
        """Start working (also ends a snooze, and retries at once from BACKOFF or CRASHED)."""
        self._post("start")

    def stop(self, mode: StopMode = StopMode.FINISH) -> None:
        self._post("stop", mode)

    def snooze(self, until: float | None) -> None:
        """Finish the current task, then stay SNOOZED until epoch ``until`` (None: until ``start``)."""
        self._post("snooze", until)

    def update_settings(self, settings: Settings) -> None:
        """Use ``settings`` from the next start attempt on."""
        self._post("settings", settings)

    def tick(self) -> None:
        """Re-check timers now (after advancing a fake clock)."""
        self._post("tick")

    def close(self, timeout: float | None = None) -> None:
        """Stop the child now (its task goes back to the queue) if one runs, and join all threads."""
        self._post("close")
        self._thread.join(timeout if timeout is not None else self.options.now_timeout_s + 30)
        for thread in self._prepare_threads:
            thread.join(timeout=15)

    def _post(self, kind: str, payload: Any = None, gen: int = 0) -> None:
        self._events.put((kind, gen, payload))

    # ---- the loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            timeout = None
            if self._timers:
                timeout = max(0.0, min(self._timers.values()) - self._clock.monotonic())
            try:
                kind, gen, payload = self._events.get(timeout=timeout)
            except queue.Empty:
                kind, gen, payload = "tick", 0, None
            try:
                getattr(self, f"_on_{kind}")(gen, payload)
                self._fire_timers()
            except Exception:  # noqa: BLE001 - the loop must survive its own bugs
                log.exception("supervisor.loop_error", event=kind)
            if self._closing and self._child is None:
                self._set_status(WorkerState.STOPPED, "Stopped")
                return

    def _fire_timers(self) -> None:
        now = self._clock.monotonic()
        for name, deadline in sorted(self._timers.items(), key=lambda item: item[1]):
            if deadline <= now and self._timers.get(name) == deadline:
                del self._timers[name]
                getattr(self, f"_timer_{name}")()

    # ---- commands ----------------------------------------------------------------------
    def _on_tick(self, _gen: int, _payload: None) -> None:
        pass

    def _on_settings(self, _gen: int, settings: Settings) -> None:
        self._settings = settings

    def _on_start(self, _gen: int, _payload: None) -> None:
        if self._closing:
            return
        self._want = "run"
        self._snooze_until = None
        self._timers.pop("snooze", None)
        if self._child is not None or self._preparing is not None:
            return  # running or starting; a stopping child is started again when it has exited
        if self._status.state in (WorkerState.STOPPED, WorkerState.CRASHED, WorkerState.SNOOZED):
            self._failures = 0
        self._timers.pop("retry", None)
        self._begin_attempt()

    def _on_stop(self, _gen: int, mode: StopMode) -> None:
        self._want = "stop"
        self._cancel_plans()
        if self._child is not None:
            self._send_stop(mode, "user")
        elif self._status.state is not WorkerState.STOPPED:
            self._set_status(WorkerState.STOPPED, "Stopped")

    def _on_snooze(self, _gen: int, until: float | None) -> None:
        if self._closing:
            return
        self._want = "snooze"
        self._cancel_plans()
        self._snooze_until = until
        if until is not None:
            self._timers["snooze"] = self._clock.monotonic() + max(0.0, until - self._clock.time())
        if self._child is not None:
            self._send_stop(StopMode.FINISH, "user")
        else:
            self._set_snoozed()

    def _on_close(self, _gen: int, _payload: None) -> None:
        self._closing = True
        self._want = "stop"
        self._cancel_plans()
        self._timers.pop("snooze", None)
        if self._child is not None:
            self._send_stop(StopMode.NOW, "user")

    def _cancel_plans(self) -> None:
        self._preparing = None
        self._timers.pop("retry", None)
        self._timers.pop("snooze", None)

    # ---- start attempts ----------------------------------------------------------------
    def _begin_attempt(self) -> None:
        self._gen += 1
        gen = self._gen
        self._preparing = gen
        self._prepare_threads = [t for t in self._prepare_threads if t.is_alive()]
        thread = threading.Thread(
            target=self._prepare, args=(gen, self._settings), name="morag-prepare", daemon=True
        )
        self._prepare_threads.append(thread)
        self._set_status(WorkerState.STARTING, f"Connecting to the hub at {self._settings.hub_url}")
        thread.start()

    def _prepare(self, gen: int, settings: Settings) -> None:
        result: Prepared | PrepareFailed
        try:
            result = prepare(
                settings,
                key_resolver=self._key_resolver,
                hub_client_factory=self._hub_client_factory,
                gpu_probe=self._gpu_probe,
                env=self._env,
                options=self.options,
            )
        except PrepareFailed as exc:
            result = exc
        except Exception as exc:  # noqa: BLE001 - a bug in preparing is a clear CRASHED, not a dead thread
            log.exception("supervisor.prepare_failed")
            result = PrepareFailed(Problem.CONFIG, f"cannot prepare the worker: {exc}", retry=False)
        self._post("prepared", result, gen)

    def _on_prepared(self, gen: int, result: Prepared | PrepareFailed) -> None:
        if gen != self._preparing:
            return  # stopped or snoozed meanwhile
        self._preparing = None
        if isinstance(result, PrepareFailed):
            if result.retry:
                self._retry_later(result.problem, result.message)
            else:
                self._give_up(result.problem, result.message)
            return
        self._user_id, self._queue = result.user_id, result.queue
        callbacks = ChildCallbacks(
            on_message=lambda line: self._post("message", line, gen),
            on_output=lambda line: self._post("output", line, gen),
            on_exit=lambda code: self._post("exit", code, gen),
        )
        try:
            child = self._launcher.launch(result.command, callbacks)
        except (OSError, ValueError) as exc:
            self._give_up(Problem.LAUNCH_FAILED, f"cannot start the worker: {exc}")
            return
        self._child, self._child_gen = child, gen
        self._ready_at = None
        self._stop_mode = self._stop_reason = None
        self._heartbeat = self._ready_info = None
        self._output.clear()
        self._tracker = TaskTracker(self._clock.monotonic, self._clock.time)
        self._timers["ready"] = self._clock.monotonic() + self.options.start_timeout_s
        log.info("supervisor.child_started", pid=child.pid, queue=result.queue, pool=result.command.pool)
        self._set_status(WorkerState.STARTING, f"Starting the worker for {result.queue}")

    def _retry_later(self, problem: Problem, message: str, last_output: tuple[str, ...] = ()) -> None:
        self._failures += 1
        limit = self.options.max_attempts
        if limit is not None and self._failures >= limit:
            self._give_up(problem, f"{message} (gave up after {self._failures} attempts)", last_output)
            return
        delay = backoff_delay(self._failures, self.options, self._rng)
        self._timers["retry"] = self._clock.monotonic() + delay
        self._set_status(
            WorkerState.BACKOFF,
            f"{_sentence(message)}; retrying in {delay:.0f} s (attempt {self._failures + 1})",
            retry_at=self._clock.time() + delay,
            problem=problem,
            last_output=last_output,
        )

    def _give_up(self, problem: Problem, message: str, last_output: tuple[str, ...] = ()) -> None:
        self._want = "stop"
        log.warning("supervisor.gave_up", problem=problem.value, message=message)
        self._set_status(WorkerState.CRASHED, _sentence(message), problem=problem, last_output=last_output)

    def _timer_retry(self) -> None:
        if self._want == "run" and self._child is None and self._preparing is None:
            self._begin_attempt()

    def _timer_snooze(self) -> None:
        if self._want != "snooze":
            return
        self._want, self._snooze_until, self._failures = "run", None, 0
        if self._child is None:
            self._begin_attempt()

    def _set_snoozed(self) -> None:
        until = self._snooze_until
        self._set_status(
            WorkerState.SNOOZED, "Snoozed" if until is None else "Snoozed until later", snoozed_until=until
        )

    # ---- the child's events ------------------------------------------------------------
    def _on_output(self, gen: int, line: str) -> None:
        if gen == self._child_gen:
            self._output.append(line)
        self._notify("on_log", line)

    def _on_message(self, gen: int, raw: bytes) -> None:
        if gen != self._child_gen or self._child is None:
            return
        msg = parse_line(raw)
        if isinstance(msg, ReadyMessage):
            self._on_ready(msg)
        elif isinstance(msg, HeartbeatMessage):
            self._on_heartbeat(msg)
        elif isinstance(msg, TaskStartMessage):
            self._notify("on_progress", self._tracker.started(msg))
            self._tasks_changed()
        elif isinstance(msg, ProgressMessage):
            self._notify("on_progress", self._tracker.progressed(msg))
            self._active = tuple(self._tracker.active())
        elif isinstance(msg, TaskEndMessage):
            self._finished([self._tracker.ended(msg)])

    def _on_ready(self, msg: ReadyMessage) -> None:
        if self._ready_at is not None:
            return
        self._ready_at = self._clock.monotonic()
        self._ready_info = msg
        self._timers.pop("ready", None)
        self._timers["liveness"] = self._ready_at + self.options.heartbeat_timeout_s
        log.info("supervisor.child_ready", hostname=msg.hostname, queues=list(msg.queues), config=msg.config)
        if self._stop_mode is None:
            self._set_status(WorkerState.RUNNING, self._running_message())

    def _on_heartbeat(self, msg: HeartbeatMessage) -> None:
        self._heartbeat = msg
        if self._ready_at is None:
            if msg.consumer == "connecting":
                self._set_status(WorkerState.STARTING, "Connecting to the broker (retrying)")
            return
        self._timers["liveness"] = self._clock.monotonic() + self.options.heartbeat_timeout_s
        lost = self._tracker.reconcile(
            msg.active, "the worker process running the task was lost; it is requeued"
        )
        if lost:
            self._finished(lost)
        if self._stop_mode is not None:
            return
        if msg.stalled(self.options.stall_after_s):
            seconds = msg.since_poll_s or 0.0
            self._restart(
                Problem.STALLED, f"the worker stopped asking for tasks ({seconds:.0f} s without polling)"
            )
        else:
            self._set_status(WorkerState.RUNNING, self._running_message())

    def _finished(self, records: list[TaskRecord]) -> None:
        for record in records:
            self._notify("on_task_finished", record)
        self._tasks_changed()
        if self._stop_mode is StopMode.FINISH and not len(self._tracker) and "escalate" not in self._timers:
            self._timers["escalate"] = self._clock.monotonic() + self.options.idle_finish_timeout_s

    def _tasks_changed(self) -> None:
        self._active = tuple(self._tracker.active())
        state = self._status.state
        if state is WorkerState.RUNNING:
            self._set_status(state, self._running_message())
        elif state is WorkerState.FINISHING and not len(self._tracker):
            self._set_status(state, "Snoozing" if self._want == "snooze" else "Stopping")
        elif state in (WorkerState.FINISHING, WorkerState.STOPPING):
            self._set_status(state, self._status.message)

    def _reconnecting(self) -> bool:
        """The consumer lost its broker connection after it was ready (a beat from before is stale)."""
        beat, ready = self._heartbeat, self._ready_info
        return beat is not None and beat.consumer == "connecting" and (ready is None or beat.ts > ready.ts)

    def _running_message(self) -> str:
        if self._reconnecting():
            return "Reconnecting to the broker"
        count = len(self._tracker)
        if count:
            return f"Working on {count} task" + ("s" if count > 1 else "")
        return "Waiting for work"

    def _on_exit(self, gen: int, code: int) -> None:
        if gen != self._child_gen or self._child is None:
            return
        child, self._child = self._child, None
        child.close(timeout=1.0)
        for name in ("ready", "liveness", "escalate"):
            self._timers.pop(name, None)
        mode, reason = self._stop_mode, self._stop_reason
        output = tuple(self._output)
        self._finished(self._tracker.interrupt_all(_INTERRUPTED.get(mode, _INTERRUPTED[None])))
        healthy = self._ready_at is not None and (
            self._clock.monotonic() - self._ready_at >= self.options.healthy_after_s
        )
        was_ready = self._ready_at is not None
        self._ready_at = None
        log.info("supervisor.child_exited", code=code, stop=mode.value if mode else None, reason=reason)
        if healthy:
            self._failures = 0
        if self._closing:
            return
        if reason == "restart" and self._want == "run":
            problem, message = self._restart_problem
            self._retry_later(problem, message, output)
        elif reason is None and self._want == "run":
            connecting = self._heartbeat is not None and self._heartbeat.consumer == "connecting"
            problem = Problem.BROKER_UNREACHABLE if connecting and not was_ready else Problem.CRASHED
            when = "" if was_ready else " before it was ready"
            self._retry_later(problem, f"the worker stopped unexpectedly{when} (exit status {code})", output)
        elif self._want == "run":
            self._failures = 0
            self._begin_attempt()
        elif self._want == "snooze":
            self._set_snoozed()
        else:
            self._set_status(WorkerState.STOPPED, "Stopped")

    # ---- stopping ----------------------------------------------------------------------
    def _send_stop(self, mode: StopMode, reason: str) -> None:
        if self._child is None:
            return
        if reason == "user" or self._stop_reason is None:
            self._stop_reason = reason
        if self._stop_mode is not None and _RANK[mode] <= _RANK[self._stop_mode]:
            return
        self._stop_mode = mode
        self._timers.pop("escalate", None)
        self._child.control(mode)
        now = self._clock.monotonic()
        busy = len(self._tracker) > 0
        if mode is StopMode.FINISH:
            wait = self.options.finish_timeout_s if busy else self.options.idle_finish_timeout_s
            message = "Finishing the current task, then stopping" if busy else "Stopping"
            if self._want == "snooze":
                message = "Finishing the current task, then snoozing" if busy else "Snoozing"
            if wait is not None:
                self._timers["escalate"] = now + wait
            self._set_status(WorkerState.FINISHING, message)
        elif mode is StopMode.NOW:
            wait = self.options.restart_kill_after_s if reason == "restart" else self.options.now_timeout_s
            self._timers["escalate"] = now + wait
            text = "Restarting the worker" if reason == "restart" else "Stopping now"
            self._set_status(
                WorkerState.STOPPING, text + ("; the current task goes back to the queue" if busy else "")
            )
        else:
            self._set_status(WorkerState.STOPPING, "Killing the worker")

    def _timer_escalate(self) -> None:
        if self._child is None or self._stop_mode is None:
            return
        next_mode = StopMode.NOW if self._stop_mode is StopMode.FINISH else StopMode.KILL
        log.warning("supervisor.escalating", to=next_mode.value)
        self._send_stop(next_mode, self._stop_reason or "user")

    def _restart(self, problem: Problem, message: str, mode: StopMode = StopMode.NOW) -> None:
        log.warning("supervisor.restarting", problem=problem.value, message=message)
        self._restart_problem = (problem, message)
        self._send_stop(mode, "restart")

    def _timer_ready(self) -> None:
        if self._child is None or self._ready_at is not None or self._stop_mode is not None:
            return
        timeout = self.options.start_timeout_s
        if self._heartbeat is not None and self._heartbeat.consumer == "connecting":
            self._restart(
                Problem.BROKER_UNREACHABLE, f"no broker connection within {timeout:.0f} s", StopMode.KILL
            )
        else:
            self._restart(
                Problem.START_TIMEOUT, f"the worker was not ready within {timeout:.0f} s", StopMode.KILL
            )

    def _timer_liveness(self) -> None:
        if self._child is not None and self._ready_at is not None and self._stop_mode is None:
            seconds = self.options.heartbeat_timeout_s
            self._restart(Problem.STALLED, f"the worker stopped answering (no heartbeat for {seconds:.0f} s)")

    # ---- the listener ------------------------------------------------------------------
    def _set_status(self, state: WorkerState, message: str, **extra: Any) -> None:
        fields: dict[str, Any] = {
            "user_id": self._user_id,
            "queue": self._queue,
            "attempt": self._failures,
            "active_tasks": len(self._tracker),
            **extra,
        }
        status = WorkerStatus(state=state, message=message, **fields)
        if status == self._status:
            return
        self._status = status
        log.info("supervisor.status", state=state.value, message=message)
        self._notify("on_status", status)

    def _notify(self, method: str, value: Any) -> None:
        try:
            getattr(self._listener, method)(value)
        except Exception:  # noqa: BLE001 - a broken front end must not stop the supervisor
            log.exception("supervisor.listener_failed", method=method)


def _sentence(text: str) -> str:
    text = redact(text.strip())
    return text[:1].upper() + text[1:] if text else text
