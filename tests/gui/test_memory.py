"""The idle tray app stays small: PySide6's per-import source check caches nothing, and idle
time gives the cached sources and the C heap's free pages back."""

from __future__ import annotations

import importlib
import linecache
import sys
from pathlib import Path

import pytest

import morag_worker.gui  # noqa: F401  (installs the check's replacement)
from morag_worker.gui.memory import release_free_memory

pytestmark = pytest.mark.gui


def test_modules_imported_after_pyside_leave_linecache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    feature = sys.modules.get("shibokensupport.feature")
    if feature is None:
        pytest.skip("this PySide6 has no per-import feature check")
    source = tmp_path / "morag_memory_probe.py"
    source.write_text("import PySide6\nVALUE = 1\n" + "# padding\n" * 1000, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("morag_memory_probe")
    try:
        assert module.VALUE == 1
        assert str(source) not in linecache.cache
        # The check still answers as PySide6's own does: this module uses PySide6.
        assert feature._mod_uses_pyside(module) is True
        assert feature._mod_uses_pyside(linecache) is False
    finally:
        sys.modules.pop("morag_memory_probe", None)


def test_release_free_memory_drops_cached_sources() -> None:
    linecache.getline(linecache.__file__, 1)
    assert linecache.cache
    released = release_free_memory()
    assert linecache.cache == {}
    assert released is sys.platform.startswith("linux")
