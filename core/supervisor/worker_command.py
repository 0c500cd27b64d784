"""Prepare the Celery worker child: a pure function from what we know to ``WorkerCommand``.

The API key reaches the child only through its environment (never argv), as Vorta hands
``BORG_PASSPHRASE`` to borg. The pool follows DESIGN §5: ``prefork`` with concurrency 1 per GPU on
POSIX (SIGTERM = finish, SIGQUIT = stop now and requeue); on Windows the ``threads`` pool inside
our wrapper (``morag_worker.core.execution.windows_wrapper``), controlled over a pipe. On POSIX the
child runs Celery's ``worker`` command through ``morag_worker.core.execution.worker_main``, which
starts about 100 ms sooner than the ``celery`` umbrella command (see there); the options are
``celery worker``'s either way, and ``WorkerCommand.stock_celery_argv`` gives the same worker
through ``celery -A morag_worker.core.worker worker``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from morag_worker.core.execution.celery_config import strip_credentials
from morag_worker.core.naming import WorkerType, consumed_queues, validate_user_id

__all__ = ["CELERY_APP", "WORKER_ENTRY", "WorkerCommand", "WorkerPlan", "build_worker_command"]

CELERY_APP = "morag_worker.core.worker"
WORKER_ENTRY = "morag_worker.core.execution.worker_main"  # celery worker's options, our app
WINDOWS_ENTRY = "morag_worker.core.execution.windows_wrapper"  # the same, under a control pipe

# Environment a child never inherits from us: it gets exactly the key we resolved.
_SCRUBBED = ("MORAG_API_KEY", "REDIS_URL", "MORAG_USER_ID", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class WorkerPlan:
    """Everything that decides how the worker child runs (no secrets except ``api_key``)."""

    user_id: str
    hub_url: str
    broker_url: str
    api_key: str = field(repr=False)
    worker_type: WorkerType = WorkerType.GPU  # which queues (``consumed_queues``), not the hardware
    concurrency: int = 1
    hostname: str | None = None
    cuda_visible_devices: str | None = None
    temp_dir: str | None = None
    log_level: str = "INFO"
    platform: str = sys.platform
    python: str = sys.executable


@dataclass(frozen=True)
class WorkerCommand:
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    pool: str = "prefork"

    @property
    def uses_control_pipe(self) -> bool:
        """True on Windows: the wrapper is stopped through its stdin, not signals."""
        return self.pool == "threads"

    def stock_celery_argv(self) -> list[str]:
        """The same worker through Celery's own ``celery`` command (a baseline, or a run by hand)."""
        python, dash_m, _entry, *options = self.argv
        return [python, dash_m, "celery", "-A", CELERY_APP, "worker", *options]


def build_worker_command(plan: WorkerPlan, base_env: Mapping[str, str]) -> WorkerCommand:
    """argv and env of the worker child for ``plan``; ``base_env`` is the parent's environment."""
    validate_user_id(plan.user_id)
    if plan.concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    queues = consumed_queues(plan.user_id, plan.worker_type)
    hostname = plan.hostname or f"morag-{plan.user_id}@%h"
    windows = plan.platform.startswith("win")
    pool = "threads" if windows else "prefork"
    argv = [plan.python, "-m", WINDOWS_ENTRY if windows else WORKER_ENTRY]
    argv += [
        "-Q",
        ",".join(queues),
        "-P",
        pool,
        "-c",
        str(plan.concurrency),
        "-n",
        hostname,
        "-l",
        plan.log_level,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    env = {k: v for k, v in base_env.items() if k not in _SCRUBBED}
    env.update(
        MORAG_API_KEY=plan.api_key,
        MORAG_USER_ID=plan.user_id,
        MAIN_SERVER_URL=plan.hub_url,
        REDIS_URL=strip_credentials(plan.broker_url),
        WORKER_TYPE=plan.worker_type.value,
        PYTHONUNBUFFERED="1",
    )
    if plan.cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.cuda_visible_devices
    if plan.temp_dir:
        env["TEMP_DIR"] = plan.temp_dir
    return WorkerCommand(argv=argv, env=env, pool=pool)
