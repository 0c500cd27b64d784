"""Text quality on real public documents: the PDFs and HTML pages Debian ships under /usr/share/doc.

Words run together ("glued") are what a poor PDF extractor produces; they ruin retrieval. Each document is
skipped, with its path in the reason, on a machine that does not have it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from morag_worker.core.processing import ProcessorRegistry, no_progress

pytestmark = pytest.mark.unit

_WORD_RE = re.compile(r"[^\W\d_]+")
MAX_GLUED_RATIO = 0.02  # words of more than 25 letters, as a share of all words

DOCUMENTS = [
    # (path, minimum words, phrases that must come through intact)
    (
        "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf",
        5000,
        [
            "Shared MIME-info Database",
            "This is version 0.21 of the Shared MIME-info Database specification",
            "(contains a mapping from file contents to MIME types)",
        ],
    ),
    (
        "/usr/share/doc/libtasn1-doc/libtasn1.pdf",
        10000,
        ["Abstract Syntax Notation One (ASN.1) library for the GNU system", "Distinguished Encoding Rules"],
    ),
    ("/usr/share/doc/socat/socat.html", 15000, ["socat - Multipurpose relay"]),
    ("/usr/share/doc/zlib1g-dev/examples/zlib_how.html", 4000, ["zlib Usage Example"]),
]


@pytest.fixture(scope="module")
def registry() -> ProcessorRegistry:
    return ProcessorRegistry.default(entry_points=[])


@pytest.mark.parametrize(
    ("location", "min_words", "phrases"), DOCUMENTS, ids=[Path(d[0]).name for d in DOCUMENTS]
)
def test_real_documents_give_clean_words(
    registry: ProcessorRegistry, location: str, min_words: int, phrases: list[str]
) -> None:
    path = Path(location)
    if not path.is_file():
        pytest.skip(f"{location} is not installed on this machine")
    content = registry.resolve(None, None, path).process(path, {}, no_progress)
    words = _WORD_RE.findall(content.markdown)
    glued = [w for w in words if len(w) > 25]
    assert len(words) >= min_words, f"only {len(words)} words extracted"
    assert len(glued) / len(words) < MAX_GLUED_RATIO, f"{len(glued)} glued words, e.g. {glued[:5]}"
    flat = " ".join(content.markdown.split())
    for phrase in phrases:
        assert phrase in flat
    assert content.metadata["word_count"] >= min_words
