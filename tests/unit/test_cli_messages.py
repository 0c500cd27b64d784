"""The command line's own decisions, checked without starting a process."""

from __future__ import annotations

import pytest

from morag_worker.core.cli import sentence

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no such file: /tmp/x", "No such file: /tmp/x."),
        (
            "no API key for http://h:1. run `morag-worker login`",
            "No API key for http://h:1. Run `morag-worker login`.",
        ),
        ("already a sentence.", "Already a sentence."),
        ("Is it? yes", "Is it? Yes."),
        ("see e.g. the README", "See e.g. the README."),
        ("--expires-days must be at least 1", "--expires-days must be at least 1."),
        ("gpu_index must be a GPU number", "gpu_index must be a GPU number."),
        ("the worker exited:\nlast line of its output", "The worker exited:\nlast line of its output"),
        ("  hub URL must not contain a query  ", "Hub URL must not contain a query."),
        ("", ""),
    ],
)
def test_sentence(text: str, expected: str) -> None:
    assert sentence(text) == expected
