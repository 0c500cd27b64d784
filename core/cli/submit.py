"""``morag-worker submit PATH_OR_URL [--wait] [--json]``: a user's client of the hub.

Uploads a file (or names a URL), creates the task on the user's own queue, and with ``--wait``
follows its progress on stderr and prints the markdown (or, with ``--json``, the whole result
object) on stdout. Exits non-zero when the result says ``success: false`` or the task failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.keysource import resolve_hub_and_key
from morag_worker.core.execution.health.presence import PresenceRecord
from morag_worker.core.hub_client import (
    HubClient,
    HubError,
    HubForbidden,
    HubUnreachable,
    KeyRejected,
    TaskView,
)
from morag_worker.core.logging import register_secret
from morag_worker.core.units import human_bytes
from morag_worker.core.wording import sentence

__all__ = ["failure_of", "run"]

POLL_S = 0.5
# A worker writes its presence when it starts and every few seconds; one starting right now shows
# up within this. Past it, "no worker" is said (within 5 s of the task being queued).
NO_WORKER_GRACE_S = 4.0
LOCAL_REFUSED = (
    "--local sends the task to the server's own workers, which only a server key may use "
    "(`morag-worker keys create --role server`); this key is a user key. Leave out --local to "
    "send it to your own workers"
)


def run(args: argparse.Namespace) -> int:
    source = _check_source(args.source)  # a mistake in the source is told before anything else
    hub_url, api_key = resolve_hub_and_key(args)
    register_secret(api_key)
    client = HubClient(hub_url, api_key)
    try:
        return _submit(client, source, args)
    except KeyRejected as exc:
        raise CliError(f"{exc}; run `morag-worker login` with a valid key", ExitCode.KEY_REJECTED) from None
    except HubForbidden as exc:
        if args.local:
            raise CliError(LOCAL_REFUSED, ExitCode.KEY_REJECTED) from None
        raise CliError(str(exc), ExitCode.KEY_REJECTED) from None
    except HubUnreachable as exc:
        raise CliError(str(exc), ExitCode.HUB_UNREACHABLE) from None
    except HubError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    finally:
        client.close()


def _check_source(source: str) -> str | Path:
    """The URL (``str``) or the file (``Path``) to submit; a CliError that names the mistake."""
    if "://" in source:
        scheme = urlsplit(source).scheme.lower()
        if scheme in ("http", "https"):
            return source
        raise CliError(
            f"only http:// and https:// URLs can be submitted, not {scheme or 'this'}:// ones "
            "(to send a file on this computer, give its path)",
            ExitCode.USAGE,
        )
    path = Path(source)
    if path.is_dir():
        raise CliError(f"cannot submit the directory {source}; submit one file at a time", ExitCode.USAGE)
    if not path.exists():
        raise CliError(f"no such file: {source}", ExitCode.USAGE)
    if not path.is_file():
        raise CliError(f"cannot submit {source}: it is not a regular file", ExitCode.USAGE)
    if not os.access(path, os.R_OK):
        raise CliError(f"cannot read {source}: permission denied", ExitCode.USAGE)
    return path


def _submit(client: HubClient, source: str | Path, args: argparse.Namespace) -> int:
    status = _StatusLine()
    info = client.queue_info()  # a rejected key fails here, before a large upload
    if args.local and info.role not in (None, "server"):  # None: an older hub, which answers 403
        raise CliError(LOCAL_REFUSED, ExitCode.KEY_REJECTED)
    if isinstance(source, str):
        created = client.create_task(
            url=source, content_type=args.content_type, remote=not args.local, worker_type=args.worker_type
        )
    else:
        uploaded = client.upload(source, progress=lambda done, total: status.show("uploading", done, total))
        status.finish(
            f"Uploaded {source.name} ({uploaded['size']} bytes, sha256 {uploaded['sha256'][:12]}…)."
        )
        created = client.create_task(
            file_id=uploaded["file_id"],
            content_type=args.content_type,
            remote=not args.local,
            worker_type=args.worker_type,
        )
    task_id = created["task_id"]
    if not args.wait:
        print(json.dumps(created) if args.json else task_id)
        print(f"Task {task_id} is queued on {created['queue']}.", file=sys.stderr)
        return int(ExitCode.OK)
    queue = created["queue"]
    print(f"Task {task_id} is queued on {queue}; waiting for a worker…", file=sys.stderr)
    consumers = [] if args.local or args.keep_waiting else _consumers(client, queue)
    if not args.local and not args.keep_waiting and not consumers:
        raise CliError(
            f"no worker of yours is online for {queue}. The task {task_id} stays queued and runs when "
            "one starts (the tray app, or morag-worker --no-gui); pass --keep-waiting to wait for it here",
            ExitCode.NO_WORKER,
        )
    if note := held_note(consumers):
        print(note, file=sys.stderr)
    view = _follow(client, task_id, status, args.timeout)
    return _print_outcome(view, as_json=args.json)


def _consumers(client: HubClient, queue: str) -> list[PresenceRecord]:
    """The user's online workers that take tasks from ``queue`` (asked for a few seconds)."""
    deadline = time.monotonic() + NO_WORKER_GRACE_S
    while True:
        records = [PresenceRecord.from_dict(w) for w in client.workers()]
        found = [r for r in records if r is not None and r.consumes(queue)]
        if found:
            return found
        if time.monotonic() >= deadline:
            return []
        time.sleep(POLL_S)


