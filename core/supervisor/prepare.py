"""Preparing one start attempt: key, hub queue-info and GPU choice in, the child's command out.

``prepare`` is the blocking part of a start attempt (keychain, hub, GPU probe) and runs on a
short-lived thread of the supervisor. Failures come out as
``PrepareFailed`` with the ``Problem`` a front end shows and whether retrying can help.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from morag_worker.core.config.credentials import CredentialError
from morag_worker.core.config.settings import Settings, intake_env
from morag_worker.core.execution.progress_channel import HEARTBEAT_ENV
from morag_worker.core.hub_client import (
    HubClientFactory,
    HubError,
    HubUnreachable,
    KeyRejected,
    QueueInfo,
)
from morag_worker.core.logging import register_secret
from morag_worker.core.naming import InvalidUserId, WorkerType, consumed_queues
from morag_worker.core.supervisor.events import Problem
from morag_worker.core.supervisor.gpu import GpuProbe, cuda_visible_devices, gpu_for_tasks
from morag_worker.core.supervisor.options import SupervisorOptions
from morag_worker.core.supervisor.worker_command import WorkerCommand, WorkerPlan, build_worker_command

__all__ = [
    "KeyResolver",
    "PrepareFailed",
    "Prepared",
    "check_key",
    "prepare",
    "prepare_outcome",
]

log = structlog.get_logger("morag_worker.core.supervisor")

KeyResolver = Callable[[], str]  # returns the API key; raises CredentialError when there is none


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
    # The rules for when to contribute: the child's intake gate runs them (execution/health/intake_gate.py).
    extra = {HEARTBEAT_ENV: f"{options.heartbeat_s:g}", **intake_env(settings)}
    if gpu is not None:
        extra["MORAG_WORKER_GPU"] = gpu.name
        extra["MORAG_WORKER_GPU_INDEX"] = str(gpu.index)  # NVML's index: what the gate reads
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


def check_key(
    settings: Settings, *, key_resolver: KeyResolver, hub_client_factory: HubClientFactory
) -> PrepareFailed | None:
    """Ask the hub whether the key still holds (the broker refused it); the failure, or None.

    Blocks (keychain, HTTP): runs on a short-lived thread, like ``prepare``.
    """
    try:
        api_key = key_resolver()
        register_secret(api_key)
        _queue_info(hub_client_factory, settings.hub_url, api_key)
    except CredentialError as exc:
        return PrepareFailed(Problem.NO_API_KEY, str(exc), retry=False)
    except PrepareFailed as exc:
        return exc
    except Exception as exc:  # noqa: BLE001 - the checking thread must always report back
        log.warning("supervisor.key_check_failed", error=type(exc).__name__)
        return PrepareFailed(Problem.HUB_ERROR, f"cannot check the API key: {exc}", retry=True)
    return None


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
