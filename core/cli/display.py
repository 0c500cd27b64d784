"""Whether the tray app can open a window here, decided before Qt is imported.

Without a display Qt's platform plugin aborts the process (SIGABRT, "Reinstalling the application
may fix this problem"); ``morag-worker`` asks this first and points at ``--no-gui`` instead.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

__all__ = ["NO_DISPLAY_MESSAGE", "has_display"]

NO_DISPLAY_MESSAGE = (
    "No display was found (DISPLAY and WAYLAND_DISPLAY are unset), so the tray app cannot start. "
    "To run the worker without a window, use `morag-worker --no-gui`."
)

# Qt platform plugins that need a display server, and the variable that names it.
_NEEDS = {"xcb": ("DISPLAY",), "wayland": ("WAYLAND_DISPLAY",), "wayland-egl": ("WAYLAND_DISPLAY",)}


def has_display(environ: Mapping[str, str], platform: str = sys.platform) -> bool:
    """True unless this is an X11/Wayland system with neither display nor a platform that needs none.

    Windows and macOS always have a display. ``QT_QPA_PLATFORM`` (``offscreen``, ``minimal``,
    ``vnc``, …, or a ``;``-separated fallback list) is trusted, except ``xcb`` and ``wayland``,
    which still need their display.
    """
    if platform.startswith(("win", "cygwin", "darwin")):
        return True
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if not chosen:
        return bool(environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"))
    for entry in chosen.split(";"):
        name = entry.split(":", 1)[0].strip().lower()
        if not name:
            continue
        needs = _NEEDS.get(name)
        if needs is None or any(environ.get(var) for var in needs):
            return True
    return False
