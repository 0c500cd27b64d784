"""MoRAG Worker: contribute a GPU to a MoRAG server.

The package is split into ``morag_worker.core`` (no Qt, importable by a MoRAG server without a
display) and ``morag_worker.gui`` (the PySide6 tray app).
"""

import os as _os

__version__ = "0.1.0"

APP_NAME = "morag-worker"
DISPLAY_NAME = "MoRAG Worker"

# core/, gui/ and resources/ are top-level folders of the repository that install inside this
# package (pyproject's package-dir). Imported straight from a checkout (the repository root on
# sys.path: PYTHONPATH, pytest's rootdir, the current directory) this folder does not hold them,
# so the repository root is searched for this package's submodules as well.
if not _os.path.isdir(_os.path.join(_os.path.dirname(__file__), "core")):
    __path__.append(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))
