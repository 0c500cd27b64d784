"""The admin Redis connection of ``keys`` and ``hub``: from ``--redis-url`` or ``REDIS_URL``, never assumed.

A default such as ``redis://127.0.0.1:6379/0`` would let ``keys list`` answer from whatever Redis
happens to run on this machine. A password belongs in ``REDIS_URL``: a command line can be read by
every user of the machine (``ps``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from urllib.parse import SplitResult, parse_qs, urlsplit

from .errors import CliError, ExitCode

__all__ = ["admin_redis_url"]

_SCHEMES = ("redis", "rediss", "unix")


def admin_redis_url(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> str:
    """``--redis-url`` if given, else ``REDIS_URL``; a CliError when neither is set or the URL is bad."""
    verb = getattr(args, "command", None) or "this command"
    given: str | None = getattr(args, "redis_url", None)
    if given is not None:
        parts = _parse(given, "the --redis-url option")
        if parts.password or "password" in parse_qs(parts.query):
            raise CliError(
                "the --redis-url option must not contain a password, since other users of this computer "
                "can read a command line; put the whole URL in REDIS_URL instead",
                ExitCode.USAGE,
            )
        return given
    url = environ.get("REDIS_URL", "").strip()
    if not url:
        raise CliError(
            f"no Redis connection given. `morag-worker {verb}` needs the server's admin connection to "
            "Redis and does not guess one: set REDIS_URL (for example redis://127.0.0.1:6379/0) or pass "
            "--redis-url",
            ExitCode.CONFIG,
        )
    _parse(url, "REDIS_URL")
    return url


def _parse(url: str, where: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise CliError(
            f"{where} must be a redis://, rediss:// or unix:// URL, such as redis://127.0.0.1:6379/0",
            ExitCode.USAGE,
        )
    return parts
