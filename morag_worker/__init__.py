"""MoRAG Worker: contribute a GPU to a MoRAG server.

The package is split into ``morag_worker.core`` (no Qt, importable by a MoRAG server without a
display) and ``morag_worker.gui`` (the PySide6 tray app).
"""

__version__ = "0.1.0"

APP_NAME = "morag-worker"
DISPLAY_NAME = "MoRAG Worker"
