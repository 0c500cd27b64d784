"""Test-side process helpers: the core's local-stack helpers with test-friendly failures.

``wait_for`` raises AssertionError (a test failure) instead of TimeoutError, and ``base_env``
gives children a clean environment that imports this checkout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from morag_worker.core.local_stack import Proc, RedisServer, free_port, python_argv
from morag_worker.core.local_stack import wait_for as _wait_for

__all__ = ["DEADLINE_S", "ROOT", "Proc", "RedisServer", "base_env", "free_port", "python_argv", "wait_for"]

DEADLINE_S = float(os.environ.get("MORAG_TEST_DEADLINE", "60"))
ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any], timeout: float = DEADLINE_S, what: str = "condition", interval: float = 0.05
) -> Any:
    """Poll ``predicate`` until truthy; a timeout is a test failure naming ``what``."""
    try:
        return _wait_for(predicate, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def base_env(**extra: str) -> dict[str, str]:
    """The test process's environment without MoRAG/Celery settings, importing this checkout."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MORAG_", "REDIS_URL", "MAIN_SERVER_URL", "CELERY_"))
    }
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env
