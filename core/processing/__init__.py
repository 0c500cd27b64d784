"""Turning a downloaded file into markdown: processors, their registry, and their errors (DESIGN §7).

Typical use by a task::

    registry = ProcessorRegistry.default()          # once per worker process
    processor = registry.resolve(content_type, original_name, path)
    content = processor.process(path, task_options, progress)

Built in: plain text and markdown (:mod:`.text`); PDF, DOCX, PPTX, XLSX, EPUB, HTML, CSV, JSON and XML
(:mod:`.documents`, which also records why each parser was chosen); audio and video through faster-whisper
when the ``audio`` extra is installed (:mod:`.media`). Third-party processors come from the entry-point group
``morag_worker.processors`` (:mod:`.registry`). Nothing here imports a parser until it is used.

A worker runs each conversion in a converter child process with memory, wall-time and output limits
(:mod:`.sandbox`; starting and ending children in :mod:`.sandbox_process`, the child's side in
:mod:`.sandbox_child`, their messages in :mod:`.sandbox_wire`, the Windows Job object in :mod:`.winjob`).
"""

from __future__ import annotations

from morag_worker.core.processing.base import (
    CorruptInput,
    EmptyContent,
    ProcessedContent,
    ProcessingError,
    Processor,
    ProgressFn,
    TaskCancelled,
    UnsupportedContent,
    no_progress,
)
from morag_worker.core.processing.registry import PLUGIN_GROUP, ProcessorRegistry, Unavailable

__all__ = [
    "PLUGIN_GROUP",
    "CorruptInput",
    "EmptyContent",
    "ProcessedContent",
    "ProcessingError",
    "Processor",
    "ProcessorRegistry",
    "ProgressFn",
    "TaskCancelled",
    "Unavailable",
    "UnsupportedContent",
    "no_progress",
]
