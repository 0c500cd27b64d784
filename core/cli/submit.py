"""``morag-worker submit PATH_OR_URL [--wait] [--json]``: a user's client of the hub.

Uploads a file (or names a URL), creates the task on the user's own queue, and with ``--wait``
follows its progress on stderr and prints the markdown (or, with ``--json``, the whole result
object) on stdout. Exits non-zero when the result says ``success: false`` or the task failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from morag_worker.core.hub_client import HubClient, HubError, HubUnreachable, KeyRejected, TaskView
from morag_worker.core.logging import register_secret

from .errors import CliError, ExitCode
from .keysource import resolve_hub_and_key

__all__ = ["run"]

POLL_S = 0.5


def run(args: argparse.Namespace) -> int:
    hub_url, api_key = resolve_hub_and_key(args)
    register_secret(api_key)
    client = HubClient(hub_url, api_key)
    try:
        return _submit(client, args)
    except KeyRejected as exc:
        raise CliError(f"{exc}; run `morag-worker login` with a valid key", ExitCode.KEY_REJECTED) from None
    except HubUnreachable as exc:
        raise CliError(str(exc), ExitCode.HUB_UNREACHABLE) from None
    except HubError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    finally:
        client.close()


def _submit(client: HubClient, args: argparse.Namespace) -> int:
    source: str = args.source
    status = _StatusLine()
    client.queue_info()  # a rejected key fails here, before a large upload
    if source.startswith(("http://", "https://")):
        created = client.create_task(
            url=source, content_type=args.content_type, remote=not args.local, worker_type=args.worker_type
        )
    else:
        path = Path(source)
        if not path.is_file():
            raise CliError(f"no such file: {source}", ExitCode.USAGE)
        uploaded = client.upload(path, progress=lambda done, total: status.show("uploading", done, total))
        status.finish(f"uploaded {path.name} ({uploaded['size']} bytes, sha256 {uploaded['sha256'][:12]}…)")
        created = client.create_task(
            file_id=uploaded["file_id"],
            content_type=args.content_type,
            remote=not args.local,
            worker_type=args.worker_type,
        )
    task_id = created["task_id"]
    if not args.wait:
        print(json.dumps(created) if args.json else task_id)
        print(f"task {task_id} queued on {created['queue']}", file=sys.stderr)
        return int(ExitCode.OK)
    print(f"task {task_id} queued on {created['queue']}; waiting for a worker…", file=sys.stderr)
    view = _follow(client, task_id, status, args.timeout)
    return _print_outcome(view, as_json=args.json)


def _follow(client: HubClient, task_id: str, status: _StatusLine, timeout: float) -> TaskView:
    deadline = time.monotonic() + timeout
    while True:
        view = client.task(task_id)
        if view.done:
            status.finish(f"task {view.state.lower()}")
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


def _print_outcome(view: TaskView, *, as_json: bool) -> int:
    if view.state != "SUCCESS" or view.result is None:
        error = view.error or f"the task ended in state {view.state}"
        if as_json:
            print(json.dumps({"task_id": view.task_id, "state": view.state, "error": error}))
        print(f"morag-worker: task failed: {error}", file=sys.stderr)
        return int(ExitCode.TASK_FAILED)
    result: dict[str, Any] = view.result
    if as_json:
        print(json.dumps(result, indent=2))
    elif result.get("success"):
        sys.stdout.write(result.get("content") or "")
        if not (result.get("content") or "").endswith("\n"):
            sys.stdout.write("\n")
    if not result.get("success"):
        print(f"morag-worker: processing failed: {result.get('error_message')}", file=sys.stderr)
        return int(ExitCode.TASK_FAILED)
    return int(ExitCode.OK)


class _StatusLine:
    """One progress line on stderr: rewritten in place on a terminal, sparse lines otherwise."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last_text = ""
        self._last_time = 0.0

    def show(self, stage: str, done: float, total: float | None, message: str = "") -> None:
        if total:
            text = f"{stage}: {100 * done / total:5.1f}% ({_human(done)} of {_human(total)})"
        elif done:
            text = f"{stage}: {_human(done)}"
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


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
