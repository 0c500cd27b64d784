"""``morag-worker --no-gui``: run the worker for the key's user, headless.

Asks the hub who the key belongs to and where the broker is, then runs the Celery worker child
with the key in its environment only. SIGINT/SIGTERM ask the child to finish its task; a second
SIGINT stops it now (the task goes back to the queue).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from types import FrameType

import structlog

from morag_worker.core.hub_client import HubClient, HubError, HubUnreachable, KeyRejected
from morag_worker.core.logging import register_secret
from morag_worker.core.naming import WorkerType
from morag_worker.core.worker_command import WorkerPlan, build_worker_command

from .errors import CliError, ExitCode
from .keysource import resolve_hub_and_key

__all__ = ["run"]

log = structlog.get_logger(__name__)


def run(args: argparse.Namespace) -> int:
    hub_url, api_key = resolve_hub_and_key(args)
    register_secret(api_key)
    client = HubClient(hub_url, api_key)
    try:
        info = client.queue_info()
    except KeyRejected as exc:
        raise CliError(f"{exc}; run `morag-worker login` with a valid key", ExitCode.KEY_REJECTED) from None
    except HubUnreachable as exc:
        raise CliError(str(exc), ExitCode.HUB_UNREACHABLE) from None
    except HubError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    finally:
        client.close()
    worker_type = WorkerType(os.environ.get("WORKER_TYPE") or "gpu")
    plan = WorkerPlan(
        user_id=info.user_id,
        hub_url=hub_url,
        broker_url=os.environ.get("REDIS_URL") or info.broker_url,
        api_key=api_key,
        worker_type=worker_type,
        concurrency=int(os.environ.get("WORKER_CONCURRENCY") or 1),
        temp_dir=os.environ.get("TEMP_DIR") or None,
    )
    command = build_worker_command(plan, os.environ)
    log.info("worker.starting", user_id=info.user_id, queue=command.argv[command.argv.index("-Q") + 1])
    child = subprocess.Popen(command.argv, env=command.env, start_new_session=True)
    interrupts = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            log.info("worker.finishing", signal=signal.Signals(signum).name)
            child.send_signal(signal.SIGTERM)
        else:
            log.info("worker.stopping_now")
            child.send_signal(getattr(signal, "SIGQUIT", signal.SIGTERM))

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("worker.exited", code=code)
    if interrupts:
        return int(ExitCode.OK)
    print(f"morag-worker: the worker stopped unexpectedly (exit status {code})", file=sys.stderr)
    return int(ExitCode.BROKER_UNREACHABLE if code else ExitCode.OK)
