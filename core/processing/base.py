"""What every processor shares: its protocol, its result, its errors, and the progress callback.

A processor turns one local file into markdown plus metadata. In a worker it runs in a converter child
process with limits (:mod:`.sandbox`), on that child's only thread. It reports progress through a
:data:`ProgressFn`, which is also the cooperative cancellation checkpoint: the callback may raise
(:class:`TaskCancelled` or any other exception), and a processor calls it between pages or other units of
work and lets whatever it raises propagate.

Errors that are the input's fault (damaged file, unsupported type, nothing to extract) are
:class:`ProcessingError` subclasses whose message is shown to a person as the task's ``error_message``;
anything else is a bug or an infrastructure failure and fails the task.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from morag_worker.core.wording import error_words

__all__ = [
    "CorruptInput",
    "EmptyContent",
    "OutputTooLarge",
    "ProcessedContent",
    "ProcessingError",
    "Processor",
    "ProgressFn",
    "TaskCancelled",
    "UnsupportedContent",
    "WithOutputLimit",
    "a_file",
    "check_output",
    "count_words",
    "damaged",
    "finish",
    "guarded",
    "no_progress",
]

log = structlog.get_logger(__name__)

ProgressFn = Callable[[float, float | None, str], None]
"""``progress(done, total, message)``: ``done``/``total`` in the processor's own unit (pages, slides, seconds
of audio...), ``total`` None when unknown. May raise to cancel the work; processors let that propagate."""


def no_progress(done: float, total: float | None, message: str) -> None:
    """A :data:`ProgressFn` that ignores every report and never cancels."""


class TaskCancelled(Exception):
    """Raised by a progress callback to stop a processor between units of work.

    Deliberately not a :class:`ProcessingError`: a cancelled task has no result, it is requeued or dropped.
    """


class ProcessingError(Exception):
    """The input cannot be turned into markdown; ``message`` is meant for the person who submitted it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedContent(ProcessingError):
    """No processor handles this content type or file format (or the one that would is not installed)."""


class CorruptInput(ProcessingError):
    """The file is damaged, truncated or not what its name or content type says."""


class EmptyContent(ProcessingError):
    """The file is valid but holds no text to extract (an empty file, a scanned PDF without a text layer)."""


class OutputTooLarge(ProcessingError):
    """The text passed the output limit while the processor was still converting (:func:`check_output`)."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the converted text passed the output limit ({size} characters so far)")
        self.size = size


class WithOutputLimit(Mapping[str, Any]):
    """A task's options as a converter child hands them to a processor, with the output limit attached.

    The limit is an attribute, not a key, so no task option can set or hide it.
    """

    def __init__(self, options: Mapping[str, Any], max_output_bytes: int) -> None:
        self._options = options
        self.max_output_bytes = max_output_bytes

    def __getitem__(self, key: str) -> Any:
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)


def check_output(options: Mapping[str, Any], chars: int) -> None:
    """Stop early once ``chars`` characters of text are certainly over the output limit.

    A processor that builds its text piece by piece (pages) calls this with the running total, so a
    small file that expands enormously (200 pages sharing one content stream) ends at the limit rather
    than after converting everything. Without a limit (``options`` is a plain mapping) it does nothing.

    Raises:
        OutputTooLarge: ``chars`` is over the limit (each character is at least one byte).
    """
    limit = getattr(options, "max_output_bytes", None)
    if limit is not None and chars > limit:
        raise OutputTooLarge(chars)


@dataclass(frozen=True)
class ProcessedContent:
    """A processor's output: the markdown text and metadata about the source (format, pages, title...)."""

    markdown: str
    metadata: dict[str, Any] = field(default_factory=dict)


class Processor(Protocol):
    """Turns one local file into :class:`ProcessedContent`.

    Implementations raise :class:`ProcessingError` subclasses for bad input, call ``progress`` between units
    of work, and never swallow what ``progress`` raises.

    The worker runs ``process`` in a converter child with limits (:mod:`.sandbox`). Two optional
    attributes change that: ``isolated = False`` keeps a processor in the worker process (one that must
    keep state between tasks, such as a loaded model), and a ``preload()`` method imports the
    processor's parser in the worker once, so that forked children start without importing it. A
    processor that builds its text piece by piece calls :func:`check_output` with the running total.
    """

    name: str

    def process(self, path: Path, options: Mapping[str, Any], progress: ProgressFn) -> ProcessedContent:
        """Convert the file at ``path``; ``options`` are the task's options (unknown keys are ignored)."""
        ...


_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def count_words(text: str) -> int:
    """Words as runs of letters and digits (apostrophes and hyphens inside a word keep it whole)."""
    return sum(1 for _ in _WORD_RE.finditer(text))


def finish(
    markdown: str,
    *,
    processor: str,
    fmt: str,
    what: str,
    metadata: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> ProcessedContent:
    """Build the result every processor returns, refusing an empty document.

    Args:
        markdown: The converted text.
        processor: The processor's ``name``.
        fmt: The source format (``pdf``, ``docx``...), stored as ``metadata["format"]``.
        what: How to name the source in an error ("the PDF file").
        metadata: Format-specific metadata (pages, title...); None values are dropped.
        notes: Remarks for a person reading the result (a fallback encoding, pages without text).

    Raises:
        EmptyContent: ``markdown`` has no text once whitespace is stripped.
    """
    markdown = markdown.strip()
    if not markdown:
        raise EmptyContent(f"{what} contains no text to extract")
    meta: dict[str, Any] = {"format": fmt, "processor": processor}
    meta.update({k: v for k, v in (metadata or {}).items() if v is not None})
    meta["word_count"] = count_words(markdown)
    if notes:
        meta["notes"] = list(notes)
    return ProcessedContent(markdown=markdown + "\n", metadata=meta)


def a_file(label: str) -> str:
    """``a PDF file``, ``an XLSX file``: how an error names a format given as an upper-case acronym."""
    return f"{'an' if label[:1] in 'AEFHILMNORSX' else 'a'} {label} file"


def damaged(what: str, kind: str, exc: BaseException) -> CorruptInput:
    """The error for a parser that failed on ``what`` ("the DOCX file"), which should be ``kind``."""
    log.info("processing.parser_failed", what=what, error=repr(exc))
    detail = str(exc).strip()
    words = error_words(exc) + (f": {detail}" if detail else "")
    return CorruptInput(f"{what} is damaged or not {kind} ({words})")


def guarded(items: Iterable[Any], what: str, kind: str) -> Iterator[Any]:
    """Iterate a parser's output, turning its exceptions into :class:`CorruptInput`.

    Only the parser's ``next()`` runs inside the ``try``: what the loop body raises (a cancelling progress
    callback) reaches the caller untouched.
    """
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except ProcessingError:
            raise
        except Exception as exc:
            raise damaged(what, kind, exc) from exc
        yield item
