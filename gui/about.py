"""The About window: name, version, licence, links, and what it runs on.

``about_text`` is pure (tests read it); ``about_box`` builds the non-modal box that ``TrayApp``
shows. Links open in the browser (``setOpenExternalLinks``).

GUI thread only.
"""

from __future__ import annotations

import platform

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QMessageBox, QWidget

from morag_worker import DISPLAY_NAME, __version__

from .icons import IconSet

__all__ = ["LICENCE", "LINKS", "about_box", "about_text"]

LICENCE = "MIT"
#: (label, URL) shown in About.
LINKS = (
    ("MoRAG", "https://github.com/mattes337/MoRAG"),
    ("MIT licence", "https://opensource.org/license/mit"),
)


def about_text(qt_version: str, hub_url: str | None = None, update: str | None = None) -> str:
    """The box's informative text (rich text); pure."""
    links = " · ".join(f'<a href="{url}">{label}</a>' for label, url in LINKS)
    parts = [
        "Contribute your GPU to a MoRAG server. The worker takes tasks only from your own queue "
        "and keeps your API key in the system keychain.",
        f"Version {__version__}. Released under the {LICENCE} licence.",
    ]
    if update:
        parts.append(
            f"<b>Version {update} is available.</b> Your hub's administrator can tell you where to get it."
        )
    if hub_url:
        parts.append(f"Hub: {hub_url}")
    parts.append(links)
    parts.append(f"Python {platform.python_version()} · Qt {qt_version}")
    return "<br><br>".join(parts)


def about_box(
    icons: IconSet, parent: QWidget | None = None, *, hub_url: str | None = None, update: str | None = None
) -> QMessageBox:
    """The About box, not yet shown (the caller calls ``show()``; it deletes itself on close)."""
    import PySide6

    box = QMessageBox(parent)
    box.setWindowTitle(f"About {DISPLAY_NAME}")
    box.setIconPixmap(icons.app().pixmap(64, 64))
    box.setTextFormat(Qt.TextFormat.RichText)
    box.setText(f"<b>{DISPLAY_NAME}</b> {__version__}")
    box.setInformativeText(about_text(PySide6.__version__, hub_url, update))
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
    for label in box.findChildren(QLabel):
        label.setOpenExternalLinks(True)
    box.setStandardButtons(QMessageBox.StandardButton.Close)
    box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    box.setModal(False)
    return box
