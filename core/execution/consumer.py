"""The Celery consumers of our workers: one message can never stop them; contributors' share nothing.

:class:`MoragConsumer` (every worker) hands a message whose handling raises something Celery does
not expect (a body its strategy trips over) to Celery's own invalid-message path: logged, rejected
(not restored, so it cannot crash the worker again after a restart) and announced through the
``task_rejected`` signal, where ``worker.py`` marks the task FAILURE for its submitter; a body that
cannot be decoded is announced the same way. Connection errors still propagate, so the consumer
reconnects as before.

:class:`RemoteConsumer` (a contributor's worker) also leaves out gossip, mingle, heartbeat and remote
control. Those steps subscribe to and publish on broker-wide channels (``celery.pidbox``,
``celeryev``) that a contributor's ACL user may not touch; removing them here means the plain
``celery -A morag_worker.core.worker worker -Q gpu-tasks-{user_id}`` command is safe too, not only
the supervisor's (which also passes ``--without-gossip --without-mingle --without-heartbeat``).

Runs on the worker's consumer (event loop) thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import signals
from celery.worker.consumer import Consumer

__all__ = ["MoragConsumer", "RemoteConsumer"]

_SHARED_CHANNEL_STEPS = ("mingle:Mingle", "gossip:Gossip", "heart:Heart", "control:Control")


class MoragConsumer(Consumer):  # type: ignore[misc]
    """A consumer whose task handler turns any unexpected per-message error into a rejected message."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        on_task_received: Callable[[Any], Any] = super().create_task_handler(*args, **kwargs)
        recoverable = tuple(self.connection_errors) + tuple(self.channel_errors)

        def guarded(message: Any) -> Any:
            try:
                return on_task_received(message)
            except recoverable:
                raise
            except Exception as exc:  # noqa: BLE001 - logged and reported by on_invalid_task
                return self.on_invalid_task(None, message, exc)

        return guarded

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """A body that cannot be decoded: Celery logs and acks it; we also announce it as rejected."""
        super().on_decode_error(message, exc)
        signals.task_rejected.send(sender=self, message=message, exc=exc)


class RemoteConsumer(MoragConsumer):
    """A consumer whose blueprint leaves out every step that talks on shared channels."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps: list[Any] = [
            step for step in Consumer.Blueprint.default_steps if not str(step).endswith(_SHARED_CHANNEL_STEPS)
        ]
