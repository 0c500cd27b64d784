"""The bounds a download runs under, and the environment variables that change them.

Apart from the downloader (``download_state.py``, which imports urllib3) so that a worker can read
and check its limits at start-up without loading the HTTP stack, which only its first task needs.
Pure data; safe on any thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from morag_worker.core.units import EnvLimit, env_limit_changes

__all__ = ["LIMIT_ENV", "DownloadLimits", "MiB"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class DownloadLimits:
    """Every bound a download runs under. Tests shrink them; production keeps the defaults."""

    chunk_size: int = MiB
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    deadline_s: float = 3600.0
    min_rate_bps: float = 1024.0
    min_rate_window_s: float = 30.0
    max_bytes: int = 2 * 1024 * MiB
    max_attempts: int = 5
    backoff_base: float = 1.0
    backoff_max: float = 15.0
    retry_after_max: float = 60.0
    disk_reserve_bytes: int = 256 * MiB
    max_redirects: int = 5
    progress_interval_s: float = 0.25

    def __post_init__(self) -> None:
        if self.chunk_size <= 0 or self.max_bytes < 0 or self.max_attempts < 1 or self.max_redirects < 0:
            raise ValueError("DownloadLimits: chunk_size and max_attempts must be positive")
        if min(self.connect_timeout, self.read_timeout, self.deadline_s, self.min_rate_window_s) <= 0:
            raise ValueError("DownloadLimits: timeouts, deadline and rate window must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DownloadLimits:
        """The production defaults, with any of :data:`LIMIT_ENV` set in ``env`` applied.

        Raises:
            ValueError: A variable is not a positive number (its name is in the message).
        """
        return replace(cls(), **env_limit_changes(env, LIMIT_ENV))


LIMIT_ENV: dict[str, EnvLimit] = {
    "MORAG_MAX_INPUT_MB": EnvLimit("max_bytes", MiB),
    "MORAG_DOWNLOAD_DEADLINE_S": EnvLimit("deadline_s"),
    "MORAG_DOWNLOAD_MIN_RATE": EnvLimit("min_rate_bps"),
    "MORAG_DOWNLOAD_MIN_RATE_WINDOW_S": EnvLimit("min_rate_window_s"),
    "MORAG_DOWNLOAD_ATTEMPTS": EnvLimit("max_attempts", whole=True),
}
"""Environment variables a worker reads into its :class:`DownloadLimits` (README lists them)."""
