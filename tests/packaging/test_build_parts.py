"""The packaging build's own parts, without building: the bundle's entry point runs ``-m MODULE``
the way ``python -m`` does (the app's children are started that way), and the hidden-import finder
tells Celery's compatibility modules (only in ``sys.modules``) from real ones."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from types import ModuleType

import pytest

from morag_worker import __version__
from tests.processes import ROOT, base_env


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "packaging" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.smoke
@pytest.mark.parametrize(
    "args",
    [["--version"], ["-m", "morag_worker", "--version"]],
    ids=["app", "dash-m"],
)
def test_entry_runs_the_app_and_dash_m_modules(args: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "entry.py"), *args],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert __version__ in done.stdout


@pytest.mark.smoke
def test_entry_passes_the_module_its_own_arguments() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "packaging" / "entry.py"), "-m", "celery", "--version"],
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("5.")


@pytest.mark.unit
def test_hidden_import_finder_skips_modules_without_a_file() -> None:
    finder = _load("hidden_imports")
    import celery  # noqa: F401 - creates the compatibility modules

    assert not finder.has_source("celery.log")
    assert finder.has_source("celery.worker.consumer.delayed_delivery")
    assert finder.has_source("kombu.transport")
    assert not finder.has_source("no_such_module_here")
