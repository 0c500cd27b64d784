"""The supervisor's state machine: every decision about the worker child, taken on one thread.

``SupervisorMachine`` is driven by ``Supervisor``'s loop thread: ``handle`` takes one event (a
command from a front end, a start attempt's outcome, a child's line or exit) and ``fire_timers``
the deadlines that are due (retry, snooze, start deadline, liveness, stop escalation). It talks
back through two callables: ``post`` puts an event on the loop's queue (from the prepare thread
and the child's reader threads) and ``notify`` calls the listener. Nothing here is thread-safe,
and nothing needs to be: only the loop thread touches it.

The one thread the machine starts itself is a start attempt's prepare (keychain and HTTP block);
``spawn`` runs that work, by default on a daemon thread kept in ``prepare_threads``. Unit tests
pass a ``spawn`` that holds the work and a ``post`` that queues, and drive the machine on their
own thread.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import structlog

from morag_worker.core.config.settings import Settings
from morag_worker.core.execution.progress_channel import (
    BrokerRefusedMessage,
    HeartbeatMessage,
    HubMessage,
    IntakeMessage,
    ProgressMessage,
    ReadyMessage,
    TaskEndMessage,
    TaskStartMessage,
    parse_line,
)
from morag_worker.core.hub_client import HubClientFactory
from morag_worker.core.logging import redact
from morag_worker.core.results import TaskRecord
from morag_worker.core.supervisor.child_process import ChildCallbacks, Launcher
from morag_worker.core.supervisor.child_session import (
    RESTART,
    USER,
    ChildSession,
    finishing_message,
    stop_status,
)
from morag_worker.core.supervisor.events import (
    PAUSED,
    Problem,
    StopMode,
    TaskProgress,
    WorkerState,
    WorkerStatus,
)
from morag_worker.core.supervisor.gpu import GpuProbe
from morag_worker.core.supervisor.options import Clock, SupervisorOptions
from morag_worker.core.supervisor.prepare import (
    KeyResolver,
    Prepared,
    PrepareFailed,
    check_key,
    prepare_outcome,
)
from morag_worker.core.supervisor.task_tracker import TaskTracker
from morag_worker.core.transfer.retry import backoff_delay
from morag_worker.core.wording import capitalised

__all__ = ["Event", "Intent", "Notify", "Post", "Spawn", "SupervisorMachine", "Timer"]

log = structlog.get_logger("morag_worker.core.supervisor.supervisor")


class Event(Enum):
    """What the loop thread hands the machine: a front end's command, or news from elsewhere."""

    TICK = "tick"  # nothing happened; check the timers (a fake clock moved)
    SETTINGS = "settings"
    START = "start"
    STOP = "stop"
    SNOOZE = "snooze"
    CLOSE = "close"
    PREPARED = "prepared"  # a start attempt's outcome, from its prepare thread
    OUTPUT = "output"  # a line the child printed
    MESSAGE = "message"  # a line on the child's progress channel
    EXIT = "exit"  # the child exited
    KEY_CHECKED = "key_checked"  # the hub's verdict on the key after the broker refused it


class Timer(Enum):
    RETRY = "retry"  # the next start attempt after a failure
    SNOOZE = "snooze"  # the end of a snooze
    READY = "ready"  # the child's start deadline
    LIVENESS = "liveness"  # the child's heartbeat deadline
    ESCALATE = "escalate"  # the next, harsher stop


class Intent(Enum):
    """What the person asked for last; decides what follows when the child exits."""

    RUN = "run"
    STOP = "stop"
    SNOOZE = "snooze"


Post = Callable[[Event, Any, int], None]
Notify = Callable[[str, Any], None]
Spawn = Callable[[Callable[[], None]], None]


