"""Imports made on a side thread, kept whole across ``fork`` (prefork pool processes, converter children).

A module that one thread is importing while another thread forks stays half-imported in the
child, its import lock held by a thread the child does not have: the child's next import of it
hangs for good. The worker loads the HTTP stack and the pipeline on side threads, after ready (a
pool process's warm-up, the hub gate's first probe), while the main thread may fork a pool process
or a task's converter child. So those imports run under ``import_guard``, and every ``os.fork`` of
this process waits until no such import is under way (``os.register_at_fork``). Never fork inside
the guard. Any thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["import_guard"]

# Reentrant: a fork made inside the guard by the thread holding it (a plugin loaded by the
# pipeline) goes ahead instead of waiting for itself.
_lock = threading.RLock()


@contextmanager
def import_guard() -> Iterator[None]:
    """Hold forks of this process back while the block runs (it imports on a side thread)."""
    with _lock:
        yield


if hasattr(os, "register_at_fork"):  # POSIX; Windows does not fork
    os.register_at_fork(before=_lock.acquire, after_in_parent=_lock.release, after_in_child=_lock.release)
