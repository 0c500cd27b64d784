"""The first run offers the self-test after Save; running it shows the core report in a box."""

from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QPushButton
from pytestqt.qtbot import QtBot

from morag_worker.core.diagnosis.report import CheckName, Outcome, SelfTestReport
from tests.conftest import Stack
from tests.gui.conftest import WAIT_MS, Harness
from tests.gui.test_settings_dialog import hub_key

pytestmark = pytest.mark.gui

SELF_TEST_MS = 60_000  # a conversion runs in it (markitdown's first import is slow on a loaded machine)


def test_first_run_offers_the_self_test_and_shows_its_report(
    stack: Stack, harness: Harness, qtbot: QtBot
) -> None:
    app = harness.build()
    with qtbot.waitSignal(app.ready, timeout=WAIT_MS):
        app.start()
    dialog = app.settings_dialog
    assert dialog is not None
    qtbot.keyClicks(dialog.hub_edit, stack.hub_url)
    qtbot.keyClicks(dialog.key_edit, hub_key(stack, "erin-gui"))
    qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: app.self_test_offer_box is not None, timeout=WAIT_MS)
    offer = app.self_test_offer_box
    assert offer is not None and offer.isVisible() and not offer.isModal()
    run = next(b for b in offer.findChildren(QPushButton) if b.text() == "Run the self-test")

    with qtbot.waitSignal(app.controller.self_test_done, timeout=SELF_TEST_MS) as done:
        qtbot.mouseClick(run, Qt.MouseButton.LeftButton)
    report: SelfTestReport = done.args[0]
    # The keychain (the harness's) holds the key saved on first run and the real hub accepts it.
    assert report.get(CheckName.KEYCHAIN).outcome is Outcome.PASSED
    assert report.get(CheckName.HUB).outcome is Outcome.PASSED
    assert report.get(CheckName.CONVERSION).outcome is Outcome.PASSED
    qtbot.waitUntil(lambda: app.self_test_box is not None and app.self_test_box.isVisible(), timeout=WAIT_MS)
    box = app.self_test_box
    assert box is not None
    assert "API key and keychain" in box.informativeText() and "Document conversion" in box.informativeText()
    box.close()
