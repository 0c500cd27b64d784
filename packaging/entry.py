"""The bundle's one executable: ``morag-worker`` as the console script, plus ``-m MODULE``.

The app starts itself again as child processes with ``sys.executable -m ...`` (the Celery worker,
the Windows wrapper, the demo's hub and worker). In a PyInstaller bundle ``sys.executable`` is this
program, not an interpreter, so ``-m MODULE ARGS`` is handled here the way ``python -m`` would,
and every other argument list goes to ``morag_worker.__main__.main``. Runs on the main thread.
"""

from __future__ import annotations

import multiprocessing
import runpy
import sys


def main() -> int:
    if len(sys.argv) >= 3 and sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [sys.argv[0], *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return 0
    from morag_worker.__main__ import main as app_main

    return app_main()


if __name__ == "__main__":
    multiprocessing.freeze_support()
    sys.exit(main())