def held_note(consumers: list[PresenceRecord]) -> str | None:
    """When every worker for the queue is held back by its contributor's rules, a sentence saying why."""
    if not consumers or any(r.state != "held_back" for r in consumers):
        return None
    reasons = sorted({r.held_reason or "its rules for when to contribute" for r in consumers})
    who = "Your worker is" if len(consumers) == 1 else "Your workers are"
    why = "; ".join(reasons)
    return f"{who} paused by the rules for when to contribute ({why}); the task runs when that clears."


def _follow(client: HubClient, task_id: str, status: _StatusLine, timeout: float) -> TaskView:
    """Show the task's progress until it is done; says nothing about its outcome (the result does)."""
    deadline = time.monotonic() + timeout
    while True:
        view = client.task(task_id)
        if view.done:
            status.finish("")
            return view
        if view.progress:
            p = view.progress
            status.show(
                p.get("stage", view.state).lower(), p.get("done") or 0, p.get("total"), p.get("message") or ""
            )
        else:
            status.show(view.state.lower(), 0, None)
        if time.monotonic() > deadline:
            status.finish("")
            raise CliError(
                f"gave up waiting after {timeout:.0f} s; the task {task_id} is still {view.state}",
                ExitCode.TASK_FAILED,
            )
        time.sleep(POLL_S)


def failure_of(view: TaskView) -> tuple[str, str] | None:
    """What failed and why, or None when the task converted its document.

    A task that ended in Celery's SUCCESS state has still failed when its result says
    ``success: false`` (the worker ran, but could not convert the document).
    """
    if view.state != "SUCCESS":
        return "the task failed", view.error or f"it ended in state {view.state}"
    if view.result is None:
        return "the task failed", "it ended without a result"
    if not view.result.get("success"):
        return "processing failed", str(view.result.get("error_message") or "no reason was given")
    return None


def _print_outcome(view: TaskView, *, as_json: bool) -> int:
    failure = failure_of(view)
    result: dict[str, Any] | None = view.result
    if as_json:
        if result is not None:
            print(json.dumps(result, indent=2))
        else:
            error = failure[1] if failure else None
            print(json.dumps({"task_id": view.task_id, "state": view.state, "error": error}))
    if failure is not None:
        what, why = failure
        print(f"morag-worker: {sentence(f'{what}: {why}')}", file=sys.stderr)
        return int(ExitCode.TASK_FAILED)
    assert result is not None
    content = result.get("content") or ""
    if not as_json:
        sys.stdout.write(content if content.endswith("\n") else content + "\n")
    print(f"Converted in {float(result.get('processing_time') or 0):.2f} s.", file=sys.stderr)
    return int(ExitCode.OK)


class _StatusLine:
    """One progress line on stderr: rewritten in place on a terminal, sparse lines otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last_text = ""
        self._last_time = 0.0

    def show(self, stage: str, done: float, total: float | None, message: str = "") -> None:
        if total:
            text = f"{stage}: {100 * done / total:5.1f}% ({human_bytes(done)} of {human_bytes(total)})"
        elif done:
            text = f"{stage}: {human_bytes(done)}"
        else:
            text = f"{stage}…"
        if message and not total:
            text += f" {message}"
        now = time.monotonic()
        if self._tty:
            sys.stderr.write("\r\033[K" + text)
            sys.stderr.flush()
        elif text != self._last_text and (now - self._last_time > 2 or stage not in self._last_text):
            print(text, file=sys.stderr)
            self._last_time = now
        self._last_text = text

    def finish(self, text: str) -> None:
        if self._tty:
            sys.stderr.write("\r\033[K")
        if text:
            print(text, file=sys.stderr)
        self._last_text = ""
