"""kombu's Redis transport for a contributor's worker, minus the visibility-timeout restore.

kombu's ``QoS.restore_visible`` (run by every consumer at start-up and every ~100 s) takes the
``unacked_mutex`` lock, and redis-py releases that lock with a Lua script (``EVALSHA``). A user who
may run ``EVALSHA`` may run any script they ``SCRIPT LOAD``: one that writes and then loops forever
cannot be killed, and stops the shared Redis for every user. So a contributor's ACL has no Lua, this
transport never calls ``restore_visible``, and the hub's watchdog (``core/watchdog.py``, admin
connection, kombu's own ``restore_visible``) puts a user's stale deliveries back in their queue.

It builds on our hardened transport (``core/broker_transport.py``: queue entries that are not
messages are dropped, not fatal). Everything else is kombu's: acks, rejects, requeues and the
restore at shutdown (``restore_by_tag``, no lock, no Lua) are unchanged. Runs in the worker's main
process, like kombu's transport.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

from morag_worker.core.execution import broker_transport

__all__ = ["ALIAS", "Channel", "QoS", "Transport", "register"]

# The name workers use for it (``broker_transport``), shown in their logs as the URL's scheme.
ALIAS = "morag-redis"


class QoS(kombu_redis.QoS):
    """Ack emulation without the periodic restore of stale deliveries (the hub's watchdog does it)."""

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        return None


class Channel(broker_transport.Channel):
    QoS = QoS


class Transport(broker_transport.Transport):
    Channel = Channel


def register() -> None:
    """Make ``ALIAS`` resolvable by kombu in this process (the worker's, before it connects)."""
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
