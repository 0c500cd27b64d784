"""``emit(signal, *args)``: ``SignalInstance.emit`` that survives a reference-count bug of PySide6 6.12.

Measured here with PySide6 6.12.0 on CPython 3.11: ``SignalInstance.emit()`` returns ``True``
without taking a reference to it, so every emit whose result is dropped takes one reference from
``True``. After a few thousand emits (minutes of progress events) the interpreter aborts with
"Fatal Python error: bool_dealloc". Python 3.12+ makes ``True`` immortal, which hides the bug.

The bug is detected once, by measuring, not assumed from a version number: when present, each
``emit`` gives ``True`` back the reference the binding took. Every signal this package emits from
Python goes through ``emit``. Safe on any thread (it holds the GIL, as any Python code).
"""

from __future__ import annotations

import ctypes
import sys
import threading

import structlog
from PySide6.QtCore import QObject, Signal, SignalInstance

__all__ = ["emit", "emit_steals_true"]

log = structlog.get_logger(__name__)
_PROBES = 64
_lock = threading.Lock()
_steals: bool | None = None
_incref = ctypes.PYFUNCTYPE(None, ctypes.py_object)(("Py_IncRef", ctypes.pythonapi))


class _Probe(QObject):
    ping = Signal()


def _give_back(count: int) -> None:
    for _ in range(count):
        _incref(True)


def emit_steals_true() -> bool:
    """Whether this binding's ``emit`` drops a reference to ``True`` (measured on first call)."""
    global _steals
    with _lock:
        if _steals is None:
            probe = _Probe()
            before = sys.getrefcount(True)
            for _ in range(_PROBES):
                probe.ping.emit()
            lost = before - sys.getrefcount(True)
            _steals = lost >= _PROBES - 2  # other threads may move it by a reference or two
            if _steals:
                _give_back(_PROBES)
                log.info("gui.signal_emit_refcount_workaround", lost=lost)
        return _steals


def emit(signal: SignalInstance, *args: object) -> None:
    """Emit ``signal`` with ``args``, repairing ``True``'s reference count where the binding breaks it."""
    result = signal.emit(*args)  # type: ignore[func-returns-value]  # the stub says None; it is a bool
    if result is True and (_steals if _steals is not None else emit_steals_true()):
        _incref(True)
