"""Keeping the idle tray app small: the sources PySide6 reads at import, and free C heap.

- PySide6 (``shibokensupport.feature``) checks every module imported after it for the word
  "PySide6" with ``inspect.getsource``, which keeps each module's whole source in ``linecache``,
  line by line: about 10 MB of small strings in the tray process, interleaved with the modules'
  own objects so that dropping them later frees little (measured with tracemalloc and
  bench/idle.py). ``skip_source_cache`` makes the same check read the file without caching it;
  ``gui/__init__`` calls it right after PySide6 loads, before anything else is imported.
- Start-up (imports, the first paint, the key check, the worker's launch) and each task's progress
  traffic allocate on several threads; glibc keeps what they freed in per-thread arenas, counted
  in the process's resident memory. ``malloc_trim(0)`` returns those free pages (Linux with glibc;
  elsewhere nothing is asked).

GUI thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import linecache
import sys
from collections.abc import Callable
from functools import cache
from typing import Any

import structlog

__all__ = ["release_free_memory", "skip_source_cache"]

log = structlog.get_logger(__name__)


def _source_mentions_pyside(module: object) -> bool:
    # What shibokensupport.feature._mod_uses_pyside answers, read straight from the file.
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return False
    try:
        with open(path, "rb") as handle:
            return b"PySide6" in handle.read()
    except OSError:
        return False


def skip_source_cache() -> bool:
    """Make PySide6's per-import check leave ``linecache`` alone; False where this PySide6 has no
    such check (then nothing is changed)."""
    feature: Any = sys.modules.get("shibokensupport.feature")
    if feature is None or not callable(getattr(feature, "_mod_uses_pyside", None)):
        return False
    feature._mod_uses_pyside = _source_mentions_pyside
    return True


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Drop cached module sources and return the C heap's free pages to the system; True when the
    C heap could be asked. (No ``gc.collect()``: collecting Qt wrappers' cycles at an arbitrary
    moment can delete C++ objects that Qt still holds.)"""
    cached = len(linecache.cache)
    linecache.clearcache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    log.debug("gui.memory_released", sources_dropped=cached, trimmed=trim is not None)
    return trim is not None
