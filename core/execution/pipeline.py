"""One task from arguments to result: validate, download, convert, map the outcome (DESIGN §2).

The Celery tasks are thin wrappers around ``Pipeline``; everything here runs without a broker.
Processing errors (corrupt or unsupported input, unsafe or oversized input) become a result with
``success: false``; infrastructure errors (download failed after retries, checksum mismatch, no
disk space) raise ``InfrastructureError`` so the task fails with that message. A hub that stayed
unreachable (until the download's deadline, or until the worker began to stop) is no failure of
the task: ``HubUnavailableError`` sends it back to the queue, like a stop now.
Conversions run in converter children under the worker's limits (``Pipeline.sandbox``); a limit reached
is a ``success: false`` result. Small plain-text inputs are the exception (``converts_inline``):
downloaded into memory when the task states their size, they never touch the disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, TypeGuard

import structlog

from morag_worker.core.execution.progress_reporter import ProgressReporter
from morag_worker.core.execution.task_args import TaskRequest
from morag_worker.core.processing import ProcessingError, ProcessorRegistry, TaskCancelled
from morag_worker.core.processing.base import ProcessedContent, Processor
from morag_worker.core.processing.sandbox import ConversionRequest, ConverterSandbox
from morag_worker.core.processing.text import TextProcessor, declared_charset
from morag_worker.core.results import TaskResult, TaskStage
from morag_worker.core.transfer.downloader import (
    MEMORY_MAX_BYTES,
    DownloadCancelled,
    Downloaded,
    DownloadedBytes,
    Downloader,
    DownloadFailed,
    HubUnreachable,
    InsufficientDiskSpace,
    IntegrityError,
    ProgressCallback,
    TaskWorkspace,
    TooLarge,
    TransferError,
    UnsafeURL,
)

__all__ = [
    "INLINE_TEXT_MAX_BYTES",
    "HubUnavailableError",
    "InfrastructureError",
    "Pipeline",
    "TaskCancelledError",
    "converts_inline",
]

log = structlog.get_logger(__name__)


INLINE_TEXT_MAX_BYTES = 64 * 1024


def converts_inline(processor: Processor, size: int, options: Mapping[str, Any]) -> TypeGuard[TextProcessor]:
    """True for a small plain-text input, converted in this process without a converter child.

    A converter child costs 4-9 ms to fork and reap, more than the 40-byte task's whole budget
    (issue 14). What the child guards against cannot happen here: plain text (``TextProcessor``
    with ``fmt == "text"``, so no markdown heading regex) of at most 64 KiB is read once, decoded
    by the UTF-8, Windows-1252 or Latin-1 codecs (C code, linear; a task that declares another
    charset, which could name a costly codec, still goes to a child), scanned by plain
    character-class regexes (linear, no backtracking) and counted in words. Memory is a few
    copies of 64 KiB, the time linear and well under a millisecond a KiB, and the output no
    larger than the input, far under every converter limit. No C parser of the input runs.
    """
    return (
        isinstance(processor, TextProcessor)
        and processor.fmt == "text"
        and not declared_charset(options)
        and size <= INLINE_TEXT_MAX_BYTES
    )


class _Fetch(TypedDict):
    """What a task's download is told, whether into a file or into memory."""

    expected_sha256: str | None
    progress: ProgressCallback
    cancel: threading.Event | None
    notice: Callable[[str], None]


class InfrastructureError(RuntimeError):
    """The task could not be carried out for a reason other than its input; it fails."""


class TaskCancelledError(RuntimeError):
    """The worker was asked to stop now; the task must go back to the queue."""


class HubUnavailableError(RuntimeError):
    """The hub could not be reached to fetch the input; the task must go back to the queue."""