class SupervisorMachine:
    """States and transitions of one supervised worker (see ``Supervisor`` for the arguments).

    ``spawn`` is handed a start attempt's prepare work, which may block (keychain, HTTP) and
    reports through ``post`` (PREPARED). The default runs it on a daemon thread kept in
    ``prepare_threads`` (``Supervisor.close`` joins them); a test may hold it and run it later.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        key_resolver: KeyResolver,
        hub_client_factory: HubClientFactory,
        launcher: Launcher,
        clock: Clock,
        gpu_probe: GpuProbe,
        env: Mapping[str, str],
        options: SupervisorOptions,
        rng: Callable[[], float],
        post: Post,
        notify: Notify,
        settings_source: Callable[[], Settings] | None = None,
        spawn: Spawn | None = None,
    ) -> None:
        self.settings = settings
        self._settings_source = settings_source
        self._key_resolver = key_resolver
        self._hub_client_factory = hub_client_factory
        self._launcher = launcher
        self._clock = clock
        self._gpu_probe = gpu_probe
        self._env = dict(env)
        self.options = options
        self._rng = rng
        self._post = post
        self._notify = notify
        self._spawn: Spawn = spawn if spawn is not None else self._spawn_thread
        self.status = WorkerStatus(WorkerState.STOPPED, "Stopped")
        self.active: tuple[TaskProgress, ...] = ()
        self.timers: dict[Timer, float] = {}  # timer -> monotonic deadline
        self.prepare_threads: list[threading.Thread] = []
        self.session: ChildSession | None = None
        self._want = Intent.STOP
        self._closing = False
        self._gen = 0
        self._preparing: int | None = None
        self._restart_problem: tuple[Problem, str] = (Problem.CRASHED, "")
        self._failures = 0
        self._snooze_until: float | None = None
        self._user_id: str | None = None
        self._queues: tuple[str, ...] = ()
        self._notice: str | None = None
        self._key_check: int | None = None  # the child generation whose key the hub is checking
        self._handlers: dict[Event, Callable[[int, Any], None]] = {
            Event.TICK: self._on_tick,
            Event.SETTINGS: self._on_settings,
            Event.START: self._on_start,
            Event.STOP: self._on_stop,
            Event.SNOOZE: self._on_snooze,
            Event.CLOSE: self._on_close,
            Event.PREPARED: self._on_prepared,
            Event.OUTPUT: self._on_output,
            Event.MESSAGE: self._on_message,
            Event.EXIT: self._on_exit,
            Event.KEY_CHECKED: self._on_key_checked,
        }
        self._timer_handlers: dict[Timer, Callable[[], None]] = {
            Timer.RETRY: self._timer_retry,
            Timer.SNOOZE: self._timer_snooze,
            Timer.READY: self._timer_ready,
            Timer.LIVENESS: self._timer_liveness,
            Timer.ESCALATE: self._timer_escalate,
        }

    @property
    def finished(self) -> bool:
        """Closed, and no child left: the loop may end."""
        return self._closing and self.session is None

    def handle(self, event: Event, gen: int, payload: Any) -> None:
        self._handlers[event](gen, payload)

    def next_timeout(self) -> float | None:
        if not self.timers:
            return None
        return max(0.0, min(self.timers.values()) - self._clock.monotonic())

    def fire_timers(self) -> None:
        now = self._clock.monotonic()
        for timer, deadline in sorted(self.timers.items(), key=lambda item: item[1]):
            if deadline <= now and self.timers.get(timer) == deadline:
                del self.timers[timer]
                self._timer_handlers[timer]()

    def closed(self) -> None:
        self._set_status(WorkerState.STOPPED, "Stopped")

    # ---- commands ----------------------------------------------------------------------
    def _on_tick(self, _gen: int, _payload: None) -> None:
        pass

    def _on_settings(self, gen: int, settings: Settings) -> None:
        self.settings = settings
        if gen and gen == self._preparing and self.status.state is WorkerState.STARTING:
            # The attempt read the settings saved since: name the hub it really asks.
            self._set_status(WorkerState.STARTING, _connecting(settings))

    def _on_start(self, _gen: int, _payload: None) -> None:
        if self._closing:
            return
        self._want, self._snooze_until = Intent.RUN, None
        self.timers.pop(Timer.SNOOZE, None)
        if self.session is not None or self._preparing is not None:
            # Running or starting; a stopping child is started again when it has exited, and a
            # finishing one says so at once (Start undoes "finish and pause" and a snooze).
            self._refresh_finishing()
            return
        if self.status.state in (WorkerState.STOPPED, WorkerState.CRASHED, WorkerState.SNOOZED):
            self._failures = 0
        self.timers.pop(Timer.RETRY, None)
        self._begin_attempt()

    def _on_stop(self, _gen: int, mode: StopMode) -> None:
        self._want = Intent.STOP
        self._cancel_plans()
        if self.session is not None:
            self._send_stop(mode, USER)
        elif self.status.state is not WorkerState.STOPPED:
            self._set_status(WorkerState.STOPPED, "Stopped")

    def _on_snooze(self, _gen: int, until: float | None) -> None:
        if self._closing:
            return
        self._want = Intent.SNOOZE
        self._cancel_plans()
        self._snooze_until = until
        if until is not None:
            self.timers[Timer.SNOOZE] = self._clock.monotonic() + max(0.0, until - self._clock.time())
        if self.session is not None:
            self._send_stop(StopMode.FINISH, USER)
        else:
            self._set_snoozed()

    def _on_close(self, _gen: int, _payload: None) -> None:
        self._closing = True
        self._want = Intent.STOP
        self._cancel_plans()
        if self.session is not None:
            self._send_stop(StopMode.NOW, USER)

    def _after_finish(self) -> WorkerState:
        """What follows a FINISH stop, by what the person asked for last."""
        return {
            Intent.RUN: WorkerState.STARTING,
            Intent.SNOOZE: WorkerState.SNOOZED,
            Intent.STOP: WorkerState.STOPPED,
        }[self._want]

    def _refresh_finishing(self) -> None:
        """While finishing, say what follows now (a Start, snooze or pause asked meanwhile)."""
        session = self.session
        if session is not None and self.status.state is WorkerState.FINISHING:
            self._set_status(
                WorkerState.FINISHING, finishing_message(len(session.tracker), self._after_finish())
            )

    def _cancel_plans(self) -> None:
        self._preparing = None
        self.timers.pop(Timer.RETRY, None)
        self.timers.pop(Timer.SNOOZE, None)

    # ---- start attempts ----------------------------------------------------------------
    def _begin_attempt(self) -> None:
        self._gen += 1
        self._preparing = gen = self._gen
        settings = self.settings
        self._set_status(WorkerState.STARTING, _connecting(settings))
        self._spawn(lambda: self._prepare(gen, settings))

    def _spawn_thread(self, work: Callable[[], None]) -> None:
        self.prepare_threads = [t for t in self.prepare_threads if t.is_alive()]
        thread = threading.Thread(target=work, name="morag-prepare", daemon=True)
        self.prepare_threads.append(thread)
        thread.start()

    def _prepare(self, gen: int, settings: Settings) -> None:  # on the prepare thread
        if self._settings_source is not None:
            try:
                settings = self._settings_source()
            except Exception as exc:  # noqa: BLE001 - SettingsError and the like: the user must act
                self._post(Event.PREPARED, PrepareFailed(Problem.CONFIG, str(exc), retry=False), gen)
                return
            self._post(Event.SETTINGS, settings, gen)
        outcome = prepare_outcome(
            settings,
            key_resolver=self._key_resolver,
            hub_client_factory=self._hub_client_factory,
            gpu_probe=self._gpu_probe,
            env=self._env,
            options=self.options,
        )
        self._post(Event.PREPARED, outcome, gen)

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
        self._user_id, self._queues, self._notice = result.user_id, result.queues, result.notice
        if result.notice:
            log.info("supervisor.notice", notice=result.notice)
        callbacks = ChildCallbacks(
            on_message=lambda line: self._post(Event.MESSAGE, line, gen),
            on_output=lambda line: self._post(Event.OUTPUT, line, gen),
            on_exit=lambda code: self._post(Event.EXIT, code, gen),
        )
        try:
            child = self._launcher.launch(result.command, callbacks)
        except (OSError, ValueError) as exc:
            self._give_up(Problem.LAUNCH_FAILED, f"cannot start the worker: {exc}")
            return
        self.session = ChildSession(
            child,
            gen,
            TaskTracker(self._clock.monotonic, self._clock.time),
            collections.deque(maxlen=self.options.last_output_lines),
        )
        self.timers[Timer.READY] = self._clock.monotonic() + self.options.start_timeout_s
        queues = ", ".join(result.queues)
        log.info(
            "supervisor.child_started", pid=child.pid, queues=list(result.queues), pool=result.command.pool
        )
        self._set_status(WorkerState.STARTING, f"Starting the worker for {queues}")

    def _retry_later(self, problem: Problem, message: str, last_output: tuple[str, ...] = ()) -> None:
        self._failures += 1
        limit = self.options.max_attempts
        if limit is not None and self._failures >= limit:
            tries = f"{self._failures} attempt" + ("s" if self._failures != 1 else "")
            self._give_up(problem, f"{message} (gave up after {tries})", last_output)
            return
        options = self.options
        delay = backoff_delay(
            self._failures,
            base=options.backoff_base_s,
            cap=options.backoff_cap_s,
            rng=self._rng,
            jitter=options.backoff_jitter,
        )
        self.timers[Timer.RETRY] = self._clock.monotonic() + delay
        self._set_status(
            WorkerState.BACKOFF,
            f"{_for_person(message)}; retrying in {delay:.0f} s (attempt {self._failures + 1})",
            retry_at=self._clock.time() + delay,
            problem=problem,
            last_output=last_output,
        )

    def _give_up(self, problem: Problem, message: str, last_output: tuple[str, ...] = ()) -> None:
        self._want = Intent.STOP
        if problem in (Problem.NO_API_KEY, Problem.KEY_REJECTED):
            self._user_id, self._queues = None, ()  # nobody is signed in any more
        log.warning("supervisor.gave_up", problem=problem.value, message=message)
        self._set_status(WorkerState.CRASHED, _for_person(message), problem=problem, last_output=last_output)

    def _timer_retry(self) -> None:
        if self._want is Intent.RUN and self.session is None and self._preparing is None:
            self._begin_attempt()

    def _timer_snooze(self) -> None:
        if self._want is not Intent.SNOOZE:
            return
        self._want, self._snooze_until, self._failures = Intent.RUN, None, 0
        if self.session is None:
            self._begin_attempt()

    def _set_snoozed(self) -> None:
        until = self._snooze_until
        message = "Snoozed" if until is None else "Snoozed until later"
        self._set_status(WorkerState.SNOOZED, message, snoozed_until=until)

    # ---- the child's events ------------------------------------------------------------
    def _current(self, gen: int) -> ChildSession | None:
        session = self.session
        return session if session is not None and session.gen == gen else None

    def _on_output(self, gen: int, line: str) -> None:
        if (session := self._current(gen)) is not None:
            session.output.append(line)
        self._notify("on_log", line)

    def _on_message(self, gen: int, raw: bytes) -> None:
        session = self._current(gen)
        if session is None:
            return
        msg = parse_line(raw)
        if isinstance(msg, ReadyMessage):
            self._on_ready(session, msg)
        elif isinstance(msg, HeartbeatMessage):
            self._on_heartbeat(session, msg)
        elif isinstance(msg, HubMessage):
            self._on_hub(session, msg)
        elif isinstance(msg, IntakeMessage):
            self._on_intake(session, msg)
        elif isinstance(msg, TaskStartMessage):
            self._notify("on_progress", session.tracker.started(msg))
            self._tasks_changed(session)
        elif isinstance(msg, ProgressMessage):
            self._notify("on_progress", session.tracker.progressed(msg))
            self.active = tuple(session.tracker.active())
        elif isinstance(msg, TaskEndMessage):
            self._finished(session, [session.tracker.ended(msg)])
        elif isinstance(msg, BrokerRefusedMessage):
            self._on_broker_refused(session, msg)

    def _on_broker_refused(self, session: ChildSession, msg: BrokerRefusedMessage) -> None:
        """Redis refused the worker's login: ask the hub now rather than wait out the reconnecting."""
        if session.stop_mode is not None or self._key_check == session.gen:
            return
        log.warning("supervisor.broker_refused", source=msg.source, error=redact(msg.error))
        self._key_check = gen = session.gen
        settings = self.settings
        self._spawn(
            lambda: self._post(
                Event.KEY_CHECKED,
                check_key(
                    settings, key_resolver=self._key_resolver, hub_client_factory=self._hub_client_factory
                ),
                gen,
            )
        )

    def _on_key_checked(self, gen: int, verdict: PrepareFailed | None) -> None:
        if self._key_check == gen:
            self._key_check = None
        session = self._current(gen)
        if session is None or session.stop_mode is not None:
            return
        if verdict is None or verdict.retry:
            # The key holds (or the hub cannot say): the consumer's reconnecting goes on, watched
            # by connect_timeout_s as before.
            log.info("supervisor.key_still_valid" if verdict is None else "supervisor.key_unconfirmed")
            return
        # The task in hand cannot be acked any more: killing the child leaves it unacked, and the
        # hub's watchdog gives it to another worker once this one's presence has expired.
        session.rejected = (verdict.problem, verdict.message)
        self._restart(verdict.problem, verdict.message, StopMode.KILL)

    def _on_ready(self, session: ChildSession, msg: ReadyMessage) -> None:
        if session.ready:
            return
        session.ready_at, session.ready_info = self._clock.monotonic(), msg
        self.timers.pop(Timer.READY, None)
        self.timers[Timer.LIVENESS] = session.ready_at + self.options.heartbeat_timeout_s
        log.info("supervisor.child_ready", hostname=msg.hostname, queues=list(msg.queues), config=msg.config)
        if msg.queues:
            self._queues = tuple(msg.queues)  # what the child really consumes
        if session.stop_mode is None:
            self._set_running(session)

    def _on_hub(self, session: ChildSession, msg: HubMessage) -> None:
        if msg.reachable:
            session.hub_retry_at = None
        else:
            session.hub_unreachable(msg.retry_in_s, self._clock.time())
        if session.ready and session.stop_mode is None:
            self._set_running(session)

    def _on_intake(self, session: ChildSession, msg: IntakeMessage) -> None:
        session.held_reason = msg.reason if msg.held else None
        log.info("supervisor.intake", held=msg.held, reason=msg.reason)
        if session.ready and session.stop_mode is None:
            self._set_running(session)

    def _set_running(self, session: ChildSession) -> None:
        """RUNNING, WAITING_FOR_HUB while the child says the hub does not answer, or HELD_BACK."""
        state, message = session.running_status()
        if state is WorkerState.WAITING_FOR_HUB:
            self._set_status(state, message, retry_at=session.hub_retry_at, problem=Problem.HUB_UNREACHABLE)
        elif state is WorkerState.HELD_BACK:
            self._set_status(state, message, held_reason=session.held_reason)
        else:
            self._set_status(state, message)

    def _on_heartbeat(self, session: ChildSession, msg: HeartbeatMessage) -> None:
        session.heartbeat = msg
        now = self._clock.monotonic()
        if msg.consumer != "connecting":
            session.connecting_since = None
        elif session.connecting_since is None:
            session.connecting_since = now
        if not session.ready:
            waited = now - session.connecting_since if session.connecting_since is not None else 0.0
            if waited > self.options.connect_timeout_s and session.stop_mode is None:
                message = f"no broker connection within {waited:.0f} s"
                self._restart(Problem.BROKER_UNREACHABLE, message, StopMode.KILL)
            elif msg.consumer == "connecting":
                self._set_status(WorkerState.STARTING, "Connecting to the broker")
            return
        self.timers[Timer.LIVENESS] = now + self.options.heartbeat_timeout_s
        if (
            msg.consumer == "connecting"
            and session.connecting_since is not None
            and session.stop_mode is None
        ):
            waited = now - session.connecting_since
            if waited > self.options.connect_timeout_s:
                # Reconnecting for this long is not a blip: a revoked key (the broker refuses the
                # login), or a broker gone for good. Restart: the next attempt asks the hub first,
                # so a rejected key ends in CRASHED / KEY_REJECTED instead of retrying forever.
                message = f"lost the broker connection {waited:.0f} s ago"
                self._restart(Problem.BROKER_UNREACHABLE, message, StopMode.KILL)
                return
        lost = session.tracker.reconcile(
            msg.active, "the worker process running the task was lost; it is requeued"
        )
        if lost:
            self._finished(session, lost)
        if session.stop_mode is not None:
            return
        if msg.stalled(self.options.stall_after_s):
            waited = msg.since_poll_s or 0.0
            self._restart(
                Problem.STALLED, f"the worker stopped asking for tasks ({waited:.0f} s without polling)"
            )
        else:
            self._set_running(session)

    def _finished(self, session: ChildSession, records: list[TaskRecord]) -> None:
        for record in records:
            self._notify("on_task_finished", record)
        self._tasks_changed(session)
        if session.stop_mode is StopMode.FINISH and not session.busy and Timer.ESCALATE not in self.timers:
            self.timers[Timer.ESCALATE] = self._clock.monotonic() + self.options.idle_finish_timeout_s

    def _tasks_changed(self, session: ChildSession) -> None:
        self.active = tuple(session.tracker.active())
        state = self.status.state
        if state in (WorkerState.RUNNING, WorkerState.WAITING_FOR_HUB, WorkerState.HELD_BACK):
            self._set_running(session)
        elif state is WorkerState.FINISHING:
            self._refresh_finishing()
        elif state is WorkerState.STOPPING:
            self._set_status(state, self.status.message)

    def _on_exit(self, gen: int, code: int) -> None:
        session = self._current(gen)
        if session is None:
            return
        session.child.close(timeout=1.0)
        self.session = None
        for timer in (Timer.READY, Timer.LIVENESS, Timer.ESCALATE):
            self.timers.pop(timer, None)
        for record in session.tracker.interrupt_all(session.interrupted_reason()):
            self._notify("on_task_finished", record)
        self.active = ()
        reason, output = session.stop_reason, tuple(session.output)
        log.info(
            "supervisor.child_exited",
            code=code,
            stop=getattr(session.stop_mode, "value", None),
            reason=reason,
        )
        if (
            session.ready_at is not None
            and self._clock.monotonic() - session.ready_at >= self.options.healthy_after_s
        ):
            self._failures = 0
        if self._closing:
            return
        if session.rejected is not None and self._want is Intent.RUN:
            self._give_up(*session.rejected, output)  # the hub said so: no retry can help
        elif reason == RESTART and self._want is Intent.RUN:
            self._retry_later(*self._restart_problem, output)
        elif reason is None and self._want is Intent.RUN:
            early = not session.ready
            problem = Problem.BROKER_UNREACHABLE if early and session.connecting() else Problem.CRASHED
            when = " before it was ready" if early else ""
            self._retry_later(problem, f"the worker stopped unexpectedly{when} (exit status {code})", output)
        elif self._want is Intent.RUN:
            self._failures = 0
            self._begin_attempt()
        elif self._want is Intent.SNOOZE:
            self._set_snoozed()
        else:
            paused = session.stop_mode is StopMode.FINISH and reason == USER
            self._set_status(WorkerState.STOPPED, PAUSED if paused else "Stopped")

    # ---- stopping ----------------------------------------------------------------------
    def _send_stop(self, mode: StopMode, reason: str) -> None:
        session = self.session
        if session is None:
            return
        if reason == USER or session.stop_reason is None:
            session.stop_reason = reason
        if not session.escalates_to(mode):
            self._refresh_finishing()  # e.g. a snooze asked while finishing: shown at once
            return
        session.stop_mode = mode
        self.timers.pop(Timer.ESCALATE, None)
        session.child.control(mode)
        if mode is StopMode.FINISH:
            wait = self.options.finish_timeout_s if session.busy else self.options.idle_finish_timeout_s
        elif mode is StopMode.NOW:
            wait = self.options.restart_kill_after_s if reason == RESTART else self.options.now_timeout_s
        else:
            wait = None
        if wait is not None:
            self.timers[Timer.ESCALATE] = self._clock.monotonic() + wait
        state, message = stop_status(
            mode, tasks=len(session.tracker), restart=reason == RESTART, then=self._after_finish()
        )
        self._set_status(state, message)

    def _timer_escalate(self) -> None:
        session = self.session
        if session is None or session.stop_mode is None:
            return
        harsher = StopMode.NOW if session.stop_mode is StopMode.FINISH else StopMode.KILL
        log.warning("supervisor.escalating", to=harsher.value)
        self._send_stop(harsher, session.stop_reason or USER)

    def _restart(self, problem: Problem, message: str, mode: StopMode = StopMode.NOW) -> None:
        log.warning("supervisor.restarting", problem=problem.value, message=message)
        self._restart_problem = (problem, message)
        self._send_stop(mode, RESTART)

    def _timer_ready(self) -> None:
        session = self.session
        if session is None or session.ready or session.stop_mode is not None:
            return
        timeout = self.options.start_timeout_s
        if session.connecting():
            self._restart(
                Problem.BROKER_UNREACHABLE, f"no broker connection within {timeout:.0f} s", StopMode.KILL
            )
        else:
            self._restart(
                Problem.START_TIMEOUT, f"the worker was not ready within {timeout:.0f} s", StopMode.KILL
            )

    def _timer_liveness(self) -> None:
        session = self.session
        if session is not None and session.ready and session.stop_mode is None:
            seconds = self.options.heartbeat_timeout_s
            self._restart(Problem.STALLED, f"the worker stopped answering (no heartbeat for {seconds:.0f} s)")

    # ---- status ------------------------------------------------------------------------
    def _set_status(self, state: WorkerState, message: str, **extra: Any) -> None:
        busy = len(self.session.tracker) if self.session is not None else 0
        fields: dict[str, Any] = {
            "user_id": self._user_id,
            "queues": self._queues,
            "notice": self._notice,
            "attempt": self._failures,
            "active_tasks": busy,
            **extra,
        }
        if state is WorkerState.FINISHING:
            fields["then"] = self._after_finish()
            if self._want is Intent.SNOOZE:
                fields["snoozed_until"] = self._snooze_until
        status = WorkerStatus(state=state, message=message, **fields)
        if status == self.status:
            return
        self.status = status
        log.info("supervisor.status", state=state.value, message=message)
        self._notify("on_status", status)


def _for_person(text: str) -> str:
    """A message for a status line: redacted (no key can slip through), with a capital first letter."""
    return capitalised(redact(text))


def _connecting(settings: Settings) -> str:
    return f"Connecting to the hub at {settings.hub_url}"
