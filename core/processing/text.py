"""Plain text and markdown, and the text decoding every text-based format shares.

:func:`decode_text` turns bytes into ``str``: a byte-order mark wins, then strict UTF-8, then a charset the
task declared, then Windows-1252 and finally Latin-1 (each fallback is noted in the metadata). Binary data is
refused rather than passed on as "text": NUL bytes or more than 1% control characters make it
:class:`CorruptInput`. Runs on the calling task's thread.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from morag_worker.core.processing.base import CorruptInput, ProcessedContent, ProgressFn, finish

if TYPE_CHECKING:
    from morag_worker.core.processing.registry import ProcessorRegistry

__all__ = ["DecodedText", "TextProcessor", "decode_text", "declared_charset", "register"]

_BOMS: tuple[tuple[bytes, str], ...] = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# C0 and C1 control characters other than tab, newline, vertical tab, form feed and carriage return.
_CONTROL_RE = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_MAX_CONTROL_RATIO = 0.01
_HEADING_RE = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


@dataclass(frozen=True)
class DecodedText:
    """Text decoded from bytes, the codec that worked, and any remark about how it was chosen."""

    text: str
    encoding: str
    notes: list[str] = field(default_factory=list)


def declared_charset(options: Mapping[str, Any]) -> str | None:
    """The charset a task declared in its options (``charset`` or ``encoding``), if any."""
    value = options.get("charset") or options.get("encoding")
    return str(value).strip() if value else None


def _refuse_binary(text: str, what: str) -> None:
    if "\x00" in text:
        raise CorruptInput(f"{what} is not text: it contains binary data (NUL bytes)")
    controls = len(_CONTROL_RE.findall(text))
    if text and controls / len(text) > _MAX_CONTROL_RATIO:
        share = 100.0 * controls / len(text)
        raise CorruptInput(f"{what} is not text: {share:.0f}% of it is control characters (binary data?)")


def decode_text(data: bytes, *, declared: str | None = None, what: str = "the file") -> DecodedText:
    """Decode ``data`` as text, refusing binary data.

    Args:
        data: The raw bytes.
        declared: A charset named by the task (tried after UTF-8, before the Windows-1252/Latin-1 fallback).
        what: How to name the source in an error message ("the text file").

    Raises:
        CorruptInput: The bytes are binary (NUL bytes, many control characters) or contradict their BOM.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            name = codec.removesuffix("-sig")
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise CorruptInput(f"{what} starts with a {name} byte-order mark but is not {name}") from exc
            _refuse_binary(text, what)
            return DecodedText(text, name)
    if b"\x00" in data:
        raise CorruptInput(f"{what} is not text: it contains binary data (NUL bytes)")
    notes: list[str] = []
    declared_codec = None
    if declared:
        try:
            declared_codec = codecs.lookup(declared).name
        except LookupError:
            notes.append(f"ignored the unknown charset {declared!r}")
    candidates = ["utf-8", *([declared_codec] if declared_codec else []), "cp1252", "latin-1"]
    for codec in candidates:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        _refuse_binary(text, what)
        if codec != "utf-8":
            how = "the declared charset" if codec == declared_codec else "a fallback"
            notes.append(f"not valid UTF-8; decoded as {codec} ({how})")
        return DecodedText(text, codec, notes)
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


class TextProcessor:
    """Plain text (``fmt="text"``) or markdown (``fmt="markdown"``), passed through as markdown.

    Options: ``charset`` (or ``encoding``), used when the file is not valid UTF-8.
    """

    def __init__(self, fmt: str = "text") -> None:
        self.fmt = fmt
        self.name = fmt

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Decode the file and return it unchanged but for line endings (title from a markdown heading)."""
        return self.process_bytes(path.read_bytes(), options, progress)

    def process_bytes(
        self, data: bytes, options: Mapping[str, Any], progress: ProgressFn
    ) -> ProcessedContent:
        """:meth:`process` for bytes already in memory (a small input that never touched the disk)."""
        what = "the markdown file" if self.fmt == "markdown" else "the text file"
        progress(0, 1, "reading text")
        decoded = decode_text(data, declared=declared_charset(options), what=what)
        text = _normalize_newlines(decoded.text)
        title = None
        if self.fmt == "markdown":
            match = _HEADING_RE.search(text)
            title = match.group(1) if match else None
        result = finish(
            text,
            processor=self.name,
            fmt=self.fmt,
            what=what,
            metadata={"encoding": decoded.encoding, "title": title, "lines": text.count("\n") + 1},
            notes=decoded.notes,
        )
        progress(1, 1, "text read")
        return result


def register(registry: ProcessorRegistry) -> None:
    """Register plain text and markdown (the same hook a plugin provides)."""
    registry.register(
        TextProcessor("text"), content_types=("text", "text/plain"), extensions=(".txt", ".text", ".log")
    )
    registry.register(
        TextProcessor("markdown"),
        content_types=("markdown", "text/markdown", "text/x-markdown"),
        extensions=(".md", ".markdown"),
    )
