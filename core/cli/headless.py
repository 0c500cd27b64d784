"""``morag-worker --no-gui``: the worker for the key's user, headless, on top of the supervisor.

Settings come from the settings file (``--config-dir``) with MoRAG's environment overrides and
``--hub``; the key from ``--api-key-file``, ``MORAG_API_KEY`` or the keychain (resolved by the
supervisor on each start attempt). Progress is shown live on a terminal, as JSON log lines
otherwise. SIGINT/SIGTERM: finish the current task (or nothing) and exit 0; a second SIGINT:
stop now, the task goes back to the queue; a third: kill. When the worker cannot be started
(key rejected, hub or broker unreachable after the retries shown) it ends with one clear line
and the matching exit code.

Threads: the main thread waits and handles signals; the supervisor's threads do the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.terminal_view import JsonView, TerminalView
from morag_worker.core.config.settings import InvalidHubUrl, Settings, SettingsError, SettingsStore, apply_env
from morag_worker.core.results import TaskRecord
from morag_worker.core.supervisor.events import Problem, StopMode, TaskProgress, WorkerState, WorkerStatus
from morag_worker.core.supervisor.supervisor import SupervisorOptions, supervisor_for

__all__ = ["exit_code_for", "run"]

_EXIT_CODES = {
    Problem.KEY_REJECTED: ExitCode.KEY_REJECTED,
    Problem.HUB_UNREACHABLE: ExitCode.HUB_UNREACHABLE,
    Problem.HUB_ERROR: ExitCode.HUB_UNREACHABLE,
    Problem.BROKER_UNREACHABLE: ExitCode.BROKER_UNREACHABLE,
    Problem.NO_API_KEY: ExitCode.CONFIG,
    Problem.CONFIG: ExitCode.CONFIG,
    Problem.LAUNCH_FAILED: ExitCode.CONFIG,
}


def exit_code_for(status: WorkerStatus) -> ExitCode:
    """The exit code of a headless run that ended in ``status``."""
    if status.state is not WorkerState.CRASHED:
        return ExitCode.OK
    return _EXIT_CODES.get(status.problem or Problem.CRASHED, ExitCode.WORKER_CRASHED)


def load_settings(args: argparse.Namespace) -> Settings:
    try:
        settings = apply_env(SettingsStore(args.config_dir).load(), os.environ)
        if getattr(args, "hub", None):
            settings = dataclasses.replace(settings, hub_url=args.hub)
    except (SettingsError, InvalidHubUrl) as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    return settings


class _Ending:
    """A listener wrapper that notices the end of the run: CRASHED, or STOPPED after a stop."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.done = threading.Event()
        self.stop_requested = False
        self.final: WorkerStatus | None = None

    def on_status(self, status: WorkerStatus) -> None:
        self.view.on_status(status)
        if self.done.is_set():
            return
        if status.state is WorkerState.CRASHED or (
            status.state is WorkerState.STOPPED and self.stop_requested
        ):
            self.final = status
            self.done.set()

    def on_progress(self, progress: TaskProgress) -> None:
        self.view.on_progress(progress)

    def on_task_finished(self, record: TaskRecord) -> None:
        self.view.on_task_finished(record)

    def on_log(self, line: str) -> None:
        self.view.on_log(line)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    verbose = bool(getattr(args, "verbose", 0))
    tty = sys.stderr.isatty() and getattr(args, "log_format", None) != "json"
    if tty and not verbose:
        # The live view owns the terminal; our own info events would break its in-place redraw.
        logging.getLogger("morag_worker").setLevel(logging.WARNING)
    ending = _Ending(TerminalView(sys.stderr, verbose=verbose) if tty else JsonView(verbose=verbose))
    from morag_worker.core.config.credentials import CredentialStore, key_file_path

    retries = getattr(args, "retries", 6)
    supervisor = supervisor_for(
        ending,
        settings_loader=lambda: settings,
        credentials=CredentialStore(key_file=key_file_path(getattr(args, "config_dir", None))),
        api_key_file=getattr(args, "api_key_file", None),
        options=SupervisorOptions(max_attempts=retries or None, log_level="DEBUG" if verbose else "INFO"),
    )
    interrupts = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        ending.stop_requested = True
        mode = (StopMode.FINISH, StopMode.NOW, StopMode.KILL)[min(interrupts, 3) - 1]
        if signum != signal.SIGINT and interrupts > 1:
            mode = StopMode.FINISH  # repeated SIGTERMs (systemd, the demo) do not escalate
        supervisor.stop(mode)

    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGBREAK] if hasattr(signal, "SIGBREAK") else [])
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        supervisor.start()
        ending.done.wait()
    finally:
        supervisor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = ending.final or supervisor.status
    code = exit_code_for(final)
    if code is not ExitCode.OK:
        raise CliError(final.message, code)
    return int(code)
