"""The Celery app and its four tasks: ``celery -A morag_worker.core.worker worker -Q gpu-tasks-U``.

Importing this module only builds the app from the environment (no connection is made). When a
worker starts on a per-user queue (``-Q gpu-tasks-{user_id}``, or ``MORAG_USER_ID`` is set) it
switches to the remote role before connecting: the user's namespace, the ACL login
``worker-{user_id}`` with ``MORAG_API_KEY`` as password, and nothing on shared channels.
The tasks are thin: they hand their arguments to ``Pipeline`` and return its result object.
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from celery import Celery, Task, signals
from celery.app import trace as celery_trace
from celery.exceptions import Reject

from morag_worker.core.execution.celery_config import base_config, reliability_summary, remote_worker_config
from morag_worker.core.execution.context import FinishedTask, WorkerRuntime, get_runtime
from morag_worker.core.execution.deliveries import DeliveryCounter, max_starts_from_env
from morag_worker.core.execution.task_args import MalformedTask, read_task
from morag_worker.core.naming import in_queue_order, namespace_prefix, user_id_from_queue, validate_user_id
from morag_worker.core.processing import TaskCancelled
from morag_worker.core.results import INPUT_PROBLEM, TaskOutcome, TaskResult

# The seed defines its queue helpers in its worker module; a server written to it imports them from here.
from morag_worker.core.routing import get_task_for_user, submit_task_for_user
from morag_worker.core.transfer.workspace import release_spare_workspaces, sweep_stale_workspaces

__all__ = [
    "celery_app",
    "get_task_for_user",
    "process_file_task",
    "process_file_task_remote",
    "process_url_task",
    "process_url_task_remote",
    "submit_task_for_user",
]

log = structlog.get_logger(__name__)

celery_app = Celery("morag_worker")
celery_app.conf.update(base_config(os.environ))

# Celery logs every success with the first KiB of the return value: here, the converted document.
# A contributor's log must not hold other people's text, so the line keeps the name, id and time.
celery_trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"


def _queues_from_options(options: dict[str, Any]) -> list[str]:
    queues = options.get("queues") or []
    if isinstance(queues, str):
        queues = queues.split(",")
    return [q.strip() for q in queues if q and q.strip()]


@signals.celeryd_init.connect
def _select_role(sender: Any = None, conf: Any = None, options: Any = None, **_: Any) -> None:
    """Switch to the remote role when this worker serves one user's queue."""
    from morag_worker.core.execution.broker_transport import on_unreadable_message

    on_unreadable_message(_fail_unreadable_message)  # every role: its submitter must hear of it
    env = os.environ
    user_ids = {u for u in map(user_id_from_queue, _queues_from_options(options or {})) if u}
    explicit = env.get("MORAG_USER_ID")
    if explicit:
        user_ids.add(validate_user_id(explicit))
    if not user_ids:
        get_runtime().configure(own_user_id=None)
        _sweep_workspaces()
        return
    if len(user_ids) > 1:
        raise SystemExit(
            "a MoRAG worker serves exactly one user; queues of several users were given: "
            + ", ".join(sorted(user_ids))
        )
    (user_id,) = user_ids
    from morag_worker.core.execution.contributor_transport import register

    register()  # the remote config names this transport by its alias
    (conf or celery_app.conf).update(remote_worker_config(env, user_id))
    # The result backend may have been created with the unprefixed settings; build it again.
    celery_app._local.__dict__.pop("backend", None)
    get_runtime().configure(own_user_id=user_id)
    log.info("worker.remote_role", user_id=user_id)
    _sweep_workspaces()


def _sweep_workspaces() -> None:
    """Remove task folders left by a worker that died (``finally`` does not run on SIGKILL).

    Only folders untouched for longer than the longest allowed task go: another worker sharing
    TEMP_DIR may be in the middle of a task.
    """
    runtime = get_runtime()
    try:
        removed = sweep_stale_workspaces(runtime.temp_root, older_than_s=celery_app.conf.task_time_limit)
    except OSError as exc:
        log.warning("workspace.sweep_failed", error=str(exc))
        return
    if removed:
        log.info("workspace.swept", count=removed)


