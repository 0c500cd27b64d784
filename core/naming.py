"""Names derived from a user id: queues, the per-user Redis namespace, ACL users, key patterns.

A user id is spliced into queue names, Redis key patterns and ACL rules, so it is validated
strictly here and everywhere else takes a validated id from these helpers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum

__all__ = [
    "DEFAULT_QUEUE",
    "InvalidUserId",
    "WorkerType",
    "acl_username",
    "consumed_queues",
    "in_queue_order",
    "namespace_prefix",
    "queue_name",
    "user_id_from_queue",
    "validate_user_id",
]

DEFAULT_QUEUE = "celery"
NAMESPACE_ROOT = "morag:ns:"
# DESIGN §3's ``^[A-Za-z0-9_.-]{1,64}$``, less the ids made only of dots: ``.`` and ``..`` are
# path components (the hub's storage folder of such a user would be its root or the root's
# parent), and a third dot adds nothing anyone needs. Ids that merely start with ``.`` or ``-``
# stay valid: a hidden folder name or a leading dash has no meaning in a queue name, key pattern,
# ACL rule or path component, and refusing them would orphan keys already issued to such users.
_USER_ID_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9_.-]{1,64}$")
_QUEUE_RE = re.compile(r"^(gpu|cpu)-tasks-([A-Za-z0-9_.-]{1,64})$")


class InvalidUserId(ValueError):
    """A user id that could widen a queue name, key pattern or ACL rule."""

    def __init__(self, user_id: object) -> None:
        shown = repr(user_id)[:80]
        super().__init__(
            f"invalid user id {shown}: use 1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-', "
            "not only dots"
        )


class WorkerType(StrEnum):
    """Which queues a contributor's worker consumes (see ``consumed_queues``)."""

    GPU = "gpu"  # gpu-tasks-{user_id} and cpu-tasks-{user_id}: the default, on every machine
    CPU = "cpu"  # cpu-tasks-{user_id} only


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` unchanged if it is safe to splice into names, else raise InvalidUserId."""
    if not isinstance(user_id, str) or not _USER_ID_RE.fullmatch(user_id):
        raise InvalidUserId(user_id)
    return user_id


def queue_name(user_id: str, worker_type: WorkerType | str = WorkerType.GPU) -> str:
    """``{worker_type}-tasks-{user_id}``, the queue a user's own workers consume."""
    return f"{WorkerType(worker_type).value}-tasks-{validate_user_id(user_id)}"


def consumed_queues(user_id: str, worker_type: WorkerType | str = WorkerType.GPU) -> tuple[str, ...]:
    """The queues a worker of ``user_id`` consumes, most specific first.

    The seed's ``get_task_for_user`` sends every remote task to ``gpu-tasks-{user_id}``, so the
    default worker serves that queue and ``cpu-tasks-{user_id}`` whether or not the machine has a
    GPU (documents need none; transcription falls back to the CPU). ``cpu`` is the contributor's
    choice to take only CPU work. Detecting a GPU never changes this.
    """
    if WorkerType(worker_type) is WorkerType.CPU:
        return (queue_name(user_id, WorkerType.CPU),)
    return (queue_name(user_id, WorkerType.GPU), queue_name(user_id, WorkerType.CPU))


def in_queue_order(names: Iterable[str]) -> list[str]:
    """Queue names as people read them: ``gpu-tasks-*`` before ``cpu-tasks-*``, then the rest."""
    rank = {"gpu": 0, "cpu": 1}
    return sorted(names, key=lambda n: (rank.get(n.split("-", 1)[0], 2), n))


def namespace_prefix(user_id: str) -> str:
    """``morag:ns:{user_id}:``, the kombu ``global_keyprefix`` of every key of this user."""
    return f"{NAMESPACE_ROOT}{validate_user_id(user_id)}:"


def acl_username(user_id: str) -> str:
    """The Redis ACL user a contributor's worker logs in as."""
    return f"worker-{validate_user_id(user_id)}"


def user_id_from_queue(queue: str) -> str | None:
    """The user id in a per-user queue name, or None for any other queue (``celery``...)."""
    match = _QUEUE_RE.fullmatch(queue)
    return match.group(2) if match and _USER_ID_RE.fullmatch(match.group(2)) else None
