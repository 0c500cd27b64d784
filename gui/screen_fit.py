"""Window sizes that fit the screen: a preferred size, never larger than the available geometry.

At ``QT_SCALE_FACTOR=2`` a 680×480 window is 1360×960 device pixels, more than a 1280×800 laptop
screen; sizes here are taken from the screen's available geometry (without panels), in the same
device-independent pixels Qt sizes widgets in, so the window fits at any scale.

GUI thread only.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QWidget

__all__ = ["available_geometry", "fit_to_screen", "fitted_size"]

#: The share of the available screen a window may take at most.
MAX_SHARE = 0.9


def available_geometry(widget: QWidget | None = None) -> QRect | None:
    """The available geometry of the widget's screen (or the primary one); None without a screen."""
    screen = widget.screen() if widget is not None else None
    screen = screen or QGuiApplication.primaryScreen()
    return screen.availableGeometry() if screen is not None else None


def fitted_size(preferred: QSize, available: QRect | None) -> QSize:
    """``preferred``, shrunk to ``MAX_SHARE`` of ``available`` where it is larger; pure."""
    if available is None or available.isEmpty():
        return preferred
    return QSize(
        min(preferred.width(), int(available.width() * MAX_SHARE)),
        min(preferred.height(), int(available.height() * MAX_SHARE)),
    )


def fit_to_screen(widget: QWidget, preferred: QSize | None = None) -> QSize:
    """Resize ``widget`` to ``preferred`` (its current size when None), but never past the screen.

    It may not grow past the available geometry later either (a dialog growing for a message).
    Returns the size given.
    """
    available = available_geometry(widget)
    size = fitted_size(preferred or widget.size(), available)
    if available is not None and not available.isEmpty():
        widget.setMaximumSize(available.size())
    widget.resize(size)
    return size