class _MoragTask(Task):  # type: ignore[misc]
    """Base of the four tasks: maps pipeline outcomes onto Celery's."""

    typing = False  # arguments are checked by task_args.read_task, with clear messages
    # Caps a message's time limits at the worker's own; cleans up after a killed pool process.
    Request = "morag_worker.core.execution.consumer:MoragRequest"

    # Celery renders each result (up to this many characters) for its "succeeded" line and sends
    # the rendering to the worker's main process, logged or not. Ours leaves the value out
    # (LOG_SUCCESS above) and task events are off: rendering a converted document's result cost
    # the pool 80 µs a task (issue 14).
    resultrepr_maxsize = 0

    def _run(
        self,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        params: tuple[str, ...],
        *,
        remote: bool,
        url_task: bool,
    ) -> dict[str, Any]:
        # Imported here: the pipeline (requests, the converters) is not needed to get ready.
        from morag_worker.core.execution.pipeline import (
            HubUnavailableError,
            InfrastructureError,
            TaskCancelledError,
        )

        runtime: WorkerRuntime = get_runtime()
        task_id = self.request.id
        if not remote and runtime.own_user_id is not None:
            # A contributor's worker never reads its own machine's files for a task.
            return runtime.refuse_local(task_id, self.name)
        try:
            request = read_task(params, args, kwargs, remote=remote, own_user_id=runtime.own_user_id)
        except MalformedTask as exc:
            log.warning("task.malformed", task_id=task_id, error=str(exc))
            return TaskResult.failure(f"malformed task: {exc}", user_id=runtime.own_user_id).to_dict()
        counter = DeliveryCounter(
            self.backend.client,
            namespace_prefix(runtime.own_user_id) if runtime.own_user_id else "morag:",
            max_starts_from_env(os.environ),
        )
        delivery_info = self.request.delivery_info or {}
        start = counter.start(task_id, redelivered=bool(delivery_info.get("redelivered", True)))
        starts = start.starts
        if starts > counter.limit:
            counter.finished(task_id, start)
            message = (
                f"the worker running this task died {starts - 1} times (the input may be too large or "
                "crash the converter); it is not tried again"
            )
            log.error("task.gave_up", task_id=task_id, starts=starts)
            runtime.task_finished(task_id, TaskOutcome.FAILED, error=message)
            return TaskResult.failure(message, user_id=runtime.own_user_id).to_dict()
        filename = request.filename[:200] if request.filename else None
        runtime.task_started(task_id, name=self.name, filename=filename)
        reporter = runtime.reporter(self)
        try:
            result = runtime.pipeline().run_file(reporter, request, remote=remote, url_task=url_task)
        except (TaskCancelledError, TaskCancelled):
            start = counter.requeued(task_id, start)
            log.info("task.requeued", task_id=task_id)
            runtime.task_finished(task_id, TaskOutcome.REQUEUED, error="stopped by the contributor")
            raise Reject("stopped by the contributor; back to the queue", requeue=True) from None
        except HubUnavailableError as exc:  # not the task's fault: another try when the hub is back
            start = counter.requeued(task_id, start)
            log.warning("task.requeued", task_id=task_id, reason="hub_unreachable", error=str(exc))
            runtime.task_finished(task_id, TaskOutcome.REQUEUED, error=str(exc))
            raise Reject(str(exc), requeue=True) from None
        except InfrastructureError as exc:
            log.error("task.failed", task_id=task_id, error=str(exc))
            runtime.task_finished(task_id, TaskOutcome.FAILED, error=str(exc))
            raise
        except Exception as exc:  # a time limit, a bug: Celery records the failure, we report it
            runtime.task_finished(task_id, TaskOutcome.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            runtime.task_states_settled(task_id)  # no progress state lands over the result
            counter.finished(task_id, start)  # every way out but the worker's death
        # Which worker ran it: the submitter can tell a redelivered task's runs apart.
        result.metadata.setdefault("worker_hostname", self.request.hostname)
        # Reported once Celery has stored it (on_success), or as a failure when it could not be.
        runtime.result_returned(
            task_id,
            FinishedTask(
                TaskOutcome.SUCCEEDED if result.success else TaskOutcome.FAILED,
                error=result.error_message,
                # A clean run that fails is the input's fault (run_file turns only those into results).
                metadata=result.metadata if result.success else {INPUT_PROBLEM: True, **result.metadata},
                processing_time=result.processing_time,
            ),
        )
        return result.to_dict()

    def on_success(self, retval: Any, task_id: str, args: Any, kwargs: Any) -> None:
        """Celery stored the result (it calls this only after the backend took it)."""
        get_runtime().result_stored(task_id)

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        """The task raised, or storing its result failed (an encoding or operational error)."""
        get_runtime().result_not_stored(task_id, exc)


@celery_app.task(bind=True, base=_MoragTask, name="morag.worker.process_file_task")
def process_file_task(self: _MoragTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """(file_path, content_type=None, task_options=None): convert a file on this machine."""
    return self._run(
        args, kwargs, ("file_path", "content_type", "task_options"), remote=False, url_task=False
    )


@celery_app.task(bind=True, base=_MoragTask, name="morag.worker.process_url_task")
def process_url_task(self: _MoragTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """(url, content_type=None, task_options=None): fetch a URL and convert it."""
    params = ("url", "content_type", "task_options")
    return self._run(args, kwargs, params, remote=False, url_task=True)


@celery_app.task(bind=True, base=_MoragTask, name="morag.worker.process_file_task_remote")
def process_file_task_remote(self: _MoragTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """(file_url, user_id, content_type=None, task_options=None): download from the hub, convert."""
    return self._run(
        args, kwargs, ("file_url", "user_id", "content_type", "task_options"), remote=True, url_task=False
    )


@celery_app.task(bind=True, base=_MoragTask, name="morag.worker.process_url_task_remote")
def process_url_task_remote(self: _MoragTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """(url, user_id, content_type=None, task_options=None): fetch a public URL, convert."""
    return self._run(
        args, kwargs, ("url", "user_id", "content_type", "task_options"), remote=True, url_task=True
    )


def _install_steps() -> None:
    from morag_worker.core.execution.health.hub_outage import HubGateStep, PauseAtStartStep
    from morag_worker.core.execution.health.intake_gate import IntakeGateStep
    from morag_worker.core.execution.health.liveness import HeartbeatStep
    from morag_worker.core.execution.health.presence import PresenceStep

    celery_app.steps["worker"].add(PresenceStep)
    celery_app.steps["worker"].add(HeartbeatStep)
    celery_app.steps["worker"].add(IntakeGateStep)
    celery_app.steps["worker"].add(HubGateStep)
    celery_app.steps["consumer"].add(PauseAtStartStep)


_install_steps()


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, **_: Any) -> None:
    """The worker child logs through our redacting structlog pipeline (JSON when not a TTY)."""
    import logging

    from morag_worker.core.logging import configure_logging

    configure_logging(level=loglevel or "INFO")
    # One line per task at INFO: our task.done. Celery's "received" and "succeeded" lines would
    # be rendered (JSON, redacted) for every task and say less; a person still sees a task start
    # in the progress view (the channel's task_start). Both libraries check the level once, when
    # they build a task's strategy and tracer, so nothing is formatted for them afterwards.
    if logging.getLogger().getEffectiveLevel() >= logging.INFO:
        for name in TASK_LINE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


TASK_LINE_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


_MAX_TASK_ID = 255


@signals.task_rejected.connect
def _fail_rejected_message(sender: Any = None, message: Any = None, exc: Any = None, **_: Any) -> None:
    """A message refused before any task ran (pickle, an unreadable body): fail its task id.

    Celery logs and drops such a message; without this its submitter would wait forever. The id is
    only written in this worker's own namespace, where whoever could send the message could
    already write results.
    """
    headers = getattr(message, "headers", None)
    task_id = headers.get("id") if isinstance(headers, dict) else None
    if not isinstance(task_id, str) or not 0 < len(task_id) <= _MAX_TASK_ID:
        log.warning("task.message_rejected", task_id=None, error=str(exc)[:300] if exc else "unknown format")
        return
    reason = str(exc) if exc is not None else "the message is not in a format this worker knows"
    error = MalformedTask(f"the task message was refused before it ran: {reason[:500]}")
    log.warning("task.message_rejected", task_id=task_id, error=str(error))
    _store_refusal(getattr(sender, "app", None) or celery_app, task_id, error)


def _fail_unreadable_message(task_id: str, reason: str) -> None:
    """A queue entry naming a task whose message cannot be read (a body that is not base64...).

    The transport drops it (it never reaches Celery, nor the unacked set); its task id gets a
    failure so the submitter is not left waiting forever.
    """
    error = MalformedTask(f"The task message could not be read: {reason[:500]}")
    log.warning("task.message_unreadable", task_id=task_id, error=str(error))
    _store_refusal(celery_app, task_id, error)


def _store_refusal(app: Any, task_id: str, error: Exception) -> None:
    try:
        app.backend.mark_as_failure(task_id, error)
    except Exception as store_error:  # noqa: BLE001 - the broker may be down; the log line stays
        log.error("task.rejection_not_stored", task_id=task_id, error=repr(store_error))


@signals.task_internal_error.connect
def _result_not_stored(task_id: Any = None, exception: Any = None, **_: Any) -> None:
    """An error outside the task's body, such as the backend failing to store the result after
    its retries (a revoked key, a result too large for Redis): never reported as a success."""
    get_runtime().result_not_stored(task_id, exception)


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    """A pool process (prefork, solo) starts: it loads the pipeline once the worker is ready, and
    its spare converter child starts on its own thread."""
    runtime = get_runtime()
    runtime.warm_up()
    runtime.warm_converters()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _close_converters(**_: Any) -> None:
    """The pool process or the worker stops: no converter child outlives it, nor its spare workspaces."""
    get_runtime().close_converters()
    release_spare_workspaces()


@signals.worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    """Readiness is observed by the supervisor and tests from this event, never assumed."""
    runtime = get_runtime()
    hostname = getattr(sender, "hostname", None)
    log.info("worker.ready", hostname=hostname, user_id=runtime.own_user_id)
    if type(getattr(sender, "pool", None)).__module__ == "celery.concurrency.thread":
        runtime.warm_converters()  # the threads pool (Windows) runs its tasks in this process
    app = getattr(sender, "app", None) or celery_app
    try:
        queues = in_queue_order(app.amqp.queues.consume_from)
    except Exception:  # noqa: BLE001 - the queue list is informative only
        queues = []
    runtime.announce_ready(hostname=hostname, queues=queues, config=reliability_summary(app.conf))
