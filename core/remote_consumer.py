"""The Celery consumer of a contributor's worker: no gossip, mingle, heartbeat or remote control.

Those steps subscribe to and publish on broker-wide channels (``celery.pidbox``, ``celeryev``)
that a contributor's ACL user may not touch; removing them here means the plain
``celery -A morag_worker.core.worker worker -Q gpu-tasks-{user_id}`` command is safe too, not only
the supervisor's (which also passes ``--without-gossip --without-mingle --without-heartbeat``).
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer

__all__ = ["RemoteConsumer"]

_SHARED_CHANNEL_STEPS = ("mingle:Mingle", "gossip:Gossip", "heart:Heart", "control:Control")


class RemoteConsumer(Consumer):  # type: ignore[misc]
    """A consumer whose blueprint leaves out every step that talks on shared channels."""

    class Blueprint(Consumer.Blueprint):  # type: ignore[misc]
        default_steps: list[Any] = [
            step for step in Consumer.Blueprint.default_steps if not str(step).endswith(_SHARED_CHANNEL_STEPS)
        ]