@dataclass
class Pipeline:
    """Runs tasks for one worker: ``own_user_id`` is None on the server's own (local) workers.

    Conversions run in converter children under ``sandbox``'s limits; None runs them in this process
    (tests of the pipeline's own logic only).
    """

    downloader_factory: Callable[[], Downloader]
    registry: ProcessorRegistry
    temp_root: Path
    own_user_id: str | None = None
    cancel_event: threading.Event | None = None
    sandbox: ConverterSandbox | None = None

    def run_file(
        self, reporter: ProgressReporter, request: TaskRequest, *, remote: bool, url_task: bool
    ) -> TaskResult:
        """Run a ``process_*_task[_remote]`` whose arguments ``task_args.read_task`` checked."""
        started = time.monotonic()
        if request.ignored_options:
            log.warning(
                "task.options_ignored",
                task_id=reporter.task_id,
                options=list(request.ignored_options),  # at most MAX_IGNORED_LISTED, shortened
                count=request.ignored_count,
            )
        try:
            if remote or url_task:
                result = self._download_and_process(reporter, request)
            else:
                result = self._process_local(reporter, request)
        except (TooLarge, UnsafeURL) as exc:
            result = TaskResult.failure(str(exc))
        except ProcessingError as exc:
            result = TaskResult.failure(str(exc))
        except (DownloadCancelled, TaskCancelled) as exc:
            raise TaskCancelledError(str(exc)) from None
        except HubUnreachable as exc:
            raise HubUnavailableError(str(exc)) from None
        except (DownloadFailed, IntegrityError, InsufficientDiskSpace) as exc:
            raise InfrastructureError(str(exc)) from None
        except TransferError as exc:
            raise InfrastructureError(str(exc)) from None
        result.user_id = request.user_id or self.own_user_id
        result.processing_time = round(time.monotonic() - started, 3)
        if request.ignored_options:
            result.metadata["ignored_options"] = list(request.ignored_options)
            result.metadata["ignored_options_count"] = request.ignored_count
        return result

    def _download_and_process(self, reporter: ProgressReporter, request: TaskRequest) -> TaskResult:
        def notice(line: str) -> None:
            reporter.report(TaskStage.DOWNLOADING, 0, request.size, line, force=True)

        fetch: _Fetch = {
            "expected_sha256": request.sha256,
            "progress": reporter.downloading,
            "cancel": self.cancel_event,
            "notice": notice,
        }
        with self.downloader_factory() as dl:
            reporter.report(TaskStage.DOWNLOADING, 0, request.size, "starting download", force=True)
            if request.size is not None and request.size <= MEMORY_MAX_BYTES:
                in_memory = dl.download_to_memory(request.source, expected_size=request.size, **fetch)
                return self._convert_small(reporter, request, dl, in_memory)
            with TaskWorkspace(self.temp_root, reporter.task_id) as workspace:
                downloaded = dl.download(request.source, workspace.path, expected_size=request.size, **fetch)
                content_type, filename = _hints(request, downloaded)
                # The file is saved as input.bin: only the task's or the server's name for it is a hint.
                result = self._convert(
                    reporter, request, downloaded.path, content_type, filename, name_from_path=False
                )
                return _with_source(result, downloaded, filename)

    def _convert_small(
        self, reporter: ProgressReporter, request: TaskRequest, dl: Downloader, downloaded: DownloadedBytes
    ) -> TaskResult:
        """A small input, kept in memory: plain text converts there and never touches the disk
        (a task folder and its file cost a 40-byte task a fifth of the pool's CPU, issue 14);
        anything else is written to its task folder and converted as a download into a file is."""
        content_type, filename = _hints(request, downloaded)
        content = downloaded.content
        reporter.report(TaskStage.PROCESSING, 0, None, "converting to markdown", force=True)
        processor = self.registry.resolve(content_type, filename, content, name_from_path=False)
        if converts_inline(processor, len(content), request.options):
            processed = processor.process_bytes(content, request.options, reporter.processing)
            return _with_source(_converted(processor, processed), downloaded, filename)
        with TaskWorkspace(self.temp_root, reporter.task_id) as workspace:
            path = dl.write_input(workspace.path, downloaded)
            result = self._run_processor(
                reporter, request, processor, path, content_type, filename, name_from_path=False
            )
            return _with_source(result, downloaded, filename)

    def _process_local(self, reporter: ProgressReporter, request: TaskRequest) -> TaskResult:
        path = Path(request.source)
        if not path.is_file():
            return TaskResult.failure(f"input file not found: {path.name}")
        return self._convert(reporter, request, path, request.content_type, path.name)

    def _convert(
        self,
        reporter: ProgressReporter,
        request: TaskRequest,
        path: Path,
        content_type: str | None,
        filename: str | None,
        *,
        name_from_path: bool = True,
    ) -> TaskResult:
        reporter.report(TaskStage.PROCESSING, 0, None, "converting to markdown", force=True)
        processor = self.registry.resolve(content_type, filename, path, name_from_path=name_from_path)
        return self._run_processor(
            reporter, request, processor, path, content_type, filename, name_from_path=name_from_path
        )

    def _run_processor(
        self,
        reporter: ProgressReporter,
        request: TaskRequest,
        processor: Processor,
        path: Path,
        content_type: str | None,
        filename: str | None,
        *,
        name_from_path: bool,
    ) -> TaskResult:
        """Convert the file at ``path`` in a converter child (in this process for small plain text)."""
        try:
            inline = converts_inline(processor, path.stat().st_size, request.options)
        except OSError:
            inline = False  # gone meanwhile: the converter child says so as for any unreadable file
        if self.sandbox is None or inline:
            processed = processor.process(path, request.options, reporter.processing)
        else:
            job = ConversionRequest(path, request.options, content_type, filename, name_from_path)
            processed = self.sandbox.convert(processor, job, reporter.processing, self.cancel_event)
        return _converted(processor, processed)


def _converted(processor: Processor, processed: ProcessedContent) -> TaskResult:
    metadata = dict(processed.metadata)
    metadata.setdefault("processor", processor.name)
    return TaskResult(success=True, content=processed.markdown, metadata=metadata)


def _hints(request: TaskRequest, downloaded: Downloaded) -> tuple[str | None, str | None]:
    """The input's content type and name: the task's, else what the server said."""
    return request.content_type or downloaded.content_type, request.filename or downloaded.filename_hint


def _with_source(result: TaskResult, downloaded: Downloaded, filename: str | None) -> TaskResult:
    """The result with what was downloaded: its size, SHA-256, resumes and name."""
    result.metadata.update(
        source_size=downloaded.size,
        source_sha256=downloaded.sha256,
        download_resumes=downloaded.resumes,
    )
    if filename:
        result.metadata.setdefault("filename", filename)
    return result
