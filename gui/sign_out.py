"""Signing out from the app: the question, and what the answer does.

``SignOutDialog.ask`` confirms (tests answer it with ``monkeypatch``). Signing out stops the
worker (a task in flight goes back to the queue) and removes the key for the configured hub
from the keychain, as ``morag-worker logout`` does; ``TrayApp`` runs it.

GUI thread only.
"""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget

__all__ = ["SignOutDialog"]


class SignOutDialog(QMessageBox):
    """Asks before signing out, saying what happens to the key and to a running task."""

    def __init__(self, hub_url: str, busy: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Sign out")
        self.setIcon(QMessageBox.Icon.Question)
        self.setText(f"Sign out from {hub_url}?")
        running = (
            "The task in progress goes back to your queue at once, and the worker stops. "
            if busy
            else "The worker stops. "
        )
        self.setInformativeText(
            running + "Your API key is removed from this computer's keychain; to work again, "
            "enter a key in Settings."
        )
        self.sign_out_button = self.addButton("Sign out", QMessageBox.ButtonRole.DestructiveRole)
        self.cancel_button = self.addButton(QMessageBox.StandardButton.Cancel)
        self.setDefaultButton(self.cancel_button)
        self.setEscapeButton(self.cancel_button)

    @classmethod
    def ask(cls, hub_url: str, *, busy: bool, parent: QWidget | None = None) -> bool:
        """Ask (modal); True to sign out."""
        dialog = cls(hub_url, busy, parent)
        dialog.exec()
        return dialog.clickedButton() is dialog.sign_out_button
