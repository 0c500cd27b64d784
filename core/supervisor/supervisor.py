"""The worker supervisor (DESIGN §5): one Celery worker child for the key's user, kept running.

``Supervisor`` resolves the key, asks the hub's queue-info, builds the child's command, launches
it in its own process group, and follows it over the progress channel: RUNNING only once the child
says it is ready, restarts with capped exponential backoff (plus jitter) after a crash, a start
deadline or a stall, and stops it on request (finish, now, kill), escalating on timers. Qt-free;
both front ends drive it and hear from it through a ``SupervisorListener``.

Threads: every decision is taken on one loop thread (``morag-supervisor``) by the
``SupervisorMachine`` it owns; the loop also makes every listener call. Public methods only put an
event on its queue, so they are thread-safe and never block (``close`` joins). Each start attempt
prepares on a short-lived thread (keychain and HTTP block), and each child has the reader
threads of ``child_process``. Idle, nothing runs: the loop sleeps until an event or its next
deadline, the readers block on their pipes.
"""

from __future__ import annotations

import os
import queue
import random
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import structlog

from morag_worker.core.config.credentials import CredentialStore, resolve_api_key
from morag_worker.core.config.settings import Settings, SettingsError, SettingsStore, apply_env
from morag_worker.core.execution.progress_channel import ReadyMessage
from morag_worker.core.hub_client import HubClientFactory, quick_client
from morag_worker.core.supervisor.child_process import Launcher, SubprocessLauncher
from morag_worker.core.supervisor.events import StopMode, SupervisorListener, TaskProgress, WorkerStatus
from morag_worker.core.supervisor.gpu import GpuProbe, NvmlProbe
from morag_worker.core.supervisor.machine import Event, SupervisorMachine
from morag_worker.core.supervisor.options import Clock, SupervisorOptions, SystemClock
from morag_worker.core.supervisor.prepare import KeyResolver

__all__ = ["Supervisor", "SupervisorOptions", "supervisor_for"]

log = structlog.get_logger(__name__)


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
        settings_source: When given, called at each start attempt (on the prepare thread) for
            fresh settings, so that what a settings dialog saved applies at the next start.
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
        settings_source: Callable[[], Settings] | None = None,
    ) -> None:
        self._listener = listener
        self._events: queue.SimpleQueue[tuple[Event, int, Any]] = queue.SimpleQueue()
        self.options = options or SupervisorOptions()
        self._machine = SupervisorMachine(
            settings,
            key_resolver=key_resolver,
            hub_client_factory=hub_client_factory,
            launcher=launcher or SubprocessLauncher(),
            clock=clock or SystemClock(),
            gpu_probe=gpu_probe or NvmlProbe(),
            env=env if env is not None else os.environ,
            options=self.options,
            rng=rng,
            post=self._post,
            notify=self._notify,
            settings_source=settings_source,
        )
        self._thread = threading.Thread(target=self._loop, name="morag-supervisor", daemon=True)
        self._thread.start()

    # ---- public, any thread -------------------------------------------------------------
    @property
    def status(self) -> WorkerStatus:
        """The latest status (the one last sent to the listener)."""
        return self._machine.status

    def active_tasks(self) -> list[TaskProgress]:
        """The latest progress of each task the child is working on."""
        return list(self._machine.active)

    @property
    def child_pid(self) -> int | None:
        """The running child's process id (diagnostics, tests)."""
        session = self._machine.session
        return session.child.pid if session is not None else None

    @property
    def child_info(self) -> ReadyMessage | None:
        """What the current child said when it became ready: hostname, queues, reliability settings."""
        session = self._machine.session
        return session.ready_info if session is not None else None

    def start(self) -> None:
        """Start working (also ends a snooze, and retries at once from BACKOFF or CRASHED)."""
        self._post(Event.START)

    def stop(self, mode: StopMode = StopMode.FINISH) -> None:
        """Stop the child: FINISH its task first, NOW (the task is requeued at once) or KILL it."""
        self._post(Event.STOP, mode)

    def snooze(self, until: float | None) -> None:
        """Finish the current task, then stay SNOOZED until epoch ``until`` (None: until ``start``)."""
        self._post(Event.SNOOZE, until)

    def update_settings(self, settings: Settings) -> None:
        """Use ``settings`` from the next start attempt on."""
        self._post(Event.SETTINGS, settings)

    def tick(self) -> None:
        """Re-check timers now (after advancing a fake clock)."""
        self._post(Event.TICK)

    def close(self, timeout: float | None = None) -> None:
        """Stop the child now (its task goes back to the queue) if one runs, and join all threads."""
        self._post(Event.CLOSE)
        self._thread.join(timeout if timeout is not None else self.options.now_timeout_s + 30)
        for thread in list(self._machine.prepare_threads):
            thread.join(timeout=15)

    def _post(self, event: Event, payload: Any = None, gen: int = 0) -> None:
        self._events.put((event, gen, payload))

    # ---- the loop thread ---------------------------------------------------------------
    def _loop(self) -> None:
        machine = self._machine
        while True:
            try:
                kind, gen, payload = self._events.get(timeout=machine.next_timeout())
            except queue.Empty:
                kind, gen, payload = Event.TICK, 0, None
            try:
                machine.handle(kind, gen, payload)
                machine.fire_timers()
            except Exception:  # noqa: BLE001 - the loop must survive its own bugs
                log.exception("supervisor.loop_error", event=kind.value)
            if machine.finished:
                machine.closed()
                return

    def _notify(self, method: str, value: Any) -> None:
        try:
            getattr(self._listener, method)(value)
        except Exception:  # noqa: BLE001 - a broken front end must not stop the supervisor
            log.exception("supervisor.listener_failed", method=method)


def supervisor_for(
    listener: SupervisorListener,
    *,
    settings_store: SettingsStore | None = None,
    settings_loader: Callable[[], Settings] | None = None,
    credentials: CredentialStore | None,
    api_key_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    options: SupervisorOptions | None = None,
) -> Supervisor:
    """The production wiring, for the tray app and ``--no-gui`` alike.

    Settings come from ``settings_loader``, or from ``settings_store`` with the environment's
    overrides, and are read again at every start attempt (what a settings dialog saved applies
    at the next start). The key comes from ``api_key_file``, ``MORAG_API_KEY`` or the keychain;
    the hub client, launcher and GPU probe are the real ones.
    """
    environ = dict(env if env is not None else os.environ)
    if (settings_store is None) == (settings_loader is None):
        raise TypeError("give exactly one of settings_store and settings_loader")

    def load() -> Settings:
        if settings_loader is not None:
            return settings_loader()
        assert settings_store is not None
        return apply_env(settings_store.load(), environ)

    def resolve_key() -> str:
        resolved = resolve_api_key(
            env=environ, api_key_file=api_key_file, store=credentials, hub_url=load().hub_url
        )
        return resolved.key

    try:
        first = load()  # so that the first status names the configured hub
    except SettingsError:
        first = Settings()  # the same error is reported by the first start attempt
    return Supervisor(
        first,
        key_resolver=resolve_key,
        hub_client_factory=quick_client,
        listener=listener,
        env=environ,
        options=options,
        settings_source=load,
    )
