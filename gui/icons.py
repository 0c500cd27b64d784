"""Tray and app icons, loaded from ``morag_worker.resources`` with ``importlib.resources``.

SVGs are read as bytes (a wheel or a PyInstaller bundle may not give a file path) and rendered
into pixmaps at the sizes panels ask for. ``TrayLook`` (defined in ``state_presentation``,
re-exported here) names the seven tray looks; which panel theme (light or dark) to draw for
follows Qt's colour scheme.

GUI thread only (QPixmap); nothing is loaded at import.
"""

from __future__ import annotations

from enum import Enum
from importlib import resources

from PySide6.QtCore import QByteArray, QRectF, QSize, Qt
from PySide6.QtGui import QGuiApplication, QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

from .state_presentation import TrayLook

__all__ = ["APP_ICON", "IconSet", "PanelTheme", "TrayLook", "read_resource"]

APP_ICON = "morag-worker.svg"
_SIZES = (16, 20, 22, 24, 32, 48, 64, 128)


class PanelTheme(Enum):
    """The panel the icon sits on: a light panel gets a dark glyph and vice versa."""

    LIGHT = "light"
    DARK = "dark"

    @classmethod
    def current(cls) -> PanelTheme:
        """DARK when Qt reports a dark colour scheme, else LIGHT."""
        app = QGuiApplication.instance()
        if isinstance(app, QGuiApplication) and app.styleHints().colorScheme() == Qt.ColorScheme.Dark:
            return cls.DARK
        return cls.LIGHT


def read_resource(*parts: str) -> bytes:
    """The bytes of ``morag_worker/resources/<parts...>``."""
    return resources.files("morag_worker.resources").joinpath(*parts).read_bytes()


class IconSet:
    """Renders and caches the app's icons (one per app; no module-level Qt objects)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, ...], QIcon] = {}

    def tray(self, look: TrayLook, theme: PanelTheme | None = None) -> QIcon:
        """The tray icon for ``look`` on a ``theme`` panel (the current one by default)."""
        theme = theme or PanelTheme.current()
        return self._svg_icon("icons", f"tray-{look.value}-{theme.value}.svg")

    def app(self) -> QIcon:
        """The application icon."""
        return self._svg_icon("icons", APP_ICON)

    def pixmap(self, look: TrayLook, size: int, theme: PanelTheme | None = None) -> QPixmap:
        """One tray state as a pixmap (for the progress window's status header)."""
        return self.tray(look, theme).pixmap(QSize(size, size))

    def _svg_icon(self, *parts: str) -> QIcon:
        key = parts
        icon = self._cache.get(key)
        if icon is None:
            renderer = QSvgRenderer(QByteArray(read_resource(*parts)))
            if not renderer.isValid():
                raise ValueError(f"resources/{'/'.join(parts)} is not a valid SVG")
            icon = QIcon()
            for size in _SIZES:
                pixmap = QPixmap(size, size)
                pixmap.fill(Qt.GlobalColor.transparent)
                painter = QPainter(pixmap)
                painter.setRenderHint(QPainter.RenderHint.Antialiasing)
                renderer.render(painter, QRectF(0, 0, size, size))
                painter.end()
                icon.addPixmap(pixmap)
            self._cache[key] = icon
        return icon
