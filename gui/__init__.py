"""The PySide6 tray app: the only package that imports Qt.

It reaches the worker only through ``controller.WorkerController``, which wraps the core
supervisor; everything blocking runs through ``background.BackgroundRunner``. Every object here
lives on the GUI thread unless its docstring says otherwise.
"""

import PySide6  # noqa: E402,F401  (first, so that the check below is in place for every later import)

from .memory import skip_source_cache  # noqa: E402

skip_source_cache()
