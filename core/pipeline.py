"""One task from arguments to result: validate, download, convert, map the outcome (DESIGN §2).

The Celery tasks are thin wrappers around ``Pipeline``; everything here runs without a broker.
Processing errors (corrupt or unsupported input, unsafe or oversized input) become a result with
``success: false``; infrastructure errors (download failed after retries, checksum mismatch, no
disk space) raise ``InfrastructureError`` so the task fails with that message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from .processing import ProcessingError, ProcessorRegistry, TaskCancelled
from .progress import ProgressReporter
from .results import TaskResult, TaskStage
from .task_args import MalformedTask, TaskRequest, parse_task_request
from .transfer import (
    DownloadCancelled,
    Downloader,
    DownloadFailed,
    InsufficientDiskSpace,
    IntegrityError,
    TaskWorkspace,
    TooLarge,
    TransferError,
    UnsafeURL,
)

__all__ = ["InfrastructureError", "Pipeline", "TaskCancelledError"]

log = structlog.get_logger(__name__)


class InfrastructureError(RuntimeError):
    """The task could not be carried out for a reason other than its input; it fails."""


class TaskCancelledError(RuntimeError):
    """The worker was asked to stop now; the task must go back to the queue."""


@dataclass
class Pipeline:
    """Runs tasks for one worker: ``own_user_id`` is None on the server's own (local) workers."""

    downloader_factory: Callable[[], Downloader]
    registry: ProcessorRegistry
    temp_root: Path
    own_user_id: str | None = None
    cancel_event: threading.Event | None = None

    def run_file(
        self, reporter: ProgressReporter, args: tuple[Any, ...], *, remote: bool, url_task: bool
    ) -> TaskResult:
        """Run a ``process_*_task[_remote]``; ``args`` are the task's own positional arguments."""
        started = time.monotonic()
        try:
            request = self._parse(args, remote=remote, url_task=url_task)
        except MalformedTask as exc:
            log.warning("task.malformed", task_id=reporter.task_id, error=str(exc))
            return TaskResult.failure(f"malformed task: {exc}", user_id=self.own_user_id)
        if request.ignored_options:
            log.warning(
                "task.options_ignored", task_id=reporter.task_id, options=list(request.ignored_options)
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
        except (DownloadFailed, IntegrityError, InsufficientDiskSpace) as exc:
            raise InfrastructureError(str(exc)) from None
        except TransferError as exc:
            raise InfrastructureError(str(exc)) from None
        result.user_id = request.user_id or self.own_user_id
        result.processing_time = round(time.monotonic() - started, 3)
        if request.ignored_options:
            result.metadata["ignored_options"] = list(request.ignored_options)
        return result

    def _parse(self, args: tuple[Any, ...], *, remote: bool, url_task: bool) -> TaskRequest:
        name = "url" if url_task else ("file_url" if remote else "file_path")
        if remote:
            if len(args) < 2:
                raise MalformedTask(f"missing arguments: expected ({name}, user_id, ...)")
            if len(args) > 4:
                raise MalformedTask("too many arguments")
            request = parse_task_request(*args, source_name=name, require_user=True)
            if self.own_user_id is not None and request.user_id != self.own_user_id:
                raise MalformedTask(f"this worker serves user {self.own_user_id!r}, not {request.user_id!r}")
            return request
        if len(args) < 1:
            raise MalformedTask(f"missing argument: {name}")
        if len(args) > 3:
            raise MalformedTask("too many arguments")
        source, *rest = args
        content_type = rest[0] if rest else None
        options = rest[1] if len(rest) > 1 else None
        return parse_task_request(source, None, content_type, options, source_name=name)

    def _download_and_process(self, reporter: ProgressReporter, request: TaskRequest) -> TaskResult:
        with TaskWorkspace(self.temp_root, reporter.task_id) as workspace, self.downloader_factory() as dl:
            reporter.report(TaskStage.DOWNLOADING, 0, request.size, "starting download", force=True)
            downloaded = dl.download(
                request.source,
                workspace.path,
                expected_sha256=request.sha256,
                expected_size=request.size,
                progress=reporter.downloading,
                cancel=self.cancel_event,
                notice=lambda line: reporter.report(TaskStage.DOWNLOADING, 0, request.size, line, force=True),
            )
            filename = request.filename or downloaded.filename_hint
            content_type = request.content_type or downloaded.content_type
            # The file is saved as input.bin: only the task's or the server's name for it is a hint.
            result = self._convert(
                reporter, request, downloaded.path, content_type, filename, name_from_path=False
            )
            result.metadata.update(
                source_size=downloaded.size,
                source_sha256=downloaded.sha256,
                download_resumes=downloaded.resumes,
            )
            if filename:
                result.metadata.setdefault("filename", filename)
            return result

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
        processed = processor.process(path, request.options, reporter.processing)
        metadata = dict(processed.metadata)
        metadata.setdefault("processor", processor.name)
        return TaskResult(success=True, content=processed.markdown, metadata=metadata)
