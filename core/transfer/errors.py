"""The typed errors of a download: what went wrong, in one sentence a person understands.

Every message names at most the host of the URL (never the full URL, whose query may hold a signed
token) and never the API key. ``morag_worker.core.transfer.downloader`` re-exports all of them.
"""

from __future__ import annotations

__all__ = [
    "DownloadCancelled",
    "DownloadFailed",
    "HubUnreachable",
    "InsufficientDiskSpace",
    "IntegrityError",
    "TooLarge",
    "TransferError",
    "UnsafeURL",
]


class TransferError(Exception):
    """Base of every error a download raises on purpose."""


class DownloadFailed(TransferError):
    """The server or the network failed us (after retries where retrying made sense).

    Attributes:
        status: The last HTTP status seen, or None when the failure was below HTTP.
        attempts: How many requests were made before giving up.
    """

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class HubUnreachable(TransferError):
    """The hub did not answer until the download's deadline, or until the worker began to stop.

    Not the task's fault and not for good: the task goes back to the queue instead of failing.

    Attributes:
        attempts: How many requests were made.
        stopping: True when the wait ended because the worker is stopping, not at the deadline.
    """

    def __init__(self, message: str, *, attempts: int = 0, stopping: bool = False) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.stopping = stopping


class IntegrityError(TransferError):
    """The bytes are not the file we were promised: a SHA-256 or size mismatch."""


class TooLarge(TransferError):
    """The file is larger than the configured cap (or than the size the task announced)."""


class InsufficientDiskSpace(TransferError):
    """Not enough free disk space; another machine may well succeed."""


class UnsafeURL(TransferError):
    """A URL (or a redirect hop, or the address actually connected to) that policy refuses."""


class DownloadCancelled(TransferError):
    """The caller's cancel event was set."""
