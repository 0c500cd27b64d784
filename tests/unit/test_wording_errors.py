"""Exception classes in words (issue 11, point 11): a person never reads "ReadTimeout"."""

from __future__ import annotations

import pytest
import requests

from morag_worker.core.hub_client import HubClient, HubUnreachable
from morag_worker.core.processing.base import damaged
from morag_worker.core.wording import error_words

pytestmark = pytest.mark.unit


class PdfStreamError(Exception):
    """Named as pypdf names it; matched by name, so the test needs no PDF library."""


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (requests.exceptions.ReadTimeout(), "no answer came in time"),
        (requests.exceptions.ConnectTimeout(), "the connection timed out"),
        (requests.exceptions.ConnectionError(), "no connection could be made"),
        (PdfStreamError("Stream has ended unexpectedly"), "the PDF data ends too early or is garbled"),
        (KeyError("x"), "an unexpected error occurred"),
    ],
)
def test_error_words(exc: BaseException, words: str) -> None:
    assert error_words(exc) == words


def test_an_unreachable_hub_is_said_without_class_names() -> None:
    client = HubClient("http://127.0.0.1:1", "k" * 43, timeout=(2.0, 2.0))
    with pytest.raises(HubUnreachable) as raised:
        client.queue_info()
    client.close()
    message = str(raised.value)
    assert "ConnectionError" not in message and "no connection could be made" in message


def test_a_damaged_file_is_said_without_class_names() -> None:
    error = damaged("the PDF file", "a PDF file", PdfStreamError("Stream has ended unexpectedly"))
    assert "PdfStreamError" not in error.message and "garbled" in error.message


def test_a_settings_file_error_is_said_in_the_systems_words(tmp_path: object) -> None:
    from pathlib import Path

    from morag_worker.core.config.settings import SettingsError, SettingsStore

    folder = Path(str(tmp_path))
    (folder / "settings.json").mkdir()  # a folder where the file should be: IsADirectoryError
    with pytest.raises(SettingsError) as raised:
        SettingsStore(folder).load()
    assert "IsADirectoryError" not in raised.value.message and "Is a directory" in raised.value.message
