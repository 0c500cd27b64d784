"""What the worker child loads on its way to ready (issue 14: start to ready <= a bare ``celery worker``).

Each check runs in a fresh interpreter, since ``sys.modules`` of the test process holds everything.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.processes import ROOT, base_env

pytestmark = pytest.mark.unit

# Celery's umbrella command imports every sub-command; ``amqp`` alone brings a REPL toolkit.
CELERY_CLI_ONLY = ("celery.bin.celery", "celery.bin.amqp", "click_repl", "prompt_toolkit")


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _loaded_after(code: str, names: tuple[str, ...]) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps(sorted(set({names!r}) & set(sys.modules))))\n"
    result = _run(probe)
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


def test_the_worker_entry_runs_celerys_worker_command_without_the_umbrella_command() -> None:
    code = (
        "from morag_worker.core.execution.worker_main import run_worker\nassert run_worker(['--help']) == 0\n"
    )
    assert _loaded_after(code, CELERY_CLI_ONLY) == []
    shown = _run(code)
    for option in ("--without-mingle", "--queues", "--concurrency", "--pool"):
        assert option in shown.stdout  # celery worker's own options, as `celery worker --help` lists


def test_the_worker_entry_refuses_an_unknown_option_like_celery() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "morag_worker.core.execution.worker_main", "--no-such-option"],
        cwd=ROOT,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "No such option" in result.stderr and "celery worker" in result.stderr
