"""What the supervisor decides around its children: options, clock, backoff, and the command to run.

``prepare`` is the blocking part of a start attempt (keychain, hub, GPU probe) and runs on a
short-lived thread of the supervisor; everything else here is pure. Failures come out as
``PrepareFailed`` with the ``Problem`` a front end shows and whether retrying can help.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import structlog

from .credentials import CredentialError
from .gpu import GpuProbe, cuda_visible_devices, gpu_for_tasks
from .hub_client import HubError, HubUnreachable, KeyRejected, QueueInfo
from .logging import redact, register_secret
from .naming import InvalidUserId, WorkerType, consumed_queues
from .progress_channel import HEARTBEAT_ENV
from .settings import Settings
from .worker_command import WorkerCommand, WorkerPlan, build_worker_command
from .worker_state import Problem

__all__ = [
    "Clock",
    "HubClientFactory",
    "KeyResolver",
    "PrepareFailed",
    "Prepared",
    "SupervisorOptions",
    "SystemClock",
    "backoff_delay",
    "prepare",
    "prepare_outcome",
    "sentence",
]

log = structlog.get_logger("morag_worker.core.supervisor")


@dataclass(frozen=True)
class SupervisorOptions:
    """Deadlines and policies of the supervisor (seconds)."""

    start_timeout_s: float = 120.0  # launch -> ready, or the child is killed and retried
    connect_timeout_s: float = 45.0  # before ready: reporting "connecting" this long = broker unreachable
    heartbeat_s: float = 5.0  # how often the child beats
    heartbeat_timeout_s: float = 30.0  # silence after ready -> restart
    stall_after_s: float = 90.0  # idle, connected consumer not polling -> restart
    finish_timeout_s: float | None = None  # FINISH while a task runs: escalate after this (None: never)
    idle_finish_timeout_s: float = 30.0  # FINISH with no task running: escalate to NOW after this
    now_timeout_s: float = 30.0  # NOW -> KILL after this
    restart_kill_after_s: float = 10.0  # a restart of a stalled child: NOW -> KILL after this
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 120.0
    backoff_jitter: float = 0.2  # up to +20 % on each delay
    healthy_after_s: float = 60.0  # ready this long -> the failure count starts again
    max_attempts: int | None = None  # consecutive failed attempts before CRASHED (None: retry forever)
    last_output_lines: int = 40
    log_level: str = "INFO"
    platform: str = sys.platform  # "win32" runs the winworker wrapper (tests use it on Linux)


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def time(self) -> float: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()


def backoff_delay(attempt: int, options: SupervisorOptions, rnd: Callable[[], float]) -> float:
    """Seconds before retry number ``attempt`` (1-based): capped exponential, plus jitter."""
    exponent = min(max(attempt, 1) - 1, 30)
    delay = min(options.backoff_cap_s, options.backoff_base_s * 2.0**exponent)
    return delay * (1.0 + options.backoff_jitter * rnd())


class HubClientLike(Protocol):
    def queue_info(self) -> QueueInfo: ...

    def close(self) -> None: ...


KeyResolver = Callable[[], str]
HubClientFactory = Callable[[str, str], HubClientLike]


@dataclass(frozen=True)
class Prepared:
    command: WorkerCommand
    user_id: str
    queues: tuple[str, ...]
    gpu_name: str | None
    notice: str | None = None  # something a person should know that does not stop the worker


class PrepareFailed(Exception):
    def __init__(self, problem: Problem, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.retry = retry


def prepare(
    settings: Settings,
    *,
    key_resolver: KeyResolver,
    hub_client_factory: HubClientFactory,
    gpu_probe: GpuProbe,
    env: Mapping[str, str],
    options: SupervisorOptions,
) -> Prepared:
    """Key, hub queue-info, GPU choice -> the child's command. Blocks; raises ``PrepareFailed``."""
    try:
        api_key = key_resolver()
    except CredentialError as exc:
        raise PrepareFailed(Problem.NO_API_KEY, str(exc), retry=False) from None
    register_secret(api_key)
    info = _queue_info(hub_client_factory, settings.hub_url, api_key)
    gpus = gpu_probe.list_gpus()
    worker_type = settings.worker_type  # the GPU probe never changes which queues are served
    gpu = gpu_for_tasks(gpus, settings)
    broker_url = (env.get("REDIS_URL") or "").strip() or info.broker_url
    if not broker_url:
        raise PrepareFailed(Problem.CONFIG, "the hub did not say where the broker is", retry=True)
    plan = WorkerPlan(
        user_id=info.user_id,
        hub_url=settings.hub_url,
        broker_url=broker_url,
        api_key=api_key,
        worker_type=worker_type,
        concurrency=settings.concurrency,
        cuda_visible_devices=cuda_visible_devices(settings, gpus),
        temp_dir=settings.temp_dir,
        log_level=options.log_level,
        platform=options.platform,
    )
    try:
        command = build_worker_command(plan, env)
        queues = consumed_queues(info.user_id, worker_type)
    except (InvalidUserId, ValueError) as exc:
        raise PrepareFailed(Problem.CONFIG, str(exc), retry=False) from None
    extra = {HEARTBEAT_ENV: f"{options.heartbeat_s:g}"}
    if gpu is not None:
        extra["MORAG_WORKER_GPU"] = gpu.name
    command = dataclasses.replace(command, env={**command.env, **extra})
    return Prepared(
        command=command,
        user_id=info.user_id,
        queues=queues,
        gpu_name=gpu.name if gpu else None,
        notice=_no_gpu_notice(worker_type, gpu is not None),
    )


