"""Window sizes that fit the screen: a preferred size, never larger than the available geometry.

At ``QT_SCALE_FACTOR=2`` a 680×480 window is 1360×960 device pixels, more than a 1280×800 laptop
screen; sizes here are taken from the screen's available geometry (without panels), in the same
device-independent pixels Qt sizes widgets in, so the window fits at any scale.

GUI thread only.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QRect, QSize, Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QFrame, QScrollArea, QStyle, QWidget

__all__ = ["FittingScrollArea", "available_geometry", "fit_to_screen", "fitted_size"]

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

    It may not grow past the available geometry later either (a dialog growing for a message),
    and its minimum is lowered to fit where a layout asked for more. Returns the size given.
    """
    available = available_geometry(widget)
    size = fitted_size(preferred or widget.size(), available)
    if available is not None and not available.isEmpty():
        widget.setMaximumSize(available.size())
        least = widget.minimumSize().expandedTo(widget.minimumSizeHint())
        widget.setMinimumSize(least.boundedTo(fitted_size(least, available)))
    widget.resize(size)
    return size


class FittingScrollArea(QScrollArea):
    """A scroll area that asks for all the room its content wants and scrolls only when the window
    cannot give it (the screen's edge): a dialog grows for a long message, yet fits the screen.

    It passes on the content's size hints, height-for-width included, so the window's layout sizes
    it like the content itself.
    """

    def __init__(self, content: QWidget, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(content)
        content.installEventFilter(self)

    def _extra(self) -> QSize:
        margins = self.contentsMargins()
        return QSize(margins.left() + margins.right(), margins.top() + margins.bottom())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's hint changed: the window's layout asks again
        return super().eventFilter(watched, event)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        content = self.widget()
        return content.sizeHint() + self._extra() if content is not None else super().sizeHint()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        content = self.widget()
        if content is None:
            return super().minimumSizeHint()
        return QSize(content.minimumSizeHint().width(), 80) + self._extra()

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt's name
        content = self.widget()
        return content is not None and content.hasHeightForWidth()

    def heightForWidth(self, width: int) -> int:  # noqa: N802 - Qt's name
        content = self.widget()
        if content is None:
            return super().heightForWidth(width)
        # Asked as if the scroll bar took its room: with the height for the full width, a scroll
        # bar that once appeared narrows the content, which then needs more height, and stays.
        extra = self._extra()
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent, None, self)
        return content.heightForWidth(width - extra.width() - bar) + extra.height()
