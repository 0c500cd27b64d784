"""Record which modules a real run imports, in every process, for ``hidden_imports.py``.

Put on ``PYTHONPATH`` as ``sitecustomize`` (``hidden_imports.py record`` does that) with
``MODULES_SEEN_DIR`` naming a folder: each process appends the names in ``sys.modules`` to
``<folder>/<pid>.txt`` when it exits, including through ``os._exit`` (Celery's prefork children
leave that way). Not part of the app; used only while packaging.
"""

from __future__ import annotations

import atexit
import os
import sys

_DIR = os.environ.get("MODULES_SEEN_DIR")


def _dump() -> None:
    if not _DIR:
        return
    names = {k for k in list(sys.modules) if k}
    # `python -m celery` runs celery/__main__.py as "__main__": record it by its own name.
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        names.add(spec.name)
    try:
        with open(os.path.join(_DIR, f"{os.getpid()}.txt"), "a", encoding="utf-8") as out:
            out.write("\n".join(sorted(names)) + "\n")
    except OSError:
        pass


if _DIR:
    atexit.register(_dump)
    _real_exit = os._exit

    def _exit(code: int) -> None:
        _dump()
        _real_exit(code)

    os._exit = _exit  # type: ignore[assignment]