def _no_gpu_notice(worker_type: WorkerType, has_gpu: bool) -> str | None:
    if worker_type is WorkerType.CPU or has_gpu:
        return None
    return (
        "No usable NVIDIA GPU found: documents convert as usual; "
        "audio and video are transcribed on the CPU, more slowly."
    )


def prepare_outcome(
    settings: Settings,
    *,
    key_resolver: KeyResolver,
    hub_client_factory: HubClientFactory,
    gpu_probe: GpuProbe,
    env: Mapping[str, str],
    options: SupervisorOptions,
) -> Prepared | PrepareFailed:
    """``prepare``, with any failure as a value (a bug in preparing is a clear CONFIG problem)."""
    try:
        return prepare(
            settings,
            key_resolver=key_resolver,
            hub_client_factory=hub_client_factory,
            gpu_probe=gpu_probe,
            env=env,
            options=options,
        )
    except PrepareFailed as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - the prepare thread must always report back
        log.exception("supervisor.prepare_failed")
        return PrepareFailed(Problem.CONFIG, f"cannot prepare the worker: {exc}", retry=False)


def sentence(text: str) -> str:
    """``text`` redacted, as a sentence for a person (capital first letter)."""
    text = redact(text.strip())
    return text[:1].upper() + text[1:] if text else text


def _queue_info(factory: HubClientFactory, hub_url: str, api_key: str) -> QueueInfo:
    client = factory(hub_url, api_key)
    try:
        return client.queue_info()
    except KeyRejected as exc:
        raise PrepareFailed(
            Problem.KEY_REJECTED, f"{exc}; log in again with a valid key", retry=False
        ) from None
    except HubUnreachable as exc:
        raise PrepareFailed(Problem.HUB_UNREACHABLE, str(exc), retry=True) from None
    except HubError as exc:
        raise PrepareFailed(Problem.HUB_ERROR, str(exc), retry=True) from None
    except (KeyError, TypeError, ValueError) as exc:  # an answer that is not queue-info
        raise PrepareFailed(
            Problem.HUB_ERROR, f"the hub's queue-info answer is unusable ({type(exc).__name__})", retry=True
        ) from None
    finally:
        client.close()
