"""Names derived from a user id: queues, the per-user Redis namespace, ACL users, key patterns.

A user id is spliced into queue names, Redis key patterns and ACL rules, so it is validated
strictly here and everywhere else takes a validated id from these helpers.
"""

from __future__ import annotations

import re
from enum import StrEnum

__all__ = [
    "DEFAULT_QUEUE",
    "InvalidUserId",
    "WorkerType",
    "acl_username",
    "namespace_prefix",
    "queue_name",
    "user_id_from_queue",
    "validate_user_id",
]

DEFAULT_QUEUE = "celery"
NAMESPACE_ROOT = "morag:ns:"
_USER_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_QUEUE_RE = re.compile(r"^(gpu|cpu)-tasks-([A-Za-z0-9_.-]{1,64})$")


class InvalidUserId(ValueError):
    """A user id that could widen a queue name, key pattern or ACL rule."""

    def __init__(self, user_id: object) -> None:
        shown = repr(user_id)[:80]
        super().__init__(f"invalid user id {shown}: use 1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-'")


class WorkerType(StrEnum):
    GPU = "gpu"
    CPU = "cpu"


def validate_user_id(user_id: object) -> str:
    """Return ``user_id`` unchanged if it is safe to splice into names, else raise InvalidUserId."""
    if not isinstance(user_id, str) or not _USER_ID_RE.fullmatch(user_id):
        raise InvalidUserId(user_id)
    return user_id


def queue_name(user_id: str, worker_type: WorkerType | str = WorkerType.GPU) -> str:
    """``{worker_type}-tasks-{user_id}``, the queue a user's own workers consume."""
    return f"{WorkerType(worker_type).value}-tasks-{validate_user_id(user_id)}"


def namespace_prefix(user_id: str) -> str:
    """``morag:ns:{user_id}:``, the kombu ``global_keyprefix`` of every key of this user."""
    return f"{NAMESPACE_ROOT}{validate_user_id(user_id)}:"


def acl_username(user_id: str) -> str:
    """The Redis ACL user a contributor's worker logs in as."""
    return f"worker-{validate_user_id(user_id)}"


def user_id_from_queue(queue: str) -> str | None:
    """The user id in a per-user queue name, or None for any other queue (``celery``...)."""
    match = _QUEUE_RE.fullmatch(queue)
    return match.group(2) if match else None
