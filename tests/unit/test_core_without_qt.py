"""The core modules the tray app uses import no Qt (CONVENTIONS 1): checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.processes import ROOT, base_env

pytestmark = pytest.mark.unit

# The core modules the GUI calls; each must stay importable on a server without PySide6.
GUI_FACING_CORE = (
    "morag_worker.core.config.autostart",
    "morag_worker.core.config.credentials",
    "morag_worker.core.supervisor.gpu",
    "morag_worker.core.config.history",
    "morag_worker.core.hub_client",
    "morag_worker.core.config.settings",
    "morag_worker.core.supervisor.events",
)


def test_gui_facing_core_modules_do_not_import_qt() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {GUI_FACING_CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "qt = sorted(m for m in sys.modules if m.startswith(('PySide6', 'shiboken6')))\n"
        "assert not qt, qt\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
